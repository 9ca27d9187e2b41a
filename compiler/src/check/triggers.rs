//! Triggers: one flow per webhook method and path, templates in webhook auth, cron expressions
//! (or templates over config, resolved per instance) and timezones of schedules, what a poll
//! calls and reads, and the fields of `trigger` each kind sets.

use std::collections::BTreeMap;

use serde_json::Value;

use super::IntegrationChecker;
use crate::cron;
use crate::diagnostic::{Code, Diagnostic, did_you_mean};
use crate::model::{
    ConfigType, Flow, Integration, PollTrigger, ScheduleTrigger, Trigger, WebhookTrigger,
};
use crate::path;
use crate::scope::{Scope, check_template, check_value};
use crate::template::{self, is_template};
use crate::yaml::Seg;

/// The flow listening on each webhook method and path.
pub(super) type WebhookPaths = BTreeMap<(String, String), String>;

/// The fields of `trigger` that a flow's steps may read: what the runtime sets for the flow's
/// trigger kind (see the runtime's gateway, triggers and dispatch), and, for a flow that a
/// `dispatch` step names, what a dispatched payload sets.
pub(super) fn trigger_fields(t: &Trigger, dispatched: bool) -> Vec<&'static str> {
    let mut fields = if t.webhook.is_some() {
        vec!["body", "headers", "query", "method", "path"]
    } else if t.schedule.is_some() {
        vec!["time", "scheduled_at"]
    } else if t.poll.is_some() {
        vec!["item", "cursor"]
    } else {
        vec!["deployed", "plan_hash"]
    };
    if dispatched {
        for f in ["body", "dispatched_from"] {
            if !fields.contains(&f) {
                fields.push(f);
            }
        }
    }
    fields
}

impl IntegrationChecker<'_, '_> {
    pub(super) fn check_trigger(
        &mut self,
        m: &Integration,
        name: &str,
        flow: &Flow,
        webhook_paths: &mut WebhookPaths,
    ) {
        let t = &flow.trigger;
        if let Some(w) = &t.webhook {
            self.check_webhook(m, name, w, webhook_paths);
        }
        if let Some(s) = &t.schedule {
            self.check_schedule(m, name, s);
        }
        if let Some(p) = &t.poll {
            self.check_poll(m, name, p);
        }
    }

    fn check_webhook(
        &mut self,
        m: &Integration,
        name: &str,
        w: &WebhookTrigger,
        webhook_paths: &mut WebhookPaths,
    ) {
        let key = (format!("{:?}", w.method), w.path.clone());
        if let Some(first) = webhook_paths.get(&key) {
            let first_span = self
                .site
                .span(&path!["flows", first, "trigger", "webhook", "path"]);
            let span = self
                .site
                .span(&path!["flows", name, "trigger", "webhook", "path"]);
            self.out.push(
                Diagnostic::error(
                    Code::DuplicateWebhookPath,
                    format!("two webhook flows listen on `{}`", w.path),
                )
                .at(
                    self.loaded.file,
                    span,
                    format!("flow `{name}` listens here"),
                )
                .at(
                    self.loaded.file,
                    first_span,
                    format!("flow `{first}` listens here too"),
                )
                .help("give each webhook flow its own path"),
            );
        } else {
            webhook_paths.insert(key, name.to_string());
        }
        let at = path!["flows", name, "trigger", "webhook", "timeout"];
        self.check_duration(&at, w.timeout.as_ref());
        if let Some(auth) = &w.auth {
            let config_scope = Scope::config_only(&m.config);
            let auth_value = serde_json::to_value(auth).unwrap_or_default();
            let mut p = path!["flows", name, "trigger", "webhook", "auth"];
            let mut diags = Vec::new();
            check_value(&self.site, &mut p, &auth_value, &config_scope, &mut diags);
            self.out.extend(diags);
        }
    }

    fn check_schedule(&mut self, m: &Integration, name: &str, s: &ScheduleTrigger) {
        let at = path!["flows", name, "trigger", "schedule", "cron"];
        if is_template(&s.cron) {
            self.check_cron_template(m, &at, &s.cron);
        } else if let Some(reason) = cron::parse_error(&s.cron) {
            self.error(
                Code::InvalidSchedule,
                format!("invalid cron expression: expected {}", cron::ALLOWED),
                &at,
                reason,
            )
            .help = Some(cron::EXAMPLES.into());
        }
        if s.timezone.parse::<chrono_tz::Tz>().is_err() {
            let help = did_you_mean(&s.timezone, chrono_tz::TZ_VARIANTS.iter().map(|t| t.name()));
            self.error(
                Code::InvalidSchedule,
                format!("unknown timezone `{}`", s.timezone),
                &path!["flows", name, "trigger", "schedule", "timezone"],
                "not an IANA timezone",
            )
            .help =
                help.or_else(|| Some("use an IANA name such as `Europe/Berlin` or `UTC`".into()));
        }
    }

    /// A schedule that is a template reads only `config` (resolved per instance), and no
    /// secret.
    fn check_cron_template(&mut self, m: &Integration, at: &[Seg], text: &str) {
        let scope = Scope::config_only(&m.config);
        let mut diags = Vec::new();
        check_template(&self.site, at, text, &scope, &mut diags);
        self.out.extend(diags);
        for r in template::references(text).unwrap_or_default() {
            if r.name(0) != Some("config") {
                continue;
            }
            let Some(var) = r.name(1) else { continue };
            if m.config
                .get(var)
                .is_some_and(|v| v.kind == ConfigType::Secret)
            {
                let span = self.site.locate(at, text, r.span.clone());
                self.out.push(
                    Diagnostic::error(
                        Code::InvalidSchedule,
                        format!("a schedule cannot read the secret `{var}`"),
                    )
                    .at(self.loaded.file, span, "a secret")
                    .help("read a `string` config variable holding the cron expression"),
                );
            }
        }
    }

    fn check_poll(&mut self, m: &Integration, name: &str, p: &PollTrigger) {
        let at = path!["flows", name, "trigger", "poll"];
        self.check_duration(
            &path!["flows", name, "trigger", "poll", "every"],
            Some(&p.every),
        );
        self.check_uses(m, &p.uses, p.connection.as_deref(), &at, true);
        let poll_scope = Scope {
            vars: &["config", "cursor", "instance"],
            config: Some(&m.config),
            connections: Some(&m.connections),
            steps: None,
            flows: Some(&m.flows),
            trigger: None,
        };
        let with = Value::Object(p.with.clone().into_iter().collect());
        let mut diags = Vec::new();
        let mut wp = at.clone();
        wp.push(Seg::Key("with".into()));
        check_value(&self.site, &mut wp, &with, &poll_scope, &mut diags);
        if let Some(items) = &p.items {
            let scope = Scope {
                vars: &["output", "cursor", "config"],
                ..poll_scope
            };
            let mut ip = at.clone();
            ip.push(Seg::Key("items".into()));
            check_template(&self.site, &ip, items, &scope, &mut diags);
        }
        if let Some(cursor) = &p.cursor {
            let scope = Scope {
                vars: &["items", "cursor", "output", "config"],
                ..poll_scope
            };
            let mut cp = at.clone();
            cp.push(Seg::Key("cursor".into()));
            check_template(&self.site, &cp, cursor, &scope, &mut diags);
        }
        self.out.extend(diags);
    }
}

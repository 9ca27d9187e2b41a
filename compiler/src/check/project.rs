//! The project file (`weft.yaml`): what its schema cannot say — the gateway's body limit fits
//! in 64 bits, and the step defaults' durations are neither zero nor too long.

use super::site;
use crate::diagnostic::{Code, Diagnostic};
use crate::duration;
use crate::load::Repo;
use crate::model::{self, Project, StepDefaults};
use crate::path;
use crate::scope::Site;
use crate::size::parse_size;
use crate::source::SourceFile;
use crate::yaml::Seg;

/// The project settings, checked: what lowering reads.
#[derive(Debug, Clone)]
pub struct CheckedProject {
    pub model: Project,
    /// `gateway.max_body` in bytes.
    pub max_body: u64,
}

/// The project settings (`weft.yaml`), or the defaults when there is none (or it is broken).
pub fn project_model(repo: &Repo) -> Project {
    repo.project
        .as_ref()
        .map(|p| p.model.clone())
        .unwrap_or_else(|| Project {
            weft: model::FormatVersion(1),
            name: None,
            images: Default::default(),
            gateway: Default::default(),
            defaults: Default::default(),
            policy: Default::default(),
            broker: Default::default(),
            kubernetes: Default::default(),
        })
}

/// Checks the project settings; `None` when they have errors.
pub fn project(
    files: &[SourceFile],
    repo: &Repo,
    out: &mut Vec<Diagnostic>,
) -> Option<CheckedProject> {
    let model = project_model(repo);
    let max_body = parse_size(&model.gateway.max_body);
    let Some(loaded) = &repo.project else {
        // The defaults: `10MB` always parses.
        return max_body.map(|max_body| CheckedProject { model, max_body });
    };
    let site = site(files, loaded);
    let errors = out.len();
    if max_body.is_none() {
        out.push(
            Diagnostic::error(
                Code::InvalidValue,
                format!("`{}` is too large a size", model.gateway.max_body),
            )
            .at(
                loaded.file,
                site.span(&path!["gateway", "max_body"]),
                "does not fit in 64 bits of bytes",
            )
            .help("a size such as `10MB` (10,000,000 bytes) or `10MiB` (10,485,760 bytes)"),
        );
    }
    check_defaults(&site, &model.defaults, out);
    let ok = out.len() == errors;
    Some(CheckedProject {
        model,
        max_body: max_body.filter(|_| ok)?,
    })
}

/// The durations of the step defaults.
fn check_defaults(site: &Site<'_>, defaults: &StepDefaults, out: &mut Vec<Diagnostic>) {
    let mut durations = vec![(path!["defaults", "timeout"], defaults.timeout.as_ref())];
    if let Some(retry) = &defaults.retry {
        durations.push((
            path!["defaults", "retry", "initial"],
            retry.initial.as_ref(),
        ));
        durations.push((path!["defaults", "retry", "max"], retry.max.as_ref()));
    }
    for (at, d) in durations {
        if let Some(d) = d {
            out.extend(duration_error(site, &at, &d.0));
        }
    }
}

/// A diagnostic for a duration that is zero or too long (see [`duration::problem`]).
pub(super) fn duration_error(site: &Site<'_>, at: &[Seg], text: &str) -> Option<Diagnostic> {
    let problem = duration::problem(text)?;
    let what = match at.last() {
        Some(Seg::Key(k)) => k.as_str(),
        _ => "duration",
    };
    let help = match what {
        "every" => "poll at an interval such as `30s` or `5m`; zero would poll in a hot loop",
        "timeout" => "a time limit such as `30s`; zero would fail every attempt at once",
        _ => "a wait such as `1s` or `5m`",
    };
    Some(
        Diagnostic::error(Code::InvalidValue, format!("`{what}: {text}` is {problem}"))
            .at(site.file, site.span(at), "not a usable duration")
            .help(help),
    )
}

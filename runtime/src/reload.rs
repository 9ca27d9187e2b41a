//! Instances added, replaced and removed while the runtime runs: a reload builds the new set of
//! plans (sharing the integration versions already built), gives new instances lanes at their
//! steps' queues, consumers on the broker, webhook routes and timers, and retires those that
//! are gone or changed. A retired instance takes no new work; what it had queued runs to its
//! end on the version it was accepted by. Nothing stops: webhooks are answered throughout.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use arc_swap::ArcSwap;
use serde::Serialize;
use weft_plan::{Plan, Trigger};

use crate::broker::JetStreamQueue;
use crate::dispatch::{Lane, LaneTable, StepQueue};
use crate::engine::Engine;
use crate::error::StartError;
use crate::gateway::{self, GatewayState};
use crate::instance::{self, InstanceMap, InstanceRt, StepRt, Versions};
use crate::triggers::{self, Timer};
use crate::{Options, Role, redactor};

/// One step of an integration version that this process runs, for every instance that has
/// its flow enabled: one queue with a lane per instance, and one worker loop.
#[derive(Clone)]
pub(crate) struct StepGroup {
    pub step: Arc<StepRt>,
    pub queue: Arc<StepQueue>,
    pub lanes: Arc<LaneTable>,
    pub concurrency: usize,
}

/// The step groups this process runs, by version (its address: one per version), flow and
/// step; a reload adds lanes to them, or new groups.
#[derive(Default)]
pub(crate) struct StepGroups {
    groups: BTreeMap<(usize, String, String), StepGroup>,
}

impl StepGroups {
    /// Gives each of `instances` a lane at every step `options.role` runs of its enabled
    /// flows, in the step's group (made when it is new). Returns the new lanes by queue name,
    /// and the new groups (each needs a worker).
    pub fn add(
        &mut self,
        instances: &[Arc<InstanceRt>],
        options: &Options,
    ) -> (Vec<(String, Lane)>, Vec<StepGroup>) {
        let mut sorted: Vec<&Arc<InstanceRt>> = instances.iter().collect();
        sorted.sort_by(|a, b| a.key.cmp(&b.key));
        // Keyed by names borrowed from the versions: a fleet has thousands of instances.
        type Members<'a> = (&'a Arc<StepRt>, Vec<&'a Arc<InstanceRt>>);
        let mut members: BTreeMap<(usize, &str, &str), Members> = BTreeMap::new();
        for instance in sorted {
            let version = Arc::as_ptr(&instance.version) as usize;
            for flow in instance.enabled_flows() {
                for step in instance.version.flows[&flow.name].steps.values() {
                    if !options.role.runs_step(flow, &step.step) {
                        continue;
                    }
                    members
                        .entry((version, flow.name.as_str(), step.step.id.as_str()))
                        .or_insert_with(|| (step, Vec::new()))
                        .1
                        .push(instance);
                }
            }
        }
        let mut lanes = Vec::new();
        let mut fresh = Vec::new();
        for ((version, flow, step_id), (step, instances)) in members {
            let key = (version, flow.to_string(), step_id.to_string());
            let is_new = !self.groups.contains_key(&key);
            let group = self.groups.entry(key).or_insert_with(|| {
                let concurrency =
                    options.step_concurrency.max(1) * options.role.replicas_here(&step.step);
                StepGroup {
                    step: step.clone(),
                    queue: Arc::new(StepQueue::new(0, concurrency)),
                    lanes: Arc::new(ArcSwap::from_pointee(Vec::new())),
                    concurrency,
                }
            });
            let first = group.queue.add_lanes(instances.len());
            let mut table = Vec::clone(&group.lanes.load());
            for (n, instance) in instances.into_iter().enumerate() {
                let lane = Lane {
                    queue: group.queue.clone(),
                    index: first + n,
                    pending: instance.pending.clone(),
                };
                lanes.push((instance.queue_of(&group.step), lane.clone()));
                table.push((instance.clone(), lane));
            }
            // A step shared by several instances caps each one's share of its slots.
            let limit = match table.len() {
                1 => group.concurrency,
                _ => options
                    .instance_concurrency
                    .unwrap_or(group.concurrency * 3 / 4),
            };
            group.queue.set_lane_limit(limit);
            group.lanes.store(Arc::new(table));
            if is_new {
                fresh.push(group.clone());
            }
        }
        (lanes, fresh)
    }
}

/// One worker loop per step group.
pub(crate) fn spawn_workers(engine: &Arc<Engine>, groups: Vec<StepGroup>) {
    for group in groups {
        tokio::spawn(engine.clone().worker(
            group.step,
            group.queue,
            group.lanes,
            group.concurrency,
        ));
    }
}

/// Starts the deploy flows of `instances` (once per plan hash), and returns the schedules and
/// polls of their enabled flows for the timer wheel.
pub(crate) fn start_triggers(engine: &Arc<Engine>, instances: &[Arc<InstanceRt>]) -> Vec<Timer> {
    let mut timed = Vec::new();
    for instance in instances {
        for flow in instance.enabled_flows() {
            let compiled = &instance.version.flows[&flow.name];
            let kind = match &flow.trigger {
                Trigger::Schedule { .. } => {
                    compiled.schedule.clone().map(triggers::Timed::Schedule)
                }
                Trigger::Poll { .. } => compiled.poll.clone().map(triggers::Timed::Poll),
                Trigger::Deploy => {
                    tokio::spawn(triggers::deploy(
                        engine.clone(),
                        instance.clone(),
                        flow.name.clone(),
                        instance.deploy_hash.clone().unwrap_or_default(),
                    ));
                    None
                }
                Trigger::Webhook { .. } => None,
            };
            timed.extend(kind.map(|kind| Timer {
                instance: instance.clone(),
                flow: flow.name.clone(),
                kind,
            }));
        }
    }
    timed
}

/// Messages one instance may have waiting or in flight: the flag, else a quarter of the
/// process's bound when several instances run here.
pub(crate) fn max_instance_pending(options: &Options, instances: usize) -> usize {
    match options.max_instance_pending {
        Some(n) => n,
        None if instances > 1 => options.max_pending / 4,
        None => options.max_pending,
    }
    .max(1)
}

/// What a reload changed, by instance key (`<customer>/<integration>`).
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize)]
pub struct Reloaded {
    pub added: Vec<String>,
    /// Instances whose plan changed (config, secrets, version): the new one takes new work.
    pub replaced: Vec<String>,
    pub removed: Vec<String>,
    pub unchanged: usize,
}

impl Reloaded {
    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.replaced.is_empty() && self.removed.is_empty()
    }
}

impl std::fmt::Display for Reloaded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} added, {} replaced, {} removed, {} unchanged",
            self.added.len(),
            self.replaced.len(),
            self.removed.len(),
            self.unchanged
        )
    }
}

/// What a reload keeps between reloads.
pub(crate) struct ReloadState {
    pub versions: Versions,
    pub groups: StepGroups,
    /// Every secret value seen, by name: a replaced secret stays masked.
    pub secrets: HashMap<String, String>,
}

/// Reloads a running runtime's plans; see [`Reloader::reload`].
pub struct Reloader {
    pub(crate) engine: Arc<Engine>,
    pub(crate) gateway: Arc<GatewayState>,
    pub(crate) broker: Option<Arc<JetStreamQueue>>,
    /// Where new timers go (none in `weft test`, which fires triggers itself).
    pub(crate) timers: Option<tokio::sync::mpsc::UnboundedSender<Vec<Timer>>>,
    pub(crate) options: Options,
    pub(crate) state: tokio::sync::Mutex<ReloadState>,
}

impl Reloader {
    /// The engine whose plans this reloads.
    pub fn engine(&self) -> &Arc<Engine> {
        &self.engine
    }

    /// Runs `plans` from now on, with `secrets` (every secret's value by name): instances not
    /// running yet are added, those whose plan changed are replaced, and those missing from
    /// `plans` are removed. On an error nothing changes.
    pub async fn reload(
        &self,
        plans: Vec<Plan>,
        secrets: HashMap<String, String>,
    ) -> Result<Reloaded, StartError> {
        crate::check_role(&plans, &self.options)?;
        let mut state = self.state.lock().await;
        let mut all_secrets = state.secrets.clone();
        all_secrets.extend(secrets.clone());
        // Built on every core, off the async workers: a fleet has thousands of instances.
        let mut versions = std::mem::take(&mut state.versions);
        let renderer = *self.engine.renderer();
        let public_url = self.options.public_url.clone();
        let (built, versions) = tokio::task::spawn_blocking(move || {
            let built =
                instance::build_instances(&plans, &renderer, &secrets, &public_url, &mut versions);
            (built, versions)
        })
        .await
        .map_err(|e| StartError::Role(format!("building the reloaded instances: {e}")))?;
        state.versions = versions;
        let built = built?;

        let current = self.engine.instances();
        let mut next = InstanceMap::with_capacity(built.len());
        let mut report = Reloaded::default();
        let mut fresh = Vec::new();
        let mut retired = Vec::new();
        for instance in built {
            let key = instance.key.clone();
            match current.get(&key) {
                Some(old) if old.same_as(&instance) => {
                    report.unchanged += 1;
                    next.insert(key, old.clone());
                    continue;
                }
                Some(old) => {
                    report.replaced.push(key.clone());
                    retired.push(old.clone());
                }
                None => report.added.push(key.clone()),
            }
            let instance = Arc::new(instance);
            fresh.push(instance.clone());
            next.insert(key, instance);
        }
        for (key, old) in current.iter() {
            if !next.contains_key(key) {
                report.removed.push(key.clone());
                retired.push(old.clone());
            }
        }
        report.added.sort();
        report.replaced.sort();
        report.removed.sort();
        if report.is_empty() {
            return Ok(report);
        }
        let serves_hooks = !matches!(self.options.role, Role::Step { .. });
        let hooks = if serves_hooks {
            Some(gateway::hooks(&next, self.options.max_body)?)
        } else {
            None
        };

        // From here on nothing fails but the broker's declarations (retried until it answers).
        let (lanes, groups) = state.groups.add(&fresh, &self.options);
        self.engine.dispatch().add_lanes(lanes);
        spawn_workers(&self.engine, groups);
        self.engine.set_redactor(redactor(&all_secrets, &next));
        state.secrets = all_secrets;
        let count = next.len();
        self.engine.set_instances(next);
        for old in &retired {
            old.retire();
        }
        if let Some(hooks) = hooks {
            self.gateway
                .set_hooks(hooks, max_instance_pending(&self.options, count));
        }
        if let Some(timers) = &self.timers {
            let _ = timers.send(start_triggers(&self.engine, &fresh));
        }
        if let Some(broker) = &self.broker {
            let is_new = |key: &str| !current.contains_key(key);
            broker
                .start_instances(
                    &self.engine,
                    &fresh,
                    &is_new,
                    self.options.step_concurrency,
                    &self.options.role,
                )
                .await?;
        }
        Ok(report)
    }
}

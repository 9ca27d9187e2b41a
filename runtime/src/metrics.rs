//! Prometheus metrics: queue depth per step, step latency, retries, dead letters, webhooks.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StepLabels {
    pub queue: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StatusLabels {
    pub status: String,
}

pub struct Metrics {
    registry: Registry,
    pub queue_depth: Family<StepLabels, Gauge>,
    pub step_seconds: Family<StepLabels, Histogram>,
    pub retries: Family<StepLabels, Counter>,
    pub dead_letters: Family<StepLabels, Counter>,
    pub webhooks: Family<StatusLabels, Counter>,
    pub executions: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("weft");
        let queue_depth = Family::<StepLabels, Gauge>::default();
        let step_seconds = Family::<StepLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.0005, 2.0, 16))
        });
        let retries = Family::<StepLabels, Counter>::default();
        let dead_letters = Family::<StepLabels, Counter>::default();
        let webhooks = Family::<StatusLabels, Counter>::default();
        let executions = Counter::default();
        registry.register(
            "queue_depth",
            "Messages waiting per step queue",
            queue_depth.clone(),
        );
        registry.register(
            "step_duration_seconds",
            "Time to run one attempt of a step",
            step_seconds.clone(),
        );
        registry.register(
            "step_retries",
            "Failed attempts that will be retried",
            retries.clone(),
        );
        registry.register(
            "dead_letters",
            "Messages moved to the dead-letter queue",
            dead_letters.clone(),
        );
        registry.register(
            "webhook_requests",
            "Webhook calls by HTTP status",
            webhooks.clone(),
        );
        registry.register(
            "executions_started",
            "Executions started by triggers",
            executions.clone(),
        );
        Metrics {
            registry,
            queue_depth,
            step_seconds,
            retries,
            dead_letters,
            webhooks,
            executions,
        }
    }

    /// The Prometheus text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

//! Names on the NATS JetStream broker: the runtime creates streams and consumers under them,
//! and the compiler's Kubernetes autoscalers watch them, so both read them from here.

/// A stream or consumer name: `[a-z0-9_-]`, everything else `-`.
pub fn safe(text: &str) -> String {
    text.chars()
        .map(|c| match c.to_ascii_lowercase() {
            c @ ('a'..='z' | '0'..='9' | '_' | '-') => c,
            _ => '-',
        })
        .collect()
}

/// The work-queue stream of one flow of an instance.
pub fn flow_stream(customer: &str, integration: &str, flow: &str) -> String {
    safe(&format!("weft_{customer}_{integration}_{flow}"))
}

/// The durable consumer of a step on its flow's stream, shared by the step's replicas.
pub fn step_consumer(step: &str) -> String {
    safe(step)
}

/// The subject of an instance's history stream, on which step workers publish.
pub fn history_subject(customer: &str, integration: &str) -> String {
    format!("weft.history.{}.{}", safe(customer), safe(integration))
}

/// The subject on which a step worker that runs several instances (a fleet's) publishes their
/// history; a gateway that runs several instances applies it.
pub const FLEET_HISTORY_SUBJECT: &str = "weft.history.fleet";

/// The stream of [`FLEET_HISTORY_SUBJECT`] (`weft.history.<customer>.<integration>` subjects
/// have three dots: no overlap).
pub const FLEET_HISTORY_STREAM: &str = "weft-history_fleet";

/// The name of an instance's history stream (flow streams start with `weft_`: no collision).
pub fn history_stream(customer: &str, integration: &str) -> String {
    format!("weft-history_{}_{}", safe(customer), safe(integration))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_keep_only_safe_characters() {
        assert_eq!(
            flow_stream("Acme", "ref.v2", "orders"),
            "weft_acme_ref-v2_orders"
        );
        assert_eq!(history_stream("acme", "ref"), "weft-history_acme_ref");
        assert_eq!(history_subject("acme", "r.f"), "weft.history.acme.r-f");
    }
}

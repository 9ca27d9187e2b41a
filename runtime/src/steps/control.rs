//! Control steps: `transform`, `log`, `delay`, `for_each`, `respond`, `dispatch` (`branch` is
//! evaluated by the engine, its conditions being templates).

use serde_json::{Value, json};
use weft_plan::Builtin;

use super::{Outcome, Reply, StepEnv, StepError, duration, kind, required_str, str_field};

/// Runs a control built-in.
pub(super) async fn run(
    builtin: Builtin,
    input: Value,
    env: &StepEnv<'_>,
) -> Result<Outcome, StepError> {
    match builtin {
        Builtin::Transform => Ok(Outcome::Output(take(input, "value").unwrap_or_default())),
        Builtin::Log => {
            let message = env
                .redactor
                .str(str_field(&input, "message").unwrap_or_default());
            match str_field(&input, "level").unwrap_or("info") {
                "debug" => tracing::debug!(target: "weft::flow", "{message}"),
                "warn" => tracing::warn!(target: "weft::flow", "{message}"),
                "error" => tracing::error!(target: "weft::flow", "{message}"),
                _ => tracing::info!(target: "weft::flow", "{message}"),
            }
            Ok(Outcome::Output(json!({ "message": message })))
        }
        Builtin::Delay => {
            let d = duration(required_str(&input, "duration")?)?;
            match env.offline {
                Some(offline) => offline.advance(d),
                None => tokio::time::sleep(d).await,
            }
            Ok(Outcome::Output(
                json!({ "waited_ms": d.as_millis() as u64 }),
            ))
        }
        Builtin::ForEach => match take(input, "items") {
            Some(Value::Array(items)) => Ok(Outcome::FanOut(items)),
            Some(other) => Err(StepError::permanent(format!(
                "`items` must be a list, found {}",
                kind(&other)
            ))),
            None => Err(StepError::permanent("`items` is missing")),
        },
        Builtin::Respond => Ok(Outcome::Respond(reply(input))),
        Builtin::Dispatch => Ok(Outcome::Dispatch {
            flow: required_str(&input, "flow")?.to_string(),
            payload: take(input, "payload").unwrap_or_default(),
        }),
        other => Err(StepError::permanent(format!(
            "`{other}` is not run as a step"
        ))),
    }
}

/// The field `key` of a step's rendered input, moved out of it, when it has one.
fn take(mut input: Value, key: &str) -> Option<Value> {
    input.as_object_mut()?.remove(key)
}

/// A `respond` step's rendered input as the sync caller's answer.
fn reply(input: Value) -> Reply {
    let status = input.get("status").and_then(Value::as_u64).unwrap_or(200) as u16;
    let headers = input
        .get("headers")
        .and_then(Value::as_object)
        .map(|h| {
            h.iter()
                .map(|(k, v)| {
                    (
                        k.clone(),
                        v.as_str().map_or_else(|| v.to_string(), str::to_string),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    Reply {
        status,
        headers,
        body: take(input, "body").unwrap_or_default(),
    }
}

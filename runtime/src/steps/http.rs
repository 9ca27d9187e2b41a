//! `http.request`, `http.get`, `http.post`, and the request sender component actions share.

use std::time::Duration;

use serde_json::{Map, Value};
use weft_plan::Builtin;

use super::{StepEnv, StepError, duration, required_str, str_field};
use crate::http::{check_url, is_egress_denial};
use crate::nesting::{MAX_NESTING, nesting};
use crate::offline::{MockRequest, OfflineHooks};

/// Runs an `http.*` built-in.
pub(super) async fn run(
    builtin: Builtin,
    input: &Value,
    env: &StepEnv<'_>,
) -> Result<Value, StepError> {
    let method = match builtin {
        Builtin::HttpGet => "GET",
        Builtin::HttpPost => "POST",
        _ => required_str(input, "method")?,
    };
    let url = required_str(input, "url")?;
    let header_name = str_field(input, "idempotency_header").unwrap_or("Idempotency-Key");
    let timeout = match str_field(input, "timeout") {
        Some(t) => duration(t)?,
        None => env.timeout,
    };
    let object = |key: &str| {
        input
            .get(key)
            .and_then(Value::as_object)
            .cloned()
            .unwrap_or_default()
    };
    send(
        env,
        method,
        url,
        &object("query"),
        &object("headers"),
        input.get("body"),
        header_name,
        timeout,
        None,
    )
    .await
}

#[allow(clippy::too_many_arguments)]
pub(super) async fn send(
    env: &StepEnv<'_>,
    method: &str,
    url: &str,
    query: &Map<String, Value>,
    headers: &Map<String, Value>,
    body: Option<&Value>,
    idempotency_header: &str,
    timeout: Duration,
    auth: Option<&(dyn Fn(reqwest::RequestBuilder) -> reqwest::RequestBuilder + Send + Sync)>,
) -> Result<Value, StepError> {
    let parsed = parse_url(url)?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(StepError::permanent(format!(
            "`{url}` is not an http(s) URL"
        )));
    }
    check_url(&parsed, env.deny_private).map_err(|e| StepError::permanent(e.to_string()))?;
    let method: reqwest::Method = method
        .parse()
        .map_err(|_| StepError::permanent(format!("invalid method `{method}`")))?;
    let mut req = env.http.request(method, parsed).timeout(timeout);
    let query: Vec<(String, String)> = query
        .iter()
        .filter(|(_, v)| !v.is_null())
        .map(|(k, v)| {
            (
                k.clone(),
                v.as_str().map_or_else(|| v.to_string(), str::to_string),
            )
        })
        .collect();
    if !query.is_empty() {
        req = req.query(&query);
    }
    for (k, v) in headers {
        req = req.header(
            k.as_str(),
            v.as_str().map_or_else(|| v.to_string(), str::to_string),
        );
    }
    req = req.header(idempotency_header, env.idempotency_key);
    if let Some(auth) = auth {
        req = auth(req);
    }
    match body {
        None | Some(Value::Null) => {}
        Some(Value::String(s)) => {
            req = req
                .header("content-type", "text/plain; charset=utf-8")
                .body(s.clone())
        }
        Some(v) => req = req.json(v),
    }
    let response = match env.offline {
        Some(offline) => answer_offline(env, offline, req)?,
        None => req.send().await.map_err(|e| send_error(url, &e))?,
    };
    let status = response.status().as_u16();
    let response_headers: Map<String, Value> = response
        .headers()
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().to_string(),
                Value::String(v.to_str().unwrap_or_default().to_string()),
            )
        })
        .collect();
    let bytes = read_limited(response, url, crate::render::max_output()).await?;
    let body = serde_json::from_slice::<Value>(&bytes)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
    if nesting(&body) > MAX_NESTING {
        return Err(StepError::permanent(format!(
            "{url}: the answer nests deeper than {MAX_NESTING} levels"
        )));
    }
    match status {
        200..=399 => Ok(crate::render::object([
            ("status", status.into()),
            ("headers", Value::Object(response_headers)),
            ("body", body),
        ])),
        408 | 429 | 500..=599 => Err(StepError::retryable(format!("{url} answered {status}"))),
        _ => Err(StepError::permanent(format!(
            "{url} answered {status}: {}",
            // Redacted before it is cut: a cut secret would otherwise leak its prefix.
            truncate(&env.redactor.str(&body.to_string()), 300)
        ))),
    }
}

/// `weft test`: the request goes to the test's mocks instead of the network; the answer then
/// goes through the same checks as a real one. A request no mock matches fails permanently.
fn answer_offline(
    env: &StepEnv<'_>,
    offline: &dyn OfflineHooks,
    req: reqwest::RequestBuilder,
) -> Result<reqwest::Response, StepError> {
    let req = req
        .build()
        .map_err(|e| StepError::permanent(format!("building the request: {e}")))?;
    let headers = req
        .headers()
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().to_string(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    let body = match req.body().and_then(reqwest::Body::as_bytes) {
        None | Some([]) => Value::Null,
        Some(bytes) => serde_json::from_slice(bytes)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(bytes).into_owned())),
    };
    let request = MockRequest {
        flow: env.flow.to_string(),
        step: env.step.to_string(),
        key: env.idempotency_key.to_string(),
        method: req.method().to_string(),
        url: req.url().to_string(),
        headers,
        body,
    };
    let answer = offline.http(request).map_err(StepError::permanent)?;
    let mut response = axum::http::Response::builder().status(answer.status);
    for (k, v) in &answer.headers {
        response = response.header(k.as_str(), v.as_str());
    }
    let bytes = match &answer.body {
        Value::Null => Vec::new(),
        Value::String(s) => s.clone().into_bytes(),
        other => {
            response = response.header("content-type", "application/json");
            serde_json::to_vec(other).unwrap_or_default()
        }
    };
    let response = response
        .body(bytes)
        .map_err(|e| StepError::permanent(format!("the mock's answer: {e}")))?;
    Ok(reqwest::Response::from(response))
}

/// A request that got no answer: timeouts and connection errors are retried; the egress
/// policy's refusal is not.
/// Parses a URL; the last one parsed on this thread is kept, since a step calls the same URL
/// event after event (a URL parse was about 2% of an event's work).
fn parse_url(url: &str) -> Result<reqwest::Url, StepError> {
    thread_local! {
        static LAST: std::cell::RefCell<Option<reqwest::Url>> = const { std::cell::RefCell::new(None) };
    }
    LAST.with_borrow_mut(|last| {
        if let Some(parsed) = last.as_ref().filter(|u| u.as_str() == url) {
            return Ok(parsed.clone());
        }
        let parsed: reqwest::Url = url
            .parse()
            .map_err(|e| StepError::permanent(format!("invalid URL `{url}`: {e}")))?;
        *last = Some(parsed.clone());
        Ok(parsed)
    })
}

fn send_error(url: &str, e: &reqwest::Error) -> StepError {
    if e.is_timeout() {
        return StepError::retryable(format!("{url}: timed out"));
    }
    // The innermost causes say what happened (refused, DNS, TLS, egress policy).
    let mut causes = Vec::new();
    let mut source = std::error::Error::source(e);
    while let Some(cause) = source {
        causes.push(cause.to_string());
        source = cause.source();
    }
    let detail = causes.last().cloned().unwrap_or_else(|| e.to_string());
    if is_egress_denial(e) {
        return StepError::permanent(format!("{url}: {detail}"));
    }
    StepError::retryable(format!("{url}: {detail}"))
}

/// Reads a response body of at most `limit` bytes (the step output limit).
async fn read_limited(
    mut response: reqwest::Response,
    url: &str,
    limit: usize,
) -> Result<Vec<u8>, StepError> {
    if response.content_length().is_some_and(|n| n > limit as u64) {
        return Err(too_large(url, limit));
    }
    let mut bytes = Vec::new();
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|e| StepError::retryable(format!("{url}: reading the response: {e}")))?
    {
        if bytes.len() + chunk.len() > limit {
            return Err(too_large(url, limit));
        }
        bytes.extend_from_slice(&chunk);
    }
    Ok(bytes)
}

fn too_large(url: &str, limit: usize) -> StepError {
    StepError::permanent(format!(
        "{url}: the response exceeds {limit} bytes (the step output limit)"
    ))
}

fn truncate(s: &str, n: usize) -> String {
    if s.len() <= n {
        s.to_string()
    } else {
        let mut end = n;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        format!("{}…", &s[..end])
    }
}

//! Built-in steps and component actions: what a step does with its rendered input.
//! `branch` conditions are evaluated by the engine (they are templates); everything else is here.

use std::collections::BTreeMap;
use std::time::Duration;

use base64::Engine as _;
use serde_json::{Map, Value, json};
use weft_compiler::plan::{self, HttpMethod};

use crate::http::check_url;

/// What a step produced.
#[derive(Debug)]
pub enum Outcome {
    Output(Value),
    /// One message per item down the loop body.
    FanOut(Vec<Value>),
    /// The reply of a sync webhook (also the step's output).
    Respond(Reply),
    /// Start the sibling flow with this payload as `trigger.body`.
    Dispatch {
        flow: String,
        payload: Value,
    },
}

/// A sync webhook's reply.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub headers: BTreeMap<String, String>,
    pub body: Value,
}

/// A failed attempt. Retryable failures (5xx, connection errors, timeouts) are retried with
/// backoff; permanent ones (4xx, bad input) go straight to `on_error`.
#[derive(Debug, Clone)]
pub struct StepError {
    pub message: String,
    pub retryable: bool,
}

impl StepError {
    pub fn permanent(message: impl Into<String>) -> Self {
        StepError {
            message: message.into(),
            retryable: false,
        }
    }
    pub fn retryable(message: impl Into<String>) -> Self {
        StepError {
            message: message.into(),
            retryable: true,
        }
    }
}

/// What a step needs besides its input.
pub struct StepEnv<'a> {
    pub http: &'a reqwest::Client,
    /// Masks secrets in what the step writes to the log.
    pub redactor: &'a crate::redact::Redactor,
    pub deny_private: bool,
    /// Sent as `Idempotency-Key` (or the step's `idempotency_header`) on HTTP calls.
    pub idempotency_key: &'a str,
    pub timeout: Duration,
    pub plan: &'a plan::Plan,
    /// The step's connection with its fields rendered.
    pub connection: Option<(&'a plan::Connection, Map<String, Value>)>,
    /// The rendered request of a component action (`http` templates over input and connection).
    pub action: Option<ActionCall>,
    /// Base URLs of custom components' containers, by component.
    pub component_urls: &'a std::collections::HashMap<String, String>,
}

/// A component action ready to send.
#[derive(Debug, Clone)]
pub struct ActionCall {
    pub component: String,
    pub action: String,
    pub http: Option<RenderedHttp>,
}

#[derive(Debug, Clone)]
pub struct RenderedHttp {
    pub method: HttpMethod,
    pub path: String,
    pub query: Map<String, Value>,
    pub headers: Map<String, Value>,
    pub body: Option<Value>,
}

fn str_field<'v>(input: &'v Value, key: &str) -> Option<&'v str> {
    input.get(key).and_then(Value::as_str)
}

fn required_str<'v>(input: &'v Value, key: &str) -> Result<&'v str, StepError> {
    str_field(input, key).ok_or_else(|| StepError::permanent(format!("`{key}` must be a string")))
}

pub async fn run(uses: &str, input: Value, env: &StepEnv<'_>) -> Result<Outcome, StepError> {
    match uses {
        "transform" => Ok(Outcome::Output(
            input.get("value").cloned().unwrap_or(Value::Null),
        )),
        "log" => {
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
        "delay" => {
            let text = required_str(&input, "duration")?;
            let d = humantime_duration(text)?;
            tokio::time::sleep(d).await;
            Ok(Outcome::Output(
                json!({ "waited_ms": d.as_millis() as u64 }),
            ))
        }
        "for_each" => match input.get("items") {
            Some(Value::Array(items)) => Ok(Outcome::FanOut(items.clone())),
            Some(other) => Err(StepError::permanent(format!(
                "`items` must be a list, found {}",
                kind(other)
            ))),
            None => Err(StepError::permanent("`items` is missing")),
        },
        "respond" => {
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
            Ok(Outcome::Respond(Reply {
                status,
                headers,
                body: input.get("body").cloned().unwrap_or(Value::Null),
            }))
        }
        "dispatch" => Ok(Outcome::Dispatch {
            flow: required_str(&input, "flow")?.to_string(),
            payload: input.get("payload").cloned().unwrap_or(Value::Null),
        }),
        "http.request" | "http.get" | "http.post" => {
            let method = match uses {
                "http.get" => "GET",
                "http.post" => "POST",
                _ => required_str(&input, "method")?,
            };
            let url = required_str(&input, "url")?;
            let header_name = str_field(&input, "idempotency_header").unwrap_or("Idempotency-Key");
            let timeout = match str_field(&input, "timeout") {
                Some(t) => humantime_duration(t)?,
                None => env.timeout,
            };
            let headers = input
                .get("headers")
                .and_then(Value::as_object)
                .cloned()
                .unwrap_or_default();
            let query = input
                .get("query")
                .and_then(Value::as_object)
                .cloned()
                .unwrap_or_default();
            send(
                env,
                method,
                url,
                &query,
                &headers,
                input.get("body"),
                header_name,
                timeout,
                None,
            )
            .await
            .map(Outcome::Output)
        }
        "file.list" => file_list(&input).map(Outcome::Output),
        "file.read" => file_read(&input).await.map(Outcome::Output),
        "file.write" => file_write(&input).await.map(Outcome::Output),
        "file.move" => {
            let from = required_str(&input, "from")?;
            let to = required_str(&input, "to")?;
            if let Some(parent) = std::path::Path::new(to).parent() {
                tokio::fs::create_dir_all(parent).await.map_err(|e| {
                    StepError::retryable(format!("creating {}: {e}", parent.display()))
                })?;
            }
            tokio::fs::rename(from, to)
                .await
                .map_err(|e| io_error(from, e))?;
            Ok(Outcome::Output(json!({ "from": from, "to": to })))
        }
        "csv.parse" => csv_parse(&input).map(Outcome::Output),
        "csv.write" => csv_write(&input).map(Outcome::Output),
        _ => match &env.action {
            Some(call) => component_action(env, call, &input)
                .await
                .map(Outcome::Output),
            None => Err(StepError::permanent(format!("unknown step kind `{uses}`"))),
        },
    }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "a mapping",
    }
}

fn humantime_duration(text: &str) -> Result<Duration, StepError> {
    parse_duration(text).ok_or_else(|| StepError::permanent(format!("`{text}` is not a duration")))
}

/// `500ms`, `30s`, `5m`, `1h`, `1h 30m`.
pub fn parse_duration(text: &str) -> Option<Duration> {
    let mut total = Duration::ZERO;
    let mut rest = text.trim();
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !c.is_ascii_digit())?;
        let n: u64 = rest[..digits].parse().ok()?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == ' ')
            .unwrap_or(rest.len());
        let unit = &rest[..unit_len];
        total += match unit {
            "ms" => Duration::from_millis(n),
            "s" => Duration::from_secs(n),
            "m" => Duration::from_secs(n * 60),
            "h" => Duration::from_secs(n * 3600),
            "d" => Duration::from_secs(n * 86400),
            _ => return None,
        };
        rest = rest[unit_len..].trim_start();
    }
    Some(total)
}

fn io_error(path: &str, e: std::io::Error) -> StepError {
    let message = format!("{path}: {e}");
    match e.kind() {
        std::io::ErrorKind::NotFound
        | std::io::ErrorKind::PermissionDenied
        | std::io::ErrorKind::InvalidInput => StepError::permanent(message),
        _ => StepError::retryable(message),
    }
}

#[allow(clippy::too_many_arguments)]
async fn send(
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
    let parsed: reqwest::Url = url
        .parse()
        .map_err(|e| StepError::permanent(format!("invalid URL `{url}`: {e}")))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(StepError::permanent(format!(
            "`{url}` is not an http(s) URL"
        )));
    }
    check_url(&parsed, env.deny_private).map_err(StepError::permanent)?;
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
    let response = req.send().await.map_err(|e| {
        if e.is_timeout() {
            return StepError::retryable(format!("{url}: timed out"));
        }
        // The innermost causes say what happened (refused, DNS, TLS, egress policy).
        let mut causes = Vec::new();
        let mut source = std::error::Error::source(&e);
        while let Some(cause) = source {
            causes.push(cause.to_string());
            source = cause.source();
        }
        let detail = causes.last().cloned().unwrap_or_else(|| e.to_string());
        if detail.contains("egress policy") {
            return StepError::permanent(format!("{url}: {detail}"));
        }
        StepError::retryable(format!("{url}: {detail}"))
    })?;
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
    let bytes = response
        .bytes()
        .await
        .map_err(|e| StepError::retryable(format!("{url}: reading the response: {e}")))?;
    let body = serde_json::from_slice::<Value>(&bytes)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
    match status {
        200..=399 => Ok(json!({ "status": status, "headers": response_headers, "body": body })),
        408 | 429 | 500..=599 => Err(StepError::retryable(format!("{url} answered {status}"))),
        _ => Err(StepError::permanent(format!(
            "{url} answered {status}: {}",
            truncate(&body.to_string(), 300)
        ))),
    }
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

async fn component_action(
    env: &StepEnv<'_>,
    call: &ActionCall,
    input: &Value,
) -> Result<Value, StepError> {
    let component =
        env.plan.components.get(&call.component).ok_or_else(|| {
            StepError::permanent(format!("unknown component `{}`", call.component))
        })?;
    let fields = env
        .connection
        .as_ref()
        .map(|(_, f)| f.clone())
        .unwrap_or_default();
    let auth_kind = env
        .connection
        .as_ref()
        .map(|(c, _)| c.auth.as_str())
        .unwrap_or("none");
    let field = |k: &str| {
        fields
            .get(k)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string()
    };
    let (token, username, password, key) = (
        field("token"),
        field("username"),
        field("password"),
        field("key"),
    );
    let key_header = fields
        .get("header")
        .and_then(Value::as_str)
        .unwrap_or("X-API-Key")
        .to_string();
    let apply_auth = move |req: reqwest::RequestBuilder| -> reqwest::RequestBuilder {
        match auth_kind {
            "bearer" => req.bearer_auth(&token),
            "basic" => req.basic_auth(&username, Some(&password)),
            "api_key" => req.header(key_header.as_str(), &key),
            _ => req,
        }
    };
    match &call.http {
        Some(http) => {
            let base = env
                .connection
                .as_ref()
                .and_then(|(_, f)| f.get("base_url").and_then(Value::as_str).map(str::to_string))
                .or_else(|| component.base_url.clone())
                .ok_or_else(|| StepError::permanent(format!("component `{}` has no base URL: set `base_url` on the component or the connection", call.component)))?;
            let url = format!("{}{}", base.trim_end_matches('/'), http.path);
            let method = serde_json::to_value(http.method)
                .ok()
                .and_then(|m| m.as_str().map(str::to_string))
                .unwrap_or_else(|| "GET".into());
            let response = send(
                env,
                &method,
                &url,
                &http.query,
                &http.headers,
                http.body.as_ref(),
                "Idempotency-Key",
                env.timeout,
                Some(&apply_auth),
            )
            .await?;
            // A component action's output is the API's answer (parsed JSON, or text).
            Ok(response.get("body").cloned().unwrap_or(Value::Null))
        }
        None => {
            // Custom code: the component's container answers POST /actions/<action>.
            // Where it listens: `--component-url NAME=URL` (or WEFT_COMPONENT_URL_<NAME>),
            // else the compose service of the same name.
            let base = env
                .component_urls
                .get(&call.component)
                .cloned()
                .unwrap_or_else(|| format!("http://{}:8080", call.component));
            let url = format!("{}/actions/{}", base.trim_end_matches('/'), call.action);
            let body = json!({ "input": input, "connection": Value::Object(fields.clone()) });
            let out = send(
                env,
                "POST",
                &url,
                &Map::new(),
                &Map::new(),
                Some(&body),
                "Idempotency-Key",
                env.timeout,
                None,
            )
            .await?;
            Ok(out["body"].get("output").cloned().unwrap_or(Value::Null))
        }
    }
}

fn file_list(input: &Value) -> Result<Value, StepError> {
    let folder = required_str(input, "folder")?;
    let matcher = match str_field(input, "pattern") {
        Some(p) => Some(
            globset::Glob::new(p)
                .map_err(|e| StepError::permanent(format!("pattern `{p}`: {e}")))?
                .compile_matcher(),
        ),
        None => None,
    };
    let entries = match std::fs::read_dir(folder) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(json!([])),
        Err(e) => return Err(io_error(folder, e)),
    };
    let mut files = Vec::new();
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if !entry.file_type().is_ok_and(|t| t.is_file())
            || matcher.as_ref().is_some_and(|m| !m.is_match(&name))
        {
            continue;
        }
        let size = entry.metadata().map(|m| m.len()).unwrap_or(0);
        files.push(json!({ "name": name, "path": entry.path().to_string_lossy(), "size": size }));
    }
    files.sort_by(|a, b| a["name"].as_str().cmp(&b["name"].as_str()));
    Ok(Value::Array(files))
}

async fn file_read(input: &Value) -> Result<Value, StepError> {
    let path = required_str(input, "path")?;
    let bytes = tokio::fs::read(path).await.map_err(|e| io_error(path, e))?;
    match str_field(input, "format").unwrap_or("text") {
        "json" => serde_json::from_slice(&bytes)
            .map_err(|e| StepError::permanent(format!("{path}: not JSON: {e}"))),
        "base64" => Ok(Value::String(
            base64::engine::general_purpose::STANDARD.encode(&bytes),
        )),
        _ => String::from_utf8(bytes).map(Value::String).map_err(|_| {
            StepError::permanent(format!("{path}: not UTF-8 text (use `format: base64`)"))
        }),
    }
}

async fn file_write(input: &Value) -> Result<Value, StepError> {
    use tokio::io::AsyncWriteExt;
    let path = required_str(input, "path")?;
    let content = match input.get("content") {
        Some(Value::String(s)) => s.clone(),
        Some(v) => serde_json::to_string_pretty(v).unwrap_or_default(),
        None => String::new(),
    };
    if let Some(parent) = std::path::Path::new(path)
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
    {
        tokio::fs::create_dir_all(parent)
            .await
            .map_err(|e| io_error(path, e))?;
    }
    let mode = str_field(input, "mode").unwrap_or("overwrite");
    let mut options = tokio::fs::OpenOptions::new();
    match mode {
        "append" => options.append(true).create(true),
        "create" => options.write(true).create_new(true),
        _ => options.write(true).create(true).truncate(true),
    };
    let mut file = options.open(path).await.map_err(|e| io_error(path, e))?;
    file.write_all(content.as_bytes())
        .await
        .map_err(|e| io_error(path, e))?;
    file.sync_all().await.map_err(|e| io_error(path, e))?;
    Ok(json!({ "path": path, "bytes": content.len() }))
}

fn delimiter(input: &Value) -> u8 {
    str_field(input, "delimiter")
        .and_then(|d| d.bytes().next())
        .unwrap_or(b',')
}

fn csv_parse(input: &Value) -> Result<Value, StepError> {
    let text = required_str(input, "text")?;
    let header = input.get("header").and_then(Value::as_bool).unwrap_or(true);
    let mut reader = csv::ReaderBuilder::new()
        .delimiter(delimiter(input))
        .has_headers(header)
        .flexible(true)
        .from_reader(text.as_bytes());
    let columns: Vec<String> = if header {
        reader
            .headers()
            .map_err(|e| StepError::permanent(format!("CSV header: {e}")))?
            .iter()
            .map(str::to_string)
            .collect()
    } else {
        Vec::new()
    };
    let mut rows = Vec::new();
    for record in reader.records() {
        let record = record.map_err(|e| StepError::permanent(format!("CSV: {e}")))?;
        if header {
            let row: Map<String, Value> = columns
                .iter()
                .zip(record.iter())
                .map(|(k, v)| (k.clone(), Value::String(v.to_string())))
                .collect();
            rows.push(Value::Object(row));
        } else {
            rows.push(Value::Array(
                record
                    .iter()
                    .map(|v| Value::String(v.to_string()))
                    .collect(),
            ));
        }
    }
    Ok(Value::Array(rows))
}

fn csv_write(input: &Value) -> Result<Value, StepError> {
    let rows = match input.get("rows") {
        Some(Value::Array(rows)) => rows,
        _ => return Err(StepError::permanent("`rows` must be a list")),
    };
    let columns: Vec<String> = match input.get("columns").and_then(Value::as_array) {
        Some(cols) => cols
            .iter()
            .filter_map(|c| c.as_str().map(str::to_string))
            .collect(),
        None => rows
            .first()
            .and_then(Value::as_object)
            .map(|o| o.keys().cloned().collect())
            .unwrap_or_default(),
    };
    let mut writer = csv::WriterBuilder::new()
        .delimiter(delimiter(input))
        .from_writer(Vec::new());
    let cell = |v: &Value| {
        v.as_str().map_or_else(
            || {
                if v.is_null() {
                    String::new()
                } else {
                    v.to_string()
                }
            },
            str::to_string,
        )
    };
    if !columns.is_empty() {
        writer
            .write_record(&columns)
            .map_err(|e| StepError::permanent(e.to_string()))?;
    }
    for row in rows {
        let record: Vec<String> = match row {
            Value::Object(o) => columns
                .iter()
                .map(|c| o.get(c).map(cell).unwrap_or_default())
                .collect(),
            Value::Array(a) => a.iter().map(cell).collect(),
            other => vec![cell(other)],
        };
        writer
            .write_record(&record)
            .map_err(|e| StepError::permanent(e.to_string()))?;
    }
    let bytes = writer
        .into_inner()
        .map_err(|e| StepError::permanent(e.to_string()))?;
    Ok(Value::String(String::from_utf8_lossy(&bytes).into_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms"), Some(Duration::from_millis(500)));
        assert_eq!(parse_duration("1h 30m"), Some(Duration::from_secs(5400)));
        assert_eq!(parse_duration("5x"), None);
    }

    #[tokio::test]
    async fn the_egress_policy_refuses_private_addresses() {
        let plan: weft_compiler::plan::Plan = serde_json::from_value(json!({
            "format": 1, "integration": "x", "customer": "c", "version": "draft", "config": {},
            "connections": {}, "components": {}, "flows": [], "secrets": []
        }))
        .unwrap();
        let client = crate::http::client(true);
        let redactor = crate::redact::Redactor::default();
        let urls = std::collections::HashMap::new();
        let env = StepEnv {
            http: &client,
            redactor: &redactor,
            deny_private: true,
            idempotency_key: "k",
            timeout: Duration::from_secs(2),
            plan: &plan,
            connection: None,
            action: None,
            component_urls: &urls,
        };
        for url in [
            "http://127.0.0.1:9/x",
            "http://169.254.169.254/latest/meta-data",
            "http://localhost:9/x",
            "http://[::1]:9/",
        ] {
            let err = run("http.get", json!({ "url": url }), &env)
                .await
                .unwrap_err();
            assert!(
                err.message.contains("private") || err.message.contains("egress"),
                "{url}: {}",
                err.message
            );
        }
    }

    #[test]
    fn csv_round_trip() {
        let rows = csv_parse(&json!({ "text": "sku,qty\nA,1\nB,\"2,5\"\n" })).unwrap();
        assert_eq!(
            rows,
            json!([{ "sku": "A", "qty": "1" }, { "sku": "B", "qty": "2,5" }])
        );
        let text = csv_write(&json!({ "rows": rows })).unwrap();
        assert_eq!(text, json!("sku,qty\nA,1\nB,\"2,5\"\n"));
    }
}

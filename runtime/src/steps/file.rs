//! `file.*`: files in mounted folders.

use base64::Engine as _;
use serde_json::{Value, json};
use weft_plan::Builtin;

use super::{StepError, required_str, str_field};

/// Runs a `file.*` built-in.
pub(super) async fn run(builtin: Builtin, input: &Value) -> Result<Value, StepError> {
    match builtin {
        Builtin::FileList => list(input),
        Builtin::FileRead => read(input).await,
        Builtin::FileWrite => write(input).await,
        _ => rename(input).await,
    }
}

async fn rename(input: &Value) -> Result<Value, StepError> {
    let from = required_str(input, "from")?;
    let to = required_str(input, "to")?;
    if let Some(parent) = std::path::Path::new(to).parent() {
        tokio::fs::create_dir_all(parent)
            .await
            .map_err(|e| StepError::retryable(format!("creating {}: {e}", parent.display())))?;
    }
    tokio::fs::rename(from, to)
        .await
        .map_err(|e| io_error(from, e))?;
    Ok(json!({ "from": from, "to": to }))
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

fn list(input: &Value) -> Result<Value, StepError> {
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

async fn read(input: &Value) -> Result<Value, StepError> {
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

async fn write(input: &Value) -> Result<Value, StepError> {
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

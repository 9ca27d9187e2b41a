//! The runtime's error types: what can stop it from starting, and why a template failed.

use std::path::PathBuf;

use crate::store::StoreError;

/// A template that would not compile or render.
#[derive(Debug, Clone, thiserror::Error)]
pub enum TemplateError {
    #[error("invalid template `{source_text}`: {detail}")]
    Syntax { source_text: String, detail: String },
    #[error("template `{source_text}`: {detail}")]
    Render { source_text: String, detail: String },
    #[error("`{0}` is undefined")]
    Undefined(String),
    #[error(
        "template `{source_text}`: the rendered value exceeds {limit} bytes (the step output limit)"
    )]
    TooLarge { source_text: String, limit: usize },
}

/// Why the runtime did not start. Nothing runs half-configured.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("missing secret environment variable{}: {}", if .0.len() == 1 { "" } else { "s" }, .0.join(", "))]
    MissingSecrets(Vec<String>),
    #[error("{instance}: {part}: {source}")]
    Template {
        instance: String,
        part: String,
        #[source]
        source: TemplateError,
    },
    #[error("{instance}: {message}")]
    Plan { instance: String, message: String },
    #[error("creating {path}: {source}")]
    DataFolder {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Role(String),
    #[error("another `weft run` is using {0}; give this one its own --data-dir")]
    Locked(PathBuf),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("listening on {address}: {source}")]
    Listen {
        address: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// Why an execution could not be started.
#[derive(Debug, thiserror::Error)]
pub enum TriggerError {
    #[error("no flow `{0}`")]
    UnknownFlow(String),
    #[error("no instance of customer `{customer}` with flow `{flow}`")]
    UnknownInstance { customer: String, flow: String },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Template(#[from] TemplateError),
    #[error("{0}")]
    Poll(String),
}

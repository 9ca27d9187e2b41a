//! What the CLI's commands do besides compiling, as library functions that return typed values
//! (like cargo's ops layer): `weft versions`, `list`, `catalog`, `publish` and `new`. The
//! commands parse flags and render; these read the repository and its git tags, and write only
//! what the operation is for (a tag, a new integration's files).

pub mod catalog;
pub mod list;
pub mod new;
pub mod publish;
pub mod versions;

use std::io;
use std::path::{Path, PathBuf};

use crate::repo::{Sources, read_repo};

/// Why an operation failed; the messages are the CLI's (`error: …`, then each cause).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("reading the repository at {}", .path.display())]
    ReadRepository {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("reading the version tags")]
    ReadTags(#[source] io::Error),
    #[error("resolving {rev}")]
    Resolve {
        rev: String,
        #[source]
        source: io::Error,
    },
    #[error("creating tag {tag}")]
    CreateTag {
        tag: String,
        #[source]
        source: io::Error,
    },
    #[error("creating {}", .0.display())]
    CreateFolder(PathBuf, #[source] io::Error),
    #[error("no integration `{0}`")]
    UnknownIntegration(String),
    #[error(
        "`{0}` is not a valid name: use lower-case letters, digits and `-`, starting with a letter"
    )]
    InvalidName(String),
    #[error("{} exists already", .0.display())]
    Exists(PathBuf),
    #[error("no template `{0}`: use webhook, schedule, poll, or an integration of this repository")]
    UnknownTemplate(String),
    #[error("`{0}` is not marked `template: true`")]
    NotATemplate(String),
    /// Reading git objects, or writing a file.
    #[error(transparent)]
    Io(#[from] io::Error),
}

/// Reads the repository at `path`.
fn read_repository(path: &Path) -> Result<Sources, Error> {
    read_repo(path).map_err(|source| Error::ReadRepository {
        path: path.to_path_buf(),
        source,
    })
}

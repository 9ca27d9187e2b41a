//! One module per subcommand: each has its `Args` and a `run` returning the exit code.

pub mod build;
pub mod check;
pub mod diff;
pub mod dlq;
pub mod executions;
pub mod graph;
pub mod health;
pub mod run;

use std::path::Path;

use anyhow::Context as _;
use weft_compiler::repo::{Sources, read_repo};

/// Reads a repository, with the path in the error.
pub fn read(path: &Path) -> anyhow::Result<Sources> {
    read_repo(path).with_context(|| format!("reading the repository at {}", path.display()))
}

//! One module per subcommand: each has its `Args` and a `run` returning the exit code.

pub mod build;
pub mod catalog;
pub mod check;
pub mod diff;
pub mod dlq;
pub mod down;
pub mod executions;
pub mod gateway;
pub mod graph;
pub mod health;
pub mod image;
pub mod logs;
pub mod ps;
pub mod publish;
pub mod run;
pub mod step;
pub mod test;
pub mod up;
pub mod versions;

use std::path::Path;

use anyhow::Context as _;
use weft_compiler::repo::{Sources, read_repo};
use weft_compiler::{NoVersions, Versions, git::GitVersions};

/// Reads a repository, with the path in the error.
pub fn read(path: &Path) -> anyhow::Result<Sources> {
    read_repo(path).with_context(|| format!("reading the repository at {}", path.display()))
}

/// Published versions from the git repository around `path`, when there is one.
pub fn versions(path: &Path) -> Box<dyn Versions> {
    match GitVersions::load(path) {
        Ok(v) => Box::new(v),
        Err(_) => Box::new(NoVersions),
    }
}

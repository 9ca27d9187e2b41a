//! `weft publish`: decides, per integration, whether its compiled plan changed since its latest
//! published version, and records each changed one as an annotated tag `<integration>/v<N>`.

use std::path::Path;

use super::Error;
use crate::git::{self, GitVersions};
use crate::repo::Sources;
use crate::{Compilation, compile_with};

/// What publishing a revision would do.
pub enum Prepared {
    /// The revision has errors: nothing can be published.
    Errors(Box<Rejected>),
    Ready(Publication),
}

/// A revision with errors, and its compilation (to report them).
pub struct Rejected {
    pub sources: Sources,
    pub compilation: Compilation,
    /// The full commit id of the revision.
    pub commit: String,
}

/// The decision for every integration of a revision that compiles.
#[derive(Debug, Clone)]
pub struct Publication {
    /// The full commit id of the revision.
    pub commit: String,
    /// One decision per integration, by name.
    pub decisions: Vec<Decision>,
}

#[derive(Debug, Clone)]
pub enum Decision {
    /// Compiles to the same plan as its latest version.
    Unchanged {
        name: String,
        version: u32,
    },
    Changed(NewVersion),
}

/// A version to publish.
#[derive(Debug, Clone)]
pub struct NewVersion {
    pub integration: String,
    pub version: u32,
    /// `<integration>/v<version>`.
    pub tag: String,
    /// `sha256:…` of the compiled integration.
    pub hash: String,
    /// The commit messages since the previous version that touch it, one `- subject (hash)` a
    /// line.
    pub notes: String,
}

/// Compiles revision `rev` of the repository at `path` and decides what to publish.
pub fn prepare(path: &Path, rev: &str) -> Result<Prepared, Error> {
    let commit = git::resolve(path, rev).map_err(|source| Error::Resolve {
        rev: rev.to_string(),
        source,
    })?;
    let versions = GitVersions::load(path).map_err(Error::ReadTags)?;
    let sources = git::read_at(path, &commit)?;
    let compilation = compile_with(&sources, &versions);
    if compilation.error_count() > 0 {
        return Ok(Prepared::Errors(Box::new(Rejected {
            sources,
            compilation,
            commit,
        })));
    }
    let prefix = git::prefix(path)?;
    let decisions = compilation
        .integrations
        .iter()
        .map(|(name, integration)| {
            let hash = integration.content_hash();
            decide(path, &versions, &prefix, &commit, name, hash)
        })
        .collect();
    Ok(Prepared::Ready(Publication { commit, decisions }))
}

/// Whether integration `name`, compiling to `hash`, needs a new version.
fn decide(
    path: &Path,
    versions: &GitVersions,
    prefix: &str,
    commit: &str,
    name: &str,
    hash: String,
) -> Decision {
    let latest = versions.of(name).last().copied();
    if let Some(l) = latest.filter(|l| l.hash.as_deref() == Some(hash.as_str())) {
        return Decision::Unchanged {
            name: name.to_string(),
            version: l.version,
        };
    }
    let version = latest.map_or(1, |l| l.version + 1);
    let range = match latest {
        Some(l) => format!("{}..{commit}", l.commit),
        None => commit.to_string(),
    };
    let log = git::run(
        path,
        &[
            "log",
            "--no-merges",
            "--format=- %s (%h)",
            &range,
            "--",
            &format!(":/{prefix}integrations/{name}"),
            &format!(":/{prefix}components"),
        ],
    )
    .unwrap_or_default();
    let notes = if log.trim().is_empty() {
        "- (no commit message touches this integration)".to_string()
    } else {
        log.trim_end().to_string()
    };
    Decision::Changed(NewVersion {
        integration: name.to_string(),
        version,
        tag: format!("{name}/v{version}"),
        hash,
        notes,
    })
}

/// Publishes a new version: the annotated tag on `commit`.
pub fn tag(path: &Path, commit: &str, new: &NewVersion) -> Result<(), Error> {
    let message = git::tag_message(&new.integration, new.version, &new.hash, &new.notes);
    git::run(path, &["tag", "-a", &new.tag, "-m", &message, commit])
        .map(drop)
        .map_err(|source| Error::CreateTag {
            tag: new.tag.clone(),
            source,
        })
}

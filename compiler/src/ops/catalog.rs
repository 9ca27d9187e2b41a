//! The integrations of a repository as catalog entries: what `weft list` shows and what
//! `weft catalog` writes for the marketplace.

use std::path::Path;

use super::{Error, read_repository};
use crate::git::GitVersions;
use crate::load::{self, Loaded, Repo};
use crate::model::Integration;

/// One integration's catalog entry, from its integration.yaml and its version tags.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CatalogEntry {
    pub name: String,
    pub description: Option<String>,
    pub category: Option<String>,
    pub labels: Vec<String>,
    /// Offered as a starting point by `weft new integration --from`.
    pub template: bool,
    /// Published versions that may be pinned (not marked unavailable), oldest first.
    pub versions: Vec<u32>,
    /// The icon's path in the repository.
    pub icon: Option<String>,
}

/// Every integration of the repository at `path`, by name. Version tags are read when the
/// repository is in a git checkout.
pub fn catalog(path: &Path) -> Result<Vec<CatalogEntry>, Error> {
    let sources = read_repository(path)?;
    let (repo, _) = load::load(&sources);
    let versions = GitVersions::load(path).ok();
    let mut entries: Vec<CatalogEntry> = repo
        .integrations
        .iter()
        .map(|i| entry(&repo, i, versions.as_ref()))
        .collect();
    entries.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(entries)
}

fn entry(repo: &Repo, i: &Loaded<Integration>, versions: Option<&GitVersions>) -> CatalogEntry {
    let m = &i.model;
    let published: Vec<u32> = versions
        .map(|v| v.of(&m.name.0).iter().map(|p| p.version).collect())
        .unwrap_or_default();
    let unavailable: Vec<u32> = repo
        .versions
        .iter()
        .filter(|v| v.folder == i.folder)
        .flat_map(|v| v.model.unavailable.clone())
        .collect();
    CatalogEntry {
        name: m.name.0.clone(),
        description: m.description.clone(),
        category: m.category.clone(),
        labels: m.labels.iter().map(|l| l.0.clone()).collect(),
        template: m.template,
        versions: published
            .into_iter()
            .filter(|v| !unavailable.contains(v))
            .collect(),
        icon: m
            .icon
            .as_ref()
            .map(|icon| format!("integrations/{}/{icon}", i.folder)),
    }
}

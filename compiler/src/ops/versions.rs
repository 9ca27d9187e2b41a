//! `weft versions`: an integration's published versions, which instances run each, and
//! whether the working tree has unpublished changes (`draft`).

use std::collections::BTreeMap;
use std::path::Path;

use super::{Error, read_repository};
use crate::git::{GitVersions, Published};
use crate::load::{self, Repo};
use crate::model::{NamedVersion, VersionPin};

/// An integration's versions and the instances that run them.
#[derive(Debug, Clone)]
pub struct IntegrationVersions {
    pub integration: String,
    /// Published versions, oldest first.
    pub versions: Vec<VersionUse>,
    /// Whether the working tree compiles to something other than the latest version.
    pub draft: bool,
    /// Customers whose instances run the working tree (`version: draft`).
    pub draft_instances: Vec<String>,
}

/// A published version, whether it may be pinned, and the customers that run it.
#[derive(Debug, Clone)]
pub struct VersionUse {
    pub published: Published,
    /// Not marked unavailable in `versions.yaml`.
    pub available: bool,
    pub instances: Vec<String>,
}

/// The versions of `integration` in the repository at `path` (inside a git checkout).
pub fn versions(path: &Path, integration: &str) -> Result<IntegrationVersions, Error> {
    let tags = GitVersions::load(path).map_err(Error::ReadTags)?;
    let sources = read_repository(path)?;
    let compilation = crate::check_with(&sources, &tags);
    let (repo, _) = load::load(&sources);
    let history = tags.of(integration);
    let draft_hash = compilation
        .integrations
        .get(integration)
        .map(|i| i.content_hash());
    if draft_hash.is_none() && history.is_empty() {
        return Err(Error::UnknownIntegration(integration.to_string()));
    }
    let latest = history.last().map(|p| p.version);
    let draft = draft_hash.is_some() && history.last().and_then(|p| p.hash.clone()) != draft_hash;
    let (mut by_version, draft_instances) = instances_by_version(&repo, integration, latest);
    let unavailable: Vec<u32> = repo
        .versions
        .iter()
        .filter(|v| v.folder == integration)
        .flat_map(|v| v.model.unavailable.clone())
        .collect();
    let versions = history
        .into_iter()
        .map(|p| VersionUse {
            available: !unavailable.contains(&p.version),
            instances: by_version.remove(&p.version).unwrap_or_default(),
            published: p.clone(),
        })
        .collect();
    Ok(IntegrationVersions {
        integration: integration.to_string(),
        versions,
        draft,
        draft_instances,
    })
}

/// The customers of `integration` by the published version they run (`latest` resolved to
/// `latest`), and those that run the working tree.
fn instances_by_version(
    repo: &Repo,
    integration: &str,
    latest: Option<u32>,
) -> (BTreeMap<u32, Vec<String>>, Vec<String>) {
    let mut by_version: BTreeMap<u32, Vec<String>> = BTreeMap::new();
    let mut draft = Vec::new();
    for i in repo
        .instances
        .iter()
        .filter(|i| i.model.integration.0 == integration)
    {
        let customer = i
            .model
            .customer
            .as_ref()
            .map_or(i.folder.clone(), |c| c.0.clone());
        let version = match i.model.version {
            VersionPin::Number(n) => Some(n),
            VersionPin::Named(NamedVersion::Latest) => latest,
            VersionPin::Named(NamedVersion::Draft) => {
                draft.push(customer);
                continue;
            }
        };
        if let Some(n) = version {
            by_version.entry(n).or_default().push(customer);
        }
    }
    (by_version, draft)
}

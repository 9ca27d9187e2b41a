//! `weft list`: the catalog entries of a repository, filtered by label and category.

use std::path::Path;

use super::Error;
use super::catalog::{CatalogEntry, catalog};

/// Which integrations to list; `None` lets every one through.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    /// Only integrations with this label.
    pub label: Option<String>,
    /// Only integrations of this category (compared ignoring ASCII case).
    pub category: Option<String>,
}

impl Filter {
    pub fn matches(&self, entry: &CatalogEntry) -> bool {
        let label = self
            .label
            .as_ref()
            .is_none_or(|l| entry.labels.iter().any(|x| x == l));
        let category = self.category.as_ref().is_none_or(|c| {
            entry
                .category
                .as_ref()
                .is_some_and(|x| x.eq_ignore_ascii_case(c))
        });
        label && category
    }
}

/// The integrations of the repository at `path` that pass `filter`, by name.
pub fn list(path: &Path, filter: &Filter) -> Result<Vec<CatalogEntry>, Error> {
    let mut entries = catalog(path)?;
    entries.retain(|e| filter.matches(e));
    Ok(entries)
}

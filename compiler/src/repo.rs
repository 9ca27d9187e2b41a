//! Reading a repository from disk; this module only reads (bundles are written by
//! [`crate::build`]). Everything after it works on [`Sources`], so tests and `weft diff` can
//! compile text that never touched a disk.

use std::io;
use std::path::Path;

use crate::source::{FileId, SourceFile};

/// The text of every file the compiler reads, addressed by repo-relative path.
#[derive(Debug, Clone, Default)]
pub struct Sources {
    pub files: Vec<SourceFile>,
}

impl Sources {
    pub fn add(&mut self, path: impl Into<String>, text: impl Into<String>) -> FileId {
        self.files.push(SourceFile::new(path, text));
        self.files.len() - 1
    }

    /// Sorts files by path so that compilation never depends on directory listing order.
    pub fn sort(&mut self) {
        self.files.sort_by(|a, b| a.path.cmp(&b.path));
    }
}

fn is_yaml(name: &str) -> bool {
    name.ends_with(".yaml") || name.ends_with(".yml")
}

/// A folder's entries (hidden ones skipped), sorted by name, with whether each is a folder.
fn sorted_dir(path: &Path) -> io::Result<Vec<(String, std::path::PathBuf, bool)>> {
    let mut entries = Vec::new();
    for entry in std::fs::read_dir(path)? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') {
            continue;
        }
        let is_dir = entry.file_type()?.is_dir();
        entries.push((name, entry.path(), is_dir));
    }
    entries.sort();
    Ok(entries)
}

fn read(root: &Path, rel: &str) -> io::Result<String> {
    std::fs::read_to_string(root.join(rel))
        .map_err(|e| io::Error::new(e.kind(), format!("reading {rel}: {e}")))
}

/// Reads `weft.yaml`, `components/*/component.yaml`, `integrations/*/integration.yaml` and
/// `instances/*/*.yaml` below `root`.
pub fn read_repo(root: &Path) -> io::Result<Sources> {
    let mut paths: Vec<String> = Vec::new();
    let has_project = root.join("weft.yaml").is_file();
    if !has_project && !root.join("integrations").is_dir() {
        return Err(io::Error::new(
            io::ErrorKind::NotFound,
            format!(
                "{} is not a weft repository: it has neither weft.yaml nor integrations/",
                root.display()
            ),
        ));
    }
    if has_project {
        paths.push("weft.yaml".into());
    }
    for (folder, file) in [("components", "component"), ("integrations", "integration")] {
        let dir = root.join(folder);
        if !dir.is_dir() {
            continue;
        }
        for (name, _, is_dir) in sorted_dir(&dir)? {
            if !is_dir {
                continue;
            }
            let names: &[&str] = if folder == "integrations" {
                &[file, "versions"]
            } else {
                &[file]
            };
            for file in names {
                for ext in ["yaml", "yml"] {
                    let rel = format!("{folder}/{name}/{file}.{ext}");
                    if root.join(&rel).is_file() {
                        paths.push(rel);
                    }
                }
            }
        }
    }
    let instances = root.join("instances");
    if instances.is_dir() {
        for (customer, path, is_dir) in sorted_dir(&instances)? {
            if !is_dir {
                continue;
            }
            for (name, _, is_dir) in sorted_dir(&path)? {
                if is_yaml(&name) && !is_dir {
                    paths.push(format!("instances/{customer}/{name}"));
                }
            }
        }
    }
    use rayon::prelude::*;
    let texts: Vec<String> = paths
        .par_iter()
        .map(|rel| read(root, rel))
        .collect::<io::Result<_>>()?;
    let mut sources = Sources::default();
    for (path, text) in paths.into_iter().zip(texts) {
        sources.add(path, text);
    }
    sources.sort();
    Ok(sources)
}

//! Reading a repository from disk: the compiler's only filesystem access. Everything after this
//! works on [`Sources`], so tests and `weft diff` can compile text that never touched a disk.

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

fn sorted_dir(path: &Path) -> io::Result<Vec<(String, std::path::PathBuf)>> {
    let mut entries = Vec::new();
    for entry in std::fs::read_dir(path)? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') {
            continue;
        }
        entries.push((name, entry.path()));
    }
    entries.sort();
    Ok(entries)
}

fn read(root: &Path, rel: &str, sources: &mut Sources) -> io::Result<()> {
    let text = std::fs::read_to_string(root.join(rel))
        .map_err(|e| io::Error::new(e.kind(), format!("reading {rel}: {e}")))?;
    sources.add(rel, text);
    Ok(())
}

/// Reads `weft.yaml`, `components/*/component.yaml`, `integrations/*/integration.yaml` and
/// `instances/*/*.yaml` below `root`.
pub fn read_repo(root: &Path) -> io::Result<Sources> {
    let mut sources = Sources::default();
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
        read(root, "weft.yaml", &mut sources)?;
    }
    for (folder, file) in [("components", "component"), ("integrations", "integration")] {
        let dir = root.join(folder);
        if !dir.is_dir() {
            continue;
        }
        for (name, path) in sorted_dir(&dir)? {
            if !path.is_dir() {
                continue;
            }
            for ext in ["yaml", "yml"] {
                let rel = format!("{folder}/{name}/{file}.{ext}");
                if root.join(&rel).is_file() {
                    read(root, &rel, &mut sources)?;
                }
            }
        }
    }
    let instances = root.join("instances");
    if instances.is_dir() {
        for (customer, path) in sorted_dir(&instances)? {
            if !path.is_dir() {
                continue;
            }
            for (name, file) in sorted_dir(&path)? {
                if file.is_file() && is_yaml(&name) {
                    read(root, &format!("instances/{customer}/{name}"), &mut sources)?;
                }
            }
        }
    }
    sources.sort();
    Ok(sources)
}

/// Writes every instance's bundle into `out/<customer>/<integration>/`, in parallel. Returns
/// each bundle's folder (relative to `out`) and content hash.
pub fn write_bundles(
    out: &Path,
    plans: &[crate::plan::Plan],
    project: &crate::model::Project,
) -> io::Result<Vec<(String, String)>> {
    use rayon::prelude::*;
    plans
        .par_iter()
        .map(|plan| {
            let rel = crate::emit::bundle_dir(plan);
            let dir = out.join(&rel);
            std::fs::create_dir_all(&dir)
                .map_err(|e| io::Error::new(e.kind(), format!("creating {}: {e}", dir.display())))?;
            let files = crate::emit::bundle(plan, project);
            for f in &files.files {
                let path = dir.join(f.name);
                std::fs::write(&path, &f.contents)
                    .map_err(|e| io::Error::new(e.kind(), format!("writing {}: {e}", path.display())))?;
            }
            Ok((rel, files.content_hash))
        })
        .collect()
}

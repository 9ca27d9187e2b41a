//! Reading a repository from disk; this module only reads (bundles are written by
//! [`crate::build`]). Everything after it works on [`Sources`], so tests and `weft diff` can
//! compile text that never touched a disk.
//!
//! A repository is untrusted input (a pull request may add anything): only regular files that
//! lie inside the repository root are read, at most [`MAX_FILE_BYTES`] each. A symbolic link
//! that resolves elsewhere (`/proc/self/environ`, a credentials file, `/dev/zero`), a FIFO, a
//! device or an oversized file is recorded as unreadable, with the reason and never its
//! content, and reported as `unreadable-file`.

use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use crate::source::{FileId, SourceFile};

/// The largest file the compiler reads (1 MiB): a repository file is a few kilobytes.
pub const MAX_FILE_BYTES: u64 = 1024 * 1024;

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

    /// Records a file that could not be read, and why.
    pub fn add_unreadable(&mut self, path: impl Into<String>, reason: impl Into<String>) -> FileId {
        self.files.push(SourceFile::unreadable(path, reason));
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

/// What a non-regular file is, for messages.
fn file_kind(meta: &std::fs::Metadata) -> &'static str {
    let t = meta.file_type();
    if t.is_dir() {
        return "a folder";
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt as _;
        if t.is_fifo() {
            return "a FIFO";
        } else if t.is_socket() {
            return "a socket";
        } else if t.is_char_device() || t.is_block_device() {
            return "a device";
        }
    }
    "something other than a file"
}

/// Why a file of the repository is not read; `Err` is the reason, shown in the diagnostic.
fn check_file(root: &Path, rel: &str) -> Result<PathBuf, String> {
    let path = root.join(rel);
    let real = path
        .canonicalize()
        .map_err(|e| format!("it cannot be resolved ({})", e.kind()))?;
    if !real.starts_with(root) {
        return Err("it is a symbolic link to a file outside the repository".into());
    }
    // `real` is canonical: this is the file itself, never a link.
    let meta = std::fs::metadata(&real).map_err(|e| e.kind().to_string())?;
    if !meta.is_file() {
        return Err(format!("it is {}, not a regular file", file_kind(&meta)));
    }
    if meta.len() > MAX_FILE_BYTES {
        return Err(too_large(meta.len()));
    }
    Ok(real)
}

fn too_large(len: u64) -> String {
    format!("it is {len} bytes, more than the limit of {MAX_FILE_BYTES} bytes (1 MiB)")
}

/// Reads a file that [`check_file`] accepted, never more than [`MAX_FILE_BYTES`].
fn read(root: &Path, rel: &str) -> Result<String, String> {
    let real = check_file(root, rel)?;
    let file = File::open(&real).map_err(|e| format!("it cannot be opened ({})", e.kind()))?;
    // Checked again on the open file: it may have been replaced since.
    let meta = file.metadata().map_err(|e| e.kind().to_string())?;
    if !meta.is_file() {
        return Err(format!("it is {}, not a regular file", file_kind(&meta)));
    }
    let mut bytes = Vec::new();
    file.take(MAX_FILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("it cannot be read ({})", e.kind()))?;
    if bytes.len() as u64 > MAX_FILE_BYTES {
        return Err(too_large(bytes.len() as u64));
    }
    String::from_utf8(bytes).map_err(|_| "it is not UTF-8 text".to_string())
}

/// Whether something (a file, a link, a FIFO, ...) is at `path`, without following links.
fn exists(path: &Path) -> bool {
    path.symlink_metadata().is_ok()
}

/// Reads `weft.yaml`, `components/*/component.yaml`, `integrations/*/integration.yaml` and
/// `instances/*/*.yaml` below `root`.
pub fn read_repo(root: &Path) -> io::Result<Sources> {
    let root = &root
        .canonicalize()
        .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", root.display())))?;
    let mut paths: Vec<String> = Vec::new();
    let has_project = exists(&root.join("weft.yaml"));
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
                    if exists(&root.join(&rel)) {
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
    let texts: Vec<Result<String, String>> = paths.par_iter().map(|rel| read(root, rel)).collect();
    let mut sources = Sources::default();
    for (path, text) in paths.into_iter().zip(texts) {
        match text {
            Ok(text) => sources.add(path, text),
            Err(reason) => sources.add_unreadable(path, reason),
        };
    }
    sources.sort();
    Ok(sources)
}

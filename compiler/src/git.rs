//! Reading a repository's sources at a git revision, for `weft diff`, `weft build --rev` and
//! published versions. Like `repo.rs`, an IO module: everything after it works on [`Sources`].
//!
//! This shells out to the `git` CLI (`ls-tree`, one `cat-file --batch` for every blob) rather
//! than linking a git implementation: it is on every machine that has a checkout, it honours
//! the user's configuration (safe directories, alternates, partial clones), and two processes
//! per revision cost milliseconds even for thousands of files.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::path::Path;
use std::process::{Command, Stdio};

use crate::load::classify;
use crate::repo::{MAX_FILE_BYTES, Sources};

fn git(dir: &Path, args: &[&str]) -> io::Result<String> {
    let out = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(args)
        .stderr(Stdio::piped())
        .output()
        .map_err(|e| io::Error::new(e.kind(), format!("running git: {e}")))?;
    if !out.status.success() {
        return Err(io::Error::other(format!(
            "git {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The folder of the weft repository inside its git repository (`""` at the top), with `/`.
pub fn prefix(dir: &Path) -> io::Result<String> {
    Ok(git(dir, &["rev-parse", "--show-prefix"])?
        .trim()
        .to_string())
}

/// The full commit id of a revision.
pub fn resolve(dir: &Path, rev: &str) -> io::Result<String> {
    Ok(git(
        dir,
        &["rev-parse", "--verify", &format!("{rev}^{{commit}}")],
    )?
    .trim()
    .to_string())
}

/// Runs any git command in `dir` (publishing tags, listing them, reading logs).
pub fn run(dir: &Path, args: &[&str]) -> io::Result<String> {
    git(dir, args)
}

/// Reads the weft sources of the repository at `dir` as they are at `rev`.
pub fn read_at(dir: &Path, rev: &str) -> io::Result<Sources> {
    let commit = resolve(dir, rev)?;
    let prefix = prefix(dir)?;
    let listing = git(
        dir,
        &[
            "ls-tree",
            "-r",
            "-z",
            "--full-tree",
            &commit,
            "--",
            if prefix.is_empty() { "." } else { &prefix },
        ],
    )?;
    let mut sources = Sources::default();
    let mut paths: Vec<String> = Vec::new();
    // Entries are `<mode> <type> <object>\t<path>`.
    for entry in listing.split('\0').filter(|e| !e.is_empty()) {
        let Some((meta, full)) = entry.split_once('\t') else {
            continue;
        };
        let Some(rel) = full.strip_prefix(&prefix).filter(|r| classify(r).is_some()) else {
            continue;
        };
        match meta.split(' ').next() {
            Some("100644" | "100755") => paths.push(rel.to_string()),
            Some("120000") => {
                let reason = "it is a symbolic link (links are not followed in a git revision)";
                sources.add_unreadable(rel, reason);
            }
            _ => {
                sources.add_unreadable(rel, "it is not a file (a submodule?)");
            }
        }
    }
    // Two `cat-file --batch` processes, each reading half the blobs.
    let half = paths.len().div_ceil(2).max(1);
    let chunks: Vec<&[String]> = paths.chunks(half).collect();
    let texts: Vec<io::Result<Vec<Blob>>> = std::thread::scope(|s| {
        let handles: Vec<_> = chunks
            .iter()
            .map(|chunk| s.spawn(|| cat_files(dir, &commit, &prefix, chunk)))
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(io::Error::other("git reader panicked")))
            })
            .collect()
    });
    for chunk in texts {
        for (path, text) in chunk? {
            match text {
                Ok(text) => sources.add(path, text),
                Err(reason) => sources.add_unreadable(path, reason),
            };
        }
    }
    sources.sort();
    Ok(sources)
}

/// A blob's path and text, or why it is not read (over [`MAX_FILE_BYTES`], not UTF-8).
type Blob = (String, Result<String, String>);

/// Reads blobs `<commit>:<prefix><path>` through one `git cat-file --batch`.
fn cat_files(dir: &Path, commit: &str, prefix: &str, paths: &[String]) -> io::Result<Vec<Blob>> {
    let mut child = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(["cat-file", "--batch"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()?;
    let mut stdin = child.stdin.take().expect("piped");
    let requests: String = paths
        .iter()
        .map(|p| format!("{commit}:{prefix}{p}\n"))
        .collect();
    let writer = std::thread::spawn(move || stdin.write_all(requests.as_bytes()));
    let mut reader = BufReader::new(child.stdout.take().expect("piped"));
    let mut out = Vec::with_capacity(paths.len());
    for path in paths {
        let mut header = String::new();
        reader.read_line(&mut header)?;
        let size: usize = header
            .split_whitespace()
            .nth(2)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| {
                io::Error::other(format!(
                    "git cat-file: unexpected answer for {path}: {header}"
                ))
            })?;
        if size as u64 > MAX_FILE_BYTES {
            // Skipped, never held in memory: the blob and its trailing newline.
            io::copy(&mut (&mut reader).take(size as u64 + 1), &mut io::sink())?;
            let reason = format!(
                "it is {size} bytes, more than the limit of {MAX_FILE_BYTES} bytes (1 MiB)"
            );
            out.push((path.clone(), Err(reason)));
            continue;
        }
        let mut blob = vec![0; size + 1]; // the blob and its trailing newline
        reader.read_exact(&mut blob)?;
        blob.pop();
        let text = String::from_utf8(blob).map_err(|_| "it is not UTF-8 text".to_string());
        out.push((path.clone(), text));
    }
    writer
        .join()
        .map_err(|_| io::Error::other("git cat-file writer panicked"))??;
    child.wait()?;
    Ok(out)
}

/// A published version: the annotated tag `<integration>/v<N>`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Published {
    pub version: u32,
    pub tag: String,
    pub commit: String,
    pub date: String,
    /// `sha256:…` of the compiled integration, from the tag message.
    pub hash: Option<String>,
    pub notes: String,
}

/// The message of a version tag.
pub fn tag_message(integration: &str, version: u32, hash: &str, notes: &str) -> String {
    format!("weft: {integration} v{version}\nplan-hash: {hash}\n\n{notes}")
}

fn parse_message(message: &str) -> (Option<String>, String) {
    let hash = message
        .lines()
        .find_map(|l| l.strip_prefix("plan-hash: "))
        .map(|h| h.trim().to_string());
    let notes = message
        .split_once("\n\n")
        .map(|(_, n)| n.trim().to_string())
        .unwrap_or_default();
    (hash, notes)
}

/// Published versions of every integration, read from the tags of the git repository.
pub struct GitVersions {
    dir: std::path::PathBuf,
    pub tags: std::collections::BTreeMap<String, std::collections::BTreeMap<u32, Published>>,
}

impl GitVersions {
    /// Reads the version tags; fails when `dir` is not in a git checkout.
    pub fn load(dir: &Path) -> io::Result<GitVersions> {
        let out = git(
            dir,
            &[
                "for-each-ref",
                "refs/tags",
                "--format=%(refname:short)%00%(*objectname)%00%(objectname)%00%(creatordate:iso-strict)%00%(contents)%1e",
            ],
        )?;
        let mut tags: std::collections::BTreeMap<
            String,
            std::collections::BTreeMap<u32, Published>,
        > = Default::default();
        for record in out.split('\u{1e}') {
            let fields: Vec<&str> = record.trim_start_matches('\n').splitn(5, '\0').collect();
            let [name, peeled, object, date, message] = fields.as_slice() else {
                continue;
            };
            let Some((integration, version)) = name.rsplit_once("/v") else {
                continue;
            };
            let Ok(version) = version.parse::<u32>() else {
                continue;
            };
            let (hash, notes) = parse_message(message);
            let commit = if peeled.is_empty() { object } else { peeled };
            tags.entry(integration.to_string()).or_default().insert(
                version,
                Published {
                    version,
                    tag: name.to_string(),
                    commit: commit.to_string(),
                    date: date.to_string(),
                    hash,
                    notes,
                },
            );
        }
        Ok(GitVersions {
            dir: dir.to_path_buf(),
            tags,
        })
    }

    pub fn of(&self, integration: &str) -> Vec<&Published> {
        self.tags
            .get(integration)
            .map(|m| m.values().collect())
            .unwrap_or_default()
    }
}

impl crate::Versions for GitVersions {
    fn latest(&self, integration: &str) -> Option<u32> {
        self.tags
            .get(integration)
            .and_then(|m| m.keys().next_back().copied())
    }

    fn sources_at(&self, integration: &str, version: u32) -> Result<(Sources, String), String> {
        let published = self
            .tags
            .get(integration)
            .and_then(|m| m.get(&version))
            .ok_or_else(|| {
                let known: Vec<String> = self
                    .of(integration)
                    .iter()
                    .map(|p| format!("v{}", p.version))
                    .collect();
                format!(
                    "`{integration}` has no published version {version} ({})",
                    if known.is_empty() {
                        "none is published".to_string()
                    } else {
                        format!("published: {}", known.join(", "))
                    }
                )
            })?;
        let sources = read_at(&self.dir, &published.commit)
            .map_err(|e| format!("reading {}: {e}", published.tag))?;
        Ok((sources, published.commit.clone()))
    }
}

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
use crate::repo::Sources;

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
            "--name-only",
            "--full-tree",
            &commit,
            "--",
            if prefix.is_empty() { "." } else { &prefix },
        ],
    )?;
    let paths: Vec<String> = listing
        .split('\0')
        .filter(|p| !p.is_empty())
        .filter_map(|full| full.strip_prefix(&prefix).map(str::to_string))
        .filter(|rel| classify(rel).is_some())
        .collect();
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
    let mut sources = Sources::default();
    for path in &paths {
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
        let mut blob = vec![0; size + 1]; // the blob and its trailing newline
        reader.read_exact(&mut blob)?;
        blob.pop();
        sources.add(path.clone(), String::from_utf8_lossy(&blob).into_owned());
    }
    writer
        .join()
        .map_err(|_| io::Error::other("git cat-file writer panicked"))??;
    child.wait()?;
    sources.sort();
    Ok(sources)
}

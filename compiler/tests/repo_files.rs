//! Reading an untrusted repository from disk: symbolic links out of it, FIFOs, devices and
//! oversized files are reported as `unreadable-file` (never printed, never hanging), and links
//! that stay inside the repository keep working.

use std::path::Path;
use std::sync::mpsc;
use std::time::Duration;

use weft_compiler::diagnostic::{Code, render_github, render_human, to_json};
use weft_compiler::repo::{MAX_FILE_BYTES, read_repo};

const INTEGRATION: &str = "weft: 1\nname: acme\nflows:\n  hello:\n    trigger: { deploy: {} }\n    steps: [{ id: say, uses: log, with: { message: hi } }]\n";
const INSTANCE: &str = "weft: 1\nintegration: acme\n";
const CANARY: &str = "AWS_SECRET_ACCESS_KEY=canary-8c1f2e";

/// A repository with one integration and one instance.
fn repo() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    std::fs::create_dir_all(root.join("integrations/acme")).unwrap();
    std::fs::create_dir_all(root.join("instances/beta")).unwrap();
    std::fs::write(root.join("weft.yaml"), "weft: 1\n").unwrap();
    std::fs::write(root.join("integrations/acme/integration.yaml"), INTEGRATION).unwrap();
    std::fs::write(root.join("instances/beta/acme.yaml"), INSTANCE).unwrap();
    dir
}

/// Reads and compiles `root` on another thread; fails when that takes more than 20 s (a FIFO
/// would block forever). Returns every diagnostic's code and all renderings of them.
fn compile(root: &Path) -> (Vec<Code>, String) {
    let (tx, rx) = mpsc::channel();
    let root = root.to_path_buf();
    std::thread::spawn(move || {
        let sources = read_repo(&root).expect("the repository is read");
        let c = weft_compiler::compile(&sources);
        let mut text = String::new();
        for d in &c.diagnostics {
            text.push_str(&render_human(d, &sources.files, false));
            text.push_str(&render_github(d, &sources.files));
            text.push_str(&serde_json::to_string(&to_json(d, &sources.files)).unwrap());
        }
        let _ = tx.send((c.diagnostics.iter().map(|d| d.code).collect(), text));
    });
    rx.recv_timeout(Duration::from_secs(20))
        .expect("reading the repository hung (or panicked)")
}

#[test]
fn a_link_to_a_file_outside_the_repository_is_refused_and_never_printed() {
    let dir = repo();
    let outside = tempfile::tempdir().unwrap();
    let secret = outside.path().join("credentials");
    std::fs::write(&secret, format!("weft: 1\nname: {CANARY}\n")).unwrap();
    let instance = dir.path().join("instances/beta/acme.yaml");
    std::fs::remove_file(&instance).unwrap();
    std::os::unix::fs::symlink(&secret, &instance).unwrap();
    let (codes, text) = compile(dir.path());
    assert_eq!(codes, [Code::UnreadableFile], "{text}");
    assert!(text.contains("outside the repository"), "{text}");
    assert!(
        !text.contains("canary"),
        "the file's content leaked:\n{text}"
    );
}

#[test]
fn a_link_to_proc_environ_is_refused() {
    let dir = repo();
    std::fs::remove_file(dir.path().join("weft.yaml")).unwrap();
    std::os::unix::fs::symlink("/proc/self/environ", dir.path().join("weft.yaml")).unwrap();
    let (codes, text) = compile(dir.path());
    assert_eq!(codes, [Code::UnreadableFile], "{text}");
    assert!(!text.contains("PATH="), "the environment leaked:\n{text}");
}

#[test]
fn a_link_to_dev_zero_is_refused() {
    let dir = repo();
    let link = dir.path().join("integrations/acme/integration.yaml");
    std::fs::remove_file(&link).unwrap();
    std::os::unix::fs::symlink("/dev/zero", &link).unwrap();
    let (codes, text) = compile(dir.path());
    // The instance's integration is known (its file is broken): no follow-on error.
    assert_eq!(codes, [Code::UnreadableFile], "{text}");
}

#[test]
fn a_fifo_never_blocks() {
    let dir = repo();
    let fifo = dir.path().join("instances/beta/other.yaml");
    let made = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap();
    assert!(made.success());
    let (codes, text) = compile(dir.path());
    assert_eq!(codes, [Code::UnreadableFile], "{text}");
    assert!(text.contains("a FIFO"), "{text}");
}

#[test]
fn an_oversized_file_is_refused() {
    let dir = repo();
    let big = format!(
        "{INTEGRATION}description: \"{}\"\n",
        "x".repeat(MAX_FILE_BYTES as usize)
    );
    std::fs::write(dir.path().join("integrations/acme/integration.yaml"), big).unwrap();
    let (codes, text) = compile(dir.path());
    assert_eq!(codes, [Code::UnreadableFile], "{text}");
    assert!(text.contains("1 MiB"), "{text}");
}

#[test]
fn a_link_inside_the_repository_keeps_working() {
    let dir = repo();
    let shared = dir.path().join("shared");
    std::fs::create_dir_all(&shared).unwrap();
    std::fs::rename(
        dir.path().join("integrations/acme/integration.yaml"),
        shared.join("acme.yaml"),
    )
    .unwrap();
    std::os::unix::fs::symlink(
        "../../shared/acme.yaml",
        dir.path().join("integrations/acme/integration.yaml"),
    )
    .unwrap();
    let (codes, text) = compile(dir.path());
    assert!(codes.is_empty(), "{text}");
}

#[test]
fn a_folder_named_like_a_file_is_refused() {
    let dir = repo();
    std::fs::create_dir_all(dir.path().join("instances/beta/folder.yaml")).unwrap();
    let (codes, _) = compile(dir.path());
    // Folders below a customer's folder are not listed as instances.
    assert!(codes.is_empty());
    std::fs::remove_file(dir.path().join("weft.yaml")).unwrap();
    std::fs::create_dir_all(dir.path().join("weft.yaml")).unwrap();
    let (codes, text) = compile(dir.path());
    assert_eq!(codes, [Code::UnreadableFile], "{text}");
    assert!(text.contains("a folder"), "{text}");
}

/// Runs git in `dir` with a fixed identity.
fn git(dir: &Path, args: &[&str]) {
    let ok = std::process::Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(args)
        .env("GIT_AUTHOR_NAME", "Test")
        .env("GIT_AUTHOR_EMAIL", "test@example.invalid")
        .env("GIT_COMMITTER_NAME", "Test")
        .env("GIT_COMMITTER_EMAIL", "test@example.invalid")
        .status()
        .unwrap()
        .success();
    assert!(ok, "git {args:?}");
}

#[test]
fn a_git_revision_with_a_link_or_an_oversized_blob() {
    let dir = repo();
    let d = dir.path();
    std::fs::remove_file(d.join("instances/beta/acme.yaml")).unwrap();
    std::os::unix::fs::symlink("/proc/self/environ", d.join("instances/beta/acme.yaml")).unwrap();
    let big = format!("{INTEGRATION}# {}\n", "x".repeat(MAX_FILE_BYTES as usize));
    std::fs::create_dir_all(d.join("integrations/big")).unwrap();
    std::fs::write(d.join("integrations/big/integration.yaml"), big).unwrap();
    git(d, &["init", "-q", "-b", "main"]);
    git(d, &["add", "-A"]);
    git(d, &["commit", "-qm", "links and blobs"]);
    let sources = weft_compiler::git::read_at(d, "HEAD").unwrap();
    let c = weft_compiler::compile(&sources);
    let found: Vec<(&str, Code)> = c
        .diagnostics
        .iter()
        .map(|d| (sources.files[d.labels[0].file].path.as_str(), d.code))
        .collect();
    assert_eq!(
        found,
        [
            ("instances/beta/acme.yaml", Code::UnreadableFile),
            ("integrations/big/integration.yaml", Code::UnreadableFile),
        ]
    );
}

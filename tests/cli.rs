//! End-to-end tests of the `weft` binary: exit codes, output formats, reproducible builds.

mod support;

use std::path::Path;

use assert_cmd::Command;
use support::{copy_tree, example};

fn weft() -> Command {
    let mut cmd = Command::cargo_bin("weft").unwrap();
    cmd.env("NO_COLOR", "1");
    cmd
}

fn write_repo(dir: &Path, files: &[(&str, &str)]) {
    for (path, text) in files {
        let p = dir.join(path);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    }
}

const BROKEN: &[(&str, &str)] = &[
    ("weft.yaml", "weft: 1\n"),
    (
        "integrations/acme/integration.yaml",
        "weft: 1\nname: acme\nconfig:\n  min_amount: { type: integer, default: 0 }\nflows:\n  orders:\n    trigger: { webhook: { path: /orders } }\n    stpes: []\n    steps:\n      - { id: a, uses: log, with: { message: \"{{ config.min_amout }}\" } }\n",
    ),
];

#[test]
fn check_clean_repo_exits_zero() {
    let out = weft()
        .arg("check")
        .arg(example("event-import"))
        .assert()
        .success();
    let stderr = String::from_utf8(out.get_output().stderr.clone()).unwrap();
    assert!(stderr.contains("check ok"), "{stderr}");
    assert!(stderr.contains("no problems"), "{stderr}");
}

#[test]
fn check_reports_every_error_with_location_and_exits_one() {
    let dir = tempfile::tempdir().unwrap();
    write_repo(dir.path(), BROKEN);
    let out = weft().arg("check").arg(dir.path()).assert().code(1);
    let stderr = String::from_utf8(out.get_output().stderr.clone()).unwrap();
    // Both problems, not only the first; rustc-style with file:line:col and a caret.
    assert!(
        stderr.contains("error[unknown-key]: unknown key `stpes`"),
        "{stderr}"
    );
    assert!(
        stderr.contains("--> integrations/acme/integration.yaml:8:5"),
        "{stderr}"
    );
    assert!(stderr.contains("help: did you mean `steps`?"), "{stderr}");
    assert!(
        !stderr.contains('\u{1b}'),
        "no colours off a terminal: {stderr}"
    );
}

#[test]
fn check_json_is_one_object_per_diagnostic() {
    let dir = tempfile::tempdir().unwrap();
    write_repo(
        dir.path(),
        &[
            BROKEN[0],
            (
                "integrations/acme/integration.yaml",
                "weft: 1\nname: acme\nconfig:\n  min_amount: { type: integer, default: 0 }\nflows:\n  orders:\n    trigger: { webhook: { path: /orders } }\n    steps:\n      - { id: a, uses: log, with: { message: \"{{ config.min_amout }}\" } }\n      - { id: a, uses: log, with: { message: x } }\n",
            ),
        ],
    );
    let out = weft()
        .args(["check", "--format", "json"])
        .arg(dir.path())
        .assert()
        .code(1);
    let stdout = String::from_utf8(out.get_output().stdout.clone()).unwrap();
    let lines: Vec<serde_json::Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2, "{stdout}");
    let codes: Vec<&str> = lines.iter().map(|l| l["code"].as_str().unwrap()).collect();
    assert_eq!(codes, ["unknown-config-variable", "duplicate-step-id"]);
    assert_eq!(lines[0]["file"], "integrations/acme/integration.yaml");
    assert_eq!(lines[0]["line"], 9);
    assert_eq!(lines[0]["column"], 50);
    assert_eq!(lines[0]["help"], "did you mean `min_amount`?");
}

#[test]
fn check_github_annotations() {
    let dir = tempfile::tempdir().unwrap();
    write_repo(dir.path(), BROKEN);
    let out = weft()
        .args(["check", "--format", "github"])
        .arg(dir.path())
        .assert()
        .code(1);
    let stdout = String::from_utf8(out.get_output().stdout.clone()).unwrap();
    assert!(
        stdout.lines().any(|l| l
            .starts_with("::error file=integrations/acme/integration.yaml,line=8,col=5,")
            && l.contains(
                "title=weft unknown-key::unknown key `stpes`%0Ahelp: did you mean `steps`?"
            )),
        "{stdout}"
    );
}

#[test]
fn usage_and_io_errors_exit_two() {
    weft()
        .args(["check", "/nonexistent/weft-repo"])
        .assert()
        .code(2);
    weft().args(["check", "--format", "xml"]).assert().code(2);
    weft().arg("frobnicate").assert().code(2);
}

#[test]
fn help_has_examples_and_exit_codes() {
    let out = weft().arg("--help").assert().success();
    let stdout = String::from_utf8(out.get_output().stdout.clone()).unwrap();
    assert!(
        stdout.contains("Examples:") && stdout.contains("Exit codes:"),
        "{stdout}"
    );
    for verb in ["check", "build", "graph", "test"] {
        let out = weft().args([verb, "--help"]).assert().success();
        let stdout = String::from_utf8(out.get_output().stdout.clone()).unwrap();
        assert!(stdout.contains("Examples:"), "{verb}: {stdout}");
    }
}

fn read_tree(root: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else {
                let rel = path
                    .strip_prefix(root)
                    .unwrap()
                    .to_string_lossy()
                    .replace('\\', "/");
                out.push((rel, std::fs::read(&path).unwrap()));
            }
        }
    }
    out.sort();
    out
}

#[test]
fn build_is_byte_identical_wherever_the_repo_lies() {
    let a = tempfile::tempdir().unwrap();
    let b = tempfile::tempdir().unwrap();
    let repo_b = b.path().join("somewhere/else/repo");
    copy_tree(&example("event-import"), &repo_b);
    weft()
        .arg("build")
        .arg(example("event-import"))
        .arg("-o")
        .arg(a.path().join("dist"))
        .args(["--target", "compose,k8s", "--autoscale"])
        .assert()
        .success();
    weft()
        .arg("build")
        .arg(&repo_b)
        .arg("-o")
        .arg(b.path().join("out"))
        .args(["--target", "compose,k8s", "--autoscale"])
        .assert()
        .success();
    let first = read_tree(&a.path().join("dist"));
    let second = read_tree(&b.path().join("out"));
    assert!(!first.is_empty());
    assert_eq!(
        first, second,
        "same sources must give byte-identical bundles"
    );
    let names: Vec<&str> = first.iter().map(|(p, _)| p.as_str()).collect();
    for file in [
        "bundle.json",
        "plan.json",
        "docker-compose.yaml",
        "kubernetes.yaml",
        "keda.yaml",
        ".env.example",
        "nats.conf",
    ] {
        assert!(
            names.contains(&format!("globex/shop-orders-to-crm/{file}").as_str()),
            "{names:?}"
        );
    }
    let all = first
        .iter()
        .map(|(_, b)| String::from_utf8_lossy(b).to_string())
        .collect::<String>();
    assert!(
        !all.contains(a.path().to_str().unwrap()) && !all.contains(env!("CARGO_MANIFEST_DIR")),
        "no absolute paths"
    );
}

#[test]
fn build_refuses_broken_sources_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    write_repo(dir.path(), BROKEN);
    let out = dir.path().join("dist");
    weft()
        .arg("build")
        .arg(dir.path())
        .arg("-o")
        .arg(&out)
        .assert()
        .code(1);
    assert!(!out.exists());
}

#[test]
fn build_json_lists_bundles_with_hashes() {
    let dir = tempfile::tempdir().unwrap();
    let out = weft()
        .args(["build", "--format", "json"])
        .arg(example("event-import"))
        .arg("-o")
        .arg(dir.path())
        .assert()
        .success();
    let doc: serde_json::Value = serde_json::from_slice(&out.get_output().stdout).unwrap();
    assert_eq!(doc["ok"], true);
    let bundles = doc["bundles"].as_array().unwrap();
    assert_eq!(bundles.len(), 2);
    assert!(
        bundles[0]["content_hash"]
            .as_str()
            .unwrap()
            .starts_with("sha256:")
    );
}

#[test]
fn graph_mermaid_shows_branches() {
    let out = weft()
        .args(["graph", "--integration", "shop-orders-to-crm"])
        .arg(example("event-import"))
        .assert()
        .success();
    let stdout = String::from_utf8(out.get_output().stdout.clone()).unwrap();
    insta::assert_snapshot!("graph_mermaid", stdout);
    let out = weft()
        .args([
            "graph",
            "--integration",
            "shop-orders-to-crm",
            "--format",
            "dot",
        ])
        .arg(example("event-import"))
        .assert()
        .success();
    let stdout = String::from_utf8(out.get_output().stdout.clone()).unwrap();
    insta::assert_snapshot!("graph_dot", stdout);
    weft()
        .args(["graph", "--integration", "shop-orders-to-cmr"])
        .arg(example("event-import"))
        .assert()
        .code(2);
}

#[test]
fn secrets_never_reach_bundles() {
    // A literal secret is refused (and not echoed); secret references stay names.
    let dir = tempfile::tempdir().unwrap();
    copy_tree(&example("event-import"), dir.path());
    let inst = dir.path().join("instances/globex/shop-orders-to-crm.yaml");
    let text = std::fs::read_to_string(&inst)
        .unwrap()
        .replace("{ secret: CRM_TOKEN_GLOBEX }", "canary-s3cr3t-4242");
    std::fs::write(&inst, text).unwrap();
    let out = weft().arg("check").arg(dir.path()).assert().code(1);
    let stderr = String::from_utf8(out.get_output().stderr.clone()).unwrap();
    assert!(stderr.contains("literal-secret"), "{stderr}");
    assert!(
        !stderr.contains("canary-s3cr3t-4242"),
        "the excerpt masks the secret: {stderr}"
    );
    assert!(stderr.contains("crm_token: ******************"), "{stderr}");
    let json = weft()
        .args(["check", "--format", "json"])
        .arg(dir.path())
        .assert()
        .code(1);
    let stdout = String::from_utf8(json.get_output().stdout.clone()).unwrap();
    assert!(!stdout.contains("canary-s3cr3t-4242"), "{stdout}");
}

//! GitOps end to end, on real git repositories in temporary folders: publishing versions,
//! pinning them, semantic diffs of pull requests, and reproducible builds of any commit.

mod support;

use std::path::Path;
use std::process::Command as Process;

use assert_cmd::Command;
use support::{copy_tree, example};

const IDENTITY: [(&str, &str); 4] = [
    ("GIT_AUTHOR_NAME", "Test"),
    ("GIT_AUTHOR_EMAIL", "test@example.invalid"),
    ("GIT_COMMITTER_NAME", "Test"),
    ("GIT_COMMITTER_EMAIL", "test@example.invalid"),
];

fn git(dir: &Path, args: &[&str]) -> String {
    let out = Process::new("git")
        .arg("-C")
        .arg(dir)
        .args(args)
        .envs(IDENTITY)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn weft(dir: &Path) -> Command {
    let mut cmd = Command::cargo_bin("weft").unwrap();
    cmd.current_dir(dir).env("NO_COLOR", "1").envs(IDENTITY);
    cmd
}

fn edit(dir: &Path, file: &str, from: &str, to: &str) {
    let p = dir.join(file);
    let text = std::fs::read_to_string(&p).unwrap();
    assert!(text.contains(from), "{file} has no `{from}`");
    std::fs::write(p, text.replacen(from, to, 1)).unwrap();
}

fn stdout(cmd: &mut Command) -> String {
    let out = cmd.assert().success();
    String::from_utf8(out.get_output().stdout.clone()).unwrap()
}

const INTEGRATION: &str = "integrations/shop-orders-to-crm/integration.yaml";
const GLOBEX: &str = "instances/globex/shop-orders-to-crm.yaml";

/// A repository with the event-import example committed on `main`.
fn repo() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    copy_tree(&example("event-import"), dir.path());
    git(dir.path(), &["init", "-q", "-b", "main"]);
    git(dir.path(), &["add", "-A"]);
    git(
        dir.path(),
        &["commit", "-qm", "Import shop orders into the CRM"],
    );
    dir
}

#[test]
fn publish_tags_changed_integrations_once_and_ignores_cosmetic_changes() {
    let dir = repo();
    let d = dir.path();
    assert!(
        stdout(weft(d).args(["publish", "--dry-run"]))
            .contains("would publish shop-orders-to-crm/v1")
    );
    assert!(
        git(d, &["tag", "-l"]).is_empty(),
        "a dry run publishes nothing"
    );
    assert!(stdout(weft(d).arg("publish")).contains("published shop-orders-to-crm/v1"));
    assert!(
        stdout(weft(d).arg("publish")).contains("unchanged since v1"),
        "idempotent"
    );
    // Comments, formatting and key order leave the compiled plan the same.
    edit(
        d,
        INTEGRATION,
        "category: CRM\n",
        "# owned by the CRM team\ncategory:   CRM\n",
    );
    edit(
        d,
        INTEGRATION,
        "  region:         { type: enum, values: [eu, us], default: eu }\n",
        "",
    );
    edit(
        d,
        INTEGRATION,
        "  min_amount:",
        "  region:         { type: enum, values: [eu, us], default: eu }\n  min_amount:",
    );
    git(d, &["commit", "-qam", "Tidy the integration file"]);
    assert!(stdout(weft(d).arg("publish")).contains("unchanged since v1"));
    // A real change publishes v2 with the commit messages since v1 as notes.
    edit(d, INTEGRATION, "initial: 1s", "initial: 5s");
    git(
        d,
        &["commit", "-qam", "Back off longer before retrying the CRM"],
    );
    assert!(stdout(weft(d).arg("publish")).contains("published shop-orders-to-crm/v2"));
    let message = git(
        d,
        &["tag", "-l", "--format=%(contents)", "shop-orders-to-crm/v2"],
    );
    assert!(message.contains("plan-hash: sha256:"), "{message}");
    assert!(
        message.contains("Back off longer before retrying the CRM"),
        "{message}"
    );
    assert!(
        !message.contains("Import shop orders"),
        "notes start after v1: {message}"
    );
    let versions = stdout(weft(d).args(["versions", "shop-orders-to-crm", "--json"]));
    let doc: serde_json::Value = serde_json::from_str(&versions).unwrap();
    assert_eq!(doc["versions"].as_array().unwrap().len(), 2);
    assert_eq!(doc["draft"], false);
    edit(d, INTEGRATION, "initial: 5s", "initial: 7s");
    let doc: serde_json::Value = serde_json::from_str(&stdout(weft(d).args([
        "versions",
        "shop-orders-to-crm",
        "--json",
    ])))
    .unwrap();
    assert_eq!(
        doc["draft"], true,
        "the working tree has unpublished changes"
    );
}

#[test]
fn instances_pin_versions_built_from_git_objects_side_by_side() {
    let dir = repo();
    let d = dir.path();
    weft(d).arg("publish").assert().success();
    edit(d, INTEGRATION, "initial: 1s", "initial: 5s");
    git(d, &["commit", "-qam", "Longer backoff"]);
    weft(d).arg("publish").assert().success();
    // globex stays on v1, initech follows latest (v2), and the working tree moves on (draft).
    edit(d, GLOBEX, "version: draft", "version: 1");
    edit(
        d,
        "instances/initech/shop-orders-to-crm.yaml",
        "integration: shop-orders-to-crm\n",
        "integration: shop-orders-to-crm\nversion: latest\n",
    );
    edit(d, INTEGRATION, "initial: 5s", "initial: 9s");
    let out = tempfile::tempdir().unwrap();
    weft(d)
        .arg("build")
        .arg("-o")
        .arg(out.path())
        .assert()
        .success();
    let plan = |c: &str| -> serde_json::Value {
        serde_json::from_str(
            &std::fs::read_to_string(out.path().join(c).join("shop-orders-to-crm/plan.json"))
                .unwrap(),
        )
        .unwrap()
    };
    let initial = |p: &serde_json::Value| {
        p["flows"][0]["steps"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["id"] == "push")
            .unwrap()["retry"]["initial_ms"]
            .clone()
    };
    assert_eq!(
        (plan("globex")["version"].clone(), initial(&plan("globex"))),
        (serde_json::json!("v1"), serde_json::json!(1000))
    );
    assert_eq!(
        (
            plan("initech")["version"].clone(),
            initial(&plan("initech"))
        ),
        (serde_json::json!("v2"), serde_json::json!(5000))
    );
    let bundle: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(out.path().join("globex/shop-orders-to-crm/bundle.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(
        bundle["commit"].as_str().unwrap(),
        git(d, &["rev-parse", "shop-orders-to-crm/v1^{commit}"]).trim()
    );
    // A version marked unavailable can no longer be pinned.
    std::fs::write(
        d.join("integrations/shop-orders-to-crm/versions.yaml"),
        "weft: 1\nunavailable: [1]\n",
    )
    .unwrap();
    let fail = weft(d).arg("check").assert().code(1);
    assert!(
        String::from_utf8_lossy(&fail.get_output().stderr).contains("error[unavailable-version]")
    );
    // Pinning a version that was never published.
    edit(d, GLOBEX, "version: 1", "version: 9");
    let fail = weft(d).arg("check").assert().code(1);
    let stderr = String::from_utf8_lossy(&fail.get_output().stderr).to_string();
    assert!(
        stderr.contains("error[unknown-version]") && stderr.contains("published: v1, v2"),
        "{stderr}"
    );
}

#[test]
fn diff_shows_a_branch_per_integration_and_customer_with_breaking_changes() {
    let dir = repo();
    let d = dir.path();
    git(d, &["checkout", "-qb", "move-webhook"]);
    edit(d, INTEGRATION, "path: /orders", "path: /orders/v2");
    edit(
        d,
        INTEGRATION,
        "      - id: big-enough",
        "      - id: audit\n        uses: http.post\n        with: { url: \"https://audit.example.com/orders\", body: \"{{ trigger.body }}\" }\n      - id: big-enough",
    );
    edit(d, GLOBEX, "  min_amount: 100", "  min_amount: 250");
    git(d, &["commit", "-qam", "Move the webhook and audit orders"]);
    // Meanwhile main moves on; the branch merges it.
    git(d, &["checkout", "-q", "main"]);
    std::fs::write(d.join("NOTES.md"), "unrelated\n").unwrap();
    git(d, &["add", "NOTES.md"]);
    git(d, &["commit", "-qm", "Notes"]);
    git(d, &["checkout", "-q", "move-webhook"]);
    git(d, &["merge", "-q", "--no-edit", "main"]);
    // Default: merge-base with main … working tree.
    let markdown = stdout(weft(d).args(["diff", "--format", "markdown"]));
    for expected in [
        "| `shop-orders-to-crm` |",
        "1 step added",
        "1 trigger changed",
        "`webhook.path`: \"/orders\" → \"/orders/v2\"",
        "⚠️ **breaking**: webhook of flow `order-created` moved",
        "`config.min_amount`: 100 → 250",
        "+  step.order-created.audit:",
        "<details>",
    ] {
        assert!(
            markdown.contains(expected),
            "missing {expected:?} in:\n{markdown}"
        );
    }
    let json: serde_json::Value = serde_json::from_str(&stdout(
        weft(d).args(["diff", "main", "HEAD", "--format", "json"]),
    ))
    .unwrap();
    assert_eq!(
        json["integrations"][0]["customers"],
        serde_json::json!(["globex", "initech"])
    );
    assert!(
        !json["integrations"][0]["breaking"]
            .as_array()
            .unwrap()
            .is_empty()
    );
    // No change, no diff.
    let same = stdout(weft(d).args(["diff", "HEAD", "HEAD"]));
    assert!(same.contains("no change"), "{same}");
}

#[test]
fn diff_compiles_pinned_instances_from_their_published_versions() {
    let dir = repo();
    let d = dir.path();
    weft(d).arg("publish").assert().success();
    edit(d, GLOBEX, "version: draft", "version: 1");
    git(d, &["commit", "-qam", "Pin globex to v1"]);
    git(d, &["checkout", "-qb", "backoff"]);
    edit(d, INTEGRATION, "initial: 1s", "initial: 5s");
    git(d, &["commit", "-qam", "Longer backoff"]);
    weft(d).arg("publish").assert().success();
    edit(d, GLOBEX, "version: 1", "version: 2");
    git(d, &["commit", "-qam", "Move globex to v2"]);
    let json: serde_json::Value = serde_json::from_str(&stdout(
        weft(d).args(["diff", "main", "HEAD", "--format", "json"]),
    ))
    .unwrap();
    let globex = json["instances"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["customer"] == "globex")
        .unwrap_or_else(|| panic!("no globex in {json:#}"));
    let version = globex["fields"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["path"] == "version")
        .unwrap_or_else(|| panic!("no version change in {globex:#}"));
    assert_eq!(
        (&version["old"], &version["new"]),
        (&serde_json::json!("v1"), &serde_json::json!("v2"))
    );
    // The working tree against its own commit: pinned, and no change.
    let same = stdout(weft(d).arg("diff").arg("HEAD"));
    assert!(same.contains("no change"), "{same}");
}

#[test]
fn build_any_revision_reproducibly_without_checking_it_out() {
    let dir = repo();
    let d = dir.path();
    let first = git(d, &["rev-parse", "HEAD"]).trim().to_string();
    edit(d, INTEGRATION, "initial: 1s", "initial: 5s");
    git(d, &["commit", "-qam", "Longer backoff"]);
    // A second clone elsewhere builds the same commit to the same bytes.
    let clone = tempfile::tempdir().unwrap();
    let out = Process::new("git")
        .args(["clone", "-q"])
        .arg(d)
        .arg(clone.path().join("c"))
        .output()
        .unwrap();
    assert!(out.status.success());
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    weft(d)
        .args(["build", "--rev", &first, "-o"])
        .arg(a.path())
        .assert()
        .success();
    weft(&clone.path().join("c"))
        .args(["build", "--rev", &first, "-o"])
        .arg(b.path())
        .assert()
        .success();
    let read = |root: &Path| -> Vec<(String, Vec<u8>)> {
        let mut files = Vec::new();
        for customer in ["globex", "initech"] {
            for f in [
                "bundle.json",
                "plan.json",
                "docker-compose.yaml",
                ".env.example",
            ] {
                let p = root.join(customer).join("shop-orders-to-crm").join(f);
                files.push((
                    p.strip_prefix(root).unwrap().display().to_string(),
                    std::fs::read(p).unwrap(),
                ));
            }
        }
        files
    };
    assert_eq!(read(a.path()), read(b.path()));
    let bundle: serde_json::Value = serde_json::from_slice(&read(a.path())[0].1).unwrap();
    assert_eq!(bundle["commit"], serde_json::json!(first));
    let plan = String::from_utf8(read(a.path())[1].1.clone()).unwrap();
    assert!(
        plan.contains("\"initial_ms\": 1000"),
        "built from the old commit, not the working tree"
    );
}

#[test]
fn new_list_and_catalog() {
    let dir = repo();
    let d = dir.path();
    weft(d)
        .args(["new", "integration", "nightly-export", "--from", "schedule"])
        .assert()
        .success();
    weft(d)
        .args(["new", "integration", "nightly-export"])
        .assert()
        .code(2);
    weft(d)
        .args(["new", "integration", "Bad_Name"])
        .assert()
        .code(2);
    let check = weft(d).arg("check").assert().success();
    assert!(String::from_utf8_lossy(&check.get_output().stderr).contains("2 integrations"));
    let list: serde_json::Value = serde_json::from_str(&stdout(
        weft(d).args(["list", "--label", "crm", "--format", "json"]),
    ))
    .unwrap();
    assert_eq!(list.as_array().unwrap().len(), 1);
    weft(d).arg("publish").assert().success();
    weft(d)
        .args(["catalog", "-o", "catalog.json"])
        .assert()
        .success();
    let catalog: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(d.join("catalog.json")).unwrap()).unwrap();
    let names: Vec<&str> = catalog["integrations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["nightly-export", "shop-orders-to-crm"]);
    assert_eq!(
        catalog["integrations"][1]["versions"],
        serde_json::json!([1])
    );
}

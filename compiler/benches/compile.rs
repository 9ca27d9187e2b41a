//! Compiler benchmark: generates a repository of 1,000 integrations × 20 steps × 5 instances on
//! disk and prints the time to parse the YAML alone, to `check`, and to `build`, with ratios to
//! parse-only. Run: `cargo bench -p weft-compiler --bench compile` (release build).
//! `WEFT_BENCH_INTEGRATIONS=N` changes the size.

use std::path::Path;
use std::time::{Duration, Instant};

use rayon::prelude::*;
use weft_compiler::build::write_bundles;
use weft_compiler::repo::read_repo;
use weft_compiler::{compile, yaml};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const STEPS: usize = 20;
const INSTANCES: usize = 5;

fn component() -> String {
    "weft: 1\nname: crm\nversion: 1.0.0\nauth:\n  bearer:\n    fields:\n      token: { type: secret }\n      base_url: { type: url }\nactions:\n  add_customer:\n    input: { type: object, required: [body], properties: { body: { type: object } } }\n    http: { method: POST, path: /customers, body: \"{{ input.body }}\" }\n  find:\n    input: { type: object, properties: { email: { type: string } } }\n    http: { method: GET, path: /customers, query: { email: \"{{ input.email }}\" } }\n".to_string()
}

/// An integration with 20 steps: transforms, a branch with a component call in each case,
/// HTTP calls and logs, templates reading config and earlier steps.
fn integration(i: usize) -> String {
    let mut s = format!(
        "weft: 1\nname: integration-{i}\ndescription: Generated integration {i}\ncategory: Bench\nlabels: [bench, crm]\nconfig:\n  crm_url: {{ type: url, default: \"http://127.0.0.1:9100\" }}\n  crm_token: {{ type: secret }}\n  webhook_secret: {{ type: secret }}\n  min_amount: {{ type: integer, default: 0 }}\n  region: {{ type: enum, values: [eu, us], default: eu }}\nconnections:\n  crm:\n    component: crm\n    auth: bearer\n    with: {{ token: \"{{{{ config.crm_token }}}}\", base_url: \"{{{{ config.crm_url }}}}\" }}\nflows:\n  orders:\n    trigger:\n      webhook:\n        path: /orders\n        auth: {{ hmac_sha256: {{ secret: \"{{{{ config.webhook_secret }}}}\" }} }}\n    steps:\n"
    );
    s.push_str("      - id: s0\n        uses: transform\n        with:\n          value: { id: \"{{ trigger.body.id }}\", amount: \"{{ trigger.body.amount }}\", region: \"{{ config.region }}\" }\n");
    let mut n = 1;
    while n < STEPS {
        match n % 4 {
            1 => s.push_str(&format!(
                "      - id: s{n}\n        uses: branch\n        with:\n          cases:\n            - when: \"{{{{ steps.s0.amount >= config.min_amount }}}}\"\n              steps:\n                - {{ id: s{n}a, uses: crm.add_customer, connection: crm, with: {{ body: \"{{{{ steps.s0 }}}}\" }}, retry: {{ attempts: 5, initial: 1s, max: 1m }} }}\n          default:\n                - {{ id: s{n}b, uses: log, with: {{ message: \"skipped {{{{ trigger.body.id }}}}\" }} }}\n"
            )),
            2 => s.push_str(&format!(
                "      - id: s{n}\n        uses: http.request\n        with: {{ method: POST, url: \"{{{{ config.crm_url }}}}/events\", body: {{ prev: \"{{{{ steps.s{} }}}}\", n: {n} }} }}\n        timeout: 10s\n",
                n - 1
            )),
            3 => s.push_str(&format!(
                "      - id: s{n}\n        uses: crm.find\n        connection: crm\n        with: {{ email: \"{{{{ trigger.body.email | lower }}}}\" }}\n"
            )),
            _ => s.push_str(&format!(
                "      - id: s{n}\n        uses: transform\n        with: {{ value: {{ total: \"{{{{ steps.s0.amount * 2 }}}}\", step: {n} }} }}\n"
            )),
        }
        n += if n % 4 == 1 { 3 } else { 1 };
    }
    s
}

fn instance(i: usize, c: usize) -> String {
    format!(
        "weft: 1\nintegration: integration-{i}\nversion: draft\nconfig:\n  crm_url: https://crm-{c}.example\n  crm_token: {{ secret: CRM_TOKEN_{c} }}\n  webhook_secret: {{ secret: HOOK_SECRET_{c} }}\n  min_amount: {}\n",
        c * 10
    )
}

fn generate(root: &Path, integrations: usize) {
    std::fs::create_dir_all(root).unwrap();
    std::fs::write(root.join("weft.yaml"), "weft: 1\nname: bench\n").unwrap();
    std::fs::create_dir_all(root.join("components/crm")).unwrap();
    std::fs::write(root.join("components/crm/component.yaml"), component()).unwrap();
    (0..integrations).into_par_iter().for_each(|i| {
        let dir = root.join(format!("integrations/integration-{i}"));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("integration.yaml"), integration(i)).unwrap();
        for c in 0..INSTANCES {
            let dir = root.join(format!("instances/customer-{c}"));
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(dir.join(format!("integration-{i}.yaml")), instance(i, c)).unwrap();
        }
    });
}

fn median(mut runs: Vec<Duration>) -> Duration {
    runs.sort();
    runs[runs.len() / 2]
}

fn time(runs: usize, mut f: impl FnMut()) -> Duration {
    f(); // warm the page cache and lazy schemas
    median(
        (0..runs)
            .map(|_| {
                let start = Instant::now();
                f();
                start.elapsed()
            })
            .collect(),
    )
}

/// `weft diff` as the CLI does it: the base from git objects, the head from the working tree,
/// both compiled (in parallel), then the semantic diff.
fn time_diff(root: &Path, runs: usize) -> Duration {
    let git = |args: &[&str]| {
        let out = std::process::Command::new("git")
            .arg("-C")
            .arg(root)
            .args(args)
            .env("GIT_AUTHOR_NAME", "bench")
            .env("GIT_AUTHOR_EMAIL", "bench@example.invalid")
            .env("GIT_COMMITTER_NAME", "bench")
            .env("GIT_COMMITTER_EMAIL", "bench@example.invalid")
            .output()
            .expect("git");
        assert!(
            out.status.success(),
            "git {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    git(&["init", "-q", "-b", "main"]);
    git(&["add", "-A"]);
    git(&["commit", "-qm", "generated"]);
    let file = root.join("integrations/integration-7/integration.yaml");
    let text = std::fs::read_to_string(&file)
        .unwrap()
        .replace("step: 4 }", "step: 44 }");
    std::fs::write(&file, text).unwrap();
    time(runs, || {
        let base = weft_compiler::git::read_at(root, "HEAD").unwrap();
        let head = read_repo(root).unwrap();
        let (old, new) = rayon::join(|| compile(&base), || compile(&head));
        let d = weft_compiler::diff::diff(&old, &new);
        let changed: Vec<&str> = d.integrations.iter().map(|i| i.name.as_str()).collect();
        assert_eq!(
            changed,
            ["integration-7"],
            "one integration changed; base {} files, {} errors",
            base.files.len(),
            old.error_count()
        );
    })
}

fn main() {
    let integrations: usize = std::env::var("WEFT_BENCH_INTEGRATIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000);
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("repo");
    generate(&root, integrations);
    let sources = read_repo(&root).unwrap();
    let bytes: usize = sources.files.iter().map(|f| f.text.len()).sum();
    let check = compile(&sources);
    assert_eq!(check.error_count(), 0, "the generated repository is clean");
    assert_eq!(check.plans.len(), integrations * INSTANCES);
    println!(
        "repository: {} files, {:.1} MB ({integrations} integrations × {STEPS} steps × {INSTANCES} instances), {} threads",
        sources.files.len(),
        bytes as f64 / 1e6,
        rayon::current_num_threads()
    );
    let runs = 7;
    let parse = time(runs, || {
        let sources = read_repo(&root).unwrap();
        let parsed: usize = sources
            .files
            .par_iter()
            .map(|f| usize::from(yaml::parse(&f.text).is_ok()))
            .sum();
        assert_eq!(parsed, sources.files.len());
    });
    let check = time(runs, || {
        let sources = read_repo(&root).unwrap();
        let c = weft_compiler::check(&sources);
        assert_eq!(c.error_count(), 0);
    });
    let out = dir.path().join("dist");
    // A fresh build into a new, empty folder each run.
    let mut fresh = Vec::new();
    for i in 0..runs {
        let target = dir.path().join(format!("fresh-{i}"));
        let start = Instant::now();
        let sources = read_repo(&root).unwrap();
        let c = compile(&sources);
        write_bundles(&target, &c.plans, &c.project).unwrap();
        fresh.push(start.elapsed());
    }
    let c = compile(&read_repo(&root).unwrap());
    write_bundles(&out, &c.plans, &c.project).unwrap();
    let build = median(fresh);
    // A rebuild over unchanged output: files whose bytes are the same are not rewritten.
    let rebuild = time(runs, || {
        let sources = read_repo(&root).unwrap();
        let c = compile(&sources);
        write_bundles(&out, &c.plans, &c.project).unwrap();
    });
    let diff = time_diff(&root, runs);
    let ratio = |d: Duration| d.as_secs_f64() / parse.as_secs_f64();
    println!("parse only (read + YAML): {:>8.3} s", parse.as_secs_f64());
    println!(
        "check:                    {:>8.3} s  ({:.2}× parse-only)",
        check.as_secs_f64(),
        ratio(check)
    );
    println!(
        "build, fresh output:      {:>8.3} s  ({:.2}× parse-only; {} bundles, {} files)",
        build.as_secs_f64(),
        ratio(build),
        integrations * INSTANCES,
        integrations * INSTANCES * 4
    );
    println!(
        "build, unchanged output:  {:>8.3} s  ({:.2}× parse-only)",
        rebuild.as_secs_f64(),
        ratio(rebuild)
    );
    println!(
        "diff, HEAD … working tree, one integration changed: {:>6.3} s",
        diff.as_secs_f64()
    );
}

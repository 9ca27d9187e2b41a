//! `weft build --target compose,k8s --autoscale` on every example: every Kubernetes manifest
//! passes PyPI's `kubernetes-validate --strict` offline (`.ci/run` installs it; a missing tool
//! fails the test), KEDA objects are skipped by it with its reason printed; the Deployments are
//! the compose file's services with the same replicas; no Secret, secret value, host path or
//! timestamp in any manifest.

mod support;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use serde_json::Value;

fn build_examples(out: &Path) -> Vec<std::path::PathBuf> {
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
    let mut dirs: Vec<_> = std::fs::read_dir(&examples)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_dir())
        .collect();
    dirs.sort();
    let mut bundles = Vec::new();
    for dir in dirs {
        let target = out.join(dir.file_name().unwrap());
        let status = Command::new(env!("CARGO_BIN_EXE_weft"))
            .arg("build")
            .arg(&dir)
            .arg("-o")
            .arg(&target)
            .args(["--target", "compose,k8s", "--autoscale"])
            .status()
            .unwrap();
        assert!(status.success(), "building {}", dir.display());
        for customer in std::fs::read_dir(&target).unwrap() {
            for bundle in std::fs::read_dir(customer.unwrap().path()).unwrap() {
                bundles.push(bundle.unwrap().path());
            }
        }
    }
    bundles.sort();
    bundles
}

/// The YAML documents of a multi-document file, as JSON values.
fn documents(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap();
    serde_saphyr::from_multiple::<Value>(&text).unwrap()
}

#[test]
fn every_manifest_passes_strict_schema_validation() {
    let out = tempfile::tempdir().unwrap();
    let bundles = build_examples(out.path());
    assert!(bundles.len() >= 9);
    let mut files: Vec<String> = Vec::new();
    for bundle in &bundles {
        for name in ["kubernetes.yaml", "keda.yaml"] {
            files.push(bundle.join(name).display().to_string());
        }
    }
    let output = Command::new("kubernetes-validate")
        .arg("--strict")
        .args(&files)
        .output()
        .expect("kubernetes-validate is installed (pip install kubernetes-validate; .ci/run does)");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stdout}\n{stderr}");
    let report = format!("{stdout}{stderr}");
    let passed = report
        .lines()
        .filter(|l| l.contains(" passed for "))
        .count();
    let objects: usize = bundles
        .iter()
        .map(|b| documents(&b.join("kubernetes.yaml")).len())
        .sum();
    assert_eq!(passed, objects, "every object validated:\n{report}");
    // KEDA's ScaledObjects are custom resources the tool has no schema for: it says so.
    let skipped: Vec<&str> = report
        .lines()
        .filter(|l| l.contains("Couldn't find schema for kind ScaledObject"))
        .collect();
    assert!(!skipped.is_empty());
    eprintln!(
        "kubernetes-validate --strict: {passed} objects of {} bundles passed; {} KEDA ScaledObjects skipped by the tool: {}",
        bundles.len(),
        skipped.len(),
        skipped[0]
    );
}

/// `(flow, step) → replicas` of the compose file's step services.
fn compose_steps(bundle: &Path) -> BTreeMap<(String, String), u64> {
    let text = std::fs::read_to_string(bundle.join("docker-compose.yaml")).unwrap();
    let compose: Value = serde_saphyr::from_str(&text).unwrap();
    let mut steps = BTreeMap::new();
    for (name, service) in compose["services"].as_object().unwrap() {
        let Some(rest) = name.strip_prefix("step.") else {
            continue;
        };
        let (flow, step) = rest.split_once('.').unwrap();
        let replicas = service["deploy"]["replicas"]
            .as_u64()
            .or_else(|| service["scale"].as_u64())
            .unwrap_or(1);
        steps.insert((flow.to_string(), step.to_string()), replicas);
    }
    steps
}

#[test]
fn deployments_are_the_compose_services_with_the_same_replicas() {
    let out = tempfile::tempdir().unwrap();
    let mut overridden = false;
    for bundle in build_examples(out.path()) {
        let mut deployments = BTreeMap::new();
        let mut gateways = 0;
        for doc in documents(&bundle.join("kubernetes.yaml")) {
            if doc["kind"] != "Deployment" {
                continue;
            }
            let labels = &doc["metadata"]["labels"];
            match labels["weft.role"].as_str().unwrap() {
                "step" => {
                    let key = (
                        labels["weft.flow"].as_str().unwrap().to_string(),
                        labels["weft.step"].as_str().unwrap().to_string(),
                    );
                    deployments.insert(key, doc["spec"]["replicas"].as_u64().unwrap());
                }
                "gateway" => gateways += 1,
                _ => {}
            }
        }
        assert_eq!(gateways, 1, "{}", bundle.display());
        let compose = compose_steps(&bundle);
        assert_eq!(deployments, compose, "{}", bundle.display());
        overridden |= deployments.values().any(|&r| r > 1);
        // One autoscaler per step Deployment.
        let scaled: Vec<String> = documents(&bundle.join("keda.yaml"))
            .iter()
            .map(|d| {
                d["spec"]["scaleTargetRef"]["name"]
                    .as_str()
                    .unwrap()
                    .to_string()
            })
            .collect();
        assert_eq!(scaled.len(), deployments.len());
    }
    assert!(
        overridden,
        "an example instance sets replicas (event-import's globex pushes with 2)"
    );
}

#[test]
fn manifests_hold_no_secret_value_no_host_path_and_no_timestamp() {
    let out = tempfile::tempdir().unwrap();
    let timestamp = regex_lite_timestamp;
    for bundle in build_examples(out.path()) {
        for name in ["kubernetes.yaml", "keda.yaml"] {
            let text = std::fs::read_to_string(bundle.join(name)).unwrap();
            assert!(
                !text.contains(out.path().to_str().unwrap()),
                "{name}: a host path"
            );
            assert!(
                !text.contains(env!("CARGO_MANIFEST_DIR")),
                "{name}: a host path"
            );
            for doc in documents(&bundle.join(name)) {
                assert_ne!(doc["kind"], "Secret", "{name}: a Secret object");
                if doc["kind"] == "ConfigMap" {
                    // The plan, as the bundle's plan.json (whose config values may hold dates).
                    let plan = std::fs::read_to_string(bundle.join("plan.json")).unwrap();
                    assert_eq!(doc["data"]["plan.json"], plan.as_str());
                } else {
                    assert!(!timestamp(&doc.to_string()), "{name}: a timestamp");
                }
            }
        }
        // Every secret variable is a reference to the customer's Secret, never a value.
        let plan: Value =
            serde_json::from_str(&std::fs::read_to_string(bundle.join("plan.json")).unwrap())
                .unwrap();
        let secrets: Vec<&str> = plan["secrets"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s.as_str().unwrap())
            .collect();
        for doc in documents(&bundle.join("kubernetes.yaml")) {
            let containers = &doc["spec"]["template"]["spec"]["containers"];
            for env in containers
                .as_array()
                .into_iter()
                .flatten()
                .flat_map(|c| c["env"].as_array().into_iter().flatten())
            {
                let name = env["name"].as_str().unwrap();
                if secrets.contains(&name) {
                    assert!(env.get("value").is_none(), "{name} has a value");
                    assert_eq!(env["valueFrom"]["secretKeyRef"]["key"], name);
                    assert_eq!(
                        env["valueFrom"]["secretKeyRef"]["name"],
                        format!("weft-{}", plan["customer"].as_str().unwrap())
                    );
                }
            }
        }
    }
}

/// Whether `text` holds an ISO-8601 date-time (`2026-11-25T18:00`).
fn regex_lite_timestamp(text: &str) -> bool {
    let bytes = text.as_bytes();
    bytes.windows(16).any(|w| {
        let digit = |i: usize| w[i].is_ascii_digit();
        (0..4).all(digit)
            && w[4] == b'-'
            && digit(5)
            && digit(6)
            && w[7] == b'-'
            && digit(8)
            && digit(9)
            && w[10] == b'T'
            && digit(11)
            && digit(12)
            && w[13] == b':'
            && digit(14)
            && digit(15)
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fleet_of_six_hundred_instances_splits_its_plans_over_configmaps_that_run() {
    const CUSTOMERS: usize = 600;
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("repo");
    support::reference_repo(&repo, "127.0.0.1:9");
    std::fs::remove_dir_all(repo.join("instances/acme")).unwrap();
    let secrets = dir.path().join("secrets");
    std::fs::create_dir_all(&secrets).unwrap();
    std::fs::write(secrets.join("HOOK_SECRET"), support::HOOK_SECRET).unwrap();
    for c in 0..CUSTOMERS {
        let variable = format!("TOKEN_C{c:03}");
        support::write_files(
            &repo,
            &[(
                &format!("instances/c{c:03}/reference.yaml"),
                format!(
                    "weft: 1\nintegration: reference\nconfig:\n  hook_secret: {{ secret: HOOK_SECRET }}\n  token: {{ secret: {variable} }}\n"
                ),
            )],
        );
        std::fs::write(
            secrets.join(&variable),
            support::fleet_token(&format!("c{c:03}")),
        )
        .unwrap();
    }
    let out = dir.path().join("dist");
    let status = Command::new(env!("CARGO_BIN_EXE_weft"))
        .args(["build", repo.to_str().unwrap(), "-o", out.to_str().unwrap()])
        .args(["--fleet", "--target", "k8s"])
        .status()
        .unwrap();
    assert!(status.success());
    let manifest = out.join("fleet/kubernetes.yaml");
    assert!(
        !out.join("fleet/docker-compose.yaml").exists(),
        "--target k8s alone"
    );

    // Every object passes the schemas.
    let output = Command::new("kubernetes-validate")
        .arg("--strict")
        .arg(&manifest)
        .output()
        .expect("kubernetes-validate is installed (pip install kubernetes-validate; .ci/run does)");
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(output.status.success(), "{report}");
    let docs = documents(&manifest);
    let passed = report
        .lines()
        .filter(|l| l.contains(" passed for "))
        .count();
    assert_eq!(passed, docs.len(), "every object validated:\n{report}");

    // The plans, split over ConfigMaps each under Kubernetes' 1 MiB; every instance once.
    let maps: Vec<&Value> = docs.iter().filter(|d| d["kind"] == "ConfigMap").collect();
    assert!(maps.len() > 1, "{} ConfigMap(s)", maps.len());
    let mut keys = 0;
    let plans = dir.path().join("mounted");
    std::fs::create_dir_all(&plans).unwrap();
    for map in &maps {
        // Kubernetes counts a ConfigMap's keys and values, at most 1 MiB.
        let size: usize = map["data"]
            .as_object()
            .unwrap()
            .iter()
            .map(|(k, v)| k.len() + v.as_str().unwrap().len())
            .sum();
        assert!(
            size < 1024 * 1024,
            "{}: {size} bytes",
            map["metadata"]["name"]
        );
        for (key, plan) in map["data"].as_object().unwrap() {
            // As the kubelet projects them: one file per key in one folder.
            std::fs::write(plans.join(key), plan.as_str().unwrap()).unwrap();
            keys += 1;
        }
    }
    assert_eq!(keys, CUSTOMERS);
    // One gateway and one worker for the 600 customers' HTTP step; no secret in the
    // environment: the pods read the fleet's Secret as files.
    let deployments: Vec<&Value> = docs.iter().filter(|d| d["kind"] == "Deployment").collect();
    let roles: Vec<&str> = deployments
        .iter()
        .map(|d| d["metadata"]["labels"]["weft.role"].as_str().unwrap())
        .collect();
    assert_eq!(roles, ["gateway", "step"]);
    let text = std::fs::read_to_string(&manifest).unwrap();
    assert!(!text.contains("secretKeyRef") && !text.contains(&support::fleet_token("c001")));
    for deployment in &deployments {
        let pod = &deployment["spec"]["template"]["spec"];
        let sources = pod["volumes"][0]["projected"]["sources"]
            .as_array()
            .unwrap();
        assert!(
            sources.len() >= maps.len() * 2,
            "room to grow without a new pod template"
        );
        let args: Vec<&str> = pod["containers"][0]["args"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a.as_str().unwrap())
            .collect();
        assert!(args.ends_with(&["--reload-every", "5"]), "{args:?}");
    }

    // The projected folder runs as written: every instance, its token read from the secrets
    // folder as a mounted Secret gives it.
    let data = dir.path().join("data");
    let log = dir.path().join("weft.log");
    let port = support::free_port();
    let weft = support::WeftProcess::spawn_args(
        &support::binary(),
        &plans,
        &data,
        port,
        &log,
        &["--secrets-dir", secrets.to_str().unwrap()],
    );
    weft.wait_healthy().await;
    let client = support::http_client(std::time::Duration::from_secs(10));
    let r = support::post_reference_as(&client, port, "c599", "k8s-1")
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let started = std::fs::read_to_string(&log).unwrap();
    assert!(
        started.contains(&format!("of {CUSTOMERS} instance(s)")),
        "{started}"
    );
    drop(weft);
    eprintln!(
        "fleet of {CUSTOMERS} instances: {} ConfigMaps of plans, {} objects, all valid",
        maps.len(),
        docs.len()
    );
}

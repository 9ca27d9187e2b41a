//! Every example's emitted `docker-compose.yaml` is accepted by Debian's `docker-compose config`
//! (no engine needed), and so is the fleet file of `weft build --fleet`. `.ci/run` installs
//! docker-compose; a missing tool fails the test.

use std::path::Path;
use std::process::Command;

use weft_compiler::build::write_bundles;
use weft_compiler::repo::read_repo;

/// `.env` from the folder's `.env.example`, with every secret set as an operator would.
fn write_env(dir: &Path) {
    let example = std::fs::read_to_string(dir.join(".env.example")).unwrap();
    let env: String = example
        .lines()
        .filter(|l| !l.starts_with('#'))
        .map(|l| match l.strip_suffix('=') {
            Some(secret) => format!("{secret}=dummy\n"),
            None => format!("{l}\n"),
        })
        .collect();
    std::fs::write(dir.join(".env"), env).unwrap();
}

/// `docker-compose config` on the folder's `docker-compose.yaml`.
fn compose_config(dir: &Path) -> std::process::Output {
    Command::new("docker-compose")
        .args([
            "--project-directory",
            ".",
            "-f",
            "docker-compose.yaml",
            "config",
        ])
        .current_dir(dir)
        .output()
        .expect("docker-compose is installed (apt-get install docker-compose; .ci/run does)")
}

#[test]
fn docker_compose_accepts_every_emitted_file() {
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
    let out = tempfile::tempdir().unwrap();
    let mut checked = 0;
    let mut dirs: Vec<_> = std::fs::read_dir(&examples)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    dirs.sort();
    for dir in dirs {
        let sources = read_repo(&dir).unwrap();
        let compilation = weft_compiler::compile(&sources);
        assert_eq!(compilation.error_count(), 0, "{}", dir.display());
        let target = out.path().join(dir.file_name().unwrap());
        for (bundle, _) in write_bundles(&target, &compilation.plans, &compilation.project).unwrap()
        {
            let bundle_dir = target.join(&bundle);
            write_env(&bundle_dir);
            let output = compose_config(&bundle_dir);
            let stdout = String::from_utf8_lossy(&output.stdout);
            let stderr = String::from_utf8_lossy(&output.stderr);
            assert!(
                output.status.success(),
                "{bundle}: docker-compose config failed:\n{stderr}"
            );
            assert!(!stderr.contains("WARNING"), "{bundle}: {stderr}");
            // The resolved file has the broker, the gateway and one service per step with a
            // process of its own (fused steps run in their leader's).
            let plan: serde_json::Value = serde_json::from_str(
                &std::fs::read_to_string(bundle_dir.join("plan.json")).unwrap(),
            )
            .unwrap();
            for flow in plan["flows"].as_array().unwrap() {
                if flow["enabled"] == false {
                    continue;
                }
                for step in flow["steps"].as_array().unwrap() {
                    if step["fused"] == true {
                        let service = weft_compiler::emit::service_name(
                            flow["name"].as_str().unwrap(),
                            step["id"].as_str().unwrap(),
                        );
                        assert!(
                            !stdout.contains(&format!("  {service}:")),
                            "{bundle}: {service}"
                        );
                        continue;
                    }
                    let service = weft_compiler::emit::service_name(
                        flow["name"].as_str().unwrap(),
                        step["id"].as_str().unwrap(),
                    );
                    assert!(
                        stdout.contains(&format!("  {service}:")),
                        "{bundle}: no service {service}"
                    );
                }
            }
            assert!(
                stdout.contains("  broker:") && stdout.contains("  gateway:"),
                "{stdout}"
            );
            checked += 1;
        }
    }
    assert!(checked >= 9, "checked {checked} compose files");
}

/// The fleet topology of an example with two customers of one integration, as
/// `weft build --fleet` writes it, is accepted by docker-compose too.
#[test]
fn docker_compose_accepts_the_fleet_file() {
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/event-import");
    let out = tempfile::tempdir().unwrap();
    let built = Command::new(env!("CARGO_BIN_EXE_weft"))
        .arg("build")
        .arg(&example)
        .arg("-o")
        .arg(out.path())
        .arg("--fleet")
        .env("NO_COLOR", "1")
        .output()
        .unwrap();
    assert!(
        built.status.success(),
        "{}",
        String::from_utf8_lossy(&built.stderr)
    );
    let fleet = out.path().join("fleet");
    write_env(&fleet);
    let output = compose_config(&fleet);
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "docker-compose config: {stderr}");
    assert!(!stderr.contains("WARNING"), "{stderr}");
    assert!(stdout.contains("--integration"), "{stdout}");
    let globex = std::fs::read_dir(fleet.join("plans/globex"))
        .unwrap()
        .count();
    assert!(globex >= 1, "globex's plans are in the fleet's folder");
}

//! The emitted container topology: a compose file snapshot (file folders on volumes, ports,
//! labels, replicas), host ports that are stable and distinct, and file folders found from
//! templates over config.

use std::collections::BTreeSet;
use std::path::Path;

use weft_compiler::compose::{ComposeFile, Role};
use weft_compiler::emit;

fn compile(example: &str) -> weft_compiler::Compilation {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../examples")
        .join(example);
    let sources = weft_compiler::repo::read_repo(&dir).unwrap();
    let compilation = weft_compiler::compile(&sources);
    assert_eq!(compilation.error_count(), 0);
    compilation
}

#[test]
fn file_import_compose_snapshot() {
    let compilation = compile("file-import");
    let plan = &compilation.plans[0];
    let ports = emit::host_ports(&compilation.plans);
    let port = ports[&emit::bundle_dir(plan)];
    let text = emit::compose(plan, &compilation.project, port);
    insta::assert_snapshot!("file_import_compose", text);
    insta::assert_snapshot!(
        "file_import_env_example",
        emit::env_example(plan, &compilation.project, port)
    );
    // What weft emits reads back into the same typed file (`weft up` reads it so).
    let file = ComposeFile::from_yaml(&text).unwrap();
    assert_eq!(file, emit::compose_file(plan, &compilation.project, port));
    for (name, service) in &file.services {
        let role = service.role().unwrap();
        assert_eq!(service.labels["weft.customer"], plan.customer, "{name}");
        assert_eq!(
            service.labels["weft.integration"], plan.integration,
            "{name}"
        );
        if role == Role::Step {
            assert!(service.labels.contains_key("weft.flow"), "{name}");
            assert!(service.labels.contains_key("weft.step"), "{name}");
        }
        if role != Role::Broker {
            assert_eq!(
                service.extra_hosts,
                ["host.docker.internal:host-gateway"],
                "{name}"
            );
        }
    }
}

#[test]
fn file_steps_mount_one_volume_at_their_common_folder() {
    let compilation = compile("file-import");
    let folders = emit::file_folders(&compilation.plans[0]);
    assert_eq!(
        folders,
        BTreeSet::from([
            "/data/globex/done".to_string(),
            "/data/globex/failed".to_string(),
            "/data/globex/inbox".to_string(),
        ])
    );
    let volumes = emit::file_volumes(&folders);
    assert_eq!(volumes.len(), 1);
    assert_eq!(volumes["files-data-globex"], "/data/globex");
    // Folders with no common parent: one volume each (the outermost ones).
    let apart = BTreeSet::from([
        "/srv/in".to_string(),
        "/var/out".to_string(),
        "/var/out/old".to_string(),
    ]);
    let volumes = emit::file_volumes(&apart);
    assert_eq!(
        volumes.values().cloned().collect::<Vec<_>>(),
        ["/srv/in", "/var/out"]
    );
    // A report folder under a templated file name.
    let report = compile("report-export");
    for plan in &report.plans {
        let folders = emit::file_folders(plan);
        assert_eq!(
            folders,
            BTreeSet::from([format!("/data/{}/reports", plan.customer)])
        );
    }
}

#[test]
fn host_ports_are_distinct_stable_and_in_range() {
    let compilation = compile("event-import");
    let mut plans = compilation.plans.clone();
    let before = emit::host_ports(&plans);
    assert_eq!(before, emit::host_ports(&plans), "deterministic");
    // Many more customers of the same integration: the first ones keep their ports unless a
    // newcomer hashes onto the same run of ports (rare in 10,000).
    let template = plans[0].clone();
    for i in 0..200 {
        let mut p = template.clone();
        p.customer = format!("customer-{i:03}");
        plans.push(p);
    }
    let after = emit::host_ports(&plans);
    let distinct: BTreeSet<u16> = after.values().copied().collect();
    assert_eq!(distinct.len(), after.len(), "one port per bundle");
    assert!(after.values().all(|p| emit::HOST_PORTS.contains(p)));
    for (bundle, port) in &before {
        assert_eq!(after[bundle], *port, "{bundle} kept its port");
    }
}

#[test]
fn custom_component_images_get_a_service_each() {
    let compilation = compile("event-import");
    let mut plan = compilation.plans[0].clone();
    let component = |image: &str| weft_compiler::plan::Component {
        version: None,
        base_url: None,
        image: Some(image.to_string()),
        actions: Default::default(),
    };
    plan.components
        .insert("enricher".into(), component("acme/enricher:3"));
    // A component named like one of weft's services is renamed, and its URL passed on.
    plan.components
        .insert("gateway".into(), component("acme/gateway-lookup:1"));
    let file = emit::compose_file(&plan, &compilation.project, 20_000);
    let enricher = &file.services["enricher"];
    assert_eq!(enricher.image, "acme/enricher:3");
    assert_eq!(enricher.role(), Some(Role::Component));
    assert_eq!(enricher.labels["weft.component"], "enricher");
    let renamed = &file.services["component.gateway"];
    assert_eq!(renamed.image, "acme/gateway-lookup:1");
    assert_eq!(
        file.services["gateway"].environment["WEFT_COMPONENT_URL_GATEWAY"],
        "http://component.gateway:8080"
    );
    assert_eq!(
        file.services["gateway"].image,
        "${WEFT_RUNTIME_IMAGE:-weft/runtime:0.1.0}"
    );
}

#[test]
fn the_fleet_shares_one_service_per_integration_step_across_customers() {
    // event-import has two customers of one integration.
    let compilation = compile("event-import");
    assert!(compilation.plans.len() >= 2);
    let files = weft_compiler::fleet::fleet(&compilation.plans, &compilation.project).unwrap();
    let text = &files
        .iter()
        .find(|(name, _)| name == "docker-compose.yaml")
        .unwrap()
        .1;
    let file = ComposeFile::from_yaml(text).unwrap();
    assert_eq!(
        file,
        weft_compiler::fleet::fleet_compose_file(&compilation.plans, &compilation.project).unwrap()
    );
    // One step service per integration, flow and step with a process, not per customer.
    let plan = &compilation.plans[0];
    let steps: BTreeSet<String> = plan
        .flows
        .iter()
        .filter(|f| f.enabled)
        .flat_map(|f| {
            f.leading_steps().map(|s| {
                weft_compiler::fleet::fleet_service_name(&plan.integration, &f.name, &s.id)
            })
        })
        .collect();
    let services: BTreeSet<String> = file
        .services
        .iter()
        .filter(|(_, s)| s.role() == Some(Role::Step))
        .map(|(n, _)| n.clone())
        .collect();
    assert_eq!(services, steps);
    for (name, service) in &file.services {
        assert_eq!(service.labels["weft.customer"], "fleet", "{name}");
        if service.role() == Some(Role::Step) {
            assert!(service.command.contains(&"--integration".to_string()));
            assert_eq!(
                service.volumes,
                ["./plans:/plans:ro", "./secrets:/run/weft-secrets:ro"]
            );
        }
        // Gateway and workers reload the plans and secrets they watch.
        if service.role() != Some(Role::Broker) {
            assert!(
                service
                    .command
                    .ends_with(&["--reload-every".into(), "5".into()]),
                "{name}: {:?}",
                service.command
            );
            assert_eq!(
                service.environment["WEFT_SECRETS_DIR"],
                weft_compiler::fleet::SECRETS_MOUNT
            );
        }
    }
    // The gateway gets every customer's trigger secrets; the plans are copied under plans/.
    let gateway = &file.services["gateway"];
    for plan in &compilation.plans {
        for secret in plan.gateway_secrets() {
            assert!(gateway.environment.contains_key(secret), "{secret}");
        }
        assert!(
            files
                .iter()
                .any(|(name, _)| *name == format!("plans/{}/plan.json", emit::bundle_dir(plan)))
        );
    }
    // Deterministic: the same plans, the same files.
    assert_eq!(
        files,
        weft_compiler::fleet::fleet(&compilation.plans, &compilation.project).unwrap()
    );
}

#[test]
fn the_fleet_refuses_file_steps_with_a_reason() {
    let compilation = compile("file-import");
    let why = weft_compiler::fleet::fleet(&compilation.plans, &compilation.project).unwrap_err();
    assert!(why.contains("file steps"), "{why}");
}

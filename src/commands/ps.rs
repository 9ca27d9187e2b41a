//! `weft ps`: weft's containers on the local Docker engine, found by their `weft.*` labels
//! (those of `weft up` and of docker-compose alike): one line per service.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;

use weft_compiler::compose::{Role, label};
use weft_compiler::emit::{component_service, service_name};

use crate::deployment::Bundle;
use crate::docker::{self, EXIT_CODES};
use crate::report::OutputFormat;

const EXAMPLES: &str = "\
Examples:
  weft ps                                 every weft container on this engine
  weft ps dist/globex/event-import        one bundle's
  weft ps --format json";

/// List weft's containers by bundle and service.
#[derive(Debug, clap::Args)]
#[command(after_help = format!("{EXAMPLES}\n\n{EXIT_CODES}"))]
pub struct Args {
    /// Only this bundle's containers (dist/<customer>/<integration>).
    pub bundle: Option<PathBuf>,
    /// Output: human (a table) or json.
    #[arg(long, value_enum, default_value_t = OutputFormat::Human)]
    pub format: OutputFormat,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    docker::exit(ps(args))
}

/// One service of one bundle, as listed.
#[derive(Debug, Default, serde::Serialize)]
struct ServiceRow {
    customer: String,
    integration: String,
    service: String,
    role: String,
    /// `weft up` or the docker-compose project.
    started_by: String,
    running: usize,
    replicas: usize,
    states: Vec<String>,
    containers: Vec<String>,
}

fn ps(args: Args) -> anyhow::Result<ExitCode> {
    let bundle = args.bundle.as_deref().map(Bundle::read).transpose()?;
    let containers = docker::block_on(async {
        let docker = docker::connect().await?;
        let filter = bundle
            .as_ref()
            .map(|b| (b.customer.as_str(), b.integration.as_str()));
        docker::weft_containers(&docker, filter).await
    })??;
    let mut rows: BTreeMap<(String, String, String, bool, String), ServiceRow> = BTreeMap::new();
    for c in &containers {
        let get = |key: &str| docker::label_of(c, key).unwrap_or("").to_string();
        let role = Role::parse(&get(label::ROLE));
        let service = match role {
            Some(Role::Step) => service_name(&get(label::FLOW), &get(label::STEP)),
            Some(Role::Component) => component_service(&get(label::COMPONENT)),
            Some(r) => r.as_str().to_string(),
            None => get(label::ROLE),
        };
        let started_by = docker::label_of(c, docker::COMPOSE_PROJECT_LABEL)
            .map_or("weft up".to_string(), |p| format!("docker-compose ({p})"));
        let key = (
            get(label::CUSTOMER),
            get(label::INTEGRATION),
            started_by.clone(),
            role != Some(Role::Broker),
            service.clone(),
        );
        let row = rows.entry(key).or_insert_with(|| ServiceRow {
            customer: get(label::CUSTOMER),
            integration: get(label::INTEGRATION),
            service,
            role: get(label::ROLE),
            started_by,
            ..Default::default()
        });
        let status = c.status.clone().unwrap_or_default();
        if status.starts_with("Up") {
            row.running += 1;
        }
        row.replicas += 1;
        row.states.push(status);
        row.containers.push(docker::container_name(c).to_string());
    }
    let rows: Vec<ServiceRow> = rows.into_values().collect();
    match args.format {
        OutputFormat::Json => println!("{}", serde_json::to_string(&rows)?),
        OutputFormat::Human if rows.is_empty() => eprintln!("no weft containers"),
        OutputFormat::Human => {
            let bundle_width = rows
                .iter()
                .map(|r| r.customer.len() + r.integration.len() + 1)
                .max()
                .unwrap_or(6)
                .max(6);
            let service_width = rows
                .iter()
                .map(|r| r.service.len())
                .max()
                .unwrap_or(7)
                .max(7);
            println!(
                "{:bundle_width$}  {:service_width$}  RUNNING  STARTED BY        STATE",
                "BUNDLE", "SERVICE"
            );
            for r in &rows {
                println!(
                    "{:bundle_width$}  {:service_width$}  {:<7}  {:<16}  {}",
                    format!("{}/{}", r.customer, r.integration),
                    r.service,
                    format!("{}/{}", r.running, r.replicas),
                    r.started_by,
                    r.states.first().map_or("", String::as_str),
                );
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

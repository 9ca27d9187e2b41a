//! `weft down`: removes what `weft up` created for a bundle: its containers and network, and
//! with `--volumes` its volumes (the broker's store, the gateway's history, file folders).

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use bollard::query_parameters::{ListVolumesOptionsBuilder, RemoveVolumeOptionsBuilder};
use weft_compiler::compose::label;

use crate::deployment::Bundle;
use crate::docker::{self, EXIT_CODES};

const EXAMPLES: &str = "\
Examples:
  weft down dist/globex/event-import
  weft down dist/globex/event-import --volumes    also delete the broker's and gateway's data

Containers docker-compose started from the same bundle are left to `docker-compose down`.";

/// Remove a bundle's containers and network (and volumes with --volumes).
#[derive(Debug, clap::Args)]
#[command(after_help = format!("{EXAMPLES}\n\n{EXIT_CODES}"))]
pub struct Args {
    /// The bundle folder (dist/<customer>/<integration>).
    pub bundle: PathBuf,
    /// Also remove the bundle's volumes: queued messages and history are lost.
    #[arg(long)]
    pub volumes: bool,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    docker::exit(down(args))
}

fn down(args: Args) -> anyhow::Result<ExitCode> {
    let bundle = Bundle::read(&args.bundle)?;
    docker::block_on(async {
        let docker = docker::connect().await?;
        let (customer, integration) = (&bundle.customer, &bundle.integration);
        let containers = docker::bundle_containers(&docker, customer, integration).await?;
        for c in &containers {
            let name = docker::container_name(c);
            docker::force_remove(&docker, name).await?;
            eprintln!("removed container {name}");
        }
        let network = bundle.network();
        match docker.remove_network(&network).await {
            Ok(()) => eprintln!("removed network {network}"),
            Err(e) if docker::is_not_found(&e) => {}
            Err(e) => return Err(e).context(format!("removing network {network}")),
        }
        if args.volumes {
            // The file's volumes, and any other this bundle's `up` labelled.
            let filters = HashMap::from([(
                "label".to_string(),
                vec![
                    format!("{}={customer}", label::CUSTOMER),
                    format!("{}={integration}", label::INTEGRATION),
                ],
            )]);
            let listed = docker
                .list_volumes(Some(
                    ListVolumesOptionsBuilder::default()
                        .filters(&filters)
                        .build(),
                ))
                .await?;
            let mut names: Vec<String> = bundle
                .compose
                .volumes
                .keys()
                .map(|v| bundle.volume(v))
                .collect();
            names.extend(
                listed
                    .volumes
                    .unwrap_or_default()
                    .into_iter()
                    .map(|v| v.name)
                    .filter(|n| n.starts_with(&format!("{}_", bundle.project))),
            );
            names.sort();
            names.dedup();
            for volume in names {
                match docker
                    .remove_volume(&volume, Some(RemoveVolumeOptionsBuilder::default().build()))
                    .await
                {
                    Ok(()) => eprintln!("removed volume {volume}"),
                    Err(e) if docker::is_not_found(&e) => {}
                    Err(e) => return Err(e).context(format!("removing volume {volume}")),
                }
            }
        }
        if containers.is_empty() {
            eprintln!("no container of {customer}/{integration} was running");
        }
        anyhow::Ok(())
    })??;
    Ok(ExitCode::SUCCESS)
}

//! `weft logs`: what a bundle's containers (started by `weft up`) write, each line prefixed
//! with its container's service and replica; `--follow` keeps reading.

use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::bail;
use bollard::query_parameters::LogsOptionsBuilder;
use futures_util::StreamExt as _;

use crate::deployment::Bundle;
use crate::docker::{self, EXIT_CODES};

const EXAMPLES: &str = "\
Examples:
  weft logs dist/globex/event-import                 every container's log so far
  weft logs dist/globex/event-import gateway --follow
  weft logs dist/globex/event-import step.order-created.push --tail 50";

/// Print the logs of a bundle's containers.
#[derive(Debug, clap::Args)]
#[command(after_help = format!("{EXAMPLES}\n\n{EXIT_CODES}"))]
pub struct Args {
    /// The bundle folder (dist/<customer>/<integration>).
    pub bundle: PathBuf,
    /// Only this service's containers (`gateway`, `broker`, `step.<flow>.<step>`, a component).
    pub service: Option<String>,
    /// Keep printing as they write, until Ctrl-C.
    #[arg(long, short)]
    pub follow: bool,
    /// Lines from the end of each log (default: all).
    #[arg(long)]
    pub tail: Option<u32>,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    docker::exit(logs(args))
}

fn logs(args: Args) -> anyhow::Result<ExitCode> {
    let bundle = Bundle::read(&args.bundle)?;
    if let Some(service) = &args.service
        && !bundle.compose.services.contains_key(service)
    {
        let known: Vec<&str> = bundle.compose.services.keys().map(String::as_str).collect();
        bail!(
            "the bundle has no service `{service}`; it has: {}",
            known.join(", ")
        );
    }
    docker::block_on(async {
        let docker = docker::connect().await?;
        let containers =
            docker::bundle_containers(&docker, &bundle.customer, &bundle.integration).await?;
        let prefix = format!("{}-", bundle.project);
        let mut streams = Vec::new();
        for c in &containers {
            let name = docker::container_name(c).to_string();
            let short = name.strip_prefix(&prefix).unwrap_or(&name).to_string();
            if let Some(service) = &args.service
                && short != *service
                && !short
                    .strip_prefix(service.as_str())
                    .is_some_and(|rest| rest.starts_with('-'))
            {
                continue;
            }
            let mut options = LogsOptionsBuilder::default()
                .stdout(true)
                .stderr(true)
                .follow(args.follow);
            if let Some(tail) = args.tail {
                options = options.tail(&tail.to_string());
            }
            let stream = docker
                .logs(&name, Some(options.build()))
                .map(move |chunk| (short.clone(), chunk));
            streams.push(stream.boxed());
        }
        if streams.is_empty() {
            bail!(
                "no container of {}/{} was started by `weft up`",
                bundle.customer,
                bundle.integration
            );
        }
        if args.follow {
            // Interleaved as they arrive.
            let mut all = futures_util::stream::select_all(streams);
            while let Some((short, chunk)) = all.next().await {
                print_chunk(&short, chunk?);
            }
        } else {
            // One container after the other.
            for mut stream in streams {
                while let Some((short, chunk)) = stream.next().await {
                    print_chunk(&short, chunk?);
                }
            }
        }
        anyhow::Ok(())
    })??;
    Ok(ExitCode::SUCCESS)
}

fn print_chunk(service: &str, chunk: bollard::container::LogOutput) {
    let text = chunk.to_string();
    let mut out = std::io::stdout().lock();
    for line in text.lines() {
        let _ = writeln!(out, "{service} | {line}");
    }
}

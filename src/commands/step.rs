//! `weft step`: one step of one flow in its container: it takes the step's messages from its
//! consumer on the NATS JetStream broker, runs them with the same step code as `weft run`, and
//! publishes their successors. Replicas of a step share its consumer.

use std::process::ExitCode;

use anyhow::bail;

use crate::report::ColorChoice;

const EXAMPLES: &str = "\
Examples:
  WEFT_BROKER_URL=nats://broker:4222 weft step /bundle --flow order-created --step push --listen 0.0.0.0 --port 9090
  weft step dist/globex/event-import --flow order-created --step push --broker nats://127.0.0.1:4222
  weft step dist/ --integration event-import --flow order-created --step push --broker nats://127.0.0.1:4222

Given a `weft build` output folder, one process runs the step for every instance of the
integration (a fleet's worker): a lane per instance, served in turn, each with its own config
and credentials; its history goes to a gateway that runs the same folder.

--port serves only /healthz and /metrics. Emitted docker-compose files and `weft up` start one
container per replica of each step.";

/// Run one step of a bundle from its queue on a NATS JetStream broker (container mode).
#[derive(Debug, clap::Args)]
#[command(after_help = EXAMPLES)]
#[group(skip)]
pub struct Args {
    /// The flow the step belongs to.
    #[arg(long)]
    pub flow: String,
    /// The step's id.
    #[arg(long)]
    pub step: String,
    /// With a `weft build` output folder: run the step for every instance of this integration.
    #[arg(long)]
    pub integration: Option<String>,
    #[command(flatten)]
    pub run: super::run::Args,
}

pub fn run(args: Args, color: ColorChoice) -> anyhow::Result<ExitCode> {
    if args.run.broker.is_none() {
        bail!("weft step needs a broker: --broker nats://HOST:PORT or WEFT_BROKER_URL");
    }
    let role = weft_runtime::Role::Step {
        flow: args.flow,
        step: args.step,
    };
    super::run::run_as(args.run, color, role, args.integration.as_deref())
}

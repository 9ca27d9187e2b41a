//! `weft gateway`: a bundle's trigger gateway in its container: webhooks, schedules, polls and
//! deploy flows start executions on the NATS JetStream broker, whose step workers run them; it
//! keeps the execution history that the workers send back through the broker.

use std::process::ExitCode;

use anyhow::bail;

use crate::report::ColorChoice;

const EXAMPLES: &str = "\
Examples:
  WEFT_BROKER_URL=nats://broker:4222 weft gateway /bundle --listen 0.0.0.0 --port 8080
  weft gateway dist/globex/event-import --broker nats://127.0.0.1:4222 --data-dir .weft-gateway
  weft gateway dist/ --broker nats://127.0.0.1:4222     # every customer's webhooks (a fleet)

Emitted docker-compose files and `weft up` start it as the `gateway` service. Webhooks are
served at POST /hooks/<customer>/<integration><path>; /healthz and /metrics on the same port.";

/// Run a bundle's triggers and gateway against a NATS JetStream broker (container mode).
#[derive(Debug, clap::Args)]
#[command(after_help = EXAMPLES)]
#[group(skip)]
pub struct Args {
    #[command(flatten)]
    pub run: super::run::Args,
}

pub fn run(args: Args, color: ColorChoice) -> anyhow::Result<ExitCode> {
    if args.run.broker.is_none() {
        bail!("weft gateway needs a broker: --broker nats://HOST:PORT or WEFT_BROKER_URL");
    }
    super::run::run_as(args.run, color, weft_runtime::Role::Gateway, None)
}

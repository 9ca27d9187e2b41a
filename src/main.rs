//! The `weft` binary: parses flags, calls the compiler and runtime libraries, maps results to
//! exit codes. Each subcommand lives in `src/commands/<verb>.rs`.

mod commands;
mod report;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// mimalloc: the compiler and runtime allocate many small values (YAML trees, JSON, plans);
/// it is measurably faster than the system allocator on `weft build` (see the benchmark).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const EXAMPLES: &str = "\
Examples:
  weft check                         check the repository in the current folder
  weft check examples/sync-webhook --format json
  weft build -o dist                 compile every instance into dist/<customer>/<integration>/
  weft graph --integration acme-orders --format mermaid

Exit codes:
  0  success
  1  the sources have errors (diagnostics were printed)
  2  usage error, or a file or folder could not be read or written";

/// weft: a declarative, GitOps integration compiler and runtime.
#[derive(Debug, Parser)]
#[command(name = "weft", version, about, after_help = EXAMPLES, propagate_version = true)]
struct Cli {
    /// When to use colours: auto (only on a terminal, and not with NO_COLOR), always, never.
    #[arg(long, global = true, value_enum, default_value_t = report::ColorChoice::Auto)]
    color: report::ColorChoice,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    Check(commands::check::Args),
    Build(commands::build::Args),
    Graph(commands::graph::Args),
    Health(commands::health::Args),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Check(args) => commands::check::run(args, cli.color),
        Command::Build(args) => commands::build::run(args, cli.color),
        Command::Graph(args) => commands::graph::run(args, cli.color),
        Command::Health(args) => commands::health::run(args),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

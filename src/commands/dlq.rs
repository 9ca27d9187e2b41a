//! `weft dlq`: dead letters — messages whose step failed after its retries — kept with their
//! error, and replayed onto their queue after a fix.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::bail;
use weft_runtime::history;
use weft_runtime::store::{Op, Store};

const EXAMPLES: &str = "\
Examples:
  weft dlq list
  weft dlq replay 42
  weft dlq replay --all

A running `weft run` with the same --data-dir picks replays up within a second; otherwise they
run at its next start.";

/// List or replay dead letters.
#[derive(Debug, clap::Args)]
#[command(after_help = EXAMPLES)]
pub struct Args {
    #[command(subcommand)]
    pub command: Command,
    #[arg(long, default_value = ".weft", env = "WEFT_DATA_DIR", global = true)]
    pub data_dir: PathBuf,
}

#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// List dead letters with their error.
    List {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Put dead letters back on their queue.
    Replay {
        /// Dead letter ids.
        ids: Vec<i64>,
        /// Every dead letter.
        #[arg(long, conflicts_with = "ids")]
        all: bool,
    },
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let conn = history::open(&args.data_dir).map_err(anyhow::Error::msg)?;
    let letters = history::dead_letters(&conn).map_err(anyhow::Error::msg)?;
    match args.command {
        Command::List { json } => {
            if json {
                println!("{}", serde_json::to_string_pretty(&letters)?);
            } else {
                for d in &letters {
                    println!(
                        "{:>6}  {}  step {} (attempt {})  {}",
                        d.id, d.execution, d.step, d.attempt, d.error
                    );
                }
                eprintln!(
                    "{} dead letter{}",
                    letters.len(),
                    if letters.len() == 1 { "" } else { "s" }
                );
            }
        }
        Command::Replay { ids, all } => {
            let chosen: Vec<i64> = if all {
                letters.iter().map(|d| d.id).collect()
            } else {
                ids
            };
            if chosen.is_empty() {
                bail!("name dead letters to replay, or --all");
            }
            for id in &chosen {
                if !letters.iter().any(|d| d.id == *id) {
                    bail!("no dead letter {id} (see `weft dlq list`)");
                }
            }
            let store = Store::open(&args.data_dir.join("weft.db"), Box::new(|_| {}))
                .map_err(anyhow::Error::msg)?;
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            rt.block_on(
                store.commit(
                    chosen
                        .iter()
                        .map(|&dead_letter| Op::RequestReplay { dead_letter })
                        .collect(),
                ),
            )
            .map_err(anyhow::Error::msg)?;
            eprintln!(
                "replay requested for {} dead letter{}",
                chosen.len(),
                if chosen.len() == 1 { "" } else { "s" }
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

//! `weft executions`: the execution history — each step's input, output, duration, attempts
//! and error (secrets masked).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::bail;
use weft_runtime::history;

const EXAMPLES: &str = "\
Examples:
  weft executions
  weft executions --flow order-created --status failed
  weft executions show 01JD5X3T0Q9J6W4V2K8M7N1B3C
  weft executions export 01JD5X3T0Q9J6W4V2K8M7N1B3C -o integrations/acme/tests/replay.yaml
  weft executions --format json | jq '.[].status'";

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Human,
    Json,
}

/// List executions, or show one with every step run.
#[derive(Debug, clap::Args)]
#[command(after_help = EXAMPLES)]
pub struct Args {
    #[command(subcommand)]
    pub command: Option<Command>,
    /// Only this flow.
    #[arg(long)]
    pub flow: Option<String>,
    /// Only this status: running, succeeded, failed.
    #[arg(long)]
    pub status: Option<String>,
    /// At most this many, newest first.
    #[arg(long, default_value_t = 50)]
    pub limit: i64,
    #[arg(long, default_value = ".weft", env = "WEFT_DATA_DIR", global = true)]
    pub data_dir: PathBuf,
    #[arg(long, value_enum, default_value_t = Format::Human, global = true)]
    pub format: Format,
}

#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// One execution with its step runs.
    Show {
        /// The execution id.
        id: String,
    },
    /// Turn an execution into a `weft test` file: its trigger, its HTTP exchanges as mocks,
    /// its step outputs as expectations (secrets stay masked).
    Export {
        /// The execution id.
        id: String,
        /// The test file to write (e.g. integrations/<integration>/tests/<name>.yaml).
        #[arg(short, long)]
        output: PathBuf,
        /// The repository the execution's bundle was compiled from (for its steps' kinds).
        #[arg(long, default_value = ".")]
        repo: PathBuf,
    },
}

fn time(ms: i64) -> String {
    chrono_like(ms)
}

/// Milliseconds since the epoch as `YYYY-MM-DD HH:MM:SS` UTC.
fn chrono_like(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Civil from days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let conn = history::open(&args.data_dir).map_err(anyhow::Error::msg)?;
    match args.command {
        None => {
            let list = history::executions(
                &conn,
                args.flow.as_deref(),
                args.status.as_deref(),
                args.limit,
            )
            .map_err(anyhow::Error::msg)?;
            if args.format == Format::Json {
                println!("{}", serde_json::to_string_pretty(&list)?);
                return Ok(ExitCode::SUCCESS);
            }
            println!(
                "{:<26}  {:<10}  {:<19}  {:<28}  flow",
                "execution", "status", "started (UTC)", "instance"
            );
            for e in &list {
                println!(
                    "{:<26}  {:<10}  {:<19}  {:<28}  {}",
                    e.id,
                    e.status,
                    time(e.started_at),
                    e.instance,
                    e.flow
                );
            }
            if list.is_empty() {
                eprintln!("no executions");
            }
        }
        Some(Command::Export { id, output, repo }) => export(&args.data_dir, &id, &output, &repo)?,
        Some(Command::Show { id }) => {
            let Some(detail) = history::execution(&conn, &id).map_err(anyhow::Error::msg)? else {
                bail!("no execution {id}");
            };
            if args.format == Format::Json {
                println!("{}", serde_json::to_string_pretty(&detail)?);
                return Ok(ExitCode::SUCCESS);
            }
            let e = &detail.execution;
            println!(
                "execution {}  {}  {}  flow {}",
                e.id, e.status, e.instance, e.flow
            );
            println!("started   {}", time(e.started_at));
            if let Some(f) = e.finished_at {
                println!("finished  {} ({} ms)", time(f), f - e.started_at);
            }
            if let Some(err) = &e.error {
                println!("error     {err}");
            }
            println!("trigger   {}", serde_json::to_string(&detail.trigger)?);
            for s in &detail.steps {
                println!(
                    "\n  step {}  attempt {}  {}  {} ms",
                    s.step, s.attempt, s.status, s.duration_ms
                );
                println!("    input   {}", serde_json::to_string(&s.input)?);
                if !s.output.is_null() {
                    println!("    output  {}", serde_json::to_string(&s.output)?);
                }
                if let Some(err) = &s.error {
                    println!("    error   {err}");
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Writes the test file that replays execution `id`.
fn export(
    data_dir: &std::path::Path,
    id: &str,
    output: &std::path::Path,
    repo: &std::path::Path,
) -> anyhow::Result<()> {
    let conn = history::open(data_dir).map_err(anyhow::Error::msg)?;
    let Some(detail) = history::execution(&conn, id).map_err(anyhow::Error::msg)? else {
        bail!("no execution {id}");
    };
    let sources = super::read(repo)?;
    let compilation = weft_compiler::compile_with(&sources, super::versions(repo).as_ref());
    if compilation.error_count() > 0 {
        bail!(
            "the repository at {} has errors: run `weft check {}`",
            repo.display(),
            repo.display()
        );
    }
    let dead_lettered = history::dead_letters(&conn)
        .map_err(anyhow::Error::msg)?
        .iter()
        .any(|d| d.execution == id);
    let test = weft_testing::export::export(&detail, &compilation.plans, dead_lettered)?;
    let text = weft_testing::export::to_yaml(&test).map_err(anyhow::Error::msg)?;
    if let Some(parent) = output.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)
            .map_err(|e| anyhow::anyhow!("creating {}: {e}", parent.display()))?;
    }
    std::fs::write(output, text)
        .map_err(|e| anyhow::anyhow!("writing {}: {e}", output.display()))?;
    eprintln!("wrote {} (run it with `weft test`)", output.display());
    Ok(())
}

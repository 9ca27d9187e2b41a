//! `weft check`: checks every file of a repository and prints every problem found.

use std::path::PathBuf;
use std::process::ExitCode;

use crate::report::{self, ColorChoice, DiagnosticFormat};

const EXAMPLES: &str = "\
Examples:
  weft check
  weft check path/to/repo --format github   # annotations on a pull request
  weft check --format json | jq .code";

/// Check a repository: schemas, references, templates, instances. Prints every problem.
#[derive(Debug, clap::Args)]
#[command(after_help = EXAMPLES)]
pub struct Args {
    /// The repository (a folder with weft.yaml, components/, integrations/, instances/).
    #[arg(default_value = ".")]
    pub path: PathBuf,
    /// Output format of the diagnostics.
    #[arg(long, value_enum, default_value_t = DiagnosticFormat::Human)]
    pub format: DiagnosticFormat,
}

pub fn run(args: Args, color: ColorChoice) -> anyhow::Result<ExitCode> {
    let sources = super::read(&args.path)?;
    let compilation = weft_compiler::check_with(&sources, super::versions(&args.path).as_ref());
    report::print(&compilation, &sources, args.format, color);
    if args.format == DiagnosticFormat::Human {
        let verdict = if compilation.error_count() > 0 {
            "failed"
        } else {
            "ok"
        };
        eprintln!(
            "check {verdict}: {} files, {} integrations; {}",
            sources.files.len(),
            compilation.integrations.len(),
            report::summary(&compilation)
        );
    }
    Ok(if compilation.error_count() > 0 {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

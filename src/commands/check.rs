//! `weft check`: checks every file of a repository and prints every problem found.

use std::path::PathBuf;
use std::process::ExitCode;

use crate::report::{self, ColorChoice, DiagnosticFormat};

const EXAMPLES: &str = "\
Examples:
  weft check
  weft check path/to/repo --format github   # annotations on a pull request
  weft check --format json | jq .code";

/// Check a repository: schemas, references, templates, instances, and the test files
/// (`integrations/*/tests/*.yaml`). Prints every problem.
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
    let versions = super::versions(&args.path);
    let compilation = weft_compiler::check_with(&sources, versions.as_ref());
    report::print(&compilation, &sources, args.format, color);
    let test_problems = if compilation.error_count() == 0 {
        check_test_files(&args, &sources, versions.as_ref(), color)?
    } else {
        0
    };
    if args.format == DiagnosticFormat::Human {
        let verdict = if compilation.error_count() + test_problems > 0 {
            "failed"
        } else {
            "ok"
        };
        let tests = if test_problems > 0 {
            format!("; {test_problems} problem(s) in test files")
        } else {
            String::new()
        };
        eprintln!(
            "check {verdict}: {} files, {} integrations; {}{tests}",
            sources.files.len(),
            compilation.integrations.len(),
            report::summary(&compilation)
        );
    }
    Ok(if compilation.error_count() + test_problems > 0 {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

/// Checks the test files (`integrations/*/tests/*.yaml`) as `weft test` does before it runs
/// them — schema, customer, flow, step ids — against the compiled plans; prints each problem in
/// the chosen format and returns how many there were.
fn check_test_files(
    args: &Args,
    sources: &weft_compiler::repo::Sources,
    versions: &dyn weft_compiler::Versions,
    color: ColorChoice,
) -> anyhow::Result<usize> {
    let files = weft_testing::load::read_test_files(&args.path, None)?;
    if files.is_empty() {
        return Ok(0);
    }
    let plans = weft_compiler::compile_with(sources, versions).plans;
    let mut count = 0;
    for (i, file) in files.iter().enumerate() {
        let Err(problems) = weft_testing::load::load(i, file, &plans) else {
            continue;
        };
        count += problems.len();
        for p in &problems {
            match args.format {
                DiagnosticFormat::Human => eprint!("{}", p.render_human(&files, color.stderr())),
                DiagnosticFormat::Json => {
                    println!("{}", serde_json::to_string(&p.to_json(&files))?)
                }
                DiagnosticFormat::Github => println!("{}", p.render_github(&files, &file.path)),
            }
        }
    }
    Ok(count)
}

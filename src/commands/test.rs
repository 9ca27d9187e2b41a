//! `weft test`: runs every test file under `integrations/<integration>/tests/` offline, on the
//! real runtime, and reports the results.

use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;

use crate::report::{self, ColorChoice, DiagnosticFormat};

const EXAMPLES: &str = "\
Examples:
  weft test                                   every test of the repository in the current folder
  weft test examples/sync-webhook --integration stock-check
  weft test --filter refused                  tests whose name or file contains `refused`
  weft test --format junit > junit.xml        for CI dashboards
  weft test --format github                   annotations on the pull request's test files
  weft test --coverage                        also: the steps and branch cases no test reached

Test files: integrations/<integration>/tests/*.yaml (see docs/testing.md).
No request reaches the network: a request no mock answers fails the test.

Exit codes:
  0  every test passed
  1  a test failed, a test file has problems, or the sources have errors
  2  usage error, or a file or folder could not be read";

/// Run the integrations' tests offline: mocked HTTP, a virtual clock, the real step code.
#[derive(Debug, clap::Args)]
#[command(after_help = EXAMPLES)]
pub struct Args {
    /// The repository (a folder with weft.yaml or integrations/).
    #[arg(default_value = ".")]
    pub path: PathBuf,
    /// Only this integration's tests.
    #[arg(long)]
    pub integration: Option<String>,
    /// Only tests whose name or file path contains this text.
    #[arg(long)]
    pub filter: Option<String>,
    /// Output format: human (stdout), json, junit (XML) or github (annotations).
    #[arg(long, value_enum, default_value_t = TestFormat::Human)]
    pub format: TestFormat,
    /// Also list, per flow, the steps and branch cases no test reached.
    #[arg(long)]
    pub coverage: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum TestFormat {
    Human,
    Json,
    Junit,
    Github,
}

pub fn run(args: Args, color: ColorChoice) -> anyhow::Result<ExitCode> {
    let sources = super::read(&args.path)?;
    let compilation = weft_compiler::compile_with(&sources, super::versions(&args.path).as_ref());
    if compilation.error_count() > 0 {
        let format = match args.format {
            TestFormat::Github => DiagnosticFormat::Github,
            TestFormat::Json => DiagnosticFormat::Json,
            TestFormat::Human | TestFormat::Junit => DiagnosticFormat::Human,
        };
        report::print(&compilation, &sources, format, color);
        eprintln!(
            "test: the sources have errors ({}); no test ran",
            report::summary(&compilation)
        );
        return Ok(ExitCode::from(1));
    }
    if let Some(name) = &args.integration
        && !compilation.integrations.contains_key(name)
    {
        anyhow::bail!("no integration `{name}` in {}", args.path.display());
    }
    let selection = weft_testing::Selection {
        integration: args.integration.clone(),
        filter: args.filter.clone(),
    };
    let tokio = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let run = tokio.block_on(weft_testing::run(
        &args.path,
        &compilation.plans,
        &selection,
    ))?;
    let coverage = args.coverage.then(|| {
        weft_testing::coverage::coverage(
            &compilation.plans,
            &run.reached,
            args.integration.as_deref(),
        )
    });
    let text = match args.format {
        TestFormat::Human => {
            let mut text = weft_testing::report::human(&run, color.stdout());
            if let Some(coverage) = &coverage {
                text.push_str(&weft_testing::report::coverage_human(coverage));
            }
            text
        }
        TestFormat::Json => weft_testing::report::json(&run, coverage.as_deref()),
        TestFormat::Junit => weft_testing::report::junit(&run),
        TestFormat::Github => weft_testing::report::github(&run),
    };
    std::io::stdout().lock().write_all(text.as_bytes())?;
    if run.results.is_empty() {
        eprintln!(
            "test: no test file matched under {}/integrations/*/tests/",
            args.path.display()
        );
    }
    Ok(if run.failed() > 0 {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

//! `weft publish`: records each integration whose compiled plan changed since its latest
//! published version as a new annotated tag `<integration>/v<N>` (run by CI on main).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use weft_compiler::git::{self, GitVersions};

use crate::report::{self, ColorChoice, DiagnosticFormat};

const EXAMPLES: &str = "\
Examples:
  weft publish --dry-run     # what would be published
  weft publish && git push --tags

A change that leaves an integration's compiled plan the same (comments, formatting, key order)
publishes nothing; running it twice publishes nothing new.";

/// Publish changed integrations as versions (annotated git tags).
#[derive(Debug, clap::Args)]
#[command(after_help = EXAMPLES)]
pub struct Args {
    /// The weft repository (inside a git checkout).
    #[arg(default_value = ".")]
    pub path: PathBuf,
    /// The revision to publish.
    #[arg(long, default_value = "HEAD")]
    pub rev: String,
    /// Say what would be published, and publish nothing.
    #[arg(long)]
    pub dry_run: bool,
}

pub fn run(args: Args, color: ColorChoice) -> anyhow::Result<ExitCode> {
    let commit =
        git::resolve(&args.path, &args.rev).with_context(|| format!("resolving {}", args.rev))?;
    let versions = GitVersions::load(&args.path).context("reading the version tags")?;
    let sources = git::read_at(&args.path, &commit)?;
    let compilation = weft_compiler::compile_with(&sources, &versions);
    if compilation.error_count() > 0 {
        report::print(&compilation, &sources, DiagnosticFormat::Human, color);
        eprintln!(
            "publish failed: {} at {}; nothing published",
            report::summary(&compilation),
            &commit[..10]
        );
        return Ok(ExitCode::from(1));
    }
    let prefix = git::prefix(&args.path)?;
    let mut published = 0;
    for (name, integration) in &compilation.integrations {
        let hash = integration.content_hash();
        let history = versions.of(name);
        let latest = history.last();
        if latest.is_some_and(|l| l.hash.as_deref() == Some(hash.as_str())) {
            println!(
                "{name}: unchanged since v{}",
                latest.map_or(0, |l| l.version)
            );
            continue;
        }
        let version = latest.map_or(1, |l| l.version + 1);
        let range = match latest {
            Some(l) => format!("{}..{commit}", l.commit),
            None => commit.clone(),
        };
        let log = git::run(
            &args.path,
            &[
                "log",
                "--no-merges",
                "--format=- %s (%h)",
                &range,
                "--",
                &format!(":/{prefix}integrations/{name}"),
                &format!(":/{prefix}components"),
            ],
        )
        .unwrap_or_default();
        let notes = if log.trim().is_empty() {
            "- (no commit message touches this integration)".to_string()
        } else {
            log.trim_end().to_string()
        };
        let tag = format!("{name}/v{version}");
        if args.dry_run {
            println!("{name}: would publish {tag} ({hash})\n{notes}");
        } else {
            git::run(
                &args.path,
                &[
                    "tag",
                    "-a",
                    &tag,
                    "-m",
                    &git::tag_message(name, version, &hash, &notes),
                    &commit,
                ],
            )
            .with_context(|| format!("creating tag {tag}"))?;
            println!("{name}: published {tag}");
        }
        published += 1;
    }
    eprintln!(
        "{} {published} version{} at {}",
        if args.dry_run {
            "would publish"
        } else {
            "published"
        },
        if published == 1 { "" } else { "s" },
        &commit[..10]
    );
    Ok(ExitCode::SUCCESS)
}

//! `weft publish`: records each integration whose compiled plan changed since its latest
//! published version as a new annotated tag `<integration>/v<N>` (run by CI on main).

use std::path::PathBuf;
use std::process::ExitCode;

use weft_compiler::ops::publish::{self, Decision, Prepared, Rejected};

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
    let publication = match publish::prepare(&args.path, &args.rev)? {
        Prepared::Errors(rejected) => {
            let Rejected {
                sources,
                compilation,
                commit,
            } = *rejected;
            report::print(&compilation, &sources, DiagnosticFormat::Human, color);
            eprintln!(
                "publish failed: {} at {}; nothing published",
                report::summary(&compilation),
                &commit[..10]
            );
            return Ok(ExitCode::from(1));
        }
        Prepared::Ready(publication) => publication,
    };
    let commit = &publication.commit;
    let mut published = 0;
    for decision in &publication.decisions {
        let new = match decision {
            Decision::Unchanged { name, version } => {
                println!("{name}: unchanged since v{version}");
                continue;
            }
            Decision::Changed(new) => new,
        };
        let (name, tag) = (&new.integration, &new.tag);
        if args.dry_run {
            println!("{name}: would publish {tag} ({})\n{}", new.hash, new.notes);
        } else {
            publish::tag(&args.path, commit, new)?;
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

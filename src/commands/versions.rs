//! `weft versions`: an integration's published versions, which instances run each, and
//! whether the working tree has unpublished changes (`draft`).

use std::path::PathBuf;
use std::process::ExitCode;

use weft_compiler::ops::versions::{self, IntegrationVersions};

const EXAMPLES: &str = "\
Examples:
  weft versions shop-orders-to-crm
  weft versions shop-orders-to-crm --json";

/// List the published versions of an integration.
#[derive(Debug, clap::Args)]
#[command(after_help = EXAMPLES)]
pub struct Args {
    pub integration: String,
    /// The weft repository (inside a git checkout).
    #[arg(long, default_value = ".")]
    pub path: PathBuf,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let report = versions::versions(&args.path, &args.integration)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&to_json(&report))?);
    } else {
        print_human(&report);
    }
    Ok(ExitCode::SUCCESS)
}

fn to_json(report: &IntegrationVersions) -> serde_json::Value {
    let list: Vec<_> = report
        .versions
        .iter()
        .map(|v| {
            let p = &v.published;
            serde_json::json!({
                "version": p.version, "tag": p.tag, "commit": p.commit, "date": p.date, "hash": p.hash, "notes": p.notes,
                "available": v.available,
                "instances": v.instances,
            })
        })
        .collect();
    serde_json::json!({ "integration": report.integration, "versions": list, "draft": report.draft, "draft_instances": report.draft_instances })
}

fn print_human(report: &IntegrationVersions) {
    if report.versions.is_empty() {
        println!(
            "{}: no published version (run `weft publish`)",
            report.integration
        );
    }
    for v in &report.versions {
        let p = &v.published;
        println!(
            "v{:<4} {}  {}  {}{}{}",
            p.version,
            &p.commit[..p.commit.len().min(10)],
            p.date.get(..10).unwrap_or(&p.date),
            p.hash.as_deref().map_or("", |h| h.get(..19).unwrap_or(h)),
            if v.available { "" } else { "  (unavailable)" },
            running(&v.instances)
        );
        for note in p.notes.lines() {
            println!("        {note}");
        }
    }
    if report.draft {
        println!(
            "draft  (working tree differs from the latest version){}",
            running(&report.draft_instances)
        );
    }
}

/// `  ← customer, customer`, or nothing.
fn running(customers: &[String]) -> String {
    if customers.is_empty() {
        String::new()
    } else {
        format!("  ← {}", customers.join(", "))
    }
}

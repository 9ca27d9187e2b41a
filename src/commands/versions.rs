//! `weft versions`: an integration's published versions, which instances run each, and
//! whether the working tree has unpublished changes (`draft`).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context as _, bail};
use weft_compiler::git::GitVersions;
use weft_compiler::model::{NamedVersion, VersionPin};

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
    let versions = GitVersions::load(&args.path).context("reading the version tags")?;
    let sources = super::read(&args.path)?;
    let compilation = weft_compiler::check_with(&sources, &versions);
    let (repo, _) = weft_compiler::load::load(&sources);
    let history = versions.of(&args.integration);
    let known = compilation.integrations.contains_key(&args.integration) || !history.is_empty();
    if !known {
        bail!("no integration `{}`", args.integration);
    }
    let latest = history.last().map(|p| p.version);
    let draft_hash = compilation
        .integrations
        .get(&args.integration)
        .map(|i| i.content_hash());
    let is_draft =
        draft_hash.is_some() && history.last().and_then(|p| p.hash.clone()) != draft_hash;
    // Which instances run which version.
    let mut runs: std::collections::BTreeMap<String, Vec<String>> = Default::default();
    for i in repo
        .instances
        .iter()
        .filter(|i| i.model.integration.0 == args.integration)
    {
        let customer = i
            .model
            .customer
            .as_ref()
            .map_or(i.folder.clone(), |c| c.0.clone());
        let v = match i.model.version {
            VersionPin::Number(n) => format!("v{n}"),
            VersionPin::Named(NamedVersion::Latest) => {
                latest.map_or("latest (none)".into(), |n| format!("v{n}"))
            }
            VersionPin::Named(NamedVersion::Draft) => "draft".into(),
        };
        runs.entry(v).or_default().push(customer);
    }
    let unavailable: Vec<u32> = repo
        .versions
        .iter()
        .filter(|v| v.folder == args.integration)
        .flat_map(|v| v.model.unavailable.clone())
        .collect();
    if args.json {
        let list: Vec<_> = history
            .iter()
            .map(|p| serde_json::json!({
                "version": p.version, "tag": p.tag, "commit": p.commit, "date": p.date, "hash": p.hash, "notes": p.notes,
                "available": !unavailable.contains(&p.version),
                "instances": runs.get(&format!("v{}", p.version)).cloned().unwrap_or_default(),
            }))
            .collect();
        let doc = serde_json::json!({ "integration": args.integration, "versions": list, "draft": is_draft, "draft_instances": runs.get("draft").cloned().unwrap_or_default() });
        println!("{}", serde_json::to_string_pretty(&doc)?);
        return Ok(ExitCode::SUCCESS);
    }
    if history.is_empty() {
        println!(
            "{}: no published version (run `weft publish`)",
            args.integration
        );
    }
    for p in &history {
        let instances = runs
            .get(&format!("v{}", p.version))
            .map(|c| c.join(", "))
            .unwrap_or_default();
        println!(
            "v{:<4} {}  {}  {}{}{}",
            p.version,
            &p.commit[..p.commit.len().min(10)],
            p.date.get(..10).unwrap_or(&p.date),
            p.hash.as_deref().map_or("", |h| h.get(..19).unwrap_or(h)),
            if unavailable.contains(&p.version) {
                "  (unavailable)"
            } else {
                ""
            },
            if instances.is_empty() {
                String::new()
            } else {
                format!("  ← {instances}")
            }
        );
        for note in p.notes.lines() {
            println!("        {note}");
        }
    }
    if is_draft {
        let instances = runs.get("draft").map(|c| c.join(", ")).unwrap_or_default();
        println!(
            "draft  (working tree differs from the latest version){}",
            if instances.is_empty() {
                String::new()
            } else {
                format!("  ← {instances}")
            }
        );
    }
    Ok(ExitCode::SUCCESS)
}

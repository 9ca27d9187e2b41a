//! `weft list`, `weft catalog` and `weft new integration`: the integrations of a repository as
//! a listing, as the marketplace catalog, and new ones from templates.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use serde_json::{Value, json};
use weft_compiler::ops;
use weft_compiler::ops::catalog::CatalogEntry;
use weft_compiler::ops::list::Filter;

/// List the integrations of a repository.
#[derive(Debug, clap::Args)]
#[command(after_help = "Examples:\n  weft list\n  weft list --label erp --format json")]
pub struct ListArgs {
    #[arg(default_value = ".")]
    pub path: PathBuf,
    /// Only integrations with this label.
    #[arg(long)]
    pub label: Option<String>,
    /// Only integrations of this category.
    #[arg(long)]
    pub category: Option<String>,
    #[arg(long, value_enum, default_value_t = super::executions::Format::Human)]
    pub format: super::executions::Format,
}

pub fn list(args: ListArgs) -> anyhow::Result<ExitCode> {
    let filter = Filter {
        label: args.label,
        category: args.category,
    };
    let entries = ops::list::list(&args.path, &filter)?;
    if args.format == super::executions::Format::Json {
        let list: Vec<Value> = entries.iter().map(entry_json).collect();
        println!("{}", serde_json::to_string_pretty(&list)?);
        return Ok(ExitCode::SUCCESS);
    }
    for e in &entries {
        let latest = e
            .versions
            .last()
            .map_or("draft".to_string(), |v| format!("v{v}"));
        println!(
            "{:<28} {:<8} {:<12} {:<24} {}",
            e.name,
            latest,
            e.category.as_deref().unwrap_or("-"),
            e.labels.join(","),
            e.description.as_deref().unwrap_or_default()
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// A catalog entry as `weft list --format json` and `weft catalog` print it.
fn entry_json(e: &CatalogEntry) -> Value {
    json!({
        "name": e.name,
        "description": e.description,
        "category": e.category,
        "labels": e.labels,
        "template": e.template,
        "versions": e.versions,
        "icon": e.icon,
    })
}

/// Write the marketplace catalog: name, description, category, labels, versions, icon.
#[derive(Debug, clap::Args)]
#[command(after_help = "Examples:\n  weft catalog -o catalog.json")]
pub struct CatalogArgs {
    #[arg(default_value = ".")]
    pub path: PathBuf,
    /// Output file (default: stdout).
    #[arg(short, long)]
    pub out: Option<PathBuf>,
}

pub fn catalog(args: CatalogArgs) -> anyhow::Result<ExitCode> {
    let entries = ops::catalog::catalog(&args.path)?;
    let doc = json!({ "integrations": entries.iter().map(entry_json).collect::<Vec<_>>() });
    let text = serde_json::to_string_pretty(&doc)? + "\n";
    match &args.out {
        Some(out) => {
            std::fs::write(out, text).with_context(|| format!("writing {}", out.display()))?
        }
        None => print!("{text}"),
    }
    Ok(ExitCode::SUCCESS)
}

/// Scaffold something new.
#[derive(Debug, clap::Args)]
pub struct NewArgs {
    #[command(subcommand)]
    pub what: New,
}

#[derive(Debug, clap::Subcommand)]
pub enum New {
    /// A new integration, from a template integration (`template: true`) or a built-in starter.
    #[command(
        after_help = "Examples:\n  weft new integration acme-orders\n  weft new integration acme-orders --from schedule\n  weft new integration globex-sync --from shop-orders-to-crm\n\nBuilt-in starters: webhook (default), schedule, poll."
    )]
    Integration {
        name: String,
        #[arg(long, default_value = "webhook")]
        from: String,
        #[arg(long, default_value = ".")]
        path: PathBuf,
    },
}

pub fn new(args: NewArgs) -> anyhow::Result<ExitCode> {
    let New::Integration { name, from, path } = args.what;
    let dir = ops::new::new_integration(&path, &name, &from)?;
    eprintln!(
        "created {}/integration.yaml (from {from}); check it with `weft check`",
        dir.display()
    );
    Ok(ExitCode::SUCCESS)
}

//! `weft list`, `weft catalog` and `weft new integration`: the integrations of a repository as
//! a listing, as the marketplace catalog, and new ones from templates.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context as _, bail};
use serde_json::{Value, json};
use weft_compiler::git::GitVersions;

/// One integration's catalog entry, from its integration.yaml and its version tags.
fn entries(path: &std::path::Path) -> anyhow::Result<Vec<Value>> {
    let sources = super::read(path)?;
    let (repo, _) = weft_compiler::load::load(&sources);
    let versions = GitVersions::load(path).ok();
    let mut out: Vec<Value> = repo
        .integrations
        .iter()
        .map(|i| {
            let m = &i.model;
            let published: Vec<u32> = versions.as_ref().map(|v| v.of(&m.name.0).iter().map(|p| p.version).collect()).unwrap_or_default();
            let unavailable: Vec<u32> = repo.versions.iter().filter(|v| v.folder == i.folder).flat_map(|v| v.model.unavailable.clone()).collect();
            json!({
                "name": m.name.0,
                "description": m.description,
                "category": m.category,
                "labels": m.labels.iter().map(|l| l.0.clone()).collect::<Vec<_>>(),
                "template": m.template,
                "versions": published.iter().filter(|v| !unavailable.contains(v)).collect::<Vec<_>>(),
                "icon": m.icon.as_ref().map(|icon| format!("integrations/{}/{icon}", i.folder)),
            })
        })
        .collect();
    out.sort_by(|a, b| a["name"].as_str().cmp(&b["name"].as_str()));
    Ok(out)
}

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
    let list: Vec<Value> = entries(&args.path)?
        .into_iter()
        .filter(|e| {
            args.label.as_ref().is_none_or(|l| {
                e["labels"]
                    .as_array()
                    .is_some_and(|ls| ls.iter().any(|x| x == l.as_str()))
            })
        })
        .filter(|e| {
            args.category.as_ref().is_none_or(|c| {
                e["category"]
                    .as_str()
                    .is_some_and(|x| x.eq_ignore_ascii_case(c))
            })
        })
        .collect();
    if args.format == super::executions::Format::Json {
        println!("{}", serde_json::to_string_pretty(&list)?);
        return Ok(ExitCode::SUCCESS);
    }
    for e in &list {
        let labels: Vec<&str> = e["labels"]
            .as_array()
            .map(|l| l.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        let latest = e["versions"]
            .as_array()
            .and_then(|v| v.last())
            .map_or("draft".to_string(), |v| format!("v{v}"));
        println!(
            "{:<28} {:<8} {:<12} {:<24} {}",
            e["name"].as_str().unwrap_or_default(),
            latest,
            e["category"].as_str().unwrap_or("-"),
            labels.join(","),
            e["description"].as_str().unwrap_or_default()
        );
    }
    Ok(ExitCode::SUCCESS)
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
    let doc = json!({ "integrations": entries(&args.path)? });
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

fn starter(kind: &str, name: &str) -> Option<String> {
    let head = format!(
        "# yaml-language-server: $schema=../../schemas/integration.schema.json\nweft: 1\nname: {name}\ndescription: \"TODO: what {name} does\"\nlabels: []\nconfig:\n  api_url: {{ type: url, default: \"http://127.0.0.1:9100\", description: The API the flow calls }}\n"
    );
    let body = match kind {
        "webhook" => {
            "  webhook_secret: { type: secret, description: Shared secret of the webhook signature }\nflows:\n  event:\n    trigger:\n      webhook:\n        path: /event\n        auth: { hmac_sha256: { secret: \"{{ config.webhook_secret }}\", header: X-Signature } }\n    steps:\n      - id: shape\n        uses: transform\n        with: { value: { id: \"{{ trigger.body.id }}\" } }\n      - id: send\n        uses: http.post\n        with: { url: \"{{ config.api_url }}/events\", body: \"{{ steps.shape }}\" }\n        retry: { attempts: 5, initial: 1s, max: 1m }\n"
        }
        "schedule" => {
            "flows:\n  nightly:\n    trigger: { schedule: { cron: \"0 2 * * *\", timezone: UTC } }\n    steps:\n      - id: fetch\n        uses: http.get\n        with: { url: \"{{ config.api_url }}/report\" }\n      - id: note\n        uses: log\n        with: { message: \"report has {{ steps.fetch.body | length }} rows\" }\n"
        }
        "poll" => {
            "flows:\n  new-items:\n    trigger:\n      poll:\n        every: 5m\n        uses: http.get\n        with: { url: \"{{ config.api_url }}/items\", query: { since: \"{{ cursor | default('1970-01-01T00:00:00Z') }}\" } }\n        items: \"{{ output.items }}\"\n        cursor: \"{{ items | map(attribute='updated_at') | max }}\"\n    steps:\n      - id: note\n        uses: log\n        with: { message: \"new item {{ trigger.item.id }}\" }\n"
        }
        _ => return None,
    };
    Some(head + body)
}

pub fn new(args: NewArgs) -> anyhow::Result<ExitCode> {
    let New::Integration { name, from, path } = args.what;
    let valid = name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if !valid {
        bail!(
            "`{name}` is not a valid name: use lower-case letters, digits and `-`, starting with a letter"
        );
    }
    let dir = path.join("integrations").join(&name);
    if dir.exists() {
        bail!("{} exists already", dir.display());
    }
    let text = match starter(&from, &name) {
        Some(t) => t,
        None => {
            let sources = super::read(&path)?;
            let (repo, _) = weft_compiler::load::load(&sources);
            let Some(template) = repo.integrations.iter().find(|i| i.model.name.0 == from) else {
                bail!(
                    "no template `{from}`: use webhook, schedule, poll, or an integration of this repository"
                );
            };
            if !template.model.template {
                bail!("`{from}` is not marked `template: true`");
            }
            let source = &sources.files[template.file].text;
            source
                .replacen(&format!("name: {from}"), &format!("name: {name}"), 1)
                .replacen("template: true\n", "", 1)
        }
    };
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    std::fs::write(dir.join("integration.yaml"), text)?;
    std::fs::write(
        dir.join("README.md"),
        format!(
            "# {name}\n\nTODO: what this integration does, its config variables, and who owns it.\n"
        ),
    )?;
    eprintln!(
        "created {}/integration.yaml (from {from}); check it with `weft check`",
        dir.display()
    );
    Ok(ExitCode::SUCCESS)
}

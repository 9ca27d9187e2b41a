//! `weft diff`: what a change does to every integration and every customer — a semantic diff of
//! the compiled plans of two revisions, ready to post as a pull request comment.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use serde_json::Value;
use weft_compiler::diff::{self, FieldChange, RepoDiff, Status};
use weft_compiler::git;

use crate::report::{self, ColorChoice, DiagnosticFormat};

const EXAMPLES: &str = "\
Examples:
  weft diff                          # merge-base with main … working tree
  weft diff main HEAD --format markdown > comment.md
  weft diff v1.2.0 --format json | jq '.integrations[].breaking'";

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Human,
    /// A pull request comment: a summary table, details folded.
    Markdown,
    Json,
}

/// Semantic diff of two revisions: flows, steps, triggers, config and connections, per customer.
#[derive(Debug, clap::Args)]
#[command(after_help = EXAMPLES)]
pub struct Args {
    /// The base revision (default: the merge-base of HEAD with main, or master).
    pub base: Option<String>,
    /// The head revision (default: the working tree).
    pub head: Option<String>,
    /// The weft repository (a folder inside a git checkout).
    #[arg(long, default_value = ".")]
    pub path: PathBuf,
    #[arg(long, value_enum, default_value_t = Format::Human)]
    pub format: Format,
}

fn default_base(path: &std::path::Path) -> anyhow::Result<String> {
    for main in ["main", "origin/main", "master", "origin/master"] {
        if let Ok(base) = git::run(path, &["merge-base", "HEAD", main]) {
            return Ok(base.trim().to_string());
        }
    }
    Ok("HEAD".into())
}

pub fn run(args: Args, color: ColorChoice) -> anyhow::Result<ExitCode> {
    let base = match &args.base {
        Some(b) => b.clone(),
        None => default_base(&args.path)?,
    };
    let old_sources = git::read_at(&args.path, &base).with_context(|| format!("reading {base}"))?;
    let new_sources = match &args.head {
        Some(rev) => git::read_at(&args.path, rev).with_context(|| format!("reading {rev}"))?,
        None => super::read(&args.path)?,
    };
    // Both sides resolve pinned versions from the repository's version tags, as `build` does.
    let versions = super::versions(&args.path);
    let versions = versions.as_ref();
    let (old, new) = std::thread::scope(|s| {
        let old = s.spawn(|| weft_compiler::compile_with(&old_sources, versions));
        let new = weft_compiler::compile_with(&new_sources, versions);
        (old.join().expect("compiling the base"), new)
    });
    if new.error_count() > 0 {
        report::print(&new, &new_sources, DiagnosticFormat::Human, color);
        eprintln!(
            "diff: the head has errors ({}); fix them first",
            report::summary(&new)
        );
        return Ok(ExitCode::from(1));
    }
    let d = diff::diff(&old, &new);
    let head_name = args.head.clone().unwrap_or_else(|| "working tree".into());
    let short = |r: &str| {
        if r.len() == 40 && r.bytes().all(|b| b.is_ascii_hexdigit()) {
            r[..10].to_string()
        } else {
            r.to_string()
        }
    };
    let text = match args.format {
        Format::Json => serde_json::to_string_pretty(&d)? + "\n",
        Format::Markdown => markdown(&d, &short(&base), &head_name),
        Format::Human => human(&d, &short(&base), &head_name),
    };
    print!("{text}");
    Ok(ExitCode::SUCCESS)
}

fn value(v: &Option<Value>) -> String {
    match v {
        None => "—".into(),
        Some(Value::String(s)) => format!("\"{s}\""),
        Some(other) => other.to_string(),
    }
}

fn field_line(f: &FieldChange) -> String {
    format!("`{}`: {} → {}", f.path, value(&f.old), value(&f.new))
}

fn status_word(s: Status) -> &'static str {
    match s {
        Status::Added => "added",
        Status::Removed => "removed",
        Status::Changed => "changed",
    }
}

fn human(d: &RepoDiff, base: &str, head: &str) -> String {
    let mut out = format!("weft diff {base} … {head}\n");
    if d.is_empty() {
        out.push_str("no change to any compiled integration or instance\n");
        return out;
    }
    for i in &d.integrations {
        let _ = writeln!(
            out,
            "\nintegration {} ({}); customers: {}",
            i.name,
            status_word(i.status),
            if i.customers.is_empty() {
                "none".into()
            } else {
                i.customers.join(", ")
            }
        );
        for b in &i.breaking {
            let _ = writeln!(out, "  BREAKING: {b}");
        }
        for c in &i.changes {
            let _ = writeln!(out, "  {} {} {}", c.kind, c.name, status_word(c.status));
            for f in &c.fields {
                let _ = writeln!(out, "      {}", field_line(f).replace('`', ""));
            }
        }
    }
    for i in &d.instances {
        let _ = writeln!(
            out,
            "\ninstance {}/{} ({})",
            i.customer,
            i.integration,
            status_word(i.status)
        );
        for b in &i.breaking {
            let _ = writeln!(out, "  BREAKING: {b}");
        }
        for f in &i.fields {
            let _ = writeln!(out, "  {}", field_line(f).replace('`', ""));
        }
        for line in i.compose.lines() {
            let _ = writeln!(out, "  {line}");
        }
    }
    out
}

fn markdown(d: &RepoDiff, base: &str, head: &str) -> String {
    let mut out = format!("### weft diff `{base}` … `{head}`\n\n");
    if d.is_empty() {
        out.push_str("No change to any compiled integration or instance.\n");
        return out;
    }
    let breaking = d.breaking_count();
    if breaking > 0 {
        let _ = writeln!(
            out,
            "> [!WARNING]\n> {breaking} breaking change{}\n",
            if breaking == 1 { "" } else { "s" }
        );
    }
    out.push_str("| integration | change | customers | breaking |\n|---|---|---|---|\n");
    for i in &d.integrations {
        let mut counts = std::collections::BTreeMap::<String, usize>::new();
        for c in &i.changes {
            *counts
                .entry(format!("{} {}", c.kind, status_word(c.status)))
                .or_default() += 1;
        }
        let summary = if counts.is_empty() {
            status_word(i.status).to_string()
        } else {
            counts
                .iter()
                .map(|(k, n)| format!("{n} {k}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let _ = writeln!(
            out,
            "| `{}` | {summary} | {} | {} |",
            i.name,
            i.customers.join(", "),
            if i.breaking.is_empty() {
                "—".into()
            } else {
                format!("⚠️ {}", i.breaking.len())
            }
        );
    }
    for i in &d.integrations {
        let _ = writeln!(
            out,
            "\n<details><summary><code>{}</code> ({})</summary>\n",
            i.name,
            status_word(i.status)
        );
        for b in &i.breaking {
            let _ = writeln!(out, "- ⚠️ **breaking**: {b}");
        }
        for c in &i.changes {
            let _ = writeln!(out, "- {} `{}` {}", c.kind, c.name, status_word(c.status));
            for f in &c.fields {
                let _ = writeln!(out, "  - {}", field_line(f));
            }
        }
        out.push_str("\n</details>\n");
    }
    if !d.instances.is_empty() {
        out.push_str("\n| customer | integration | change |\n|---|---|---|\n");
        for i in &d.instances {
            let _ = writeln!(
                out,
                "| `{}` | `{}` | {} |",
                i.customer,
                i.integration,
                status_word(i.status)
            );
        }
        for i in &d.instances {
            let _ = writeln!(
                out,
                "\n<details><summary><code>{}/{}</code></summary>\n",
                i.customer, i.integration
            );
            for b in &i.breaking {
                let _ = writeln!(out, "- ⚠️ **breaking**: {b}");
            }
            for f in &i.fields {
                let _ = writeln!(out, "- {}", field_line(f));
            }
            if !i.compose.is_empty() {
                let _ = writeln!(out, "\n```diff\n{}```", i.compose);
            }
            out.push_str("\n</details>\n");
        }
    }
    out
}

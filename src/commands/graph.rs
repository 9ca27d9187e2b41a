//! `weft graph`: an integration's step graph as Mermaid (renders on code forges) or DOT.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::ValueEnum;
use weft_compiler::diagnostic::did_you_mean;
use weft_compiler::graph::{to_dot, to_mermaid};

use crate::report::{self, ColorChoice, DiagnosticFormat};

const EXAMPLES: &str = "\
Examples:
  weft graph --integration acme-orders > graph.mmd
  weft graph --integration acme-orders --flow order-created
  weft graph --integration acme-orders --format dot | dot -Tsvg > graph.svg";

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum GraphFormat {
    /// A Mermaid flowchart (paste into a ```mermaid block of a pull request).
    Mermaid,
    /// Graphviz DOT.
    Dot,
}

/// Print the step graph of an integration: triggers, steps, branches and loops.
#[derive(Debug, clap::Args)]
#[command(after_help = EXAMPLES)]
pub struct Args {
    /// The repository.
    #[arg(default_value = ".")]
    pub path: PathBuf,
    /// The integration to draw.
    #[arg(long, short)]
    pub integration: String,
    /// Only this flow (default: every flow).
    #[arg(long)]
    pub flow: Option<String>,
    #[arg(long, value_enum, default_value_t = GraphFormat::Mermaid)]
    pub format: GraphFormat,
}

pub fn run(args: Args, color: ColorChoice) -> anyhow::Result<ExitCode> {
    let sources = super::read(&args.path)?;
    let compilation = weft_compiler::compile_with(&sources, super::versions(&args.path).as_ref());
    let Some(integration) = compilation.integrations.get(&args.integration) else {
        report::print(&compilation, &sources, DiagnosticFormat::Human, color);
        if compilation.error_count() > 0 {
            eprintln!(
                "error: `{}` could not be compiled: {}",
                args.integration,
                report::summary(&compilation)
            );
            return Ok(ExitCode::from(1));
        }
        let help = did_you_mean(
            &args.integration,
            compilation.integrations.keys().map(String::as_str),
        )
        .map(|h| format!("; {h}"))
        .unwrap_or_default();
        eprintln!(
            "error: no integration `{}` in {}{help}",
            args.integration,
            args.path.display()
        );
        return Ok(ExitCode::from(2));
    };
    let flows: Vec<(String, &_)> = integration
        .graphs
        .iter()
        .filter(|(name, _)| args.flow.as_ref().is_none_or(|f| f == name))
        .map(|(name, g)| (name.clone(), g))
        .collect();
    if flows.is_empty() {
        eprintln!(
            "error: `{}` has no flow `{}`",
            args.integration,
            args.flow.unwrap_or_default()
        );
        return Ok(ExitCode::from(2));
    }
    let cases = |flow: &str, node: petgraph::graph::NodeIndex, i: usize| -> String {
        let graph = &integration
            .graphs
            .iter()
            .find(|(n, _)| n == flow)
            .expect("flow")
            .1;
        integration
            .cases
            .get(&(flow.to_string(), graph[node].id.clone()))
            .and_then(|c| c.get(i))
            .map(|w| {
                w.trim_start_matches("{{")
                    .trim_end_matches("}}")
                    .trim()
                    .to_string()
            })
            .unwrap_or_else(|| format!("case {i}"))
    };
    let text = match args.format {
        GraphFormat::Mermaid => to_mermaid(&flows, &cases),
        GraphFormat::Dot => to_dot(&args.integration, &flows, &cases),
    };
    print!("{text}");
    Ok(ExitCode::SUCCESS)
}

//! `weft build`: compiles every instance into `DIR/<customer>/<integration>/`.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use anyhow::Context as _;

use crate::report::{self, ColorChoice, DiagnosticFormat};

const EXAMPLES: &str = "\
Examples:
  weft build                       # writes dist/<customer>/<integration>/
  weft build path/to/repo -o out
  weft build --format json         # a JSON summary of the bundles on stdout
  weft build --rev main -o dist    # any commit, without checking it out
  weft build --target compose,k8s  # docker-compose.yaml and kubernetes.yaml per bundle
  weft build --target k8s --autoscale   # also keda.yaml: steps scaled on their queue's lag
  weft build --fleet && weft up dist/fleet   # one topology for every customer
  weft build --fleet --target k8s            # its manifests: dist/fleet/kubernetes.yaml";

/// Compile every instance into a bundle: bundle.json, plan.json, docker-compose.yaml, .env.example.
#[derive(Debug, clap::Args)]
#[command(after_help = EXAMPLES)]
pub struct Args {
    /// The repository.
    #[arg(default_value = ".")]
    pub path: PathBuf,
    /// Output folder (relative to the current folder).
    #[arg(short, long, default_value = "dist")]
    pub out: PathBuf,
    /// Build this git revision (a commit, branch or tag) instead of the working tree, without
    /// checking it out; bundle.json records the commit.
    #[arg(long)]
    pub rev: Option<String>,
    /// Output format: human (diagnostics on stderr) or json (one summary document on stdout).
    #[arg(long, value_enum, default_value_t = DiagnosticFormat::Human)]
    pub format: DiagnosticFormat,
    /// What to emit beside plan.json: compose (docker-compose.yaml), k8s (kubernetes.yaml), or
    /// both, comma-separated.
    #[arg(long, value_enum, value_delimiter = ',', default_value = "compose")]
    pub target: Vec<Target>,
    /// With --target k8s: also keda.yaml, a KEDA ScaledObject per step scaling it on its
    /// queue's lag.
    #[arg(long)]
    pub autoscale: bool,
    /// Also write the fleet topology into <out>/fleet (docker-compose.yaml, nats.conf,
    /// .env.example, plans/, secrets/; kubernetes.yaml with --target k8s): one gateway for
    /// every customer and one service per integration and step, shared by its instances; run
    /// it with `weft up <out>/fleet`. Built again, the running fleet reloads what changed.
    #[arg(long)]
    pub fleet: bool,
}

/// A deployment target of `weft build`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Target {
    /// docker-compose.yaml: the broker, the gateway and every step on one Docker host.
    Compose,
    /// kubernetes.yaml: Deployments, Services, a ConfigMap and a ServiceAccount.
    K8s,
}

pub fn run(args: Args, color: ColorChoice) -> anyhow::Result<ExitCode> {
    let started = Instant::now();
    let targets = weft_compiler::emit::Targets {
        compose: args.target.contains(&Target::Compose),
        kubernetes: args.target.contains(&Target::K8s),
        autoscale: args.autoscale,
    };
    if args.autoscale && !targets.kubernetes {
        anyhow::bail!("--autoscale emits KEDA objects for Kubernetes: add --target k8s");
    }
    let (sources, commit) = match &args.rev {
        Some(rev) => {
            let commit = weft_compiler::git::resolve(&args.path, rev)
                .with_context(|| format!("resolving {rev}"))?;
            (
                weft_compiler::git::read_at(&args.path, &commit)
                    .with_context(|| format!("reading {rev}"))?,
                Some(commit),
            )
        }
        None => (super::read(&args.path)?, None),
    };
    let mut compilation =
        weft_compiler::compile_with(&sources, super::versions(&args.path).as_ref());
    for plan in &mut compilation.plans {
        if plan.commit.is_none() {
            plan.commit = commit.clone();
        }
    }
    let json = args.format == DiagnosticFormat::Json;
    if !json {
        report::print(&compilation, &sources, args.format, color);
    }
    if compilation.error_count() > 0 {
        if json {
            print_json(&compilation, &sources, &[])?;
        } else {
            eprintln!(
                "build failed: {}; nothing written",
                report::summary(&compilation)
            );
        }
        return Ok(ExitCode::from(1));
    }
    // A progress bar on a terminal only (indicatif hides itself otherwise).
    let progress = if !json && std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        indicatif::ProgressBar::new(compilation.plans.len() as u64).with_style(
            indicatif::ProgressStyle::with_template("  writing bundles {bar:30} {pos}/{len}")
                .expect("template"),
        )
    } else {
        indicatif::ProgressBar::hidden()
    };
    let written = weft_compiler::build::write_bundles_for(
        &args.out,
        &compilation.plans,
        &compilation.project,
        targets,
        &|| progress.inc(1),
    )
    .with_context(|| format!("writing bundles into {}", args.out.display()))?;
    progress.finish_and_clear();
    if args.fleet {
        let mut files = weft_compiler::fleet::fleet(&compilation.plans, &compilation.project)
            .map_err(|why| anyhow::anyhow!("--fleet: {why}"))?;
        if !targets.compose {
            files.retain(|(name, _)| name != "docker-compose.yaml" && name != "nats.conf");
        }
        if targets.kubernetes {
            let manifests = weft_compiler::kubernetes_fleet::manifests(
                &compilation.plans,
                &compilation.project,
            )
            .map_err(|why| anyhow::anyhow!("--fleet: {why}"))?;
            files.push(("kubernetes.yaml".into(), manifests));
        }
        write_fleet(&args.out.join(weft_compiler::fleet::FLEET_DIR), files)?;
    }
    if json {
        print_json(&compilation, &sources, &written)?;
    } else {
        eprintln!(
            "built {} bundle{} into {} in {:.2}s ({})",
            written.len(),
            if written.len() == 1 { "" } else { "s" },
            args.out.display(),
            started.elapsed().as_secs_f64(),
            report::summary(&compilation)
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// Writes the fleet's files, each by a rename (a running fleet that reloads its plans never
/// reads half a file), then removes the plans of instances no longer in the repository.
fn write_fleet(dir: &Path, files: Vec<(String, String)>) -> anyhow::Result<()> {
    let mut written = std::collections::BTreeSet::new();
    for (name, contents) in files {
        let path = dir.join(&name);
        written.insert(path.clone());
        if std::fs::read(&path).is_ok_and(|old| old == contents.as_bytes()) {
            continue;
        }
        let parent = path.parent().expect("a file in the fleet's folder");
        std::fs::create_dir_all(parent)
            .with_context(|| format!("creating {}", parent.display()))?;
        let file_name = path.file_name().expect("a file name").to_string_lossy();
        let temporary = parent.join(format!(".{file_name}.tmp"));
        std::fs::write(&temporary, contents)
            .and_then(|()| std::fs::rename(&temporary, &path))
            .with_context(|| format!("writing {}", path.display()))?;
    }
    // plans/<customer>/<integration>/plan.json of an instance that is gone.
    let plans = dir.join("plans");
    for customer in std::fs::read_dir(&plans).into_iter().flatten().flatten() {
        for integration in std::fs::read_dir(customer.path())
            .into_iter()
            .flatten()
            .flatten()
        {
            if !written.contains(&integration.path().join("plan.json")) {
                std::fs::remove_dir_all(integration.path())
                    .with_context(|| format!("removing {}", integration.path().display()))?;
            }
        }
        // Gone when it holds no instance any more.
        let _ = std::fs::remove_dir(customer.path());
    }
    Ok(())
}

fn print_json(
    compilation: &weft_compiler::Compilation,
    sources: &weft_compiler::repo::Sources,
    written: &[(String, String)],
) -> anyhow::Result<()> {
    let diagnostics: Vec<_> = compilation
        .diagnostics
        .iter()
        .map(|d| weft_compiler::diagnostic::to_json(d, &sources.files))
        .collect();
    let bundles: Vec<_> = written
        .iter()
        .map(|(dir, hash)| serde_json::json!({ "path": dir, "content_hash": hash }))
        .collect();
    let doc = serde_json::json!({
        "ok": compilation.error_count() == 0,
        "diagnostics": diagnostics,
        "bundles": bundles,
    });
    writeln!(std::io::stdout(), "{}", serde_json::to_string_pretty(&doc)?)?;
    Ok(())
}

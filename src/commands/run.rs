//! `weft run`: compiles a repository (or loads built bundles) and runs every enabled flow of
//! every instance in this process, on the embedded durable queue (or, with `--broker`, on a
//! NATS JetStream server).

use std::net::{IpAddr, SocketAddr};
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context as _, bail};
use rayon::prelude::*;
use weft_compiler::plan::Plan;

use crate::report::{self, ColorChoice, DiagnosticFormat};

const EXAMPLES: &str = "\
Examples:
  CRM_TOKEN_GLOBEX=... SHOP_WEBHOOK_SECRET_GLOBEX=... weft run examples/event-import
  weft run dist/ --port 9000 --data-dir /var/lib/weft
  weft run . --log-format json --deny-private-addresses

Webhooks are served at POST http://<listen>/hooks/<customer>/<integration><path>;
/healthz and /metrics (Prometheus) on the same port. Ctrl-C or SIGTERM drains in-flight work.";

/// Run every enabled flow of every instance on the embedded durable queue.
#[derive(Debug, clap::Args)]
#[command(after_help = EXAMPLES)]
pub struct Args {
    /// A repository (compiled first), a bundle folder (with plan.json) or a `weft build` output folder.
    #[arg(default_value = ".")]
    pub path: PathBuf,
    /// Gateway port.
    #[arg(long, default_value_t = 8080)]
    pub port: u16,
    /// Gateway address.
    #[arg(long, default_value = "127.0.0.1")]
    pub listen: IpAddr,
    /// Where the queue, execution history and dead letters are kept.
    #[arg(long, default_value = ".weft", env = "WEFT_DATA_DIR")]
    pub data_dir: PathBuf,
    /// Base URL callers reach the gateway at (default: http://<listen>:<port>).
    #[arg(long)]
    pub public_url: Option<String>,
    /// Refuse HTTP calls to private, loopback and link-local addresses (multi-tenant hosts);
    /// proxies from the environment are then not used.
    #[arg(long, env = "WEFT_DENY_PRIVATE_ADDRESSES", value_parser = clap::builder::FalseyValueParser::new())]
    pub deny_private_addresses: bool,
    /// Largest accepted webhook body in bytes (default: weft.yaml's gateway.max_body, else 10 MB).
    #[arg(long)]
    pub max_body: Option<usize>,
    /// Messages each step works on at once, shared by every instance of its integration
    /// version.
    #[arg(long, default_value_t = 64)]
    pub step_concurrency: usize,
    /// Messages one instance may have running at once at a step it shares with other
    /// instances (default: three quarters of --step-concurrency): a customer whose upstream
    /// hangs holds at most this many of the step's slots.
    #[arg(long, value_name = "N")]
    pub instance_concurrency: Option<usize>,
    /// Messages waiting or in flight, in all; past it, webhooks get 503 with Retry-After.
    #[arg(long, value_name = "N", default_value_t = 200_000)]
    pub max_pending: usize,
    /// Messages one instance may have waiting or in flight when several run here (default: a
    /// quarter of --max-pending); past it, that instance's webhooks get 503, others' do not.
    #[arg(long, value_name = "N")]
    pub max_pending_per_instance: Option<usize>,
    /// Seconds to let in-flight steps finish after Ctrl-C/SIGTERM.
    #[arg(long, default_value_t = 10)]
    pub drain_timeout: u64,
    /// Executions kept in the history.
    #[arg(long, default_value_t = 10_000)]
    pub keep_executions: i64,
    /// Days executions are kept in the history.
    #[arg(long, default_value_t = 7)]
    pub keep_days: i64,
    /// Where a custom component's container listens: NAME=URL (repeatable). Also read from
    /// WEFT_COMPONENT_URL_<NAME> variables; the default is http://<name>:8080.
    #[arg(long = "component-url", value_name = "NAME=URL")]
    pub component_urls: Vec<String>,
    /// Largest value a template may render, and largest step output or upstream answer
    /// (e.g. 4MB, 512KiB).
    #[arg(long, value_name = "SIZE", default_value = "4MB", value_parser = parse_size, env = "WEFT_MAX_OUTPUT")]
    pub max_output: u64,
    /// Bytes of webhook bodies received at once across all callers; beyond it, 503.
    #[arg(long, value_name = "SIZE", default_value = "64MiB", value_parser = parse_size, env = "WEFT_BODY_BUDGET")]
    pub body_budget: u64,
    /// Seconds a caller may take to send a request's headers, then its body; idle connections
    /// are closed after it too.
    #[arg(
        long,
        value_name = "SECONDS",
        default_value_t = 30,
        env = "WEFT_READ_TIMEOUT"
    )]
    pub read_timeout: u64,
    /// Connections open at once (default: 4096, or fewer if the file limit is lower).
    #[arg(long, env = "WEFT_MAX_CONNECTIONS")]
    pub max_connections: Option<usize>,
    /// Largest size of the store file (e.g. 10GB); when it is full, commits are retried
    /// and webhooks get 503 until space is freed. Default: the disk's size.
    #[arg(long, value_name = "SIZE", value_parser = parse_size, env = "WEFT_MAX_STORE_SIZE")]
    pub max_store_size: Option<u64>,
    /// Keep the queues on a NATS JetStream server (nats://HOST:PORT) instead of the embedded
    /// store: one work-queue stream per flow, one consumer per step. History, trigger state and
    /// dead letters stay in the data folder.
    #[arg(long, value_name = "URL", env = "WEFT_BROKER_URL")]
    pub broker: Option<String>,
    /// Replicas of each stream on the broker (with --broker).
    #[arg(long, default_value_t = 1, env = "WEFT_BROKER_REPLICAS")]
    pub broker_replicas: usize,
    /// A folder of secret files, one per secret named like its variable (a mounted Docker or
    /// Kubernetes secret): read where the environment lacks a secret, at start and at each
    /// reload, so instances added later bring their secrets without a restart.
    #[arg(long, value_name = "DIR", env = "WEFT_SECRETS_DIR")]
    pub secrets_dir: Option<PathBuf>,
    /// Reload the plans when the files under PATH change, looking every SECONDS: instances are
    /// added, replaced and removed without a restart (SIGHUP reloads at once, always).
    #[arg(long, value_name = "SECONDS", env = "WEFT_RELOAD_EVERY")]
    pub reload_every: Option<u64>,
}

/// `10MB`, `512KiB`, `100B`.
fn parse_size(text: &str) -> Result<u64, String> {
    weft_compiler::size::parse_size(text)
        .ok_or_else(|| format!("`{text}` is not a size such as 10MB, 512KiB or 100B"))
}

/// Raises the open-file limit to its maximum and returns how many connections fit under it.
fn connection_capacity() -> usize {
    let files = rlimit::increase_nofile_limit(u64::MAX).unwrap_or(1024);
    // Keep room for the store, the HTTP client's connections and the process itself.
    usize::try_from(files.saturating_sub(256).max(64))
        .unwrap_or(4096)
        .min(4096)
}

/// The plans to run; `Err(code)` when the sources have errors.
type Loaded = Result<Vec<Plan>, ExitCode>;

fn load_plans(path: &Path, color: ColorChoice) -> anyhow::Result<Loaded> {
    let read_plan = |p: &Path| -> anyhow::Result<Plan> {
        let text =
            std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?;
        Plan::from_json(&text).with_context(|| format!("{} cannot be run", p.display()))
    };
    if path.join("plan.json").is_file() {
        return Ok(Ok(vec![read_plan(&path.join("plan.json"))?]));
    }
    if !path.join("weft.yaml").is_file() && !path.join("integrations").is_dir() {
        // A `weft build` output folder (<customer>/<integration>/plan.json), or a folder of
        // <customer>.<integration>.plan.json files (a fleet's ConfigMaps on Kubernetes).
        let mut files = Vec::new();
        for customer in
            std::fs::read_dir(path).with_context(|| format!("reading {}", path.display()))?
        {
            let customer = customer?;
            // Hidden: Kubernetes keeps a mounted volume's versions in `..data` folders.
            if customer.file_name().to_string_lossy().starts_with('.') {
                continue;
            }
            let customer = customer.path();
            if customer.is_file()
                && customer
                    .file_name()
                    .is_some_and(|n| n.to_string_lossy().ends_with(".plan.json"))
            {
                files.push(customer);
                continue;
            }
            if !customer.is_dir() {
                continue;
            }
            for integration in std::fs::read_dir(&customer)? {
                let plan = integration?.path().join("plan.json");
                if plan.is_file() {
                    files.push(plan);
                }
            }
        }
        // Read and parsed on every core: a fleet has thousands.
        let mut plans = files
            .par_iter()
            .map(|f| read_plan(f))
            .collect::<anyhow::Result<Vec<Plan>>>()?;
        if plans.is_empty() {
            bail!("{} holds no weft repository and no bundles", path.display());
        }
        plans.sort_by(|a, b| (&a.customer, &a.integration).cmp(&(&b.customer, &b.integration)));
        return Ok(Ok(plans));
    }
    let sources = super::read(path)?;
    let compilation = weft_compiler::compile_with(&sources, super::versions(path).as_ref());
    if compilation.error_count() > 0 {
        report::print(&compilation, &sources, DiagnosticFormat::Human, color);
        eprintln!(
            "run failed: {}; nothing started",
            report::summary(&compilation)
        );
        return Ok(Err(ExitCode::from(1)));
    }
    Ok(Ok(compilation.plans))
}

pub fn run(args: Args, color: ColorChoice) -> anyhow::Result<ExitCode> {
    run_as(args, color, weft_runtime::Role::All, None)
}

/// Runs `role`'s part of the plans at `args.path` (`weft run`, `weft gateway`, `weft step`),
/// only those of `integration` when it is given.
pub fn run_as(
    args: Args,
    color: ColorChoice,
    role: weft_runtime::Role,
    integration: Option<&str>,
) -> anyhow::Result<ExitCode> {
    let mut plans = match load_plans(&args.path, color)? {
        Ok(loaded) => loaded,
        Err(code) => return Ok(code),
    };
    if let Some(name) = integration {
        let mut known: Vec<String> = plans.iter().map(|p| p.integration.clone()).collect();
        plans.retain(|p| p.integration == name);
        if plans.is_empty() {
            known.sort();
            known.dedup();
            bail!(
                "{} has no instance of integration `{name}` (its integrations: {})",
                args.path.display(),
                known.join(", ")
            );
        }
    }
    if plans.is_empty() {
        bail!(
            "{} has no instances to run (add instances/<customer>/<integration>.yaml)",
            args.path.display()
        );
    }
    let lookup = secret_lookup(args.secrets_dir.clone());
    let secrets =
        weft_runtime::resolve_role_secrets(&plans, &role, &lookup).map_err(anyhow::Error::msg)?;
    let role_for_reload = role.clone();
    let listen = SocketAddr::new(args.listen, args.port);
    let options = weft_runtime::Options {
        data_dir: args.data_dir.clone(),
        listen,
        public_url: args
            .public_url
            .clone()
            .unwrap_or_else(|| format!("http://{listen}")),
        // The flag, else the largest limit the plans set (weft.yaml's `gateway.max_body`).
        max_body: args.max_body.unwrap_or_else(|| {
            plans
                .iter()
                .map(|p| usize::try_from(p.runtime.max_body).unwrap_or(usize::MAX))
                .max()
                .unwrap_or(10_000_000)
        }),
        deny_private: args.deny_private_addresses
            || plans.iter().any(|p| p.policy.deny_private_addresses),
        step_concurrency: args.step_concurrency.max(1),
        instance_concurrency: args.instance_concurrency.map(|n| n.max(1)),
        max_pending: args.max_pending.max(1),
        max_instance_pending: args.max_pending_per_instance.map(|n| n.max(1)),
        drain_timeout: Duration::from_secs(args.drain_timeout),
        keep_executions: args.keep_executions,
        keep_days: args.keep_days,
        component_urls: component_urls(&args.component_urls)?,
        max_output: usize::try_from(args.max_output).unwrap_or(usize::MAX),
        body_budget: usize::try_from(args.body_budget).unwrap_or(usize::MAX),
        read_timeout: Duration::from_secs(args.read_timeout.max(1)),
        max_connections: args.max_connections.unwrap_or_else(connection_capacity),
        max_store_bytes: args.max_store_size,
        broker: args.broker.clone(),
        broker_replicas: args.broker_replicas.max(1),
        role,
        // Not one bundle: a fleet's processes share one history stream.
        fleet: !args.path.join("plan.json").is_file(),
        offline: None,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting tokio")?;
    let source = PlanSource {
        path: args.path.clone(),
        data_dir: args.data_dir.clone(),
        color,
        role: role_for_reload,
        integration: integration.map(str::to_string),
        secrets_dir: args.secrets_dir.clone(),
    };
    runtime.block_on(async move {
        let instances = plans.len();
        let flows: usize = plans
            .iter()
            .map(|p| p.flows.iter().filter(|f| f.enabled).count())
            .sum();
        let rt = weft_runtime::start(plans, options, secrets)
            .await
            .map_err(anyhow::Error::msg)?;
        // Once the gateway serves: a fleet's start-up heap is large, and returning it takes a
        // while that callers need not wait for.
        tokio::spawn(async {
            tokio::time::sleep(Duration::from_millis(200)).await;
            let _ = tokio::task::spawn_blocking(crate::resident::trim_after_start).await;
        });
        tracing::info!(
            "running {flows} flow(s) of {instances} instance(s); data in {}",
            args.data_dir.display()
        );
        tokio::spawn(watch_reloads(
            rt.reloader(),
            source,
            args.reload_every.map(|s| Duration::from_secs(s.max(1))),
        ));
        weft_runtime::serve(rt, shutdown_signal())
            .await
            .map_err(anyhow::Error::msg)
    })?;
    Ok(ExitCode::SUCCESS)
}

/// Where a reload reads plans and secrets again: what the process was started with.
struct PlanSource {
    path: PathBuf,
    /// The data folder, when it lies under `path`: its files change with every event.
    data_dir: PathBuf,
    color: ColorChoice,
    role: weft_runtime::Role,
    integration: Option<String>,
    secrets_dir: Option<PathBuf>,
}

/// A secret's value: from the environment, else from the file of that name in `dir`
/// (without its trailing newline). An empty variable counts as unset: compose sets one empty
/// when its `.env` lacks it.
fn secret_lookup(dir: Option<PathBuf>) -> impl Fn(&str) -> Option<String> {
    move |name| {
        let set = std::env::var(name).ok().filter(|v| !v.is_empty());
        set.or_else(|| {
            let dir = dir.as_ref()?;
            // A secret's name is a variable name: it never leaves the folder.
            if !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                return None;
            }
            let text = std::fs::read_to_string(dir.join(name)).ok()?;
            Some(text.trim_end_matches(['\n', '\r']).to_string())
        })
    }
}

/// Reloads on SIGHUP, and when the files under the plans' path or the secrets folder change
/// (looked at every `every`, when given). A reload that fails leaves the running plans as
/// they were.
async fn watch_reloads(
    reloader: std::sync::Arc<weft_runtime::Reloader>,
    source: PlanSource,
    every: Option<Duration>,
) {
    let source = std::sync::Arc::new(source);
    let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
    let watched = || async {
        let plans = fingerprint(&source.path, &source.data_dir).await;
        let secrets = match &source.secrets_dir {
            Some(dir) => fingerprint(dir, &source.data_dir).await,
            None => None,
        };
        (plans, secrets)
    };
    let mut seen = match every {
        Some(_) => Some(watched().await),
        None => None,
    };
    loop {
        let signalled = async {
            match hangup.as_mut() {
                Some(h) => h.recv().await,
                None => std::future::pending().await,
            }
        };
        let tick = async {
            match every {
                Some(every) => tokio::time::sleep(every).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = signalled => {
                tracing::info!("SIGHUP: reloading the plans");
                // What this reload reads is not read again at the next look.
                if every.is_some() {
                    seen = Some(watched().await);
                }
            }
            () = tick => {
                // A failed reload is tried again when the files change again (a plan fixed,
                // a secret added), not at every look.
                let now = Some(watched().await);
                if now == seen {
                    continue;
                }
                seen = now;
                tracing::info!("the plans or secrets changed: reloading");
            }
        }
        let started = std::time::Instant::now();
        match reload_once(&reloader, source.clone()).await {
            Ok(reloaded) => tracing::info!(
                "reloaded in {} ms: {reloaded}",
                started.elapsed().as_millis()
            ),
            Err(e) => tracing::error!("reload refused, the running plans are kept: {e:#}"),
        }
    }
}

/// Reads the plans and secrets again and hands them to the runtime.
async fn reload_once(
    reloader: &weft_runtime::Reloader,
    source: std::sync::Arc<PlanSource>,
) -> anyhow::Result<weft_runtime::Reloaded> {
    let (plans, secrets) = tokio::task::spawn_blocking(move || {
        let mut plans = match load_plans(&source.path, source.color)? {
            Ok(plans) => plans,
            Err(_) => bail!("the sources have errors (printed above)"),
        };
        if let Some(name) = &source.integration {
            plans.retain(|p| &p.integration == name);
        }
        if plans.is_empty() {
            bail!("{} has no instances to run", source.path.display());
        }
        let secrets = weft_runtime::resolve_role_secrets(
            &plans,
            &source.role,
            &secret_lookup(source.secrets_dir.clone()),
        )
        .map_err(anyhow::Error::msg)?;
        Ok((plans, secrets))
    })
    .await??;
    Ok(reloader.reload(plans, secrets).await?)
}

/// The path, length and modification time of every file under `path`, or `None` when it
/// cannot be read; a change of any means the plans may have changed.
async fn fingerprint(
    path: &Path,
    data_dir: &Path,
) -> Option<Vec<(PathBuf, u64, std::time::SystemTime)>> {
    let path = path.to_path_buf();
    // The data folder by device and inode (no path to compare however it was named).
    let data_dir = std::fs::metadata(data_dir).ok().map(|m| (m.dev(), m.ino()));
    tokio::task::spawn_blocking(move || {
        let mut files = Vec::new();
        let mut folders = vec![path];
        while let Some(folder) = folders.pop() {
            for entry in std::fs::read_dir(&folder).ok()? {
                let entry = entry.ok()?;
                let name = entry.file_name();
                if name.to_string_lossy().starts_with('.') || name == "target" {
                    continue;
                }
                // Followed: a mounted Kubernetes volume swaps its files by a link.
                let meta = std::fs::metadata(entry.path()).ok()?;
                if meta.is_dir() && Some((meta.dev(), meta.ino())) == data_dir {
                    continue;
                }
                if meta.is_dir() {
                    folders.push(entry.path());
                } else {
                    files.push((entry.path(), meta.len(), meta.modified().ok()?));
                }
            }
        }
        files.sort();
        Some(files)
    })
    .await
    .ok()
    .flatten()
}

fn component_urls(flags: &[String]) -> anyhow::Result<std::collections::HashMap<String, String>> {
    let mut urls = std::collections::HashMap::new();
    for (key, value) in std::env::vars() {
        if let Some(name) = key.strip_prefix("WEFT_COMPONENT_URL_") {
            urls.insert(name.to_lowercase().replace('_', "-"), value);
        }
    }
    for flag in flags {
        let Some((name, url)) = flag.split_once('=') else {
            bail!("--component-url takes NAME=URL, not `{flag}`");
        };
        urls.insert(name.to_string(), url.to_string());
    }
    Ok(urls)
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        if let Ok(mut s) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        {
            s.recv().await;
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}

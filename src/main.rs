//! The `weft` binary: parses flags, calls the compiler and runtime libraries, maps results to
//! exit codes. Each subcommand lives in `src/commands/<verb>.rs`.

mod commands;
mod deployment;
mod docker;
mod report;
mod resident;

use std::alloc::{GlobalAlloc, Layout};
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// mimalloc: the compiler and runtime allocate many small values (YAML trees, JSON, plans);
/// it is measurably faster than the system allocator on `weft build` (see the benchmark).
#[global_allocator]
static GLOBAL: Mimalloc = Mimalloc;

/// [`mimalloc::MiMalloc`], but asking for a plain block whenever the alignment allows, as the
/// standard library's `System` does with `malloc`: every mimalloc block is 8-byte aligned, and
/// its aligned entry point (all `MiMalloc` uses) leaves the fast path for blocks over 1 KiB
/// and when the next free block is not aligned — 7% of `weft run`'s instructions under load,
/// see docs/performance.md.
struct Mimalloc;

/// The alignment every mimalloc block has (its size classes are multiples of a word).
const PLAIN_ALIGN: usize = 8;

// SAFETY: each method forwards to mimalloc, whose blocks are at least `PLAIN_ALIGN`-aligned; a
// larger alignment goes to its aligned entry points, as `MiMalloc` does for every layout. Blocks
// from either are freed and resized by `mi_free` and `mi_realloc*` alike.
unsafe impl GlobalAlloc for Mimalloc {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if layout.align() <= PLAIN_ALIGN {
            // SAFETY: see the impl.
            unsafe { libmimalloc_sys::mi_malloc(layout.size()).cast() }
        } else {
            // SAFETY: see the impl.
            unsafe { mimalloc::MiMalloc.alloc(layout) }
        }
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if layout.align() <= PLAIN_ALIGN {
            // SAFETY: see the impl.
            unsafe { libmimalloc_sys::mi_zalloc(layout.size()).cast() }
        } else {
            // SAFETY: see the impl.
            unsafe { mimalloc::MiMalloc.alloc_zeroed(layout) }
        }
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: see the impl.
        unsafe { mimalloc::MiMalloc.dealloc(ptr, layout) }
    }

    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if layout.align() <= PLAIN_ALIGN {
            // SAFETY: see the impl.
            unsafe { libmimalloc_sys::mi_realloc(ptr.cast(), new_size).cast() }
        } else {
            // SAFETY: see the impl.
            unsafe { mimalloc::MiMalloc.realloc(ptr, layout, new_size) }
        }
    }
}

/// Lean allocator defaults, set before anything allocates: arenas are committed as they are
/// used and freed memory is returned at once (idle RSS about 20 MB instead of 30 MB). They are
/// defaults: `MIMALLOC_ARENA_EAGER_COMMIT` and `MIMALLOC_PURGE_DELAY` in the environment win.
#[used]
#[unsafe(link_section = ".init_array")]
static LEAN_ALLOCATOR: extern "C" fn() = {
    extern "C" fn lean_allocator() {
        // `mi_option_e` in mimalloc.h (v2 and v3): not exported as constants by the -sys crate.
        const ARENA_EAGER_COMMIT: libmimalloc_sys::mi_option_t = 4;
        const PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;
        // SAFETY: mimalloc's option setters only store a value; they are safe to call at any
        // time, and this runs once, before `main`, on the only thread.
        unsafe {
            libmimalloc_sys::mi_option_set_default(ARENA_EAGER_COMMIT, 0);
            libmimalloc_sys::mi_option_set_default(PURGE_DELAY, 0);
        }
        // SQLite allocates with the C library's malloc. Its statement journals are freed after
        // every statement, and glibc then trimmed the writer thread's heap each time: a
        // madvise and a TLB shootdown per commit (5% of `weft run`'s CPU under load, see
        // docs/performance.md). A fixed trim threshold keeps that small heap mapped.
        #[cfg(all(target_os = "linux", target_env = "gnu"))]
        // SAFETY: mallopt only sets a tuning value; this runs before any other thread exists.
        unsafe {
            libc::mallopt(libc::M_TRIM_THRESHOLD, 32 << 20);
        }
    }
    lean_allocator
};

const EXAMPLES: &str = "\
Examples:
  weft check                         check the repository in the current folder
  weft check examples/sync-webhook --format json
  weft build -o dist                 compile every instance into dist/<customer>/<integration>/
  weft graph --integration acme-orders --format mermaid
  weft diff --format markdown        what a pull request changes, per integration and customer
  weft publish                       tag changed integrations as new versions (CI on main)
  weft run examples/event-import     run every instance on the embedded durable queue
  weft gateway /bundle               container mode: a bundle's gateway, on the broker
  weft step /bundle --flow F --step S    container mode: one step's worker, on the broker
  weft image build                   the runtime image (weft image build --broker: the broker's)
  weft up dist/globex/event-import   a bundle's containers on the local Docker engine
  weft ps                            weft's containers; weft logs BUNDLE, weft down BUNDLE
  weft test --format junit           run integrations/*/tests/*.yaml offline (mocked HTTP)
  weft executions --status failed    the execution history
  weft dlq replay --all              replay dead letters after a fix

Exit codes:
  0  success
  1  the sources have errors (diagnostics were printed), or `weft test`: a test failed
  2  usage error, or a file or folder could not be read or written";

/// weft: a declarative, GitOps integration compiler and runtime.
#[derive(Debug, Parser)]
#[command(name = "weft", version, about, after_help = EXAMPLES, propagate_version = true)]
struct Cli {
    /// Log format of `weft run`: text or json.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    /// When to use colours: auto (only on a terminal, and not with NO_COLOR), always, never.
    #[arg(long, global = true, value_enum, default_value_t = report::ColorChoice::Auto)]
    color: report::ColorChoice,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    Check(commands::check::Args),
    Build(commands::build::Args),
    Graph(commands::graph::Args),
    Diff(commands::diff::Args),
    Publish(commands::publish::Args),
    Versions(commands::versions::Args),
    List(commands::catalog::ListArgs),
    Catalog(commands::catalog::CatalogArgs),
    New(commands::catalog::NewArgs),
    Run(commands::run::Args),
    Gateway(commands::gateway::Args),
    Step(commands::step::Args),
    Executions(commands::executions::Args),
    Dlq(commands::dlq::Args),
    Health(commands::health::Args),
    Image(commands::image::Args),
    Up(commands::up::Args),
    Down(commands::down::Args),
    Ps(commands::ps::Args),
    Logs(commands::logs::Args),
    Test(commands::test::Args),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

/// Logs go to stderr at `default` level unless `WEFT_LOG` says otherwise.
fn init_logs(format: LogFormat, color: report::ColorChoice, default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("WEFT_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.with_ansi(color.stderr()).init(),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // `weft test` reports what its flows did itself; their log lines would only be noise.
    let default_logs = match cli.command {
        Command::Test(_) => "off",
        _ => "info",
    };
    init_logs(cli.log_format, cli.color, default_logs);
    let result = match cli.command {
        Command::Check(args) => commands::check::run(args, cli.color),
        Command::Build(args) => commands::build::run(args, cli.color),
        Command::Graph(args) => commands::graph::run(args, cli.color),
        Command::Diff(args) => commands::diff::run(args, cli.color),
        Command::Publish(args) => commands::publish::run(args, cli.color),
        Command::Versions(args) => commands::versions::run(args),
        Command::List(args) => commands::catalog::list(args),
        Command::Catalog(args) => commands::catalog::catalog(args),
        Command::New(args) => commands::catalog::new(args),
        Command::Run(args) => commands::run::run(args, cli.color),
        Command::Gateway(args) => commands::gateway::run(args, cli.color),
        Command::Step(args) => commands::step::run(args, cli.color),
        Command::Executions(args) => commands::executions::run(args),
        Command::Dlq(args) => commands::dlq::run(args),
        Command::Health(args) => commands::health::run(args),
        Command::Image(args) => commands::image::run(args),
        Command::Up(args) => commands::up::run(args),
        Command::Down(args) => commands::down::run(args),
        Command::Ps(args) => commands::ps::run(args),
        Command::Logs(args) => commands::logs::run(args),
        Command::Test(args) => commands::test::run(args, cli.color),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser as _;
    use weft_compiler::compose::Role;

    use super::{Cli, Command};

    /// Every `command` and healthcheck an emitted compose file gives the runtime image parses
    /// with this binary's own flags, into the role it is for: emit and CLI cannot drift apart.
    #[test]
    fn emitted_commands_parse_with_the_cli() {
        let examples = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
        let mut dirs: Vec<_> = std::fs::read_dir(&examples)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        dirs.sort();
        let mut parsed = 0;
        for dir in dirs {
            let sources = weft_compiler::repo::read_repo(&dir).unwrap();
            let compilation = weft_compiler::compile(&sources);
            let ports = weft_compiler::emit::host_ports(&compilation.plans);
            for plan in &compilation.plans {
                let port = ports[&weft_compiler::emit::bundle_dir(plan)];
                let file = weft_compiler::emit::compose_file(plan, &compilation.project, port);
                for (name, service) in &file.services {
                    let role = service.role().unwrap();
                    if matches!(role, Role::Broker | Role::Component) {
                        continue;
                    }
                    let args =
                        std::iter::once("weft").chain(service.command.iter().map(String::as_str));
                    let cli = Cli::try_parse_from(args)
                        .unwrap_or_else(|e| panic!("{name}: {:?}: {e}", service.command));
                    match (role, cli.command) {
                        (Role::Gateway, Command::Gateway(g)) => {
                            assert_eq!(g.run.path, std::path::Path::new("/bundle"));
                            assert_eq!(g.run.port, plan.runtime.port);
                        }
                        (Role::Step, Command::Step(s)) => {
                            assert_eq!(weft_compiler::emit::service_name(&s.flow, &s.step), *name);
                            let step = plan
                                .flows
                                .iter()
                                .find(|f| f.name == s.flow)
                                .and_then(|f| f.steps.iter().find(|st| st.id == s.step));
                            assert!(step.is_some(), "{name}: no such step in the plan");
                        }
                        (role, other) => panic!("{name}: {role:?} runs {other:?}"),
                    }
                    let check = service.healthcheck.as_ref().unwrap();
                    assert_eq!(check.test[..2], ["CMD".to_string(), "/weft".to_string()]);
                    let health = Cli::try_parse_from(
                        std::iter::once("weft").chain(check.test[2..].iter().map(String::as_str)),
                    )
                    .unwrap();
                    assert!(matches!(health.command, Command::Health(_)));
                    parsed += 1;
                }
            }
        }
        assert!(parsed > 30, "parsed {parsed} commands");
    }
}

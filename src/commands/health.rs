//! `weft health`: the container healthcheck (images are `FROM scratch`: no curl, no shell).

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};

/// Probe a weft health endpoint; exit 0 when it answers 200.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The endpoint, e.g. http://127.0.0.1:9090/healthz (plain HTTP).
    #[arg(long, default_value = "http://127.0.0.1:9090/healthz")]
    pub url: String,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let rest = args
        .url
        .strip_prefix("http://")
        .context("only http:// URLs can be probed")?;
    let (host, path) = rest
        .split_once('/')
        .map_or((rest, "/".to_string()), |(h, p)| (h, format!("/{p}")));
    let addr = host
        .to_socket_addrs()
        .with_context(|| format!("resolving {host}"))?
        .next()
        .with_context(|| format!("{host} has no address"))?;
    let timeout = Duration::from_secs(3);
    let mut stream = TcpStream::connect_timeout(&addr, timeout)
        .with_context(|| format!("connecting to {host}"))?;
    stream.set_read_timeout(Some(timeout))?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {host}\r\n\r\n")?;
    let mut head = [0u8; 32];
    let n = stream.read(&mut head)?;
    let status = String::from_utf8_lossy(&head[..n]);
    match status.split_whitespace().nth(1) {
        Some("200") => Ok(ExitCode::SUCCESS),
        Some(code) => bail!("{} answered {code}", args.url),
        None => bail!("{} gave no HTTP answer", args.url),
    }
}

//! The Docker engine as `weft image`, `up`, `down`, `ps` and `logs` use it (bollard, no docker
//! CLI): the connection with a clear error when no engine answers, the errors that carry their
//! own exit codes, and the containers of a bundle found by their labels.

use std::collections::HashMap;
use std::process::ExitCode;

use anyhow::Context as _;
use bollard::Docker;
use bollard::models::ContainerSummary;
use bollard::query_parameters::{ListContainersOptionsBuilder, RemoveContainerOptionsBuilder};
use weft_compiler::compose::label;

/// Exit codes of the Docker commands, beyond `0` (success) and `2` (usage, unreadable bundle,
/// missing secret, refused operation).
pub const EXIT_CODES: &str = "\
Exit codes:
  0  success
  2  usage error, an unreadable bundle, a missing secret, or the engine refused an operation
  3  the Docker engine cannot be reached (start dockerd)
  4  an image is missing (the message names the command that builds it)
  5  (up) containers not healthy within --timeout";

/// A failure with its own exit code (see [`EXIT_CODES`]).
#[derive(Debug, thiserror::Error)]
pub enum DockerError {
    #[error(
        "cannot reach the Docker engine ({endpoint}): {reason}\n  hint: start dockerd (`sudo systemctl start docker`, or `dockerd &` as root), or set DOCKER_HOST"
    )]
    Unreachable { endpoint: String, reason: String },
    #[error("{0}")]
    MissingImage(String),
    #[error("{0}")]
    NotHealthy(String),
}

impl DockerError {
    pub fn exit_code(&self) -> ExitCode {
        ExitCode::from(match self {
            DockerError::Unreachable { .. } => 3,
            DockerError::MissingImage(_) => 4,
            DockerError::NotHealthy(_) => 5,
        })
    }
}

/// Maps an error to its exit code, printing it: a [`DockerError`] keeps its own, anything else
/// is returned for `main` (exit 2).
pub fn exit(result: anyhow::Result<ExitCode>) -> anyhow::Result<ExitCode> {
    match result {
        Err(e) => match e.downcast_ref::<DockerError>() {
            Some(docker) => {
                eprintln!("error: {e:#}");
                Ok(docker.exit_code())
            }
            None => Err(e),
        },
        ok => ok,
    }
}

/// Connects to the engine (`DOCKER_HOST`, else the local socket) and agrees on an API version.
pub async fn connect() -> anyhow::Result<Docker> {
    let endpoint =
        std::env::var("DOCKER_HOST").unwrap_or_else(|_| "unix:///var/run/docker.sock".to_string());
    let unreachable = |reason: String| DockerError::Unreachable {
        endpoint: endpoint.clone(),
        reason,
    };
    let docker = Docker::connect_with_defaults().map_err(|e| unreachable(e.to_string()))?;
    let docker = docker
        .negotiate_version()
        .await
        .map_err(|e| unreachable(e.to_string()))?;
    docker
        .ping()
        .await
        .map_err(|e| unreachable(e.to_string()))?;
    Ok(docker)
}

/// A tokio runtime for one command.
pub fn block_on<T>(future: impl Future<Output = T>) -> anyhow::Result<T> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    Ok(runtime.block_on(future))
}

/// Whether `error` is the engine's 404.
pub fn is_not_found(error: &bollard::errors::Error) -> bool {
    matches!(
        error,
        bollard::errors::Error::DockerResponseServerError {
            status_code: 404,
            ..
        }
    )
}

/// `docker-compose` sets this label on what it creates: `weft down` and `weft logs` leave those
/// containers to docker-compose.
pub const COMPOSE_PROJECT_LABEL: &str = "com.docker.compose.project";

/// Every weft container (any bundle, `weft up` or docker-compose), stopped ones included;
/// narrowed to one bundle when `bundle` is `(customer, integration)`.
pub async fn weft_containers(
    docker: &Docker,
    bundle: Option<(&str, &str)>,
) -> anyhow::Result<Vec<ContainerSummary>> {
    let mut labels = vec![label::ROLE.to_string()];
    if let Some((customer, integration)) = bundle {
        labels.push(format!("{}={customer}", label::CUSTOMER));
        labels.push(format!("{}={integration}", label::INTEGRATION));
    }
    let filters = HashMap::from([("label".to_string(), labels)]);
    let options = ListContainersOptionsBuilder::default()
        .all(true)
        .filters(&filters)
        .build();
    let mut containers = docker.list_containers(Some(options)).await?;
    containers.sort_by_key(|c| container_name(c).to_string());
    Ok(containers)
}

/// The containers of one bundle that `weft up` created (not docker-compose's).
pub async fn bundle_containers(
    docker: &Docker,
    customer: &str,
    integration: &str,
) -> anyhow::Result<Vec<ContainerSummary>> {
    let all = weft_containers(docker, Some((customer, integration))).await?;
    Ok(all
        .into_iter()
        .filter(|c| label_of(c, COMPOSE_PROJECT_LABEL).is_none())
        .collect())
}

/// A container's name without the leading `/`.
/// Removes container `name`, running or not.
pub async fn force_remove(docker: &Docker, name: &str) -> anyhow::Result<()> {
    docker
        .remove_container(
            name,
            Some(RemoveContainerOptionsBuilder::default().force(true).build()),
        )
        .await
        .with_context(|| format!("removing {name}"))
}

pub fn container_name(c: &ContainerSummary) -> &str {
    c.names
        .as_ref()
        .and_then(|n| n.first())
        .map_or("", |n| n.trim_start_matches('/'))
}

/// One of a container's labels.
pub fn label_of<'a>(c: &'a ContainerSummary, key: &str) -> Option<&'a str> {
    c.labels.as_ref()?.get(key).map(String::as_str)
}

/// `12.3 MB`: sizes as people read them (powers of 1000, as `docker images` prints them).
pub fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "kB", "MB", "GB", "TB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1000.0 && unit < UNITS.len() - 1 {
        value /= 1000.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::human_size;

    #[test]
    fn sizes_read_like_docker_images() {
        assert_eq!(human_size(999), "999 B");
        assert_eq!(human_size(21_300_000), "21.3 MB");
        assert_eq!(human_size(1_500_000_000), "1.5 GB");
    }
}

//! `weft new integration`: a new integration folder, from a built-in starter or from an
//! integration of the repository marked `template: true`.

use std::path::{Path, PathBuf};

use super::{Error, read_repository};
use crate::load;

/// Creates `integrations/<name>/` (integration.yaml and README.md) in the repository at `path`,
/// from the starter or template `from`; returns the folder.
pub fn new_integration(path: &Path, name: &str, from: &str) -> Result<PathBuf, Error> {
    let valid = name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if !valid {
        return Err(Error::InvalidName(name.to_string()));
    }
    let dir = path.join("integrations").join(name);
    if dir.exists() {
        return Err(Error::Exists(dir));
    }
    let text = match starter(from, name) {
        Some(text) => text,
        None => from_template(path, name, from)?,
    };
    std::fs::create_dir_all(&dir).map_err(|e| Error::CreateFolder(dir.clone(), e))?;
    std::fs::write(dir.join("integration.yaml"), text)?;
    std::fs::write(
        dir.join("README.md"),
        format!(
            "# {name}\n\nTODO: what this integration does, its config variables, and who owns it.\n"
        ),
    )?;
    Ok(dir)
}

/// The integration.yaml of template `from`, renamed to `name` and no longer a template.
fn from_template(path: &Path, name: &str, from: &str) -> Result<String, Error> {
    let sources = read_repository(path)?;
    let (repo, _) = load::load(&sources);
    let Some(template) = repo.integrations.iter().find(|i| i.model.name.0 == from) else {
        return Err(Error::UnknownTemplate(from.to_string()));
    };
    if !template.model.template {
        return Err(Error::NotATemplate(from.to_string()));
    }
    let source = &sources.files[template.file].text;
    Ok(source
        .replacen(&format!("name: {from}"), &format!("name: {name}"), 1)
        .replacen("template: true\n", "", 1))
}

/// A built-in starter (`webhook`, `schedule`, `poll`) for integration `name`.
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

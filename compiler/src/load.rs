//! Stage 1: text → spanned YAML tree → schema check → typed model, for every file in parallel.

use rayon::prelude::*;
use serde::de::DeserializeOwned;

use crate::diagnostic::{Code, Diagnostic};
use crate::model::{Component, Instance, Integration, Project, VersionsFile};
use crate::repo::{MAX_FILE_BYTES, Sources};
use crate::schema::{self, FileKind};
use crate::source::{FileId, SourceFile};
use crate::yaml::{self, Node};

/// A file that parsed and passed its schema.
#[derive(Debug, Clone)]
pub struct Loaded<T> {
    pub file: FileId,
    pub root: Node,
    pub model: T,
    /// The folder the file lies in (`integrations/<folder>/...`, `instances/<folder>/...`).
    pub folder: String,
    /// The file name without extension.
    pub stem: String,
}

/// The repository's files, typed. Files with errors are left out, and their names recorded so
/// that later stages do not report follow-on errors about them.
#[derive(Debug, Default)]
pub struct Repo {
    pub project: Option<Loaded<Project>>,
    pub components: Vec<Loaded<Component>>,
    pub integrations: Vec<Loaded<Integration>>,
    pub instances: Vec<Loaded<Instance>>,
    /// `integrations/<name>/versions.yaml`, by folder.
    pub versions: Vec<Loaded<VersionsFile>>,
    /// Folder names of components and integrations that failed to load.
    pub broken_components: Vec<String>,
    pub broken_integrations: Vec<String>,
}

/// The kind of a file, from its place in the repository layout.
pub fn classify(path: &str) -> Option<(FileKind, String, String)> {
    let parts: Vec<&str> = path.split('/').collect();
    let stem = |name: &str| {
        name.trim_end_matches(".yaml")
            .trim_end_matches(".yml")
            .to_string()
    };
    match parts.as_slice() {
        ["weft.yaml"] => Some((FileKind::Project, String::new(), "weft".into())),
        ["components", folder, file] if stem(file) == "component" => {
            Some((FileKind::Component, folder.to_string(), stem(file)))
        }
        ["integrations", folder, file] if stem(file) == "integration" => {
            Some((FileKind::Integration, folder.to_string(), stem(file)))
        }
        ["integrations", folder, file] if stem(file) == "versions" => {
            Some((FileKind::Versions, folder.to_string(), stem(file)))
        }
        ["instances", folder, file] => Some((FileKind::Instance, folder.to_string(), stem(file))),
        _ => None,
    }
}

enum AnyLoaded {
    Project(Loaded<Project>),
    Component(Loaded<Component>),
    Integration(Loaded<Integration>),
    Instance(Loaded<Instance>),
    Versions(Loaded<VersionsFile>),
    Broken(FileKind, String),
}

pub fn load(sources: &Sources) -> (Repo, Vec<Diagnostic>) {
    let results: Vec<(Option<AnyLoaded>, Vec<Diagnostic>)> = sources
        .files
        .par_iter()
        .enumerate()
        .map(|(file, source)| {
            let Some((kind, folder, stem)) = classify(&source.path) else {
                return (None, Vec::new());
            };
            if let Some(d) = unreadable(file, source) {
                return (Some(AnyLoaded::Broken(kind, folder)), vec![d]);
            }
            let mut diags = Vec::new();
            let loaded = load_file(kind, file, &source.text, folder.clone(), stem, &mut diags);
            (
                Some(loaded.unwrap_or(AnyLoaded::Broken(kind, folder))),
                diags,
            )
        })
        .collect();
    let mut repo = Repo::default();
    let mut diags = Vec::new();
    for (loaded, d) in results {
        diags.extend(d);
        match loaded {
            Some(AnyLoaded::Project(p)) => repo.project = Some(p),
            Some(AnyLoaded::Component(c)) => repo.components.push(c),
            Some(AnyLoaded::Integration(i)) => repo.integrations.push(i),
            Some(AnyLoaded::Instance(i)) => repo.instances.push(i),
            Some(AnyLoaded::Versions(v)) => repo.versions.push(v),
            Some(AnyLoaded::Broken(FileKind::Component, folder)) => {
                repo.broken_components.push(folder)
            }
            Some(AnyLoaded::Broken(FileKind::Integration, folder)) => {
                repo.broken_integrations.push(folder)
            }
            Some(AnyLoaded::Broken(..)) | None => {}
        }
    }
    (repo, diags)
}

/// A file that was not read (see [`crate::repo`]), or whose text is over the size limit (read
/// from git): never parsed, and its content never shown.
fn unreadable(file: FileId, source: &SourceFile) -> Option<Diagnostic> {
    let too_large = source.text.len() as u64 > MAX_FILE_BYTES;
    let reason = match &source.unreadable {
        Some(reason) => reason.clone(),
        None if too_large => format!(
            "it is {} bytes, more than the limit of {MAX_FILE_BYTES} bytes (1 MiB)",
            source.text.len()
        ),
        None => return None,
    };
    Some(
        Diagnostic::error(
            Code::UnreadableFile,
            format!("`{}` is not read: {reason}", source.path),
        )
        .at(file, 0..0, "not read")
        .help("commit the file itself: a regular file inside the repository, UTF-8 text of at most 1 MiB"),
    )
}

fn load_file(
    kind: FileKind,
    file: FileId,
    text: &str,
    folder: String,
    stem: String,
    diags: &mut Vec<Diagnostic>,
) -> Option<AnyLoaded> {
    let root = match yaml::parse(text) {
        Ok(root) => root,
        Err(e) => {
            let code = if e.too_deep {
                Code::TooDeep
            } else {
                Code::YamlSyntax
            };
            diags.push(
                Diagnostic::error(code, e.message)
                    .at(file, e.span, e.label)
                    .help_opt(e.help),
            );
            return None;
        }
    };
    let value = root.to_json();
    let errors = schema::validate(kind, file, &root, &value);
    if !errors.is_empty() {
        diags.extend(errors);
        return None;
    }
    /// The typed model of a file that passed its schema.
    fn typed<T: DeserializeOwned>(
        value: serde_json::Value,
        file: FileId,
        root: Node,
        folder: String,
        stem: String,
        diags: &mut Vec<Diagnostic>,
    ) -> Option<Loaded<T>> {
        match serde_json::from_value(value) {
            Ok(model) => Some(Loaded {
                file,
                root,
                model,
                folder,
                stem,
            }),
            Err(e) => {
                // The schema accepted what the model rejects: a drift the schema tests guard
                // against; still a diagnostic, never a panic.
                diags.push(
                    Diagnostic::error(Code::InvalidValue, format!("invalid file: {e}")).at(
                        file,
                        root.span.clone(),
                        "here",
                    ),
                );
                None
            }
        }
    }
    let loaded = match kind {
        FileKind::Project => AnyLoaded::Project(typed(value, file, root, folder, stem, diags)?),
        FileKind::Component => AnyLoaded::Component(typed(value, file, root, folder, stem, diags)?),
        FileKind::Integration => {
            AnyLoaded::Integration(typed(value, file, root, folder, stem, diags)?)
        }
        FileKind::Instance => AnyLoaded::Instance(typed(value, file, root, folder, stem, diags)?),
        FileKind::Versions => AnyLoaded::Versions(typed(value, file, root, folder, stem, diags)?),
    };
    Some(loaded)
}

//! Diagnostics: one type for every problem the compiler finds, rendered for people (rustc-style
//! excerpts), for machines (JSON lines) and for CI (GitHub annotations).

use std::fmt::Write as _;

use annotate_snippets::{AnnotationKind, Group, Level, Renderer, Snippet};
use serde::Serialize;

use crate::source::{FileId, SourceFile};
use crate::yaml::Span;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Error,
    Warning,
}

/// A place in a file with a short text, shown under the caret.
#[derive(Debug, Clone)]
pub struct Label {
    pub file: FileId,
    pub span: Span,
    pub message: String,
}

#[derive(Debug, Clone)]
pub struct Diagnostic {
    pub code: Code,
    pub severity: Severity,
    pub message: String,
    /// The primary label first, then context labels.
    pub labels: Vec<Label>,
    pub help: Option<String>,
    /// Byte ranges of the primary file that are never shown (a literal secret).
    pub redact: Vec<Span>,
}

impl Diagnostic {
    pub fn error(code: Code, message: impl Into<String>) -> Self {
        Diagnostic {
            code,
            severity: Severity::Error,
            message: message.into(),
            labels: Vec::new(),
            help: None,
            redact: Vec::new(),
        }
    }

    pub fn warning(code: Code, message: impl Into<String>) -> Self {
        Diagnostic {
            severity: Severity::Warning,
            ..Diagnostic::error(code, message)
        }
    }

    pub fn at(mut self, file: FileId, span: Span, label: impl Into<String>) -> Self {
        self.labels.push(Label {
            file,
            span,
            message: label.into(),
        });
        self
    }

    pub fn help(mut self, help: impl Into<String>) -> Self {
        self.help = Some(help.into());
        self
    }

    pub fn help_opt(mut self, help: Option<String>) -> Self {
        if help.is_some() {
            self.help = help;
        }
        self
    }

    /// Hides a range of the source in rendered excerpts (same length, `*`).
    pub fn redact(mut self, span: Span) -> Self {
        self.redact.push(span);
        self
    }

    pub fn is_error(&self) -> bool {
        self.severity == Severity::Error
    }

    /// Sort key: file, position, code — so output order does not depend on thread scheduling.
    pub fn sort_key(&self) -> (usize, usize, Code, String) {
        let (file, start) = self
            .labels
            .first()
            .map_or((usize::MAX, 0), |l| (l.file, l.span.start));
        (file, start, self.code, self.message.clone())
    }
}

/// "did you mean `x`?" for the candidate closest to `name`, when one is close enough.
pub fn did_you_mean<'a>(
    name: &str,
    candidates: impl IntoIterator<Item = &'a str>,
) -> Option<String> {
    closest(name, candidates).map(|c| format!("did you mean `{c}`?"))
}

/// The candidate closest to `name`, when one is close enough: the fewest edits (Damerau–
/// Levenshtein: a swap of two neighbours is one edit), ties broken by Jaro–Winkler similarity
/// (which favours a shared prefix), then by order. Close enough: Jaro–Winkler above 0.8, or at
/// most one edit per four characters (none for names of one or two).
pub fn closest<'a>(name: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    let len = name.chars().count();
    let allowed = if len <= 2 { 0 } else { (len / 4).max(1) };
    let mut best: Option<(usize, f64, &str)> = None;
    for c in candidates {
        let jw = strsim::jaro_winkler(name, c);
        let edits = strsim::damerau_levenshtein(name, c);
        if jw <= 0.8 && edits > allowed {
            continue;
        }
        let better = best.is_none_or(|(e, s, _)| edits < e || (edits == e && jw > s));
        if better {
            best = Some((edits, jw, c));
        }
    }
    best.map(|(_, _, c)| c)
}

macro_rules! codes {
    ($( $variant:ident = $name:literal : $what:literal ; $why:literal ; $example:literal ; )*) => {
        /// Stable diagnostic codes. Each has a kebab-case name and documentation
        /// (`docs/diagnostics.md` is generated from it).
        #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub enum Code { $($variant),* }

        impl Code {
            pub const ALL: &'static [Code] = &[$(Code::$variant),*];

            pub fn name(self) -> &'static str {
                match self { $(Code::$variant => $name),* }
            }

            /// What the code means, why it is an error, and an example that triggers it.
            pub fn doc(self) -> (&'static str, &'static str, &'static str) {
                match self { $(Code::$variant => ($what, $why, $example)),* }
            }
        }
    };
}

codes! {
    YamlSyntax = "yaml-syntax":
        "The file is not valid YAML, or uses YAML features weft refuses (anchors, aliases, tags, duplicate keys, several documents).";
        "Anchors and duplicate keys make a reviewed file mean something other than what it shows.";
        "name: [unclosed";
    UnreadableFile = "unreadable-file":
        "A repository file that is not read: a symbolic link that resolves outside the repository, something other than a regular file (a FIFO, a device, a folder), a file over 1 MiB, or text that is not UTF-8.";
        "A pull request must not make `weft check` print a CI secret (`/proc/self/environ`), read forever (`/dev/zero`) or hang (a FIFO); the file's content is never shown.";
        "instances/acme/orders.yaml -> /proc/self/environ";
    TooDeep = "too-deep":
        "YAML nested more than 64 levels deep, or a template expression with more than 256 operators (`.`, `|`, `[`, `(`, `+`, `and`, ...) in one `{{ }}` or `{% %}`.";
        "Nesting that deep is never needed, and would exhaust the stack of the compiler or the runtime.";
        "value: \"{{ trigger.a.a.a … }}\" # 300 lookups in one expression";
    UnknownKey = "unknown-key":
        "A key that the file's schema does not define.";
        "A misspelt key would otherwise be ignored silently.";
        "flows: { a: { trigger: { deploy: {} }, stepz: [] } }";
    MissingField = "missing-field":
        "A required key is absent.";
        "The compiler cannot guess required values.";
        "weft: 1\n# no `name`";
    WrongType = "wrong-type":
        "A value has the wrong type (a string where a list is expected, ...).";
        "YAML guesses types from text; the schema says what each key holds.";
        "labels: erp";
    InvalidValue = "invalid-value":
        "A value breaks a rule other than its type: a pattern, an enum, a bound (a zero duration, a size that does not fit in 64 bits).";
        "Names, versions and enums have fixed forms that tools downstream rely on.";
        "name: Acme_Orders";
    DuplicateName = "duplicate-name":
        "Two integrations or two components carry the same name.";
        "Names identify integrations and components across the repository and in bundles.";
        "two integration.yaml files with `name: acme`";
    MisplacedFile = "misplaced-file":
        "A file lies outside the repository layout, or its name disagrees with its folder.";
        "The layout is how weft finds files; a mismatch means a file would be skipped or confused.";
        "integrations/acme/integration.yaml with `name: other`";
    DuplicateStepId = "duplicate-step-id":
        "Two steps of one flow share an id.";
        "Step ids name outputs (`steps.<id>`) and queues; they must be unique in their flow.";
        "steps: [{id: a, uses: log}, {id: a, uses: log}]";
    TemplateSyntax = "template-syntax":
        "A template that minijinja cannot parse.";
        "The runtime would fail on every message that reaches the step.";
        "value: \"{{ trigger.body. }}\"";
    UnknownVariable = "unknown-variable":
        "A template names a variable that is not in scope there.";
        "Undefined variables are errors at run time; catching them here saves a failed execution.";
        "message: \"{{ trigger_body }}\"";
    UnknownConfigVariable = "unknown-config-variable":
        "A template reads `config.<name>` for a name the integration does not declare.";
        "Every customer's instance is checked against the declared variables; an undeclared one is always undefined.";
        "url: \"{{ config.crm_ulr }}\"";
    UnusedConfig = "unused-config":
        "A warning: a config variable that nothing reads — no template (steps, triggers, connections, webhook auth) names it.";
        "Every customer is asked for a value that changes nothing; often a typo in the template that should read it.";
        "config: { region: { type: string } } # and no `{{ config.region }}` anywhere";
    UnknownConnection = "unknown-connection":
        "A step or template names a connection the integration does not declare.";
        "The step would have no credentials to call its API with.";
        "connection: crm2";
    UnknownStep = "unknown-step":
        "A template reads `steps.<id>` for a step that does not run earlier on the same path.";
        "Only steps that have already run on the way to this step have an output.";
        "a step in one branch case reading the output of a step in another case";
    UnknownComponent = "unknown-component":
        "A step uses a component that is neither built in nor in `components/`.";
        "The step could not be compiled into a call.";
        "uses: crmm.add_customer";
    UnknownAction = "unknown-action":
        "A step uses an action its component does not define.";
        "The step could not be compiled into a call.";
        "uses: crm.add_custmer";
    InvalidStepInput = "invalid-step-input":
        "A step's `with` fails the input schema of the action it uses.";
        "The action would reject the input at run time. Only literal values are checked: templated values are checked neither here nor at run time.";
        "uses: http.request\nwith: { method: FETCH, url: \"http://x\" }";
    ConnectionMismatch = "connection-mismatch":
        "A connection does not fit: its component or auth kind is unknown or wrong for the step, a field is unknown or missing, or a component action has no connection.";
        "Requests would go out without, or with the wrong, credentials.";
        "a step `uses: crm.add_customer` with `connection: erp`";
    InvalidSchedule = "invalid-schedule":
        "A cron expression or a timezone that cannot be parsed; a schedule template over config whose value, for an instance, is not a cron expression; a schedule reading a secret.";
        "A schedule that cannot be parsed never runs.";
        "schedule: { cron: \"0 25 * * *\", timezone: Europe/Berln }";
    DuplicateWebhookPath = "duplicate-webhook-path":
        "Two webhook flows of one integration listen on the same path.";
        "The gateway could not tell which flow a call is for.";
        "two flows with `webhook: { path: /orders }`";
    UnknownIntegration = "unknown-integration":
        "An instance names an integration that is not in `integrations/`.";
        "There is nothing to deploy.";
        "integration: acme-ordres";
    UnknownFlow = "unknown-flow":
        "A `dispatch` step or an instance's `flows:` names a flow the integration does not have.";
        "The payload or the setting would go nowhere.";
        "flows: { nightly: { enabled: false } }";
    MissingConfigValue = "missing-config-value":
        "An instance gives no value for a config variable that has no default.";
        "The integration would run with an undefined value.";
        "config: {} # but `crm_token` has no default";
    UnknownConfigKey = "unknown-config-key":
        "An instance sets a config key the integration does not declare.";
        "A misspelt key would otherwise be ignored, and the real variable left at its default.";
        "config: { min_amout: 100 }";
    InvalidConfigValue = "invalid-config-value":
        "A config value (or default) does not fit its variable's type: url, integer, number, boolean, enum, ...";
        "Each customer's values are checked before deployment, not when the first message arrives.";
        "min_amount: lots";
    LiteralSecret = "literal-secret":
        "A `secret` variable is given a literal value instead of `{ secret: NAME }`.";
        "Secrets must never land in the repository or in bundles; they are read from the environment at run time.";
        "crm_token: abc123";
    DispatchCycle = "dispatch-cycle":
        "Flows dispatch to each other in a cycle.";
        "A message would travel around the cycle forever.";
        "flow a dispatches to b, and b to a";
    UnknownVersion = "unknown-version":
        "An instance pins a published version that cannot be found: no such tag, or no git repository to read tags from.";
        "Published versions are git tags `<integration>/v<N>` made by `weft publish`.";
        "version: 7 # but only v1..v3 are published";
    UnavailableVersion = "unavailable-version":
        "An instance pins a version its integration marks unavailable in `versions.yaml`.";
        "A withdrawn version must not be deployed again; pin another one.";
        "version: 3 # with `unavailable: [3]` in integrations/acme/versions.yaml";
}

/// Renders diagnostics the way a person reads them: rustc-style with the source line and a caret.
pub fn render_human(diag: &Diagnostic, files: &[SourceFile], color: bool) -> String {
    let level = match diag.severity {
        Severity::Error => Level::ERROR,
        Severity::Warning => Level::WARNING,
    };
    // Group the labels per file, primary file first.
    let mut by_file: Vec<(FileId, Vec<&Label>)> = Vec::new();
    for label in &diag.labels {
        match by_file.iter_mut().find(|(f, _)| *f == label.file) {
            Some((_, v)) => v.push(label),
            None => by_file.push((label.file, vec![label])),
        }
    }
    let primary_file = diag.labels.first().map(|l| l.file);
    let redacted: Option<String> = (!diag.redact.is_empty()).then(|| {
        let text = &files[primary_file.unwrap_or_default()].text;
        let mut bytes = text.clone().into_bytes();
        for span in &diag.redact {
            let span = files[primary_file.unwrap_or_default()].clamp(span.clone());
            // Replace whole characters, keeping the byte length so spans stay valid.
            for b in &mut bytes[span] {
                if *b != b'\n' {
                    *b = b'*';
                }
            }
        }
        String::from_utf8_lossy(&bytes).into_owned()
    });
    let mut elements = Vec::new();
    for (i, (file, labels)) in by_file.iter().enumerate() {
        let source = &files[*file];
        let text = match &redacted {
            Some(r) if Some(*file) == primary_file => r.as_str(),
            _ => source.text.as_str(),
        };
        let mut snippet = Snippet::source(text).path(source.path.as_str());
        for (j, label) in labels.iter().enumerate() {
            let kind = if i == 0 && j == 0 {
                AnnotationKind::Primary
            } else {
                AnnotationKind::Context
            };
            snippet = snippet.annotation(
                kind.span(source.clamp(label.span.clone()))
                    .label(label.message.as_str()),
            );
        }
        elements.push(snippet);
    }
    let title = level
        .primary_title(diag.message.as_str())
        .id(diag.code.name());
    let mut group = if elements.is_empty() {
        Group::with_title(title)
    } else {
        title.elements(elements)
    };
    if let Some(help) = &diag.help {
        group = group.element(Level::HELP.message(help.as_str()));
    }
    let renderer = if color {
        Renderer::styled()
    } else {
        Renderer::plain()
    };
    let mut out = renderer.render(&[group]).to_string();
    out.push('\n');
    out
}

/// A machine-readable view of a diagnostic (one JSON object per line with `--format json`).
#[derive(Debug, Serialize)]
pub struct JsonDiagnostic<'a> {
    pub code: &'static str,
    pub severity: Severity,
    pub message: &'a str,
    pub file: Option<&'a str>,
    pub line: Option<usize>,
    pub column: Option<usize>,
    pub end_line: Option<usize>,
    pub end_column: Option<usize>,
    pub help: Option<&'a str>,
    pub labels: Vec<JsonLabel<'a>>,
}

#[derive(Debug, Serialize)]
pub struct JsonLabel<'a> {
    pub file: &'a str,
    pub line: usize,
    pub column: usize,
    pub end_line: usize,
    pub end_column: usize,
    pub message: &'a str,
}

pub fn to_json<'a>(diag: &'a Diagnostic, files: &'a [SourceFile]) -> JsonDiagnostic<'a> {
    let labels: Vec<JsonLabel<'a>> = diag
        .labels
        .iter()
        .map(|l| {
            let f = &files[l.file];
            let (line, column) = f.line_col(l.span.start);
            let (end_line, end_column) = f.line_col(l.span.end);
            JsonLabel {
                file: &f.path,
                line,
                column,
                end_line,
                end_column,
                message: &l.message,
            }
        })
        .collect();
    let first = labels.first();
    JsonDiagnostic {
        code: diag.code.name(),
        severity: diag.severity,
        message: &diag.message,
        file: first.map(|l| l.file),
        line: first.map(|l| l.line),
        column: first.map(|l| l.column),
        end_line: first.map(|l| l.end_line),
        end_column: first.map(|l| l.end_column),
        help: diag.help.as_deref(),
        labels,
    }
}

/// GitHub Actions workflow command: shows the diagnostic as an annotation on the pull request.
pub fn render_github(diag: &Diagnostic, files: &[SourceFile]) -> String {
    let json = to_json(diag, files);
    let level = match diag.severity {
        Severity::Error => "error",
        Severity::Warning => "warning",
    };
    let mut out = format!("::{level} ");
    let mut props = Vec::new();
    if let (Some(file), Some(line), Some(col)) = (json.file, json.line, json.column) {
        props.push(format!("file={}", escape_property(file)));
        props.push(format!("line={line}"));
        props.push(format!("col={col}"));
        if let (Some(el), Some(ec)) = (json.end_line, json.end_column) {
            props.push(format!("endLine={el}"));
            props.push(format!("endColumn={ec}"));
        }
    }
    props.push(format!(
        "title={}",
        escape_property(&format!("weft {}", diag.code.name()))
    ));
    out.push_str(&props.join(","));
    let mut message = diag.message.clone();
    if let Some(help) = &diag.help {
        let _ = write!(message, "\nhelp: {help}");
    }
    let _ = write!(out, "::{}", escape_data(&message));
    out
}

fn escape_data(s: &str) -> String {
    s.replace('%', "%25")
        .replace('\r', "%0D")
        .replace('\n', "%0A")
}

fn escape_property(s: &str) -> String {
    escape_data(s).replace(':', "%3A").replace(',', "%2C")
}

/// The reference page of every diagnostic code, generated from [`Code::doc`].
pub fn codes_markdown() -> String {
    let mut out = String::from(
        "# Diagnostic codes\n\n<!-- generated from compiler/src/diagnostic.rs; `WEFT_BLESS=1 cargo test` rewrites it -->\n\n",
    );
    for code in Code::ALL {
        let (what, why, example) = code.doc();
        let _ = write!(
            out,
            "## `{}`\n\n{what}\n\n**Why:** {why}\n\n```yaml\n{example}\n```\n\n",
            code.name()
        );
    }
    out
}

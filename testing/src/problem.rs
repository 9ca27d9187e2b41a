//! A problem in a test file or a failed expectation, with the place in the test file it is
//! about, rendered like the compiler's diagnostics: rustc-style (annotate-snippets), JSON, or a
//! GitHub annotation.

use annotate_snippets::{AnnotationKind, Level, Renderer, Snippet};
use serde::Serialize;
use weft_compiler::source::SourceFile;
use weft_compiler::yaml::Span;

/// One problem: a file that cannot be run as a test, or an expectation that failed.
#[derive(Debug, Clone, PartialEq)]
pub struct Problem {
    /// A stable kebab-case name (`unknown-step`, `wrong-output`, `unmatched-request`, ...).
    pub code: &'static str,
    pub message: String,
    /// Index of the test file in the run's files.
    pub file: usize,
    pub span: Span,
    /// Shown under the caret.
    pub label: String,
    pub help: Option<String>,
}

impl Problem {
    pub fn new(
        code: &'static str,
        message: impl Into<String>,
        file: usize,
        span: Span,
        label: impl Into<String>,
    ) -> Self {
        Problem {
            code,
            message: message.into(),
            file,
            span,
            label: label.into(),
            help: None,
        }
    }

    pub fn help(mut self, help: Option<String>) -> Self {
        self.help = help;
        self
    }

    /// rustc-style text with the test file's line and a caret.
    pub fn render_human(&self, files: &[SourceFile], color: bool) -> String {
        let source = &files[self.file];
        let snippet = Snippet::source(source.text.as_str())
            .path(source.path.as_str())
            .annotation(
                AnnotationKind::Primary
                    .span(source.clamp(self.span.clone()))
                    .label(self.label.as_str()),
            );
        let mut group = Level::ERROR
            .primary_title(self.message.as_str())
            .id(self.code)
            .element(snippet);
        if let Some(help) = &self.help {
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

    /// The file, line and column (1-based) the problem is about.
    pub fn location<'f>(&self, files: &'f [SourceFile]) -> (&'f str, usize, usize) {
        let source = &files[self.file];
        let (line, column) = source.line_col(self.span.start);
        (source.path.as_str(), line, column)
    }

    pub fn to_json(&self, files: &[SourceFile]) -> ProblemJson {
        let (file, line, column) = self.location(files);
        ProblemJson {
            code: self.code,
            severity: "error",
            message: self.message.clone(),
            file: file.to_string(),
            line,
            column,
            label: self.label.clone(),
            help: self.help.clone(),
        }
    }

    /// A GitHub Actions `::error` annotation on the test file's line.
    pub fn render_github(&self, files: &[SourceFile], test: &str) -> String {
        let (file, line, column) = self.location(files);
        let mut message = format!("{}: {} ({})", test, self.message, self.label);
        if let Some(help) = &self.help {
            message.push_str("\nhelp: ");
            message.push_str(help);
        }
        format!(
            "::error file={},line={line},col={column},title={}::{}",
            escape_property(file),
            escape_property(&format!("weft test {}", self.code)),
            escape_data(&message)
        )
    }
}

/// A problem for machines (`--format json`).
#[derive(Debug, Clone, Serialize)]
pub struct ProblemJson {
    pub code: &'static str,
    /// Always `error` (the field `weft check --format json` also has).
    pub severity: &'static str,
    pub message: String,
    pub file: String,
    pub line: usize,
    pub column: usize,
    pub label: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub help: Option<String>,
}

fn escape_data(s: &str) -> String {
    s.replace('%', "%25")
        .replace('\r', "%0D")
        .replace('\n', "%0A")
}

fn escape_property(s: &str) -> String {
    escape_data(s).replace(':', "%3A").replace(',', "%2C")
}

//! Printing diagnostics in the format the user asked for, with colours only on a terminal.

use std::io::{IsTerminal, Write};

use clap::ValueEnum;
use weft_compiler::Compilation;
use weft_compiler::diagnostic::{render_github, render_human, to_json};
use weft_compiler::repo::Sources;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ColorChoice {
    Auto,
    Always,
    Never,
}

impl ColorChoice {
    /// Whether to colour output written to stdout.
    pub fn stdout(self) -> bool {
        match self {
            ColorChoice::Always => true,
            ColorChoice::Never => false,
            ColorChoice::Auto => {
                std::env::var_os("NO_COLOR").is_none() && std::io::stdout().is_terminal()
            }
        }
    }

    /// Whether to colour output written to stderr.
    pub fn stderr(self) -> bool {
        match self {
            ColorChoice::Always => true,
            ColorChoice::Never => false,
            ColorChoice::Auto => {
                std::env::var_os("NO_COLOR").is_none() && std::io::stderr().is_terminal()
            }
        }
    }
}

/// How a command's result is printed on stdout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    /// Lines or a table for people.
    Human,
    /// One JSON document.
    Json,
}

/// How diagnostics are printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum DiagnosticFormat {
    /// rustc-style, with the source line and a caret (stderr).
    Human,
    /// One JSON object per diagnostic, one per line (stdout).
    Json,
    /// GitHub Actions annotations (stdout).
    Github,
}

/// Prints every diagnostic; human output also gets a summary line.
pub fn print(
    compilation: &Compilation,
    sources: &Sources,
    format: DiagnosticFormat,
    color: ColorChoice,
) {
    let files = &sources.files;
    match format {
        DiagnosticFormat::Human => {
            let color = color.stderr();
            let mut err = std::io::stderr().lock();
            for d in &compilation.diagnostics {
                let _ = write!(err, "{}", render_human(d, files, color));
            }
        }
        DiagnosticFormat::Json => {
            let mut out = std::io::stdout().lock();
            for d in &compilation.diagnostics {
                let _ = writeln!(
                    out,
                    "{}",
                    serde_json::to_string(&to_json(d, files)).unwrap_or_default()
                );
            }
        }
        DiagnosticFormat::Github => {
            let mut out = std::io::stdout().lock();
            for d in &compilation.diagnostics {
                let _ = writeln!(out, "{}", render_github(d, files));
            }
        }
    }
}

/// `3 errors, 1 warning` / `no problems`.
pub fn summary(compilation: &Compilation) -> String {
    let plural = |n: usize, word: &str| format!("{n} {word}{}", if n == 1 { "" } else { "s" });
    match (compilation.error_count(), compilation.warning_count()) {
        (0, 0) => "no problems".into(),
        (e, 0) => plural(e, "error"),
        (0, w) => plural(w, "warning"),
        (e, w) => format!("{}, {}", plural(e, "error"), plural(w, "warning")),
    }
}

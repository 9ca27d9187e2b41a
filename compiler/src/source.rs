//! Source files as the compiler sees them: a repo-relative path, the text, and line lookups.

use std::ops::Range;

/// Index of a file in [`crate::Sources`].
pub type FileId = usize;

/// One file of a repository, addressed by its path relative to the repository root
/// (always with `/` separators so that diagnostics and bundles do not depend on the host).
#[derive(Debug, Clone)]
pub struct SourceFile {
    pub path: String,
    pub text: String,
    /// Why the file could not be read (its text is then empty): a symbolic link out of the
    /// repository, not a regular file, too large, not UTF-8. Reported as `unreadable-file`.
    pub unreadable: Option<String>,
    line_starts: Vec<usize>,
}

impl SourceFile {
    pub fn new(path: impl Into<String>, text: impl Into<String>) -> Self {
        let text = text.into();
        let mut line_starts = vec![0];
        line_starts.extend(text.match_indices('\n').map(|(i, _)| i + 1));
        SourceFile {
            path: path.into(),
            text,
            unreadable: None,
            line_starts,
        }
    }

    /// A file that could not be read, and why (never its content).
    pub fn unreadable(path: impl Into<String>, reason: impl Into<String>) -> Self {
        SourceFile {
            unreadable: Some(reason.into()),
            ..SourceFile::new(path, "")
        }
    }

    /// 1-based line and column (in characters) of a byte offset.
    pub fn line_col(&self, offset: usize) -> (usize, usize) {
        let offset = offset.min(self.text.len());
        let line = self.line_starts.partition_point(|&s| s <= offset) - 1;
        let start = self.line_starts[line];
        let col = self.text[start..offset].chars().count();
        (line + 1, col + 1)
    }

    /// Clamps a byte range to the text and to character boundaries.
    pub fn clamp(&self, span: Range<usize>) -> Range<usize> {
        let mut start = span.start.min(self.text.len());
        let mut end = span.end.min(self.text.len()).max(start);
        while !self.text.is_char_boundary(start) {
            start -= 1;
        }
        while !self.text.is_char_boundary(end) {
            end += 1;
        }
        start..end
    }
}

/// Maps the character indices that the YAML scanner reports to byte offsets.
pub struct CharToByte<'a> {
    text: &'a str,
    /// `None` for ASCII text, where the two coincide.
    offsets: Option<Vec<usize>>,
}

impl<'a> CharToByte<'a> {
    pub fn new(text: &'a str) -> Self {
        let offsets = (!text.is_ascii()).then(|| {
            let mut v: Vec<usize> = text.char_indices().map(|(i, _)| i).collect();
            v.push(text.len());
            v
        });
        CharToByte { text, offsets }
    }

    pub fn byte(&self, char_index: usize) -> usize {
        match &self.offsets {
            None => char_index.min(self.text.len()),
            Some(v) => v.get(char_index).copied().unwrap_or(self.text.len()),
        }
    }
}

//! A spanned YAML tree: every key and value keeps the exact byte range it came from, so that
//! schema errors (reported by JSON path) and semantic errors point at the right characters.

use std::ops::Range;

use saphyr_parser::{Event, Parser, ScalarStyle, Span as YamlSpan};
use serde_json::{Map, Number, Value};

use crate::source::CharToByte;

/// A byte range in one source file.
pub type Span = Range<usize>;

/// A YAML node with its span.
#[derive(Debug, Clone)]
pub struct Node {
    pub span: Span,
    pub kind: NodeKind,
}

#[derive(Debug, Clone)]
pub enum NodeKind {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    /// A string; `quoted` is false for plain scalars.
    Str(String, bool),
    Seq(Vec<Node>),
    Map(Vec<Entry>),
}

#[derive(Debug, Clone)]
pub struct Entry {
    pub key: String,
    pub key_span: Span,
    pub value: Node,
}

/// One segment of a path into a document: a mapping key or a sequence index.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Seg {
    Key(String),
    Index(usize),
}

impl From<&str> for Seg {
    fn from(s: &str) -> Self {
        Seg::Key(s.to_string())
    }
}
impl From<String> for Seg {
    fn from(s: String) -> Self {
        Seg::Key(s)
    }
}
impl From<&String> for Seg {
    fn from(s: &String) -> Self {
        Seg::Key(s.clone())
    }
}
impl From<usize> for Seg {
    fn from(i: usize) -> Self {
        Seg::Index(i)
    }
}

/// A path into a document, e.g. `flows/order-created/steps/2/with`.
pub type Path = Vec<Seg>;

/// Builds a [`Path`] from mixed keys and indices: `path!["flows", name, "steps", 2]`.
#[macro_export]
macro_rules! path {
    ($($seg:expr),* $(,)?) => { Vec::<$crate::yaml::Seg>::from([$($crate::yaml::Seg::from($seg)),*]) };
}

/// How deep mappings and sequences may nest. Real files stay below 15 levels; the bound keeps
/// every recursive walk of the tree (conversion, schema validation, drop) far from the stack's
/// end. (The scanner itself bounds flow collections at 255 levels, block ones not at all.)
pub const MAX_DEPTH: usize = 64;

/// A YAML syntax error.
#[derive(Debug, Clone)]
pub struct SyntaxError {
    pub message: String,
    pub span: Span,
    pub label: String,
    /// The document nests deeper than [`MAX_DEPTH`] (reported as `too-deep`).
    pub too_deep: bool,
    pub help: Option<String>,
}

impl SyntaxError {
    fn new(message: impl Into<String>, span: Span, label: impl Into<String>) -> Self {
        SyntaxError {
            message: message.into(),
            span,
            label: label.into(),
            too_deep: false,
            help: None,
        }
    }
}

/// Parses one YAML document into a spanned tree.
///
/// The YAML 1.2 core schema decides scalar types (`yes` is a string, `0777` an integer).
/// Duplicate keys, anchors/aliases, tags and several documents in one file are errors: they make
/// configuration ambiguous and review harder.
pub fn parse(text: &str) -> Result<Node, SyntaxError> {
    let bytes = CharToByte::new(text);
    let mut builder = Builder {
        text,
        bytes: &bytes,
        stack: Vec::new(),
        root: None,
        documents: 0,
    };
    for event in Parser::new_from_str(text) {
        match event {
            Ok((event, span)) => builder.event(event, span)?,
            Err(e) => {
                let at = bytes.byte(e.marker().index());
                return Err(SyntaxError::new(
                    format!("invalid YAML: {}", e.info()),
                    at..(at + 1).min(text.len()).max(at),
                    e.info(),
                ));
            }
        }
    }
    Ok(builder.root.unwrap_or(Node {
        span: 0..0,
        kind: NodeKind::Null,
    }))
}

enum Frame {
    Seq {
        start: usize,
        items: Vec<Node>,
    },
    Map {
        start: usize,
        entries: Vec<Entry>,
        pending_key: Option<(String, Span)>,
    },
}

struct Builder<'a, 'b> {
    text: &'b str,
    bytes: &'a CharToByte<'b>,
    stack: Vec<Frame>,
    root: Option<Node>,
    documents: usize,
}

impl Builder<'_, '_> {
    fn span(&self, span: YamlSpan) -> Span {
        self.bytes.byte(span.start.index())..self.bytes.byte(span.end.index())
    }

    fn event(&mut self, event: Event<'_>, yspan: YamlSpan) -> Result<(), SyntaxError> {
        let span = self.span(yspan);
        match event {
            Event::DocumentStart(_) => {
                self.documents += 1;
                if self.documents > 1 {
                    return Err(SyntaxError::new(
                        "a file holds one YAML document",
                        span,
                        "second document starts here",
                    ));
                }
            }
            Event::Alias(_) => {
                return Err(SyntaxError::new(
                    "YAML aliases are not supported",
                    span,
                    "alias",
                ));
            }
            Event::Scalar(value, style, anchor, tag) => {
                if anchor != 0 || tag.is_some() {
                    return Err(SyntaxError::new(
                        "YAML anchors and tags are not supported",
                        span,
                        "anchor or tag",
                    ));
                }
                let kind = scalar(&value, style);
                self.push(Node { span, kind })?;
            }
            Event::SequenceStart(anchor, tag) | Event::MappingStart(anchor, tag)
                if anchor != 0 || tag.is_some() =>
            {
                return Err(SyntaxError::new(
                    "YAML anchors and tags are not supported",
                    span,
                    "anchor or tag",
                ));
            }
            Event::SequenceStart(..) | Event::MappingStart(..) if self.stack.len() >= MAX_DEPTH => {
                return Err(SyntaxError {
                    too_deep: true,
                    help: Some(format!(
                        "flatten the structure: weft files nest at most {MAX_DEPTH} levels deep"
                    )),
                    ..SyntaxError::new(
                        format!("YAML nested more than {MAX_DEPTH} levels deep"),
                        span,
                        format!("level {} starts here", MAX_DEPTH + 1),
                    )
                });
            }
            Event::SequenceStart(..) => self.stack.push(Frame::Seq {
                start: span.start,
                items: Vec::new(),
            }),
            Event::MappingStart(..) => self.stack.push(Frame::Map {
                start: span.start,
                entries: Vec::new(),
                pending_key: None,
            }),
            Event::SequenceEnd => {
                if let Some(Frame::Seq { start, items }) = self.stack.pop() {
                    let end = items.last().map_or(span.end, |n| n.span.end).max(start);
                    self.push(Node {
                        span: start..end,
                        kind: NodeKind::Seq(items),
                    })?;
                }
            }
            Event::MappingEnd => {
                if let Some(Frame::Map { start, entries, .. }) = self.stack.pop() {
                    let end = entries
                        .last()
                        .map_or(span.end, |e| e.value.span.end)
                        .max(start);
                    self.push(Node {
                        span: start..end,
                        kind: NodeKind::Map(entries),
                    })?;
                }
            }
            Event::StreamStart | Event::StreamEnd | Event::DocumentEnd | Event::Nothing => {}
        }
        Ok(())
    }

    fn push(&mut self, node: Node) -> Result<(), SyntaxError> {
        match self.stack.last_mut() {
            None => self.root = Some(node),
            Some(Frame::Seq { items, .. }) => items.push(node),
            Some(Frame::Map {
                entries,
                pending_key,
                ..
            }) => match pending_key.take() {
                None => {
                    let key = match node.kind {
                        NodeKind::Str(s, _) => s,
                        NodeKind::Int(i) => i.to_string(),
                        NodeKind::Bool(b) => b.to_string(),
                        NodeKind::Float(f) => f.to_string(),
                        NodeKind::Null => "null".to_string(),
                        NodeKind::Seq(_) | NodeKind::Map(_) => {
                            return Err(complex_key(self.text, node.span));
                        }
                    };
                    if let Some(first) = entries.iter().find(|e| e.key == key) {
                        let first_line = first.key_span.start;
                        return Err(SyntaxError::new(
                            format!("duplicate key `{key}`"),
                            node.span,
                            format!("`{key}` is already set (byte {first_line})"),
                        ));
                    }
                    *pending_key = Some((key, node.span));
                }
                Some((key, key_span)) => entries.push(Entry {
                    key,
                    key_span,
                    value: node,
                }),
            },
        }
        Ok(())
    }
}

/// A mapping or sequence used as a mapping key; usually an unquoted template, which YAML reads
/// as a flow mapping (`value: {{ x }}` is `value: { { x }: null }`).
fn complex_key(text: &str, span: Span) -> SyntaxError {
    let before = text.get(..span.start).unwrap_or_default().trim_end();
    let template =
        before.ends_with('{') && text.get(span.clone()).is_some_and(|k| k.starts_with('{'));
    SyntaxError {
        help: template.then(|| {
            "an unquoted `{{` starts a YAML mapping: quote the template: `\"{{ … }}\"`".to_string()
        }),
        ..SyntaxError::new("mapping keys must be plain strings", span, "complex key")
    }
}

/// Resolves a scalar with the YAML 1.2 core schema.
fn scalar(value: &str, style: ScalarStyle) -> NodeKind {
    if style != ScalarStyle::Plain {
        return NodeKind::Str(value.to_string(), true);
    }
    match value {
        "" | "~" | "null" | "Null" | "NULL" => return NodeKind::Null,
        "true" | "True" | "TRUE" => return NodeKind::Bool(true),
        "false" | "False" | "FALSE" => return NodeKind::Bool(false),
        ".inf" | ".Inf" | ".INF" | "+.inf" | "+.Inf" | "+.INF" => {
            return NodeKind::Float(f64::INFINITY);
        }
        "-.inf" | "-.Inf" | "-.INF" => return NodeKind::Float(f64::NEG_INFINITY),
        _ => {}
    }
    let digits = value.strip_prefix(['-', '+']).unwrap_or(value);
    if !digits.is_empty()
        && digits.bytes().all(|b| b.is_ascii_digit())
        && let Ok(i) = value.parse::<i64>()
    {
        return NodeKind::Int(i);
    }
    if let Some(hex) = value.strip_prefix("0x")
        && let Ok(i) = i64::from_str_radix(hex, 16)
    {
        return NodeKind::Int(i);
    }
    if let Some(oct) = value.strip_prefix("0o")
        && let Ok(i) = i64::from_str_radix(oct, 8)
    {
        return NodeKind::Int(i);
    }
    let looks_float = value
        .bytes()
        .all(|b| b.is_ascii_digit() || matches!(b, b'.' | b'e' | b'E' | b'-' | b'+'))
        && value.bytes().any(|b| b.is_ascii_digit());
    if looks_float && let Ok(f) = value.parse::<f64>() {
        return NodeKind::Float(f);
    }
    NodeKind::Str(value.to_string(), false)
}

impl Node {
    /// Converts to a JSON value (what the schema validator and serde see).
    pub fn to_json(&self) -> Value {
        match &self.kind {
            NodeKind::Null => Value::Null,
            NodeKind::Bool(b) => Value::Bool(*b),
            NodeKind::Int(i) => Value::Number((*i).into()),
            NodeKind::Float(f) => Number::from_f64(*f).map_or(Value::Null, Value::Number),
            NodeKind::Str(s, _) => Value::String(s.clone()),
            NodeKind::Seq(items) => Value::Array(items.iter().map(Node::to_json).collect()),
            NodeKind::Map(entries) => {
                let mut map = Map::with_capacity(entries.len());
                for e in entries {
                    map.insert(e.key.clone(), e.value.to_json());
                }
                Value::Object(map)
            }
        }
    }

    pub fn get(&self, seg: &Seg) -> Option<&Node> {
        match (&self.kind, seg) {
            (NodeKind::Map(entries), Seg::Key(k)) => {
                entries.iter().find(|e| &e.key == k).map(|e| &e.value)
            }
            (NodeKind::Seq(items), Seg::Index(i)) => items.get(*i),
            _ => None,
        }
    }

    pub fn entry(&self, key: &str) -> Option<&Entry> {
        match &self.kind {
            NodeKind::Map(entries) => entries.iter().find(|e| e.key == key),
            _ => None,
        }
    }

    /// The node at `path`, or the deepest ancestor that exists.
    pub fn at(&self, path: &[Seg]) -> &Node {
        let mut node = self;
        for seg in path {
            match node.get(seg) {
                Some(next) => node = next,
                None => break,
            }
        }
        node
    }

    /// The span of the key that names the node at `path` (for "unknown key" errors);
    /// falls back to the value's span.
    pub fn key_span(&self, path: &[Seg]) -> Span {
        if let Some((Seg::Key(last), parent)) = path.split_last() {
            let parent_node = self.at(parent);
            if let Some(e) = parent_node.entry(last) {
                return e.key_span.clone();
            }
        }
        self.at(path).span.clone()
    }

    pub fn as_str(&self) -> Option<&str> {
        match &self.kind {
            NodeKind::Str(s, _) => Some(s),
            _ => None,
        }
    }
}

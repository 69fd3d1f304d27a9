//! YAML documents that remember where every value came from.
//!
//! Users ask "what is wrong with my manifest?", so every error calxdp gives about a file names the file,
//! the line and column, and the field path (`spec.ingress[0].action`). Serde-style deserialisation loses
//! positions on the way, so documents are read into a small tree of [`Node`]s that each carry their
//! [`Pos`], and typed values are read out of it through a [`Field`], which knows its path.

use std::collections::BTreeMap;
use std::fmt;

use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser};
use yaml_rust2::scanner::{Marker, TScalarStyle};

/// Where a text came from: a file, or a block of a file (a scenario's `resources: |`), so that positions
/// inside the text can be reported as positions in the file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Origin {
    /// The file's path as the user gave it.
    pub file: String,
    /// Lines of the file before the text's first line.
    pub line_offset: usize,
    /// Columns of indentation removed from every line of the text.
    pub col_offset: usize,
}

impl Origin {
    pub fn file(file: impl Into<String>) -> Origin {
        Origin { file: file.into(), line_offset: 0, col_offset: 0 }
    }
}

/// A 1-based line and column in the text a node was parsed from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Pos {
    pub line: usize,
    pub col: usize,
}

/// One YAML value.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    Null,
    /// A scalar's text; `quoted` tells `"8080"` (a string) from `8080` (a number) where that matters.
    Scalar {
        text: String,
        quoted: bool,
    },
    Seq(Vec<Node>),
    Map(Vec<(Node, Node)>),
}

#[derive(Clone, Debug, PartialEq)]
pub struct Node {
    pub value: Value,
    pub pos: Pos,
}

/// An error in a user's file: where, which field, and what was expected.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LoadError {
    pub file: String,
    pub line: usize,
    pub col: usize,
    /// The field path, e.g. `spec.ingress[0].action`; empty for errors about the whole document.
    pub field: String,
    pub message: String,
}

impl fmt::Display for LoadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // An error about a whole file (it cannot be read, it is not a regular file) has no position.
        if self.line == 0 {
            write!(f, "{}: ", self.file)?;
        } else {
            write!(f, "{}:{}:{}: ", self.file, self.line, self.col)?;
        }
        if !self.field.is_empty() {
            write!(f, "{}: ", self.field)?;
        }
        f.write_str(&self.message)
    }
}

impl std::error::Error for LoadError {}

impl LoadError {
    /// An error at `pos` of a text from `origin`.
    pub fn at(origin: &Origin, pos: Pos, field: impl Into<String>, message: impl Into<String>) -> LoadError {
        LoadError {
            file: origin.file.clone(),
            line: pos.line + origin.line_offset,
            col: pos.col + origin.col_offset,
            field: field.into(),
            message: message.into(),
        }
    }
}

/// Parses every document of a YAML stream. An empty document (or a stream of only comments) yields no node.
pub fn parse_documents(text: &str, origin: &Origin) -> Result<Vec<Node>, LoadError> {
    // A NUL would end the text for the parser without a word: what follows it would silently not exist.
    if let Some(at) = text.find('\0') {
        let line = text[..at].matches('\n').count() + 1;
        let col = at - text[..at].rfind('\n').map_or(0, |n| n + 1) + 1;
        return Err(LoadError::at(
            origin,
            Pos { line, col },
            "",
            "the file contains a NUL byte; a YAML manifest is text (is this a binary file?)",
        ));
    }
    let mut builder = TreeBuilder::default();
    let mut parser = Parser::new_from_str(text);
    // Events one by one, not the parser's `load`, which recurses once per nesting level: a document
    // thousands of levels deep would overflow the stack before the builder could refuse it.
    loop {
        match parser.next_token() {
            Err(e) => {
                let m = e.marker();
                return Err(LoadError::at(origin, pos_of(m), "", format!("YAML syntax error: {}", e.info())));
            }
            Ok((Event::StreamEnd, _)) => break,
            Ok((ev, mark)) => builder.on_event(ev, mark),
        }
        if builder.error.is_some() {
            break;
        }
    }
    if let Some((pos, message)) = builder.error {
        return Err(LoadError::at(origin, pos, "", message));
    }
    Ok(builder.docs.into_iter().filter(|d| d.value != Value::Null).collect())
}

fn pos_of(m: &Marker) -> Pos {
    // yaml-rust2 counts lines from 1 and columns from 0.
    Pos { line: m.line(), col: m.col() + 1 }
}

/// Deepest nesting of collections a document may have: policies need a handful of levels; a document
/// thousands deep is an attack on the stack of whatever walks it.
pub const MAX_DEPTH: usize = 64;
/// Most values one text may expand to through aliases: anchors and aliases are legitimate YAML, but nested
/// aliases grow exponentially (a "billion laughs" document of 640 bytes is billions of values).
pub const MAX_ALIAS_VALUES: usize = 100_000;

/// Builds [`Node`] trees from the parser's events.
#[derive(Default)]
struct TreeBuilder {
    docs: Vec<Node>,
    /// Open collections: the node being filled, for maps a key waiting for its value, and how many values
    /// the collection holds so far (itself included).
    stack: Vec<(Node, Option<Node>, usize)>,
    /// Anchored values and how many values each is.
    anchors: BTreeMap<usize, (Node, usize)>,
    /// Anchor ids of the open collections, to record them when they close.
    open_anchors: Vec<usize>,
    /// Values added by expanding aliases so far.
    expanded: usize,
    /// Collections opened past [`MAX_DEPTH`] that are being skipped.
    skipping: usize,
    error: Option<(Pos, String)>,
}

impl TreeBuilder {
    fn fail(&mut self, pos: Pos, message: String) {
        if self.error.is_none() {
            self.error = Some((pos, message));
        }
    }

    fn push_value(&mut self, node: Node) {
        self.push_weighted(node, 1);
    }

    fn push_weighted(&mut self, node: Node, weight: usize) {
        match self.stack.last_mut() {
            None => self.docs.push(node),
            Some((parent, pending_key, count)) => match &mut parent.value {
                Value::Seq(items) => {
                    items.push(node);
                    *count += weight;
                }
                Value::Map(entries) => {
                    *count += weight;
                    match pending_key.take() {
                        None => *pending_key = Some(node),
                        Some(key) => entries.push((key, node)),
                    }
                }
                _ => {}
            },
        }
    }

    fn open(&mut self, value: Value, pos: Pos, anchor: usize) {
        if self.skipping > 0 || self.stack.len() >= MAX_DEPTH {
            self.skipping += 1;
            self.fail(pos, format!("YAML nested deeper than {MAX_DEPTH} levels; no Calico resource needs that"));
            return;
        }
        self.stack.push((Node { value, pos }, None, 1));
        self.open_anchors.push(anchor);
    }

    fn close(&mut self) {
        if self.skipping > 0 {
            self.skipping -= 1;
            return;
        }
        if let Some((node, _, weight)) = self.stack.pop() {
            let anchor = self.open_anchors.pop().unwrap_or(0);
            if anchor != 0 {
                self.anchors.insert(anchor, (node.clone(), weight));
            }
            self.push_weighted(node, weight);
        }
    }
}

impl MarkedEventReceiver for TreeBuilder {
    fn on_event(&mut self, ev: Event, mark: Marker) {
        let pos = pos_of(&mark);
        match ev {
            Event::Scalar(text, style, anchor, tag) => {
                let quoted = !matches!(style, TScalarStyle::Plain);
                let is_null_tag = tag.as_ref().is_some_and(|t| t.suffix == "null");
                let value = if is_null_tag || (!quoted && matches!(text.as_str(), "" | "~" | "null" | "Null" | "NULL"))
                {
                    Value::Null
                } else {
                    let explicit_str = tag.as_ref().is_some_and(|t| t.suffix == "str");
                    Value::Scalar { text, quoted: quoted || explicit_str }
                };
                if self.skipping > 0 {
                    return;
                }
                let node = Node { value, pos };
                if anchor != 0 {
                    self.anchors.insert(anchor, (node.clone(), 1));
                }
                self.push_value(node);
            }
            Event::SequenceStart(anchor, _) => self.open(Value::Seq(Vec::new()), pos, anchor),
            Event::MappingStart(anchor, _) => self.open(Value::Map(Vec::new()), pos, anchor),
            Event::SequenceEnd | Event::MappingEnd => self.close(),
            Event::Alias(_) if self.skipping > 0 => {}
            Event::Alias(id) => match self.anchors.get(&id).map(|(n, w)| (n.value.clone(), *w)) {
                Some((_, weight)) if self.expanded + weight > MAX_ALIAS_VALUES => {
                    self.fail(
                        pos,
                        format!(
                            "YAML aliases expand to more than {MAX_ALIAS_VALUES} values (nested aliases grow \
                             exponentially); write the values out instead"
                        ),
                    );
                    self.push_value(Node { value: Value::Null, pos });
                }
                Some((value, weight)) => {
                    self.expanded += weight;
                    self.push_weighted(Node { value, pos }, weight);
                }
                None => {
                    self.fail(pos, "YAML alias refers to an unknown anchor".into());
                    self.push_value(Node { value: Value::Null, pos });
                }
            },
            // Anchors do not reach across documents.
            Event::DocumentStart => self.anchors.clear(),
            Event::DocumentEnd => {
                // A document with no content still produced no node; keep documents aligned with the stream.
                if self.docs.is_empty() && self.stack.is_empty() {
                    // nothing to do: empty leading document
                }
            }
            Event::StreamStart | Event::StreamEnd | Event::Nothing => {}
        }
    }
}

/// A node being read as a typed value: knows its origin and its field path for error messages.
#[derive(Clone, Copy, Debug)]
pub struct Field<'a> {
    pub node: &'a Node,
    pub origin: &'a Origin,
    path: &'a PathSeg<'a>,
}

/// A field path as a linked list on the stack, rendered only when an error is made.
#[derive(Debug)]
pub enum PathSeg<'a> {
    Root,
    Key(&'a PathSeg<'a>, String),
    Index(&'a PathSeg<'a>, usize),
}

impl fmt::Display for PathSeg<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PathSeg::Root => Ok(()),
            PathSeg::Key(parent, k) => {
                if matches!(parent, PathSeg::Root) {
                    write!(f, "{k}")
                } else {
                    write!(f, "{parent}.{k}")
                }
            }
            PathSeg::Index(parent, i) => write!(f, "{parent}[{i}]"),
        }
    }
}

pub static ROOT: PathSeg<'static> = PathSeg::Root;

impl<'a> Field<'a> {
    pub fn root(node: &'a Node, origin: &'a Origin) -> Field<'a> {
        Field { node, origin, path: &ROOT }
    }

    pub fn path(&self) -> String {
        self.path.to_string()
    }

    pub fn pos(&self) -> Pos {
        self.node.pos
    }

    /// An error about this field.
    pub fn error(&self, message: impl Into<String>) -> LoadError {
        LoadError::at(self.origin, self.node.pos, self.path(), message)
    }

    pub fn is_null(&self) -> bool {
        self.node.value == Value::Null
    }

    fn kind_name(&self) -> &'static str {
        match &self.node.value {
            Value::Null => "nothing",
            Value::Scalar { .. } => "a scalar",
            Value::Seq(_) => "a list",
            Value::Map(_) => "a mapping",
        }
    }

    /// The map entries of this node (a null node reads as an empty map).
    pub fn entries(&self) -> Result<&'a [(Node, Node)], LoadError> {
        match &self.node.value {
            Value::Map(entries) => Ok(entries),
            Value::Null => Ok(&[]),
            _ => Err(self.error(format!("expected a mapping, found {}", self.kind_name()))),
        }
    }

    /// Fails if the mapping has a key not in `allowed`, as Calico's strict decoding does.
    pub fn only_keys(&self, allowed: &[&str]) -> Result<(), LoadError> {
        for (k, _) in self.entries()? {
            let key = scalar_text(k).unwrap_or("");
            if !allowed.contains(&key) {
                let mut known: Vec<&str> = allowed.to_vec();
                known.sort_unstable();
                return Err(LoadError::at(
                    self.origin,
                    k.pos,
                    self.path(),
                    format!("unknown field '{key}' (known fields: {})", known.join(", ")),
                ));
            }
        }
        Ok(())
    }

    /// Looks up `key` in this mapping and hands the child to `f` (the child's path lives on this stack frame).
    pub fn with<R>(
        &self,
        key: &str,
        f: impl FnOnce(Option<Field<'_>>) -> Result<R, LoadError>,
    ) -> Result<R, LoadError> {
        let entries = self.entries()?;
        let found = entries.iter().find(|(k, _)| scalar_text(k) == Some(key));
        match found {
            None => f(None),
            Some((_, v)) => {
                let seg = PathSeg::Key(self.path, key.to_string());
                let child = Field { node: v, origin: self.origin, path: &seg };
                if child.is_null() {
                    f(None)
                } else {
                    f(Some(child))
                }
            }
        }
    }

    /// Like [`Field::with`] but the key must be present and non-null.
    pub fn require<R>(&self, key: &str, f: impl FnOnce(Field<'_>) -> Result<R, LoadError>) -> Result<R, LoadError> {
        let path = self.path;
        let origin = self.origin;
        let pos = self.node.pos;
        self.with(key, |child| match child {
            Some(c) => f(c),
            None => {
                let seg = PathSeg::Key(path, key.to_string());
                Err(LoadError::at(origin, pos, seg.to_string(), "required field is missing"))
            }
        })
    }

    /// Reads each item of a list (a null node reads as an empty list).
    pub fn each<R>(&self, mut f: impl FnMut(Field<'_>) -> Result<R, LoadError>) -> Result<Vec<R>, LoadError> {
        let items: &[Node] = match &self.node.value {
            Value::Seq(items) => items,
            Value::Null => &[],
            _ => return Err(self.error(format!("expected a list, found {}", self.kind_name()))),
        };
        let mut out = Vec::with_capacity(items.len());
        for (i, item) in items.iter().enumerate() {
            let seg = PathSeg::Index(self.path, i);
            out.push(f(Field { node: item, origin: self.origin, path: &seg })?);
        }
        Ok(out)
    }

    /// The scalar's text; numbers and booleans read as their text.
    pub fn str(&self) -> Result<&'a str, LoadError> {
        match &self.node.value {
            Value::Scalar { text, .. } => Ok(text),
            _ => Err(self.error(format!("expected a string, found {}", self.kind_name()))),
        }
    }

    pub fn string(&self) -> Result<String, LoadError> {
        self.str().map(str::to_string)
    }

    /// True for a quoted scalar (`"80"`), which Calico reads as a string even if it looks like a number.
    pub fn is_quoted(&self) -> bool {
        matches!(&self.node.value, Value::Scalar { quoted: true, .. })
    }

    pub fn bool(&self) -> Result<bool, LoadError> {
        match self.str()? {
            "true" | "True" | "TRUE" => Ok(true),
            "false" | "False" | "FALSE" => Ok(false),
            other => Err(self.error(format!("expected true or false, found '{other}'"))),
        }
    }

    pub fn f64(&self) -> Result<f64, LoadError> {
        let text = self.str()?;
        match text.parse::<f64>() {
            Ok(v) if v.is_finite() => Ok(v),
            _ => Err(self.error(format!("expected a number, found '{text}'"))),
        }
    }

    /// An unsigned integer no larger than `max`.
    pub fn uint(&self, max: u64) -> Result<u64, LoadError> {
        let text = self.str()?;
        match text.parse::<u64>() {
            Ok(v) if v <= max => Ok(v),
            _ => Err(self.error(format!("expected a whole number from 0 to {max}, found '{text}'"))),
        }
    }

    /// A mapping of strings to strings (labels, annotations).
    pub fn string_map(&self) -> Result<BTreeMap<String, String>, LoadError> {
        let mut out = BTreeMap::new();
        for (k, v) in self.entries()? {
            let key = scalar_text(k)
                .ok_or_else(|| LoadError::at(self.origin, k.pos, self.path(), "expected a string key"))?;
            let seg = PathSeg::Key(self.path, key.to_string());
            let child = Field { node: v, origin: self.origin, path: &seg };
            let value = if child.is_null() { String::new() } else { child.string()? };
            out.insert(key.to_string(), value);
        }
        Ok(out)
    }

    /// A list of strings; a single scalar is not accepted.
    pub fn strings(&self) -> Result<Vec<String>, LoadError> {
        self.each(|f| f.string())
    }
}

fn scalar_text(node: &Node) -> Option<&str> {
    match &node.value {
        Value::Scalar { text, .. } => Some(text),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn docs(text: &str) -> Vec<Node> {
        parse_documents(text, &Origin::file("t.yaml")).unwrap()
    }

    #[test]
    fn positions_are_one_based_lines_and_columns() {
        let d = docs("a: 1\nb:\n  c: x\n");
        let origin = Origin::file("t.yaml");
        let root = Field::root(&d[0], &origin);
        root.require("b", |b| {
            b.require("c", |c| {
                assert_eq!(c.pos(), Pos { line: 3, col: 6 });
                assert_eq!(c.path(), "b.c");
                Ok(())
            })
        })
        .unwrap();
    }

    #[test]
    fn multi_document_streams_skip_empty_documents() {
        let d = docs("---\na: 1\n---\n---\nb: 2\n");
        assert_eq!(d.len(), 2);
        assert_eq!(d[1].pos.line, 5);
    }

    #[test]
    fn quoted_scalars_are_marked() {
        let d = docs("a: \"80\"\nb: 80\nc: ~\n");
        let origin = Origin::file("t.yaml");
        let root = Field::root(&d[0], &origin);
        assert!(root.require("a", |a| Ok(a.is_quoted())).unwrap());
        assert!(!root.require("b", |b| Ok(b.is_quoted())).unwrap());
        assert!(root.with("c", |c| Ok(c.is_none())).unwrap());
    }

    #[test]
    fn errors_name_file_line_column_and_field() {
        let origin = Origin { file: "s.yaml".into(), line_offset: 10, col_offset: 2 };
        let d = parse_documents("spec:\n  ingress:\n  - action: Alow\n", &origin).unwrap();
        let root = Field::root(&d[0], &origin);
        let err = root
            .require("spec", |s| {
                s.require("ingress", |i| i.each(|r| r.require("action", |a| Err::<(), _>(a.error("bad")))))
            })
            .unwrap_err();
        assert_eq!(err.to_string(), "s.yaml:13:15: spec.ingress[0].action: bad");
    }

    #[test]
    fn syntax_errors_have_positions() {
        let err = parse_documents("a: [1, 2\nb: 3\n", &Origin::file("bad.yaml")).unwrap_err();
        assert_eq!(err.file, "bad.yaml");
        assert!(err.line >= 1 && err.message.contains("YAML syntax error"), "{err}");
    }

    #[test]
    fn unknown_keys_are_named() {
        let d = docs("a: 1\nzz: 2\n");
        let origin = Origin::file("t.yaml");
        let root = Field::root(&d[0], &origin);
        let err = root.only_keys(&["a", "b"]).unwrap_err();
        assert_eq!(err.line, 2);
        assert!(err.message.contains("unknown field 'zz'"));
    }

    #[test]
    fn anchors_and_aliases_copy_values() {
        let d = docs("a: &x {k: v}\nb: *x\n");
        let origin = Origin::file("t.yaml");
        let root = Field::root(&d[0], &origin);
        let m = root.require("b", |b| b.string_map()).unwrap();
        assert_eq!(m.get("k").map(String::as_str), Some("v"));
    }
}

#[cfg(test)]
mod hostile_tests {
    use super::*;

    fn parse_on_small_stack(text: String) -> Result<Vec<Node>, LoadError> {
        // Threads a node spawns (the control thread, workers) have 2 MiB stacks: the parse must fit.
        std::thread::Builder::new()
            .stack_size(2 << 20)
            .spawn(move || parse_documents(&text, &Origin::file("hostile.yaml")))
            .unwrap()
            .join()
            .expect("no stack overflow")
    }

    #[test]
    fn a_billion_laughs_is_refused_quickly_and_with_a_position() {
        let mut text = String::from("a: &a [x, x, x, x, x, x, x, x, x, x]\n");
        let names = ["b", "c", "d", "e", "f", "g", "h", "i", "j"];
        let mut prev = "a";
        for n in names {
            text.push_str(&format!("{n}: &{n} [*{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}]\n"));
            prev = n;
        }
        let start = std::time::Instant::now();
        let e = parse_on_small_stack(text).unwrap_err();
        assert!(start.elapsed() < std::time::Duration::from_secs(2));
        assert!(e.message.contains("aliases expand to more than"), "{e}");
        assert!(e.line > 1, "{e}");
    }

    #[test]
    fn thousands_of_nested_block_lists_are_refused_without_overflowing_the_stack() {
        let mut text = String::new();
        for depth in 0..7000 {
            text.push_str(&" ".repeat(depth * 2));
            text.push_str("-\n");
        }
        text.push_str(&" ".repeat(14000));
        text.push_str("x\n");
        let e = parse_on_small_stack(text).unwrap_err();
        assert!(e.message.contains("nested deeper than 64"), "{e}");
        let compact = format!("{}x\n", "- ".repeat(7000));
        let e = parse_on_small_stack(compact).unwrap_err();
        assert!(e.message.contains("nested deeper than 64"), "{e}");
    }

    #[test]
    fn a_nul_byte_is_an_error_naming_where_it_is() {
        let e = parse_documents("kind: A\nname: b\0c\nmore: 1\n", &Origin::file("nul.yaml")).unwrap_err();
        assert_eq!((e.line, e.col), (2, 8), "{e}");
        assert!(e.message.contains("NUL byte"), "{e}");
    }

    #[test]
    fn ordinary_anchors_and_aliases_still_work() {
        let docs = parse_documents("a: &p {x: 1}\nb: *p\n", &Origin::file("ok.yaml")).unwrap();
        assert_eq!(docs.len(), 1);
    }
}

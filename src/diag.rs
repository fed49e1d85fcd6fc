//! Problems found in a graph, and their rendering with source snippets.

use std::fmt;
use std::sync::Arc;

use miette::{Diagnostic, LabeledSpan, NamedSource, SourceSpan};

/// One problem with a graph: which node, where in the file, what was expected.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    /// The node (or param, input, state) the problem is about.
    pub node: Option<String>,
    /// RFC 6901 pointer into the source file, when known.
    pub pointer: Option<String>,
    pub message: String,
}

impl Problem {
    pub fn new(node: Option<&str>, pointer: Option<String>, message: impl Into<String>) -> Problem {
        Problem { node: node.map(str::to_string), pointer, message: message.into() }
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(n) = &self.node {
            write!(f, "node `{n}`: ")?;
        }
        f.write_str(&self.message)?;
        if let Some(p) = &self.pointer {
            write!(f, " (at {p})")?;
        }
        Ok(())
    }
}

/// Escapes one RFC 6901 pointer token.
pub fn pointer_token(s: &str) -> String {
    s.replace('~', "~0").replace('/', "~1")
}

fn unescape(s: &str) -> String {
    s.replace("~1", "/").replace("~0", "~")
}

/// Byte range of the JSON value at `pointer` in `text`; falls back to the
/// deepest value that exists on the way.
pub fn locate(text: &str, pointer: &str) -> Option<(usize, usize)> {
    use jsonc_parser::ast::Value;
    use jsonc_parser::common::Ranged;
    let parsed = jsonc_parser::parse_to_ast(text, &Default::default(), &Default::default()).ok()?;
    let mut cur = parsed.value?;
    let mut found = (cur.range().start, cur.range().end);
    for token in pointer.split('/').skip(1) {
        let key = unescape(token);
        let next = match cur {
            Value::Object(o) => match o.properties.into_iter().find(|p| p.name.as_str() == key) {
                Some(p) => p.value,
                None => break,
            },
            Value::Array(a) => match key.parse::<usize>().ok().and_then(|i| a.elements.into_iter().nth(i)) {
                Some(v) => v,
                None => break,
            },
            _ => break,
        };
        found = (next.range().start, next.range().end);
        cur = next;
    }
    Some(found)
}

/// A problem with its source, for rendering by miette.
#[derive(Debug)]
struct Located {
    problem: Problem,
    src: NamedSource<Arc<str>>,
    span: Option<SourceSpan>,
}

impl fmt::Display for Located {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.problem.node {
            Some(n) => write!(f, "node `{n}`: {}", self.problem.message),
            None => f.write_str(&self.problem.message),
        }
    }
}

impl std::error::Error for Located {}

impl Diagnostic for Located {
    fn source_code(&self) -> Option<&dyn miette::SourceCode> {
        self.span.map(|_| &self.src as &dyn miette::SourceCode)
    }
    fn labels(&self) -> Option<Box<dyn Iterator<Item = LabeledSpan> + '_>> {
        let span = self.span?;
        let label = self.problem.pointer.clone().unwrap_or_default();
        Some(Box::new(std::iter::once(LabeledSpan::new_with_span(Some(label), span))))
    }
}

/// Every problem of one file, rendered together.
#[derive(Debug)]
pub struct FileReport {
    pub path: String,
    pub summary: String,
    related: Vec<Located>,
}

impl fmt::Display for FileReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.summary)
    }
}

impl std::error::Error for FileReport {}

impl Diagnostic for FileReport {
    fn related<'a>(&'a self) -> Option<Box<dyn Iterator<Item = &'a dyn Diagnostic> + 'a>> {
        Some(Box::new(self.related.iter().map(|l| l as &dyn Diagnostic)))
    }
}

/// Attaches source snippets to problems of the file `path` with contents `text`.
pub fn report(path: &str, text: &str, summary: String, problems: &[Problem]) -> FileReport {
    let src = NamedSource::new(path, Arc::<str>::from(text));
    let related = problems
        .iter()
        .map(|p| Located {
            problem: p.clone(),
            src: src.clone(),
            span: p.pointer.as_deref().and_then(|ptr| locate(text, ptr)).map(|(a, b)| SourceSpan::from(a..b)),
        })
        .collect();
    FileReport { path: path.to_string(), summary, related }
}

/// A syntax or type error in the JSON itself, with line and column.
#[derive(Debug, thiserror::Error, Diagnostic)]
#[error("{path}:{line}:{column}: {message}")]
pub struct SyntaxReport {
    pub path: String,
    pub line: usize,
    pub column: usize,
    pub message: String,
    #[source_code]
    src: NamedSource<Arc<str>>,
    #[label("here")]
    span: Option<SourceSpan>,
}

/// Builds a syntax report; `line`/`column` are 1-based as serde_json gives them.
pub fn syntax_report(path: &str, text: &str, line: usize, column: usize, message: String) -> SyntaxReport {
    let offset = line_col_offset(text, line, column);
    SyntaxReport {
        path: path.to_string(),
        line,
        column,
        message,
        src: NamedSource::new(path, Arc::<str>::from(text)),
        span: offset.map(|o| SourceSpan::from(o..o)),
    }
}

fn line_col_offset(text: &str, line: usize, column: usize) -> Option<usize> {
    if line == 0 {
        return None;
    }
    let start: usize = text.split_inclusive('\n').take(line - 1).map(str::len).sum();
    let line_text = text[start..].split('\n').next().unwrap_or("");
    let col = column.saturating_sub(1).min(line_text.len());
    let mut off = start + col;
    while off > 0 && !text.is_char_boundary(off) {
        off -= 1;
    }
    Some(off)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locate_walks_objects_and_arrays() {
        let text = r#"{"forward": [{"name": "a"}, {"name": "b", "inputs": ["x", "y"]}]}"#;
        let (a, b) = locate(text, "/forward/1/inputs/1").unwrap();
        assert_eq!(&text[a..b], "\"y\"");
        let (a, b) = locate(text, "/forward/1/axis").unwrap();
        assert_eq!(&text[a..b], r#"{"name": "b", "inputs": ["x", "y"]}"#);
        let (a, b) = locate(text, "/forward/1/name").unwrap();
        assert_eq!(&text[a..b], "\"b\"");
    }

    #[test]
    fn line_col_to_offset() {
        let text = "ab\ncdé\nf";
        assert_eq!(line_col_offset(text, 2, 2), Some(4));
        assert_eq!(line_col_offset(text, 3, 1), Some(text.len() - 1));
        assert!(line_col_offset(text, 2, 99).is_some());
    }

    #[test]
    fn pointer_escaping() {
        assert_eq!(pointer_token("a/b~c"), "a~1b~0c");
        assert_eq!(unescape("a~1b~0c"), "a/b~c");
    }
}

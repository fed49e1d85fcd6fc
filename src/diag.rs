//! Problems found in a graph, and their rendering with source snippets.

use std::fmt;
use std::sync::Arc;

use miette::{Diagnostic, LabeledSpan, MietteError, MietteSpanContents, SourceCode, SourceSpan, SpanContents};

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

/// Lines longer than this are shown as a window around the span (a
/// minified file is one line: reprinting it whole for every problem made
/// megabytes of output, and miette cannot pad past column 65,535).
const LONG_LINE: usize = 400;
/// Bytes shown before and after a span on a long line.
const WINDOW: usize = 80;
/// Problems rendered with snippets; the rest are counted.
pub const MAX_SHOWN: usize = 20;

/// A file's text as miette reads it: whole, or for a span on a long line,
/// only a window of that line, with the true line and column numbers.
#[derive(Debug, Clone)]
struct Snippet {
    name: String,
    text: Arc<str>,
    /// Byte range of the window in `text`, its 0-based line and column.
    window: Option<(usize, usize, usize, usize)>,
}

impl Snippet {
    /// The snippet for a span `a..b` of `text`, and the span clipped to what
    /// it shows.
    fn new(name: &str, text: Arc<str>, a: usize, b: usize) -> (Snippet, SourceSpan) {
        let a = a.min(text.len());
        let b = b.clamp(a, text.len());
        let line_start = text[..a].rfind('\n').map_or(0, |i| i + 1);
        let line_end = text[a..].find('\n').map_or(text.len(), |i| a + i);
        let mut snippet = Snippet { name: name.to_string(), text: text.clone(), window: None };
        if line_end - line_start <= LONG_LINE {
            return (snippet, SourceSpan::from(a..b));
        }
        let floor = |mut i: usize| {
            while !text.is_char_boundary(i) {
                i -= 1;
            }
            i
        };
        let start = floor(a.saturating_sub(WINDOW).max(line_start));
        let end = floor((a + WINDOW).min(line_end).max(b.min(a + WINDOW)));
        let line = text[..a].matches('\n').count();
        snippet.window = Some((start, end, line, start - line_start));
        (snippet, SourceSpan::from(a..b.min(end)))
    }
}

impl SourceCode for Snippet {
    fn read_span<'a>(
        &'a self,
        span: &SourceSpan,
        before: usize,
        after: usize,
    ) -> Result<Box<dyn SpanContents<'a> + 'a>, MietteError> {
        let Some((start, end, line, column)) = self.window else {
            let c = self.text.as_ref().read_span(span, before, after)?;
            let contents = MietteSpanContents::new_named(
                self.name.clone(),
                c.data(),
                *c.span(),
                c.line(),
                c.column(),
                c.line_count(),
            );
            return Ok(Box::new(contents));
        };
        // Without context (how miette locates a label for the header): the
        // span itself, at its own column.
        if before == 0 && after == 0 {
            let a = span.offset().clamp(start, end);
            let b = (a + span.len()).min(end);
            let data = &self.text.as_bytes()[a..b];
            let contents = MietteSpanContents::new_named(
                self.name.clone(),
                data,
                SourceSpan::from(a..b),
                line,
                column + (a - start),
                1,
            );
            return Ok(Box::new(contents));
        }
        // With context: the window alone, its neighbours being the rest of the same long line.
        let data = &self.text.as_bytes()[start..end];
        Ok(Box::new(MietteSpanContents::new_named(
            self.name.clone(),
            data,
            SourceSpan::from(start..end),
            line,
            column,
            1,
        )))
    }
}

/// A problem with its source, for rendering by miette.
#[derive(Debug)]
struct Located {
    problem: Problem,
    src: Snippet,
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

/// The candidate nearest to a misspelt `bad` (Damerau-Levenshtein), if near
/// enough to be the one meant: within 2 edits, or a third of its length.
pub fn closest<'a>(bad: &str, candidates: &[&'a str]) -> Option<&'a str> {
    let (d, best) = candidates.iter().map(|&c| (strsim::damerau_levenshtein(bad, c), c)).min()?;
    (d <= 2.max(bad.len() / 3)).then_some(best)
}

/// Attaches source snippets to problems of the file `path` with contents
/// `text`; beyond [`MAX_SHOWN`] problems, the summary counts the rest.
pub fn report(path: &str, text: &str, mut summary: String, problems: &[Problem]) -> FileReport {
    let text = Arc::<str>::from(text);
    let related = problems
        .iter()
        .take(MAX_SHOWN)
        .map(|p| {
            let at = p.pointer.as_deref().and_then(|ptr| locate(&text, ptr));
            let (src, span) = match at {
                Some((a, b)) => {
                    let (src, span) = Snippet::new(path, text.clone(), a, b);
                    (src, Some(span))
                }
                None => (Snippet { name: path.to_string(), text: text.clone(), window: None }, None),
            };
            Located { problem: p.clone(), src, span }
        })
        .collect();
    if problems.len() > MAX_SHOWN {
        summary += &format!(" (the first {MAX_SHOWN} shown)");
    }
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
    src: Snippet,
    #[label("here")]
    span: Option<SourceSpan>,
}

/// Builds a syntax report; `line`/`column` are 1-based as serde_json gives them.
pub fn syntax_report(path: &str, text: &str, line: usize, column: usize, message: String) -> SyntaxReport {
    let offset = line_col_offset(text, line, column);
    let (src, span) = Snippet::new(path, Arc::<str>::from(text), offset.unwrap_or(0), offset.unwrap_or(0));
    SyntaxReport { path: path.to_string(), line, column, message, src, span: offset.map(|_| span) }
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

/// Renders problems of a file with snippets.
pub fn problems_report(path: &str, text: &str, problems: &[Problem]) -> miette::Report {
    let summary = match problems.len() {
        1 => "1 problem".to_string(),
        n => format!("{n} problems"),
    };
    miette::Report::new(report(path, text, summary, problems))
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

#[cfg(test)]
mod long_line_tests {
    use super::*;

    /// A minified file is one long line: an error far into it shows a
    /// window around the column with the true line and column, never the
    /// whole line (and never panics: miette cannot pad past column 65,535).
    #[test]
    fn errors_on_long_lines_show_a_window() {
        let text = format!("{{\"a\": 1,{}\"rleu\": 2,{}}}", " ".repeat(70_000), "x".repeat(5000));
        let at = text.find("\"rleu\"").unwrap();
        let r = syntax_report("f.json", &text, 1, at + 1, "unknown field `rleu`".into());
        let out = crate::io::render_plain(&miette::Report::new(r));
        assert!(out.contains(&format!("[f.json:1:{}]", at + 1)), "{out}");
        assert!(out.contains("\"rleu\": 2,xxx"), "{out}");
        assert!(out.len() < 1000, "{} bytes:\n{out}", out.len());
        // Problems located by pointer, many of them: a window each, twenty shown.
        let problems: Vec<Problem> =
            (0..50).map(|i| Problem::new(Some("n"), Some("/rleu".into()), format!("problem {i}"))).collect();
        let out =
            crate::io::render_plain(&miette::Report::new(report("f.json", &text, "50 problems".into(), &problems)));
        assert!(out.contains("50 problems (the first 20 shown)"), "{}", &out[..200]);
        assert!(out.contains("problem 19") && !out.contains("problem 20"));
        assert!(out.len() < 20 * 1000, "{} bytes", out.len());
    }

    #[test]
    fn short_lines_keep_their_context() {
        let text = "{\n  \"a\": 1,\n  \"rleu\": 2\n}\n";
        let r = syntax_report("f.json", text, 3, 3, "unknown field `rleu`".into());
        let out = crate::io::render_plain(&miette::Report::new(r));
        assert!(out.contains("\"a\": 1,") && out.contains("\"rleu\": 2"), "{out}");
    }
}

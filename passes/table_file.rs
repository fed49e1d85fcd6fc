//! Reading a precision table file (`--table FILE`): `{"fp32": ["gelu"], ...}`,
//! checked with the graph file's care: every problem found (not only the
//! first), each at its JSON pointer so that the report shows the line, and
//! a suggestion for a misspelt class or op.

use std::collections::BTreeMap;

use crate::diag::{closest, Problem};
use crate::ir::op::OpKind;

use super::table::{is_pinned, is_unpainted, Class};

/// Why a table file was refused.
#[derive(Debug, Clone, PartialEq)]
pub enum TableFileError {
    /// Not JSON: serde_json's message and its 1-based position.
    Syntax { line: usize, column: usize, message: String },
    /// JSON, but not a table: each problem at its JSON pointer.
    Problems(Vec<Problem>),
}

impl std::fmt::Display for TableFileError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TableFileError::Syntax { line, column, message } => write!(f, "{line}:{column}: {message}"),
            TableFileError::Problems(ps) => {
                let all: Vec<String> = ps.iter().map(|p| p.to_string()).collect();
                f.write_str(&all.join("; "))
            }
        }
    }
}

/// The classes a table file moves ops to, by op (in file order per class).
pub fn read(text: &str) -> Result<BTreeMap<Class, Vec<OpKind>>, TableFileError> {
    let value: serde_json::Value = serde_json::from_str(text).map_err(|e| {
        let message = e.to_string();
        let message = message.rfind(" at line ").map_or(message.clone(), |i| message[..i].to_string());
        TableFileError::Syntax { line: e.line(), column: e.column(), message }
    })?;
    let mut problems = Vec::new();
    let problem = |ptr: String, message: String| Problem::new(None, Some(ptr), message);
    let Some(object) = value.as_object() else {
        let p = problem(String::new(), "expected an object from class to op names, e.g. {\"fp32\": [\"gelu\"]}".into());
        return Err(TableFileError::Problems(vec![p]));
    };
    let class_names: Vec<&str> = Class::ALL.iter().map(|c| c.name()).collect();
    let op_names: Vec<&str> = OpKind::ALL.iter().map(|k| k.name()).collect();
    let mut out: BTreeMap<Class, Vec<OpKind>> = BTreeMap::new();
    let mut seen: BTreeMap<OpKind, Class> = BTreeMap::new();
    for (key, ops) in object {
        let ptr = format!("/{}", crate::diag::pointer_token(key));
        let Some(&class) = Class::ALL.iter().find(|c| c.name() == key) else {
            let hint = closest(key, &class_names).map(|c| format!(", did you mean `{c}`?")).unwrap_or_default();
            problems.push(problem(
                ptr,
                format!("no class is named `{key}`{hint} (the classes: {})", class_names.join(", ")),
            ));
            continue;
        };
        let Some(list) = ops.as_array() else {
            problems.push(problem(ptr, format!("expected a list of op names, found {ops}")));
            continue;
        };
        for (i, item) in list.iter().enumerate() {
            let ptr = format!("{ptr}/{i}");
            let Some(name) = item.as_str() else {
                problems.push(problem(ptr, format!("expected an op name, found {item}")));
                continue;
            };
            let Some(&op) = OpKind::ALL.iter().find(|k| k.name() == name) else {
                let hint = closest(name, &op_names).map(|c| format!(", did you mean `{c}`?")).unwrap_or_default();
                problems.push(problem(ptr, format!("no op is named `{name}`{hint} (`mpc table` lists them)")));
                continue;
            };
            if is_unpainted(op) {
                problems.push(problem(
                    ptr,
                    format!("`{op}` has no precision class: inputs, params, state and casts keep their type"),
                ));
            } else if is_pinned(op) && class != Class::Fp32 {
                problems.push(problem(
                    ptr,
                    format!("`{op}` belongs to loss scaling, gradient clipping or the optimizer, which stay fp32"),
                ));
            } else if let Some(prev) = seen.insert(op, class).filter(|&p| p != class) {
                problems.push(problem(
                    ptr,
                    format!("`{op}` is listed under both `{}` and `{}`", prev.name(), class.name()),
                ));
            } else {
                out.entry(class).or_default().push(op);
            }
        }
    }
    match problems.is_empty() {
        true => Ok(out),
        false => Err(TableFileError::Problems(problems)),
    }
}

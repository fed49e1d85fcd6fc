//! docs/FORMAT.md's op reference against the op table (`src/ir/op.rs`): every
//! op of the table has a row there and every op named there is in the
//! table, with the table's number of inputs and outputs and its attributes,
//! so the documentation cannot drift from the code.

use std::collections::{BTreeMap, BTreeSet};

use mpc::format::attrs::ATTRS;
use mpc::ir::opinfo::Outputs;
use mpc::OpKind;

/// One op's cells: (inputs, attributes, outputs).
type Cells = (String, String, String);

/// The rows of the tables under "## Op reference", by op name.
fn documented() -> BTreeMap<String, Cells> {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/FORMAT.md")).expect("FORMAT.md");
    let start = text.find("## Op reference").expect("an op reference");
    let end = start + text[start..].find("\n## What").expect("a section after the op reference");
    let mut ops = BTreeMap::new();
    for line in text[start..end].lines() {
        let cells: Vec<&str> = line.trim().trim_matches('|').split(" | ").map(str::trim).collect();
        if cells.len() != 5 || cells[0] == "op" || cells[0].starts_with("---") {
            continue;
        }
        for name in cells[0].split_whitespace() {
            let name = name.trim_matches('`').to_string();
            let row = (cells[1].to_string(), cells[2].to_string(), cells[3].to_string());
            assert!(ops.insert(name.clone(), row).is_none(), "`{name}` has two rows in FORMAT.md");
        }
    }
    ops
}

/// The number of inputs a cell lists: (at least, at most).
fn arity(cell: &str) -> (usize, usize) {
    if cell == "—" {
        return (0, 0);
    }
    if cell.contains('…') {
        return (1, usize::MAX);
    }
    let names: Vec<&str> = cell.split(", ").collect();
    let optional = names.iter().filter(|n| n.ends_with('?')).count();
    (names.len() - optional, names.len())
}

/// The attribute names a cell lists (backticked words that are attributes).
fn attributes(cell: &str) -> BTreeSet<String> {
    cell.split('`').skip(1).step_by(2).filter(|w| ATTRS.contains(w)).map(str::to_string).collect()
}

#[test]
fn every_op_of_the_table_is_documented_and_no_other() {
    let docs = documented();
    let table: BTreeSet<String> =
        OpKind::ALL.iter().filter(|k| !k.info().source).map(|k| k.name().to_string()).collect();
    let named: BTreeSet<String> = docs.keys().cloned().collect();
    let undocumented: Vec<_> = table.difference(&named).collect();
    let unknown: Vec<_> = named.difference(&table).collect();
    assert!(undocumented.is_empty(), "ops without a row in docs/FORMAT.md's op reference: {undocumented:?}");
    assert!(unknown.is_empty(), "docs/FORMAT.md documents ops the table does not have: {unknown:?}");
}

#[test]
fn documented_inputs_outputs_and_attributes_match_the_table() {
    let docs = documented();
    let mut wrong = Vec::new();
    for &k in OpKind::ALL.iter().filter(|k| !k.info().source) {
        let Some((inputs, attrs, outputs)) = docs.get(k.name()) else { continue };
        let info = k.info();
        if arity(inputs) != info.arity() {
            wrong.push(format!("{k}: inputs `{inputs}` are {:?}, the table says {:?}", arity(inputs), info.arity()));
        }
        let want = match info.outputs {
            Outputs::Fixed(n) => n.to_string(),
            Outputs::PerSize => "`len(sizes)`".to_string(),
        };
        if outputs.split(':').next() != Some(want.as_str()) {
            wrong.push(format!("{k}: outputs `{outputs}`, the table says {want}"));
        }
        // "as `lrn`" rows point to another op's attributes.
        if !attrs.starts_with("as ") {
            let table: BTreeSet<String> = info.attrs.iter().map(|a| a.to_string()).collect();
            if attributes(attrs) != table {
                wrong.push(format!("{k}: attributes {:?}, the table says {table:?}", attributes(attrs)));
            }
        }
    }
    assert!(wrong.is_empty(), "docs/FORMAT.md disagrees with the op table:\n{}", wrong.join("\n"));
}

//! Joins the documents of a grid's shards into the document an unsharded run writes. Refuses
//! documents of different tasks or settings, and parts that leave cells out or hold a cell twice.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::doc::{first_difference, AnyDocument, CellResult, Document, Part};
use crate::error::{Error, Result};

/// The merged document of `(name, document)` parts (names are for messages and the `run` record).
pub fn merge(parts: &[(String, AnyDocument)]) -> Result<AnyDocument> {
    let Some((first_name, first)) = parts.first() else {
        return Err(Error::Merge("nothing to merge: name the shards' result files".into()));
    };
    macro_rules! same {
        ($variant:ident) => {{
            let mut typed = Vec::new();
            for (name, d) in parts {
                match d {
                    AnyDocument::$variant(d) => typed.push((name.clone(), d.clone())),
                    other => {
                        return Err(Error::Merge(format!(
                            "{name} holds task `{}`, {first_name} task `{}`: only one task's shards merge",
                            other.task(),
                            first.task()
                        )))
                    }
                }
            }
            AnyDocument::$variant(merge_typed(&typed)?)
        }};
    }
    Ok(match first {
        AnyDocument::Ppl(_) => same!(Ppl),
        AnyDocument::Passkey(_) => same!(Passkey),
        AnyDocument::Ruler(_) => same!(Ruler),
    })
}

/// [`merge`] for documents of one task.
pub fn merge_typed<S, R>(docs: &[(String, Document<S, R>)]) -> Result<Document<S, R>>
where
    S: Serialize + Clone,
    R: Serialize + Clone + CellResult,
{
    let Some((first_name, first)) = docs.first() else {
        return Err(Error::Merge("nothing to merge: name the shards' result files".into()));
    };
    let settings = serde_json::to_value(&first.settings).expect("settings serialise");
    for (name, d) in &docs[1..] {
        if d.task != first.task {
            return Err(Error::Merge(format!(
                "{name} holds task `{}`, {first_name} task `{}`: only one task's shards merge",
                d.task, first.task
            )));
        }
        let other = serde_json::to_value(&d.settings).expect("settings serialise");
        if let Some(diff) = first_difference(&settings, &other, "settings") {
            return Err(Error::Merge(format!(
                "{name} and {first_name} were run with different settings ({diff}): they are not parts of one grid"
            )));
        }
        if d.cells != first.cells {
            return Err(Error::Merge(format!(
                "{name} and {first_name} describe different grids ({} and {} cells)",
                d.cells.len(),
                first.cells.len()
            )));
        }
    }
    let mut owner: BTreeMap<&str, &str> = BTreeMap::new();
    let mut results = Vec::new();
    for (name, d) in docs {
        for r in &d.results {
            let id = r.id();
            if !first.cells.iter().any(|c| c == id) {
                return Err(Error::Merge(format!("{name} holds cell `{id}`, which is not in the grid")));
            }
            if let Some(other) = owner.insert(id, name) {
                return Err(Error::Merge(format!(
                    "cell `{id}` is in both {other} and {name}: the files overlap (the same shard twice, or shards of different shard counts)"
                )));
            }
            results.push(r.clone());
        }
    }
    let missing: Vec<(usize, &String)> =
        first.cells.iter().enumerate().filter(|(_, c)| !owner.contains_key(c.as_str())).collect();
    if !missing.is_empty() {
        let list: Vec<String> = missing.iter().take(4).map(|(_, c)| format!("`{c}`")).collect();
        let more = if missing.len() > 4 { format!(" and {} more", missing.len() - 4) } else { String::new() };
        let hint = match first.shard {
            Some(s) => {
                let mut absent: Vec<usize> = missing.iter().map(|(k, _)| k % s.count).collect();
                absent.sort_unstable();
                absent.dedup();
                let absent: Vec<String> = absent.iter().map(|i| format!("{i}/{}", s.count)).collect();
                format!(" (run --shard {} and merge again)", absent.join(", "))
            }
            None => String::new(),
        };
        return Err(Error::Merge(format!(
            "{} of {} cells are missing: {}{more}{hint}",
            missing.len(),
            first.cells.len(),
            list.join(", ")
        )));
    }
    let parts: Vec<Part> =
        docs.iter().map(|(name, d)| Part { file: name.clone(), shard: d.shard, run: d.run.clone() }).collect();
    let seconds: f64 = docs.iter().map(|(_, d)| d.run.total_seconds).sum();
    let mut doc = first.clone();
    doc.shard = None;
    doc.results = results;
    doc.run = crate::Run { merged_from: Some(parts), total_seconds: seconds, ..crate::Run::default() };
    doc.sort_results();
    Ok(doc)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::doc::{Run, Shard};
    use serde::Deserialize;

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    struct Cell {
        id: String,
        ppl: f64,
    }
    impl CellResult for Cell {
        fn id(&self) -> &str {
            &self.id
        }
    }

    fn part(i: usize, n: usize, tokens: u64) -> (String, Document<serde_json::Value, Cell>) {
        let cells: Vec<String> = (0..5).map(|k| format!("c{k}")).collect();
        let results = (0..5).filter(|k| k % n == i).map(|k| Cell { id: format!("c{k}"), ppl: k as f64 }).collect();
        let run = Run { total_seconds: 1.0, ..Run::default() };
        let settings = serde_json::json!({ "tokens": tokens });
        (
            format!("part{i}.json"),
            Document::new("ppl", settings, cells, Some(Shard { index: i, count: n }), results, run),
        )
    }

    #[test]
    fn parts_merge_in_grid_order_and_bad_sets_are_refused() {
        let merged = merge_typed(&[part(1, 2, 64), part(0, 2, 64)]).unwrap();
        let ids: Vec<&str> = merged.results.iter().map(|r| r.id.as_str()).collect();
        assert_eq!(ids, ["c0", "c1", "c2", "c3", "c4"]);
        assert_eq!(merged.shard, None);
        assert_eq!(merged.run.total_seconds, 2.0);
        assert_eq!(merged.run.merged_from.as_ref().unwrap().len(), 2);

        let e = merge_typed(&[part(0, 2, 64)]).unwrap_err().to_string();
        assert!(e.contains("2 of 5 cells are missing") && e.contains("`c1`") && e.contains("--shard 1/2"), "{e}");
        let e = merge_typed(&[part(0, 2, 64), part(0, 2, 64), part(1, 2, 64)]).unwrap_err().to_string();
        assert!(e.contains("cell `c0` is in both") && e.contains("overlap"), "{e}");
        let e = merge_typed(&[part(0, 2, 64), part(1, 2, 128)]).unwrap_err().to_string();
        assert!(e.contains("different settings") && e.contains("settings.tokens: 64 vs 128"), "{e}");
        let mut other = part(1, 2, 64);
        other.1.task = "passkey".into();
        let e = merge_typed(&[part(0, 2, 64), other]).unwrap_err().to_string();
        assert!(e.contains("task `passkey`"), "{e}");
        let e = merge_typed(&[part(0, 3, 64), part(1, 2, 64)]).unwrap_err().to_string();
        assert!(e.contains("overlap") || e.contains("missing"), "{e}");
        assert!(merge(&[]).unwrap_err().to_string().contains("nothing to merge"));
    }
}

//! The one result document every evaluation task writes (`--out`) and `msrnn eval merge` reads.
//!
//! ```text
//! {
//!   "kind": "msrnn-eval", "schema": 1, "task": "ppl" | "passkey" | ...,
//!   "settings": { everything that decides the results: model id and weights, position mode,
//!                 text or haystack, feeding mode, the grid's axes, msrnn version, ... },
//!   "cells":    [ the id of every cell of the whole grid, in grid order ],
//!   "shard":    { "index": I, "count": N } | null,
//!   "results":  [ { "id": one of "cells", "policy", "spec", "capacity", ...task fields } ],
//!   "run":      { how this run went, which does not decide the results: command line, paths,
//!                 threads, batch size, seconds; a merged file lists its parts' here }
//! }
//! ```
//! Two shards merge when their task, settings and cells are equal; the results must then cover
//! every cell exactly once.

use std::path::Path;

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

use super::grid::Shard;

pub const KIND: &str = "msrnn-eval";
pub const SCHEMA: u64 = 1;

#[derive(Debug, Clone)]
pub struct Doc {
    pub task: String,
    pub settings: Value,
    pub cells: Vec<String>,
    pub shard: Option<Shard>,
    pub results: Vec<Value>,
    pub run: Value,
}

impl Doc {
    pub fn to_json(&self) -> Value {
        json!({
            "kind": KIND,
            "schema": SCHEMA,
            "task": self.task,
            "settings": self.settings,
            "cells": self.cells,
            "shard": self.shard.map(Shard::to_json),
            "results": self.results,
            "run": self.run,
        })
    }

    /// Reads a document back; `what` names it in errors (a file name).
    pub fn from_json(v: &Value, what: &str) -> Result<Self> {
        if v["kind"] != KIND {
            bail!(
                "{what} is not an msrnn eval result (its \"kind\" is {}, not \"{KIND}\"); write one with `msrnn eval TASK --out FILE`",
                v["kind"]
            );
        }
        if v["schema"].as_u64() != Some(SCHEMA) {
            bail!("{what} has result schema {}, this msrnn reads schema {SCHEMA}", v["schema"]);
        }
        let task = v["task"].as_str().with_context(|| format!("{what}: no \"task\""))?.to_string();
        let cells = v["cells"]
            .as_array()
            .with_context(|| format!("{what}: no \"cells\" list"))?
            .iter()
            .map(|c| c.as_str().map(str::to_string).with_context(|| format!("{what}: a cell id is not a string: {c}")))
            .collect::<Result<Vec<_>>>()?;
        let shard = match &v["shard"] {
            Value::Null => None,
            s => Some(Shard {
                index: s["index"].as_u64().with_context(|| format!("{what}: bad \"shard\" {s}"))? as usize,
                count: s["count"].as_u64().with_context(|| format!("{what}: bad \"shard\" {s}"))? as usize,
            }),
        };
        let results = v["results"].as_array().with_context(|| format!("{what}: no \"results\" list"))?.clone();
        for r in &results {
            if !r["id"].is_string() {
                bail!("{what}: a result has no \"id\": {r}");
            }
        }
        Ok(Doc { task, settings: v["settings"].clone(), cells, shard, results, run: v["run"].clone() })
    }

    pub fn read(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).with_context(|| format!("{}: cannot read it", path.display()))?;
        let v: Value =
            serde_json::from_str(&text).with_context(|| format!("{}: not a JSON document", path.display()))?;
        Doc::from_json(&v, &path.display().to_string())
    }

    /// The result of cell `id`, if this document has it.
    #[cfg(test)]
    pub fn result(&self, id: &str) -> Option<&Value> {
        self.results.iter().find(|r| r["id"] == id)
    }

    /// Results in grid order (a shard's, or all of them).
    pub fn sort_results(&mut self) {
        let rank = |r: &Value| self.cells.iter().position(|c| r["id"] == c.as_str()).unwrap_or(usize::MAX);
        let mut rs = std::mem::take(&mut self.results);
        rs.sort_by_key(rank);
        self.results = rs;
    }

    /// A line saying which part of the grid this document holds, for headings.
    pub fn coverage(&self) -> String {
        match self.shard {
            Some(s) => format!(" [shard {s}: {} of {} cells]", self.results.len(), self.cells.len()),
            None => String::new(),
        }
    }
}

/// The first place where two JSON values differ, as a path (`settings.text.tokens: 64 vs 128`).
pub fn first_difference(a: &Value, b: &Value, path: &str) -> Option<String> {
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            let mut keys: Vec<&String> = x.keys().chain(y.keys()).collect();
            keys.sort();
            keys.dedup();
            keys.into_iter().find_map(|k| {
                let p = format!("{path}.{k}");
                match (x.get(k), y.get(k)) {
                    (Some(u), Some(v)) => first_difference(u, v, &p),
                    (u, v) => Some(format!("{p}: {} vs {}", show(u), show(v))),
                }
            })
        }
        (Value::Array(x), Value::Array(y)) if x.len() == y.len() => {
            x.iter().zip(y).enumerate().find_map(|(i, (u, v))| first_difference(u, v, &format!("{path}[{i}]")))
        }
        _ if a == b => None,
        _ => Some(format!("{path}: {} vs {}", short(a), short(b))),
    }
}

fn show(v: Option<&Value>) -> String {
    v.map_or_else(|| "(absent)".to_string(), short)
}

fn short(v: &Value) -> String {
    let s = v.to_string();
    if s.chars().count() > 80 {
        format!("{}...", s.chars().take(77).collect::<String>())
    } else {
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn differences_name_the_path() {
        let a = json!({"model": {"id": "x"}, "tokens": 64, "list": [1, 2]});
        assert_eq!(first_difference(&a, &a, "settings"), None);
        let b = json!({"model": {"id": "y"}, "tokens": 64, "list": [1, 2]});
        assert_eq!(first_difference(&a, &b, "settings").unwrap(), "settings.model.id: \"x\" vs \"y\"");
        let c = json!({"model": {"id": "x"}, "tokens": 64, "list": [1, 3]});
        assert_eq!(first_difference(&a, &c, "s").unwrap(), "s.list[1]: 2 vs 3");
        let d = json!({"model": {"id": "x"}, "list": [1, 2]});
        assert_eq!(first_difference(&a, &d, "s").unwrap(), "s.tokens: 64 vs (absent)");
    }

    #[test]
    fn a_document_round_trips_and_foreign_files_are_refused() {
        let d = Doc {
            task: "ppl".into(),
            settings: json!({"a": 1}),
            cells: vec!["full".into(), "tova C=64".into()],
            shard: Some(Shard { index: 1, count: 2 }),
            results: vec![json!({"id": "tova C=64", "ppl": 3.0})],
            run: json!({}),
        };
        let back = Doc::from_json(&d.to_json(), "x.json").unwrap();
        assert_eq!(back.cells, d.cells);
        assert_eq!(back.shard, d.shard);
        assert_eq!(back.result("tova C=64").unwrap()["ppl"], 3.0);
        let e = Doc::from_json(&json!({"kind": "msrnn-ppl"}), "old.json").unwrap_err().to_string();
        assert!(e.contains("old.json") && e.contains("not an msrnn eval result"), "{e}");
        let mut v = d.to_json();
        v["schema"] = json!(99);
        assert!(Doc::from_json(&v, "f").unwrap_err().to_string().contains("schema 99"));
    }
}

//! The one result document every evaluation task writes and [`crate::merge`] reads, as typed
//! structs.
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
//! every cell exactly once. [`Document::to_json_string`] writes the keys of every object in sorted
//! order (what schema 1 files have always had), so a file does not depend on field order here.

use std::path::Path;
use std::str::FromStr;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::Value;

use crate::error::{Error, Result};

/// The `kind` of every evaluation document.
pub const KIND: &str = "msrnn-eval";
/// The schema version this library writes and reads.
pub const SCHEMA: u64 = 1;

/// A task's result document: `S` its settings, `R` one cell's result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Document<S, R> {
    pub kind: String,
    pub schema: u64,
    pub task: String,
    pub settings: S,
    pub cells: Vec<String>,
    pub shard: Option<Shard>,
    pub results: Vec<R>,
    pub run: Run,
}

/// What [`crate::merge`] and the faces need of a cell's result.
pub trait CellResult {
    /// The cell's id, one of the document's `cells`.
    fn id(&self) -> &str;
}

impl<S: Serialize, R: Serialize + CellResult> Document<S, R> {
    /// A new document of `task` (kind and schema filled in).
    pub fn new(task: &str, settings: S, cells: Vec<String>, shard: Option<Shard>, results: Vec<R>, run: Run) -> Self {
        Self { kind: KIND.into(), schema: SCHEMA, task: task.into(), settings, cells, shard, results, run }
    }

    /// The document as a JSON value (objects keyed in sorted order).
    pub fn to_value(&self) -> Value {
        serde_json::to_value(self).expect("result documents serialise")
    }

    /// Pretty JSON with a final newline: the `--out` file.
    pub fn to_json_string(&self) -> String {
        let mut s = serde_json::to_string_pretty(&self.to_value()).expect("JSON values serialise");
        s.push('\n');
        s
    }

    /// The result of cell `id`, if this document has it.
    pub fn result(&self, id: &str) -> Option<&R> {
        self.results.iter().find(|r| r.id() == id)
    }

    /// Results in grid order (a shard's, or all of them).
    pub fn sort_results(&mut self) {
        let cells = &self.cells;
        self.results.sort_by_key(|r| cells.iter().position(|c| c == r.id()).unwrap_or(usize::MAX));
    }

    /// A line saying which part of the grid this document holds, for headings.
    pub fn coverage(&self) -> String {
        match self.shard {
            Some(s) => format!(" [shard {s}: {} of {} cells]", self.results.len(), self.cells.len()),
            None => String::new(),
        }
    }
}

impl<S: DeserializeOwned, R: DeserializeOwned> Document<S, R> {
    /// Reads a document of a known task back from JSON; `what` names it in errors (a file name).
    pub fn from_value(v: Value, what: &str) -> Result<Self> {
        check_header(&v, what)?;
        serde_json::from_value(v).map_err(|e| Error::Document(format!("{what}: not a valid result document ({e})")))
    }
}

/// Refuses JSON that is not an evaluation document of this schema.
fn check_header(v: &Value, what: &str) -> Result<()> {
    if v["kind"] != KIND {
        return Err(Error::Document(format!(
            "{what} is not an msrnn eval result (its \"kind\" is {}, not \"{KIND}\"); write one with `msrnn eval TASK --out FILE`",
            v["kind"]
        )));
    }
    if v["schema"].as_u64() != Some(SCHEMA) {
        return Err(Error::Document(format!(
            "{what} has result schema {}, this msrnn reads schema {SCHEMA}",
            v["schema"]
        )));
    }
    Ok(())
}

/// A document of any task this library knows.
#[derive(Debug, Clone, PartialEq)]
pub enum AnyDocument {
    Ppl(crate::ppl::PplDocument),
    Passkey(crate::passkey::PasskeyDocument),
    Ruler(crate::ruler::RulerDocument),
}

/// The tasks whose documents this library reads and merges.
pub const TASKS: &[&str] = &[crate::ppl::TASK, crate::passkey::TASK, crate::ruler::TASK];

impl AnyDocument {
    /// Reads any task's document from JSON; `what` names it in errors.
    pub fn from_value(v: Value, what: &str) -> Result<Self> {
        check_header(&v, what)?;
        let task = v["task"].as_str().ok_or_else(|| Error::Document(format!("{what}: no \"task\"")))?;
        match task {
            crate::ppl::TASK => Ok(AnyDocument::Ppl(Document::from_value(v, what)?)),
            crate::passkey::TASK => Ok(AnyDocument::Passkey(Document::from_value(v, what)?)),
            crate::ruler::TASK => Ok(AnyDocument::Ruler(Document::from_value(v, what)?)),
            other => Err(Error::Document(format!(
                "{what}: unknown eval task `{other}` (this msrnn knows {})",
                TASKS.join(", ")
            ))),
        }
    }

    /// Reads a `--out` file.
    pub fn read(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::Document(format!("{}: cannot read it ({e})", path.display())))?;
        let v: Value = serde_json::from_str(&text)
            .map_err(|e| Error::Document(format!("{}: not a JSON document ({e})", path.display())))?;
        AnyDocument::from_value(v, &path.display().to_string())
    }

    pub fn task(&self) -> &str {
        match self {
            AnyDocument::Ppl(d) => &d.task,
            AnyDocument::Passkey(d) => &d.task,
            AnyDocument::Ruler(d) => &d.task,
        }
    }

    pub fn to_json_string(&self) -> String {
        match self {
            AnyDocument::Ppl(d) => d.to_json_string(),
            AnyDocument::Passkey(d) => d.to_json_string(),
            AnyDocument::Ruler(d) => d.to_json_string(),
        }
    }
}

/// Part `index` (from 0) of `count`. Cell k of a grid belongs to part `k mod count`, so every part
/// gets a like mix of cheap and costly cells.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Shard {
    pub index: usize,
    pub count: usize,
}

impl Shard {
    pub fn new(index: usize, count: usize) -> Result<Self> {
        if count == 0 || index >= count {
            return Err(Error::setting("shard", format!(" {index}/{count}: expected I/N with 0 <= I < N")));
        }
        Ok(Shard { index, count })
    }

    pub fn owns(&self, cell: usize) -> bool {
        cell % self.count == self.index
    }
}

impl FromStr for Shard {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("`{s}`: expected I/N with 0 <= I < N, e.g. 0/4 (I counts from 0)");
        let (i, n) = s.split_once('/').ok_or_else(bad)?;
        let (index, count) =
            (i.trim().parse::<usize>().map_err(|_| bad())?, n.trim().parse::<usize>().map_err(|_| bad())?);
        Shard::new(index, count).map_err(|_| bad())
    }
}

impl std::fmt::Display for Shard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

/// How a run went (nothing here decides results). The library fills what it knows (batch size,
/// seconds, per-batch timing); the face adds its own (command line, model path, threads).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Run {
    #[serde(default)]
    pub command: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model_path: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub threads: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch: Option<usize>,
    #[serde(default)]
    pub total_seconds: f64,
    /// ppl: the texts' paths.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text_paths: Option<Vec<String>>,
    /// ppl: each batch's cells and seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batches: Option<Vec<BatchTime>>,
    /// A merged document: its parts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub merged_from: Option<Vec<Part>>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BatchTime {
    pub cells: Vec<String>,
    pub seconds: f64,
}

/// One file of a merge.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Part {
    pub file: String,
    pub shard: Option<Shard>,
    pub run: Run,
}

/// The model as settings: what decides results (file identity, weights, shape), not its path.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelSettings {
    pub id: String,
    pub name: String,
    pub family: String,
    pub weights: String,
    pub matmul: String,
    pub layers: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub vocab: usize,
    pub max_context: usize,
    pub kv_bytes_per_token: usize,
}

/// Where each policy comes from (`built-in`, or `plugin FILE`), by spec.
pub type PolicySources = std::collections::BTreeMap<String, String>;

/// An `f64` that may be written as `null` (serde_json writes NaN and infinities so): read back as
/// NaN, so that a document round-trips.
pub(crate) fn nullable_f64<'de, D: Deserializer<'de>>(d: D) -> std::result::Result<f64, D::Error> {
    Ok(Option::<f64>::deserialize(d)?.unwrap_or(f64::NAN))
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
    use serde_json::json;

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
    fn shards_parse_and_refuse_nonsense() {
        assert_eq!("1/4".parse::<Shard>(), Ok(Shard { index: 1, count: 4 }));
        for bad in ["4/4", "1/0", "a/2", "1", "-1/2", "1/2/3", ""] {
            let e = bad.parse::<Shard>().unwrap_err();
            assert!(e.contains("I/N"), "{bad}: {e}");
        }
    }

    #[test]
    fn foreign_files_and_other_schemas_are_refused() {
        let e = AnyDocument::from_value(json!({"kind": "msrnn-ppl"}), "old.json").unwrap_err().to_string();
        assert!(e.contains("old.json") && e.contains("not an msrnn eval result"), "{e}");
        let e = AnyDocument::from_value(json!({"kind": KIND, "schema": 99}), "f").unwrap_err().to_string();
        assert!(e.contains("schema 99"), "{e}");
        let e = AnyDocument::from_value(json!({"kind": KIND, "schema": 1, "task": "riddles"}), "f").unwrap_err();
        assert!(e.to_string().contains("unknown eval task `riddles`"), "{e}");
        let e = AnyDocument::from_value(json!({"kind": KIND, "schema": 1, "task": "ppl", "cells": 3}), "f")
            .unwrap_err()
            .to_string();
        assert!(e.contains("not a valid result document"), "{e}");
    }
}

//! `msrnn eval merge`: joins the `--out` files of a grid's shards into the document an unsharded
//! run writes, then prints its table and draws its pictures. Refuses files of different tasks or
//! settings, and parts that leave cells out or hold a cell twice.

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::{bail, Result};
use clap::Args;
use serde_json::{json, Value};

use super::doc::first_difference;
use super::{Doc, Pictures};

#[derive(Args, Debug)]
pub struct MergeArgs {
    /// The shards' result files (written by `msrnn eval TASK --shard I/N --out FILE`).
    #[arg(value_name = "FILES", required = true)]
    files: Vec<PathBuf>,

    /// Write the merged result (the same schema, without a shard) as JSON.
    #[arg(long, value_name = "FILE")]
    out: Option<PathBuf>,

    /// Draw the task's chart: .svg or .png (repeatable).
    #[arg(long, value_name = "FILE")]
    plot: Vec<PathBuf>,

    /// Draw the task's heatmap (passkey): .svg or .png (repeatable).
    #[arg(long, value_name = "FILE")]
    heatmap: Vec<PathBuf>,
}

pub fn run(a: MergeArgs) -> Result<()> {
    let pictures = Pictures { plot: a.plot.clone(), heatmap: a.heatmap.clone() };
    pictures.check()?;
    let docs = a.files.iter().map(|f| Ok((f.display().to_string(), Doc::read(f)?))).collect::<Result<Vec<_>>>()?;
    let doc = merge(&docs)?;
    eprintln!("merged {} files: {} cells", docs.len(), doc.results.len());
    super::finish(&doc, a.out.as_deref(), &pictures)
}

/// The merged document of `(name, doc)` parts.
pub fn merge(docs: &[(String, Doc)]) -> Result<Doc> {
    let Some((first_name, first)) = docs.first() else { bail!("nothing to merge: name the shards' result files") };
    super::task_def(&first.task)?;
    for (name, d) in &docs[1..] {
        if d.task != first.task {
            bail!("{name} holds task `{}`, {first_name} task `{}`: only one task's shards merge", d.task, first.task);
        }
        if let Some(diff) = first_difference(&first.settings, &d.settings, "settings") {
            bail!("{name} and {first_name} were run with different settings ({diff}): they are not parts of one grid");
        }
        if d.cells != first.cells {
            bail!(
                "{name} and {first_name} describe different grids ({} and {} cells)",
                d.cells.len(),
                first.cells.len()
            );
        }
    }
    let mut owner: BTreeMap<&str, &str> = BTreeMap::new();
    let mut results = Vec::new();
    for (name, d) in docs {
        for r in &d.results {
            let id = r["id"].as_str().unwrap_or_default();
            if !first.cells.iter().any(|c| c == id) {
                bail!("{name} holds cell `{id}`, which is not in the grid");
            }
            if let Some(other) = owner.insert(id, name) {
                bail!(
                    "cell `{id}` is in both {other} and {name}: the files overlap (the same shard twice, or shards of different --shard counts)"
                );
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
                absent.dedup();
                absent.sort_unstable();
                absent.dedup();
                let absent: Vec<String> = absent.iter().map(|i| format!("{i}/{}", s.count)).collect();
                format!(" (run --shard {} and merge again)", absent.join(", "))
            }
            None => String::new(),
        };
        bail!("{} of {} cells are missing: {}{more}{hint}", missing.len(), first.cells.len(), list.join(", "));
    }
    let parts: Vec<Value> = docs
        .iter()
        .map(|(name, d)| json!({ "file": name, "shard": d.shard.map(super::grid::Shard::to_json), "run": d.run }))
        .collect();
    let seconds: f64 = docs.iter().filter_map(|(_, d)| d.run["total_seconds"].as_f64()).sum();
    let mut doc = Doc {
        task: first.task.clone(),
        settings: first.settings.clone(),
        cells: first.cells.clone(),
        shard: None,
        results,
        run: json!({ "command": crate::report::command_line(), "merged_from": parts, "total_seconds": seconds }),
    };
    doc.sort_results();
    Ok(doc)
}

#[cfg(test)]
mod tests {
    use super::super::grid::Shard;
    use super::*;

    fn part(i: usize, n: usize, settings: Value) -> (String, Doc) {
        let cells: Vec<String> = (0..5).map(|k| format!("c{k}")).collect();
        let results =
            (0..5).filter(|k| k % n == i).map(|k| json!({ "id": format!("c{k}"), "ppl": k as f64 })).collect();
        (
            format!("part{i}.json"),
            Doc {
                task: "ppl".into(),
                settings,
                cells,
                shard: Some(Shard { index: i, count: n }),
                results,
                run: json!({ "total_seconds": 1.0 }),
            },
        )
    }

    #[test]
    fn parts_merge_in_grid_order_and_bad_sets_are_refused() {
        let s = json!({ "tokens": 64 });
        let merged = merge(&[part(1, 2, s.clone()), part(0, 2, s.clone())]).unwrap();
        let ids: Vec<&str> = merged.results.iter().map(|r| r["id"].as_str().unwrap()).collect();
        assert_eq!(ids, ["c0", "c1", "c2", "c3", "c4"]);
        assert_eq!(merged.shard, None);
        assert_eq!(merged.run["total_seconds"], 2.0);

        let e = merge(&[part(0, 2, s.clone())]).unwrap_err().to_string();
        assert!(e.contains("2 of 5 cells are missing") && e.contains("`c1`") && e.contains("--shard 1/2"), "{e}");
        let e = merge(&[part(0, 2, s.clone()), part(0, 2, s.clone()), part(1, 2, s.clone())]).unwrap_err().to_string();
        assert!(e.contains("cell `c0` is in both") && e.contains("overlap"), "{e}");
        let e = merge(&[part(0, 2, s.clone()), part(1, 2, json!({ "tokens": 128 }))]).unwrap_err().to_string();
        assert!(e.contains("different settings") && e.contains("settings.tokens: 64 vs 128"), "{e}");
        let mut other = part(1, 2, s.clone());
        other.1.task = "passkey".into();
        let e = merge(&[part(0, 2, s.clone()), other]).unwrap_err().to_string();
        assert!(e.contains("task `passkey`"), "{e}");
        let e = merge(&[part(0, 3, s.clone()), part(1, 2, s)]).unwrap_err().to_string();
        assert!(e.contains("overlap") || e.contains("missing"), "{e}");
    }
}

//! `msrnn eval`: the family home of evaluation tasks. Each task is one file that turns its options
//! into a grid of cells (policy x capacity, plus its own axes), runs the selected cells as batches
//! through the engine, and renders tables and plots from the result document alone, so that
//! `eval merge` can redo them from shards' files without a model.
//!
//! - [`grid`]: the policy x capacity axis, `--shard`, `--batch`, the shared options;
//! - [`doc`]: the one JSON schema (settings, cells, shard, results, run);
//! - [`ppl`], [`passkey`]: the tasks; [`merge`]: joins shards.
//!
//! A new task: a file with its `Args`, a `run` that builds a [`Doc`] and calls [`finish`], and its
//! [`TaskDef`] (table and pictures from a `Doc`) listed in [`TASKS`].

pub mod doc;
pub mod grid;
pub mod merge;
pub mod passkey;
pub mod ppl;

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use serde_json::{json, Value};

use crate::model::LoadedModel;
use crate::report;
use crate::Ctx;
pub use doc::Doc;

#[derive(Args, Debug)]
pub struct EvalArgs {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand, Debug)]
enum Task {
    /// Perplexity of a text for a grid of policies x capacities, optionally per segment of a long
    /// stream (`msrnn ppl` is the same command).
    Ppl(ppl::PplArgs),
    /// Passkey retrieval: the share of random keys hidden at a depth of a haystack that greedy
    /// decoding answers exactly, per policy x capacity x haystack length x depth.
    Passkey(passkey::PasskeyArgs),
    /// Join the --out files of shards (`--shard I/N`) into the one table, JSON and pictures.
    Merge(merge::MergeArgs),
    /// Anything else: refused with the list of tasks.
    #[command(external_subcommand)]
    Unknown(Vec<String>),
}

pub fn run(ctx: &Ctx, a: EvalArgs) -> Result<()> {
    match a.task {
        Task::Ppl(a) => ppl::run(ctx, a),
        Task::Passkey(a) => passkey::run(ctx, a),
        Task::Merge(a) => merge::run(a),
        Task::Unknown(words) => bail!(
            "unknown eval task `{}`: the tasks are {}, merge (see `msrnn eval --help`)",
            words.first().map_or("", String::as_str),
            TASKS.iter().map(|t| t.name).collect::<Vec<_>>().join(", ")
        ),
    }
}

/// What the shared machinery needs of a task: its name in documents, and its report, drawn from a
/// document alone (a run's, a shard's or a merged one).
pub struct TaskDef {
    pub name: &'static str,
    /// The table on stdout.
    pub table: fn(&Doc) -> Result<String>,
    /// The pictures: `--plot` files, and the task's extra kind (`--heatmap`) when it has one.
    pub draw: fn(&Doc, &Pictures) -> Result<()>,
}

/// Every task whose documents `merge` understands.
pub const TASKS: &[&TaskDef] = &[&ppl::TASK, &passkey::TASK];

pub fn task_def(name: &str) -> Result<&'static TaskDef> {
    TASKS.iter().copied().find(|t| t.name == name).with_context(|| {
        format!(
            "unknown eval task `{name}` (this msrnn knows {})",
            TASKS.iter().map(|t| t.name).collect::<Vec<_>>().join(", ")
        )
    })
}

/// Picture files asked for.
#[derive(Debug, Default, Clone)]
pub struct Pictures {
    pub plot: Vec<PathBuf>,
    pub heatmap: Vec<PathBuf>,
}

impl Pictures {
    pub fn check(&self) -> Result<()> {
        crate::plot::check_paths(&self.plot, "--plot")?;
        crate::plot::check_paths(&self.heatmap, "--heatmap")
    }
}

/// Prints the table, writes `--out` and draws the pictures.
pub fn finish(doc: &Doc, out: Option<&Path>, pictures: &Pictures) -> Result<()> {
    let task = task_def(&doc.task)?;
    report::print_stdout(&(task.table)(doc)?)?;
    if let Some(out) = out {
        report::write_json(out, &doc.to_json(), "--out")?;
        eprintln!("wrote {}", out.display());
    }
    (task.draw)(doc, pictures)
}

/// The model as settings: what decides results (file identity, weights, shape), not its path.
pub fn model_settings(m: &LoadedModel) -> Value {
    let mut v = m.to_json();
    if let Some(o) = v.as_object_mut() {
        o.remove("path");
    }
    v
}

/// The `run` part of a document: how this run went.
pub fn run_info(ctx: &Ctx, m: &LoadedModel, batch: usize, seconds: f64, extra: Value) -> Value {
    let mut v = json!({
        "command": report::command_line(),
        "model_path": m.path.display().to_string(),
        "threads": ctx.threads,
        "batch": batch,
        "total_seconds": seconds,
    });
    if let (Some(o), Value::Object(e)) = (v.as_object_mut(), extra) {
        o.extend(e);
    }
    v
}

/// A short, stable digest of token ids (FNV-1a over their little-endian bytes): tells two texts
/// apart in settings without their paths.
pub fn tokens_digest(tokens: &[u32]) -> String {
    let bytes: Vec<u8> = tokens.iter().flat_map(|t| t.to_le_bytes()).collect();
    format!("{:016x}", crate::model::fnv64(&bytes, crate::model::FNV_OFFSET))
}

/// A file's name, for settings (paths differ between machines, names and contents do not).
pub fn file_name(p: &Path) -> String {
    p.file_name().map_or_else(|| p.display().to_string(), |n| n.to_string_lossy().into_owned())
}

/// Groups of at most `cap` items, in order.
pub fn batches<T>(items: Vec<T>, cap: usize) -> Vec<Vec<T>> {
    let mut out: Vec<Vec<T>> = Vec::new();
    for it in items {
        match out.last_mut() {
            Some(b) if b.len() < cap.max(1) => b.push(it),
            _ => out.push(vec![it]),
        }
    }
    out
}

/// Refuses picture kinds a task does not draw.
pub fn no_heatmap(p: &Pictures, task: &str) -> Result<()> {
    if !p.heatmap.is_empty() {
        bail!("--heatmap: the {task} task draws no heatmap (use --plot)");
    }
    Ok(())
}

/// `{:.1}%` of a share.
pub fn percent(x: f64) -> String {
    format!("{:.0}%", 100.0 * x)
}

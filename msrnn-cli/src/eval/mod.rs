//! `msrnn eval`: the evaluation tasks of the `msrnn-eval` library behind flags. Each task is one
//! file: its flags, the library call, and its table and pictures, drawn from a result document
//! alone, so that `eval merge` can redo them from shards' files without a model.
//!
//! - [`grid`]: the flags every grid takes (`--policies`, `--capacities`, `--shard`, `--batch`,
//!   `--out`, `--plot`);
//! - [`ppl`], [`passkey`], [`ruler`]: the tasks; [`merge`]: joins shards.

pub mod grid;
pub mod merge;
pub mod passkey;
pub mod ppl;
pub mod ruler;

use std::path::{Path, PathBuf};

use anyhow::{bail, Result};
use clap::{Args, Subcommand};
use indicatif::ProgressBar;
use msrnn_eval::{AnyDocument, Document, EvalModel, Event, Observer};

use crate::context::Ctx;
use crate::model::LoadedModel;
use crate::report;

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
    /// A RULER-style long-context suite: needles in haystacks (single, multi-key, multi-value,
    /// multi-query), variable tracking, common- and frequent-words extraction, scored as the share
    /// of expected strings in the greedy answer, per policy x capacity x task x length (x depth).
    Ruler(ruler::RulerArgs),
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
        Task::Ruler(a) => ruler::run(ctx, a),
        Task::Merge(a) => merge::run(a),
        Task::Unknown(words) => bail!(
            "unknown eval task `{}`: the tasks are {}, merge (see `msrnn eval --help`)",
            words.first().map_or("", String::as_str),
            msrnn_eval::doc::TASKS.join(", ")
        ),
    }
}

/// A library error in the CLI's words: settings named as flags (`depths` -> `--depths`).
pub fn cli_error(e: msrnn_eval::Error) -> anyhow::Error {
    anyhow::anyhow!(e.render(&flag))
}

/// The flag of a setting.
pub fn flag(setting: &str) -> String {
    format!("--{}", setting.replace('_', "-"))
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
pub fn finish(doc: &AnyDocument, out: Option<&Path>, pictures: &Pictures) -> Result<()> {
    let table = match doc {
        AnyDocument::Ppl(d) => ppl::table(d),
        AnyDocument::Passkey(d) => passkey::table(d),
        AnyDocument::Ruler(d) => ruler::table(d),
    };
    report::print_stdout(&table)?;
    if let Some(out) = out {
        report::write_text(out, &doc.to_json_string(), "--out")?;
        eprintln!("wrote {}", out.display());
    }
    match doc {
        AnyDocument::Ppl(d) => ppl::draw(d, pictures),
        AnyDocument::Passkey(d) => passkey::draw(d, pictures),
        AnyDocument::Ruler(d) => ruler::draw(d, pictures),
    }
}

/// Runs a task with its progress on stderr (`header` once the task says how much work it has),
/// then prints its table, writes --out and draws the pictures.
pub fn run_task<S, R>(
    ctx: &Ctx,
    m: &LoadedModel,
    grid: &grid::GridArgs,
    pictures: &Pictures,
    header: impl Fn(&Event) -> String,
    task: impl FnOnce(&EvalModel, &mut dyn Observer) -> msrnn_eval::Result<Document<S, R>>,
    wrap: fn(Document<S, R>) -> AnyDocument,
) -> Result<()> {
    let model = eval_model(m);
    let mut progress = Progress::new(header);
    let result = task(&model, &mut progress);
    progress.finish();
    let mut doc = result.map_err(cli_error)?;
    eprintln!("{} cells in {:.1} s", doc.results.len(), doc.run.total_seconds);
    fill_run(&mut doc.run, ctx, m);
    finish(&wrap(doc), grid.out.as_deref(), pictures)
}

/// The progress header of a prompt task: `passkey: 30 cells x 5 keys = 150 sequences, ...`.
pub fn prompt_header<'a>(
    ctx: &'a Ctx,
    m: &'a LoadedModel,
    grid: &'a grid::GridArgs,
    name: &'a str,
    per_cell: String,
) -> impl Fn(&Event) -> String + 'a {
    move |e| {
        let Event::Start { cells, total_cells, sequences, batch, .. } = e else { return String::new() };
        format!(
            "{name}: {cells} cells{} x {per_cell} = {sequences} sequences, {}, batches of up to {batch}, {} threads",
            grid.shard.map_or(String::new(), |s| format!(" (shard {s} of {total_cells})")),
            m.describe(),
            ctx.threads
        )
    }
}

/// The model as the library sees it.
pub fn eval_model(m: &LoadedModel) -> EvalModel {
    EvalModel { lm: m.lm.clone(), id: m.id.clone(), name: m.short_name() }
}

/// The `run` fields only the CLI knows: command line, model path, threads.
pub fn fill_run(run: &mut msrnn_eval::Run, ctx: &Ctx, m: &LoadedModel) {
    run.command = report::command_line();
    run.model_path = Some(m.path.display().to_string());
    run.threads = Some(ctx.threads);
}

/// Refuses picture kinds a task does not draw.
pub fn no_heatmap(p: &Pictures, task: &str) -> Result<()> {
    if !p.heatmap.is_empty() {
        bail!("--heatmap: the {task} task draws no heatmap (use --plot)");
    }
    Ok(())
}

/// `{:.0}%` of a share.
pub fn percent(x: f64) -> String {
    format!("{:.0}%", 100.0 * x)
}

/// The progress of a task on stderr: a bar on a terminal, one line per note otherwise. `header`
/// is printed when the task says how much work it has.
pub struct Progress<F: Fn(&Event) -> String> {
    pb: Option<ProgressBar>,
    header: F,
}

impl<F: Fn(&Event) -> String> Progress<F> {
    pub fn new(header: F) -> Self {
        Progress { pb: None, header }
    }

    pub fn finish(&self) {
        if let Some(pb) = &self.pb {
            pb.finish_and_clear();
        }
    }
}

impl<F: Fn(&Event) -> String> Observer for Progress<F> {
    fn event(&mut self, e: Event) {
        match e {
            Event::Start { units, .. } => {
                eprintln!("{}", (self.header)(&e));
                self.pb = Some(report::progress(units));
            }
            Event::Batch(what) => {
                if let Some(pb) = &self.pb {
                    pb.set_message(what)
                }
            }
            Event::Progress(n) => {
                if let Some(pb) = &self.pb {
                    pb.set_position(n)
                }
            }
            Event::Note(line) => match &self.pb {
                Some(pb) => report::note(pb, &line),
                None => eprintln!("{line}"),
            },
            Event::Warning(w) => eprintln!("warning: {}", msrnn_eval::error::render_names(&w, &flag)),
        }
    }
}

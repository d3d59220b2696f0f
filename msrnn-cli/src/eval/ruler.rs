//! `msrnn eval ruler`: the RULER-style suite per policy x capacity x task x length (x depth for
//! the needle tasks) (`msrnn_eval::ruler` says how prompts are made and scored): the flags, the
//! tables and a heatmap per policy.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;
use msrnn_eval::ruler::{RulerCell, RulerConfig, RulerDocument, DEFAULT_POLICIES, TASKS};
use msrnn_eval::{AnyDocument, Budget, EvalModel, Observer};

use super::grid::GridArgs;
use super::passkey::PromptArgs;
use super::{cli_error, percent, Pictures};
use crate::context::Ctx;
use crate::plot::{self, Heatmap};
use crate::{policy, report};

/// Default grid: full,window,h2o,tova at C = 64,128,256,512, every task, lengths 1024,2048,4096,
/// depths 0.1,0.5,0.9, 2 trials, chat template, prompt in chunks of 64.
#[derive(Args, Debug)]
#[command(mut_arg("depths", |a| a.default_value("0.1,0.5,0.9")), mut_arg("trials", |a| a.default_value("2")))]
pub struct RulerArgs {
    /// Tasks, comma-separated (niah_single_1,...,vt,cwe,fwe), or all.
    #[arg(long, value_name = "NAMES", value_delimiter = ',', default_value = "all")]
    tasks: Vec<String>,

    #[command(flatten)]
    prompts: PromptArgs,

    /// Real text for the needle tasks' text haystacks: files, or directories of .txt files
    /// (repeatable). [default: data/prose, fetched by ./scripts/fetch-data.sh]
    #[arg(long, value_name = "PATH")]
    text: Vec<PathBuf>,

    /// Raw prompts instead of the model's chat template.
    #[arg(long)]
    raw: bool,

    /// Draw the scores as a task x length heatmap, one panel per policy and capacity: .svg or .png
    /// (repeatable; --plot draws the same).
    #[arg(long, value_name = "FILE")]
    heatmap: Vec<PathBuf>,

    #[command(flatten)]
    grid: GridArgs,
}

pub fn run(ctx: &Ctx, a: RulerArgs) -> Result<()> {
    let registry = policy::registry(ctx)?;
    let tasks: Vec<String> = if a.tasks.iter().any(|t| t == "all") {
        TASKS.iter().map(|t| t.name.to_string()).collect()
    } else {
        a.tasks.clone()
    };
    let mut cfg = RulerConfig {
        grid: a.grid.config(ctx, &registry, DEFAULT_POLICIES)?,
        tasks,
        prompts: a.prompts.prompts(),
        text: a.text.clone(),
        chat: !a.raw,
    };
    let axes = cfg.validate(&registry).map_err(cli_error)?;
    let pictures = Pictures { plot: a.grid.plot.clone(), heatmap: a.heatmap.clone() };
    pictures.check()?;
    if cfg.text.is_empty() && axes.needs_text() {
        cfg.text = vec![report::find_up(msrnn_eval::ruler::DEFAULT_TEXT).context(
            "--text: data/prose not found (the needle tasks hide needles in real text); fetch the texts with \
             ./scripts/fetch-data.sh or pass --text PATH",
        )?];
    }

    let m = crate::model::load(&ctx.global)?;
    let header = super::prompt_header(ctx, &m, &a.grid, "ruler", format!("{} trials", a.prompts.trials));
    let task = |model: &EvalModel, obs: &mut dyn Observer| msrnn_eval::ruler::run(model, &registry, &cfg, obs);
    super::run_task(ctx, &m, &a.grid, &pictures, header, task, AnyDocument::Ruler)
}

fn pct(x: Option<f64>) -> String {
    x.map_or("-".to_string(), percent)
}

/// Scores per task and the average (tasks too hard for the model left out), one row per policy
/// and capacity; then the average per length.
pub fn table(doc: &RulerDocument) -> String {
    let s = &doc.settings;
    let hard = doc.too_hard();
    let rows = doc.rows();
    let label = |p: &str, b: Budget| vec![p.to_string(), b.to_string()];
    let mut header = label("policy", Budget::Full);
    header[1] = "C".into();
    header.extend(s.tasks.iter().map(|t| if hard.contains(&t.name) { format!("{}*", t.name) } else { t.name.clone() }));
    header.push("avg".into());
    let body: Vec<Vec<String>> = rows
        .iter()
        .map(|(p, c)| {
            let mut row = label(p, *c);
            row.extend(s.tasks.iter().map(|t| pct(doc.mean(|r| r.is(p, *c) && r.task == t.name))));
            row.push(pct(doc.average(|r| r.is(p, *c))));
            row
        })
        .collect();
    let mut lh = label("policy", Budget::Full);
    lh[1] = "C".into();
    lh.extend(s.lengths.iter().map(|l| format!("L={l}")));
    let by_length: Vec<Vec<String>> = rows
        .iter()
        .map(|(p, c)| {
            let mut row = label(p, *c);
            row.extend(s.lengths.iter().map(|&l| pct(doc.average(|r: &RulerCell| r.is(p, *c) && r.length == l))));
            row
        })
        .collect();
    let note = if hard.is_empty() {
        String::new()
    } else {
        format!(
            "* too hard for the model (the full cache scores < 50% at {} tokens), left out of the averages: {}\n",
            s.lengths[0],
            hard.join(", ")
        )
    };
    format!(
        "RULER-style suite: share of expected strings in the answers (trials per cell: {}; {}){}\nBy task (all lengths and depths)\n{}{note}By prompt length (average over tasks)\n{}",
        s.trials,
        s.title,
        doc.coverage(),
        report::table(&header, &body),
        report::table(&lh, &by_length)
    )
}

/// A task x length heatmap per policy and capacity, for --plot and --heatmap alike.
pub fn draw(doc: &RulerDocument, p: &Pictures) -> Result<()> {
    let s = &doc.settings;
    let rows = doc.rows();
    for path in p.plot.iter().chain(&p.heatmap) {
        let maps: Vec<Heatmap> = rows
            .iter()
            .map(|(policy, cap)| Heatmap {
                title: cap.title(policy),
                x_label: "prompt length (tokens)".into(),
                y_label: "task".into(),
                x_ticks: s.lengths.iter().enumerate().map(|(i, l)| (i, l.to_string())).collect(),
                y_ticks: s.tasks.iter().enumerate().map(|(i, t)| (i, t.name.clone())).collect(),
                values: s
                    .tasks
                    .iter()
                    .map(|t| {
                        s.lengths
                            .iter()
                            .map(|&l| doc.mean(|r| r.is(policy, *cap) && r.task == t.name && r.length == l))
                            .collect()
                    })
                    .collect(),
                range: (0.0, 1.0),
                annotate: Some(percent),
            })
            .collect();
        let per_row = s.grid.ratios.as_ref().map_or(s.grid.capacities.len(), Vec::len);
        plot::draw_heatmaps(path, &maps, per_row.max(1), (360, 40 + 24 * s.tasks.len() as u32))
            .with_context(|| format!("--plot {}", path.display()))?;
        eprintln!("wrote {} ({})", path.display(), s.title);
    }
    Ok(())
}

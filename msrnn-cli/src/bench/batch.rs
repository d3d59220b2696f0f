//! `msrnn bench --batch B,...` and `msrnn bench --kv-budget SIZE`: many sequences decoding together,
//! one pass over the weights per step for all of them.
//!
//! Each policy prefills ONE state through the contexts (as the context grid does); at each context
//! the state is forked B times (`MsrnnState::clone_with`: buffers and policy bookkeeping) and the
//! B copies decode together through an [`Engine`], one batched forward per step: each copy is fed
//! the text's next tokens, one per step (a prompt in chunks of one token, nothing generated), so
//! every step is one forward over B single-token rows and each copy's logits copied to the host, as
//! a generator's decode step is. The steps are timed in rounds that
//! visit every (policy, context, batch) cell in turn, so a slow spell of a shared machine hits
//! every row alike; each round forks afresh from the prefilled state (only one cell's copies are
//! alive at a time) and runs one untimed step first (warm caches, and the full cache's buffer
//! growth out of the timing).
//!
//! `--kv-budget` is the paper's experiment (Oren et al. 2024: a cache of 1/8 "translates to 4.8X
//! higher throughput"): a bounded state lets more sequences share one pass over the weights within
//! the same memory. A sequence's key/value bytes are measured by a probe (one copy decoding the
//! steps a round runs): the live bytes (what the policy keeps) decide the batch; the allocated
//! bytes (live plus free slots: the full cache's buffers grow by doubling, a bounded state keeps a
//! chunk of headroom) are reported with the batch they would allow.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use msrnn_core::{Capacity, PolicyRegistry, PolicySpec};
use msrnn_engine::{Engine, EngineOptions, Event, GenConfig};
use serde::Serialize;
use serde_json::json;

use super::args::BenchArgs;
use super::llama;
use super::ours::OursRun;
use crate::context::{Ctx, Global};
use crate::model::LoadedModel;
use crate::plot::{self, Chart, Series};
use crate::policy;
use crate::report::{self, bytes};

/// Timed decode steps are split into this many rounds (fewer when there are fewer steps); each
/// round forks afresh and runs one untimed step first.
const ROUNDS: usize = 4;

/// The largest batch of sequences of `per_seq` bytes each within `budget`, and whether `max` cut it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Fit {
    /// Sequences whose bytes fit in the budget.
    pub fits: usize,
    /// The batch measured: `fits`, at most `max`.
    pub batch: usize,
    pub capped: bool,
}

pub fn fit(budget: u64, per_seq: u64, max: usize) -> Fit {
    let fits = usize::try_from(budget / per_seq.max(1)).unwrap_or(usize::MAX);
    Fit { fits, batch: fits.min(max), capped: fits > max }
}

/// One measured cell: a policy at a context, decoding `batch` sequences at once.
#[derive(Debug, Clone, Serialize)]
struct Row {
    /// Policy spec, or `llama.cpp (Q4_1)` for llama-bench's generation test (one sequence).
    name: String,
    /// `None` for the unbounded cache.
    capacity: Option<usize>,
    context: usize,
    batch: usize,
    /// Timed steps (each gives every sequence one token) and their seconds in all.
    decode_steps: usize,
    decode_seconds: f64,
    /// Tokens per second over the whole batch.
    tokens_per_s: f64,
    /// Milliseconds per step: what each sequence waits for its next token.
    ms_per_token: f64,
    /// One sequence's key/value bytes, largest over the steps: live (what the policy keeps) and
    /// allocated (live plus free slots). `None` for llama.cpp's rows.
    live_kv_bytes_per_seq: Option<u64>,
    allocated_kv_bytes_per_seq: Option<u64>,
    /// Process peak resident memory while the cell was measured, weights included.
    peak_rss_bytes: Option<u64>,
    /// With --kv-budget: how many sequences fit by live and by allocated bytes, and whether
    /// --max-batch cut the batch measured.
    #[serde(skip_serializing_if = "Option::is_none")]
    fits_live: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    fits_allocated: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    capped: Option<bool>,
    /// Aggregate tokens/s over the same policy at batch 1 (--batch) or over the full cache at its
    /// own budget batch (--kv-budget).
    #[serde(skip_serializing_if = "Option::is_none")]
    speedup: Option<f64>,
}

/// A prefilled state at one context, and one sequence's KV bytes over the decode steps.
struct Snap<'a> {
    run: OursRun<'a>,
    context: usize,
    prefill_tokens: usize,
    prefill_seconds: f64,
    live: u64,
    allocated: u64,
}

/// One measured cell: a snapshot at a batch size, and what its rounds measured.
struct Cell {
    snap: usize,
    batch: usize,
    fit: Option<(Fit, Fit)>,
    seconds: f64,
    steps: usize,
    rss: Option<u64>,
}

/// What every phase needs: the model, the tokens, the policies at their capacities.
struct Setup<'r> {
    m: LoadedModel,
    registry: &'r PolicyRegistry,
    text_path: PathBuf,
    tokens: Vec<u32>,
    grid: Vec<(PolicySpec, Capacity)>,
    /// The global flags, for the states' recipes (--positions, --kv).
    global: Global,
    llama: Option<llama::Settings>,
    rounds: usize,
    longest_round: usize,
}

pub fn run(
    ctx: &Ctx,
    registry: &PolicyRegistry,
    specs: &[PolicySpec],
    contexts: &[usize],
    a: &BenchArgs,
) -> Result<()> {
    let (budget, sizes) = check(a)?;
    let s = setup(ctx, registry, specs, contexts, a)?;
    let what = match budget {
        Some(b) => format!("KV budget {} (at most {} sequences)", bytes(b), a.max_batch),
        None => format!("batches {sizes:?}"),
    };
    eprintln!(
        "bench: {}, capacity {}, contexts {contexts:?}, {what}, {} decode steps in {} rounds, {} threads, {} positions, KV {}",
        s.m.describe(),
        a.capacity,
        a.decode_steps,
        s.rounds,
        ctx.threads,
        s.global.positions(),
        s.global.kv(),
    );
    let snaps = prefill_all(&s, contexts, a)?;
    let mut cells = plan(&snaps, budget, &sizes, a);
    decode_rounds(&s, &snaps, &mut cells, a)?;
    let mut rows = rows_of(&snaps, &cells);
    let llama = match &s.llama {
        Some(l) => Some(llama_rows(l, &mut rows)?),
        None => None,
    };
    speedups(&mut rows, budget.is_some());
    let title = format!(
        "{}, C={}, {} thread{}",
        s.m.describe(),
        a.capacity,
        ctx.threads,
        if ctx.threads == 1 { "" } else { "s" }
    );
    let text = match budget {
        Some(b) => format!(
            "KV budget {}: {title}\n{}{}",
            bytes(b),
            budget_table(&rows, contexts),
            budget_summary(&rows, contexts, b)
        ),
        None => format!("Batched decode: {title}\n{}", batch_table(&rows, contexts)),
    };
    report::print_stdout(&text)?;
    if let Some(r) = &llama {
        eprintln!(
            "note: {} rows are llama-bench's tg{} at each depth, one sequence (`{}`)",
            r.name(),
            a.decode_steps,
            r.command
        );
    }
    if let Some(out) = &a.out {
        let doc = document(ctx, &s, &snaps, specs, contexts, budget, &sizes, a, llama.as_ref(), &rows);
        report::write_json(out, &doc, "--out")?;
        eprintln!("wrote {}", out.display());
    }
    for p in &a.plot {
        plot::draw_panels(p, &charts(&rows, &title)).with_context(|| format!("--plot {}", p.display()))?;
        eprintln!("wrote {}", p.display());
    }
    Ok(())
}

/// `--kv-budget` and the batch sizes (sorted, each once), checked.
fn check(a: &BenchArgs) -> Result<(Option<u64>, Vec<usize>)> {
    let budget = a.kv_budget;
    let mut sizes = a.batch.clone();
    sizes.sort_unstable();
    sizes.dedup();
    if budget.is_none() && sizes.first() == Some(&0) {
        bail!("--batch sizes must be at least 1, e.g. --batch 1,4,16,64");
    }
    if budget.is_some() {
        if a.max_batch == 0 {
            bail!("--max-batch must be at least 1");
        }
        if !a.plot.is_empty() {
            bail!("--plot draws the context grid and --batch; --kv-budget writes a table and --out JSON");
        }
    }
    Ok((budget, sizes))
}

/// Loads the model and the text, checks every policy at its capacity.
fn setup<'r>(
    ctx: &Ctx,
    registry: &'r PolicyRegistry,
    specs: &[PolicySpec],
    contexts: &[usize],
    a: &BenchArgs,
) -> Result<Setup<'r>> {
    let text_path = report::text_path(a.tokens_file.as_deref(), "--tokens-file")?;
    report::check_text(&text_path, "--tokens-file")?;
    let m = crate::model::load(&ctx.global)?;
    let llama = match &a.llama_bench {
        Some(p) => Some(llama::settings(p, &m, ctx, contexts, a)?),
        None => None,
    };
    let rounds = ROUNDS.min(a.decode_steps);
    let longest_round = a.decode_steps.div_ceil(rounds);
    // Each round restarts from the prefilled state: one untimed step, then the round's steps.
    let need = contexts[contexts.len() - 1] + 1 + longest_round;
    let all = report::tokenize_prefix(&m, &text_path, "--tokens-file", need)?.tokens;
    if all.len() < need {
        bail!(
            "--tokens-file {} has {} tokens; the longest context plus a round of decode steps needs {need}: use a longer \
             text or shorter --contexts",
            text_path.display(),
            all.len()
        );
    }
    let tokens = all[..need].to_vec();
    let mut grid = Vec::new();
    for s in specs {
        let cap = policy::capacity_for(registry, s, a.capacity, "--capacity")?;
        drop(policy::make_state(m.model(), registry, &ctx.global.recipe(s, cap, a.chunk))?);
        grid.push((s.clone(), cap));
    }
    let global = ctx.global.clone();
    Ok(Setup { m, registry, text_path, tokens, grid, global, llama, rounds, longest_round })
}

/// Prefills every policy through the contexts, keeping a copy at each.
fn prefill_all<'s>(s: &'s Setup<'_>, contexts: &[usize], a: &BenchArgs) -> Result<Vec<Snap<'s>>> {
    let (tokens, longest_round) = (&s.tokens, s.longest_round);
    let last = contexts[contexts.len() - 1] as u64;
    let pb = report::progress(s.grid.len() as u64 * last);
    let mut snaps: Vec<Snap<'_>> = Vec::new();
    for (spec, cap) in &s.grid {
        let mut run = OursRun::new(&s.m, s.registry, spec, *cap, a.chunk, &s.global)?;
        for &context in contexts {
            pb.set_message(format!("{spec} @ {context}: prefill"));
            let (n, secs) = run.prefill(context, tokens, &mut |n| pb.inc(n as u64))?;
            let (live, allocated) = probe(&run, &tokens[context..context + 1 + longest_round])?;
            snaps.push(Snap {
                run: run.snapshot()?,
                context,
                prefill_tokens: n,
                prefill_seconds: secs,
                live,
                allocated,
            });
        }
    }
    pb.finish_and_clear();

    Ok(snaps)
}

/// The cells: every snapshot at every batch size, or at the batch its budget allows.
fn plan(snaps: &[Snap<'_>], budget: Option<u64>, sizes: &[usize], a: &BenchArgs) -> Vec<Cell> {
    let mut cells = Vec::new();
    for (i, s) in snaps.iter().enumerate() {
        match budget {
            Some(b) => {
                let (by_live, by_alloc) = (fit(b, s.live, a.max_batch), fit(b, s.allocated, a.max_batch));
                if by_live.batch == 0 {
                    eprintln!(
                        "{} @ {}: one sequence ({} of live KV) does not fit in {}",
                        s.run.spec,
                        s.context,
                        bytes(s.live),
                        bytes(b)
                    );
                }
                if by_live.capped {
                    eprintln!(
                        "{} @ {}: {} sequences fit, --max-batch {} measures {}",
                        s.run.spec, s.context, by_live.fits, a.max_batch, by_live.batch
                    );
                }
                cells.push(Cell {
                    snap: i,
                    batch: by_live.batch,
                    fit: Some((by_live, by_alloc)),
                    seconds: 0.0,
                    steps: 0,
                    rss: None,
                });
            }
            None => {
                for &b in sizes {
                    cells.push(Cell { snap: i, batch: b, fit: None, seconds: 0.0, steps: 0, rss: None });
                }
            }
        }
    }

    cells
}

/// The timed rounds: each visits every cell, forking its snapshot afresh and running one untimed
/// step before the round's steps.
fn decode_rounds(s: &Setup<'_>, snaps: &[Snap<'_>], cells: &mut [Cell], a: &BenchArgs) -> Result<()> {
    let (m, registry, tokens, rounds) = (&s.m, s.registry, &s.tokens, s.rounds);
    // No prefill budget: every copy feeds its token at every step.
    let mut engine =
        Engine::with_model(m.lm.clone(), Arc::new(registry.clone()), EngineOptions { prefill_budget: usize::MAX });
    // The text's tokens as each copy's prompt, one per step; nothing is generated.
    let feed = GenConfig { max_tokens: 0, prefill_chunk: 1, ..GenConfig::default() };
    let total: u64 = cells.iter().map(|c| (c.batch * (a.decode_steps + rounds)) as u64).sum();
    let pb = report::progress(total);
    let rss_ok = report::reset_peak_rss();
    for round in 0..rounds {
        let n = a.decode_steps / rounds + usize::from(round < a.decode_steps % rounds);
        for cell in cells.iter_mut().filter(|c| c.batch > 0) {
            let snap = &snaps[cell.snap];
            pb.set_message(format!(
                "{} @ {} x{}: round {}/{rounds}",
                snap.run.spec,
                snap.context,
                cell.batch,
                round + 1
            ));
            let forks = (0..cell.batch)
                .map(|_| policy::fork(m.model(), registry, snap.run.spec, &snap.run.state))
                .collect::<Result<Vec<_>>>()
                .with_context(|| format!("{} @ {}: cannot make {} copies", snap.run.spec, snap.context, cell.batch))?;
            let steps = &tokens[snap.context..snap.context + 1 + n];
            for fork in forks {
                engine.add(fork, steps.to_vec(), feed.clone()).context("adding a copy to the engine")?;
            }
            let _ = report::reset_peak_rss();
            step(&mut engine)?;
            pb.inc(cell.batch as u64);
            for _ in 1..steps.len() {
                cell.seconds += step(&mut engine)?;
                pb.inc(cell.batch as u64);
            }
            debug_assert_eq!(engine.active(), 0, "every copy has fed its tokens");
            cell.steps += n;
            if rss_ok {
                cell.rss = cell.rss.max(report::peak_rss());
            }
        }
    }
    pb.finish_and_clear();

    Ok(())
}

/// A row per cell.
fn rows_of(snaps: &[Snap<'_>], cells: &[Cell]) -> Vec<Row> {
    cells
        .iter()
        .map(|c| {
            let s = &snaps[c.snap];
            let measured = c.batch > 0 && c.seconds > 0.0;
            Row {
                name: s.run.spec.to_string(),
                capacity: s.run.cap.get(),
                context: s.context,
                batch: c.batch,
                decode_steps: c.steps,
                decode_seconds: c.seconds,
                tokens_per_s: if measured { (c.batch * c.steps) as f64 / c.seconds } else { 0.0 },
                ms_per_token: if measured { c.seconds * 1000.0 / c.steps as f64 } else { 0.0 },
                live_kv_bytes_per_seq: Some(s.live),
                allocated_kv_bytes_per_seq: Some(s.allocated),
                peak_rss_bytes: c.rss,
                fits_live: c.fit.map(|f| f.0.fits),
                fits_allocated: c.fit.map(|f| f.1.fits),
                capped: c.fit.map(|f| f.0.capped),
                speedup: None,
            }
        })
        .collect()
}

/// llama-bench's generation rows (one sequence) added to `rows`; its report.
fn llama_rows(s: &llama::Settings, rows: &mut Vec<Row>) -> Result<llama::Report> {
    eprintln!("running {}", s.command());
    let r = llama::run(s)?;
    for &d in &s.depths {
        if let Some(tg) = r.tg(d) {
            rows.push(Row {
                name: r.name(),
                capacity: None,
                context: d,
                batch: 1,
                decode_steps: tg.n_gen,
                decode_seconds: tg.n_gen as f64 / tg.avg_ts,
                tokens_per_s: tg.avg_ts,
                ms_per_token: 1000.0 / tg.avg_ts,
                live_kv_bytes_per_seq: None,
                allocated_kv_bytes_per_seq: None,
                peak_rss_bytes: None,
                fits_live: None,
                fits_allocated: None,
                capped: None,
                speedup: None,
            });
        }
    }
    Ok(r)
}

/// The `--out` document.
#[allow(clippy::too_many_arguments)]
fn document(
    ctx: &Ctx,
    s: &Setup<'_>,
    snaps: &[Snap<'_>],
    specs: &[PolicySpec],
    contexts: &[usize],
    budget: Option<u64>,
    sizes: &[usize],
    a: &BenchArgs,
    llama: Option<&llama::Report>,
    rows: &[Row],
) -> serde_json::Value {
    let prefills: Vec<serde_json::Value> = snaps
        .iter()
        .map(|s| {
            json!({
                "name": s.run.spec.to_string(),
                "context": s.context,
                "prefill_tokens": s.prefill_tokens,
                "prefill_seconds": s.prefill_seconds,
                "prefill_tokens_per_s": s.prefill_tokens as f64 / s.prefill_seconds,
            })
        })
        .collect();
    json!({
        "kind": if budget.is_some() { "msrnn-bench-kv-budget" } else { "msrnn-bench-batch" },
        "msrnn_version": env!("CARGO_PKG_VERSION"),
        "command": report::command_line(),
        "model": s.m.to_json(),
        "tokens_file": s.text_path.display().to_string(),
        "policies": specs.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
        "capacity": a.capacity,
        "contexts": contexts,
        "batch_sizes": if budget.is_some() { None } else { Some(sizes) },
        "kv_budget_bytes": budget,
        "kv_budget_counts": budget.map(|_| "live"),
        "max_batch": budget.map(|_| a.max_batch),
        "decode_steps": a.decode_steps,
        "rounds": s.rounds,
        "prefill_chunk": a.chunk,
        "threads": ctx.threads,
        "positions": s.global.positions().to_string(),
        "kv": s.global.kv().to_string(),
        "prefill": prefills,
        "llama_bench": llama,
        "rows": rows,
    })
}

/// One copy of the prefilled state decoding `tokens` alone: its largest live and allocated KV
/// bytes over those steps (what one sequence of a batch holds).
fn probe(run: &OursRun<'_>, tokens: &[u32]) -> Result<(u64, u64)> {
    let mut copy = run.snapshot()?;
    let (mut live, mut alloc) = (copy.state.live_kv_bytes(), copy.state.allocated_kv_bytes());
    for &t in tokens {
        copy.m.model().forward(&[t], &mut copy.state, false).with_context(|| format!("{} decode", copy.spec))?;
        live = live.max(copy.state.live_kv_bytes());
        alloc = alloc.max(copy.state.allocated_kv_bytes());
    }
    Ok((live as u64, alloc as u64))
}

/// One engine step: one batched forward in which every copy feeds its next token; the seconds it
/// took, the copy of each sequence's logits to the host included (as a generator would use them).
/// The copies leave at their last token; their states are dropped after the timing.
fn step(engine: &mut Engine) -> Result<f64> {
    let t0 = Instant::now();
    let events = engine.step().context("batched decode step")?;
    let seconds = t0.elapsed().as_secs_f64();
    for e in events {
        if let Event::Failed { id, error } = e {
            bail!("batched decode step: copy {id}: {error}");
        }
    }
    Ok(seconds)
}

/// --batch: each row over the same policy and context at batch 1 (when measured). --kv-budget:
/// each row over the full cache's row at the same context.
fn speedups(rows: &mut [Row], budget: bool) {
    let base: Vec<Option<f64>> = rows
        .iter()
        .map(|r| {
            rows.iter()
                .find(|b| {
                    b.context == r.context
                        && b.tokens_per_s > 0.0
                        && if budget {
                            b.capacity.is_none() && b.live_kv_bytes_per_seq.is_some()
                        } else {
                            b.name == r.name && b.batch == 1
                        }
                })
                .map(|b| b.tokens_per_s)
        })
        .collect();
    for (r, b) in rows.iter_mut().zip(base) {
        r.speedup = b.filter(|_| r.tokens_per_s > 0.0 && r.live_kv_bytes_per_seq.is_some()).map(|b| r.tokens_per_s / b);
    }
}

fn cap_str(c: Option<usize>) -> String {
    report::or_dash(c, |c| c.to_string())
}

fn batch_table(rows: &[Row], contexts: &[usize]) -> String {
    let header =
        ["policy", "C", "context", "batch", "tok/s (all)", "ms/tok (each)", "x batch 1", "KV/seq", "KV (batch)"];
    report::table_by_context(
        &header,
        rows,
        contexts,
        |r| r.context,
        |r| {
            vec![
                r.name.clone(),
                cap_str(r.capacity),
                r.context.to_string(),
                r.batch.to_string(),
                format!("{:.1}", r.tokens_per_s),
                format!("{:.2}", r.ms_per_token),
                report::or_dash(r.speedup, |s| format!("{s:.2}x")),
                report::or_dash(r.live_kv_bytes_per_seq, bytes),
                report::or_dash(r.live_kv_bytes_per_seq, |b| bytes(b * r.batch as u64)),
            ]
        },
    )
}

fn budget_table(rows: &[Row], contexts: &[usize]) -> String {
    let header = [
        "policy",
        "C",
        "context",
        "KV/seq live",
        "KV/seq alloc",
        "fit live",
        "fit alloc",
        "batch",
        "tok/s (all)",
        "ms/tok (each)",
        "x full",
    ];
    report::table_by_context(
        &header,
        rows,
        contexts,
        |r| r.context,
        |r| {
            let measured = r.batch > 0 && r.tokens_per_s > 0.0;
            vec![
                r.name.clone(),
                cap_str(r.capacity),
                r.context.to_string(),
                report::or_dash(r.live_kv_bytes_per_seq, bytes),
                report::or_dash(r.allocated_kv_bytes_per_seq, bytes),
                cap_str(r.fits_live),
                cap_str(r.fits_allocated),
                format!("{}{}", r.batch, if r.capped == Some(true) { " (cap)" } else { "" }),
                if measured { format!("{:.1}", r.tokens_per_s) } else { "-".into() },
                if measured { format!("{:.2}", r.ms_per_token) } else { "-".into() },
                report::or_dash(r.speedup, |s| format!("{s:.2}x")),
            ]
        },
    )
}

/// One line per bounded policy: its aggregate throughput over the full cache's, same budget.
fn budget_summary(rows: &[Row], contexts: &[usize], budget: u64) -> String {
    let mut s = String::new();
    for &c in contexts {
        let Some(full) =
            rows.iter().find(|r| r.context == c && r.capacity.is_none() && r.live_kv_bytes_per_seq.is_some())
        else {
            continue;
        };
        for r in rows.iter().filter(|r| r.context == c && r.capacity.is_some()) {
            if let Some(x) = r.speedup {
                s.push_str(&format!(
                    "{} C={} @ {c}: {x:.2}x the full cache's throughput in {} of KV (batch {}{} vs {}; {:.1} vs {:.1} \
                     tokens/s)\n",
                    r.name,
                    cap_str(r.capacity),
                    bytes(budget),
                    r.batch,
                    if r.capped == Some(true) { ", capped by --max-batch" } else { "" },
                    full.batch,
                    r.tokens_per_s,
                    full.tokens_per_s
                ));
            }
        }
    }
    s
}

fn charts(rows: &[Row], title: &str) -> Vec<Chart> {
    let mut keys: Vec<(String, usize)> = Vec::new();
    for r in rows {
        if !keys.contains(&(r.name.clone(), r.context)) {
            keys.push((r.name.clone(), r.context));
        }
    }
    let series = |f: &dyn Fn(&Row) -> f64| -> Vec<Series> {
        keys.iter()
            .map(|(n, c)| Series {
                name: format!("{n} @ {c}"),
                points: rows
                    .iter()
                    .filter(|r| &r.name == n && r.context == *c && r.tokens_per_s > 0.0)
                    .map(|r| (r.batch as f64, f(r)))
                    .collect(),
            })
            .collect()
    };
    vec![
        Chart {
            title: format!("Batched decode: {title}"),
            x_label: "batch (sequences decoding together)".into(),
            y_label: "tokens per second, all sequences".into(),
            log_y: true,
            series: series(&|r| r.tokens_per_s),
            hlines: vec![],
        },
        Chart {
            title: "Each sequence".into(),
            x_label: "batch (sequences decoding together)".into(),
            y_label: "ms per token".into(),
            log_y: true,
            series: series(&|r| r.ms_per_token),
            hlines: vec![],
        },
    ]
}

#[cfg(test)]
mod tests {
    use super::super::args::parse_size;
    use super::*;

    #[test]
    fn sizes_parse_in_binary_and_decimal_units() {
        assert_eq!(parse_size("4GiB"), Ok(4 << 30));
        assert_eq!(parse_size("4G"), Ok(4 << 30));
        assert_eq!(parse_size("4 gb"), Ok(4_000_000_000));
        assert_eq!(parse_size("512MiB"), Ok(512 << 20));
        assert_eq!(parse_size("1.5K"), Ok(1536));
        assert_eq!(parse_size("1000"), Ok(1000));
        assert_eq!(parse_size("10B"), Ok(10));
        for bad in ["", "GiB", "4 parsecs", "0", "-1G", "0.1"] {
            assert!(parse_size(bad).is_err(), "{bad}");
        }
    }

    /// SmolLM2-135M: 30 layers x 2 (K, V) x 3 KV heads x 64 x 4 bytes = 46080 bytes per token.
    #[test]
    fn the_budget_picks_the_largest_batch_that_fits() {
        const TOKEN: u64 = 46080;
        let budget = 4u64 << 30;
        // The full cache at context 8192 after 1 + 4 decode steps: 11 sequences.
        let full = fit(budget, 8197 * TOKEN, 256);
        assert_eq!(full, Fit { fits: 11, batch: 11, capped: false });
        assert!((11 * 8197 * TOKEN..12 * 8197 * TOKEN).contains(&budget));
        // TOVA C=512: 182 sequences of 512 live tokens; allocated (C plus a chunk of 64) 161.
        assert_eq!(fit(budget, 512 * TOKEN, 256), Fit { fits: 182, batch: 182, capped: false });
        assert_eq!(fit(budget, 576 * TOKEN, 256).fits, 161);
        // A small C asks for more than --max-batch allows.
        assert_eq!(fit(budget, 16 * TOKEN, 256), Fit { fits: 5825, batch: 256, capped: true });
        // Exactly the budget fits; one byte less does not.
        assert_eq!(fit(1000, 500, 8).fits, 2);
        assert_eq!(fit(999, 500, 8).fits, 1);
        assert_eq!(fit(499, 500, 8), Fit { fits: 0, batch: 0, capped: false });
    }
}

//! The context grid of `msrnn bench`: prefill and decode speed, KV bytes and peak memory per policy
//! vs. context length, with the full cache and, when the model's family has one, its baseline
//! (another implementation of the family on the same file, e.g. candle's own `quantized_llama`).

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use msrnn_core::{Capacity, PolicyRegistry, PolicySpec};
use msrnn_modelkit::{Baseline, BaselineModel};
use serde::Serialize;
use serde_json::json;

use super::args::BenchArgs;
use super::llama;
use super::ours::OursRun;
use crate::context::Ctx;
use crate::model::LoadedModel;
use crate::plot::{self, Chart, Series};
use crate::policy;
use crate::report::{self, bytes};

#[derive(Debug, Clone, Serialize)]
struct Row {
    /// Policy spec, or the baseline's name and how it holds its matrices (`candle quantized_llama (Q4_1)`).
    name: String,
    /// `None` for the unbounded cache.
    capacity: Option<usize>,
    /// Tokens seen before the timed decode steps.
    context: usize,
    /// Tokens prefilled for this row: from the previous context (or 0) to `context`.
    prefill_tokens: usize,
    prefill_seconds: f64,
    prefill_tokens_per_s: f64,
    decode_steps: usize,
    decode_ms_per_token: f64,
    /// Largest live key/value bytes over the steps (all layers); `None` for llama.cpp's rows.
    peak_live_kv_bytes: Option<u64>,
    /// Key/value bytes allocated at the end (live plus free slots).
    allocated_kv_bytes: Option<u64>,
    /// Largest live tokens per layer.
    max_live: Option<usize>,
    /// Process peak resident memory while the row was measured, model weights included. Our rows'
    /// states are all alive at once (their decode steps are interleaved), so this covers all of
    /// them; `--stream` measures one policy's memory alone.
    peak_rss_bytes: Option<u64>,
}

/// What the grid runs on: the model, its tokens, the policies at their capacities, the baseline
/// and llama-bench when asked for.
struct Setup<'r> {
    m: LoadedModel,
    text_path: PathBuf,
    tokens: Vec<u32>,
    grid: Vec<(PolicySpec, Capacity)>,
    registry: &'r PolicyRegistry,
    /// The global flags, for the states' recipes (--positions, --kv).
    global: crate::context::Global,
    baseline: Option<&'static dyn Baseline>,
    llama: Option<llama::Settings>,
}

pub fn run(
    ctx: &Ctx,
    registry: &PolicyRegistry,
    specs: &[PolicySpec],
    contexts: &[usize],
    a: &BenchArgs,
) -> Result<()> {
    let s = setup(ctx, registry, specs, contexts, a)?;
    let n_baselines = if s.baseline.is_some() { a.baseline_weights.len() as u64 } else { 0 };
    let last = contexts[contexts.len() - 1] as u64;
    let total: u64 = s.grid.len() as u64 * (last + (contexts.len() * a.decode_steps) as u64)
        + n_baselines * (last + a.decode_steps as u64);
    let pb = report::progress(total);
    let mut rows = measure_ours(&s, contexts, a, &pb)?;
    let (model_json, describe) = (s.m.to_json(), s.m.describe());
    let Setup { m, text_path, tokens, baseline, llama, .. } = s;
    let mut notes = Vec::new();
    if let Some(b) = baseline {
        let (path, info, device) = (m.path.clone(), m.info().clone(), m.model().device().clone());
        // Our model goes first so the baseline's peak memory holds one set of weights.
        drop(m);
        rows.extend(measure_baseline(b, &path, &info, &device, &tokens, contexts, a, &pb, &mut notes)?);
    }
    pb.finish_and_clear();
    let llama = match &llama {
        Some(s) => {
            eprintln!("running {}", s.command());
            let r = llama::run(s)?;
            for row in llama_rows(&r, s) {
                eprintln!("{}", row_line(&row));
                rows.push(row);
            }
            notes.push(llama_note(&r, s));
            Some(r)
        }
        None => None,
    };
    let title =
        format!("{describe}, C={}, {} thread{}", a.capacity, ctx.threads, if ctx.threads == 1 { "" } else { "s" });
    report::print_stdout(&format!("Bench: {title}\n{}", bench_table(&rows, contexts)))?;
    for n in &notes {
        eprintln!("note: {n}");
    }
    if let Some(out) = &a.out {
        let doc = json!({
            "kind": "msrnn-bench",
            "msrnn_version": env!("CARGO_PKG_VERSION"),
            "command": report::command_line(),
            "model": model_json,
            "tokens_file": text_path.display().to_string(),
            "policies": specs.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
            "capacity": a.capacity,
            "contexts": contexts,
            "decode_steps": a.decode_steps,
            "prefill_chunk": a.chunk,
            "threads": ctx.threads,
            "positions": ctx.global.positions().to_string(),
            "kv": ctx.global.kv().to_string(),
            "baseline": notes,
            "llama_bench": llama,
            "rows": rows,
        });
        report::write_json(out, &doc, "--out")?;
        eprintln!("wrote {}", out.display());
    }
    for p in &a.plot {
        plot::draw_panels(p, &charts(&rows, &title)).with_context(|| format!("--plot {}", p.display()))?;
        eprintln!("wrote {}", p.display());
    }
    Ok(())
}

/// Loads the model and the text, picks the baseline, checks every policy at its capacity.
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
    let llama = a.llama_bench.as_ref().map(|p| llama::settings(p, &m, ctx, contexts, a)).transpose()?;
    // The family's baseline, if it has one that runs this file and the flags want it.
    let baseline = m
        .family()
        .and_then(|f| f.baseline)
        .filter(|b| !a.no_baseline && !a.baseline_weights.is_empty() && b.runs(&m.path));
    if let Some(b) = baseline {
        if let Some(w) = a.baseline_weights.iter().find(|w| !b.formats().contains(w)) {
            let can: Vec<String> = b.formats().iter().map(|f| f.to_string()).collect();
            let can = match can.split_last() {
                Some((last, rest)) if !rest.is_empty() => format!("{} or {last}", rest.join(", ")),
                _ => can.join(""),
            };
            bail!("--baseline-weights {w}: {} can run {can}", b.name());
        }
    }
    let need = contexts[contexts.len() - 1] + a.decode_steps;
    let mut tokens = report::tokenize_prefix(&m, &text_path, "--tokens-file", need)?.tokens;
    if tokens.len() < need {
        bail!(
            "--tokens-file {} has {} tokens; the longest context plus --decode-steps needs {need}: use a longer text or shorter --contexts",
            text_path.display(),
            tokens.len()
        );
    }
    tokens.truncate(need);
    let mut grid = Vec::new();
    for s in specs {
        let cap = policy::capacity_for(registry, s, a.capacity, "--capacity")?;
        drop(policy::make_state(m.model(), registry, &ctx.global.recipe(s, cap, a.chunk))?);
        grid.push((s.clone(), cap));
    }
    let max_ctx = m.info().max_context;
    if need > max_ctx {
        eprintln!(
            "warning: contexts up to {need} tokens run past the model's context of {max_ctx}: timings stay meaningful, the full \
             cache's outputs do not"
        );
    }
    eprintln!(
        "bench: {}, capacity {}, contexts {:?}, {} decode steps, {} threads, {} positions, KV {}{}",
        m.describe(),
        a.capacity,
        contexts,
        a.decode_steps,
        ctx.threads,
        ctx.global.positions(),
        ctx.global.kv(),
        baseline.map_or(String::new(), |b| format!(", baseline {} up to position {}", b.name(), b.max_positions()))
    );
    let global = ctx.global.clone();
    Ok(Setup { m, text_path, tokens, grid, registry, global, baseline, llama })
}

/// Every policy prefills one state through the contexts in order, so each row's prefill rate is
/// that stretch's (from the previous context). At each context the state is copied, and the
/// copies' decode steps are timed at the end, interleaved in rounds across every policy and
/// context: a slow spell of a shared machine then hits every row alike, and "the same cost at
/// 1024 and 8192 tokens" is a comparison within one window of time.
fn measure_ours(s: &Setup<'_>, contexts: &[usize], a: &BenchArgs, pb: &indicatif::ProgressBar) -> Result<Vec<Row>> {
    let tokens = &s.tokens;
    let mut runs = s
        .grid
        .iter()
        .map(|(spec, cap)| OursRun::new(&s.m, s.registry, spec, *cap, a.chunk, &s.global))
        .collect::<Result<Vec<_>>>()?;
    let mut snaps = Vec::new();
    for &context in contexts {
        for run in runs.iter_mut() {
            pb.set_message(format!("{} @ {context}: prefill", run.spec));
            let (n, secs) = run.prefill(context, tokens, &mut |n| pb.inc(n as u64))?;
            snaps.push((context, n, secs, run.snapshot()?));
        }
    }
    drop(runs);
    pb.set_message("decode, interleaved");
    let rss_ok = report::reset_peak_rss();
    let mut decode = vec![0.0; snaps.len()];
    let mut off = 0;
    for round in 0..DECODE_ROUNDS.min(a.decode_steps) {
        let n = round_steps(a.decode_steps, round);
        for ((context, _, _, snap), secs) in snaps.iter_mut().zip(&mut decode) {
            *secs += snap.decode(&tokens[*context + off..*context + off + n])?;
            pb.inc(n as u64);
        }
        off += n;
    }
    let rss = if rss_ok { report::peak_rss() } else { None };
    let mut rows = Vec::new();
    for ((context, n, p, snap), d) in snaps.iter().zip(decode) {
        let row = row(snap, *context, *n, *p, a.decode_steps, d, rss);
        report::note(pb, &row_line(&row));
        rows.push(row);
    }
    Ok(rows)
}

/// The baseline's rows, in each of `--baseline-weights`; its description goes to `notes`.
#[allow(clippy::too_many_arguments)]
fn measure_baseline(
    b: &'static dyn Baseline,
    path: &std::path::Path,
    info: &msrnn_core::ModelInfo,
    device: &candle_core::Device,
    tokens: &[u32],
    contexts: &[usize],
    a: &BenchArgs,
    pb: &indicatif::ProgressBar,
    notes: &mut Vec<String>,
) -> Result<Vec<Row>> {
    let mut rows = Vec::new();
    for &bw in &a.baseline_weights {
        pb.set_message(format!("loading {} ({bw})", b.name()));
        let mut w =
            b.load(path, bw, device).with_context(|| format!("{}: cannot load {}", b.name(), path.display()))?;
        let (kind, max) = (w.kind(), b.max_positions());
        let name = format!("{} ({kind})", b.name());
        notes.push(format!("{name}: {}, {kind} matrices; it stops at position {max}", b.description()));
        w.clear();
        let mut pos = 0;
        for &context in contexts {
            if context + a.decode_steps > max {
                report::note(pb, &format!("{name} @ {context}: skipped (it stops at position {max})"));
                continue;
            }
            pb.set_message(format!("{name} @ {context}"));
            let row = bench_baseline(&mut *w, &name, info, &mut pos, context, tokens, a, &mut |n| pb.inc(n as u64))?;
            report::note(pb, &row_line(&row));
            rows.push(row);
        }
        w.clear();
    }
    Ok(rows)
}

fn row(
    run: &OursRun<'_>,
    context: usize,
    prefilled: usize,
    prefill: f64,
    steps: usize,
    decode: f64,
    rss: Option<u64>,
) -> Row {
    Row {
        name: run.spec.to_string(),
        capacity: run.cap.get(),
        context,
        prefill_tokens: prefilled,
        prefill_seconds: prefill,
        prefill_tokens_per_s: prefilled as f64 / prefill,
        decode_steps: steps,
        decode_ms_per_token: decode * 1000.0 / steps as f64,
        peak_live_kv_bytes: Some(run.peak_kv as u64),
        allocated_kv_bytes: Some(run.state.allocated_kv_bytes() as u64),
        max_live: Some(run.state.max_live()),
        peak_rss_bytes: rss,
    }
}

fn row_line(r: &Row) -> String {
    format!(
        "{:>24} @ {:>5}: prefill {:>7.0} tokens/s, decode {:>7.2} ms/token, live KV {}",
        r.name,
        r.context,
        r.prefill_tokens_per_s,
        r.decode_ms_per_token,
        r.peak_live_kv_bytes.map_or("-".into(), bytes)
    )
}

/// One row per depth: its prefill (`pp` at that depth) and decode (`tg` at that depth).
fn llama_rows(r: &llama::Report, s: &llama::Settings) -> Vec<Row> {
    s.depths
        .iter()
        .filter_map(|&d| {
            let (pp, tg) = (r.pp(d)?, r.tg(d)?);
            Some(Row {
                name: r.name(),
                capacity: None,
                context: d,
                prefill_tokens: pp.n_prompt,
                prefill_seconds: pp.n_prompt as f64 / pp.avg_ts,
                prefill_tokens_per_s: pp.avg_ts,
                decode_steps: tg.n_gen,
                decode_ms_per_token: 1000.0 / tg.avg_ts,
                peak_live_kv_bytes: None,
                allocated_kv_bytes: None,
                max_live: None,
                peak_rss_bytes: None,
            })
        })
        .collect()
}

fn llama_note(r: &llama::Report, s: &llama::Settings) -> String {
    format!(
        "{}: llama.cpp {} on the same file, its prefill row is pp{} after each context, its decode row tg{} at \
         that depth ({} repetitions; `{}`)",
        r.name(),
        r.build_commit,
        s.prompt,
        s.gen,
        s.reps,
        s.command()
    )
}

/// Decode steps are timed in this many interleaved rounds (fewer when there are fewer steps).
const DECODE_ROUNDS: usize = 8;

/// Steps in round `r` of [`DECODE_ROUNDS`]: `steps` split as evenly as possible.
fn round_steps(steps: usize, r: usize) -> usize {
    let rounds = DECODE_ROUNDS.min(steps);
    steps / rounds + usize::from(r < steps % rounds)
}

/// The baseline, continuing from position `pos` (its cache holds every token so far).
#[allow(clippy::too_many_arguments)]
fn bench_baseline(
    w: &mut dyn BaselineModel,
    name: &str,
    info: &msrnn_core::ModelInfo,
    pos: &mut usize,
    context: usize,
    tokens: &[u32],
    a: &BenchArgs,
    progress: &mut dyn FnMut(usize),
) -> Result<Row> {
    let start = *pos;
    let rss_ok = report::reset_peak_rss();
    let t0 = Instant::now();
    for piece in tokens[start..context].chunks(a.chunk) {
        w.forward(piece, *pos).with_context(|| format!("{name} prefill at {pos}"))?;
        *pos += piece.len();
        progress(piece.len());
    }
    let prefill = t0.elapsed().as_secs_f64();
    let t1 = Instant::now();
    for i in 0..a.decode_steps {
        let logits = w.forward(&tokens[context + i..context + i + 1], *pos)?;
        *pos += 1;
        std::hint::black_box(logits.flatten_all()?.to_vec1::<f32>()?);
        progress(1);
    }
    let decode = t1.elapsed().as_secs_f64();
    // Its cache holds every token, f32 keys and values, like our full cache.
    let kv = (info.kv_bytes_per_token() * *pos) as u64;
    Ok(Row {
        name: name.into(),
        capacity: None,
        context,
        prefill_tokens: context - start,
        prefill_seconds: prefill,
        prefill_tokens_per_s: (context - start) as f64 / prefill,
        decode_steps: a.decode_steps,
        decode_ms_per_token: decode * 1000.0 / a.decode_steps as f64,
        peak_live_kv_bytes: Some(kv),
        allocated_kv_bytes: Some(kv),
        max_live: Some(*pos),
        peak_rss_bytes: if rss_ok { report::peak_rss() } else { None },
    })
}

fn bench_table(rows: &[Row], contexts: &[usize]) -> String {
    let header =
        ["policy", "C", "context", "prefilled", "prefill tok/s", "decode ms/tok", "live KV", "alloc KV", "peak RSS"];
    report::table_by_context(
        &header,
        rows,
        contexts,
        |r| r.context,
        |r| {
            vec![
                r.name.clone(),
                report::or_dash(r.capacity, |c| c.to_string()),
                r.context.to_string(),
                r.prefill_tokens.to_string(),
                format!("{:.0}", r.prefill_tokens_per_s),
                format!("{:.2}", r.decode_ms_per_token),
                report::or_dash(r.peak_live_kv_bytes, bytes),
                report::or_dash(r.allocated_kv_bytes, bytes),
                report::or_dash(r.peak_rss_bytes, bytes),
            ]
        },
    )
}

fn charts(rows: &[Row], title: &str) -> Vec<Chart> {
    let mut names: Vec<String> = Vec::new();
    for r in rows {
        if !names.contains(&r.name) {
            names.push(r.name.clone());
        }
    }
    let series = |f: &dyn Fn(&Row) -> f64| -> Vec<Series> {
        names
            .iter()
            .map(|n| Series {
                name: n.clone(),
                points: rows.iter().filter(|r| &r.name == n).map(|r| (r.context as f64, f(r))).collect(),
            })
            .collect()
    };
    vec![
        Chart {
            title: format!("Decode: {title}"),
            x_label: "context (tokens prefilled)".into(),
            y_label: "ms per token".into(),
            log_y: false,
            series: series(&|r| r.decode_ms_per_token),
            hlines: vec![],
        },
        Chart {
            title: "Prefill".into(),
            x_label: "context (tokens prefilled)".into(),
            y_label: "tokens per second".into(),
            log_y: false,
            series: series(&|r| r.prefill_tokens_per_s),
            hlines: vec![],
        },
    ]
}

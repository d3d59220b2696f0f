//! `msrnn bench --stream N`: a long run through a bounded state, checking that speed, live KV
//! bytes and resident memory stay flat however many tokens have gone by. This is the practical
//! claim of a finite multi-state RNN, so it is measured directly rather than inferred.

use std::time::Instant;

use anyhow::{bail, Context, Result};
use msrnn_core::{PolicyRegistry, PolicySpec};
use serde::Serialize;
use serde_json::json;

use super::args::BenchArgs;
use crate::context::Ctx;
use crate::policy;
use crate::report::{self, bytes};

/// Checkpoints per policy: one each time another tenth of the stream has gone by.
const CHECKPOINTS: usize = 10;

/// One checkpoint of one policy's run.
#[derive(Debug, Clone, Serialize)]
struct Checkpoint {
    policy: String,
    capacity: usize,
    /// Tokens fed so far.
    tokens: usize,
    /// Mean ms per token since the previous checkpoint (model steps only).
    ms_per_token: f64,
    live_kv_bytes: u64,
    allocated_kv_bytes: u64,
    max_live: usize,
    /// Resident memory now (VmRSS) and the process's peak so far (VmHWM), weights included.
    rss_bytes: Option<u64>,
    peak_rss_bytes: Option<u64>,
}

pub fn run(ctx: &Ctx, registry: &PolicyRegistry, specs: &[PolicySpec], n: usize, a: &BenchArgs) -> Result<()> {
    if n < CHECKPOINTS {
        bail!("--stream {n}: stream at least {CHECKPOINTS} tokens");
    }
    // The full cache grows with the stream by design: it is what the bounded policies are
    // compared against in the context grid, not here.
    let specs: Vec<&PolicySpec> = specs.iter().filter(|s| !policy::is_full(registry, s)).collect();
    if specs.is_empty() {
        bail!("--stream runs bounded policies only (full grows without bound): name at least one with --policies");
    }
    let text_path = report::text_path(a.tokens_file.as_deref(), "--tokens-file")?;
    let m = crate::model::load(&ctx.global)?;
    // The text is repeated to reach n tokens: more than n of it is never needed.
    let text = report::tokenize_prefix(&m, &text_path, "--tokens-file", n)?.tokens;
    if text.len() < 2 {
        bail!("--tokens-file {}: too short to stream", text_path.display());
    }
    // Repeat the text to reach n tokens (a repeat starts without the BOS, like running on).
    let body = if m.tokenizer().wants_bos() { &text[1..] } else { &text[..] };
    let mut tokens = text.clone();
    while tokens.len() < n {
        tokens.extend_from_slice(&body[..body.len().min(n - tokens.len())]);
    }
    tokens.truncate(n);
    let repeats = n as f64 / text.len() as f64;

    eprintln!(
        "stream: {}, {n} tokens of {} ({:.2}x the text), {} per step, capacity {}, {} threads, {} positions",
        m.describe(),
        text_path.display(),
        repeats,
        a.chunk,
        a.capacity,
        ctx.threads,
        ctx.global.positions()
    );
    let rows = measure(ctx, registry, &specs, &tokens, a, &m)?;
    report::print_stdout(&format!(
        "Stream: {}, {n} tokens, {} per step, C={}, {} threads\n{}",
        m.describe(),
        a.chunk,
        a.capacity,
        ctx.threads,
        table(&rows)
    ))?;
    if let Some(out) = &a.out {
        let doc = json!({
            "kind": "msrnn-bench-stream",
            "msrnn_version": env!("CARGO_PKG_VERSION"),
            "command": report::command_line(),
            "model": m.to_json(),
            "tokens_file": text_path.display().to_string(),
            "text_tokens": text.len(),
            "stream_tokens": n,
            "tokens_per_step": a.chunk,
            "positions": ctx.global.positions().to_string(),
            "capacity": a.capacity,
            "threads": ctx.threads,
            "checkpoints": rows,
        });
        report::write_json(out, &doc, "--out")?;
        eprintln!("wrote {}", out.display());
    }
    Ok(())
}

/// Streams the tokens through each policy's state, a checkpoint each tenth.
fn measure(
    ctx: &Ctx,
    registry: &PolicyRegistry,
    specs: &[&PolicySpec],
    tokens: &[u32],
    a: &BenchArgs,
    m: &crate::model::LoadedModel,
) -> Result<Vec<Checkpoint>> {
    let n = tokens.len();
    let pb = report::progress((n * specs.len()) as u64);
    let mut rows = Vec::new();
    for (i, spec) in specs.iter().enumerate() {
        let cap = policy::capacity_for(registry, spec, a.capacity, "--capacity")?;
        let mut state = policy::make_state(m.model(), registry, &ctx.global.recipe(spec, cap, a.chunk))?;
        pb.set_message(spec.to_string());
        let every = n / CHECKPOINTS;
        let (mut fed, mut since, mut step_secs) = (0usize, 0usize, 0.0f64);
        for piece in tokens.chunks(a.chunk) {
            let t = Instant::now();
            let logits =
                m.model().forward(piece, &mut state, false).with_context(|| format!("{spec} at token {fed}"))?;
            std::hint::black_box(logits.flatten_all()?.to_vec1::<f32>()?);
            step_secs += t.elapsed().as_secs_f64();
            fed += piece.len();
            since += piece.len();
            pb.set_position((i * n + fed) as u64);
            // A checkpoint each time another tenth of the stream has gone by.
            if fed / every > (fed - piece.len()) / every || fed == n {
                let row = Checkpoint {
                    policy: spec.to_string(),
                    capacity: a.capacity,
                    tokens: fed,
                    ms_per_token: step_secs * 1000.0 / since as f64,
                    live_kv_bytes: state.live_kv_bytes() as u64,
                    allocated_kv_bytes: state.allocated_kv_bytes() as u64,
                    max_live: state.max_live(),
                    rss_bytes: report::rss(),
                    peak_rss_bytes: report::peak_rss(),
                };
                report::note(
                    &pb,
                    &format!(
                        "{:>12} @ {:>6}: {:>7.2} ms/token, live KV {}, RSS {}",
                        row.policy,
                        row.tokens,
                        row.ms_per_token,
                        bytes(row.live_kv_bytes),
                        row.rss_bytes.map_or("-".into(), bytes)
                    ),
                );
                rows.push(row);
                (since, step_secs) = (0, 0.0);
            }
        }
    }
    pb.finish_and_clear();

    Ok(rows)
}

fn table(rows: &[Checkpoint]) -> String {
    let header: Vec<String> =
        ["policy", "C", "tokens", "ms/token", "live KV", "alloc KV", "live/layer", "RSS", "peak RSS"]
            .iter()
            .map(|s| s.to_string())
            .collect();
    let body: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            vec![
                r.policy.clone(),
                r.capacity.to_string(),
                r.tokens.to_string(),
                format!("{:.2}", r.ms_per_token),
                r.live_kv_bytes.to_string(),
                bytes(r.allocated_kv_bytes),
                r.max_live.to_string(),
                r.rss_bytes.map_or("-".into(), bytes),
                r.peak_rss_bytes.map_or("-".into(), bytes),
            ]
        })
        .collect();
    report::table(&header, &body)
}

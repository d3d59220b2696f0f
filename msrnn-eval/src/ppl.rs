//! Perplexity of a text for every policy x capacity, the full cache as reference; the cells run as
//! batches (each weight read once per step for every cell), each cell getting what it gets alone:
//! every cell is a scoring sequence of msrnn-engine's `Engine` (teacher-forced, each target's NLL).
//! A segment length adds perplexity per segment of the stream, to show quality over position.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use msrnn_core::{EvalMode, PolicyRegistry};
use msrnn_engine::{Engine, EngineOptions};
use msrnn_modelkit::{Model, Tokenizer};
use serde::{Deserialize, Serialize};

use crate::doc::{nullable_f64, BatchTime, CellResult, Document, ModelSettings, Run};
use crate::error::{Context, Error, Result};
use crate::grid::{self, kv_note, EvalModel, GridConfig, GridSettings, PolicyFields, PolicyGrid};
use crate::{Event, Feed, Observer};

/// The task's name in documents.
pub const TASK: &str = "ppl";
/// The policies of a grid when none are given.
pub const DEFAULT_POLICIES: &str = "full,window,window+i,h2o,tova";

pub type PplDocument = Document<PplSettings, PplCell>;

/// Everything that decides a ppl grid's results.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PplSettings {
    pub title: String,
    pub msrnn_version: String,
    pub model: ModelSettings,
    pub text: TextSettings,
    pub segment: Option<usize>,
    /// positions, kv, mode, chunk, policies, policy_sources, capacities, ratios.
    #[serde(flatten)]
    pub grid: GridSettings,
}

/// The scored text: which files, how many tokens, and a digest of them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TextSettings {
    pub files: Vec<TextFile>,
    pub tokens: usize,
    pub tokens_available: usize,
    pub bos: bool,
    pub digest: String,
    pub first_tokens: Vec<u32>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TextFile {
    pub name: String,
    pub bytes: u64,
    pub tokens: usize,
}

/// One cell's result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PplCell {
    pub id: String,
    #[serde(deserialize_with = "nullable_f64")]
    pub ppl: f64,
    pub nll_sum: f64,
    pub scored: usize,
    pub max_live: usize,
    #[serde(flatten)]
    pub policy: PolicyFields,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub segments: Option<Vec<Segment>>,
}

impl CellResult for PplCell {
    fn id(&self) -> &str {
        &self.id
    }
}

/// The tokens `[start, end)` of the stream (the first token of the stream is never scored).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Segment {
    pub start: usize,
    pub end: usize,
    pub scored: usize,
    pub nll_sum: f64,
    #[serde(deserialize_with = "nullable_f64")]
    pub ppl: f64,
}

/// The text to score: its tokens (at least as many as the grid scores) and where they came from.
#[derive(Debug, Clone)]
pub struct Text {
    pub tokens: Vec<u32>,
    pub files: Vec<TextFile>,
    /// The files as given (run details, not settings).
    pub paths: Vec<PathBuf>,
    pub bos: bool,
}

impl Text {
    /// The first `n` tokens of `paths` read as one stream, in order (BOS first when the model wants
    /// one); only as much of the files as they need is read. Fewer than `n` when the files are
    /// shorter: [`run`] says so.
    pub fn read(tok: &Tokenizer, paths: &[PathBuf], n: usize) -> Result<Self> {
        let mut tokens: Vec<u32> = Vec::new();
        let mut files = Vec::new();
        for (i, p) in paths.iter().enumerate() {
            let need = n.saturating_sub(tokens.len());
            if need == 0 {
                break;
            }
            let cannot = |what: &str, e: &dyn std::fmt::Display| {
                Error::setting("text", format!(" {}: cannot {what} it ({e})", p.display()))
            };
            let f = std::fs::File::open(p).map_err(|e| cannot("read", &e))?;
            let bytes = f.metadata().map_err(|e| cannot("read", &e))?.len();
            let ids = tok
                .encode_prefix(std::io::BufReader::new(f), need, i == 0 && tok.wants_bos())
                .map_err(|e| cannot("tokenize", &e))?
                .tokens;
            files.push(TextFile { name: grid::file_name(p), bytes, tokens: ids.len() });
            tokens.extend(ids);
        }
        Ok(Text { tokens, files, paths: paths.to_vec(), bos: tok.wants_bos() })
    }

    /// Tokens given directly (no file): a server's or Python's text.
    pub fn from_tokens(name: &str, tokens: Vec<u32>, bos: bool) -> Self {
        let files = vec![TextFile { name: name.to_string(), bytes: 0, tokens: tokens.len() }];
        Text { tokens, files, paths: vec![], bos }
    }

    /// `a.txt + b.txt`: for titles and messages.
    pub fn names(&self) -> String {
        self.files.iter().map(|f| f.name.as_str()).collect::<Vec<_>>().join(" + ")
    }
}

/// A ppl grid.
#[derive(Debug, Clone)]
pub struct PplConfig {
    /// Policies, budgets, feed, positions, KV format, shard; `batch` defaults to every cell at once.
    pub grid: GridConfig,
    /// Tokens of the text to score, from its start.
    pub tokens: usize,
    /// Also score every segment of this many tokens.
    pub segment: Option<usize>,
}

impl PplConfig {
    /// The default grid (full,window,window+i,h2o,tova at C = 64,128,256,512) on `tokens` tokens,
    /// decode mode.
    pub fn new(tokens: usize) -> Self {
        PplConfig { grid: GridConfig::new(DEFAULT_POLICIES, Feed::Decode), tokens, segment: None }
    }

    /// Checks what can be checked without a model; the grid.
    pub fn validate(&self, registry: &PolicyRegistry) -> Result<PolicyGrid> {
        let g = self.grid.validate(registry, 1)?;
        if self.tokens < 2 {
            return Err(Error::setting("tokens", format!(" {}: perplexity needs at least 2 tokens", self.tokens)));
        }
        if self.segment == Some(0) {
            return Err(Error::setting("segment", " must be at least 1 token"));
        }
        Ok(g)
    }
}

/// Per-segment sums of one cell.
#[derive(Clone, Default)]
struct Seg {
    nll_sum: f64,
    scored: usize,
}

/// One cell's sums over the text.
#[derive(Debug, Clone, Default)]
struct Scored {
    nll_sum: f64,
    scored: usize,
    ppl: f64,
    /// The most entries any layer held after a step.
    max_live: usize,
}

/// Runs the grid (or its shard) over `text`.
pub fn run(
    model: &EvalModel,
    registry: &PolicyRegistry,
    text: &Text,
    cfg: &PplConfig,
    obs: &mut dyn Observer,
) -> Result<PplDocument> {
    // Every cell scores the same tokens: ratios resolve once, from their count.
    let g = cfg.validate(registry)?.resolved(cfg.tokens);
    let names = text.names();
    if text.tokens.len() < cfg.tokens {
        return Err(Error::setting(
            "text",
            format!(
                " {names} has {} tokens, fewer than {{tokens}} {}; use a longer text (or several texts) or fewer tokens",
                text.tokens.len(),
                cfg.tokens
            ),
        ));
    }
    let tokens = &text.tokens[..cfg.tokens];
    let lm: &dyn Model = &*model.lm;
    let mode = match cfg.grid.feed {
        Feed::Decode => EvalMode::Decode,
        Feed::Chunked(n) => EvalMode::Chunked(n),
    };
    let (positions, kv) = (cfg.grid.positions, cfg.grid.kv);
    let recipe = cfg.grid.recipe();
    // The grid, validated before anything runs: every policy must accept every capacity.
    g.check(lm, registry, &recipe, &[cfg.tokens])?;
    let max_ctx = lm.info().max_context;
    if cfg.tokens > max_ctx && g.has_full() {
        obs.event(Event::Warning(format!(
            "{{tokens}} {} is longer than the model's context of {max_ctx} tokens: the full cache runs on positions it \
             was never trained on (bounded policies keep going)",
            cfg.tokens
        )));
    }

    let ids: Vec<String> = g.cells.iter().map(|c| c.label()).collect();
    let chosen = grid::selected(g.cells.len(), cfg.grid.shard);
    let batch = grid::batch_or(cfg.grid.batch, chosen.len())?;
    let settings = PplSettings {
        title: format!("{names} ({} tokens, {mode}, positions {positions}{}), {}", cfg.tokens, kv_note(kv), model.name),
        msrnn_version: env!("CARGO_PKG_VERSION").to_string(),
        model: model.settings(),
        text: TextSettings {
            files: text.files.clone(),
            tokens: cfg.tokens,
            tokens_available: text.tokens.len(),
            bos: text.bos,
            digest: grid::tokens_digest(tokens),
            first_tokens: tokens[..tokens.len().min(16)].to_vec(),
        },
        segment: cfg.segment,
        grid: cfg.grid.settings(&g, registry),
    };

    let per_run = (cfg.tokens - 1) as u64;
    obs.event(Event::Start {
        units: per_run * chosen.len() as u64,
        cells: chosen.len(),
        total_cells: g.cells.len(),
        sequences: chosen.len(),
        batch,
    });
    let t_all = Instant::now();
    // No prefill budget: every cell feeds the same chunk at every step, as one batch.
    let opts = EngineOptions { prefill_budget: usize::MAX };
    let mut engine = Engine::with_model(model.lm.clone(), Arc::new(registry.clone()), opts);
    let chunk = cfg.grid.feed.chunk();
    let mut results = Vec::new();
    let mut timing = Vec::new();
    let mut done = 0u64;
    for group in grid::batches(chosen, batch) {
        if obs.cancelled() {
            return Err(Error::Cancelled);
        }
        let states = group.iter().map(|&k| g.cells[k].state(lm, registry, &recipe)).collect::<Result<Vec<_>>>()?;
        let cells: Vec<String> = group.iter().map(|&k| ids[k].clone()).collect();
        obs.event(Event::Batch(if cells.len() == 1 { cells[0].clone() } else { format!("{} cells", cells.len()) }));
        let seg_len = cfg.segment.unwrap_or(usize::MAX);
        let mut segs: Vec<Vec<Seg>> = vec![Vec::new(); group.len()];
        let t0 = Instant::now();
        let n = group.len() as u64;
        let context = || format!("perplexity with {}", cells.join(", "));
        let mut seqs = Vec::with_capacity(group.len());
        for state in states {
            seqs.push(engine.score(state, tokens.to_vec(), chunk).context(context)?);
        }
        let mut ps = vec![Scored::default(); group.len()];
        while engine.active() > 0 {
            let mut fed = None;
            for event in engine.step().context(context)? {
                match event {
                    msrnn_engine::Event::Scored { id, from, nll, max_live } => {
                        let s = seqs.iter().position(|&x| x == id).expect("a cell of this batch");
                        fed = Some(from - 1 + nll.len());
                        for (target, x) in (from..).zip(nll) {
                            if cfg.segment.is_some() {
                                let k = target / seg_len;
                                let v = &mut segs[s];
                                if v.len() <= k {
                                    v.resize(k + 1, Seg::default());
                                }
                                v[k].nll_sum += x;
                                v[k].scored += 1;
                            }
                            ps[s].nll_sum += x;
                            ps[s].scored += 1;
                        }
                        ps[s].max_live = ps[s].max_live.max(max_live);
                    }
                    msrnn_engine::Event::Failed { error, .. } => {
                        return Err(Error::Core { context: context(), cause: error.into() });
                    }
                    msrnn_engine::Event::Token { .. } | msrnn_engine::Event::Finished(_) => {}
                }
            }
            if let Some(fed) = fed {
                obs.event(Event::Progress(done + fed as u64 * n));
            }
            if obs.cancelled() {
                return Err(Error::Cancelled);
            }
        }
        for p in &mut ps {
            p.ppl = (p.nll_sum / p.scored as f64).exp();
        }
        let seconds = t0.elapsed().as_secs_f64();
        done += per_run * n;
        for ((&k, p), seg) in group.iter().zip(&ps).zip(&segs) {
            obs.event(Event::Note(format!("{:>24}: ppl {:.3}", ids[k], p.ppl)));
            let segments = cfg.segment.map(|s| {
                seg.iter()
                    .enumerate()
                    .map(|(i, x)| Segment {
                        start: i * s,
                        end: ((i + 1) * s).min(cfg.tokens),
                        scored: x.scored,
                        nll_sum: x.nll_sum,
                        ppl: (x.nll_sum / x.scored as f64).exp(),
                    })
                    .collect()
            });
            results.push(PplCell {
                id: ids[k].clone(),
                ppl: p.ppl,
                nll_sum: p.nll_sum,
                scored: p.scored,
                max_live: p.max_live,
                policy: g.cells[k].fields(),
                segments,
            });
        }
        obs.event(Event::Note(format!(
            "{} cell{} in {:.1} s ({:.0} tokens/s over the batch)",
            n,
            if n == 1 { "" } else { "s" },
            seconds,
            (per_run * n) as f64 / seconds
        )));
        timing.push(BatchTime { cells, seconds });
    }
    let total = t_all.elapsed().as_secs_f64();
    let run = Run {
        batch: Some(batch),
        total_seconds: total,
        text_paths: Some(text.paths.iter().map(|p| p.display().to_string()).collect()),
        batches: Some(timing),
        ..Run::default()
    };
    let mut doc = Document::new(TASK, settings, ids, cfg.grid.shard, results, run);
    doc.sort_results();
    Ok(doc)
}

impl PplDocument {
    /// The result of `policy` at `capacity` (`None`: the unbounded full cache).
    pub fn cell(&self, policy: &str, capacity: Option<usize>) -> Option<&PplCell> {
        self.results.iter().find(|r| r.policy.policy == policy && r.policy.capacity == capacity)
    }

    /// Whether a policy of the settings ran unbounded (the full cache): its cell id is its name.
    pub fn is_unbounded(&self, policy: &str) -> bool {
        self.cells.iter().any(|c| c == policy)
    }
}

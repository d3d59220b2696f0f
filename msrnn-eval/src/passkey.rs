//! Passkey retrieval: can a bounded state still use information from far back? A random five-digit
//! key is hidden at a depth of a haystack; after the question the model answers by greedy decoding;
//! a key counts when the first number of the answer is exactly the key.
//!
//! The grid is policy x capacity (plus the full cache) x haystack length x key depth, `trials`
//! keys per cell. Keys and haystacks come from the seed and the cell's length, depth and trial
//! only, so every policy meets the same prompts (paired comparisons), and a shard or a smaller grid
//! meets the same ones as the whole.
//!
//! Prompt (raw text, no chat template), exactly `length` tokens, one running text: instruction,
//! haystack up to the depth, the needle ("The pass key is NNNNN. Remember it. NNNNN is the pass
//! key."), the rest of the haystack (at least one unit, a filler paragraph or a play's line: a
//! needle right before the question makes a small model echo "... is the pass key" instead of the
//! key), "What is the pass key? The pass key is". With blank lines around the haystack SmolLM2-135M
//! lost half the keys from 2,048 tokens on; as one running text it answers them
//! (docs/evaluation.md). The haystack is the classic repeated filler sentences, or lines of the
//! bundled plays from a seeded play and line; its first unit is cut at the front so the prompt has
//! the exact length.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use msrnn_core::generate::SplitMix64;
use msrnn_core::util::{fnv64, FNV_OFFSET};
use msrnn_core::PolicyRegistry;
use msrnn_modelkit::{Model, Tokenizer};
use serde::{Deserialize, Serialize};

use crate::doc::{CellResult, Document, ModelSettings, Run};
use crate::error::{Context, Error, Result};
use crate::grid::{self, kv_note, Budget, EvalModel, GridConfig, GridSettings, Job, Plan, PolicyFields, PolicyGrid};
use crate::{Event, Feed, Observer};

/// The task's name in documents.
pub const TASK: &str = "passkey";
/// The policies of a grid when none are given.
pub const DEFAULT_POLICIES: &str = "full,window,window+i,h2o,tova";
/// Sequences run at once when no batch size is given: full caches of long prompts are large.
pub const DEFAULT_BATCH: usize = 8;

pub type PasskeyDocument = Document<PasskeySettings, PasskeyCell>;

/// Everything that decides a passkey grid's results.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PasskeySettings {
    pub title: String,
    pub msrnn_version: String,
    pub model: ModelSettings,
    pub lengths: Vec<usize>,
    pub depths: Vec<f64>,
    pub trials: usize,
    pub seed: u64,
    pub haystack: HaystackSettings,
    pub format: FormatSettings,
    pub bos: bool,
    pub answer_tokens: usize,
    pub decoding: String,
    /// positions, kv, mode, chunk, policies, policy_sources, capacities, ratios.
    #[serde(flatten)]
    pub grid: GridSettings,
}

/// The haystack: `filler`, or `plays` with the files' names, their line count and a digest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HaystackSettings {
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub files: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lines: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
}

/// The prompt's pieces as recorded in results; `{key}` stands for the key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FormatSettings {
    pub instruction: String,
    pub filler: String,
    pub needle: String,
    pub question: String,
    pub layout: String,
}

/// One cell's result: a policy cell at a length and depth.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PasskeyCell {
    pub id: String,
    pub length: usize,
    pub depth: f64,
    pub trials: usize,
    pub correct: usize,
    pub accuracy: f64,
    pub answers: Vec<Answer>,
    #[serde(flatten)]
    pub policy: PolicyFields,
}

impl CellResult for PasskeyCell {
    fn id(&self) -> &str {
        &self.id
    }
}

/// One key of a cell.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Answer {
    pub key: u32,
    pub answer: String,
    pub correct: bool,
    pub prompt_tokens: usize,
    pub needle_token: usize,
}

/// The prompt's pieces; `{key}` stands for the key.
pub struct Format {
    pub instruction: &'static str,
    pub filler: &'static str,
    pub needle: &'static str,
    pub question: &'static str,
}

pub const FORMAT: Format = Format {
    instruction: "There is an important piece of information hidden inside a lot of irrelevant text. \
                  Find it and memorize it. I will quiz you about it.",
    filler: "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again.",
    needle: "The pass key is {key}. Remember it. {key} is the pass key.",
    question: "What is the pass key? The pass key is",
};

impl Format {
    pub fn settings(&self) -> FormatSettings {
        FormatSettings {
            instruction: self.instruction.into(),
            filler: self.filler.into(),
            needle: self.needle.into(),
            question: self.question.into(),
            layout: "instruction haystack needle haystack(>= 1 unit) question as one running text: filler \
                       units, needle and question each after a space; with plays, the instruction ends in a \
                       newline and each line does"
                .into(),
        }
    }
}

/// What the key hides in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Haystack {
    /// The classic repeated sentences ("The grass is green. The sky is blue. ...").
    Filler,
    /// Lines of the plays (`*_gut.txt`) in this directory, from a seeded play and line.
    Plays(PathBuf),
}

/// A passkey grid.
#[derive(Debug, Clone)]
pub struct PasskeyConfig {
    /// Policies, budgets (ratios resolved per prompt length), feed, positions, KV format, shard,
    /// batch (default [`DEFAULT_BATCH`]).
    pub grid: GridConfig,
    /// Prompt lengths, depths of the key, keys per cell, seed.
    pub prompts: Prompts,
    pub haystack: Haystack,
    /// Most tokens of an answer (decoding stops earlier once a number is complete).
    pub answer_tokens: usize,
}

impl Default for PasskeyConfig {
    /// full,window,window+i,h2o,tova at C = 64,128,256,512, lengths 1024,2048,4096, depths
    /// 0,0.25,0.5,0.75,1, 5 keys per cell, filler haystack, prompt in chunks of 64.
    fn default() -> Self {
        PasskeyConfig {
            grid: GridConfig::new(DEFAULT_POLICIES, Feed::Chunked(64)),
            prompts: Prompts { depths: vec![0.0, 0.25, 0.5, 0.75, 1.0], trials: 5, ..Prompts::default() },
            haystack: Haystack::Filler,
            answer_tokens: 8,
        }
    }
}

/// What [`PasskeyConfig::validate`] gives back: the grid and the axes, sorted.
#[derive(Debug, Clone)]
pub struct Axes {
    pub grid: PolicyGrid,
    pub lengths: Vec<usize>,
    pub depths: Vec<f64>,
}

impl PasskeyConfig {
    /// Checks what can be checked without a model.
    pub fn validate(&self, registry: &PolicyRegistry) -> Result<Axes> {
        let grid = self.grid.validate(registry, DEFAULT_BATCH)?;
        let (lengths, depths) = self.prompts.validate()?;
        if self.answer_tokens < 5 {
            return Err(Error::setting(
                "answer_tokens",
                format!(" {}: a five-digit key needs at least 5 tokens", self.answer_tokens),
            ));
        }
        Ok(Axes { grid, lengths, depths })
    }
}

/// The axes the prompt tasks (passkey, ruler) share besides the policy axis.
#[derive(Debug, Clone, PartialEq)]
pub struct Prompts {
    /// Prompt lengths in tokens (instruction, haystack, needles and question together).
    pub lengths: Vec<usize>,
    /// Depths of the key (ruler: of the first needle, in the needle tasks) in the haystack, from 0
    /// (right after the instruction) to 1 (its end).
    pub depths: Vec<f64>,
    /// Prompts per cell, each its own random key (or needles) and haystack.
    pub trials: usize,
    /// Where the prompts come from: the same seed gives the same prompts.
    pub seed: u64,
}

impl Default for Prompts {
    /// Lengths 1024,2048,4096, depths 0.1,0.5,0.9, 2 trials, seed 0.
    fn default() -> Self {
        Prompts { lengths: vec![1024, 2048, 4096], depths: vec![0.1, 0.5, 0.9], trials: 2, seed: 0 }
    }
}

impl Prompts {
    /// The lengths and the depths, checked, each once, ascending; at least one trial.
    pub fn validate(&self) -> Result<(Vec<usize>, Vec<f64>)> {
        let mut lengths = self.lengths.clone();
        lengths.sort_unstable();
        lengths.dedup();
        if lengths.is_empty() {
            return Err(Error::setting("lengths", " is empty: give at least one prompt length, e.g. 1024,2048"));
        }
        let depths = check_depths(&self.depths)?;
        if self.trials == 0 {
            return Err(Error::setting("trials", " must be at least 1"));
        }
        Ok((lengths, depths))
    }
}

/// Depths in [0, 1], each once, ascending.
pub fn check_depths(depths: &[f64]) -> Result<Vec<f64>> {
    if depths.is_empty() {
        return Err(Error::setting("depths", " is empty: give at least one depth between 0 and 1, e.g. 0.1,0.5,0.9"));
    }
    let mut out = Vec::new();
    for &d in depths {
        if !(0.0..=1.0).contains(&d) {
            return Err(Error::setting(
                "depths",
                format!(" {d}: a depth is a share of the haystack, from 0 (its start) to 1 (its end)"),
            ));
        }
        if out.contains(&d) {
            return Err(Error::setting("depths", format!(": {d} is listed twice")));
        }
        out.push(d);
    }
    out.sort_by(f64::total_cmp);
    Ok(out)
}

/// Whether `answer` answers `key`: its first run of digits is exactly the key.
pub fn score(answer: &str, key: u32) -> bool {
    first_number(answer).is_some_and(|(n, _)| n == key.to_string())
}

/// The first run of ASCII digits, and whether something follows it (the number is complete).
fn first_number(s: &str) -> Option<(&str, bool)> {
    let start = s.find(|c: char| c.is_ascii_digit())?;
    let rest = &s[start..];
    let len = rest.find(|c: char| !c.is_ascii_digit()).unwrap_or(rest.len());
    Some((&rest[..len], len < rest.len()))
}

/// The generator of one trial's key and haystack: from the seed, the length, the depth and the
/// trial only (not from the grid), so every policy and every shard meets the same prompt.
pub fn trial_rng(seed: u64, length: usize, depth: f64, trial: usize) -> SplitMix64 {
    let base = SplitMix64::new(seed).next_u64();
    let mix = base
        ^ (length as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15)
        ^ depth.to_bits().rotate_left(17).wrapping_mul(0xBF58_476D_1CE4_E5B9)
        ^ (trial as u64).wrapping_mul(0xD1B5_4A32_D192_ED03);
    let mut g = SplitMix64::new(mix);
    g.next_u64();
    g
}

/// A five-digit key.
pub fn key(g: &mut SplitMix64) -> u32 {
    10_000 + (g.next_u64() % 90_000) as u32
}

/// A prompt and where its needle starts.
#[derive(Debug, Clone)]
pub struct Prompt {
    pub tokens: Vec<u32>,
    pub needle_at: usize,
    pub key: u32,
}

/// Lays out exactly `length` tokens: `head`, haystack units up to the boundary nearest `depth` of
/// the haystack (never after the last unit: one unit at least follows the needle), `needle`, the
/// other units, `tail`: [`crate::ruler::assemble`] with one needle. Units come from `next_unit`;
/// the haystack's first tokens are cut so the total is exact (a prompt starts mid-sentence, like
/// an excerpt).
pub fn assemble(
    head: &[u32],
    needle: &[u32],
    tail: &[u32],
    next_unit: &mut dyn FnMut() -> Result<Vec<u32>>,
    length: usize,
    depth: f64,
) -> Result<(Vec<u32>, usize)> {
    let (tokens, at) = crate::ruler::assemble(head, &[(needle.to_vec(), depth)], tail, next_unit, length)?;
    Ok((tokens, at[0]))
}

/// Where haystack text comes from.
enum Source {
    /// The filler paragraph (all its sentences) with a leading space, repeated: the unit the key
    /// goes between, so a key at depth 1 still has a whole paragraph after it.
    Filler(Vec<String>),
    /// The plays' non-empty lines, per play.
    Plays(Vec<(String, Vec<String>)>),
}

impl Source {
    fn new(h: &Haystack) -> Result<Self> {
        match h {
            Haystack::Filler => Ok(Source::Filler(vec![format!(" {}", FORMAT.filler.trim())])),
            Haystack::Plays(dir) => Source::plays(dir),
        }
    }

    fn plays(dir: &Path) -> Result<Self> {
        let cannot = |e: &dyn std::fmt::Display| {
            Error::setting(
                "plays",
                format!(" {}: cannot list it ({e}); fetch the plays with ./scripts/fetch-data.sh", dir.display()),
            )
        };
        let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
            .map_err(|e| cannot(&e))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.ends_with("_gut.txt")))
            .collect();
        files.sort();
        let mut plays = Vec::new();
        for f in files {
            let text = std::fs::read(&f)
                .map_err(|e| e.to_string())
                .and_then(|b| String::from_utf8(b).map_err(|e| format!("not UTF-8 text ({e})")))
                .map_err(|e| Error::setting("plays", format!(" {}: cannot read it: {e}", f.display())))?;
            let lines: Vec<String> =
                text.lines().map(str::trim_end).filter(|l| !l.trim().is_empty()).map(|l| format!("{l}\n")).collect();
            if !lines.is_empty() {
                plays.push((grid::file_name(&f), lines));
            }
        }
        if plays.is_empty() {
            return Err(Error::setting(
                "plays",
                format!(" {}: no play (*_gut.txt) there; fetch them with ./scripts/fetch-data.sh", dir.display()),
            ));
        }
        Ok(Source::Plays(plays))
    }

    fn settings(&self) -> HaystackSettings {
        match self {
            Source::Filler(_) => HaystackSettings { kind: "filler".into(), files: None, lines: None, digest: None },
            Source::Plays(p) => {
                let all: String = p.iter().flat_map(|(_, l)| l.iter().map(String::as_str)).collect();
                HaystackSettings {
                    kind: "plays".into(),
                    files: Some(p.iter().map(|(n, _)| n.clone()).collect()),
                    lines: Some(p.iter().map(|(_, l)| l.len()).sum()),
                    digest: Some(format!("{:016x}", fnv64(all.as_bytes(), FNV_OFFSET))),
                }
            }
        }
    }

    /// The units of one trial's haystack, tokenized as they are needed.
    fn units<'s>(&'s self, tok: &'s Tokenizer, g: &mut SplitMix64) -> impl FnMut() -> Result<Vec<u32>> + 's {
        let (mut play, mut line) = match self {
            Source::Filler(_) => (0, 0),
            Source::Plays(p) => {
                let play = (g.next_u64() % p.len() as u64) as usize;
                (play, (g.next_u64() % p[play].1.len() as u64) as usize)
            }
        };
        let mut cache: HashMap<usize, Vec<u32>> = HashMap::new();
        move || {
            let text: &str = match self {
                Source::Filler(s) => {
                    let i = line % s.len();
                    line += 1;
                    if let Some(t) = cache.get(&i) {
                        return Ok(t.clone());
                    }
                    let t = tok.encode(&s[i], false).context(|| "tokenizing the haystack".to_string())?;
                    cache.insert(i, t.clone());
                    return Ok(t);
                }
                Source::Plays(p) => {
                    if line >= p[play].1.len() {
                        (play, line) = ((play + 1) % p.len(), 0);
                    }
                    line += 1;
                    &p[play].1[line - 1]
                }
            };
            tok.encode(text, false).context(|| "tokenizing the haystack".to_string())
        }
    }
}

/// The prompt of one trial.
fn build_prompt(tok: &Tokenizer, src: &Source, seed: u64, length: usize, depth: f64, trial: usize) -> Result<Prompt> {
    let mut g = trial_rng(seed, length, depth, trial);
    let key = key(&mut g);
    let (head, needle, tail) = pieces(tok, src, key)?;
    let mut units = src.units(tok, &mut g);
    let (tokens, needle_at) = assemble(&head, &needle, &tail, &mut units, length, depth)?;
    Ok(Prompt { tokens, needle_at, key })
}

/// The fixed parts: BOS (when the model wants one) and instruction, needle, question.
fn pieces(tok: &Tokenizer, src: &Source, key: u32) -> Result<(Vec<u32>, Vec<u32>, Vec<u32>)> {
    let plays = matches!(src, Source::Plays(_));
    let needle = FORMAT.needle.replace("{key}", &key.to_string());
    // Filler units and the needle start with a space, play lines end with a newline.
    let (instruction, needle, question) = if plays {
        (format!("{}\n", FORMAT.instruction), format!("{needle}\n"), FORMAT.question.to_string())
    } else {
        (FORMAT.instruction.to_string(), format!(" {needle}"), format!(" {}", FORMAT.question))
    };
    let enc = |s: &str, bos: bool| tok.encode(s, bos).context(|| "tokenizing the prompt".to_string());
    Ok((enc(&instruction, tok.wants_bos())?, enc(&needle, false)?, enc(&question, false)?))
}

/// Runs the grid (or its shard).
pub fn run(
    model: &EvalModel,
    registry: &PolicyRegistry,
    cfg: &PasskeyConfig,
    obs: &mut dyn Observer,
) -> Result<PasskeyDocument> {
    let Axes { grid: g, lengths, depths } = cfg.validate(registry)?;
    let src = Source::new(&cfg.haystack)?;
    let lm: &dyn Model = &*model.lm;
    let tok = lm.tokenizer();
    let max_ctx = lm.info().max_context;
    let longest = *lengths.last().expect("not empty");
    if g.has_full() && longest + cfg.answer_tokens > max_ctx {
        return Err(Error::setting(
            "lengths",
            format!(
                " {longest}: with the full cache a prompt and its answer ({longest} + {} tokens) must fit the model's \
                 context of {max_ctx} tokens (bounded policies alone may run longer; drop `full` from {{policies}})",
                cfg.answer_tokens
            ),
        ));
    }
    let (head, needle, tail) = pieces(tok, &src, 99_999)?;
    let fixed = head.len() + needle.len() + tail.len();
    if lengths[0] <= fixed + 8 {
        return Err(Error::setting(
            "lengths",
            format!(
                " {}: too short; the instruction, key and question alone take {fixed} tokens (give at least {})",
                lengths[0],
                fixed + 16
            ),
        ));
    }
    let (positions, kv) = (cfg.grid.positions, cfg.grid.kv);
    let recipe = cfg.grid.recipe();
    g.check(lm, registry, &recipe, &lengths)?;

    // The cells: policy cell x length x depth.
    let mut cells: Vec<(usize, usize, usize)> = Vec::new();
    for p in 0..g.cells.len() {
        for l in 0..lengths.len() {
            for d in 0..depths.len() {
                cells.push((p, l, d));
            }
        }
    }
    let ids: Vec<String> =
        cells.iter().map(|&(p, l, d)| format!("{} L={} d={}", g.cells[p].label(), lengths[l], depths[d])).collect();
    let chosen = grid::selected(cells.len(), cfg.grid.shard);
    let batch = grid::batch_or(cfg.grid.batch, DEFAULT_BATCH)?;

    // Prompts, shared by every policy: one per length, depth and trial that a chosen cell needs.
    let seed = cfg.prompts.seed;
    let plan = Plan::new(
        &chosen,
        cfg.prompts.trials,
        |k| (cells[k].1, cells[k].2),
        |(l, d), t| build_prompt(tok, &src, seed, lengths[l], depths[d], t),
        |p: &Prompt| p.tokens.len(),
    )?;

    let mode = cfg.grid.feed;
    let haystack = src.settings();
    let settings = PasskeySettings {
        title: format!("{} haystack, {mode} mode, positions {positions}{}, {}", haystack.kind, kv_note(kv), model.name),
        msrnn_version: env!("CARGO_PKG_VERSION").to_string(),
        model: model.settings(),
        lengths: lengths.clone(),
        depths: depths.clone(),
        trials: cfg.prompts.trials,
        seed: cfg.prompts.seed,
        haystack,
        format: FORMAT.settings(),
        bos: tok.wants_bos(),
        answer_tokens: cfg.answer_tokens,
        decoding: "greedy".into(),
        grid: cfg.grid.settings(&g, registry),
    };

    let (prompts, seqs) = (&plan.prompts, &plan.seqs);
    let units: u64 = seqs.iter().map(|s| prompts[s.prompt].tokens.len() as u64).sum();
    obs.event(Event::Start { units, cells: chosen.len(), total_cells: cells.len(), sequences: seqs.len(), batch });
    let t_all = Instant::now();
    let jobs: Vec<Job<'_>> = seqs
        .iter()
        .map(|s| {
            let (p, l, _) = cells[s.cell];
            Job { prompt: &prompts[s.prompt].tokens, cell: g.cells[p].at(lengths[l]), max_tokens: cfg.answer_tokens }
        })
        .collect();
    // An answer is final once its first number is complete.
    let settled = |_: usize, text: &str| first_number(text).is_some_and(|(_, done)| done);
    let texts = grid::answer(&model.lm, registry, &recipe, &jobs, batch, obs, &settled)?;
    let answers: HashMap<(usize, usize), String> = seqs.iter().map(|s| (s.cell, s.trial)).zip(texts).collect();
    let total = t_all.elapsed().as_secs_f64();

    let mut results = Vec::new();
    for &k in &chosen {
        let (p, l, d) = cells[k];
        let mut trials = Vec::new();
        for t in 0..cfg.prompts.trials {
            let pr = plan.prompt((l, d), t);
            let text = answers.get(&(k, t)).cloned().unwrap_or_default();
            trials.push(Answer {
                key: pr.key,
                correct: score(&text, pr.key),
                answer: text,
                prompt_tokens: pr.tokens.len(),
                needle_token: pr.needle_at,
            });
        }
        let correct = trials.iter().filter(|a| a.correct).count();
        results.push(PasskeyCell {
            id: ids[k].clone(),
            length: lengths[l],
            depth: depths[d],
            trials: cfg.prompts.trials,
            correct,
            accuracy: correct as f64 / cfg.prompts.trials as f64,
            answers: trials,
            policy: g.cells[p].at(lengths[l]).fields(),
        });
    }
    let run = Run { batch: Some(batch), total_seconds: total, ..Run::default() };
    Ok(Document::new(TASK, settings, ids, cfg.grid.shard, results, run))
}

/// Correct and total keys over the results that match.
pub fn tally<'d>(doc: &'d PasskeyDocument, keep: impl Fn(&PasskeyCell) -> bool + 'd) -> (usize, usize) {
    doc.results.iter().filter(|r| keep(r)).fold((0, 0), |(c, t), r| (c + r.correct, t + r.trials))
}

impl PasskeyDocument {
    /// The policy rows of a report: bounded policies at each capacity (or ratio), then the full
    /// cache.
    pub fn rows(&self) -> Vec<(String, Budget)> {
        let s = &self.settings;
        // The full cache's cells are `full L=.. d=..`, without a capacity.
        let full = |p: &str| self.cells.iter().any(|c| c.starts_with(&format!("{p} L=")));
        Budget::rows(&s.grid.policies, full, &s.grid.capacities, s.grid.ratios.as_deref())
    }
}

impl PasskeyCell {
    /// Whether this is a cell of `policy` at `budget` (a row of [`PasskeyDocument::rows`]).
    pub fn is(&self, policy: &str, budget: Budget) -> bool {
        self.policy.policy == policy && self.policy.budget() == budget
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scoring_takes_the_first_number_exactly() {
        for ok in [" 68220.", " 68220", "68220", " 68220\n", " is 68220. Remember", ": 68220, yes"] {
            assert!(score(ok, 68220), "{ok:?}");
        }
        for bad in ["", " ", " 6822", " 682201", " 68221.", " 12345, no, 68220", " sixty-eight thousand", "6 8220"] {
            assert!(!score(bad, 68220), "{bad:?}");
        }
        assert_eq!(first_number(" 682"), Some(("682", false)));
        assert_eq!(first_number(" 68220."), Some(("68220", true)));
        assert_eq!(first_number("none"), None);
    }

    #[test]
    fn keys_depend_on_the_seed_and_the_trial_only() {
        let k = |seed, l, d, t| key(&mut trial_rng(seed, l, d, t));
        assert_eq!(k(0, 1024, 0.5, 0), k(0, 1024, 0.5, 0));
        let all: Vec<u32> = (0..50).map(|t| k(7, 2048, 0.25, t)).collect();
        assert!(all.iter().all(|&x| (10_000..100_000).contains(&x)), "{all:?}");
        let mut d = all.clone();
        d.sort_unstable();
        d.dedup();
        assert!(d.len() > 45, "keys vary between trials: {all:?}");
        assert_ne!(k(0, 1024, 0.5, 0), k(1, 1024, 0.5, 0));
        assert_ne!(k(0, 1024, 0.5, 0), k(0, 2048, 0.5, 0));
        assert_ne!(k(0, 1024, 0.5, 0), k(0, 1024, 0.25, 0));
    }

    #[test]
    fn prompts_have_the_exact_length_and_the_needle_at_its_depth() {
        let head = [1, 2, 3];
        let needle = [90, 91];
        let tail = [7, 8];
        for depth in [0.0, 0.25, 0.5, 0.75, 1.0] {
            let mut n = 0u32;
            let mut units = || -> Result<Vec<u32>> {
                n += 1;
                Ok(vec![100 + n; 4])
            };
            let (t, at) = assemble(&head, &needle, &tail, &mut units, 50, depth).unwrap();
            assert_eq!(t.len(), 50);
            assert_eq!(&t[..3], &head);
            assert_eq!(&t[48..], &tail);
            assert_eq!(&t[at..at + 2], &needle);
            let hay = 50 - 7;
            let off = (at - 3) as f64;
            assert!((off - depth * hay as f64).abs() <= 4.0, "depth {depth}: needle after {off} of {hay} tokens");
            assert!(at + 2 + 4 <= 48, "depth {depth}: a whole unit follows the needle");
            // the haystack's first unit was cut at its front: units stay whole after it
            assert_eq!(t[3..].iter().filter(|&&x| x == 90).count(), 1);
        }
        let mut units = || -> Result<Vec<u32>> { Ok(vec![5]) };
        assert!(assemble(&head, &needle, &tail, &mut units, 7, 0.5).is_err());
    }

    #[test]
    fn prompt_axes_come_back_sorted_once_and_are_checked() {
        let p = Prompts { lengths: vec![2048, 1024, 2048], depths: vec![1.0, 0.0], trials: 1, seed: 0 };
        assert_eq!(p.validate().unwrap(), (vec![1024, 2048], vec![0.0, 1.0]));
        let e = |p: Prompts| p.validate().unwrap_err().to_string();
        assert!(e(Prompts { lengths: vec![], ..p.clone() }).starts_with("lengths is empty"));
        assert!(e(Prompts { depths: vec![0.5, 2.0], ..p.clone() }).starts_with("depths 2"));
        assert!(e(Prompts { trials: 0, ..p }).starts_with("trials must be at least 1"));
    }

    #[test]
    fn depths_outside_zero_one_or_repeated_are_refused() {
        assert_eq!(check_depths(&[0.5, 0.0, 1.0]).unwrap(), vec![0.0, 0.5, 1.0]);
        for bad in [&[1.5][..], &[-0.1], &[f64::NAN], &[0.5, 0.5], &[]] {
            assert!(check_depths(bad).is_err(), "{bad:?}");
        }
    }
}

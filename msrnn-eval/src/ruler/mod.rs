//! A long-context task suite after RULER (Hsieh et al., 2024), generated here from a seed and the
//! shipped texts (no dataset download): needle-in-a-haystack retrieval in several layouts
//! ([`niah`]), variable tracking ([`vt`]), and common- and frequent-words extraction ([`agg`]).
//!
//! Every task makes one prompt per trial of about `length` tokens (the NIAH and vt prompts exactly,
//! the word lists up to a list item less): instruction, context, question, then the answer's
//! first words, through the model's chat template (or as raw text). The answer is decoded
//! greedily, at most the task's `answer_tokens`, and scored as RULER's `string_match_all`: the
//! share of the expected strings it contains (case-insensitive). Decoding stops early once every
//! expected string is in the answer: the score cannot change after that.
//!
//! The grid is policy x capacity (plus the full cache) x task x length x depth (depths only for
//! the NIAH tasks), `trials` prompts per cell. Prompts come from the seed, the task, the length,
//! the depth and the trial only, so every policy and every shard meets the same prompts.
//!
//! A task the full cache scores below 50% on at the shortest length is too hard for the model:
//! [`RulerDocument::too_hard`] names it and the averages leave it out (reported, not tuned).

pub mod agg;
pub mod niah;
pub mod vt;
pub mod words;

use msrnn_core::util::{fnv64, FNV_OFFSET};
use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Instant;

use msrnn_core::generate::SplitMix64;
use msrnn_core::PolicyRegistry;
use msrnn_modelkit::{Model, Tokenizer};
use serde::{Deserialize, Serialize};

use crate::doc::{CellResult, Document, ModelSettings, Run};
use crate::error::{Context, Error, Result};
use crate::grid::{self, kv_note, Budget, EvalModel, GridConfig, GridSettings, Job, Plan, PolicyFields, PolicyGrid};
use crate::passkey::{trial_rng, Prompts, FORMAT};
use crate::{Event, Feed, Observer};

/// The task's name in documents.
pub const TASK: &str = "ruler";
/// The policies of a grid when none are given.
pub const DEFAULT_POLICIES: &str = "full,window,h2o,tova";
/// Where the real-text haystacks come from when none is given (fetched by scripts/fetch-data.sh);
/// the faces look for it upward from the current directory.
pub const DEFAULT_TEXT: &str = "data/prose";
/// Sequences run at once when no batch size is given.
pub const DEFAULT_BATCH: usize = 8;
/// A task is too hard for the model when the full cache scores below this at the shortest length.
pub const TOO_HARD_BELOW: f64 = 0.5;

pub type RulerDocument = Document<RulerSettings, RulerCell>;

/// One task of the suite: its name, what it is, and how it makes a trial's prompt.
pub struct Task {
    pub name: &'static str,
    /// `niah`, `vt`, `cwe` or `fwe`.
    pub family: &'static str,
    /// What the context is made of (`filler`, `text`, `needles`, `list`).
    pub haystack: &'static str,
    /// Whether the task has a depth axis (where its first needle goes).
    pub depths: bool,
    /// Most tokens of an answer.
    pub answer_tokens: usize,
    pub make: &'static (dyn Generate + Sync),
}

impl std::fmt::Debug for Task {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Task").field("name", &self.name).field("family", &self.family).finish_non_exhaustive()
    }
}

/// How a task makes one trial.
pub trait Generate {
    /// A prompt of about `length` tokens whose first needle (if any) is at `depth` of the context.
    fn make(&self, env: &Env<'_>, g: &mut SplitMix64, length: usize, depth: f64) -> Result<Sample>;
}

/// The suite, in RULER's order (its names, plus `niah_single_word`).
pub static TASKS: &[Task] = &[
    niah::task("niah_single_1", &niah::SINGLE_1),
    niah::task("niah_single_2", &niah::SINGLE_2),
    niah::task("niah_single_3", &niah::SINGLE_3),
    niah::task("niah_single_word", &niah::SINGLE_WORD),
    niah::task("niah_multikey_1", &niah::MULTIKEY_1),
    niah::task("niah_multikey_2", &niah::MULTIKEY_2),
    niah::task("niah_multikey_3", &niah::MULTIKEY_3),
    niah::task("niah_multivalue", &niah::MULTIVALUE),
    niah::task("niah_multiquery", &niah::MULTIQUERY),
    Task { name: "vt", family: "vt", haystack: "filler", depths: false, answer_tokens: 40, make: &vt::VT },
    Task { name: "cwe", family: "cwe", haystack: "list", depths: false, answer_tokens: 100, make: &agg::CWE },
    Task { name: "fwe", family: "fwe", haystack: "list", depths: false, answer_tokens: 40, make: &agg::FWE },
];

/// The task called `name`.
pub fn task(name: &str) -> Result<&'static Task> {
    TASKS.iter().find(|t| t.name == name).ok_or_else(|| {
        let all: Vec<&str> = TASKS.iter().map(|t| t.name).collect();
        Error::setting("tasks", format!(": unknown task `{name}` (the tasks are {}, or all)", all.join(", ")))
    })
}

/// What a task made for one trial.
#[derive(Debug, Clone)]
pub struct Sample {
    pub tokens: Vec<u32>,
    /// The strings the answer should contain.
    pub expected: Vec<String>,
    /// Where each needle starts, in prompt tokens (NIAH: the queried ones first; vt: the chain).
    pub needles: Vec<usize>,
}

/// What tasks make prompts with: the tokenizer, the real-text haystack, the prompt's framing.
pub struct Env<'a> {
    pub tok: &'a Tokenizer,
    pub text: Option<&'a Texts>,
    /// Through the model's chat template (when it has one), or raw text.
    pub chat: bool,
}

impl Env<'_> {
    fn enc(&self, s: &str, bos: bool) -> Result<Vec<u32>> {
        self.tok.encode(s, bos).context(|| "tokenizing a prompt".to_string())
    }

    /// The tokens before and after the context: `instruction`, a newline, [context], a newline,
    /// `question`, in a user turn; then the assistant's header and `answer_prefix`.
    pub fn frame(&self, instruction: &str, question: &str, answer_prefix: &str) -> Result<(Vec<u32>, Vec<u32>)> {
        const MARK: &str = "\u{1}CONTEXT\u{1}";
        let user = format!("{instruction}\n{MARK}\n{question}");
        let whole = if self.chat && self.tok.has_chat_template() {
            format!("{}{answer_prefix}", self.tok.chat_prompt(&user))
        } else {
            format!("{user} {answer_prefix}")
        };
        let (before, after) = whole.split_once(MARK).expect("the mark is in the prompt");
        Ok((self.enc(before, self.tok.wants_bos())?, self.enc(after, false)?))
    }

    /// A haystack's units: `filler` sentences (each after a space) or lines of the texts (each
    /// ending in a newline) from a seeded line on.
    pub fn units<'s>(&'s self, kind: &str, g: &mut SplitMix64) -> Result<Box<dyn FnMut() -> Result<Vec<u32>> + 's>> {
        match kind {
            "filler" => {
                let unit = self.enc(&format!(" {}", FORMAT.filler.trim()), false)?;
                Ok(Box::new(move || Ok(unit.clone())))
            }
            "text" => {
                let texts = self.text.ok_or_else(|| {
                    Error::setting("text", ": the task hides its needles in real text; name a text file or directory")
                })?;
                let lines = &texts.lines;
                let mut at = words::below(g, lines.len());
                Ok(Box::new(move || {
                    let l = &lines[at % lines.len()];
                    at += 1;
                    self.enc(l, false)
                }))
            }
            other => unreachable!("no haystack `{other}`"),
        }
    }

    /// A needle's text for a haystack of `kind`: after a space in filler, a line of its own in text.
    pub fn needle(&self, kind: &str, s: &str) -> Result<Vec<u32>> {
        match kind {
            "text" => self.enc(&format!("{s}\n"), false),
            _ => self.enc(&format!(" {s}"), false),
        }
    }
}

/// Lays out exactly `length` tokens: `head`, haystack units with each needle at the unit boundary
/// nearest its depth of the haystack (never after the last unit), `tail`. Needles at the same
/// boundary keep their order. The haystack's first tokens are cut so the total is exact. Gives
/// the tokens and where each needle starts, in the order of `needles`.
pub fn assemble(
    head: &[u32],
    needles: &[(Vec<u32>, f64)],
    tail: &[u32],
    next_unit: &mut dyn FnMut() -> Result<Vec<u32>>,
    length: usize,
) -> Result<(Vec<u32>, Vec<usize>)> {
    let fixed = head.len() + tail.len() + needles.iter().map(|n| n.0.len()).sum::<usize>();
    if length <= fixed {
        return Err(Error::setting(
            "lengths",
            format!(
                " {length}: no room for a haystack (the instruction, the needles and the question take {fixed} tokens)"
            ),
        ));
    }
    let budget = length - fixed;
    let mut units: Vec<Vec<u32>> = Vec::new();
    let mut total = 0;
    while total < budget {
        let u = next_unit()?;
        if !u.is_empty() {
            total += u.len();
            units.push(u);
        }
    }
    let mut excess = total - budget;
    while excess > 0 {
        if units[0].len() <= excess {
            excess -= units.remove(0).len();
        } else {
            units[0].drain(..excess);
            excess = 0;
        }
    }
    let mut bounds = vec![0usize];
    for u in &units {
        bounds.push(bounds.last().expect("starts with 0") + u.len());
    }
    let slot = |depth: f64| {
        let target = depth * budget as f64;
        (0..units.len())
            .min_by(|&a, &b| (bounds[a] as f64 - target).abs().total_cmp(&(bounds[b] as f64 - target).abs()))
            .expect("at least one unit")
    };
    let mut order: Vec<(usize, usize)> = needles.iter().enumerate().map(|(i, n)| (slot(n.1), i)).collect();
    order.sort_unstable();
    let mut tokens = Vec::with_capacity(length);
    tokens.extend_from_slice(head);
    let mut at = vec![0; needles.len()];
    let mut next = order.iter().peekable();
    for (k, u) in units.iter().enumerate() {
        while let Some(&&(s, i)) = next.peek() {
            if s != k {
                break;
            }
            at[i] = tokens.len();
            tokens.extend_from_slice(&needles[i].0);
            next.next();
        }
        tokens.extend_from_slice(u);
    }
    tokens.extend_from_slice(tail);
    debug_assert_eq!(tokens.len(), length);
    Ok((tokens, at))
}

/// `head`, the longest context `make(n)` that fits `length` tokens with them, `tail`: the
/// largest `n` is found by bisection (the context's token count grows with `n`).
pub fn fit(
    env: &Env<'_>,
    head: &[u32],
    tail: &[u32],
    length: usize,
    make: &dyn Fn(usize) -> String,
) -> Result<(Vec<u32>, usize)> {
    let budget = length.saturating_sub(head.len() + tail.len());
    let count = |n: usize| -> Result<Vec<u32>> { env.enc(&make(n), false) };
    let small = count(1)?;
    if small.len() > budget {
        return Err(Error::setting(
            "lengths",
            format!(" {length}: too short for this task (its frame and one list item take more)"),
        ));
    }
    let (mut lo, mut best) = (1, small);
    let mut hi = 2;
    loop {
        let t = count(hi)?;
        if t.len() > budget {
            break;
        }
        (lo, best) = (hi, t);
        hi *= 2;
    }
    // lo fits, hi does not.
    while hi - lo > 1 {
        let mid = (lo + hi) / 2;
        let t = count(mid)?;
        if t.len() <= budget {
            (lo, best) = (mid, t);
        } else {
            hi = mid;
        }
    }
    let mut tokens = Vec::with_capacity(length);
    tokens.extend_from_slice(head);
    tokens.extend_from_slice(&best);
    tokens.extend_from_slice(tail);
    Ok((tokens, lo))
}

/// RULER's `string_match_all` for one answer: the share of `expected` it contains, ignoring case.
pub fn score(answer: &str, expected: &[String]) -> f64 {
    if expected.is_empty() {
        return 0.0;
    }
    let a = answer.to_lowercase();
    expected.iter().filter(|e| a.contains(&e.to_lowercase())).count() as f64 / expected.len() as f64
}

/// Real text for the `text` haystacks: the non-empty lines of some files, in order.
#[derive(Debug, Clone)]
pub struct Texts {
    pub files: Vec<String>,
    pub lines: Vec<String>,
}

impl Texts {
    /// The lines of the files named, or of every `.txt` file in a directory named (sorted).
    pub fn read(paths: &[PathBuf]) -> Result<Self> {
        let mut files = Vec::new();
        for p in paths {
            if p.is_dir() {
                let mut inner: Vec<PathBuf> = std::fs::read_dir(p)
                    .map_err(|e| Error::setting("text", format!(" {}: cannot list it ({e})", p.display())))?
                    .filter_map(|e| e.ok().map(|e| e.path()))
                    .filter(|f| f.extension().is_some_and(|x| x == "txt"))
                    .collect();
                inner.sort();
                files.extend(inner);
            } else {
                files.push(p.clone());
            }
        }
        let mut names = Vec::new();
        let mut lines = Vec::new();
        for f in &files {
            let text = std::fs::read(f)
                .map_err(|e| e.to_string())
                .and_then(|b| String::from_utf8(b).map_err(|e| format!("not UTF-8 text ({e})")))
                .map_err(|e| Error::setting("text", format!(" {}: cannot read it: {e}", f.display())))?;
            lines.extend(text.lines().map(str::trim).filter(|l| !l.is_empty()).map(|l| format!("{l}\n")));
            names.push(grid::file_name(f));
        }
        if lines.is_empty() {
            let shown: Vec<String> = paths.iter().map(|p| p.display().to_string()).collect();
            return Err(Error::setting(
                "text",
                format!(" {}: no text there; fetch the texts with ./scripts/fetch-data.sh", shown.join(", ")),
            ));
        }
        Ok(Texts { files: names, lines })
    }

    fn settings(&self) -> TextSettings {
        let all: String = self.lines.concat();
        TextSettings {
            files: self.files.clone(),
            lines: self.lines.len(),
            digest: format!("{:016x}", fnv64(all.as_bytes(), FNV_OFFSET)),
        }
    }
}

/// Everything that decides a suite's results.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RulerSettings {
    pub title: String,
    pub msrnn_version: String,
    pub model: ModelSettings,
    pub tasks: Vec<TaskSettings>,
    pub lengths: Vec<usize>,
    pub depths: Vec<f64>,
    pub trials: usize,
    pub seed: u64,
    /// The real text of the `text` haystacks (absent when no task uses it).
    pub text: Option<TextSettings>,
    /// Whether prompts went through the model's chat template.
    pub chat: bool,
    pub bos: bool,
    pub decoding: String,
    pub scoring: String,
    /// positions, kv, mode, chunk, policies, policy_sources, capacities, ratios.
    #[serde(flatten)]
    pub grid: GridSettings,
}

/// A task as settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskSettings {
    pub name: String,
    pub family: String,
    pub haystack: String,
    pub depths: bool,
    pub answer_tokens: usize,
}

/// The files of the real-text haystack, their line count and a digest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TextSettings {
    pub files: Vec<String>,
    pub lines: usize,
    pub digest: String,
}

/// One cell: a policy cell on a task at a length (and depth).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RulerCell {
    pub id: String,
    pub task: String,
    pub length: usize,
    /// The first needle's depth (NIAH tasks), `null` for the others.
    pub depth: Option<f64>,
    pub trials: usize,
    /// The mean of the trials' scores, in [0, 1].
    pub score: f64,
    pub answers: Vec<RulerAnswer>,
    #[serde(flatten)]
    pub policy: PolicyFields,
}

impl CellResult for RulerCell {
    fn id(&self) -> &str {
        &self.id
    }
}

/// One trial of a cell.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RulerAnswer {
    pub expected: Vec<String>,
    pub answer: String,
    pub score: f64,
    pub prompt_tokens: usize,
    pub needle_tokens: Vec<usize>,
}

/// A suite grid.
#[derive(Debug, Clone)]
pub struct RulerConfig {
    /// Policies, budgets (ratios resolved per prompt length), feed, positions, KV format, shard,
    /// batch (default [`DEFAULT_BATCH`]).
    pub grid: GridConfig,
    /// Task names (see [`TASKS`]).
    pub tasks: Vec<String>,
    /// Prompt lengths, depths of the first needle (NIAH tasks), prompts per cell, seed.
    pub prompts: Prompts,
    /// Files or directories of the real-text haystack (needed by the `text` tasks).
    pub text: Vec<PathBuf>,
    pub chat: bool,
}

impl Default for RulerConfig {
    /// full,window,h2o,tova at C = 64,128,256,512, every task, lengths 1024,2048,4096, depths
    /// 0.1,0.5,0.9, 2 trials, chat template, prompt in chunks of 64; no text (set `text`).
    fn default() -> Self {
        RulerConfig {
            grid: GridConfig::new(DEFAULT_POLICIES, Feed::Chunked(64)),
            tasks: TASKS.iter().map(|t| t.name.to_string()).collect(),
            prompts: Prompts::default(),
            text: Vec::new(),
            chat: true,
        }
    }
}

/// What [`RulerConfig::validate`] gives back.
pub struct Axes {
    pub grid: PolicyGrid,
    pub tasks: Vec<&'static Task>,
    pub lengths: Vec<usize>,
    pub depths: Vec<f64>,
}

impl Axes {
    /// Whether a chosen task hides its needles in real text (then `text` must be set).
    pub fn needs_text(&self) -> bool {
        self.tasks.iter().any(|t| t.haystack == "text")
    }
}

impl RulerConfig {
    /// Checks what can be checked without a model.
    pub fn validate(&self, registry: &PolicyRegistry) -> Result<Axes> {
        let grid = self.grid.validate(registry, DEFAULT_BATCH)?;
        if self.tasks.is_empty() {
            return Err(Error::setting("tasks", " is empty: name at least one task, or all"));
        }
        let mut tasks: Vec<&'static Task> = Vec::new();
        for name in &self.tasks {
            let t = task(name)?;
            if tasks.iter().any(|x| x.name == t.name) {
                return Err(Error::setting("tasks", format!(": `{name}` is listed twice")));
            }
            tasks.push(t);
        }
        let (lengths, depths) = self.prompts.validate()?;
        Ok(Axes { grid, tasks, lengths, depths })
    }
}

/// The generator of one trial: from the seed, the task, the length, the depth and the trial only.
pub fn task_rng(seed: u64, task: &str, length: usize, depth: f64, trial: usize) -> SplitMix64 {
    trial_rng(seed ^ fnv64(task.as_bytes(), FNV_OFFSET), length, depth, trial)
}

/// One trial's prompt.
pub fn make_sample(
    env: &Env<'_>,
    t: &Task,
    seed: u64,
    length: usize,
    depth: Option<f64>,
    trial: usize,
) -> Result<Sample> {
    let d = depth.unwrap_or(0.5);
    let mut g = task_rng(seed, t.name, length, d, trial);
    t.make.make(env, &mut g, length, d).context(|| format!("making a prompt of task {}", t.name))
}

/// A cell of the whole grid: policy cell, task, length, depth.
#[derive(Clone, Copy)]
struct Coord {
    policy: usize,
    task: usize,
    length: usize,
    depth: Option<usize>,
}

/// Runs the grid (or its shard).
pub fn run(
    model: &EvalModel,
    registry: &PolicyRegistry,
    cfg: &RulerConfig,
    obs: &mut dyn Observer,
) -> Result<RulerDocument> {
    let axes = cfg.validate(registry)?;
    let texts = if axes.needs_text() {
        if cfg.text.is_empty() {
            return Err(Error::setting(
                "text",
                " is not set: the tasks with real-text haystacks need a text file or directory (data/prose)",
            ));
        }
        Some(Texts::read(&cfg.text)?)
    } else {
        None
    };
    let Axes { grid: g, tasks, lengths, depths } = axes;
    let lm: &dyn Model = &*model.lm;
    let tok = lm.tokenizer();
    let env = Env { tok, text: texts.as_ref(), chat: cfg.chat };
    let max_ctx = lm.info().max_context;
    let longest = *lengths.last().expect("not empty");
    let most_answer = tasks.iter().map(|t| t.answer_tokens).max().unwrap_or(0);
    if g.has_full() && longest + most_answer > max_ctx {
        return Err(Error::setting(
            "lengths",
            format!(
                " {longest}: with the full cache a prompt and its answer ({longest} + {most_answer} tokens) must fit the \
                 model's context of {max_ctx} tokens (drop `full` from {{policies}} to run longer)"
            ),
        ));
    }
    let (positions, kv) = (cfg.grid.positions, cfg.grid.kv);
    let recipe = cfg.grid.recipe();
    g.check(lm, registry, &recipe, &lengths)?;

    let mut cells: Vec<Coord> = Vec::new();
    for p in 0..g.cells.len() {
        for (t, task) in tasks.iter().enumerate() {
            for l in 0..lengths.len() {
                if task.depths {
                    cells.extend((0..depths.len()).map(|d| Coord { policy: p, task: t, length: l, depth: Some(d) }));
                } else {
                    cells.push(Coord { policy: p, task: t, length: l, depth: None });
                }
            }
        }
    }
    let ids: Vec<String> = cells
        .iter()
        .map(|c| {
            let d = c.depth.map_or(String::new(), |d| format!(" d={}", depths[d]));
            format!("{} {} L={}{d}", g.cells[c.policy].label(), tasks[c.task].name, lengths[c.length])
        })
        .collect();
    let chosen = grid::selected(cells.len(), cfg.grid.shard);
    let batch = grid::batch_or(cfg.grid.batch, DEFAULT_BATCH)?;

    // Prompts, shared by every policy.
    let seed = cfg.prompts.seed;
    let plan = Plan::new(
        &chosen,
        cfg.prompts.trials,
        |k| (cells[k].task, cells[k].length, cells[k].depth),
        |(t, l, d), trial| make_sample(&env, tasks[t], seed, lengths[l], d.map(|d| depths[d]), trial),
        |p: &Sample| p.tokens.len(),
    )?;

    let mode = cfg.grid.feed;
    let chat = cfg.chat && tok.has_chat_template();
    let settings = RulerSettings {
        title: format!(
            "RULER-style suite, {mode} mode, positions {positions}{}, {}, {}",
            kv_note(kv),
            if chat { "chat template" } else { "raw prompts" },
            model.name
        ),
        msrnn_version: env!("CARGO_PKG_VERSION").to_string(),
        model: model.settings(),
        tasks: tasks
            .iter()
            .map(|t| TaskSettings {
                name: t.name.into(),
                family: t.family.into(),
                haystack: t.haystack.into(),
                depths: t.depths,
                answer_tokens: t.answer_tokens,
            })
            .collect(),
        lengths: lengths.clone(),
        depths: depths.clone(),
        trials: cfg.prompts.trials,
        seed: cfg.prompts.seed,
        text: texts.as_ref().map(Texts::settings),
        chat,
        bos: tok.wants_bos(),
        decoding: "greedy".into(),
        scoring: "string_match_all: share of the expected strings the answer contains, ignoring case".into(),
        grid: cfg.grid.settings(&g, registry),
    };

    let (prompts, seqs) = (&plan.prompts, &plan.seqs);
    let units: u64 = seqs.iter().map(|s| prompts[s.prompt].tokens.len() as u64).sum();
    obs.event(Event::Start { units, cells: chosen.len(), total_cells: cells.len(), sequences: seqs.len(), batch });
    let t_all = Instant::now();
    let jobs: Vec<Job<'_>> = seqs
        .iter()
        .map(|s| {
            let c = cells[s.cell];
            let cell = g.cells[c.policy].at(lengths[c.length]);
            Job { prompt: &prompts[s.prompt].tokens, cell, max_tokens: tasks[c.task].answer_tokens }
        })
        .collect();
    // An answer is final once every expected string is in it.
    let settled = |i: usize, text: &str| score(text, &prompts[seqs[i].prompt].expected) >= 1.0;
    let texts = grid::answer(&model.lm, registry, &recipe, &jobs, batch, obs, &settled)?;
    let answers: HashMap<(usize, usize), String> = seqs.iter().map(|s| (s.cell, s.trial)).zip(texts).collect();
    let total = t_all.elapsed().as_secs_f64();

    let mut results = Vec::new();
    for &k in &chosen {
        let c = cells[k];
        let mut trials = Vec::new();
        for t in 0..cfg.prompts.trials {
            let pr = plan.prompt((c.task, c.length, c.depth), t);
            let answer = answers.get(&(k, t)).cloned().unwrap_or_default();
            trials.push(RulerAnswer {
                expected: pr.expected.clone(),
                score: score(&answer, &pr.expected),
                answer,
                prompt_tokens: pr.tokens.len(),
                needle_tokens: pr.needles.clone(),
            });
        }
        let mean = trials.iter().map(|a| a.score).sum::<f64>() / cfg.prompts.trials as f64;
        results.push(RulerCell {
            id: ids[k].clone(),
            task: tasks[c.task].name.into(),
            length: lengths[c.length],
            depth: c.depth.map(|d| depths[d]),
            trials: cfg.prompts.trials,
            score: mean,
            answers: trials,
            policy: g.cells[c.policy].at(lengths[c.length]).fields(),
        });
    }
    let run = Run { batch: Some(batch), total_seconds: total, ..Run::default() };
    Ok(Document::new(TASK, settings, ids, cfg.grid.shard, results, run))
}

impl RulerCell {
    /// Whether this is a cell of `policy` at `budget` (a row of [`RulerDocument::rows`]).
    pub fn is(&self, policy: &str, budget: Budget) -> bool {
        self.policy.policy == policy && self.policy.budget() == budget
    }
}

impl RulerDocument {
    /// The policy rows of a report: bounded policies at each capacity (or ratio), then the full
    /// cache.
    pub fn rows(&self) -> Vec<(String, Budget)> {
        let s = &self.settings;
        // The full cache's cells are `full TASK L=..`, without a capacity.
        let full = |p: &str| {
            self.cells.iter().any(|c| {
                c.split(' ').nth(1).is_some_and(|t| !t.starts_with("C=") && !t.starts_with("R="))
                    && c.starts_with(&format!("{p} "))
            })
        };
        Budget::rows(&s.grid.policies, full, &s.grid.capacities, s.grid.ratios.as_deref())
    }

    /// The mean score (over trials) of the results that `keep`, if any.
    pub fn mean(&self, keep: impl Fn(&RulerCell) -> bool) -> Option<f64> {
        let (sum, n) = self
            .results
            .iter()
            .filter(|r| keep(r))
            .fold((0.0, 0usize), |(s, n), r| (s + r.score * r.trials as f64, n + r.trials));
        (n > 0).then(|| sum / n as f64)
    }

    /// The tasks the full cache (any unbounded policy) scores below [`TOO_HARD_BELOW`] on at the
    /// shortest length: the model cannot do them, whatever the policy. Unknown (not listed) when
    /// the document has no unbounded cell there.
    pub fn too_hard(&self) -> Vec<String> {
        let Some(&shortest) = self.settings.lengths.first() else { return Vec::new() };
        self.settings
            .tasks
            .iter()
            .filter(|t| {
                self.mean(|r| r.task == t.name && r.length == shortest && r.policy.capacity.is_none())
                    .is_some_and(|m| m < TOO_HARD_BELOW)
            })
            .map(|t| t.name.clone())
            .collect()
    }

    /// The mean over tasks (each task's mean, tasks too hard left out) of the results that `keep`.
    pub fn average(&self, keep: impl Fn(&RulerCell) -> bool) -> Option<f64> {
        let hard = self.too_hard();
        let per: Vec<f64> = self
            .settings
            .tasks
            .iter()
            .filter(|t| !hard.contains(&t.name))
            .filter_map(|t| self.mean(|r| r.task == t.name && keep(r)))
            .collect();
        (!per.is_empty()).then(|| per.iter().sum::<f64>() / per.len() as f64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scoring_is_the_share_of_expected_strings_contained() {
        let e = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(score(" 1234567.", &e(&["1234567"])), 1.0);
        assert_eq!(score(" 123456", &e(&["1234567"])), 0.0);
        assert_eq!(score("", &e(&["1234567"])), 0.0);
        assert_eq!(score(" 1, 2 and 4", &e(&["1", "2", "3", "4"])), 0.75);
        assert_eq!(score("The words: Apple, RIVER.", &e(&["apple", "river", "comet"])), 2.0 / 3.0);
        assert_eq!(score("QXYZA, BCDEF", &e(&["qxyza", "bcdef"])), 1.0);
        // contained, not equal: RULER's rule
        assert_eq!(score("12345678", &e(&["1234567"])), 1.0);
        assert_eq!(score("anything", &[]), 0.0);
    }

    #[test]
    fn needles_go_to_their_depths_and_prompts_have_the_exact_length() {
        let head = [1, 2, 3];
        let tail = [7, 8];
        for depth in [0.0, 0.25, 0.5, 0.75, 1.0] {
            let mut n = 0u32;
            let mut units = || -> Result<Vec<u32>> {
                n += 1;
                Ok(vec![100 + n; 4])
            };
            let needles = vec![(vec![90, 91], depth), (vec![92], 0.5), (vec![93], 0.5)];
            let (t, at) = assemble(&head, &needles, &tail, &mut units, 60).unwrap();
            assert_eq!(t.len(), 60);
            assert_eq!(&t[..3], &head);
            assert_eq!(&t[58..], &tail);
            assert_eq!(&t[at[0]..at[0] + 2], &[90, 91]);
            assert_eq!(t[at[1]], 92);
            assert_eq!(t[at[2]], 93);
            assert!(at[1] < at[2], "needles at one boundary keep their order");
            let hay = 60 - 9;
            let off = (at[0] - 3) as f64;
            // within a unit (4 tokens) plus the other needles before it (3 tokens)
            assert!((off - depth * hay as f64).abs() <= 7.0, "depth {depth}: needle after {off} of {hay}");
            assert!(at[0] + 2 + 4 <= 58, "a whole unit follows the needle");
        }
        let mut units = || -> Result<Vec<u32>> { Ok(vec![5]) };
        assert!(assemble(&head, &[(vec![1, 2], 0.5)], &tail, &mut units, 7).is_err());
    }

    #[test]
    fn the_registry_names_every_task_once() {
        let mut names: Vec<&str> = TASKS.iter().map(|t| t.name).collect();
        let n = names.len();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), n);
        assert!(task("vt").is_ok());
        let e = task("nosuch").unwrap_err().to_string();
        assert!(e.contains("unknown task `nosuch`") && e.contains("niah_single_1"), "{e}");
    }
}

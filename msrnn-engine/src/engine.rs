//! The scheduler: live sequences, each with its own state, sampler and pending tokens, advanced
//! together by one batched forward per [`Engine::step`] (continuous batching). Sequences join and
//! leave between steps; prefill chunks and decode tokens share each pass over the weights. A
//! sequence may also score a known text instead of generating ([`Engine::score`]): teacher-forced,
//! every row's logits, each next token's NLL reported as it goes (what perplexity is made of).

use std::sync::Arc;
use std::time::{Duration, Instant};

use msrnn_core::batch::check_batch;
use msrnn_core::eval::nll;
use msrnn_core::{Logits, MsrnnState, PolicyRegistry, Sampler, Sampling, SeqStep, StateRecipe};
use msrnn_modelkit::{Detokenizer, Model};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::model::LoadedModel;

/// How one sequence generates.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GenConfig {
    /// Most tokens to generate (the stop token counts); 0 only prefills.
    pub max_tokens: usize,
    pub sampling: Sampling,
    /// Generation stops after emitting one of these (it is reported, not fed back).
    pub stop_tokens: Vec<u32>,
    /// Generation stops once the generated text contains one of these; the text returned ends
    /// before it.
    pub stop_strings: Vec<String>,
    /// Prompt tokens fed per step; the policy runs after each chunk. At most the state's
    /// `max_chunk`.
    pub prefill_chunk: usize,
}

impl Default for GenConfig {
    fn default() -> Self {
        Self {
            max_tokens: 64,
            sampling: Sampling::Greedy,
            stop_tokens: Vec::new(),
            stop_strings: Vec::new(),
            prefill_chunk: msrnn_core::DEFAULT_MAX_CHUNK,
        }
    }
}

/// Scheduler settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct EngineOptions {
    /// Prompt tokens fed per step over all sequences. Decode tokens always go; whole prefill chunks
    /// are handed out round-robin while the budget lasts (at least one chunk per step, so a chunk
    /// larger than the budget still moves). Chunks are never cut, so every sequence gets exactly
    /// the tokens it would get alone.
    pub prefill_budget: usize,
}

impl Default for EngineOptions {
    fn default() -> Self {
        Self { prefill_budget: 512 }
    }
}

/// A live sequence's handle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct SeqId(pub u64);

impl std::fmt::Display for SeqId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "#{}", self.0)
    }
}

/// Why a sequence finished.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum StopReason {
    /// It emitted one of [`GenConfig::stop_tokens`] (the last token).
    StopToken,
    /// Its text came to contain one of [`GenConfig::stop_strings`].
    StopString,
    MaxTokens,
    /// [`Engine::cancel`].
    Cancelled,
}

/// What a step reports, in sequence order.
#[derive(Debug)]
pub enum Event {
    /// A generated token and the text it completes (may be empty: half a character, a control
    /// token, or text held back while it may be the start of a stop string).
    Token {
        id: SeqId,
        token: u32,
        text: String,
    },
    /// A scoring sequence's ([`Engine::score`]) chunk: `nll[i]` is `-ln p(tokens[from + i])` given
    /// the tokens before it (in f64, [`msrnn_core::eval::nll`]).
    Scored {
        id: SeqId,
        from: usize,
        nll: Vec<f64>,
        /// The most entries any layer of the state holds after this step.
        max_live: usize,
    },
    Finished(Finished),
    /// The sequence's step failed; it is gone (its state dropped), the others go on.
    Failed {
        id: SeqId,
        error: String,
    },
}

/// A sequence that left the engine.
pub struct Finished {
    pub id: SeqId,
    /// Handed back: save it (a conversation goes on from it) or drop it.
    pub state: MsrnnState,
    /// Every generated token, the stop token included (the last one is sampled but not yet fed).
    pub tokens: Vec<u32>,
    /// The generated text, without a stop string and what followed it.
    pub text: String,
    pub reason: StopReason,
    pub prompt_tokens: usize,
    /// From [`Engine::add`] to the first generated token.
    pub prefill_time: Duration,
    /// From the first generated token to the last.
    pub decode_time: Duration,
}

impl std::fmt::Debug for Finished {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Finished")
            .field("id", &self.id)
            .field("tokens", &self.tokens)
            .field("text", &self.text)
            .field("reason", &self.reason)
            .field("prompt_tokens", &self.prompt_tokens)
            .field("tokens_seen", &self.state.tokens_seen())
            .finish_non_exhaustive()
    }
}

impl Finished {
    /// Tokens generated per second of decoding (the first token comes from the prefill).
    pub fn decode_tokens_per_s(&self) -> f64 {
        msrnn_core::generate::decode_tokens_per_s(self.tokens.len(), self.decode_time)
    }
}

/// A sequence's text with stop strings: emitted as it comes, except a tail that may begin a stop
/// string, held back until it is known not to.
#[derive(Debug, Default)]
struct StopText {
    /// Returned in events so far.
    emitted: String,
    /// Decoded, held back.
    held: String,
}

impl StopText {
    /// Adds a decoded piece: returns the text that may go out now, and whether a stop string was
    /// found (then the text ends before it).
    fn push(&mut self, piece: &str, stops: &[String]) -> (String, bool) {
        self.held.push_str(piece);
        if stops.is_empty() {
            let out = std::mem::take(&mut self.held);
            self.emitted.push_str(&out);
            return (out, false);
        }
        // Held-back text never lets a stop string start inside what was emitted, so a match lies
        // in `held`, or straddles it and the tail of `emitted` that could begin one.
        let longest = stops.iter().map(String::len).max().unwrap_or(0);
        let mut from = self.emitted.len().saturating_sub(longest);
        while !self.emitted.is_char_boundary(from) {
            from -= 1;
        }
        let window = format!("{}{}", &self.emitted[from..], self.held);
        let hit = stops.iter().filter(|s| !s.is_empty()).filter_map(|s| window.find(s.as_str())).min();
        if let Some(at) = hit {
            let end = from + at;
            let out = self.held[..end.saturating_sub(self.emitted.len())].to_string();
            self.emitted.truncate(end.min(self.emitted.len()));
            self.emitted.push_str(&out);
            self.held.clear();
            return (out, true);
        }
        // Hold back the longest tail of `held` that begins some stop string.
        let keep = self
            .held
            .char_indices()
            .map(|(i, _)| i)
            .find(|&i| stops.iter().any(|s| s.starts_with(&self.held[i..])))
            .unwrap_or(self.held.len());
        let out: String = self.held.drain(..keep).collect();
        self.emitted.push_str(&out);
        (out, false)
    }

    /// The sequence ended without a stop string: what was held back is text after all.
    fn flush(&mut self) {
        self.emitted.push_str(&std::mem::take(&mut self.held));
    }
}

/// Where a live sequence is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Progress {
    pub prompt_tokens: usize,
    /// Prompt tokens fed so far.
    pub fed: usize,
    pub generated: usize,
}

/// One live sequence.
struct Seq {
    id: SeqId,
    state: MsrnnState,
    sampler: Sampler,
    cfg: GenConfig,
    prompt: Vec<u32>,
    fed: usize,
    /// Sampled, not yet fed.
    next: Option<u32>,
    /// A scoring sequence ([`Engine::score`]): the token after the prompt, the last one scored.
    score: Option<u32>,
    out: Vec<u32>,
    detok: Detokenizer,
    text: StopText,
    added: Instant,
    prefill_time: Duration,
    decode_start: Option<Instant>,
}

impl Seq {
    fn input(&self, chunk_start: usize, n: usize) -> &[u32] {
        match &self.next {
            Some(t) => std::slice::from_ref(t),
            None => &self.prompt[chunk_start..chunk_start + n],
        }
    }

    fn finish(mut self, reason: StopReason, tok: &msrnn_modelkit::Tokenizer) -> Finished {
        if reason != StopReason::StopString {
            if let Some(rest) = self.detok.finish(tok) {
                self.text.held.push_str(&rest);
            }
            self.text.flush();
        }
        let decode_time = self.decode_start.map_or(Duration::ZERO, |s| s.elapsed());
        Finished {
            id: self.id,
            state: self.state,
            prompt_tokens: self.prompt.len(),
            tokens: self.out,
            text: self.text.emitted,
            reason,
            prefill_time: self.prefill_time,
            decode_time,
        }
    }
}

/// The batched engine: owns the model, the registry and the live sequences. It is `Send` (policies
/// are `Send`, plugin instances included), so a server runs it on a thread of its own and talks to
/// it over channels.
pub struct Engine {
    model: Arc<dyn Model>,
    registry: Arc<PolicyRegistry>,
    opts: EngineOptions,
    seqs: Vec<Seq>,
    next_id: u64,
    /// Where the round-robin of prefill chunks starts next step (a sequence id).
    rr: u64,
    /// Key/value entries dropped from the states during this engine's steps (a counter).
    evicted: u64,
}

/// Key/value entries (one token in one layer) a state has dropped so far: every token fed was
/// written into every layer, so what a layer no longer holds was evicted (by the policy, or by the
/// model's own sliding window).
fn dropped_entries(state: &MsrnnState) -> u64 {
    let seen = state.tokens_seen();
    (0..state.num_layers()).map(|i| seen.saturating_sub(state.layer(i).live_count() as u64)).sum()
}

impl Engine {
    pub fn new(model: Arc<LoadedModel>, registry: Arc<PolicyRegistry>, opts: EngineOptions) -> Self {
        Self::with_model(model.lm.clone(), registry, opts)
    }

    /// An engine over a model without a file behind it (what the evaluations hold): the engine
    /// needs the adapter and its tokenizer only.
    pub fn with_model(model: Arc<dyn Model>, registry: Arc<PolicyRegistry>, opts: EngineOptions) -> Self {
        Self { model, registry, opts, seqs: Vec::new(), next_id: 0, rr: 0, evicted: 0 }
    }

    pub fn model(&self) -> &Arc<dyn Model> {
        &self.model
    }

    pub fn registry(&self) -> &Arc<PolicyRegistry> {
        &self.registry
    }

    pub fn options(&self) -> EngineOptions {
        self.opts
    }

    /// A fresh state for this engine's model ([`PolicyRegistry::build_state`]).
    pub fn new_state(&self, recipe: &StateRecipe) -> Result<MsrnnState> {
        Ok(self.registry.build_state(&*self.model, recipe)?)
    }

    /// Adds a sequence; it joins at the next step. The prompt is fed after whatever `state` already
    /// holds (a resumed conversation). Refused, leaving the engine as it was: an empty prompt, a
    /// token outside the vocabulary, a state built for another model, bad sampling settings.
    pub fn add(&mut self, mut state: MsrnnState, prompt: Vec<u32>, cfg: GenConfig) -> Result<SeqId> {
        if prompt.is_empty() {
            return Err(Error::Request("the prompt is empty".into()));
        }
        let sampler = Sampler::new(cfg.sampling)?;
        if cfg.prefill_chunk == 0 {
            return Err(Error::Request("the prefill chunk must be at least 1 token".into()));
        }
        if cfg.stop_strings.iter().any(String::is_empty) {
            return Err(Error::Request("a stop string is empty".into()));
        }
        {
            let batch = [SeqStep::new(&prompt, &mut state, Logits::Last)];
            check_batch(&batch, self.model.info())?;
        }
        let id = SeqId(self.next_id);
        self.next_id += 1;
        self.seqs.push(Seq {
            id,
            state,
            sampler,
            cfg,
            prompt,
            fed: 0,
            next: None,
            score: None,
            out: Vec::new(),
            detok: Detokenizer::new(),
            text: StopText::default(),
            added: Instant::now(),
            prefill_time: Duration::ZERO,
            decode_start: None,
        });
        tracing::debug!(%id, live = self.seqs.len(), "sequence added");
        Ok(id)
    }

    /// Adds a sequence that scores `tokens` instead of generating: every token but the last is fed,
    /// in chunks of `chunk` (the policy runs after each, as in generation), each row's logits are
    /// kept, and every step reports the NLL of the tokens its rows predict ([`Event::Scored`],
    /// tokens 1 to the last). It finishes after the last chunk ([`StopReason::MaxTokens`], nothing
    /// generated; `prompt_tokens` counts the tokens fed). Refused as [`Engine::add`] refuses, and
    /// with fewer than 2 tokens.
    pub fn score(&mut self, state: MsrnnState, mut tokens: Vec<u32>, chunk: usize) -> Result<SeqId> {
        if tokens.len() < 2 {
            return Err(Error::Request(format!("scoring needs at least 2 tokens, got {}", tokens.len())));
        }
        let last = tokens.pop().expect("at least 2 tokens");
        let vocab = self.model.info().vocab_size;
        if last as usize >= vocab {
            return Err(Error::Request(format!("token id {last} is outside the vocabulary ({vocab})")));
        }
        let cfg = GenConfig { max_tokens: 0, prefill_chunk: chunk, ..GenConfig::default() };
        let id = self.add(state, tokens, cfg)?;
        self.seqs.last_mut().expect("just added").score = Some(last);
        Ok(id)
    }

    /// Removes a sequence now, handing back its state (drop it to free its slots); `None` for an
    /// id that is not live.
    pub fn cancel(&mut self, id: SeqId) -> Option<Finished> {
        let i = self.seqs.iter().position(|s| s.id == id)?;
        let seq = self.seqs.remove(i);
        Some(seq.finish(StopReason::Cancelled, self.model.tokenizer()))
    }

    /// Live sequences.
    pub fn active(&self) -> usize {
        self.seqs.len()
    }

    /// Whether `id` is live.
    pub fn contains(&self, id: SeqId) -> bool {
        self.seqs.iter().any(|s| s.id == id)
    }

    /// The ids of the live sequences, in the order they joined.
    pub fn ids(&self) -> Vec<SeqId> {
        self.seqs.iter().map(|s| s.id).collect()
    }

    /// Where a live sequence is; `None` for an id that is not live.
    pub fn progress(&self, id: SeqId) -> Option<Progress> {
        let s = self.seqs.iter().find(|s| s.id == id)?;
        Some(Progress { prompt_tokens: s.prompt.len(), fed: s.fed, generated: s.out.len() })
    }

    /// Bytes of keys and values the live sequences hold.
    pub fn live_kv_bytes(&self) -> usize {
        self.seqs.iter().map(|s| s.state.live_kv_bytes()).sum()
    }

    /// Bytes of slot buffers the live sequences have allocated.
    pub fn allocated_kv_bytes(&self) -> usize {
        self.seqs.iter().map(|s| s.state.allocated_kv_bytes()).sum()
    }

    /// Key/value entries (one token in one layer) evicted from the sequences' states during this
    /// engine's steps, summed over all sequences it has run: a counter that only grows. What a
    /// resumed state had dropped before it joined is not counted.
    pub fn evicted_entries(&self) -> u64 {
        self.evicted
    }

    /// What each sequence feeds this step: `(index, chunk start, tokens)`. Decode tokens always go;
    /// whole prefill chunks go round-robin from `rr` while the budget lasts (at least one).
    fn plan(&self) -> Vec<(usize, usize, usize)> {
        let mut plan = Vec::with_capacity(self.seqs.len());
        let mut prefill: Vec<usize> = Vec::new();
        for (i, s) in self.seqs.iter().enumerate() {
            if s.next.is_some() {
                plan.push((i, 0, 1));
            } else {
                prefill.push(i);
            }
        }
        // Round-robin: the first prefill sequence at or after `rr`, then on, wrapping.
        let start = prefill.iter().position(|&i| self.seqs[i].id.0 >= self.rr).unwrap_or(0);
        let mut budget = self.opts.prefill_budget;
        for k in 0..prefill.len() {
            let i = prefill[(start + k) % prefill.len()];
            let s = &self.seqs[i];
            let n = s.cfg.prefill_chunk.min(s.prompt.len() - s.fed);
            if k > 0 && n > budget {
                break;
            }
            budget = budget.saturating_sub(n);
            plan.push((i, s.fed, n));
        }
        plan.sort_unstable();
        plan
    }

    /// One batched forward over every sequence with work. Sequences whose step fails leave with
    /// [`Event::Failed`]; the engine goes on serving the others.
    pub fn step(&mut self) -> Result<Vec<Event>> {
        let mut events = Vec::new();
        if self.seqs.is_empty() {
            return Ok(events);
        }
        let plan = self.plan();
        let prefill_tokens: usize = plan.iter().filter(|(i, ..)| self.seqs[*i].next.is_none()).map(|p| p.2).sum();
        let decode_tokens = plan.len() - plan.iter().filter(|(i, ..)| self.seqs[*i].next.is_none()).count();
        let _span = if prefill_tokens > 0 {
            tracing::info_span!("prefill_step", seqs = plan.len(), prefill_tokens, decode_tokens).entered()
        } else {
            tracing::info_span!("decode_step", seqs = plan.len(), decode_tokens).entered()
        };
        self.advance_rr(&plan);
        let dropped_before: Vec<u64> = self.seqs.iter().map(|s| dropped_entries(&s.state)).collect();

        // Check every item alone first, so one bad sequence fails alone.
        let info = self.model.info().clone();
        let mut failed: Vec<(usize, String)> = Vec::new();
        for &(i, start, n) in &plan {
            let s = &mut self.seqs[i];
            let toks: Vec<u32> = s.input(start, n).to_vec();
            let batch = [SeqStep::new(&toks, &mut s.state, Logits::Last)];
            if let Err(e) = check_batch(&batch, &info) {
                failed.push((i, e.to_string()));
            }
        }
        let plan: Vec<(usize, usize, usize)> =
            plan.into_iter().filter(|(i, ..)| !failed.iter().any(|(f, _)| f == i)).collect();

        // (index, chunk start, tokens fed, the NLLs a scoring sequence's rows give and its last row)
        type Output = std::result::Result<(Option<Vec<f64>>, Vec<f32>), String>;
        let mut results: Vec<(usize, usize, usize, Output)> = Vec::new();
        if !plan.is_empty() {
            let inputs: Vec<Vec<u32>> =
                plan.iter().map(|&(i, start, n)| self.seqs[i].input(start, n).to_vec()).collect();
            let logits = {
                let mut batch: Vec<SeqStep<'_>> = Vec::with_capacity(plan.len());
                let mut rest: &mut [Seq] = &mut self.seqs;
                let mut base = 0;
                for (&(i, ..), toks) in plan.iter().zip(&inputs) {
                    let (_, tail) = std::mem::take(&mut rest).split_at_mut(i - base);
                    let (seq, tail) = tail.split_first_mut().expect("index in range");
                    let logits = if seq.score.is_some() { Logits::All } else { Logits::Last };
                    batch.push(SeqStep::new(toks, &mut seq.state, logits));
                    rest = tail;
                    base = i + 1;
                }
                self.model.forward_batch(&mut batch)
            };
            match logits {
                Ok(l) => {
                    for (&(i, start, n), l) in plan.iter().zip(l) {
                        let out = match self.seqs[i].score {
                            Some(last) => l.to_vec2::<f32>().map(|mut rows| {
                                let prompt = &self.seqs[i].prompt;
                                let target = |k: usize| prompt.get(k).copied().unwrap_or(last);
                                let nll = rows.iter().enumerate().map(|(r, row)| nll(row, target(start + r + 1)));
                                let nll = nll.collect();
                                (Some(nll), rows.pop().unwrap_or_default())
                            }),
                            None => l.flatten_all().and_then(|t| t.to_vec1::<f32>()).map(|row| (None, row)),
                        };
                        results.push((i, start, n, out.map_err(|e| e.to_string())));
                    }
                }
                Err(e) => {
                    // The states of this step may be half-updated: every sequence in it fails.
                    let msg = e.to_string();
                    tracing::warn!(error = %msg, seqs = plan.len(), "a batched step failed");
                    failed.extend(plan.iter().map(|&(i, ..)| (i, msg.clone())));
                }
            }
        }

        let tok = self.model.tokenizer();
        let mut done: Vec<(usize, StopReason)> = Vec::new();
        for (i, start, n, out) in results {
            let s = &mut self.seqs[i];
            let row = match out {
                Ok((scored, r)) => {
                    if let Some(nll) = scored {
                        events.push(Event::Scored { id: s.id, from: start + 1, nll, max_live: s.state.max_live() });
                    }
                    r
                }
                Err(e) => {
                    failed.push((i, e));
                    continue;
                }
            };
            if s.next.is_none() {
                s.fed += n;
                if s.fed < s.prompt.len() {
                    continue;
                }
                s.prefill_time = s.added.elapsed();
                s.decode_start = Some(Instant::now());
                if s.cfg.max_tokens == 0 {
                    done.push((i, StopReason::MaxTokens));
                    continue;
                }
            }
            let token = s.sampler.sample(&row);
            s.out.push(token);
            s.next = Some(token);
            let piece = s.detok.push(tok, token).unwrap_or_default();
            let (text, stop_string) = s.text.push(&piece, &s.cfg.stop_strings);
            events.push(Event::Token { id: s.id, token, text });
            let reason = if s.cfg.stop_tokens.contains(&token) {
                Some(StopReason::StopToken)
            } else if stop_string {
                Some(StopReason::StopString)
            } else if s.out.len() >= s.cfg.max_tokens {
                Some(StopReason::MaxTokens)
            } else {
                None
            };
            if let Some(reason) = reason {
                done.push((i, reason));
            }
        }
        // Indices are still those of `dropped_before` here.
        for (s, before) in self.seqs.iter().zip(&dropped_before) {
            self.evicted += dropped_entries(&s.state).saturating_sub(*before);
        }
        // Remove from the back so indices stay valid.
        let mut leaving: Vec<(usize, std::result::Result<StopReason, String>)> =
            done.into_iter().map(|(i, r)| (i, Ok(r))).collect();
        leaving.extend(failed.into_iter().map(|(i, e)| (i, Err(e))));
        leaving.sort_by_key(|(i, _)| std::cmp::Reverse(*i));
        leaving.dedup_by_key(|(i, _)| *i);
        let mut ended = Vec::with_capacity(leaving.len());
        for (i, r) in leaving {
            let s = self.seqs.remove(i);
            ended.push(match r {
                Ok(reason) => Event::Finished(s.finish(reason, tok)),
                Err(error) => {
                    tracing::warn!(id = %s.id, %error, "sequence failed");
                    Event::Failed { id: s.id, error }
                }
            });
        }
        ended.reverse();
        events.extend(ended);
        Ok(events)
    }

    /// The next step's round-robin starts after the last prefill sequence served this step.
    fn advance_rr(&mut self, plan: &[(usize, usize, usize)]) {
        let served: Vec<u64> =
            plan.iter().filter(|(i, ..)| self.seqs[*i].next.is_none()).map(|(i, ..)| self.seqs[*i].id.0).collect();
        if served.is_empty() {
            return;
        }
        // Served in order from rr upwards, wrapping: the last served is the largest id below rr
        // if any wrapped, else the largest.
        let last = served
            .iter()
            .copied()
            .filter(|&id| id < self.rr)
            .max()
            .unwrap_or_else(|| served.iter().copied().max().expect("not empty"));
        self.rr = last + 1;
    }

    /// Steps until every live sequence has finished or failed, collecting the events.
    pub fn run_to_end(&mut self) -> Result<Vec<Event>> {
        let mut all = Vec::new();
        while !self.seqs.is_empty() {
            all.extend(self.step()?);
        }
        Ok(all)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(pieces: &[&str], stops: &[&str]) -> (Vec<String>, bool, String) {
        let stops: Vec<String> = stops.iter().map(|s| s.to_string()).collect();
        let mut t = StopText::default();
        let mut outs = Vec::new();
        for p in pieces {
            let (out, hit) = t.push(p, &stops);
            outs.push(out);
            if hit {
                return (outs, true, t.emitted);
            }
        }
        t.flush();
        (outs, false, t.emitted)
    }

    #[test]
    fn stop_strings_end_the_text_before_them_and_hold_back_only_what_may_begin_one() {
        assert_eq!(run(&["abE", "N", "Dxyz"], &["END"]), (vec!["ab".into(), "".into(), "".into()], true, "ab".into()));
        // A false start goes out once it cannot be a stop string any more.
        assert_eq!(run(&["aE", "x"], &["END"]), (vec!["a".into(), "Ex".into()], false, "aEx".into()));
        // Held back at the end, then flushed: the text is complete.
        assert_eq!(run(&["hi E"], &["END"]), (vec!["hi ".into()], false, "hi E".into()));
        // The earliest of several, inside one piece; multi-byte characters are never split.
        assert_eq!(run(&["héllo wörld"], &["wö", "llo"]), (vec!["hé".into()], true, "hé".into()));
        assert_eq!(run(&["ab", "cd"], &[]), (vec!["ab".into(), "cd".into()], false, "abcd".into()));
        assert_eq!(run(&["xé"], &["éa"]).0, vec!["x".to_string()]);
    }

    #[test]
    fn the_engine_is_send() {
        fn send<T: Send>() {}
        send::<Engine>();
        send::<Finished>();
    }
}

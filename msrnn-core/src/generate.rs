//! Greedy and nucleus-sampled generation, written once against [`CausalLm`].

use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::model::{CausalLm, Logits, SeqStep};
use crate::state::MsrnnState;

/// How the next token is picked.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub enum Sampling {
    /// The most likely token; ties go to the lowest id.
    Greedy,
    /// Temperature, then nucleus (top-p) sampling with a seeded generator: the same seed gives the
    /// same text.
    TopP { temperature: f64, top_p: f64, seed: u64 },
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GenerateOptions {
    pub max_tokens: usize,
    pub sampling: Sampling,
    /// Generation stops after emitting one of these (the stop token is reported, not fed back).
    pub stop_tokens: Vec<u32>,
    /// Prompt tokens fed per forward call; the policy runs after each chunk.
    pub prefill_chunk: usize,
}

impl Default for GenerateOptions {
    fn default() -> Self {
        Self { max_tokens: 64, sampling: Sampling::Greedy, stop_tokens: vec![], prefill_chunk: 64 }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum StopReason {
    StopToken,
    MaxTokens,
    /// The callback asked to stop.
    Caller,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Generation {
    pub tokens: Vec<u32>,
    pub stop: StopReason,
    pub prompt_tokens: usize,
    pub prefill_time: Duration,
    pub decode_time: Duration,
}

impl Generation {
    /// Tokens generated per second of decoding (the first token comes from the prefill).
    pub fn decode_tokens_per_s(&self) -> f64 {
        decode_tokens_per_s(self.tokens.len(), self.decode_time)
    }
}

/// Decode rate of `generated` tokens whose decoding took `decode_time`: the first token comes
/// from the prefill, so it is not counted. Zero when nothing was decoded.
pub fn decode_tokens_per_s(generated: usize, decode_time: Duration) -> f64 {
    let n = generated.saturating_sub(1);
    if n == 0 || decode_time.is_zero() {
        0.0
    } else {
        n as f64 / decode_time.as_secs_f64()
    }
}

/// The workspace's one seeded generator (defined with the policy contract, which every crate shares).
pub use msrnn_policy_api::SplitMix64;

/// Picks tokens from logits.
pub struct Sampler {
    sampling: Sampling,
    rng: SplitMix64,
}

impl Sampler {
    pub fn new(sampling: Sampling) -> Result<Self> {
        let seed = match sampling {
            Sampling::Greedy => 0,
            Sampling::TopP { temperature, top_p, seed } => {
                if !(temperature > 0.0 && temperature.is_finite()) {
                    return Err(Error::Input(format!("temperature must be > 0, got {temperature}")));
                }
                if !(top_p > 0.0 && top_p <= 1.0) {
                    return Err(Error::Input(format!("top-p must be in (0, 1], got {top_p}")));
                }
                seed
            }
        };
        Ok(Self { sampling, rng: SplitMix64::new(seed) })
    }

    pub fn sample(&mut self, logits: &[f32]) -> u32 {
        let argmax = || {
            let mut best = 0;
            for (i, &x) in logits.iter().enumerate() {
                if x > logits[best] {
                    best = i;
                }
            }
            best as u32
        };
        match self.sampling {
            Sampling::Greedy => argmax(),
            Sampling::TopP { temperature, top_p, .. } => {
                let max = logits.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x)) as f64;
                let mut p: Vec<(usize, f64)> =
                    logits.iter().enumerate().map(|(i, &x)| (i, ((x as f64 - max) / temperature).exp())).collect();
                let z: f64 = p.iter().map(|x| x.1).sum();
                p.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
                let mut cum = 0.0;
                let mut keep = p.len();
                for (n, &(_, w)) in p.iter().enumerate() {
                    cum += w / z;
                    if cum >= top_p {
                        keep = n + 1;
                        break;
                    }
                }
                p.truncate(keep);
                let mass: f64 = p.iter().map(|x| x.1).sum();
                let mut r = self.rng.next_f64() * mass;
                for &(i, w) in &p {
                    if r < w {
                        return i as u32;
                    }
                    r -= w;
                }
                p.last().map_or_else(argmax, |x| x.0 as u32)
            }
        }
    }
}

/// Feeds `prompt` in chunks, then generates until a stop token, `max_tokens`, or `on_token`
/// returns `false`. Every generated token (stop token included) is passed to `on_token` as it comes.
pub fn generate(
    model: &dyn CausalLm,
    state: &mut MsrnnState,
    prompt: &[u32],
    opts: &GenerateOptions,
    on_token: &mut dyn FnMut(u32) -> bool,
) -> Result<Generation> {
    let mut items = [GenItem { state, prompt }];
    let mut out = generate_batch(model, &mut items, opts, &mut |_, tok| on_token(tok))?;
    Ok(out.pop().expect("one item in, one generation out"))
}

/// One sequence of [`generate_batch`]: its own state (policy, capacity, position) and prompt.
pub struct GenItem<'a> {
    pub state: &'a mut MsrnnState,
    pub prompt: &'a [u32],
}

/// Where one sequence of a batch is.
struct Running {
    sampler: Sampler,
    fed: usize,
    out: Vec<u32>,
    next: Option<u32>,
    stop: Option<StopReason>,
    prefill_time: Duration,
    decode_start: Option<Instant>,
    decode_time: Duration,
}

/// Generates for several prompts at once. Every step is one batched forward: sequences still in
/// their prompt feed their next chunk, the others their last token, so prefill chunks and decode
/// tokens share each pass over the weights. Sequences that stop leave the batch; each gets what it
/// would get alone. `on_token(item, token)` sees every generated token as it comes; `false` stops
/// that item.
pub fn generate_batch(
    model: &dyn CausalLm,
    items: &mut [GenItem<'_>],
    opts: &GenerateOptions,
    on_token: &mut dyn FnMut(usize, u32) -> bool,
) -> Result<Vec<Generation>> {
    if let Some(i) = items.iter().position(|it| it.prompt.is_empty()) {
        let which = if items.len() > 1 { format!("prompt {i}: ") } else { String::new() };
        return Err(Error::Input(format!("{which}the prompt is empty")));
    }
    let chunk = opts.prefill_chunk.max(1);
    let t0 = Instant::now();
    let mut run: Vec<Running> = items
        .iter()
        .map(|_| {
            Ok(Running {
                sampler: Sampler::new(opts.sampling)?,
                fed: 0,
                out: Vec::new(),
                next: None,
                stop: None,
                prefill_time: Duration::ZERO,
                decode_start: None,
                decode_time: Duration::ZERO,
            })
        })
        .collect::<Result<_>>()?;
    let _span = tracing::info_span!("generate", items = items.len(), max_tokens = opts.max_tokens).entered();
    loop {
        let active: Vec<usize> = (0..items.len()).filter(|&i| run[i].stop.is_none()).collect();
        if active.is_empty() {
            break;
        }
        let inputs: Vec<Vec<u32>> = active
            .iter()
            .map(|&i| {
                let r = &run[i];
                match r.next {
                    Some(tok) => vec![tok],
                    None => items[i].prompt[r.fed..(r.fed + chunk).min(items[i].prompt.len())].to_vec(),
                }
            })
            .collect();
        let logits = {
            let mut batch: Vec<SeqStep<'_>> = Vec::with_capacity(active.len());
            let mut rest: &mut [GenItem<'_>] = items;
            let mut base = 0;
            for (&i, toks) in active.iter().zip(&inputs) {
                let (_, tail) = std::mem::take(&mut rest).split_at_mut(i - base);
                let (item, tail) = tail.split_first_mut().expect("index in range");
                batch.push(SeqStep::new(toks, item.state, Logits::Last));
                rest = tail;
                base = i + 1;
            }
            model.forward_batch(&mut batch)?
        };
        for ((&i, toks), l) in active.iter().zip(&inputs).zip(logits) {
            let r = &mut run[i];
            if r.next.is_none() {
                r.fed += toks.len();
                if r.fed < items[i].prompt.len() {
                    continue;
                }
                r.prefill_time = t0.elapsed();
                r.decode_start = Some(Instant::now());
                if opts.max_tokens == 0 {
                    r.stop = Some(StopReason::MaxTokens);
                    continue;
                }
            }
            let row = l.flatten_all()?.to_vec1::<f32>()?;
            let tok = r.sampler.sample(&row);
            r.out.push(tok);
            let go_on = on_token(i, tok);
            r.next = Some(tok);
            r.stop = if opts.stop_tokens.contains(&tok) {
                Some(StopReason::StopToken)
            } else if !go_on {
                Some(StopReason::Caller)
            } else if r.out.len() >= opts.max_tokens {
                Some(StopReason::MaxTokens)
            } else {
                None
            };
            if r.stop.is_some() {
                r.decode_time = r.decode_start.map_or(Duration::ZERO, |s| s.elapsed());
            }
        }
    }
    Ok(run
        .into_iter()
        .zip(items.iter())
        .map(|(r, it)| Generation {
            tokens: r.out,
            stop: r.stop.expect("every item stopped"),
            prompt_tokens: it.prompt.len(),
            prefill_time: r.prefill_time,
            decode_time: r.decode_time,
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greedy_takes_argmax_and_sampling_is_seeded() {
        let logits = [0.1f32, 3.0, 2.9, -1.0];
        assert_eq!(Sampler::new(Sampling::Greedy).unwrap().sample(&logits), 1);
        let s = Sampling::TopP { temperature: 1.0, top_p: 0.9, seed: 7 };
        let a: Vec<u32> = (0..20).scan(Sampler::new(s).unwrap(), |sm, _| Some(sm.sample(&logits))).collect();
        let b: Vec<u32> = (0..20).scan(Sampler::new(s).unwrap(), |sm, _| Some(sm.sample(&logits))).collect();
        assert_eq!(a, b);
        assert!(a.iter().all(|&t| t == 1 || t == 2), "top-p 0.9 excludes the tail: {a:?}");
        // a tiny top-p leaves only the argmax
        let s = Sampling::TopP { temperature: 1.0, top_p: 1e-6, seed: 1 };
        assert_eq!(Sampler::new(s).unwrap().sample(&logits), 1);
        assert!(Sampler::new(Sampling::TopP { temperature: 0.0, top_p: 0.5, seed: 0 }).is_err());
        assert!(Sampler::new(Sampling::TopP { temperature: 1.0, top_p: 1.5, seed: 0 }).is_err());
    }
}

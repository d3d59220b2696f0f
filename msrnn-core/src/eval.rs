//! Perplexity, written once against [`CausalLm`] so every family gets it.

use std::ops::ControlFlow;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::model::{CausalLm, Logits};
use crate::state::MsrnnState;

/// How the text is fed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum EvalMode {
    /// One token per step, the policy runs after every token: the paper's protocol.
    Decode,
    /// Chunks of this many tokens; the policy brings each layer back to C after every chunk, so
    /// tokens inside a chunk may attend to up to `C + chunk` entries.
    Chunked(usize),
}

impl std::fmt::Display for EvalMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            EvalMode::Decode => write!(f, "decode"),
            EvalMode::Chunked(n) => write!(f, "chunked({n})"),
        }
    }
}

/// Result of one perplexity run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Perplexity {
    /// Tokens whose probability was scored (all but the first).
    pub scored: usize,
    /// Sum of negative log-likelihoods, nats.
    pub nll_sum: f64,
    pub ppl: f64,
    /// Largest live count any layer reached after a step.
    pub max_live: usize,
}

/// `-log p(token)` from one row of logits, computed in f64.
pub fn nll(logits: &[f32], target: u32) -> f64 {
    let max = logits.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x)) as f64;
    let lse = max + logits.iter().map(|&x| (x as f64 - max).exp()).sum::<f64>().ln();
    lse - logits[target as usize] as f64
}

/// Perplexity of `tokens` (token `i+1` scored from the logits after token `i`), starting from
/// `state` as it is (normally fresh). `progress` is called with the number of tokens fed so far.
pub fn perplexity(
    model: &dyn CausalLm,
    state: &mut MsrnnState,
    tokens: &[u32],
    mode: EvalMode,
    progress: &mut dyn FnMut(usize),
) -> Result<Perplexity> {
    Ok(perplexity_batch(model, &mut [state], tokens, mode, progress)?.pop().expect("one state in, one result out"))
}

/// [`perplexity`] of the same `tokens` for several states at once (a grid of policies and
/// capacities): every step feeds the same chunk to all of them as one batch, so each weight is read
/// once per step; each state's result equals the one it gets alone.
pub fn perplexity_batch(
    model: &dyn CausalLm,
    states: &mut [&mut MsrnnState],
    tokens: &[u32],
    mode: EvalMode,
    progress: &mut dyn FnMut(usize),
) -> Result<Vec<Perplexity>> {
    perplexity_batch_with(
        model,
        states,
        tokens,
        mode,
        &mut |fed| {
            progress(fed);
            ControlFlow::Continue(())
        },
        &mut |_, _, _| {},
    )
}

/// [`perplexity_batch`] that also hands every scored token's NLL to `on_nll(state, target, nll)`
/// (`target` is the scored token's index in `tokens`, from 1): what per-segment curves over a long
/// stream are built from. `progress` is told the tokens fed after every step and may stop the run
/// there ([`Error::Cancelled`]; the states keep what they were fed).
pub fn perplexity_batch_with(
    model: &dyn CausalLm,
    states: &mut [&mut MsrnnState],
    tokens: &[u32],
    mode: EvalMode,
    progress: &mut dyn FnMut(usize) -> ControlFlow<()>,
    on_nll: &mut dyn FnMut(usize, usize, f64),
) -> Result<Vec<Perplexity>> {
    if tokens.len() < 2 {
        return Err(Error::Input(format!("perplexity needs at least 2 tokens, got {}", tokens.len())));
    }
    let vocab = model.info().vocab_size;
    if let Some(&bad) = tokens.iter().find(|&&t| t as usize >= vocab) {
        return Err(Error::Input(format!("token id {bad} is outside the vocabulary ({vocab})")));
    }
    let chunk = match mode {
        EvalMode::Decode => 1,
        EvalMode::Chunked(0) => return Err(Error::Input("chunk size must be at least 1".into())),
        EvalMode::Chunked(n) => n,
    };
    let _span = tracing::info_span!("perplexity", tokens = tokens.len(), %mode, batch = states.len()).entered();
    let mut acc = vec![Perplexity { scored: 0, nll_sum: 0.0, ppl: f64::NAN, max_live: 0 }; states.len()];
    // The last token is only a target, never an input.
    let inputs = &tokens[..tokens.len() - 1];
    for (c, piece) in inputs.chunks(chunk).enumerate() {
        let start = c * chunk;
        let logits = crate::batch::forward_all(model, piece, states, Logits::All)?;
        for (s, ((a, l), st)) in acc.iter_mut().zip(logits).zip(states.iter()).enumerate() {
            for (i, row) in l.to_vec2::<f32>()?.iter().enumerate() {
                let target = start + i + 1;
                let x = nll(row, tokens[target]);
                on_nll(s, target, x);
                a.nll_sum += x;
                a.scored += 1;
            }
            a.max_live = a.max_live.max(st.max_live());
        }
        if progress(start + piece.len()).is_break() {
            return Err(Error::Cancelled);
        }
    }
    for a in &mut acc {
        a.ppl = (a.nll_sum / a.scored as f64).exp();
    }
    Ok(acc)
}

#[cfg(test)]
mod tests {
    #[test]
    fn nll_of_uniform_is_log_vocab() {
        let v = vec![0.5f32; 8];
        assert!((super::nll(&v, 3) - (8f64).ln()).abs() < 1e-12);
        let v = [0.0f32, 1000.0];
        assert!(super::nll(&v, 1).abs() < 1e-9 && (super::nll(&v, 0) - 1000.0).abs() < 1e-6);
    }
}

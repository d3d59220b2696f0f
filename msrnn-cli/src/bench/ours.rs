//! One policy's state carried through the contexts of a bench: chunked prefill, copies, timed
//! decode steps.

use std::time::Instant;

use anyhow::{Context, Result};
use msrnn_core::{Capacity, PolicySpec};

use crate::model::LoadedModel;
use crate::policy;

/// One policy's state, carried through the contexts.
pub struct OursRun<'a> {
    pub m: &'a LoadedModel,
    r: &'a msrnn_core::PolicyRegistry,
    pub spec: &'a PolicySpec,
    pub cap: Capacity,
    chunk: usize,
    pub state: msrnn_core::MsrnnState,
    fed: usize,
    pub peak_kv: usize,
}

impl<'a> OursRun<'a> {
    pub fn new(
        m: &'a LoadedModel,
        r: &'a msrnn_core::PolicyRegistry,
        spec: &'a PolicySpec,
        cap: Capacity,
        chunk: usize,
        global: &crate::context::Global,
    ) -> Result<Self> {
        let state = policy::make_state(m.model(), r, &global.recipe(spec, cap, chunk))?;
        Ok(Self { m, r, spec, cap, chunk, state, fed: 0, peak_kv: 0 })
    }

    /// An independent copy of the state, policy bookkeeping included.
    pub fn snapshot(&self) -> Result<Self> {
        let state = policy::fork(self.m.model(), self.r, self.spec, &self.state)?;
        Ok(Self { state, ..*self })
    }

    /// Chunked prefill (the policy compresses after each chunk) up to `context` tokens: how many
    /// were fed, and the seconds it took.
    pub fn prefill(&mut self, context: usize, tokens: &[u32], progress: &mut dyn FnMut(usize)) -> Result<(usize, f64)> {
        let (model, spec, start) = (self.m.model(), self.spec, self.fed);
        let t0 = Instant::now();
        for piece in tokens[start..context].chunks(self.chunk) {
            model.forward(piece, &mut self.state, false).with_context(|| format!("{spec} prefill"))?;
            self.peak_kv = self.peak_kv.max(self.state.live_kv_bytes());
            self.fed += piece.len();
            progress(piece.len());
        }
        Ok((context - start, t0.elapsed().as_secs_f64()))
    }

    /// Single-token decode steps on `tokens`, each including the copy of the logits to the host;
    /// the seconds they took.
    pub fn decode(&mut self, tokens: &[u32]) -> Result<f64> {
        let model = self.m.model();
        let t0 = Instant::now();
        for tok in tokens.chunks(1) {
            let logits = model.forward(tok, &mut self.state, false).with_context(|| format!("{} decode", self.spec))?;
            std::hint::black_box(logits.flatten_all()?.to_vec1::<f32>()?);
            self.peak_kv = self.peak_kv.max(self.state.live_kv_bytes());
            self.fed += 1;
        }
        Ok(t0.elapsed().as_secs_f64())
    }
}

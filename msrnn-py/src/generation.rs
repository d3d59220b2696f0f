//! Generation through the engine: one sequence per call, stepped from Python (`TextStream`), the
//! GIL released around every step and Ctrl-C checked between them. A `State` passed in lends its
//! multi-state to the engine and gets it back, with the conversation, when the sequence finishes
//! or is cancelled (the CLI's `generate --resume` rules: the same prompts, sampling and files).

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use msrnn_core::{MsrnnState, Sampler, Sampling};
use msrnn_engine::session::{continue_sampling, next_turn_prompt};
use msrnn_engine::{Conversation, Engine, EngineOptions, Event, Finished, GenConfig, Message, SeqId, Turn};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::PyString;

use crate::errors;
use crate::model::{build_state, parse_kv, parse_positions, Shared};
use crate::registry;
use crate::state::State;

/// What the user says next.
pub enum TurnText {
    /// Nothing: the model goes on where the state stopped.
    Continue,
    Text(String),
    Messages(Vec<Message>),
}

/// One `generate`/`chat` call's arguments.
pub struct Request {
    pub turn: TurnText,
    pub raw: bool,
    pub policy: Option<String>,
    pub capacity: Option<usize>,
    pub positions: Option<String>,
    /// `kv=`: the KV format of a fresh state (None: f32).
    pub kv: Option<String>,
    pub prefill_chunk: usize,
    pub max_tokens: usize,
    pub temperature: Option<f64>,
    pub top_p: Option<f64>,
    pub seed: Option<u64>,
    pub stop: Vec<String>,
}

/// A running generation.
struct Gen {
    engine: Engine,
    id: SeqId,
    pieces: VecDeque<String>,
    emitted: usize,
    done: bool,
    /// The `State` to give the multi-state back to, with what its conversation needs.
    target: Option<Py<State>>,
    prev: Option<Conversation>,
    sampling: Sampling,
    draws: u64,
    chat: bool,
}

impl Gen {
    /// A finished (or cancelled) sequence: its text's unsent rest, its state back to the `State`.
    fn finish(&mut self, f: Finished) {
        self.done = true;
        if f.text.len() > self.emitted && f.text.is_char_boundary(self.emitted) {
            self.pieces.push_back(f.text[self.emitted..].to_string());
        }
        if let Some(t) = &self.target {
            let conv = Conversation::after(self.prev.as_ref(), &f, self.sampling, self.draws, self.chat);
            t.get().put_back(f.state, conv);
        }
    }

    /// The next text piece, `None` at the end. Runs with the GIL released.
    fn next_piece(&mut self) -> PyResult<Option<String>> {
        loop {
            if let Some(p) = self.pieces.pop_front() {
                return Ok(Some(p));
            }
            if self.done {
                return Ok(None);
            }
            if let Err(e) = errors::check_signals() {
                self.cancel();
                return Err(e);
            }
            let events = match self.engine.step() {
                Ok(ev) => ev,
                Err(e) => {
                    self.done = true;
                    return Err(errors::engine(e));
                }
            };
            for ev in events {
                match ev {
                    Event::Token { text, .. } if !text.is_empty() => {
                        self.emitted += text.len();
                        self.pieces.push_back(text);
                    }
                    Event::Token { .. } | Event::Scored { .. } => {}
                    Event::Finished(f) => self.finish(f),
                    Event::Failed { error, .. } => {
                        self.done = true;
                        let lost = if self.target.is_some() {
                            " (the state passed in was lost with it: load a saved copy)"
                        } else {
                            ""
                        };
                        return Err(errors::policy_or_runtime(format!("{error}{lost}")));
                    }
                }
            }
        }
    }

    /// Stops now; the state goes back to its `State`.
    fn cancel(&mut self) {
        if !self.done {
            if let Some(f) = self.engine.cancel(self.id) {
                self.finish(f);
            }
            self.done = true;
            self.pieces.clear();
        }
    }
}

impl Drop for Gen {
    fn drop(&mut self) {
        self.cancel();
    }
}

/// The text pieces of a generation as they come (`generate(..., stream=True)`). Dropping it,
/// `close()` or Ctrl-C while it runs stops the generation (a `State` passed in gets its state
/// back, as far as it went).
#[pyclass(module = "msrnn._msrnn", frozen)]
pub struct TextStream {
    gen: Mutex<Option<Gen>>,
}

#[pymethods]
impl TextStream {
    fn __iter__(slf: PyRef<'_, Self>) -> PyRef<'_, Self> {
        slf
    }

    fn __next__(&self, py: Python<'_>) -> PyResult<Option<String>> {
        // The lock is taken with the GIL released: the step may call a Python policy.
        py.detach(|| {
            let mut g = self.gen.lock().unwrap_or_else(|p| p.into_inner());
            match g.as_mut() {
                Some(gen) => gen.next_piece(),
                None => Ok(None),
            }
        })
    }

    /// Stops the generation.
    fn close(&self, py: Python<'_>) {
        let gen = py.detach(|| self.gen.lock().unwrap_or_else(|p| p.into_inner()).take());
        py.detach(move || drop(gen));
    }
}

/// The sampling of a call: its flags, else the saved conversation's, else greedy (the CLI's rules).
fn sampling_of(req: &Request, saved: Option<&Conversation>) -> PyResult<Sampling> {
    let s = match req.temperature {
        Some(0.0) => Sampling::Greedy,
        Some(temperature) => {
            Sampling::TopP { temperature, top_p: req.top_p.unwrap_or(0.9), seed: req.seed.unwrap_or(0) }
        }
        None => match saved.map(|c| c.sampling) {
            Some(Sampling::TopP { temperature, top_p, seed }) => {
                Sampling::TopP { temperature, top_p: req.top_p.unwrap_or(top_p), seed: req.seed.unwrap_or(seed) }
            }
            _ => Sampling::Greedy,
        },
    };
    Sampler::new(s).map_err(errors::core)?;
    Ok(s)
}

/// Starts a generation: the whole text (`stream` false) or a `TextStream`.
pub fn start(
    py: Python<'_>,
    m: Arc<Shared>,
    req: Request,
    target: Option<Py<State>>,
    stream: bool,
) -> PyResult<Py<PyAny>> {
    let r = registry::current()?;
    let tok = m.tokenizer();
    if req.stop.iter().any(String::is_empty) {
        return Err(PyValueError::new_err("a stop string is empty"));
    }
    if req.prefill_chunk == 0 {
        return Err(PyValueError::new_err("prefill_chunk must be at least 1"));
    }
    // The multi-state: lent by the `State`, or fresh.
    let (state, prev, chunk): (MsrnnState, Option<Conversation>, usize) = match &target {
        Some(t) => {
            if req.policy.is_some() || req.capacity.is_some() || req.positions.is_some() || req.kv.is_some() {
                return Err(PyValueError::new_err(
                    "state= brings its own policy, capacity, positions and kv: leave policy, capacity, positions and \
                     kv out",
                ));
            }
            let t = t.get();
            let (s, conv) = t.take()?;
            (s, conv, t.chunk())
        }
        None => {
            let spec = registry::parse_spec(&r, req.policy.as_deref().unwrap_or("tova"))?;
            let positions = parse_positions(req.positions.as_deref().unwrap_or("absolute"))?;
            let kv = parse_kv(req.kv.as_deref().unwrap_or("f32"))?;
            let s = build_state(&m, &r, &spec, req.capacity, positions, req.prefill_chunk, kv)?;
            (s, None, req.prefill_chunk)
        }
    };
    // From here on a lent state goes back to its `State` if anything fails.
    let give_back = |s: MsrnnState, conv: Option<Conversation>| {
        if let Some(t) = &target {
            t.get().restore(s, conv);
        }
    };
    let resumed = prev.is_some() || state.tokens_seen() > 0;
    let chat = match (&req.turn, &prev) {
        (TurnText::Messages(_), _) => true,
        (_, Some(c)) => c.chat && !req.raw,
        (_, None) => tok.has_chat_template() && !req.raw,
    };
    let prepared = (|| -> PyResult<(Vec<u32>, Sampling, u64)> {
        let turn = match &req.turn {
            TurnText::Continue => Turn::Continue,
            TurnText::Text(t) => Turn::Text(t),
            TurnText::Messages(ms) => Turn::Messages(ms),
        };
        let prompt = next_turn_prompt(tok, turn, prev.as_ref(), chat, resumed).map_err(errors::engine)?;
        let sampling = sampling_of(&req, prev.as_ref())?;
        let draws = Conversation::draws_for(prev.as_ref(), sampling);
        Ok((prompt, sampling, draws))
    })();
    let (prompt, sampling, draws) = match prepared {
        Ok(x) => x,
        Err(e) => {
            give_back(state, prev);
            return Err(e);
        }
    };
    let cfg = GenConfig {
        max_tokens: req.max_tokens,
        sampling: continue_sampling(sampling, draws),
        stop_tokens: tok.eos_tokens().to_vec(),
        stop_strings: req.stop.clone(),
        prefill_chunk: req.prefill_chunk.min(chunk),
    };
    let mut engine = Engine::new(m.clone(), r.clone(), EngineOptions::default());
    // Everything `add` checks was checked above, so it keeps the state only on success.
    let id = engine.add(state, prompt, cfg).map_err(errors::engine)?;
    let mut gen =
        Gen { engine, id, pieces: VecDeque::new(), emitted: 0, done: false, target, prev, sampling, draws, chat };
    if stream {
        return Ok(Py::new(py, TextStream { gen: Mutex::new(Some(gen)) })?.into_any());
    }
    let text = py.detach(move || -> PyResult<String> {
        let mut text = String::new();
        while let Some(p) = gen.next_piece()? {
            text.push_str(&p);
        }
        Ok(text)
    })?;
    Ok(PyString::new(py, &text).into_any().unbind())
}

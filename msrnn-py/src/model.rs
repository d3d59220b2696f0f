//! `msrnn.Model`: a loaded model, its tokenizer, perplexity grids and generation.

use std::path::PathBuf;
use std::sync::Arc;

use msrnn_core::{KvFormat, MsrnnState, PolicyRegistry, PolicySpec, Positions, StateRecipe};
use msrnn_engine::{LoadedModel, Message};
use msrnn_eval::passkey::{PasskeyConfig, Prompts};
use msrnn_eval::ppl::PplConfig;
use msrnn_eval::ruler::{RulerConfig, DEFAULT_POLICIES as RULER_POLICIES, TASKS};
use msrnn_modelkit::WeightFormat;
use pyo3::exceptions::{PyFileNotFoundError, PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList, PyString};
use serde_json::json;

use crate::errors;
use crate::eval;
use crate::generation::{self, Request, TurnText};
use crate::registry;
use crate::state::State;
use crate::values;

/// The CLI's defaults.
const DEFAULT_POLICIES: &str = msrnn_eval::ppl::DEFAULT_POLICIES;
pub const DEFAULT_CAPACITY: usize = 512;

/// What a Python `Model` holds; shared with the states and streams made from it.
pub type Shared = LoadedModel;

pub fn vocab(m: &Shared) -> usize {
    m.info().vocab_size
}

/// A fresh state through the engine's recipe: `capacity` `None` is the CLI's default (unbounded for
/// a policy that declares itself so, else 512 at most the model's context).
pub fn build_state(
    m: &Shared,
    r: &PolicyRegistry,
    spec: &PolicySpec,
    capacity: Option<usize>,
    positions: Positions,
    chunk: usize,
    kv: KvFormat,
) -> PyResult<MsrnnState> {
    if chunk == 0 {
        return Err(PyValueError::new_err("chunk must be at least 1"));
    }
    let recipe = StateRecipe::resolve(r, m.info(), spec.clone(), capacity, DEFAULT_CAPACITY)
        .map_err(errors::core)?
        .positions(positions)
        .max_chunk(chunk)
        .kv(kv);
    r.build_state(m.model(), &recipe).map_err(errors::core)
}

pub fn parse_positions(s: &str) -> PyResult<Positions> {
    s.parse::<Positions>().map_err(errors::core)
}

/// `kv=`: f32, f16 or q8_0.
pub fn parse_kv(s: &str) -> PyResult<KvFormat> {
    s.parse::<KvFormat>().map_err(|e| PyValueError::new_err(format!("kv={s:?}: {e}")))
}

/// The model path: the one given, else `MSRNN_MODEL`, else the model in `models/` of the current
/// directory or a parent (as the CLI finds it).
fn resolve(path: Option<PathBuf>) -> PyResult<PathBuf> {
    if let Some(p) = path.or_else(|| std::env::var_os("MSRNN_MODEL").map(PathBuf::from)) {
        if !p.exists() {
            return Err(PyFileNotFoundError::new_err(format!("{}: no such file or directory", p.display())));
        }
        return Ok(p);
    }
    let cwd = std::env::current_dir()
        .map_err(|e| PyValueError::new_err(format!("cannot read the current directory: {e}")))?;
    if let Some(p) = msrnn_engine::find_model(&cwd).map_err(errors::engine)?.found {
        return Ok(p);
    }
    Err(PyFileNotFoundError::new_err(format!(
        "no model found (no models/ directory with a .gguf file or model directory in {} or a parent); fetch the \
         reference model with ./scripts/fetch-model.sh, or pass path=",
        cwd.display()
    )))
}

/// Sizes the CPU thread pools once, before candle builds its own (it reads the variables once).
fn set_threads(threads: Option<usize>) -> PyResult<()> {
    let n = match threads {
        Some(0) => return Err(PyValueError::new_err("threads must be at least 1")),
        Some(n) => n,
        None => match std::env::var("MSRNN_THREADS").ok().and_then(|v| v.parse::<usize>().ok()) {
            Some(n) if n > 0 => n,
            _ => (std::thread::available_parallelism().map_or(1, |n| n.get()) / 2).clamp(1, 4),
        },
    };
    for var in ["RAYON_NUM_THREADS", "CANDLE_NUM_THREADS"] {
        if threads.is_some() || std::env::var_os(var).is_none() {
            std::env::set_var(var, n.to_string());
        }
    }
    msrnn_kernels::pool::set_threads(n);
    msrnn_kernels::isa::from_env().map_err(|e| PyValueError::new_err(format!("MSRNN_ISA: {e}")))?;
    Ok(())
}

/// A loaded model (a GGUF file or a Hugging Face directory) with its tokenizer.
#[pyclass(module = "msrnn._msrnn", frozen)]
pub struct Model {
    pub inner: Arc<Shared>,
}

/// Token ids from `text` (a str, tokenized with BOS when the model wants one) or a list of ids.
fn ids_of(m: &Shared, obj: &Bound<'_, PyAny>, n: Option<usize>) -> PyResult<Vec<u32>> {
    if let Ok(s) = obj.cast::<PyString>() {
        let text: String = s.extract()?;
        let tok = m.tokenizer();
        return match n {
            Some(n) => Ok(tok.encode_prefix(text.as_bytes(), n, tok.wants_bos()).map_err(errors::modelkit)?.tokens),
            None => tok.encode(&text, tok.wants_bos()).map_err(errors::modelkit),
        };
    }
    values::token_ids(obj, vocab(m), "text")
}

/// `capacities` or `ratios` (the library refuses both): given ratios and no capacities, no
/// default capacities.
pub(crate) fn string_list(obj: Option<&Bound<'_, PyAny>>, default: &str, what: &str) -> PyResult<Vec<String>> {
    match obj {
        None => Ok(vec![default.to_string()]),
        Some(o) if o.is_instance_of::<PyString>() => Ok(vec![o.extract()?]),
        Some(o) => o.extract().map_err(|_| PyTypeError::new_err(format!("{what} must be a str or a list of str"))),
    }
}

#[pymethods]
impl Model {
    /// Loads a model: `path` a .gguf file or a Hugging Face directory (None: `MSRNN_MODEL`, else the
    /// model in models/ as the CLI finds it); `weights` auto|native|q8_0|f16|f32; `threads` sizes
    /// the CPU pools (default: half the cores, at most 4; the first load in a process sets them).
    #[staticmethod]
    #[pyo3(signature = (path = None, weights = "auto", threads = None))]
    fn load(py: Python<'_>, path: Option<PathBuf>, weights: &str, threads: Option<usize>) -> PyResult<Self> {
        let weights: WeightFormat = weights.parse().map_err(errors::modelkit)?;
        set_threads(threads)?;
        let path = resolve(path)?;
        let shared =
            py.detach(|| msrnn_engine::load(&path, weights, &candle_core::Device::Cpu)).map_err(errors::engine)?;
        Ok(Model { inner: Arc::new(shared) })
    }

    /// The file or directory the model was loaded from.
    #[getter]
    fn path(&self) -> PathBuf {
        self.inner.path.clone()
    }

    /// What state files record to tell models apart: file name, size, digest, weight format.
    #[getter]
    fn id(&self) -> String {
        self.inner.id.clone()
    }

    /// family, name, layers, heads, kv_heads, head_dim, vocab, context, kv_bytes_per_token,
    /// weights, matmul, path, id.
    #[getter]
    fn info<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let i = self.inner.info();
        let v = json!({
            "family": i.family,
            "name": i.name,
            "layers": i.num_layers,
            "heads": i.num_heads,
            "kv_heads": i.num_kv_heads,
            "head_dim": i.head_dim,
            "vocab": i.vocab_size,
            "context": i.max_context,
            "kv_bytes_per_token": i.kv_bytes_per_token(),
            "weights": self.inner.weights.to_string(),
            "matmul": self.inner.lm.weight_kinds().to_string(),
            "path": self.inner.path.display().to_string(),
            "id": self.inner.id,
        });
        values::json_to_py(py, &v)
    }

    /// Token ids of `text` (`bos`: put the model's BOS token first).
    #[pyo3(signature = (text, bos = false))]
    fn tokenize(&self, text: &str, bos: bool) -> PyResult<Vec<u32>> {
        self.inner.tokenizer().encode(text, bos).map_err(errors::modelkit)
    }

    /// The text of token ids.
    fn detokenize(&self, ids: &Bound<'_, PyAny>) -> PyResult<String> {
        let ids = values::token_ids(ids, vocab(&self.inner), "ids")?;
        self.inner.tokenizer().decode(&ids).map_err(errors::modelkit)
    }

    /// The user message wrapped in the model's chat template (with an optional system turn).
    #[pyo3(signature = (message, system = None))]
    fn chat_prompt(&self, message: &str, system: Option<&str>) -> String {
        self.inner.tokenizer().chat_prompt_with_system(system, message)
    }

    /// Perplexity of a text for every policy x capacity (the CLI's `msrnn eval ppl`, the same
    /// library): `text` a str (its first `tokens` tokens, BOS included when the model uses one) or a
    /// list of ids; the grid runs as one batch (`batch` caps the sequences at once). Returns one dict
    /// per cell with the CLI JSON's fields: id, ppl, nll_sum, scored, max_live, policy, spec,
    /// capacity (None for `full`), and `segments` when `segment` (tokens per segment) is given.
    /// `ratios` (shares of the context removed, C = ceil((1 - R) x tokens)) replace `capacities`;
    /// `kv` is how every state stores keys and values (f32, f16 or q8_0).
    #[pyo3(signature = (text, policies = None, capacities = None, tokens = 2048, mode = "decode", positions = "absolute", chunk = 16, segment = None, batch = None, ratios = None, kv = "f32"))]
    #[allow(clippy::too_many_arguments)]
    fn perplexity<'py>(
        &self,
        py: Python<'py>,
        text: &Bound<'py, PyAny>,
        policies: Option<&Bound<'py, PyAny>>,
        capacities: Option<Vec<usize>>,
        tokens: usize,
        mode: &str,
        positions: &str,
        chunk: usize,
        segment: Option<usize>,
        batch: Option<usize>,
        ratios: Option<Vec<f64>>,
        kv: &str,
    ) -> PyResult<Bound<'py, PyList>> {
        let r = registry::current()?;
        let grid = eval::grid(&r, policies, DEFAULT_POLICIES, capacities, ratios, (mode, chunk), positions, kv, batch)?;
        let cfg = PplConfig { grid, tokens, segment };
        let m = &*self.inner;
        let mut ids = ids_of(m, text, Some(tokens))?;
        if ids.len() < tokens {
            return Err(PyValueError::new_err(format!(
                "the text has {} tokens, fewer than tokens={tokens}; use a longer text or a smaller tokens",
                ids.len()
            )));
        }
        ids.truncate(tokens);
        eval::perplexity(py, m, &r, ids, cfg)
    }

    /// Passkey retrieval for every policy x capacity x length x depth (the CLI's `msrnn eval
    /// passkey`, the same library and defaults): a 5-digit key hidden at each depth of a haystack
    /// (`filler` sentences, or lines of the plays in `plays` for `haystack="plays"`), the prompt fed
    /// in chunks of `chunk` (or one token per step with `mode="decode"`), the answer decoded
    /// greedily. Returns one dict per cell (id, length, depth, trials, correct, accuracy, answers,
    /// policy, spec, capacity), as the CLI's JSON. `ratios` replace `capacities` (C per length).
    #[pyo3(signature = (policies = None, capacities = None, lengths = None, depths = None, trials = 5, seed = 0, haystack = "filler", plays = None, mode = "chunked", chunk = 64, answer_tokens = 8, positions = "absolute", batch = None, ratios = None, kv = "f32"))]
    #[allow(clippy::too_many_arguments)]
    fn passkey<'py>(
        &self,
        py: Python<'py>,
        policies: Option<&Bound<'py, PyAny>>,
        capacities: Option<Vec<usize>>,
        lengths: Option<Vec<usize>>,
        depths: Option<Vec<f64>>,
        trials: usize,
        seed: u64,
        haystack: &str,
        plays: Option<PathBuf>,
        mode: &str,
        chunk: usize,
        answer_tokens: usize,
        positions: &str,
        batch: Option<usize>,
        ratios: Option<Vec<f64>>,
        kv: &str,
    ) -> PyResult<Bound<'py, PyList>> {
        let r = registry::current()?;
        let d = PasskeyConfig::default();
        let cfg = PasskeyConfig {
            grid: eval::grid(&r, policies, DEFAULT_POLICIES, capacities, ratios, (mode, chunk), positions, kv, batch)?,
            prompts: Prompts {
                lengths: lengths.unwrap_or(d.prompts.lengths),
                depths: depths.unwrap_or(d.prompts.depths),
                trials,
                seed,
            },
            haystack: d.haystack,
            answer_tokens,
        };
        eval::passkey(py, &self.inner, &r, cfg, haystack, plays)
    }

    /// The long-context task suite (the CLI's `msrnn eval ruler`, the same library and defaults):
    /// `tasks` names from `msrnn.ruler_tasks()` (None: all), at every length, depth (needle tasks),
    /// policy and capacity (or ratio); `text` the files or directories of the real-text haystacks
    /// (None: data/prose found upward from the current directory, as the CLI does); `chat` puts
    /// each prompt through the model's chat template. Returns one dict per cell (id, task, length,
    /// depth, trials, score, answers, policy, spec, capacity), as the CLI's JSON.
    #[pyo3(signature = (tasks = None, policies = None, capacities = None, lengths = None, depths = None, trials = 2, seed = 0, text = None, chat = true, mode = "chunked", chunk = 64, positions = "absolute", batch = None, ratios = None, kv = "f32"))]
    #[allow(clippy::too_many_arguments)]
    fn ruler<'py>(
        &self,
        py: Python<'py>,
        tasks: Option<Vec<String>>,
        policies: Option<&Bound<'py, PyAny>>,
        capacities: Option<Vec<usize>>,
        lengths: Option<Vec<usize>>,
        depths: Option<Vec<f64>>,
        trials: usize,
        seed: u64,
        text: Option<Vec<PathBuf>>,
        chat: bool,
        mode: &str,
        chunk: usize,
        positions: &str,
        batch: Option<usize>,
        ratios: Option<Vec<f64>>,
        kv: &str,
    ) -> PyResult<Bound<'py, PyList>> {
        let r = registry::current()?;
        let d = RulerConfig::default();
        let cfg = RulerConfig {
            grid: eval::grid(&r, policies, RULER_POLICIES, capacities, ratios, (mode, chunk), positions, kv, batch)?,
            tasks: tasks.unwrap_or_else(|| TASKS.iter().map(|t| t.name.to_string()).collect()),
            prompts: Prompts {
                lengths: lengths.unwrap_or(d.prompts.lengths),
                depths: depths.unwrap_or(d.prompts.depths),
                trials,
                seed,
            },
            text: text.unwrap_or_default(),
            chat,
        };
        eval::ruler(py, &self.inner, &r, cfg)
    }

    /// A fresh state: `policy` a spec (`"tova"`, `"window+i:sinks=4"`, a plugin's or a Python
    /// policy's name), `capacity` C (None: 512, or unbounded for `full`), `positions`
    /// absolute|cache, `chunk` the most tokens one step feeds (longer feeds are split), `kv` how
    /// keys and values are stored: f32 (exact), f16 (half the bytes) or q8_0 (about a quarter).
    #[pyo3(signature = (policy = "tova", capacity = None, positions = "absolute", chunk = 64, kv = "f32"))]
    fn new_state(
        &self,
        policy: &str,
        capacity: Option<usize>,
        positions: &str,
        chunk: usize,
        kv: &str,
    ) -> PyResult<State> {
        let r = registry::current()?;
        let spec = registry::parse_spec(&r, policy)?;
        let (positions, kv) = (parse_positions(positions)?, parse_kv(kv)?);
        let state = build_state(&self.inner, &r, &spec, capacity, positions, chunk, kv)?;
        Ok(State::new(self.inner.clone(), state, spec, chunk, None))
    }

    /// A state saved by `State.save` (or the CLI's `--save-state`), with the policy, capacity,
    /// positions, KV format and conversation it was saved with; refused if it comes from another model or
    /// weight format.
    #[pyo3(signature = (path, chunk = 64))]
    fn load_state(&self, py: Python<'_>, path: PathBuf, chunk: usize) -> PyResult<State> {
        errors::require_file(&path, "state file")?;
        let m = &*self.inner;
        let bytes = std::fs::read(&path)
            .map_err(|e| PyValueError::new_err(format!("state file {}: cannot read it: {e}", path.display())))?;
        let named = |e: PyErr| errors::reword(e, |m| m.replace("the saved state", &path.display().to_string()));
        let (h, conv) = msrnn_engine::session::read_bytes(&bytes).map_err(|e| named(errors::engine(e)))?;
        let r = registry::current()?;
        r.check_params(&h.policy).map_err(errors::core)?;
        let mut state = r
            .build_state(
                m.model(),
                &StateRecipe::new(h.policy.clone(), h.capacity).positions(h.positions).max_chunk(chunk.max(1)).kv(h.kv),
            )
            .map_err(errors::core)?;
        py.detach(|| state.load_bytes(&bytes, &m.id, &h.policy)).map_err(|e| named(errors::core(e)))?;
        Ok(State::new(self.inner.clone(), state, h.policy, chunk.max(1), conv))
    }

    /// Generates an answer to `prompt` (wrapped in the chat template unless `raw`), greedy unless a
    /// `temperature` > 0 is given (then nucleus sampling with `top_p` and `seed`); `stop` strings
    /// end it early. Returns the text, or with `stream=True` an iterator of text pieces as they
    /// come. With `state=` the conversation goes on in that state (its policy and capacity; `prompt`
    /// None: the model goes on where it stopped), as the CLI's `generate --resume` does. `kv`
    /// (None: f32) is how a fresh state stores keys and values.
    #[pyo3(signature = (prompt = None, policy = None, capacity = None, max_tokens = 256, temperature = None, top_p = None, seed = None, stream = false, raw = false, positions = None, prefill_chunk = 64, stop = None, state = None, kv = None))]
    #[allow(clippy::too_many_arguments)]
    fn generate(
        &self,
        py: Python<'_>,
        prompt: Option<String>,
        policy: Option<String>,
        capacity: Option<usize>,
        max_tokens: usize,
        temperature: Option<f64>,
        top_p: Option<f64>,
        seed: Option<u64>,
        stream: bool,
        raw: bool,
        positions: Option<String>,
        prefill_chunk: usize,
        stop: Option<Vec<String>>,
        state: Option<Py<State>>,
        kv: Option<String>,
    ) -> PyResult<Py<PyAny>> {
        let turn = match prompt {
            Some(p) => TurnText::Text(p),
            None => TurnText::Continue,
        };
        let req = Request {
            turn,
            raw,
            policy,
            capacity,
            positions,
            kv,
            prefill_chunk,
            max_tokens,
            temperature,
            top_p,
            seed,
            stop: stop.unwrap_or_default(),
        };
        generation::start(py, self.inner.clone(), req, state, stream)
    }

    /// Like `generate`, for OpenAI-style `messages` (a list of {"role": "system"|"user"|"assistant",
    /// "content": str}) put through the model's chat template.
    #[pyo3(signature = (messages, policy = None, capacity = None, max_tokens = 256, temperature = None, top_p = None, seed = None, stream = false, positions = None, prefill_chunk = 64, stop = None, state = None, kv = None))]
    #[allow(clippy::too_many_arguments)]
    fn chat(
        &self,
        py: Python<'_>,
        messages: &Bound<'_, PyList>,
        policy: Option<String>,
        capacity: Option<usize>,
        max_tokens: usize,
        temperature: Option<f64>,
        top_p: Option<f64>,
        seed: Option<u64>,
        stream: bool,
        positions: Option<String>,
        prefill_chunk: usize,
        stop: Option<Vec<String>>,
        state: Option<Py<State>>,
        kv: Option<String>,
    ) -> PyResult<Py<PyAny>> {
        let mut out = Vec::new();
        for (i, m) in messages.iter().enumerate() {
            let d = m.cast::<PyDict>().map_err(|_| PyTypeError::new_err(format!("message {i} must be a dict")))?;
            let get = |k: &str| -> PyResult<String> {
                d.get_item(k)?
                    .ok_or_else(|| PyValueError::new_err(format!("message {i} has no `{k}`")))?
                    .extract()
                    .map_err(|_| PyTypeError::new_err(format!("message {i}: `{k}` must be a str")))
            };
            let role = get("role")?.parse().map_err(errors::engine)?;
            out.push(Message::new(role, get("content")?));
        }
        let req = Request {
            turn: TurnText::Messages(out),
            raw: false,
            policy,
            capacity,
            positions,
            kv,
            prefill_chunk,
            max_tokens,
            temperature,
            top_p,
            seed,
            stop: stop.unwrap_or_default(),
        };
        generation::start(py, self.inner.clone(), req, state, stream)
    }

    fn __repr__(&self) -> String {
        let i = self.inner.info();
        format!("Model({}, {}, {})", self.inner.path.display(), i.family, self.inner.lm.weight_kinds())
    }
}

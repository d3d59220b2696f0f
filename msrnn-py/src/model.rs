//! `msrnn.Model`: a loaded model, its tokenizer, perplexity grids and generation.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use msrnn_core::{
    generate, new_state_positioned, perplexity_batch_with, Capacity, EvalMode, GenerateOptions, MsrnnState,
    PolicyRegistry, PolicySpec, Positions, Sampling,
};
use msrnn_modelkit::{LoadOptions, Model as Lm, TokenStream, WeightFormat};
use pyo3::exceptions::{PyFileNotFoundError, PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList, PyString};
use serde_json::json;

use crate::errors;
use crate::registry;
use crate::state::State;
use crate::values;

/// The reference model `scripts/fetch-model.sh` fetches; preferred when models/ holds several.
const DEFAULT_MODEL: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";
/// The CLI's defaults.
const DEFAULT_POLICIES: &str = "full,window,window+i,h2o,tova";
const DEFAULT_CAPACITIES: [usize; 4] = [64, 128, 256, 512];
const DEFAULT_CAPACITY: usize = 512;
/// Decode steps between two checks for Ctrl-C in a grid (each check takes the GIL once).
const TOKENS_PER_CHECK: usize = 32;

/// What a Python `Model` holds; shared with the states and streams made from it.
pub struct Shared {
    pub lm: Box<dyn Lm>,
    pub path: PathBuf,
    /// Identifies the weights for state files, as the CLI writes it.
    pub id: String,
    pub weights: WeightFormat,
}

impl Shared {
    pub fn vocab(&self) -> usize {
        self.lm.info().vocab_size
    }

    /// A fresh state; `capacity` `None` is the CLI's default (unbounded for `full`, else 512 at most
    /// the model's context).
    pub fn state(
        &self,
        r: &PolicyRegistry,
        spec: &PolicySpec,
        capacity: Option<usize>,
        positions: Positions,
        chunk: usize,
    ) -> PyResult<MsrnnState> {
        let full = registry::is_full(r, spec);
        let capacity = match capacity {
            Some(c) if full => Capacity::Bounded(c), // the policy refuses it, naming why
            Some(c) => values::bounded(c)?,
            None if full => Capacity::Unbounded,
            None => Capacity::Bounded(match self.lm.info().max_context {
                0 => DEFAULT_CAPACITY,
                ctx => DEFAULT_CAPACITY.min(ctx),
            }),
        };
        if chunk == 0 {
            return Err(PyValueError::new_err("chunk must be at least 1"));
        }
        new_state_positioned(self.lm.as_ref(), r, spec, capacity, chunk, positions)
            .map_err(|e| errors::core(e).also_named(spec, capacity))
    }
}

/// Adds "policy `x` at capacity C" to a state-building error, as the CLI does.
trait Named {
    fn also_named(self, spec: &PolicySpec, c: Capacity) -> Self;
}
impl Named for PyErr {
    fn also_named(self, spec: &PolicySpec, c: Capacity) -> Self {
        Python::attach(|py| {
            let msg = format!("policy `{spec}` at capacity {c}: {}", self.value(py));
            let ty = self.get_type(py);
            match ty.call1((msg,)) {
                Ok(e) => PyErr::from_value(e),
                Err(_) => self,
            }
        })
    }
}

fn parse_positions(s: &str) -> PyResult<Positions> {
    s.parse::<Positions>().map_err(errors::core)
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
    for dir in cwd.ancestors() {
        let models = dir.join("models");
        let Ok(list) = std::fs::read_dir(&models) else { continue };
        let mut found: Vec<PathBuf> = list
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                (p.is_file() && p.extension().is_some_and(|e| e.eq_ignore_ascii_case("gguf")))
                    || (p.is_dir() && p.join("config.json").is_file())
            })
            .collect();
        found.sort();
        if let Some(p) = found.iter().find(|p| p.file_name().is_some_and(|n| n == DEFAULT_MODEL)).or(found.first()) {
            return Ok(p.clone());
        }
    }
    Err(PyFileNotFoundError::new_err(format!(
        "no model found (no models/ directory with a .gguf file or model directory in {} or a parent); fetch the \
         reference model with ./scripts/fetch-model.sh, or pass path=",
        cwd.display()
    )))
}

/// `name [size bytes, head fnv64 digest, weights format]`, as the CLI records it in state files.
fn model_id(path: &Path, weights: WeightFormat) -> PyResult<String> {
    use std::io::Read;
    const HEAD: u64 = 4 << 20;
    let fnv = |bytes: &[u8], mut h: u64| {
        for &b in bytes {
            h ^= b as u64;
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
        h
    };
    let head = |p: &Path, h: u64| -> PyResult<u64> {
        let mut buf = Vec::new();
        std::fs::File::open(p)
            .and_then(|f| f.take(HEAD).read_to_end(&mut buf))
            .map_err(|e| PyValueError::new_err(format!("{}: cannot read it: {e}", p.display())))?;
        Ok(fnv(&buf, h))
    };
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    let name = path.file_name().map_or_else(|| path.display().to_string(), |n| n.to_string_lossy().into_owned());
    let (size, digest) = if path.is_dir() {
        let mut files: Vec<PathBuf> = std::fs::read_dir(path)
            .map_err(|e| PyValueError::new_err(format!("cannot list {}: {e}", path.display())))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|e| e == "safetensors" || e == "json"))
            .collect();
        files.sort();
        let (mut size, mut h) = (0, OFFSET);
        for f in &files {
            size += std::fs::metadata(f).map(|m| m.len()).unwrap_or(0);
            h = head(f, h)?;
        }
        (size, h)
    } else {
        (std::fs::metadata(path).map(|m| m.len()).unwrap_or(0), head(path, OFFSET)?)
    };
    Ok(format!("{name} [{size} bytes, head fnv64 {digest:016x}, weights {weights}]"))
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
        let tok = m.lm.tokenizer();
        return match n {
            Some(n) => Ok(tok.encode_prefix(text.as_bytes(), n, tok.wants_bos()).map_err(errors::modelkit)?.tokens),
            None => tok.encode(&text, tok.wants_bos()).map_err(errors::modelkit),
        };
    }
    values::token_ids(obj, m.vocab(), "text")
}

/// The parts of a grid cell: a policy at a capacity (`None`: unbounded).
struct Cell {
    spec: PolicySpec,
    capacity: Option<usize>,
}

impl Cell {
    fn label(&self) -> String {
        match self.capacity {
            None => self.spec.to_string(),
            Some(c) => format!("{} C={c}", self.spec),
        }
    }
}

fn string_list(obj: Option<&Bound<'_, PyAny>>, default: &str, what: &str) -> PyResult<Vec<String>> {
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
        let shared = py.detach(|| -> PyResult<Shared> {
            let lm = msrnn_modelkit::load_model(&path, &LoadOptions { weights, device: candle_core::Device::Cpu })
                .map_err(errors::modelkit)?;
            let id = model_id(&path, weights)?;
            Ok(Shared { lm, path, id, weights })
        })?;
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
        let i = self.inner.lm.info();
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
        self.inner.lm.tokenizer().encode(text, bos).map_err(errors::modelkit)
    }

    /// The text of token ids.
    fn detokenize(&self, ids: &Bound<'_, PyAny>) -> PyResult<String> {
        let ids = values::token_ids(ids, self.inner.vocab(), "ids")?;
        self.inner.lm.tokenizer().decode(&ids).map_err(errors::modelkit)
    }

    /// The user message wrapped in the model's chat template (with an optional system turn).
    #[pyo3(signature = (message, system = None))]
    fn chat_prompt(&self, message: &str, system: Option<&str>) -> String {
        self.inner.lm.tokenizer().chat_prompt_with_system(system, message)
    }

    /// Perplexity of a text for every policy x capacity (the CLI's `msrnn eval ppl`): `text` a str
    /// (its first `tokens` tokens, BOS included when the model uses one) or a list of ids; the whole
    /// grid runs as one batch. Returns one dict per cell with the CLI JSON's fields: id, ppl,
    /// nll_sum, scored, max_live, policy, spec, capacity (None for `full`).
    #[pyo3(signature = (text, policies = None, capacities = None, tokens = 2048, mode = "decode", positions = "absolute", chunk = 16))]
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
    ) -> PyResult<Bound<'py, PyList>> {
        let r = registry::current()?;
        let specs = registry::parse_spec_list(&r, string_list(policies, DEFAULT_POLICIES, "policies")?)?;
        let mut caps = capacities.unwrap_or_else(|| DEFAULT_CAPACITIES.to_vec());
        if caps.is_empty() {
            return Err(PyValueError::new_err("capacities is empty: give at least one capacity, e.g. [64, 128]"));
        }
        caps.sort_unstable();
        caps.dedup();
        for &c in &caps {
            values::bounded(c)?;
        }
        if tokens < 2 {
            return Err(PyValueError::new_err(format!("tokens={tokens}: perplexity needs at least 2 tokens")));
        }
        let (mode, step) = match mode {
            "decode" => (EvalMode::Decode, 1),
            "chunked" if chunk == 0 => return Err(PyValueError::new_err("chunk must be at least 1")),
            "chunked" => (EvalMode::Chunked(chunk), chunk),
            other => return Err(PyValueError::new_err(format!("mode `{other}`: expected decode or chunked"))),
        };
        let positions = parse_positions(positions)?;
        let m = &*self.inner;
        let mut ids = ids_of(m, text, Some(tokens))?;
        if ids.len() < tokens {
            return Err(PyValueError::new_err(format!(
                "the text has {} tokens, fewer than tokens={tokens}; use a longer text or a smaller tokens",
                ids.len()
            )));
        }
        ids.truncate(tokens);
        let mut cells = Vec::new();
        for s in &specs {
            if registry::is_full(&r, s) {
                cells.push(Cell { spec: s.clone(), capacity: None });
            } else {
                cells.extend(caps.iter().map(|&c| Cell { spec: s.clone(), capacity: Some(c) }));
            }
        }
        // Every state is built before anything runs: a policy refusing a capacity fails at once.
        let mut states =
            cells.iter().map(|c| m.state(&r, &c.spec, c.capacity, positions, step)).collect::<PyResult<Vec<_>>>()?;
        let sums = py.detach(|| -> PyResult<Vec<(f64, usize, usize)>> {
            let mut acc = vec![(0f64, 0usize, 0usize); states.len()];
            let mut refs: Vec<&mut MsrnnState> = states.iter_mut().collect();
            // The text goes through in pieces (a multiple of the chunk, overlapping by one token: the
            // last target of one is the first input of the next), each scored token's NLL added in
            // order, so the sums are the one-call sums; Ctrl-C is checked between pieces.
            let piece = TOKENS_PER_CHECK.div_ceil(step) * step;
            let mut start = 0;
            while start + 1 < ids.len() {
                let end = (start + piece).min(ids.len() - 1);
                let out = perplexity_batch_with(
                    m.lm.as_ref(),
                    &mut refs,
                    &ids[start..=end],
                    mode,
                    &mut |_| {},
                    &mut |s, _, nll| {
                        acc[s].0 += nll;
                        acc[s].1 += 1;
                    },
                )
                .map_err(errors::core)?;
                for (a, p) in acc.iter_mut().zip(&out) {
                    a.2 = a.2.max(p.max_live);
                }
                start = end;
                errors::check_signals()?;
            }
            Ok(acc)
        })?;
        let out = PyList::empty(py);
        for (c, (nll_sum, scored, max_live)) in cells.iter().zip(sums) {
            let v = json!({
                "id": c.label(),
                "ppl": (nll_sum / scored as f64).exp(),
                "nll_sum": nll_sum,
                "scored": scored,
                "max_live": max_live,
                "policy": c.spec.to_string(),
                "spec": c.spec,
                "capacity": c.capacity,
            });
            out.append(values::json_to_py(py, &v)?)?;
        }
        Ok(out)
    }

    /// A fresh state: `policy` a spec (`"tova"`, `"window+i:sinks=4"`, a plugin's or a Python
    /// policy's name), `capacity` C (None: 512, or unbounded for `full`), `positions`
    /// absolute|cache, `chunk` the most tokens one step feeds (longer feeds are split).
    #[pyo3(signature = (policy = "tova", capacity = None, positions = "absolute", chunk = 64))]
    fn new_state(&self, policy: &str, capacity: Option<usize>, positions: &str, chunk: usize) -> PyResult<State> {
        let r = registry::current()?;
        let spec = registry::parse_spec(&r, policy)?;
        let state = self.inner.state(&r, &spec, capacity, parse_positions(positions)?, chunk)?;
        Ok(State::new(self.inner.clone(), state, spec, chunk))
    }

    /// A state saved by `State.save` (or the CLI's `--save-state`), with the policy, capacity and
    /// positions it was saved with; refused if it comes from another model or weight format.
    #[pyo3(signature = (path, chunk = 64))]
    fn load_state(&self, py: Python<'_>, path: PathBuf, chunk: usize) -> PyResult<State> {
        errors::require_file(&path, "state file")?;
        let h = MsrnnState::read_header(&path).map_err(errors::core)?;
        let r = registry::current()?;
        r.check_params(&h.policy).map_err(errors::core)?;
        let m = &*self.inner;
        let mut state = m.state(&r, &h.policy, h.capacity.get(), h.positions, chunk)?;
        py.detach(|| state.load(&path, &m.id, &h.policy)).map_err(errors::core)?;
        Ok(State::new(self.inner.clone(), state, h.policy, chunk))
    }

    /// Generates an answer to `prompt` (wrapped in the chat template unless `raw`), greedy unless a
    /// `temperature` > 0 is given (then nucleus sampling with `top_p` and `seed`). Returns the text,
    /// or with `stream=True` an iterator of text pieces as they come.
    #[pyo3(signature = (prompt, policy = "tova", capacity = None, max_tokens = 256, temperature = None, top_p = None, seed = None, stream = false, raw = false, positions = "absolute", prefill_chunk = 64))]
    #[allow(clippy::too_many_arguments)]
    fn generate(
        &self,
        py: Python<'_>,
        prompt: &str,
        policy: &str,
        capacity: Option<usize>,
        max_tokens: usize,
        temperature: Option<f64>,
        top_p: Option<f64>,
        seed: Option<u64>,
        stream: bool,
        raw: bool,
        positions: &str,
        prefill_chunk: usize,
    ) -> PyResult<Py<PyAny>> {
        let tok = self.inner.lm.tokenizer();
        let text = if raw || !tok.has_chat_template() { prompt.to_string() } else { tok.chat_prompt(prompt) };
        self.run(py, &text, policy, capacity, max_tokens, temperature, top_p, seed, stream, positions, prefill_chunk)
    }

    /// Like `generate`, for a conversation: `messages` a list of {"role": "system"|"user", "content":
    /// str} dicts whose last one is the user's (the chat template supplies the rest).
    #[pyo3(signature = (messages, policy = "tova", capacity = None, max_tokens = 256, temperature = None, top_p = None, seed = None, stream = false, positions = "absolute", prefill_chunk = 64))]
    #[allow(clippy::too_many_arguments)]
    fn chat(
        &self,
        py: Python<'_>,
        messages: &Bound<'_, PyList>,
        policy: &str,
        capacity: Option<usize>,
        max_tokens: usize,
        temperature: Option<f64>,
        top_p: Option<f64>,
        seed: Option<u64>,
        stream: bool,
        positions: &str,
        prefill_chunk: usize,
    ) -> PyResult<Py<PyAny>> {
        let mut system = None;
        let mut user = None;
        for (i, m) in messages.iter().enumerate() {
            let d = m.cast::<PyDict>().map_err(|_| PyTypeError::new_err("each message must be a dict"))?;
            let get = |k: &str| -> PyResult<String> {
                d.get_item(k)?
                    .ok_or_else(|| PyValueError::new_err(format!("message {i} has no `{k}`")))?
                    .extract()
                    .map_err(|_| PyTypeError::new_err(format!("message {i}: `{k}` must be a str")))
            };
            match get("role")?.as_str() {
                "system" if i == 0 => system = Some(get("content")?),
                "user" if user.is_none() => user = Some(get("content")?),
                role => {
                    return Err(PyValueError::new_err(format!(
                        "message {i}: role `{role}`; this chat takes an optional system message, then one user message"
                    )))
                }
            }
        }
        let user = user.ok_or_else(|| PyValueError::new_err("messages has no user message"))?;
        let text = self.inner.lm.tokenizer().chat_prompt_with_system(system.as_deref(), &user);
        self.run(py, &text, policy, capacity, max_tokens, temperature, top_p, seed, stream, positions, prefill_chunk)
    }

    fn __repr__(&self) -> String {
        let i = self.inner.lm.info();
        format!("Model({}, {}, {})", self.inner.path.display(), i.family, self.inner.lm.weight_kinds())
    }
}

/// What a generation worker sends: a text piece, or the end.
enum Msg {
    Piece(String),
    Done(PyResult<()>),
}

impl Model {
    #[allow(clippy::too_many_arguments)]
    fn run(
        &self,
        py: Python<'_>,
        text: &str,
        policy: &str,
        capacity: Option<usize>,
        max_tokens: usize,
        temperature: Option<f64>,
        top_p: Option<f64>,
        seed: Option<u64>,
        stream: bool,
        positions: &str,
        prefill_chunk: usize,
    ) -> PyResult<Py<PyAny>> {
        let m = self.inner.clone();
        let tok = m.lm.tokenizer();
        let sampling = match temperature {
            None | Some(0.0) => Sampling::Greedy,
            Some(t) => Sampling::TopP { temperature: t, top_p: top_p.unwrap_or(0.9), seed: seed.unwrap_or(0) },
        };
        msrnn_core::Sampler::new(sampling).map_err(errors::core)?;
        let r = registry::current()?;
        let spec = registry::parse_spec(&r, policy)?;
        let chunk = prefill_chunk.max(1);
        let mut state = m.state(&r, &spec, capacity, parse_positions(positions)?, chunk)?;
        let prompt = tok.encode(text, tok.wants_bos()).map_err(errors::modelkit)?;
        if prompt.is_empty() {
            return Err(PyValueError::new_err("the prompt is empty"));
        }
        let opts =
            GenerateOptions { max_tokens, sampling, stop_tokens: tok.eos_tokens().to_vec(), prefill_chunk: chunk };
        if !stream {
            let out = py.detach(|| -> PyResult<String> {
                let mut s = TokenStream::new(tok);
                let mut text = String::new();
                let mut interrupted = None;
                generate(m.lm.as_ref(), &mut state, &prompt, &opts, &mut |id| {
                    if let Some(p) = s.push(id) {
                        text.push_str(&p);
                    }
                    match errors::check_signals() {
                        Ok(()) => true,
                        Err(e) => {
                            interrupted = Some(e);
                            false
                        }
                    }
                })
                .map_err(errors::core)?;
                if let Some(e) = interrupted {
                    return Err(e);
                }
                if let Some(p) = s.finish() {
                    text.push_str(&p);
                }
                Ok(text)
            })?;
            return Ok(PyString::new(py, &out).into_any().unbind());
        }
        let (tx, rx) = sync_channel::<Msg>(64);
        let cancel = Arc::new(AtomicBool::new(false));
        let stop = cancel.clone();
        std::thread::spawn(move || {
            let tok = m.lm.tokenizer();
            let mut s = TokenStream::new(tok);
            let r = generate(m.lm.as_ref(), &mut state, &prompt, &opts, &mut |id| {
                if let Some(p) = s.push(id) {
                    if tx.send(Msg::Piece(p)).is_err() {
                        return false;
                    }
                }
                !stop.load(Ordering::Relaxed)
            });
            if let (Ok(_), Some(p)) = (&r, s.finish()) {
                let _ = tx.send(Msg::Piece(p));
            }
            let _ = tx.send(Msg::Done(r.map(|_| ()).map_err(errors::core)));
        });
        Ok(Py::new(py, TextStream { rx: Mutex::new(Some(rx)), cancel })?.into_any())
    }
}

/// The text pieces of a generation as they come (`generate(..., stream=True)`). Dropping it (or
/// Ctrl-C while waiting) stops the generation.
#[pyclass(module = "msrnn._msrnn", frozen)]
pub struct TextStream {
    rx: Mutex<Option<Receiver<Msg>>>,
    cancel: Arc<AtomicBool>,
}

#[pymethods]
impl TextStream {
    fn __iter__(slf: PyRef<'_, Self>) -> PyRef<'_, Self> {
        slf
    }

    fn __next__(&self, py: Python<'_>) -> PyResult<Option<String>> {
        loop {
            // The lock is taken with the GIL released: the worker may be waiting for it to be sent.
            let got = py.detach(|| {
                let guard = self.rx.lock().unwrap_or_else(|p| p.into_inner());
                guard.as_ref().map(|rx| rx.recv_timeout(Duration::from_millis(50)))
            });
            let end = |r: PyResult<()>| {
                *self.rx.lock().unwrap_or_else(|p| p.into_inner()) = None;
                r.map(|_| None)
            };
            match got {
                None => return Ok(None),
                Some(Ok(Msg::Piece(p))) => return Ok(Some(p)),
                Some(Ok(Msg::Done(r))) => return end(r),
                Some(Err(RecvTimeoutError::Timeout)) => {
                    if let Err(e) = py.check_signals() {
                        self.cancel.store(true, Ordering::Relaxed);
                        return end(Err(e));
                    }
                }
                Some(Err(RecvTimeoutError::Disconnected)) => return end(Ok(())),
            }
        }
    }

    /// Stops the generation.
    fn close(&self) {
        self.cancel.store(true, Ordering::Relaxed);
        *self.rx.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }
}

impl Drop for TextStream {
    fn drop(&mut self) {
        self.cancel.store(true, Ordering::Relaxed);
    }
}

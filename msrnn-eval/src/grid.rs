//! What every evaluation grid shares: the policy x capacity axis (plus the full cache, once),
//! stable cell ids, the disjoint parts a shard picks, batches, and the model as settings.

use std::sync::Arc;

use msrnn_core::util::{fnv64, FNV_OFFSET};
use msrnn_core::{
    Capacity, KvFormat, MsrnnState, PolicyRegistry, PolicySpec, Positions, Sampling, Source, StateRecipe,
};
use msrnn_engine::{Engine, EngineOptions, GenConfig};
use msrnn_modelkit::Model;
use serde::{Deserialize, Serialize};

use crate::doc::{ModelSettings, PolicySources, Shard};
use crate::error::{Context, Error, Result};
use crate::{Event, Feed, Observer};

/// The capacities of a grid when none are given.
pub const DEFAULT_CAPACITIES: [usize; 4] = [64, 128, 256, 512];

/// The model an evaluation runs, with what its results record about it.
#[derive(Clone)]
pub struct EvalModel {
    /// Shared: every task runs its sequences through an [`Engine`] over it.
    pub lm: Arc<dyn Model>,
    /// Identifies the weights (file name, size, digest, weight format), as state files do.
    pub id: String,
    /// What the user knows the model by (the file name without `.gguf`): for titles.
    pub name: String,
}

impl EvalModel {
    /// Everything about the model a result needs to be reproduced (no path: paths differ between
    /// machines).
    pub fn settings(&self) -> ModelSettings {
        let i = self.lm.info();
        ModelSettings {
            id: self.id.clone(),
            name: i.name.clone(),
            family: i.family.clone(),
            weights: self.lm.weight_format().to_string(),
            matmul: self.lm.weight_kinds().to_string(),
            layers: i.num_layers,
            heads: i.num_heads,
            kv_heads: i.num_kv_heads,
            head_dim: i.head_dim,
            vocab: i.vocab_size,
            max_context: i.max_context,
            kv_bytes_per_token: i.kv_bytes_per_token(),
        }
    }
}

/// What every grid task's config holds: which policies at which budgets, how prompts (or the
/// text) enter the states, how states are kept, which part of the grid this run covers, and how
/// many sequences run at once.
#[derive(Debug, Clone)]
pub struct GridConfig {
    pub policies: Vec<PolicySpec>,
    pub capacities: Vec<usize>,
    /// Budgets as ratios of the context removed, resolved per context length, instead of
    /// `capacities` (which must then be empty).
    pub ratios: Vec<f64>,
    pub feed: Feed,
    pub positions: Positions,
    /// How every state stores keys and values.
    pub kv: KvFormat,
    pub shard: Option<Shard>,
    /// Most sequences run at once (default: the task's).
    pub batch: Option<usize>,
}

impl GridConfig {
    /// `policies` (comma-separated specs, a task's default) at [`DEFAULT_CAPACITIES`], fed as
    /// `feed`, absolute positions, f32 states, the whole grid, the task's batch size.
    pub fn new(policies: &str, feed: Feed) -> Self {
        GridConfig {
            policies: policies.split(',').map(|s| s.parse().expect("the default specs parse")).collect(),
            capacities: DEFAULT_CAPACITIES.to_vec(),
            ratios: Vec::new(),
            feed,
            positions: Positions::default(),
            kv: KvFormat::F32,
            shard: None,
            batch: None,
        }
    }

    /// Checks what can be checked without a model (`default_batch`: the task's batch size); the
    /// policy axis.
    pub fn validate(&self, registry: &PolicyRegistry, default_batch: usize) -> Result<PolicyGrid> {
        let g = PolicyGrid::with_ratios(registry, &self.policies, &self.capacities, &self.ratios)?;
        self.feed.check()?;
        batch_or(self.batch, default_batch)?;
        Ok(g)
    }

    /// What a document's settings record of this config, with `grid` (its policy axis, ratios
    /// resolved where the task resolves them once) as [`GridConfig::validate`] gave it.
    pub fn settings(&self, grid: &PolicyGrid, registry: &PolicyRegistry) -> GridSettings {
        GridSettings {
            positions: self.positions.to_string(),
            kv: self.kv,
            mode: self.feed.name().to_string(),
            chunk: self.feed.chunk(),
            policies: grid.policy_names(),
            policy_sources: grid.sources(registry),
            capacities: grid.caps.clone(),
            ratios: grid.ratios.clone(),
        }
    }

    /// The template of every cell's state: positions, the largest chunk fed and the KV format;
    /// [`PolicyCell::state`] puts in each cell's policy and capacity (`full`, unbounded, until then).
    pub fn recipe(&self) -> StateRecipe {
        StateRecipe::new(PolicySpec::new("full"), Capacity::Unbounded)
            .positions(self.positions)
            .max_chunk(self.feed.chunk())
            .kv(self.kv)
    }
}

/// One point of the policy axis: a policy at a capacity (the full cache unbounded).
#[derive(Debug, Clone, PartialEq)]
pub struct PolicyCell {
    pub spec: PolicySpec,
    pub capacity: Capacity,
    /// A budget given as the share of the context removed (kvpress's compression ratio): the
    /// capacity is `ceil((1 - ratio) x length)`, resolved per cell by [`PolicyCell::at`].
    pub ratio: Option<f64>,
}

impl PolicyCell {
    /// `tova C=128`, or `full` for the unbounded cache: the start of every cell id.
    pub fn label(&self) -> String {
        match (self.ratio, self.capacity) {
            (Some(r), _) => format!("{} R={r}", self.spec),
            (None, Capacity::Unbounded) => self.spec.to_string(),
            (None, Capacity::Bounded(c)) => format!("{} C={c}", self.spec),
        }
    }

    /// This cell for a context of `length` tokens: a ratio resolved to its capacity.
    pub fn at(&self, length: usize) -> PolicyCell {
        match self.ratio {
            Some(r) => PolicyCell { capacity: Capacity::Bounded(ratio_capacity(r, length)), ..self.clone() },
            None => self.clone(),
        }
    }

    /// The fields every result carries (resolve a ratio with [`PolicyCell::at`] first).
    pub fn fields(&self) -> PolicyFields {
        PolicyFields {
            policy: self.spec.to_string(),
            spec: self.spec.clone(),
            capacity: self.capacity.get(),
            ratio: self.ratio,
        }
    }

    /// A fresh state for this cell: `template` (see [`GridConfig::recipe`]) with this cell's policy
    /// and capacity put in, so an option of the template reaches every cell's state unnamed here.
    /// Errors say which policy and capacity were refused.
    pub fn state(&self, lm: &dyn Model, registry: &PolicyRegistry, template: &StateRecipe) -> Result<MsrnnState> {
        let mut recipe = template.clone();
        recipe.policy = self.spec.clone();
        recipe.capacity = self.capacity;
        registry.build_state(lm, &recipe).context(|| format!("policy `{}` at capacity {}", self.spec, self.capacity))
    }
}

/// The policy fields of every result: `policy` (as written), `spec` (as JSON), `capacity` (`null`
/// for the full cache).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PolicyFields {
    pub policy: String,
    pub spec: PolicySpec,
    pub capacity: Option<usize>,
    /// The ratio the capacity was resolved from (absent when capacities were given).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ratio: Option<f64>,
}

impl PolicyFields {
    /// The row of a report this result belongs to.
    pub fn budget(&self) -> Budget {
        match (self.ratio, self.capacity) {
            (Some(r), _) => Budget::Ratio(r),
            (None, Some(c)) => Budget::Capacity(c),
            (None, None) => Budget::Full,
        }
    }
}

/// How much a cell may keep, as a report groups results: unbounded, a capacity, or a ratio.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Budget {
    Full,
    Capacity(usize),
    Ratio(f64),
}

impl Budget {
    /// The rows of a report: each bounded policy at each capacity (or ratio), then the unbounded.
    pub fn rows(
        policies: &[String],
        unbounded: impl Fn(&str) -> bool,
        caps: &[usize],
        ratios: Option<&[f64]>,
    ) -> Vec<(String, Budget)> {
        let mut rows = Vec::new();
        for p in policies.iter().filter(|p| !unbounded(p)) {
            match ratios {
                Some(rs) => rows.extend(rs.iter().map(|&r| (p.clone(), Budget::Ratio(r)))),
                None => rows.extend(caps.iter().map(|&c| (p.clone(), Budget::Capacity(c)))),
            }
        }
        rows.extend(policies.iter().filter(|p| unbounded(p)).map(|p| (p.clone(), Budget::Full)));
        rows
    }
}

impl Budget {
    /// `tova C=64`, `tova R=0.5`, `full (unbounded)`: a panel's title for `policy` at this budget.
    pub fn title(&self, policy: &str) -> String {
        match self {
            Budget::Full => format!("{policy} (unbounded)"),
            Budget::Capacity(c) => format!("{policy} C={c}"),
            Budget::Ratio(r) => format!("{policy} R={r}"),
        }
    }
}

impl std::fmt::Display for Budget {
    /// `-`, `128`, `R=0.5`: a table's column.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Budget::Full => write!(f, "-"),
            Budget::Capacity(c) => write!(f, "{c}"),
            Budget::Ratio(r) => write!(f, "R={r}"),
        }
    }
}

/// The capacity a ratio leaves of `length` tokens: `ceil((1 - ratio) x length)`, at least 1.
pub fn ratio_capacity(ratio: f64, length: usize) -> usize {
    // The epsilon keeps 1 - 0.1 = 0.9000000000000000222 from rounding 900.0000000000001 up.
    (((1.0 - ratio) * length as f64) - 1e-9).ceil().max(1.0) as usize
}

/// Ratios in [0, 1), each once, ascending.
pub fn check_ratios(ratios: &[f64]) -> Result<Vec<f64>> {
    let mut out: Vec<f64> = Vec::new();
    for &r in ratios {
        if !(0.0..1.0).contains(&r) {
            return Err(Error::setting(
                "ratios",
                format!(" {r}: a ratio is the share of the context removed, 0 <= R < 1 (0.875 keeps an eighth)"),
            ));
        }
        if out.contains(&r) {
            return Err(Error::setting("ratios", format!(": {r} is listed twice")));
        }
        out.push(r);
    }
    out.sort_by(f64::total_cmp);
    Ok(out)
}

/// The policy x capacity axis: every bounded policy at every capacity, `full` once.
#[derive(Debug, Clone)]
pub struct PolicyGrid {
    pub specs: Vec<PolicySpec>,
    pub caps: Vec<usize>,
    pub cells: Vec<PolicyCell>,
    /// The ratios, when the budget was given so (`caps` is then empty).
    pub ratios: Option<Vec<f64>>,
}

impl PolicyGrid {
    /// The grid with every ratio resolved for a context of `length` tokens (its capacities those
    /// the ratios give): for tasks whose cells share one length (ppl).
    pub fn resolved(&self, length: usize) -> PolicyGrid {
        let cells: Vec<PolicyCell> = self.cells.iter().map(|c| c.at(length)).collect();
        let mut caps = self.caps.clone();
        if let Some(rs) = &self.ratios {
            caps = rs.iter().map(|&r| ratio_capacity(r, length)).collect();
            caps.sort_unstable();
            caps.dedup();
        }
        PolicyGrid { specs: self.specs.clone(), caps, cells, ratios: self.ratios.clone() }
    }

    /// The grid of `specs` (checked against the registry) at `caps` (sorted, each once).
    pub fn new(registry: &PolicyRegistry, specs: &[PolicySpec], caps: &[usize]) -> Result<Self> {
        Self::with_ratios(registry, specs, caps, &[])
    }

    /// Like [`PolicyGrid::new`], or, with `ratios` (and no `caps`), at each ratio of the context
    /// removed, resolved per cell by [`PolicyCell::at`].
    pub fn with_ratios(
        registry: &PolicyRegistry,
        specs: &[PolicySpec],
        caps: &[usize],
        ratios: &[f64],
    ) -> Result<Self> {
        if !ratios.is_empty() {
            if !caps.is_empty() {
                return Err(Error::setting(
                    "ratios",
                    " and {capacities} are both given: a grid's budget is capacities or ratios, not both",
                ));
            }
            let ratios = check_ratios(ratios)?;
            let mut g = Self::with_ratios(registry, specs, &[1], &[])?;
            g.caps.clear();
            g.cells = Vec::new();
            for s in specs {
                if is_unbounded(registry, s) {
                    g.cells.push(PolicyCell { spec: s.clone(), capacity: Capacity::Unbounded, ratio: None });
                } else {
                    g.cells.extend(ratios.iter().map(|&r| PolicyCell {
                        spec: s.clone(),
                        capacity: Capacity::Bounded(1),
                        ratio: Some(r),
                    }));
                }
            }
            g.ratios = Some(ratios);
            return Ok(g);
        }
        if specs.is_empty() {
            return Err(Error::setting("policies", " is empty: name at least one policy"));
        }
        for (i, s) in specs.iter().enumerate() {
            registry.check_params(s).context(|| format!("policies: {s}"))?;
            if specs[..i].contains(s) {
                return Err(Error::setting("policies", format!(": `{s}` is listed twice")));
            }
        }
        let mut caps = caps.to_vec();
        if caps.is_empty() {
            return Err(Error::setting("capacities", " is empty: give at least one capacity, e.g. 64,128"));
        }
        caps.sort_unstable();
        caps.dedup();
        for &c in &caps {
            Capacity::bounded(c).map_err(|e| Error::setting("capacities", format!(": {c}: {e}")))?;
        }
        let mut cells = Vec::new();
        for s in specs {
            if is_unbounded(registry, s) {
                cells.push(PolicyCell { spec: s.clone(), capacity: Capacity::Unbounded, ratio: None });
            } else {
                cells.extend(caps.iter().map(|&c| PolicyCell {
                    spec: s.clone(),
                    capacity: Capacity::Bounded(c),
                    ratio: None,
                }));
            }
        }
        Ok(Self { specs: specs.to_vec(), caps, cells, ratios: None })
    }

    pub fn has_full(&self) -> bool {
        self.cells.iter().any(|c| c.capacity == Capacity::Unbounded)
    }

    /// Builds (and drops) one state per cell (ratios resolved at each of `lengths`), so that a
    /// policy refusing a capacity fails before anything runs.
    pub fn check(
        &self,
        lm: &dyn Model,
        registry: &PolicyRegistry,
        template: &StateRecipe,
        lengths: &[usize],
    ) -> Result<()> {
        for c in &self.cells {
            for &l in lengths {
                drop(c.at(l).state(lm, registry, template)?);
                if c.ratio.is_none() {
                    break;
                }
            }
        }
        Ok(())
    }

    /// The specs as written: part of the settings.
    pub fn policy_names(&self) -> Vec<String> {
        self.specs.iter().map(|s| s.to_string()).collect()
    }

    /// Where each policy comes from (built-in, or a plugin's file name): part of the settings, so
    /// that shards run with different plugins do not merge.
    pub fn sources(&self, registry: &PolicyRegistry) -> PolicySources {
        self.specs
            .iter()
            .map(|s| {
                let src = match registry.get(&s.name).map(|e| e.source.clone()) {
                    Ok(Source::Builtin) => "built-in".to_string(),
                    Ok(Source::Plugin(p)) => format!("plugin {}", file_name(std::path::Path::new(&p))),
                    Err(_) => "unknown".to_string(),
                };
                (s.to_string(), src)
            })
            .collect()
    }
}

/// What every task's settings record of its [`GridConfig`] (flattened into them: documents are
/// written with their keys sorted, so the fields land where they always stood): positions, KV
/// format, feed, and the policy axis: the specs as written, where each comes from, the capacities,
/// and the ratios when the budgets were given so.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GridSettings {
    pub positions: String,
    /// How the states stored keys and values (absent: f32).
    #[serde(default, skip_serializing_if = "KvFormat::is_f32")]
    pub kv: KvFormat,
    /// `decode` or `chunked`.
    pub mode: String,
    /// Tokens per step (1 in decode mode).
    pub chunk: usize,
    pub policies: Vec<String>,
    pub policy_sources: PolicySources,
    /// The capacities (for ppl, those its ratios resolved to; empty for the prompt tasks' ratios).
    pub capacities: Vec<usize>,
    /// The ratios of the context removed the capacities were resolved from (`--ratios`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ratios: Option<Vec<f64>>,
}

/// `, KV f16` for a title when the states are not f32 (nothing for the default).
pub fn kv_note(kv: KvFormat) -> String {
    if kv.is_f32() {
        String::new()
    } else {
        format!(", KV {kv}")
    }
}

/// Whether the spec names a policy that declares itself unbounded (`full`): it runs without a capacity.
pub fn is_unbounded(registry: &PolicyRegistry, spec: &PolicySpec) -> bool {
    registry.get(&spec.name).is_ok_and(|e| e.unbounded)
}

/// A sequence of a prompt task: a chosen cell (its index in the whole grid), a trial, and the index
/// of its prompt in [`Plan::prompts`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Seq {
    pub cell: usize,
    pub trial: usize,
    pub prompt: usize,
}

/// The sequences of a prompt task: `trials` per chosen cell, each with the prompt of its cell's
/// key (what the prompt depends on: length, depth, task) and trial, made once and shared by every
/// policy; long prompts first, so a batch's sequences are alike and the largest states come early.
pub struct Plan<K, P> {
    pub prompts: Vec<P>,
    pub seqs: Vec<Seq>,
    index: std::collections::HashMap<(K, usize), usize>,
}

impl<K: Copy + Eq + std::hash::Hash, P> Plan<K, P> {
    /// `key(cell)` names a cell's prompts, `make(key, trial)` makes one, `len` is its token count.
    pub fn new(
        chosen: &[usize],
        trials: usize,
        key: impl Fn(usize) -> K,
        mut make: impl FnMut(K, usize) -> Result<P>,
        len: impl Fn(&P) -> usize,
    ) -> Result<Self> {
        let mut plan = Plan { prompts: Vec::new(), seqs: Vec::new(), index: Default::default() };
        for &cell in chosen {
            let k = key(cell);
            for trial in 0..trials {
                let prompt = match plan.index.get(&(k, trial)) {
                    Some(&i) => i,
                    None => {
                        plan.prompts.push(make(k, trial)?);
                        plan.index.insert((k, trial), plan.prompts.len() - 1);
                        plan.prompts.len() - 1
                    }
                };
                plan.seqs.push(Seq { cell, trial, prompt });
            }
        }
        let prompts = &plan.prompts;
        plan.seqs.sort_by_key(|s| (std::cmp::Reverse(len(&prompts[s.prompt])), s.cell, s.trial));
        Ok(plan)
    }

    /// The prompt of `key`'s trial `trial` (one the plan made).
    pub fn prompt(&self, key: K, trial: usize) -> &P {
        &self.prompts[self.index[&(key, trial)]]
    }
}

/// One sequence of a prompt task: its prompt, the cell whose state it runs in (ratios resolved at
/// the prompt's length), and the most tokens of its answer.
#[derive(Debug, Clone)]
pub struct Job<'a> {
    pub prompt: &'a [u32],
    pub cell: PolicyCell,
    pub max_tokens: usize,
}

/// Greedy answers to `jobs` (decoded), in batches of up to `batch` in the order given, each job in
/// a fresh state of its cell built from `template`, generated by an [`Engine`]. An answer ends at its
/// job's `max_tokens`, at an end-of-text token, or once `settled(job, answer so far)` says more
/// tokens cannot change its score (the sequence is then cancelled). Reports each batch and the
/// prompt tokens fed so far; the observer can stop the run between steps.
pub fn answer(
    lm: &Arc<dyn Model>,
    registry: &PolicyRegistry,
    template: &StateRecipe,
    jobs: &[Job<'_>],
    batch: usize,
    obs: &mut dyn Observer,
    settled: &dyn Fn(usize, &str) -> bool,
) -> Result<Vec<String>> {
    let tok = lm.tokenizer();
    // No prefill budget: every sequence of a batch feeds its chunk at every step, so each forward
    // holds the same rows whatever the engine's defaults.
    let opts = EngineOptions { prefill_budget: usize::MAX };
    let mut engine = Engine::with_model(lm.clone(), Arc::new(registry.clone()), opts);
    let gen = |j: &Job<'_>| GenConfig {
        max_tokens: j.max_tokens,
        sampling: Sampling::Greedy,
        stop_tokens: tok.eos_tokens().to_vec(),
        stop_strings: Vec::new(),
        prefill_chunk: template.max_chunk,
    };
    let generating = || "generating the answers".to_string();
    let mut answers = Vec::with_capacity(jobs.len());
    let mut fed = 0u64;
    let size = batch.max(1);
    for (k, group) in jobs.chunks(size).enumerate() {
        if obs.cancelled() {
            return Err(Error::Cancelled);
        }
        let states = group.iter().map(|j| j.cell.state(lm.as_ref(), registry, template)).collect::<Result<Vec<_>>>()?;
        obs.event(Event::Batch(format!("{} sequences of {} tokens", group.len(), group[0].prompt.len())));
        let mut ids = Vec::with_capacity(group.len());
        for (state, j) in states.into_iter().zip(group) {
            ids.push(engine.add(state, j.prompt.to_vec(), gen(j)).context(generating)?);
        }
        let mut outs: Vec<Vec<u32>> = vec![Vec::new(); group.len()];
        while engine.active() > 0 {
            for event in engine.step().context(generating)? {
                match event {
                    msrnn_engine::Event::Token { id, token, .. } => {
                        let i = ids.iter().position(|&x| x == id).expect("a sequence of this batch");
                        outs[i].push(token);
                        if engine.contains(id) && settled(k * size + i, &tok.decode(&outs[i]).unwrap_or_default()) {
                            engine.cancel(id);
                        }
                    }
                    msrnn_engine::Event::Finished(_) | msrnn_engine::Event::Scored { .. } => {}
                    msrnn_engine::Event::Failed { error, .. } => {
                        return Err(Error::Core { context: generating(), cause: error.into() })
                    }
                }
            }
            if obs.cancelled() {
                return Err(Error::Cancelled);
            }
        }
        fed += group.iter().map(|j| j.prompt.len() as u64).sum::<u64>();
        obs.event(Event::Progress(fed));
        answers.extend(outs.iter().map(|o| tok.decode(o).unwrap_or_default()));
    }
    Ok(answers)
}

/// The cells (by index) a run covers: all of them, or its shard's.
pub fn selected(total: usize, shard: Option<Shard>) -> Vec<usize> {
    (0..total).filter(|&k| shard.is_none_or(|s| s.owns(k))).collect()
}

/// Groups of at most `cap` items, in order.
pub fn batches<T>(items: Vec<T>, cap: usize) -> Vec<Vec<T>> {
    let mut out: Vec<Vec<T>> = Vec::new();
    for it in items {
        match out.last_mut() {
            Some(b) if b.len() < cap.max(1) => b.push(it),
            _ => out.push(vec![it]),
        }
    }
    out
}

/// `batch`, or `default`; zero is refused.
pub fn batch_or(batch: Option<usize>, default: usize) -> Result<usize> {
    match batch {
        Some(0) => Err(Error::setting("batch", " must be at least 1")),
        Some(n) => Ok(n),
        None => Ok(default.max(1)),
    }
}

/// The digest of token ids (FNV-1a over their little-endian bytes), as hex.
pub fn tokens_digest(tokens: &[u32]) -> String {
    let bytes: Vec<u8> = tokens.iter().flat_map(|t| t.to_le_bytes()).collect();
    format!("{:016x}", fnv64(&bytes, FNV_OFFSET))
}

/// A file's name, for settings (paths differ between machines, names and contents do not).
pub fn file_name(p: &std::path::Path) -> String {
    p.file_name().map_or_else(|| p.display().to_string(), |n| n.to_string_lossy().into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_partition_any_grid() {
        for n in 1..6 {
            let mut seen = vec![0; 11];
            for i in 0..n {
                for k in selected(11, Some(Shard { index: i, count: n })) {
                    seen[k] += 1;
                }
            }
            assert!(seen.iter().all(|&s| s == 1), "{n} shards cover each cell once: {seen:?}");
        }
        assert_eq!(selected(3, None), vec![0, 1, 2]);
    }

    #[test]
    fn budgets_title_their_panels() {
        assert_eq!(Budget::Full.title("full"), "full (unbounded)");
        assert_eq!(Budget::Capacity(64).title("tova"), "tova C=64");
        assert_eq!(Budget::Ratio(0.5).title("h2o"), "h2o R=0.5");
    }

    #[test]
    fn batches_keep_order_and_size() {
        assert_eq!(batches(vec![1, 2, 3, 4, 5], 2), vec![vec![1, 2], vec![3, 4], vec![5]]);
        assert_eq!(batches(vec![1, 2], 0), vec![vec![1], vec![2]]);
        assert!(batch_or(Some(0), 3).unwrap_err().to_string().contains("batch must be at least 1"));
        assert_eq!(batch_or(None, 0).unwrap(), 1);
    }

    #[test]
    fn ratios_resolve_per_length_and_exclude_capacities() {
        assert_eq!(ratio_capacity(0.5, 1024), 512);
        assert_eq!(ratio_capacity(0.875, 1024), 128);
        assert_eq!(ratio_capacity(0.875, 2048), 256);
        assert_eq!(ratio_capacity(0.1, 1000), 900, "no float overshoot");
        assert_eq!(ratio_capacity(0.5, 1001), 501, "rounded up");
        assert_eq!(ratio_capacity(0.0, 300), 300);
        assert_eq!(ratio_capacity(0.999, 100), 1, "at least one token");
        assert_eq!(check_ratios(&[0.875, 0.5]).unwrap(), vec![0.5, 0.875]);
        for bad in [&[1.0][..], &[-0.1], &[f64::NAN], &[0.5, 0.5]] {
            assert!(check_ratios(bad).is_err(), "{bad:?}");
        }
        let r = msrnn_policies::registry();
        let specs: Vec<PolicySpec> = ["full", "tova"].iter().map(|s| s.parse().unwrap()).collect();
        let e = PolicyGrid::with_ratios(&r, &specs, &[64], &[0.5]).unwrap_err().to_string();
        assert!(e.contains("ratios and capacities are both given"), "{e}");
        let g = PolicyGrid::with_ratios(&r, &specs, &[], &[0.875, 0.5]).unwrap();
        let ids: Vec<String> = g.cells.iter().map(PolicyCell::label).collect();
        assert_eq!(ids, ["full", "tova R=0.5", "tova R=0.875"]);
        assert!(g.caps.is_empty() && g.has_full());
        let at = g.cells[2].at(2048);
        assert_eq!(at.capacity, Capacity::Bounded(256));
        let f = at.fields();
        assert_eq!((f.capacity, f.ratio, f.budget()), (Some(256), Some(0.875), Budget::Ratio(0.875)));
        assert_eq!(g.cells[0].at(2048).fields().budget(), Budget::Full);
        let fixed = g.resolved(1024);
        assert_eq!(fixed.caps, vec![128, 512]);
        assert_eq!(fixed.cells[1].capacity, Capacity::Bounded(512));
        // Without ratios nothing changes: no `ratio` key in results.
        let plain = PolicyGrid::new(&r, &specs, &[64]).unwrap();
        let v = serde_json::to_value(plain.cells[1].at(4096).fields()).unwrap();
        assert_eq!(v, serde_json::json!({"policy": "tova", "spec": {"name": "tova"}, "capacity": 64}));
    }

    #[test]
    fn the_grid_runs_full_once_and_refuses_bad_axes() {
        let r = msrnn_policies::registry();
        let specs: Vec<PolicySpec> = ["full", "tova"].iter().map(|s| s.parse().unwrap()).collect();
        let g = PolicyGrid::new(&r, &specs, &[64, 32, 64]).unwrap();
        let ids: Vec<String> = g.cells.iter().map(PolicyCell::label).collect();
        assert_eq!(ids, ["full", "tova C=32", "tova C=64"]);
        assert!(g.has_full());
        assert_eq!(g.sources(&r)["tova"], "built-in");
        assert!(PolicyGrid::new(&r, &specs, &[]).unwrap_err().to_string().starts_with("capacities is empty"));
        assert!(PolicyGrid::new(&r, &specs, &[0]).is_err());
        let twice = [specs[1].clone(), specs[1].clone()];
        assert!(PolicyGrid::new(&r, &twice, &[8]).unwrap_err().to_string().contains("listed twice"));
        let nosuch: PolicySpec = "nosuch".parse().unwrap();
        assert!(PolicyGrid::new(&r, &[nosuch], &[8]).unwrap_err().to_string().contains("nosuch"));
    }
}

//! What every evaluation grid shares: the policy x capacity axis (plus the full cache, once),
//! stable cell ids, the disjoint parts a shard picks, batches, and the model as settings.

use msrnn_core::{Capacity, KvFormat, MsrnnState, PolicyRegistry, PolicySpec, Positions, Source, StateRecipe};
use msrnn_modelkit::Model;
use serde::{Deserialize, Serialize};

use crate::doc::{ModelSettings, PolicySources, Shard};
use crate::error::{Context, Error, Result};

/// The capacities of a grid when none are given.
pub const DEFAULT_CAPACITIES: [usize; 4] = [64, 128, 256, 512];

/// The model an evaluation runs, with what its results record about it.
#[derive(Clone)]
pub struct EvalModel<'a> {
    pub lm: &'a dyn Model,
    /// Identifies the weights (file name, size, digest, weight format), as state files do.
    pub id: String,
    /// What the user knows the model by (the file name without `.gguf`): for titles.
    pub name: String,
}

impl EvalModel<'_> {
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

/// One point of the policy axis: a policy at a capacity (the full cache unbounded).
#[derive(Debug, Clone, PartialEq)]
pub struct PolicyCell {
    pub spec: PolicySpec,
    pub capacity: Capacity,
}

impl PolicyCell {
    /// `tova C=128`, or `full` for the unbounded cache: the start of every cell id.
    pub fn label(&self) -> String {
        match self.capacity {
            Capacity::Unbounded => self.spec.to_string(),
            Capacity::Bounded(c) => format!("{} C={c}", self.spec),
        }
    }

    /// The fields every result carries.
    pub fn fields(&self) -> PolicyFields {
        PolicyFields { policy: self.spec.to_string(), spec: self.spec.clone(), capacity: self.capacity.get() }
    }

    /// A fresh state for this cell in the given position mode and KV format, with errors that say
    /// which policy and capacity were refused.
    pub fn state(
        &self,
        lm: &dyn Model,
        registry: &PolicyRegistry,
        max_chunk: usize,
        positions: Positions,
        kv: KvFormat,
    ) -> Result<MsrnnState> {
        let recipe =
            StateRecipe::new(self.spec.clone(), self.capacity).positions(positions).max_chunk(max_chunk).kv(kv);
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
}

/// The policy x capacity axis: every bounded policy at every capacity, `full` once.
#[derive(Debug, Clone)]
pub struct PolicyGrid {
    pub specs: Vec<PolicySpec>,
    pub caps: Vec<usize>,
    pub cells: Vec<PolicyCell>,
}

impl PolicyGrid {
    /// The grid of `specs` (checked against the registry) at `caps` (sorted, each once).
    pub fn new(registry: &PolicyRegistry, specs: &[PolicySpec], caps: &[usize]) -> Result<Self> {
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
                cells.push(PolicyCell { spec: s.clone(), capacity: Capacity::Unbounded });
            } else {
                cells.extend(caps.iter().map(|&c| PolicyCell { spec: s.clone(), capacity: Capacity::Bounded(c) }));
            }
        }
        Ok(Self { specs: specs.to_vec(), caps, cells })
    }

    pub fn has_full(&self) -> bool {
        self.cells.iter().any(|c| c.capacity == Capacity::Unbounded)
    }

    /// Builds (and drops) one state per cell, so that a policy refusing a capacity fails before
    /// anything runs.
    pub fn check(
        &self,
        lm: &dyn Model,
        registry: &PolicyRegistry,
        max_chunk: usize,
        positions: Positions,
        kv: KvFormat,
    ) -> Result<()> {
        for c in &self.cells {
            drop(c.state(lm, registry, max_chunk, positions, kv)?);
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

/// 64-bit FNV-1a: a short, stable digest that tells two inputs apart without their paths.
pub fn fnv64(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// The digest of token ids (FNV-1a over their little-endian bytes), as hex.
pub fn tokens_digest(tokens: &[u32]) -> String {
    let bytes: Vec<u8> = tokens.iter().flat_map(|t| t.to_le_bytes()).collect();
    format!("{:016x}", fnv64(&bytes))
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
    fn batches_keep_order_and_size() {
        assert_eq!(batches(vec![1, 2, 3, 4, 5], 2), vec![vec![1, 2], vec![3, 4], vec![5]]);
        assert_eq!(batches(vec![1, 2], 0), vec![vec![1], vec![2]]);
        assert!(batch_or(Some(0), 3).unwrap_err().to_string().contains("batch must be at least 1"));
        assert_eq!(batch_or(None, 0).unwrap(), 1);
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

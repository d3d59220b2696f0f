//! What every evaluation grid shares: the policy x capacity axis (plus the full cache, once), the
//! options that select and run a grid (`--policies`, `--capacities`, `--shard`, `--batch`,
//! `--out`, `--plot`), stable cell ids, and the disjoint parts `--shard I/N` picks.

use std::path::PathBuf;
use std::str::FromStr;

use anyhow::{bail, Context, Result};
use clap::Args;
use msrnn_core::{Capacity, CausalLm, PolicyRegistry, PolicySpec, Positions};
use serde_json::{json, Value};

use crate::policy;

/// Options every grid task takes; the task supplies the defaults of the first two.
#[derive(Args, Debug, Clone)]
pub struct GridArgs {
    /// Policies, comma-separated NAME[:key=value] specs (built-ins or plugins); `full` (never
    /// evicting) is the reference and runs once, without a capacity. [default: the task's]
    #[arg(long, value_name = "SPECS")]
    pub policies: Option<String>,

    /// Cache capacities C (tokens per layer), comma-separated. [default: 64,128,256,512]
    #[arg(long, value_name = "C,...", value_delimiter = ',')]
    pub capacities: Option<Vec<usize>>,

    /// Run only the I-th of N disjoint parts of the grid (I counts from 0, as Slurm array and
    /// Kubernetes Indexed Job indices do); `msrnn eval merge` joins the parts' --out files.
    #[arg(long, value_name = "I/N")]
    pub shard: Option<Shard>,

    /// Most sequences run at once, each weight read once per step for all of them (memory grows
    /// with it). [default: the task's]
    #[arg(long, value_name = "N")]
    pub batch: Option<usize>,

    /// Write every result and every setting needed to reproduce it as JSON (the input of
    /// `msrnn eval merge`).
    #[arg(long, value_name = "FILE")]
    pub out: Option<PathBuf>,

    /// Draw the task's chart: .svg or .png (repeatable).
    #[arg(long, value_name = "FILE")]
    pub plot: Vec<PathBuf>,
}

impl GridArgs {
    /// `--batch`, or `default`; zero is refused.
    pub fn batch_or(&self, default: usize) -> Result<usize> {
        match self.batch {
            Some(0) => bail!("--batch must be at least 1"),
            Some(n) => Ok(n),
            None => Ok(default.max(1)),
        }
    }
}

/// `--shard I/N`: part I (from 0) of N. Cell k of a grid belongs to part `k mod N`, so every part
/// gets a like mix of cheap and costly cells.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    pub index: usize,
    pub count: usize,
}

impl FromStr for Shard {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("`{s}`: expected I/N with 0 <= I < N, e.g. 0/4 (I counts from 0)");
        let (i, n) = s.split_once('/').ok_or_else(bad)?;
        let (index, count) =
            (i.trim().parse::<usize>().map_err(|_| bad())?, n.trim().parse::<usize>().map_err(|_| bad())?);
        if count == 0 || index >= count {
            return Err(bad());
        }
        Ok(Shard { index, count })
    }
}

impl std::fmt::Display for Shard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

impl Shard {
    pub fn owns(&self, cell: usize) -> bool {
        cell % self.count == self.index
    }
    pub fn to_json(self) -> Value {
        json!({ "index": self.index, "count": self.count })
    }
}

/// The cells (by index) a run covers: all of them, or its shard's.
pub fn selected(total: usize, shard: Option<Shard>) -> Vec<usize> {
    (0..total).filter(|&k| shard.is_none_or(|s| s.owns(k))).collect()
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
    /// The fields every result carries: `policy` (as written), `spec` (as JSON), `capacity`
    /// (`null` for the full cache).
    pub fn fields(&self) -> Value {
        json!({ "policy": self.spec.to_string(), "spec": self.spec, "capacity": self.capacity.get() })
    }
}

/// The policy x capacity axis: every bounded policy at every capacity, `full` once.
pub struct PolicyGrid {
    pub specs: Vec<PolicySpec>,
    pub caps: Vec<usize>,
    pub cells: Vec<PolicyCell>,
}

pub const DEFAULT_CAPACITIES: [usize; 4] = [64, 128, 256, 512];

impl PolicyGrid {
    /// From `--policies` and `--capacities` (or the task's defaults), checked against the registry.
    pub fn parse(r: &PolicyRegistry, a: &GridArgs, default_policies: &str) -> Result<Self> {
        let specs = policy::parse_spec_list(r, a.policies.as_deref().unwrap_or(default_policies), "--policies")?;
        let mut caps = a.capacities.clone().unwrap_or_else(|| DEFAULT_CAPACITIES.to_vec());
        if caps.is_empty() {
            bail!("--capacities is empty: give at least one capacity, e.g. --capacities 64,128");
        }
        caps.sort_unstable();
        caps.dedup();
        for &c in &caps {
            Capacity::bounded(c).with_context(|| format!("--capacities: {c}"))?;
        }
        let mut cells = Vec::new();
        for s in &specs {
            if policy::is_full(r, s) {
                cells.push(PolicyCell { spec: s.clone(), capacity: Capacity::Unbounded });
            } else {
                cells.extend(caps.iter().map(|&c| PolicyCell { spec: s.clone(), capacity: Capacity::Bounded(c) }));
            }
        }
        Ok(Self { specs, caps, cells })
    }

    pub fn has_full(&self) -> bool {
        self.cells.iter().any(|c| c.capacity == Capacity::Unbounded)
    }

    /// Builds (and drops) one state per cell, so that a policy refusing a capacity fails before
    /// anything runs.
    pub fn check(
        &self,
        model: &dyn CausalLm,
        r: &PolicyRegistry,
        max_chunk: usize,
        positions: Positions,
    ) -> Result<()> {
        for c in &self.cells {
            drop(policy::make_state_at(model, r, &c.spec, c.capacity, max_chunk, positions)?);
        }
        Ok(())
    }

    /// Where each policy comes from (built-in, or a plugin's file name): part of the settings, so
    /// that shards run with different plugins do not merge.
    pub fn sources(&self, r: &PolicyRegistry) -> Value {
        let mut m = serde_json::Map::new();
        for s in &self.specs {
            let src = match r.get(&s.name).map(|e| e.source.clone()) {
                Ok(msrnn_core::Source::Builtin) => "built-in".to_string(),
                Ok(msrnn_core::Source::Plugin(p)) => format!(
                    "plugin {}",
                    std::path::Path::new(&p).file_name().map_or(p.clone(), |n| n.to_string_lossy().into_owned())
                ),
                Err(_) => "unknown".to_string(),
            };
            m.insert(s.to_string(), Value::String(src));
        }
        Value::Object(m)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_parse_and_partition_any_grid() {
        assert_eq!("1/4".parse::<Shard>(), Ok(Shard { index: 1, count: 4 }));
        for bad in ["4/4", "1/0", "a/2", "1", "-1/2", "1/2/3", ""] {
            let e = bad.parse::<Shard>().unwrap_err();
            assert!(e.contains("I/N"), "{bad}: {e}");
        }
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
}

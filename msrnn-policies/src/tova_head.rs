//! `tova-head` is TOVA per KV head: each KV head keeps the C entries the newest query attends to
//! most, averaged over the query heads that read that KV head (its group), so different heads keep
//! different tokens. The layer is per-head ([`Policy::head_capacity`] = C): every head has its own
//! slots, an evicted entry's memory is its head's to reuse, and the layer holds C x kv_heads entries,
//! the bytes of a per-layer C. The newest token is a candidate; ties keep the newer entry. With one
//! KV head (or one query head per group) it is `tova` on that head.

use msrnn_policy_api::{lowest_among, Context, Decision, Declare, Error, Needs, Observation, Policy, Result, Rows};

/// `tova-head`: per KV head, the top-C of the newest query's attention averaged over the head's
/// query group.
#[derive(Debug)]
pub struct TovaHead {
    capacity: usize,
}

/// The capacity a per-head policy sizes its heads for: the run's C (per-head policies need one).
pub(crate) fn run_capacity(name: &str, ctx: &Context) -> Result<usize> {
    ctx.capacity.ok_or_else(|| {
        Error::Param(format!("`{name}` keeps entries per KV head within a capacity; give one (--capacity)"))
    })
}

/// Per KV head, the `live - budget` lowest-scored entries of that head (entries of a per-head
/// observation, `score` per entry); ties evict the older.
pub fn per_head_lowest(obs: &Observation<'_>, score: &[f64], budget: usize) -> Vec<usize> {
    let mut out = Vec::new();
    for h in 0..obs.num_kv_heads {
        let mine = obs.head_entries(h);
        let excess = mine.len().saturating_sub(budget);
        if excess > 0 {
            out.extend(lowest_among(obs, score, mine, excess));
        }
    }
    out
}

impl Declare for TovaHead {
    const NAME: &'static str = "tova-head";
    const DESCRIPTION: &'static str =
        "TOVA per KV head: each head keeps the C tokens its own query heads attend to most (per-head slots).";

    type Params = ();

    fn create(_: (), ctx: &Context) -> Result<Self> {
        Ok(TovaHead { capacity: run_capacity(Self::NAME, ctx)? })
    }
}

impl Policy for TovaHead {
    fn name(&self) -> &str {
        Self::NAME
    }
    fn needs(&self) -> Needs {
        Needs { rows: Rows::Last, ..Needs::default() }
    }
    fn head_capacity(&self) -> Option<usize> {
        Some(self.capacity)
    }
    fn step(&mut self, obs: &Observation<'_>, budget: usize) -> Result<Decision> {
        let scores = obs.kv_head_mean(obs.rows - 1);
        Ok(Decision::Evict(per_head_lowest(obs, &scores, budget)))
    }
}

msrnn_core::builtin_policy!(TovaHead);

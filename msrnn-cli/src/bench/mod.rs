//! `msrnn bench`: speed and memory of the policies, three experiments over the same flags:
//!
//! - [`contexts`]: the context grid (prefill and decode speed, KV bytes, peak memory per policy
//!   vs. context length), with the family's baseline and llama-bench beside;
//! - [`batch`]: many sequences decoding together (`--batch`, `--kv-budget`);
//! - [`stream`]: a long stream through each bounded policy (`--stream`).
//!
//! [`args`] holds the flags, [`ours`] one policy's state carried through the contexts, [`llama`]
//! the llama-bench runner; the experiments use those and not each other.

mod args;
mod batch;
mod contexts;
mod llama;
mod ours;
mod stream;

use anyhow::{bail, Context, Result};
use msrnn_core::{Capacity, PolicySpec};

pub(crate) use args::parse_size;
pub use args::BenchArgs;

use crate::context::Ctx;
use crate::plot;
use crate::policy;

pub fn run(ctx: &Ctx, a: BenchArgs) -> Result<()> {
    let registry = policy::registry(ctx)?;
    let mut specs = policy::parse_spec_list(&registry, &a.policies, "--policies")?;
    if !specs.iter().any(|s| policy::is_full(&registry, s)) {
        specs.insert(0, PolicySpec::new("full"));
    }
    Capacity::bounded(a.capacity).with_context(|| format!("--capacity {}", a.capacity))?;
    let mut contexts = a.contexts.clone();
    contexts.sort_unstable();
    contexts.dedup();
    if contexts.is_empty() || contexts[0] == 0 {
        bail!("--contexts needs lengths of at least 1 token, e.g. --contexts 256,1024");
    }
    if a.decode_steps == 0 {
        bail!("--decode-steps must be at least 1");
    }

    if a.chunk == 0 {
        bail!("--chunk must be at least 1");
    }
    plot::check_paths(&a.plot, "--plot")?;
    if let Some(p) = &a.llama_bench {
        llama::check_binary(p)?;
        if a.llama_reps == 0 {
            bail!("--llama-reps must be at least 1");
        }
    }
    if let Some(n) = a.stream {
        return stream::run(ctx, &registry, &specs, n, &a);
    }
    if !a.batch.is_empty() || a.kv_budget.is_some() {
        return batch::run(ctx, &registry, &specs, &contexts, &a);
    }
    contexts::run(ctx, &registry, &specs, &contexts, &a)
}

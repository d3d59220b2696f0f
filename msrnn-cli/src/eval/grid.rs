//! The flags every evaluation grid takes (the library's `GridConfig`, with `--positions` and
//! `--kv` from the global flags); the task supplies the default policies, and sets its defaults of
//! `--mode` and `--chunk` with `mut_arg` (ppl: decode, 16; the prompt tasks: chunked, 64).

use std::path::PathBuf;

use anyhow::Result;
use clap::{Args, ValueEnum};
use msrnn_core::{PolicyRegistry, PolicySpec};
use msrnn_eval::{Feed, GridConfig, Shard};

use crate::context::Ctx;
use crate::policy;

/// How a text or a prompt enters the state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Mode {
    /// One token per step, the policy after every token (the paper's protocol).
    Decode,
    /// --chunk tokens per step, the policy after every chunk (faster; as generation feeds a
    /// prompt); tokens inside a chunk may see up to C + chunk entries.
    Chunked,
}

impl Mode {
    /// The feed of the library, `chunk` tokens per step when chunked.
    pub fn feed(self, chunk: usize) -> Feed {
        match self {
            Mode::Decode => Feed::Decode,
            Mode::Chunked => Feed::Chunked(chunk),
        }
    }
}

#[derive(Args, Debug, Clone)]
pub struct GridArgs {
    /// Policies, comma-separated NAME[:key=value] specs (built-ins or plugins); `full` (never
    /// evicting) is the reference and runs once, without a capacity. [default: the task's]
    #[arg(long, value_name = "SPECS")]
    pub policies: Option<String>,

    /// Cache capacities C (tokens per layer), comma-separated. [default: 64,128,256,512]
    #[arg(long, value_name = "C,...", value_delimiter = ',')]
    pub capacities: Option<Vec<usize>>,

    /// Budgets as the share of the context removed (kvpress's compression ratio), instead of
    /// --capacities: C = ceil((1 - R) x context length), resolved per cell from its prompt (or
    /// text) length; 0 <= R < 1, comma-separated (0.5,0.875).
    #[arg(long, value_name = "R,...", value_delimiter = ',', allow_negative_numbers = true)]
    pub ratios: Option<Vec<f64>>,

    /// Run only the I-th of N disjoint parts of the grid (I counts from 0, as Slurm array and
    /// Kubernetes Indexed Job indices do); `msrnn eval merge` joins the parts' --out files.
    #[arg(long, value_name = "I/N")]
    pub shard: Option<Shard>,

    /// Most sequences run at once, each weight read once per step for all of them (memory grows
    /// with it). [default: the task's]
    #[arg(long, value_name = "N")]
    pub batch: Option<usize>,

    /// How the text (ppl) or each prompt enters the state.
    #[arg(long, value_enum, default_value_t = Mode::Chunked)]
    pub mode: Mode,

    /// Tokens per step in chunked mode.
    #[arg(long, value_name = "N", default_value_t = 64)]
    pub chunk: usize,

    /// Write every result and every setting needed to reproduce it as JSON (the input of
    /// `msrnn eval merge`).
    #[arg(long, value_name = "FILE")]
    pub out: Option<PathBuf>,

    /// Draw the task's chart: .svg or .png (repeatable).
    #[arg(long, value_name = "FILE")]
    pub plot: Vec<PathBuf>,
}

impl GridArgs {
    /// The grid settings of a task's config: these flags, the task's `default_policies` when
    /// --policies is not given, and the global --positions and --kv.
    pub fn config(&self, ctx: &Ctx, r: &PolicyRegistry, default_policies: &str) -> Result<GridConfig> {
        Ok(GridConfig {
            policies: self.specs(r, default_policies)?,
            capacities: self.capacities(),
            ratios: self.ratios(),
            feed: self.mode.feed(self.chunk),
            positions: ctx.global.positions(),
            kv: ctx.global.kv(),
            shard: self.shard,
            batch: self.batch,
        })
    }

    /// `--policies` (or the task's default) parsed and checked against the registry.
    pub fn specs(&self, r: &PolicyRegistry, default: &str) -> Result<Vec<PolicySpec>> {
        policy::parse_spec_list(r, self.policies.as_deref().unwrap_or(default), "--policies")
    }

    /// `--capacities`, or the library's default (none when --ratios is given).
    pub fn capacities(&self) -> Vec<usize> {
        match (&self.capacities, &self.ratios) {
            (Some(c), _) => c.clone(),
            (None, Some(_)) => Vec::new(),
            (None, None) => msrnn_eval::DEFAULT_CAPACITIES.to_vec(),
        }
    }

    /// `--ratios` (none by default).
    pub fn ratios(&self) -> Vec<f64> {
        self.ratios.clone().unwrap_or_default()
    }
}

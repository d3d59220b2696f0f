//! Evaluation tasks over grids of policies x capacities, as a library: the CLI, a server and Python
//! bindings call the same code and get the same typed result documents.
//!
//! - [`ppl`]: perplexity of a text per cell (optionally per segment of a long stream);
//! - [`passkey`]: passkey retrieval per cell, haystack length and depth;
//! - [`ruler`]: a RULER-style long-context suite (needles, variable tracking, word extraction);
//! - [`merge`]: joins the documents of shards (`--shard I/N`) into the unsharded one;
//! - [`doc`]: the one versioned result schema ([`Document`]), typed per task;
//! - [`grid`]: what every task's config shares ([`GridConfig`]), the policy x capacity axis,
//!   shards, batches.
//!
//! A task's `run(model, registry, config, observer)` validates its config before anything runs,
//! runs the chosen cells as batches through msrnn-engine's `Engine` (each weight read once per step
//! for every sequence; ppl's cells score the text, the prompt tasks' generate answers), reports
//! progress to the [`Observer`] and checks its cancellation flag between steps. Nothing here prints.

pub mod doc;
pub mod error;
pub mod grid;
pub mod merge;
pub mod passkey;
pub mod ppl;
pub mod ruler;

pub use doc::{AnyDocument, CellResult, Document, ModelSettings, Run, Shard, KIND, SCHEMA};
pub use error::{Error, Result};
pub use grid::{Budget, EvalModel, GridConfig, GridSettings, PolicyCell, PolicyGrid, DEFAULT_CAPACITIES};
pub use merge::merge;

/// What a running task tells its caller.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// The work ahead: `units` in all (tokens fed, summed over sequences), `cells` of the grid's
    /// `total_cells` run as batches of up to `batch` sequences.
    Start { units: u64, cells: usize, total_cells: usize, sequences: usize, batch: usize },
    /// A batch starts: what it runs, in words (`7 cells`, `8 sequences of 2048 tokens`).
    Batch(String),
    /// Units done so far.
    Progress(u64),
    /// A line worth showing (a cell's result, a batch's speed).
    Note(String),
    /// Something the caller should know that does not stop the run.
    Warning(String),
}

/// The caller's side of a run: progress, and a way to stop it. Both have do-nothing defaults;
/// `()` observes nothing.
pub trait Observer {
    fn event(&mut self, _event: Event) {}
    /// Checked between steps (batches, and generated tokens); true stops the run with
    /// [`Error::Cancelled`].
    fn cancelled(&self) -> bool {
        false
    }
}

impl Observer for () {}

/// An observer from a closure, never cancelled.
pub struct OnEvent<F: FnMut(Event)>(pub F);

impl<F: FnMut(Event)> Observer for OnEvent<F> {
    fn event(&mut self, e: Event) {
        (self.0)(e)
    }
}

/// How a prompt or a text enters the state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Feed {
    /// One token per step, the policy after every token (the paper's protocol).
    Decode,
    /// This many tokens per step, the policy after every chunk.
    Chunked(usize),
}

impl Feed {
    /// The name results record (`decode`, `chunked`).
    pub fn name(self) -> &'static str {
        match self {
            Feed::Decode => "decode",
            Feed::Chunked(_) => "chunked",
        }
    }

    /// Tokens per step.
    pub fn chunk(self) -> usize {
        match self {
            Feed::Decode => 1,
            Feed::Chunked(n) => n,
        }
    }

    pub(crate) fn check(self) -> Result<()> {
        if self == Feed::Chunked(0) {
            return Err(Error::setting("chunk", " must be at least 1"));
        }
        Ok(())
    }
}

impl std::fmt::Display for Feed {
    /// `decode` or `chunked(64)`: for titles and progress lines.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Feed::Decode => write!(f, "decode"),
            Feed::Chunked(n) => write!(f, "chunked({n})"),
        }
    }
}

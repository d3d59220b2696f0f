//! `msrnn state show`. State files: the core writes the multi-state (safetensors, with the model id,
//! policy, capacity and positions in its header); the engine adds what a conversation needs to go on
//! exactly where it stopped (the sampled token not yet fed to the model, the sampler's position) as
//! one more metadata entry of the same file ([`msrnn_engine::session`]).

use std::path::{Path, PathBuf};

use anyhow::Result;
use clap::{Args, Subcommand};
use msrnn_core::{MsrnnState, Sampling};
pub use msrnn_engine::Conversation;

use crate::Ctx;

/// The conversation saved with a state file, if any (the engine writes and reads it).
pub fn conversation(path: &Path) -> Result<Option<Conversation>> {
    Ok(msrnn_engine::session::read_conversation(path)?)
}

#[derive(Args)]
pub struct StateArgs {
    #[command(subcommand)]
    cmd: StateCmd,
}

#[derive(Subcommand)]
enum StateCmd {
    /// Print what a state file holds: model, policy, capacity, tokens seen, conversation.
    Show {
        /// A file written by `msrnn generate --save-state`.
        file: PathBuf,
    },
}

pub fn run(_ctx: &Ctx, a: StateArgs) -> Result<()> {
    match a.cmd {
        StateCmd::Show { file } => show(&file),
    }
}

fn show(path: &Path) -> Result<()> {
    let h = MsrnnState::read_header(path)?;
    let size = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
    let mut s = format!(
        "state file   {}\nsize         {}\nmodel        {}\npolicy       {}\ncapacity     {}\npositions    {}\nKV format    {}\ntokens seen  {}\nlayers       {}\n",
        path.display(),
        crate::report::bytes(size),
        h.model,
        h.policy,
        h.capacity,
        h.positions,
        h.kv,
        h.tokens_seen,
        h.num_layers
    );
    match conversation(path)? {
        Some(c) => {
            let sampling = match c.sampling {
                Sampling::Greedy => "greedy".to_string(),
                Sampling::TopP { temperature, top_p, seed } => {
                    format!("temperature {temperature}, top-p {top_p}, seed {seed} ({} draws so far)", c.draws)
                }
            };
            s.push_str(&format!(
                "turns        {}\ngenerated    {} tokens{}\nsampling     {sampling}\nchat         {}\n",
                c.turns,
                c.generated,
                if c.turn_ended { " (last answer finished)" } else { " (last answer cut off by --max-tokens)" },
                if c.chat { "template applied" } else { "raw text" },
            ));
        }
        None => s.push_str("conversation (none: not written by `msrnn generate`)\n"),
    }
    crate::report::print_stdout(&s)
}

//! State files: the core writes the multi-state (safetensors, with the model id, policy, capacity and
//! positions in its header); the CLI adds what a conversation needs to go on exactly where it stopped
//! (the sampled token not yet fed to the model, the sampler's position) as one more metadata entry of
//! the same file. And `msrnn state show`.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use msrnn_core::{MsrnnState, Sampling};
use serde::{Deserialize, Serialize};

use crate::Ctx;

/// Metadata key of the CLI's entry (the core's is `msrnn`).
const KEY: &str = "msrnn-cli";

/// What `generate` needs to continue a saved conversation as if it had never stopped.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Conversation {
    /// The last generated token: sampled but not yet fed to the model (the next step feeds it).
    pub pending: Option<u32>,
    /// Sampling settings of the run that saved the state.
    pub sampling: Sampling,
    /// Tokens drawn from the sampler's generator with this seed so far (one per sampled token), so
    /// a resumed run continues the same random stream.
    pub draws: u64,
    /// Whether the chat template was applied.
    pub chat: bool,
    /// Whether the last answer ended with a stop token (a finished turn).
    pub turn_ended: bool,
    /// Tokens generated over all runs of this conversation.
    pub generated: u64,
    /// Runs (prompts) so far.
    pub turns: u32,
}

/// Adds the conversation entry to the header of a state file the core just wrote.
pub fn attach(path: &Path, conv: &Conversation) -> Result<()> {
    let ctx = || format!("--save-state {}", path.display());
    let bytes = std::fs::read(path).with_context(ctx)?;
    let (mut header, data) = split(&bytes).with_context(ctx)?;
    let meta = header
        .as_object_mut()
        .context("the safetensors header is not an object")
        .with_context(ctx)?
        .entry("__metadata__")
        .or_insert_with(|| serde_json::json!({}));
    meta[KEY] = serde_json::Value::String(serde_json::to_string(conv).expect("serialisable"));
    let mut h = serde_json::to_vec(&header).expect("serialisable");
    // The format pads the header with spaces to a multiple of 8 so the data stays aligned.
    while h.len() % 8 != 0 {
        h.push(b' ');
    }
    let mut out = Vec::with_capacity(8 + h.len() + data.len());
    out.extend_from_slice(&(h.len() as u64).to_le_bytes());
    out.extend_from_slice(&h);
    out.extend_from_slice(data);
    let tmp = path.with_extension("partial");
    std::fs::write(&tmp, out).with_context(ctx)?;
    std::fs::rename(&tmp, path).with_context(ctx)
}

/// The conversation entry of a state file, if the CLI wrote one.
pub fn conversation(path: &Path) -> Result<Option<Conversation>> {
    let bytes = std::fs::read(path).with_context(|| format!("{}: cannot read it", path.display()))?;
    let (header, _) = split(&bytes).with_context(|| format!("{} is not a state file", path.display()))?;
    match header.get("__metadata__").and_then(|m| m.get(KEY)).and_then(|v| v.as_str()) {
        None => Ok(None),
        Some(s) => Ok(Some(serde_json::from_str(s).with_context(|| format!("{}: bad `{KEY}` entry", path.display()))?)),
    }
}

/// The JSON header and the data of a safetensors file.
fn split(bytes: &[u8]) -> Result<(serde_json::Value, &[u8])> {
    if bytes.len() < 8 {
        bail!("too short for a safetensors file");
    }
    let n = u64::from_le_bytes(bytes[..8].try_into().expect("8 bytes")) as usize;
    if n > bytes.len() - 8 {
        bail!("the header length {n} is past the end of the file");
    }
    let header = serde_json::from_slice(&bytes[8..8 + n]).context("the header is not JSON")?;
    Ok((header, &bytes[8 + n..]))
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
        "state file   {}\nsize         {}\nmodel        {}\npolicy       {}\ncapacity     {}\npositions    {}\ntokens seen  {}\nlayers       {}\n",
        path.display(),
        crate::report::bytes(size),
        h.model,
        h.policy,
        h.capacity,
        h.positions,
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

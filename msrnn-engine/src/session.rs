//! Conversations: what a saved state needs to go on exactly where it stopped (the sampled token
//! not yet fed, the sampler's position, whether the turn ended), the prompts of the next turn
//! (one text, or OpenAI-style messages through the model's chat template), and the state file that
//! holds both. `msrnn generate --resume`, a server's sessions and Python share these.

use std::path::Path;

use msrnn_core::generate::SplitMix64;
use msrnn_core::{MsrnnState, PolicySpec, Sampling, StateHeader};
use msrnn_modelkit::Tokenizer;
use serde::{Deserialize, Serialize};

use crate::engine::{Finished, StopReason};
use crate::error::{Error, Result};

/// Metadata key of the conversation in a state file (the core's is `msrnn`). The CLI wrote it
/// first, so it keeps the CLI's name: files saved before still resume.
pub const CONVERSATION_KEY: &str = "msrnn-cli";

/// What a conversation needs to continue a saved state as if it had never stopped.
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

impl Conversation {
    /// The conversation after `f`, a run with `sampling` that started `draws` draws into its seed's
    /// stream, following `prev` (if any).
    pub fn after(prev: Option<&Conversation>, f: &Finished, sampling: Sampling, draws: u64, chat: bool) -> Self {
        let sampled = if matches!(sampling, Sampling::TopP { .. }) { f.tokens.len() as u64 } else { 0 };
        Conversation {
            pending: f.tokens.last().copied(),
            sampling,
            draws: draws + sampled,
            chat,
            turn_ended: f.reason == StopReason::StopToken,
            generated: prev.map_or(0, |c| c.generated) + f.tokens.len() as u64,
            turns: prev.map_or(0, |c| c.turns) + 1,
        }
    }

    /// The draws to skip when going on with `sampling`: the saved count if the sampling is the
    /// saved one (the random stream continues), else none (a new stream).
    pub fn draws_for(conv: Option<&Conversation>, sampling: Sampling) -> u64 {
        match (conv, sampling) {
            (Some(c), Sampling::TopP { .. }) if c.sampling == sampling => c.draws,
            _ => 0,
        }
    }
}

/// `sampling` with its seed advanced past `draws` draws: what the sampler of a resumed run starts
/// from.
pub fn continue_sampling(sampling: Sampling, draws: u64) -> Sampling {
    match sampling {
        Sampling::TopP { temperature, top_p, seed } => {
            Sampling::TopP { temperature, top_p, seed: advance_seed(seed, draws) }
        }
        s => s,
    }
}

/// The generator state after `draws` samples from `seed` (each top-p sample draws once).
pub fn advance_seed(seed: u64, draws: u64) -> u64 {
    let mut g = SplitMix64::new(seed);
    for _ in 0..draws {
        g.next_u64();
    }
    g.state()
}

/// The end-of-turn token of the chat template and the text that separates turns after it, derived
/// from the template itself: `chat_prompt(X)` = user header + X + end + separator + assistant header.
pub fn turn_end(tok: &Tokenizer) -> Option<(u32, String)> {
    const MARK: &str = "\u{1}";
    let p = tok.chat_prompt(MARK);
    let (user_header, suffix) = p.split_once(MARK)?;
    // The template's own assistant header (Gemma's answering role is `model`).
    let assistant_header =
        tok.chat_format().map_or_else(|| user_header.replace("user", "assistant"), |f| f.assistant_header());
    for &e in tok.eos_tokens() {
        let text = tok.decode(&[e]).ok()?;
        if let Some(rest) = suffix.strip_prefix(&text) {
            let sep = rest.strip_suffix(&assistant_header).unwrap_or("");
            return Some((e, sep.to_string()));
        }
    }
    None
}

/// Who says a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    System,
    User,
    Assistant,
}

impl std::str::FromStr for Role {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "system" => Ok(Role::System),
            "user" => Ok(Role::User),
            "assistant" => Ok(Role::Assistant),
            other => Err(Error::Request(format!("unknown role `{other}` (system, user or assistant)"))),
        }
    }
}

/// One chat message, OpenAI style.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    pub role: Role,
    pub content: String,
}

impl Message {
    pub fn new(role: Role, content: impl Into<String>) -> Self {
        Self { role, content: content.into() }
    }
}

/// The prompt text of `messages` in the model's chat template, ending where the assistant's answer
/// starts. A template without a system role (Gemma 3) gets the system text at the top of the next
/// user turn; a vocabulary without chat tokens gets the contents one per paragraph.
pub fn chat_text(tok: &Tokenizer, messages: &[Message]) -> Result<String> {
    if messages.is_empty() {
        return Err(Error::Request("a chat needs at least one message".into()));
    }
    let Some(f) = tok.chat_format() else {
        let parts: Vec<&str> = messages.iter().map(|m| m.content.as_str()).collect();
        return Ok(parts.join("\n\n"));
    };
    let mut out = String::new();
    let mut system: Vec<&str> = Vec::new();
    for m in messages {
        match m.role {
            Role::System if f.system_role => out.push_str(&f.turn("system", &m.content)),
            Role::System => system.push(&m.content),
            Role::User => {
                let text = if system.is_empty() {
                    m.content.clone()
                } else {
                    let mut s = system.join("\n\n");
                    system.clear();
                    s.push_str("\n\n");
                    s.push_str(&m.content);
                    s
                };
                out.push_str(&f.turn("user", &text));
            }
            Role::Assistant => out.push_str(&f.turn(f.assistant, &m.content)),
        }
    }
    if !system.is_empty() {
        // A system text with no user turn after it still goes in, as a user turn of its own.
        out.push_str(&f.turn("user", &system.join("\n\n")));
    }
    out.push_str(&f.assistant_header());
    Ok(out)
}

/// What the next turn says.
#[derive(Debug, Clone, Copy)]
pub enum Turn<'a> {
    /// Nothing new: the model goes on where it stopped (resumed runs only).
    Continue,
    /// One text: the user's message (through the chat template when `chat`), else raw text.
    Text(&'a str),
    /// Messages through the chat template.
    Messages(&'a [Message]),
}

/// Prompt token ids. A fresh run encodes the (templated) text; a resumed run first feeds the token
/// the saved run sampled last but never fed, closes the previous answer if a token limit cut it
/// off, then the next turn, if any.
pub fn next_turn_prompt(
    tok: &Tokenizer,
    turn: Turn<'_>,
    conv: Option<&Conversation>,
    chat: bool,
    resumed: bool,
) -> Result<Vec<u32>> {
    let templated = |t: Turn<'_>| -> Result<Option<String>> {
        Ok(match t {
            Turn::Continue => None,
            Turn::Text(text) if chat => Some(tok.chat_prompt(text)),
            Turn::Text(text) => Some(text.to_string()),
            Turn::Messages(m) => Some(chat_text(tok, m)?),
        })
    };
    if !resumed {
        let Some(text) = templated(turn)? else {
            return Err(Error::Request("a fresh conversation needs a prompt".into()));
        };
        return Ok(tok.encode(&text, tok.wants_bos())?);
    }
    let mut ids: Vec<u32> = conv.and_then(|c| c.pending).into_iter().collect();
    let templated_turn = matches!(turn, Turn::Messages(_)) || (chat && matches!(turn, Turn::Text(_)));
    if let Some(text) = templated(turn)? {
        let next = if templated_turn {
            let (end, sep) = turn_end(tok).unwrap_or((u32::MAX, String::new()));
            let ended = conv.is_none_or(|c| c.turn_ended);
            if !ended && end != u32::MAX {
                ids.push(end);
            }
            format!("{sep}{text}")
        } else {
            text
        };
        ids.extend(tok.encode(&next, false)?);
    }
    if ids.is_empty() {
        return Err(Error::Request(
            "the saved state has no token waiting to be fed (it was saved without generating); give a prompt to go on"
                .into(),
        ));
    }
    Ok(ids)
}

/// A state and its conversation as the bytes of one state file.
pub fn save_bytes(state: &MsrnnState, model_id: &str, spec: &PolicySpec, conv: &Conversation) -> Result<Vec<u8>> {
    let json = serde_json::to_string(conv).expect("serialisable");
    Ok(state.save_bytes(model_id, spec, &[(CONVERSATION_KEY.to_string(), json)])?)
}

/// [`save_bytes`] to a file, written whole or not at all (through a `.partial` file renamed).
pub fn save(path: &Path, state: &MsrnnState, model_id: &str, spec: &PolicySpec, conv: &Conversation) -> Result<()> {
    let bytes = save_bytes(state, model_id, spec, conv)?;
    let io = |e: std::io::Error| Error::Io { path: path.display().to_string(), reason: e.to_string() };
    let tmp = path.with_extension("partial");
    std::fs::write(&tmp, bytes).map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)
}

/// The header and conversation of a state file's bytes (`None`: it holds no conversation).
pub fn read_bytes(bytes: &[u8]) -> Result<(StateHeader, Option<Conversation>)> {
    let (h, meta) = MsrnnState::metadata_of_bytes(bytes)?;
    let conv = match meta.get(CONVERSATION_KEY) {
        None => None,
        Some(s) => {
            Some(serde_json::from_str(s).map_err(|e| Error::State(format!("bad `{CONVERSATION_KEY}` entry: {e}")))?)
        }
    };
    Ok((h, conv))
}

/// The conversation of a state file, if one was saved with it.
pub fn read_conversation(path: &Path) -> Result<Option<Conversation>> {
    let bytes = std::fs::read(path)
        .map_err(|e| Error::Io { path: path.display().to_string(), reason: format!("cannot read it: {e}") })?;
    read_bytes(&bytes).map(|(_, c)| c).map_err(|e| match e {
        Error::Core(msrnn_core::Error::StateFile(s)) => {
            Error::State(s.replace("the saved state", &path.display().to_string()))
        }
        e => e,
    })
}

//! One conversation turn, outside the engine thread: from a checked request (and the session's
//! stored state, if it names one) to a [`Job`]; and from the engine's [`Finished`] back to the
//! response and the stored session. Both run on tokio's blocking pool: reading and writing a state
//! is a few megabytes of copying the engine thread should not wait for.

use std::sync::Arc;
use std::time::Instant;

use msrnn_core::{Capacity, KvFormat, MsrnnState, PolicyRegistry, PolicySpec, Positions, Sampling, StateRecipe};
use msrnn_engine::session::{self, continue_sampling};
use msrnn_engine::{Conversation, Finished, GenConfig, LoadedModel, Message, StopReason, Turn as Said};
use serde_json::json;
use tokio::sync::mpsc::UnboundedSender;

use crate::api::{Prepared, Role, Usage};
use crate::error::ApiError;
use crate::http::App;
use crate::sessions::{unix_now, SessionInfo};
use crate::worker::{Job, Out};
use crate::{ServerConfig, ServerError};

/// What a request gets when it does not say: the server's flags, checked at startup.
#[derive(Debug, Clone)]
pub struct Defaults {
    pub policy: String,
    pub capacity: usize,
    pub positions: Positions,
    pub kv: KvFormat,
    pub prefill_chunk: usize,
}

impl Defaults {
    /// Refuses flags no request could run with (an unknown policy, a capacity above the context).
    pub fn check(cfg: &ServerConfig, model: &LoadedModel, registry: &PolicyRegistry) -> Result<Self, ServerError> {
        let d = Self {
            policy: cfg.policy.clone(),
            capacity: cfg.capacity,
            positions: cfg.positions,
            kv: cfg.kv,
            prefill_chunk: cfg.prefill_chunk.max(1),
        };
        let spec: PolicySpec =
            d.policy.parse().map_err(|e| ServerError::Config(format!("--policy {}: {e}", d.policy)))?;
        StateRecipe::resolve(registry, model.info(), spec, None, d.capacity)
            .map_err(|e| ServerError::Config(format!("--policy {} --capacity {}: {e}", d.policy, d.capacity)))?;
        Ok(d)
    }
}

/// What the handler keeps while the engine runs the turn: enough to store the session after it.
pub struct Turn {
    session: Option<String>,
    spec: PolicySpec,
    capacity: Capacity,
    positions: Positions,
    conv: Option<Conversation>,
    sampling: Sampling,
    draws: u64,
    chat: bool,
    pub resumed: bool,
}

/// The answer as the response reports it.
pub struct Done {
    pub text: String,
    pub finish_reason: &'static str,
    pub usage: Usage,
    pub extra: serde_json::Value,
}

fn engine_error(e: msrnn_engine::Error, param: &str) -> ApiError {
    ApiError::invalid_param(param, e.to_string())
}

/// Builds the job of one turn: the state (fresh, or the session's restored), the prompt (the new
/// messages after what the state already holds), and the generation settings.
pub fn build(
    app: &Arc<App>,
    p: Prepared,
    stored: Option<&[u8]>,
    out: UnboundedSender<Out>,
    arrived: Instant,
) -> Result<(Job, Turn), ApiError> {
    let model = &app.model;
    let info = model.info();
    let tok = model.tokenizer();
    let chunk = app.defaults.prefill_chunk;
    let asked_spec = match &p.ext.policy {
        Some(s) => Some(
            s.parse::<PolicySpec>()
                .map_err(|e| ApiError::invalid_param("msrnn.policy", format!("policy `{s}`: {e}")))?,
        ),
        None => None,
    };
    let asked_positions = match &p.ext.positions {
        Some(s) => Some(s.parse::<Positions>().map_err(|e| ApiError::invalid_param("msrnn.positions", e.to_string()))?),
        None => None,
    };
    let (recipe, state, conv, resumed) = match (stored, p.ext.session.as_deref()) {
        (Some(bytes), Some(id)) => {
            let (state, recipe, conv) = resume(app, id, bytes, asked_spec.as_ref(), p.ext.capacity, asked_positions)?;
            if let Some(c) = &conv {
                if c.chat != p.chat {
                    let (was, use_) =
                        if c.chat { ("a chat", "/v1/chat/completions") } else { ("a completion", "/v1/completions") };
                    return Err(ApiError::invalid_param(
                        "msrnn.session",
                        format!("session `{id}` is {was}; continue it on {use_}"),
                    ));
                }
            }
            (recipe, state, conv, true)
        }
        _ => {
            let spec = match asked_spec {
                Some(s) => s,
                None => app.defaults.policy.parse().map_err(|e| ApiError::internal(format!("--policy: {e}")))?,
            };
            let param = if p.ext.capacity.is_some() { "msrnn.capacity" } else { "msrnn.policy" };
            let recipe = StateRecipe::resolve(&app.registry, info, spec, p.ext.capacity, app.defaults.capacity)
                .map_err(|e| ApiError::invalid_param(param, e.to_string()))?
                .positions(asked_positions.unwrap_or(app.defaults.positions))
                .max_chunk(chunk)
                .kv(app.defaults.kv);
            let state = app
                .registry
                .build_state(model.model(), &recipe)
                .map_err(|e| ApiError::invalid_param(param, e.to_string()))?;
            (recipe, state, None, false)
        }
    };

    let messages: Vec<Message> = p
        .messages
        .iter()
        .map(|(r, t)| {
            let role = match r {
                Role::System => msrnn_engine::Role::System,
                Role::User => msrnn_engine::Role::User,
                Role::Assistant => msrnn_engine::Role::Assistant,
            };
            Message::new(role, t.clone())
        })
        .collect();
    let said = if p.chat { Said::Messages(&messages) } else { Said::Text(&messages[0].content) };
    let where_ = if p.chat { "messages" } else { "prompt" };
    let prompt =
        session::next_turn_prompt(tok, said, conv.as_ref(), p.chat, resumed).map_err(|e| engine_error(e, where_))?;
    if prompt.len() > app.limits.max_prompt_tokens {
        return Err(ApiError::invalid_param(
            where_,
            format!(
                "the prompt is {} tokens, more than this server's limit of {} (--max-prompt-tokens)",
                prompt.len(),
                app.limits.max_prompt_tokens
            ),
        )
        .with_code("context_length_exceeded"));
    }
    let seen = state.tokens_seen() as usize;
    let kv_bytes = match recipe.capacity {
        Capacity::Bounded(_) => state.allocated_kv_bytes(),
        Capacity::Unbounded => {
            // Every token stays: past the trained context the text degrades, and memory grows.
            let total = seen + prompt.len() + p.max_tokens;
            if info.max_context > 0 && total > info.max_context {
                return Err(ApiError::invalid_param(
                    where_,
                    format!(
                        "policy `{}` keeps every token, and {seen} already seen + {} prompt + {} max_tokens = {total} \
                         is past the model's context of {}; use a bounded policy (e.g. \"msrnn\": {{\"policy\": \
                         \"tova\"}}) or fewer tokens",
                        recipe.policy,
                        prompt.len(),
                        p.max_tokens,
                        info.max_context
                    ),
                )
                .with_code("context_length_exceeded"));
            }
            unbounded_bytes(&state, total + chunk)
        }
    };

    let sampling = match p.sampling {
        None => Sampling::Greedy,
        Some((temperature, top_p, seed)) => Sampling::TopP { temperature, top_p, seed },
    };
    let draws = Conversation::draws_for(conv.as_ref(), sampling);
    let cfg = GenConfig {
        max_tokens: p.max_tokens,
        sampling: continue_sampling(sampling, draws),
        stop_tokens: tok.eos_tokens().to_vec(),
        stop_strings: p.stop,
        prefill_chunk: chunk,
    };
    let turn = Turn {
        session: p.ext.session,
        spec: recipe.policy.clone(),
        capacity: recipe.capacity,
        positions: recipe.positions,
        conv,
        sampling,
        draws,
        chat: p.chat,
        resumed,
    };
    Ok((Job { state, prompt, cfg, kv_bytes, out, arrived }, turn))
}

/// The bytes an unbounded state takes for `tokens`: its buffers start at 256 slots and double.
fn unbounded_bytes(state: &MsrnnState, tokens: usize) -> usize {
    let slots = tokens.max(256).next_power_of_two();
    let now = state.allocated_kv_bytes();
    let per_slot = (0..state.num_layers()).map(|i| state.layer(i).num_slots()).max().map_or(0, |n| now / n.max(1));
    per_slot.saturating_mul(slots).max(now)
}

/// The session's state, restored, with the recipe it was built with. A session stored by another
/// model, or asked to go on with another policy, capacity or position mode, is refused with the
/// reason (409).
fn resume(
    app: &App,
    id: &str,
    bytes: &[u8],
    spec: Option<&PolicySpec>,
    capacity: Option<usize>,
    positions: Option<Positions>,
) -> Result<(MsrnnState, StateRecipe, Option<Conversation>), ApiError> {
    let model = &app.model;
    let unreadable = |e: String| ApiError::conflict(format!("session `{id}` cannot be resumed: {e}"));
    let (h, conv) = session::read_bytes(bytes).map_err(|e| unreadable(e.to_string()))?;
    if h.model != model.id {
        return Err(unreadable(format!("it was stored by model `{}`, and this server runs `{}`", h.model, model.id)));
    }
    let differs = |what: &str, saved: String, asked: String| {
        unreadable(format!("it was stored with {what} `{saved}`, and this request asks for `{asked}`"))
    };
    if let Some(s) = spec.filter(|s| **s != h.policy) {
        return Err(differs("policy", h.policy.to_string(), s.to_string()));
    }
    if let Some(c) = capacity.filter(|c| Capacity::Bounded(*c) != h.capacity) {
        return Err(differs("capacity", h.capacity.to_string(), c.to_string()));
    }
    if let Some(p) = positions.filter(|p| *p != h.positions) {
        return Err(differs("positions", h.positions.to_string(), p.to_string()));
    }
    // The server's KV format: a session stored in another is refused by the state-file check.
    let recipe = StateRecipe::new(h.policy.clone(), h.capacity)
        .positions(h.positions)
        .max_chunk(app.defaults.prefill_chunk)
        .kv(app.defaults.kv);
    let mut state = app.registry.build_state(model.model(), &recipe).map_err(|e| unreadable(e.to_string()))?;
    state.load_bytes(bytes, &model.id, &h.policy).map_err(|e| unreadable(e.to_string()))?;
    Ok((state, recipe, conv))
}

/// The response of a finished turn; stores the session first if the turn had one (the `bool`: it
/// did). The store write is durable before the client hears of the answer's end.
pub fn finish(app: &App, turn: Turn, f: Finished) -> Result<(Done, bool), ApiError> {
    let finish_reason = match f.reason {
        StopReason::MaxTokens => "length",
        StopReason::StopToken | StopReason::StopString | StopReason::Cancelled => "stop",
    };
    let usage = Usage::new(f.prompt_tokens, f.tokens.len());
    let mut extra = json!({
        "policy": turn.spec.to_string(),
        "capacity": turn.capacity.to_string(),
        "positions": turn.positions.to_string(),
        "tokens_seen": f.state.tokens_seen(),
        "kv_live_bytes": f.state.live_kv_bytes(),
        "kv_allocated_bytes": f.state.allocated_kv_bytes(),
        "prefill_seconds": f.prefill_time.as_secs_f64(),
        "decode_seconds": f.decode_time.as_secs_f64(),
    });
    let mut saved = false;
    if let Some(id) = &turn.session {
        let conv = Conversation::after(turn.conv.as_ref(), &f, turn.sampling, turn.draws, turn.chat);
        let bytes = session::save_bytes(&f.state, &app.model.id, &turn.spec, &conv)
            .map_err(|e| ApiError::internal(format!("cannot serialise session `{id}`: {e}")))?;
        let info = SessionInfo {
            id: id.clone(),
            bytes: bytes.len() as u64,
            updated: unix_now(),
            model: app.model.id.clone(),
            policy: turn.spec.to_string(),
            capacity: turn.capacity.to_string(),
            positions: turn.positions.to_string(),
            tokens_seen: f.state.tokens_seen(),
            turns: conv.turns,
        };
        app.store.put(&info, &bytes).map_err(|e| ApiError::internal(format!("cannot store session `{id}`: {e}")))?;
        saved = true;
        extra["session"] = json!(id);
        extra["turns"] = json!(conv.turns);
        extra["resumed"] = json!(turn.resumed);
        extra["state_bytes"] = json!(bytes.len());
    }
    Ok((Done { text: f.text, finish_reason, usage, extra }, saved))
}

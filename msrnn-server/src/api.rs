//! The OpenAI-compatible request and response bodies, and the checks that turn a request into what
//! the engine runs. Unknown fields are refused rather than ignored: a client that sends `tools` or
//! `logprobs` should learn that this server does not do them, not get an answer without them.

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::error::ApiError;

/// The bounds every request is checked against (flags of `msrnn serve`).
#[derive(Debug, Clone)]
pub struct Limits {
    /// Largest `max_tokens` a request may ask for.
    pub max_tokens: usize,
    /// `max_tokens` when a chat request gives none.
    pub default_max_tokens: usize,
    /// Longest prompt, in tokens (a resumed session's new turn counts, not what it already saw).
    pub max_prompt_tokens: usize,
    /// Largest request body, in bytes.
    pub max_body: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self { max_tokens: 4096, default_max_tokens: 256, max_prompt_tokens: 8192, max_body: 4 << 20 }
    }
}

/// `stop`: one string or up to four.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Stop {
    One(String),
    Many(Vec<String>),
}

/// msrnn's own request fields, all under `"msrnn": {...}`.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Extension {
    /// Compression policy spec (`tova`, `window+i:sinks=4`); default: the server's `--policy`.
    pub policy: Option<String>,
    /// Tokens kept per layer; default: the server's `--capacity`.
    pub capacity: Option<usize>,
    /// `absolute` or `cache`.
    pub positions: Option<String>,
    /// Resume (or start) this stored conversation; the messages are its next turn.
    pub session: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Content {
    Text(String),
    Parts(Vec<Part>),
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Part {
    #[serde(rename = "type")]
    pub kind: String,
    pub text: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Message {
    pub role: String,
    pub content: Option<Content>,
    pub name: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StreamOptions {
    pub include_usage: Option<bool>,
}

/// `POST /v1/chat/completions`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChatRequest {
    pub model: Option<String>,
    pub messages: Vec<Message>,
    pub max_tokens: Option<u64>,
    pub max_completion_tokens: Option<u64>,
    pub temperature: Option<f64>,
    pub top_p: Option<f64>,
    pub seed: Option<i64>,
    pub stop: Option<Stop>,
    pub stream: Option<bool>,
    pub stream_options: Option<StreamOptions>,
    pub n: Option<u64>,
    pub presence_penalty: Option<f64>,
    pub frequency_penalty: Option<f64>,
    pub logprobs: Option<bool>,
    pub user: Option<String>,
    pub msrnn: Option<Extension>,
}

/// `prompt`: a string, or a list holding one.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Prompt {
    One(String),
    Many(Vec<String>),
}

/// `POST /v1/completions`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CompletionRequest {
    pub model: Option<String>,
    pub prompt: Prompt,
    pub max_tokens: Option<u64>,
    pub temperature: Option<f64>,
    pub top_p: Option<f64>,
    pub seed: Option<i64>,
    pub stop: Option<Stop>,
    pub stream: Option<bool>,
    pub stream_options: Option<StreamOptions>,
    pub n: Option<u64>,
    pub presence_penalty: Option<f64>,
    pub frequency_penalty: Option<f64>,
    pub echo: Option<bool>,
    pub logprobs: Option<Value>,
    pub best_of: Option<u64>,
    pub suffix: Option<String>,
    pub user: Option<String>,
    pub msrnn: Option<Extension>,
}

/// Who said a chat message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    System,
    User,
    Assistant,
}

/// What the engine is asked for: the request checked, defaults filled.
#[derive(Debug, Clone, PartialEq)]
pub struct Prepared {
    pub chat: bool,
    /// Chat: the messages, in order. Completion: one user-less text (`Role::User` with `raw`).
    pub messages: Vec<(Role, String)>,
    pub max_tokens: usize,
    /// `None`: greedy (temperature 0).
    pub sampling: Option<(f64, f64, u64)>,
    pub stop: Vec<String>,
    pub stream: bool,
    pub include_usage: bool,
    pub ext: Extension,
}

/// Parses a JSON body into `T`, naming the field at fault on a type error.
pub fn parse<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::invalid("the request body is empty; send a JSON object"));
    }
    let de = &mut serde_json::Deserializer::from_slice(body);
    match serde_path_to_error::deserialize::<_, T>(de) {
        Ok(v) => Ok(v),
        Err(e) => {
            let path = e.path().to_string();
            let inner = e.into_inner();
            let msg = match inner.classify() {
                serde_json::error::Category::Syntax | serde_json::error::Category::Eof => {
                    format!("the request body is not valid JSON: {inner}")
                }
                _ if path == "." => format!("invalid request: {inner}"),
                _ => format!("invalid request field `{path}`: {inner}"),
            };
            let mut err = ApiError::invalid(msg);
            if path != "." {
                err = err.with_param(path);
            }
            Err(err)
        }
    }
}

fn stops(stop: Option<Stop>) -> Result<Vec<String>, ApiError> {
    let v = match stop {
        None => vec![],
        Some(Stop::One(s)) => vec![s],
        Some(Stop::Many(v)) => v,
    };
    if v.len() > 4 {
        return Err(ApiError::invalid_param("stop", format!("at most 4 stop sequences, got {}", v.len())));
    }
    if v.iter().any(String::is_empty) {
        return Err(ApiError::invalid_param("stop", "a stop sequence is empty"));
    }
    Ok(v)
}

/// Temperature 0 is greedy; otherwise nucleus sampling with `top_p` (default 1) and a seed (default:
/// a fresh one per request).
fn sampling(
    temperature: Option<f64>,
    top_p: Option<f64>,
    seed: Option<i64>,
) -> Result<Option<(f64, f64, u64)>, ApiError> {
    let t = temperature.unwrap_or(1.0);
    if !(0.0..=2.0).contains(&t) {
        return Err(ApiError::invalid_param("temperature", format!("temperature must be in [0, 2], got {t}")));
    }
    let p = top_p.unwrap_or(1.0);
    if !(p > 0.0 && p <= 1.0) {
        return Err(ApiError::invalid_param("top_p", format!("top_p must be in (0, 1], got {p}")));
    }
    if t == 0.0 {
        return Ok(None);
    }
    let seed = seed.map_or_else(fresh_seed, |s| s as u64);
    Ok(Some((t, p, seed)))
}

fn fresh_seed() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64);
    t ^ COUNTER.fetch_add(0x9E37_79B9_7F4A_7C15, Ordering::Relaxed)
}

fn max_tokens(asked: Option<u64>, default: usize, limits: &Limits, param: &str) -> Result<usize, ApiError> {
    match asked {
        None => Ok(default.min(limits.max_tokens)),
        Some(0) => Err(ApiError::invalid_param(param, format!("{param} must be at least 1"))),
        Some(n) if n > limits.max_tokens as u64 => Err(ApiError::invalid_param(
            param,
            format!("{param} {n} is above this server's limit of {} (--max-tokens-limit)", limits.max_tokens),
        )),
        Some(n) => Ok(n as usize),
    }
}

/// Fields OpenAI defines that this server accepts only at their neutral value.
fn unsupported(param: &str, ok: bool, what: &str) -> Result<(), ApiError> {
    if ok {
        Ok(())
    } else {
        Err(ApiError::invalid_param(param, format!("{param}: {what} is not supported by msrnn serve")))
    }
}

fn check_common(n: Option<u64>, presence: Option<f64>, frequency: Option<f64>) -> Result<(), ApiError> {
    unsupported("n", n.is_none_or(|n| n == 1), "more than one choice")?;
    unsupported("presence_penalty", presence.is_none_or(|p| p == 0.0), "a presence penalty")?;
    unsupported("frequency_penalty", frequency.is_none_or(|p| p == 0.0), "a frequency penalty")
}

fn check_ext(ext: Option<Extension>) -> Result<Extension, ApiError> {
    let ext = ext.unwrap_or_default();
    if let Some(s) = &ext.session {
        crate::sessions::check_id(s).map_err(|e| ApiError::invalid_param("msrnn.session", e))?;
    }
    if ext.capacity == Some(0) {
        return Err(ApiError::invalid_param("msrnn.capacity", "capacity must be at least 1 token"));
    }
    if let Some(p) = &ext.positions {
        p.parse::<msrnn_core::Positions>().map_err(|e| ApiError::invalid_param("msrnn.positions", e.to_string()))?;
    }
    Ok(ext)
}

impl ChatRequest {
    pub fn prepare(self, limits: &Limits) -> Result<Prepared, ApiError> {
        check_common(self.n, self.presence_penalty, self.frequency_penalty)?;
        unsupported("logprobs", self.logprobs != Some(true), "logprobs")?;
        if self.max_tokens.is_some() && self.max_completion_tokens.is_some() {
            return Err(ApiError::invalid_param("max_tokens", "give max_tokens or max_completion_tokens, not both"));
        }
        let (asked, param) = match self.max_completion_tokens {
            Some(n) => (Some(n), "max_completion_tokens"),
            None => (self.max_tokens, "max_tokens"),
        };
        let max_tokens = max_tokens(asked, limits.default_max_tokens, limits, param)?;
        if self.messages.is_empty() {
            return Err(ApiError::invalid_param("messages", "messages is empty: send at least one user message"));
        }
        let mut messages = Vec::with_capacity(self.messages.len());
        for (i, m) in self.messages.into_iter().enumerate() {
            let param = format!("messages[{i}]");
            let role = match m.role.as_str() {
                "system" | "developer" => Role::System,
                "user" => Role::User,
                "assistant" => Role::Assistant,
                other => {
                    return Err(ApiError::invalid_param(
                        format!("{param}.role"),
                        format!("role `{other}` is not supported (system, developer, user, assistant)"),
                    ))
                }
            };
            let text = match m.content {
                None => return Err(ApiError::invalid_param(format!("{param}.content"), "content is missing")),
                Some(Content::Text(t)) => t,
                Some(Content::Parts(parts)) => {
                    let mut t = String::new();
                    for (j, p) in parts.into_iter().enumerate() {
                        match (p.kind.as_str(), p.text) {
                            ("text", Some(s)) => t.push_str(&s),
                            (kind, _) => {
                                return Err(ApiError::invalid_param(
                                    format!("{param}.content[{j}]"),
                                    format!("content part of type `{kind}` is not supported (text only, with `text`)"),
                                ))
                            }
                        }
                    }
                    t
                }
            };
            messages.push((role, text));
        }
        if messages.last().map(|m| m.0) != Some(Role::User) {
            return Err(ApiError::invalid_param("messages", "the last message must be the user's"));
        }
        let include_usage = self.stream_options.and_then(|o| o.include_usage).unwrap_or(false);
        Ok(Prepared {
            chat: true,
            messages,
            max_tokens,
            sampling: sampling(self.temperature, self.top_p, self.seed)?,
            stop: stops(self.stop)?,
            stream: self.stream.unwrap_or(false),
            include_usage,
            ext: check_ext(self.msrnn)?,
        })
    }
}

impl CompletionRequest {
    pub fn prepare(self, limits: &Limits) -> Result<Prepared, ApiError> {
        check_common(self.n, self.presence_penalty, self.frequency_penalty)?;
        unsupported("echo", self.echo != Some(true), "echo")?;
        unsupported("logprobs", self.logprobs.as_ref().is_none_or(Value::is_null), "logprobs")?;
        unsupported("best_of", self.best_of.is_none_or(|n| n == 1), "best_of")?;
        unsupported("suffix", self.suffix.as_deref().is_none_or(str::is_empty), "suffix")?;
        let text = match self.prompt {
            Prompt::One(s) => s,
            Prompt::Many(mut v) if v.len() == 1 => v.pop().expect("one"),
            Prompt::Many(v) => {
                return Err(ApiError::invalid_param("prompt", format!("one prompt per request, got {}", v.len())))
            }
        };
        // OpenAI's default for completions is 16 tokens.
        let max_tokens = max_tokens(self.max_tokens, 16, limits, "max_tokens")?;
        Ok(Prepared {
            chat: false,
            messages: vec![(Role::User, text)],
            max_tokens,
            sampling: sampling(self.temperature, self.top_p, self.seed)?,
            stop: stops(self.stop)?,
            stream: self.stream.unwrap_or(false),
            include_usage: self.stream_options.and_then(|o| o.include_usage).unwrap_or(false),
            ext: check_ext(self.msrnn)?,
        })
    }
}

/// `usage` as OpenAI reports it.
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq)]
pub struct Usage {
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    pub total_tokens: usize,
}

impl Usage {
    pub fn new(prompt: usize, completion: usize) -> Self {
        Self { prompt_tokens: prompt, completion_tokens: completion, total_tokens: prompt + completion }
    }
}

/// One response (or stream chunk) body; `choice` is the chat `message`/`delta` or the completion text.
pub struct Reply<'a> {
    pub id: &'a str,
    pub created: u64,
    pub model: &'a str,
    pub chat: bool,
}

impl Reply<'_> {
    /// A whole (non-streamed) answer.
    pub fn full(&self, text: &str, finish: &str, usage: Usage, extra: Value) -> Value {
        let choice = if self.chat {
            json!({"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish, "logprobs": null})
        } else {
            json!({"index": 0, "text": text, "finish_reason": finish, "logprobs": null})
        };
        json!({
            "id": self.id,
            "object": if self.chat { "chat.completion" } else { "text_completion" },
            "created": self.created,
            "model": self.model,
            "choices": [choice],
            "usage": usage,
            "msrnn": extra,
        })
    }

    /// A stream chunk: a piece of text, the opening role (chat), or the finish reason.
    pub fn chunk(&self, text: Option<&str>, first: bool, finish: Option<&str>) -> Value {
        let choice = if self.chat {
            let mut delta = serde_json::Map::new();
            if first {
                delta.insert("role".into(), json!("assistant"));
            }
            if let Some(t) = text {
                delta.insert("content".into(), json!(t));
            }
            json!({"index": 0, "delta": delta, "finish_reason": finish, "logprobs": null})
        } else {
            json!({"index": 0, "text": text.unwrap_or(""), "finish_reason": finish, "logprobs": null})
        };
        json!({
            "id": self.id,
            "object": if self.chat { "chat.completion.chunk" } else { "text_completion" },
            "created": self.created,
            "model": self.model,
            "choices": [choice],
        })
    }

    /// The last chunk when the client asked for `stream_options.include_usage`.
    pub fn usage_chunk(&self, usage: Usage, extra: Value) -> Value {
        json!({
            "id": self.id,
            "object": if self.chat { "chat.completion.chunk" } else { "text_completion" },
            "created": self.created,
            "model": self.model,
            "choices": [],
            "usage": usage,
            "msrnn": extra,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chat(body: &str) -> Result<Prepared, ApiError> {
        parse::<ChatRequest>(body.as_bytes())?.prepare(&Limits::default())
    }

    fn completion(body: &str) -> Result<Prepared, ApiError> {
        parse::<CompletionRequest>(body.as_bytes())?.prepare(&Limits::default())
    }

    #[test]
    fn a_plain_chat_request_gets_defaults() {
        let p = chat(r#"{"model": "x", "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]}"#)
            .unwrap();
        assert!(p.chat);
        assert_eq!(p.messages, vec![(Role::System, "Be brief.".into()), (Role::User, "Hi".into())]);
        assert_eq!(p.max_tokens, 256);
        let (t, top_p, _) = p.sampling.unwrap();
        assert_eq!((t, top_p), (1.0, 1.0));
        assert!(!p.stream);
        assert_eq!(p.ext, Extension::default());
    }

    #[test]
    fn every_field_is_read() {
        let p = chat(
            r#"{"messages": [{"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}],
                "max_completion_tokens": 5, "temperature": 0.5, "top_p": 0.9, "seed": 3, "stop": ["x", "yz"],
                "stream": true, "stream_options": {"include_usage": true}, "n": 1, "user": "u",
                "msrnn": {"policy": "window+i:sinks=4", "capacity": 64, "positions": "cache", "session": "s-1"}}"#,
        )
        .unwrap();
        assert_eq!(p.messages, vec![(Role::User, "ab".into())]);
        assert_eq!(p.max_tokens, 5);
        assert_eq!(p.sampling, Some((0.5, 0.9, 3)));
        assert_eq!(p.stop, ["x", "yz"]);
        assert!(p.stream && p.include_usage);
        assert_eq!(p.ext.policy.as_deref(), Some("window+i:sinks=4"));
        assert_eq!(p.ext.capacity, Some(64));
        assert_eq!(p.ext.session.as_deref(), Some("s-1"));
        // temperature 0 is greedy
        let p = chat(r#"{"messages": [{"role": "user", "content": "a"}], "temperature": 0, "stop": "."}"#).unwrap();
        assert_eq!(p.sampling, None);
        assert_eq!(p.stop, ["."]);
    }

    #[test]
    fn bad_requests_name_the_problem() {
        let cases: &[(&str, &str, Option<&str>)] = &[
            ("{not json", "not valid JSON", None),
            ("", "empty", None),
            ("[1, 2]", "invalid request", None),
            (r#"{"messages": []}"#, "messages is empty", Some("messages")),
            (r#"{"messages": "hi"}"#, "invalid type", Some("messages")),
            (
                r#"{"messages": [{"role": "user", "content": "a"}], "max_tokens": "ten"}"#,
                "invalid type",
                Some("max_tokens"),
            ),
            (
                r#"{"messages": [{"role": "user", "content": "a"}], "max_tokens": -1}"#,
                "invalid value",
                Some("max_tokens"),
            ),
            (
                r#"{"messages": [{"role": "user", "content": "a"}], "max_tokens": 1000000000000}"#,
                "above this server's limit",
                Some("max_tokens"),
            ),
            (r#"{"messages": [{"role": "user", "content": "a"}], "max_tokens": 0}"#, "at least 1", Some("max_tokens")),
            (r#"{"messages": [{"role": "user", "content": "a"}], "tools": []}"#, "unknown field `tools`", None),
            (
                r#"{"messages": [{"role": "user", "content": "a"}], "msrnn": {"polcy": "tova"}}"#,
                "unknown field `polcy`",
                Some("msrnn.polcy"),
            ),
            (
                r#"{"messages": [{"role": "user", "content": "a"}], "msrnn": {"session": "a/b"}}"#,
                "not allowed",
                Some("msrnn.session"),
            ),
            (
                r#"{"messages": [{"role": "user", "content": "a"}], "msrnn": {"positions": "sideways"}}"#,
                "sideways",
                Some("msrnn.positions"),
            ),
            (
                r#"{"messages": [{"role": "user", "content": "a"}], "msrnn": {"capacity": 0}}"#,
                "at least 1",
                Some("msrnn.capacity"),
            ),
            (
                r#"{"messages": [{"role": "user", "content": "a"}], "temperature": 3}"#,
                "temperature",
                Some("temperature"),
            ),
            (r#"{"messages": [{"role": "user", "content": "a"}], "top_p": 0}"#, "top_p", Some("top_p")),
            (r#"{"messages": [{"role": "user", "content": "a"}], "n": 2}"#, "not supported", Some("n")),
            (
                r#"{"messages": [{"role": "user", "content": "a"}], "logprobs": true}"#,
                "not supported",
                Some("logprobs"),
            ),
            (
                r#"{"messages": [{"role": "user", "content": "a"}], "stop": ["a", "b", "c", "d", "e"]}"#,
                "at most 4",
                Some("stop"),
            ),
            (r#"{"messages": [{"role": "user", "content": "a"}], "stop": [""]}"#, "empty", Some("stop")),
            (r#"{"messages": [{"role": "tool", "content": "a"}]}"#, "role `tool`", Some("messages[0].role")),
            (
                r#"{"messages": [{"role": "user", "content": [{"type": "image_url"}]}]}"#,
                "image_url",
                Some("messages[0].content[0]"),
            ),
            (
                r#"{"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]}"#,
                "last message",
                Some("messages"),
            ),
            (
                r#"{"messages": [{"role": "user", "content": "a"}], "max_tokens": 3, "max_completion_tokens": 3}"#,
                "not both",
                Some("max_tokens"),
            ),
        ];
        for (body, needle, param) in cases {
            let e = chat(body).expect_err(body);
            assert_eq!(e.status, axum::http::StatusCode::BAD_REQUEST, "{body}");
            assert!(e.message.contains(needle), "{body}: `{}` lacks `{needle}`", e.message);
            if let Some(p) = param {
                assert_eq!(e.param.as_deref(), Some(*p), "{body}: {}", e.message);
            }
        }
    }

    #[test]
    fn completions_take_one_prompt() {
        let p = completion(r#"{"model": "m", "prompt": "Once upon", "max_tokens": 4, "temperature": 0}"#).unwrap();
        assert!(!p.chat);
        assert_eq!(p.messages, vec![(Role::User, "Once upon".into())]);
        assert_eq!(p.max_tokens, 4);
        assert_eq!(completion(r#"{"prompt": ["a"]}"#).unwrap().max_tokens, 16);
        assert!(completion(r#"{"prompt": ["a", "b"]}"#).unwrap_err().message.contains("one prompt"));
        assert!(completion(r#"{"prompt": "a", "echo": true}"#).unwrap_err().message.contains("echo"));
        assert!(completion(r#"{"prompt": "a", "logprobs": 2}"#).unwrap_err().message.contains("logprobs"));
        assert!(completion(r#"{"prompt": 5}"#).unwrap_err().message.contains("prompt"));
        assert!(completion(r#"{"messages": []}"#).is_err());
    }

    #[test]
    fn replies_have_openai_shapes() {
        let r = Reply { id: "chatcmpl-1", created: 5, model: "m", chat: true };
        let v = r.full("hi", "stop", Usage::new(3, 1), json!({}));
        assert_eq!(v["object"], "chat.completion");
        assert_eq!(v["choices"][0]["message"]["content"], "hi");
        assert_eq!(v["usage"]["total_tokens"], 4);
        let c = r.chunk(Some("h"), true, None);
        assert_eq!(c["choices"][0]["delta"], json!({"role": "assistant", "content": "h"}));
        assert!(c["choices"][0]["finish_reason"].is_null());
        let r = Reply { id: "cmpl-1", created: 5, model: "m", chat: false };
        assert_eq!(r.chunk(None, false, Some("length"))["choices"][0]["text"], "");
        assert_eq!(r.usage_chunk(Usage::new(1, 2), json!(null))["choices"], json!([]));
    }
}

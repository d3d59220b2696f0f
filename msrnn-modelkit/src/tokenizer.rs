//! The tokenizer every family hands out: a `tokenizers` model with its special tokens and chat
//! format. Built here from GGUF metadata for byte-level BPE vocabularies (as llama.cpp does) or read
//! from a Hugging Face `tokenizer.json`; a family with another kind of vocabulary builds the
//! `tokenizers` model itself and wraps it with [`Tokenizer::new`].

use std::collections::HashSet;
use std::path::Path;

use serde_json::{json, Value as Json};

use crate::error::{Error, Result};
use crate::gguf::Metadata;

/// GGUF `tokenizer.ggml.token_type` values (llama.cpp's `llama_token_type`).
const TOKEN_TYPE_CONTROL: i64 = 3;
const TOKEN_TYPE_USER_DEFINED: i64 = 4;

/// The regex Llama 3 splits text with before byte-level BPE (llama.cpp's `llama-bpe`).
const LLAMA3_PATTERN: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// How a chat turn is written: `{turn_start}{role}{role_end}{text}{turn_end}`, and a prompt ends
/// with the assistant's header, `{turn_start}{assistant}{role_end}`. Data rather than a template
/// engine: the formats the adapters meet are all of this shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChatFormat {
    pub turn_start: &'static str,
    pub role_end: &'static str,
    pub turn_end: &'static str,
    /// The answering role's name (`assistant`, Gemma's `model`).
    pub assistant: &'static str,
    /// `false`: no system role; the system text goes at the top of the first user turn.
    pub system_role: bool,
}

impl ChatFormat {
    /// `<|im_start|>role\n...<|im_end|>\n` (SmolLM2, Qwen, ...).
    pub const CHATML: Self = Self {
        turn_start: "<|im_start|>",
        role_end: "\n",
        turn_end: "<|im_end|>\n",
        assistant: "assistant",
        system_role: true,
    };
    /// `<|start_header_id|>role<|end_header_id|>\n\n...<|eot_id|>` (Llama 3).
    pub const LLAMA3: Self = Self {
        turn_start: "<|start_header_id|>",
        role_end: "<|end_header_id|>\n\n",
        turn_end: "<|eot_id|>",
        assistant: "assistant",
        system_role: true,
    };

    /// One whole turn: `{turn_start}{role}{role_end}{text}{turn_end}`.
    pub fn turn(&self, role: &str, text: &str) -> String {
        format!("{}{role}{}{text}{}", self.turn_start, self.role_end, self.turn_end)
    }

    /// Where the answer starts: `{turn_start}{assistant}{role_end}`.
    pub fn assistant_header(&self) -> String {
        format!("{}{}{}", self.turn_start, self.assistant, self.role_end)
    }
}

/// A model's tokenizer with its special tokens.
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    bos: Option<u32>,
    eos: Vec<u32>,
    add_bos: bool,
    chat: Option<ChatFormat>,
    /// Control tokens: not text, so the stream skips them.
    special: HashSet<u32>,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("vocab", &self.inner.get_vocab_size(true))
            .field("bos", &self.bos)
            .field("eos", &self.eos)
            .field("add_bos", &self.add_bos)
            .field("chat", &self.chat)
            .finish()
    }
}

/// Tokens that must follow the last one [`Tokenizer::encode_prefix`] returns before it stops
/// reading: far from where the text was cut, tokens no longer depend on what follows.
pub const PREFIX_MARGIN: usize = 64;

/// The first tokens of a text and how much of it was read for them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TextPrefix {
    pub tokens: Vec<u32>,
    /// Bytes of the text read.
    pub bytes_read: u64,
    /// Whether the whole text was read (it may then hold fewer tokens than asked for).
    pub whole: bool,
}

fn tk_err(e: impl std::fmt::Display) -> Error {
    Error::Tokenizer(e.to_string())
}

impl Tokenizer {
    /// Token ids for `text`. Special-token strings in the text (`<|im_start|>`) become their ids.
    /// With `add_bos`, the model's BOS is prepended if it has one.
    pub fn encode(&self, text: &str, add_bos: bool) -> Result<Vec<u32>> {
        let enc = self.inner.encode(text, false).map_err(tk_err)?;
        let mut ids = Vec::with_capacity(enc.len() + 1);
        if add_bos {
            ids.extend(self.bos);
        }
        ids.extend_from_slice(enc.get_ids());
        Ok(ids)
    }

    /// The first `n` tokens of the UTF-8 text `r` yields, reading only as much of it as they need
    /// (a 10 GB file asked for 2,048 tokens is read a few kilobytes at a time, not loaded whole).
    ///
    /// The text read so far is tokenized again each time the read doubles, and reading stops once
    /// [`PREFIX_MARGIN`] tokens follow the `n`th: tokenizers here split words at whitespace and
    /// punctuation, so tokens that far from the cut are those the whole text would give. Fewer
    /// than `n` tokens come back when the text ends first.
    pub fn encode_prefix(&self, mut r: impl std::io::Read, n: usize, add_bos: bool) -> Result<TextPrefix> {
        use std::io::Read;
        let mut buf: Vec<u8> = Vec::new();
        // A token is a few bytes of English text: start near what `n` tokens take, then double.
        let mut want = n.saturating_mul(8).clamp(1 << 12, 1 << 26);
        loop {
            let before = buf.len();
            let mut chunk = (&mut r).take(want.saturating_sub(before) as u64);
            chunk.read_to_end(&mut buf).map_err(|e| Error::Tokenizer(format!("cannot read the text: {e}")))?;
            let eof = buf.len() < want;
            let text = match std::str::from_utf8(&buf) {
                Ok(t) => t,
                // A character cut in two by the read: decode up to it, the rest comes with the next read.
                Err(e) if e.error_len().is_none() && !eof => {
                    std::str::from_utf8(&buf[..e.valid_up_to()]).expect("valid")
                }
                Err(e) => {
                    return Err(Error::Tokenizer(format!(
                        "the text is not UTF-8 (bad bytes at offset {})",
                        e.valid_up_to()
                    )))
                }
            };
            let mut ids = self.encode(text, add_bos)?;
            if eof || ids.len() >= n.saturating_add(PREFIX_MARGIN) {
                ids.truncate(n);
                return Ok(TextPrefix { tokens: ids, bytes_read: buf.len() as u64, whole: eof });
            }
            want = want.saturating_mul(2);
        }
    }

    /// The text of `ids`, special tokens included (the exact inverse of [`Tokenizer::encode`]).
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.inner.decode(ids, false).map_err(tk_err)
    }

    /// The prompt for one user turn, ending where the assistant's answer starts. Raw `user` text
    /// when the vocabulary has no chat tokens.
    pub fn chat_prompt(&self, user: &str) -> String {
        self.chat_prompt_with_system(None, user)
    }

    /// Like [`Tokenizer::chat_prompt`], with an optional system turn first (or, for formats with
    /// no system role, the system text at the top of the user turn).
    pub fn chat_prompt_with_system(&self, system: Option<&str>, user: &str) -> String {
        let folded = || match system {
            Some(s) => format!("{s}\n\n{user}"),
            None => user.to_string(),
        };
        let Some(f) = &self.chat else { return folded() };
        let (sys, user) = match system {
            Some(s) if f.system_role => (f.turn("system", s), user.to_string()),
            _ => (String::new(), folded()),
        };
        format!("{sys}{}{}{}{}", f.turn("user", &user), f.turn_start, f.assistant, f.role_end)
    }

    /// The chat format, when the vocabulary has one.
    pub fn chat_format(&self) -> Option<&ChatFormat> {
        self.chat.as_ref()
    }

    /// Whether the tokenizer has a chat format [`Tokenizer::chat_prompt`] applies.
    pub fn has_chat_template(&self) -> bool {
        self.chat.is_some()
    }

    /// Tokens that end a turn: the file's EOS and the chat format's end-of-turn token.
    pub fn eos_tokens(&self) -> &[u32] {
        &self.eos
    }

    pub fn bos_token(&self) -> Option<u32> {
        self.bos
    }

    /// Whether the model's files ask for a BOS at the start of a sequence (`add_bos_token`).
    pub fn wants_bos(&self) -> bool {
        self.add_bos && self.bos.is_some()
    }

    /// Whether `id` is a control token (not text).
    pub fn is_special(&self, id: u32) -> bool {
        self.special.contains(&id)
    }

    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    pub fn inner(&self) -> &tokenizers::Tokenizer {
        &self.inner
    }

    /// A tokenizer from its parts: the `tokenizers` model built by a family adapter, BOS, the
    /// tokens that end generation (deduplicated here, order kept), whether sequences start with BOS,
    /// the chat format if the model has one, and the control tokens (not text when streaming).
    pub fn new(
        inner: tokenizers::Tokenizer,
        bos: Option<u32>,
        eos: Vec<u32>,
        add_bos: bool,
        chat: Option<ChatFormat>,
        special: HashSet<u32>,
    ) -> Self {
        let mut seen = HashSet::new();
        let eos = eos.into_iter().filter(|e| seen.insert(*e)).collect();
        Self { inner, bos, eos, add_bos, chat, special }
    }

    /// Finishes a byte-level BPE tokenizer: the chat format its vocabulary supports (ChatML or
    /// Llama 3 turn markers), whose end-of-turn token also ends generation.
    fn assemble(
        inner: tokenizers::Tokenizer,
        bos: Option<u32>,
        mut eos: Vec<u32>,
        add_bos: bool,
        special: HashSet<u32>,
    ) -> Self {
        let id = |s: &str| inner.token_to_id(s);
        let (chat, turn_end) = if let (Some(_), Some(end)) = (id("<|im_start|>"), id("<|im_end|>")) {
            (Some(ChatFormat::CHATML), Some(end))
        } else if let (Some(_), Some(_), Some(end)) =
            (id("<|start_header_id|>"), id("<|end_header_id|>"), id("<|eot_id|>"))
        {
            (Some(ChatFormat::LLAMA3), Some(end))
        } else {
            (None, None)
        };
        eos.extend(turn_end);
        Self::new(inner, bos, eos, add_bos, chat, special)
    }

    /// Builds the tokenizer llama.cpp would from a GGUF file's `tokenizer.ggml.*` metadata, for
    /// byte-level BPE vocabularies (`tokenizer.ggml.model = gpt2`).
    pub fn from_gguf(md: &Metadata<'_>) -> Result<Self> {
        let path = md.path;
        let model = match md.opt_str("tokenizer.ggml.model")? {
            Some(m) => m,
            None => {
                return Err(Error::MissingTokenizer {
                    path: path.into(),
                    reason: "the file has no `tokenizer.ggml.model` metadata".into(),
                })
            }
        };
        if model != "gpt2" {
            return Err(Error::Unsupported {
                path: path.into(),
                what: format!("tokenizer model `{model}` (only byte-level BPE, `gpt2`, is built from GGUF metadata)"),
            });
        }
        let tokens = md
            .opt_strings("tokenizer.ggml.tokens")?
            .ok_or_else(|| Error::MissingMetadata { path: path.into(), key: "tokenizer.ggml.tokens".into() })?;
        let merges = md.opt_strings("tokenizer.ggml.merges")?.unwrap_or_default();
        let types = md.opt_ints("tokenizer.ggml.token_type")?.unwrap_or_else(|| vec![1; tokens.len()]);
        if types.len() != tokens.len() {
            return Err(Error::BadMetadata {
                path: path.into(),
                key: "tokenizer.ggml.token_type".into(),
                reason: format!("{} types for {} tokens", types.len(), tokens.len()),
            });
        }
        let pre = md.opt_str("tokenizer.ggml.pre")?.unwrap_or("default");
        let byte_level = |use_regex: bool| json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": use_regex});
        let (pre_tokenizer, ignore_merges) = match pre {
            "default" | "gpt2" | "gpt-2" => (byte_level(true), false),
            // llama.cpp's `smollm`: every digit on its own, then the GPT-2 pattern.
            "smollm" => (
                json!({"type": "Sequence", "pretokenizers": [{"type": "Digits", "individual_digits": true}, byte_level(true)]}),
                false,
            ),
            "llama-bpe" | "llama3" => (
                json!({"type": "Sequence", "pretokenizers": [
                    {"type": "Split", "pattern": {"Regex": LLAMA3_PATTERN}, "behavior": "Isolated", "invert": false},
                    byte_level(false)]}),
                true,
            ),
            other => {
                return Err(Error::Unsupported {
                    path: path.into(),
                    what: format!("pre-tokenizer `{other}` (known: smollm, gpt2, default, llama-bpe)"),
                })
            }
        };
        let vocab: serde_json::Map<String, Json> =
            tokens.iter().enumerate().map(|(i, t)| (t.to_string(), json!(i as u32))).collect();
        let mut merge_pairs = Vec::with_capacity(merges.len());
        for m in &merges {
            // llama.cpp splits at the first space after the first character.
            let split = m.char_indices().skip(1).find(|&(_, c)| c == ' ').map(|(i, _)| i);
            match split {
                Some(i) => merge_pairs.push(json!([&m[..i], &m[i + 1..]])),
                None => {
                    return Err(Error::BadMetadata {
                        path: path.into(),
                        key: "tokenizer.ggml.merges".into(),
                        reason: format!("merge `{m}` has no space"),
                    })
                }
            }
        }
        let mut special = HashSet::new();
        let mut added = Vec::new();
        for (i, (t, &ty)) in tokens.iter().zip(&types).enumerate() {
            if ty == TOKEN_TYPE_CONTROL || ty == TOKEN_TYPE_USER_DEFINED {
                let is_special = ty == TOKEN_TYPE_CONTROL;
                if is_special {
                    special.insert(i as u32);
                }
                added.push(json!({"id": i, "content": t, "single_word": false, "lstrip": false, "rstrip": false,
                                  "normalized": false, "special": is_special}));
            }
        }
        let spec = json!({
            "version": "1.0",
            "truncation": null,
            "padding": null,
            "added_tokens": added,
            "normalizer": null,
            "pre_tokenizer": pre_tokenizer,
            "post_processor": null,
            "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
            "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
                      "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false,
                      "ignore_merges": ignore_merges, "vocab": vocab, "merges": merge_pairs},
        });
        let inner: tokenizers::Tokenizer = spec.to_string().parse().map_err(|e| Error::BadMetadata {
            path: path.into(),
            key: "tokenizer.ggml.*".into(),
            reason: format!("{e}"),
        })?;
        let bos = md.opt_u32("tokenizer.ggml.bos_token_id")?;
        let mut eos: Vec<u32> = md.opt_u32("tokenizer.ggml.eos_token_id")?.into_iter().collect();
        eos.extend(md.opt_u32("tokenizer.ggml.eot_token_id")?);
        let add_bos = md.opt_bool("tokenizer.ggml.add_bos_token")?.unwrap_or(false);
        for id in bos.iter().chain(&eos) {
            if *id as usize >= tokens.len() {
                return Err(Error::BadMetadata {
                    path: path.into(),
                    key: "tokenizer.ggml.bos/eos_token_id".into(),
                    reason: format!("token id {id} is outside the vocabulary ({})", tokens.len()),
                });
            }
        }
        Ok(Self::assemble(inner, bos, eos, add_bos, special))
    }

    /// Reads a Hugging Face directory's `tokenizer.json`, with BOS/EOS from `config.json`,
    /// `generation_config.json` and `tokenizer_config.json` when present.
    pub fn from_hf_dir(dir: &Path) -> Result<Self> {
        let file = dir.join("tokenizer.json");
        if !file.is_file() {
            return Err(Error::MissingTokenizer {
                path: file,
                reason: "the model directory has no tokenizer.json".into(),
            });
        }
        let inner = tokenizers::Tokenizer::from_file(&file)
            .map_err(|e| Error::MissingTokenizer { path: file.clone(), reason: format!("cannot parse: {e}") })?;
        let read_json = |name: &str| -> Option<Json> {
            let text = std::fs::read_to_string(dir.join(name)).ok()?;
            serde_json::from_str(&text).ok()
        };
        let model_cfg = read_json("config.json");
        let tok_cfg = read_json("tokenizer_config.json");
        let gen_cfg = read_json("generation_config.json");
        // `eos_token_id` is one id or a list.
        let ids = |v: Option<&Json>| -> Vec<u32> {
            match v {
                Some(Json::Array(a)) => a.iter().filter_map(|x| x.as_u64()).map(|x| x as u32).collect(),
                Some(x) => x.as_u64().map(|x| x as u32).into_iter().collect(),
                None => Vec::new(),
            }
        };
        // A token given by its text (`"bos_token": "<s>"` or `{"content": "<s>"}`).
        let token_id = |v: Option<&Json>| -> Option<u32> {
            let s = match v? {
                Json::String(s) => s.as_str(),
                Json::Object(o) => o.get("content")?.as_str()?,
                _ => return None,
            };
            inner.token_to_id(s)
        };
        let bos_id = |c: &Option<Json>| c.as_ref().and_then(|c| c.get("bos_token_id")?.as_u64()).map(|x| x as u32);
        let bos = bos_id(&model_cfg)
            .or_else(|| bos_id(&gen_cfg))
            .or_else(|| token_id(tok_cfg.as_ref().and_then(|t| t.get("bos_token"))));
        let mut eos = ids(model_cfg.as_ref().and_then(|c| c.get("eos_token_id")));
        eos.extend(ids(gen_cfg.as_ref().and_then(|g| g.get("eos_token_id"))));
        eos.extend(token_id(tok_cfg.as_ref().and_then(|t| t.get("eos_token"))));
        // Whether a BOS is wanted: the tokenizer's own post-processor adds it, or the config says so.
        let add_bos = match tok_cfg.as_ref().and_then(|t| t.get("add_bos_token")?.as_bool()) {
            Some(b) => b,
            None => match (bos, inner.encode("a", true)) {
                (Some(b), Ok(enc)) => enc.get_ids().first() == Some(&b),
                _ => false,
            },
        };
        let special: HashSet<u32> =
            inner.get_added_tokens_decoder().iter().filter(|(_, t)| t.special).map(|(&id, _)| id).collect();
        Ok(Self::assemble(inner, bos, eos, add_bos, special))
    }
}

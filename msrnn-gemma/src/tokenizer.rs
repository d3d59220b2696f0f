//! Gemma's tokenizer, rebuilt from GGUF metadata the way llama.cpp reads it, as an
//! [`msrnn_modelkit::Tokenizer`] (which does the rest: BOS, chat prompts, streaming).
//!
//! The file holds a SentencePiece BPE vocabulary (`tokenizer.ggml.model = llama`): 262,144 tokens
//! with scores and types, but no merge list. llama.cpp's algorithm starts from single characters
//! and repeatedly merges the adjacent pair whose concatenation is a token with the highest score;
//! characters left over that are no token fall back to `<0xXX>` byte tokens. A BPE model does the
//! same when its merges are every split of a token into two tokens, ranked by that token's score
//! (scores are distinct, so the ranking is total). Around it:
//! - normalizer: spaces become `▁` (U+2581); no dummy prefix (`add_space_prefix = false`);
//! - no pre-tokenizer: SentencePiece sees the whole text as one piece;
//! - user-defined tokens (runs of spaces, newlines and tabs, HTML tags) are matched in the raw text
//!   before anything else, as llama.cpp's special-token partition does; control tokens
//!   (`<start_of_turn>`, ...) too, as special tokens;
//! - BOS is added by [`Tokenizer::encode`], not by a post-processor.
//!
//! A Unigram model over the same scores would be wrong: Gemma's SentencePiece model is BPE.

use std::collections::{HashMap, HashSet};

use tokenizers::decoders::byte_fallback::ByteFallback;
use tokenizers::decoders::fuse::Fuse;
use tokenizers::decoders::sequence::Sequence as DecoderSequence;
use tokenizers::models::bpe::{Vocab, BPE};
use tokenizers::normalizers::Replace;
use tokenizers::{AddedToken, DecoderWrapper, NormalizerWrapper};

use msrnn_modelkit::gguf::Metadata;
use msrnn_modelkit::{ChatFormat, Error, Result, Tokenizer};

/// GGUF `tokenizer.ggml.token_type` values (llama.cpp's `llama_token_type`).
const TYPE_NORMAL: i64 = 1;
const TYPE_UNKNOWN: i64 = 2;
const TYPE_CONTROL: i64 = 3;
const TYPE_USER_DEFINED: i64 = 4;

const SPACE: &str = "\u{2581}";
const TURN_START: &str = "<start_of_turn>";
const TURN_END: &str = "<end_of_turn>";

/// Gemma's turns: `<start_of_turn>user\n...<end_of_turn>\n<start_of_turn>model\n`; no system
/// role (its template puts the system text at the top of the first user turn).
pub const CHAT_FORMAT: ChatFormat = ChatFormat {
    turn_start: TURN_START,
    role_end: "\n",
    turn_end: "<end_of_turn>\n",
    assistant: "model",
    system_role: false,
};

fn tk_err(e: impl std::fmt::Display) -> Error {
    Error::Tokenizer(e.to_string())
}

/// Builds the tokenizer from `tokenizer.ggml.*` metadata.
pub(crate) fn from_gguf(md: &Metadata<'_>) -> Result<Tokenizer> {
    let path = md.path;
    let unsupported = |what: String| Error::Unsupported { path: path.into(), what };
    match md.opt_str("tokenizer.ggml.model")? {
        Some("llama") => {}
        Some(other) => {
            return Err(unsupported(format!("tokenizer model `{other}` (Gemma uses SentencePiece BPE, `llama`)")))
        }
        None => {
            return Err(Error::MissingTokenizer {
                path: path.into(),
                reason: "the file has no `tokenizer.ggml.model` metadata".into(),
            })
        }
    }
    if md.opt_bool("tokenizer.ggml.add_space_prefix")? == Some(true) {
        return Err(unsupported("`tokenizer.ggml.add_space_prefix = true` (Gemma 3 files set it false)".into()));
    }
    let tokens = md.opt_strings("tokenizer.ggml.tokens")?.ok_or_else(|| md.missing("tokenizer.ggml.tokens"))?;
    let scores = md.opt_floats("tokenizer.ggml.scores")?.ok_or_else(|| md.missing("tokenizer.ggml.scores"))?;
    let types = md.opt_ints("tokenizer.ggml.token_type")?.unwrap_or_else(|| vec![TYPE_NORMAL; tokens.len()]);
    for (key, n) in [("tokenizer.ggml.scores", scores.len()), ("tokenizer.ggml.token_type", types.len())] {
        if n != tokens.len() {
            return Err(md.bad(key, format!("{n} entries for {} tokens", tokens.len())));
        }
    }
    if tokens.len() > u32::MAX as usize {
        return Err(md.bad("tokenizer.ggml.tokens", format!("{} tokens do not fit u32 ids", tokens.len())));
    }

    let mut vocab = Vocab::with_capacity(tokens.len());
    for (i, t) in tokens.iter().enumerate() {
        if vocab.insert(t.to_string(), i as u32).is_some() {
            return Err(md.bad("tokenizer.ggml.tokens", format!("token `{t}` appears twice")));
        }
    }
    let merges = merges_from_scores(&tokens, &scores, &types);
    let mut bpe = BPE::builder().vocab_and_merges(vocab, merges).byte_fallback(true);
    if tokens.contains(&"<unk>") {
        bpe = bpe.unk_token("<unk>".into()).fuse_unk(true);
    }
    let bpe = bpe.build().map_err(|e| md.bad("tokenizer.ggml.tokens", format!("cannot build the BPE model: {e}")))?;

    let mut inner = tokenizers::Tokenizer::new(bpe);
    let space = Replace::new(" ", SPACE).map_err(tk_err)?;
    inner.with_normalizer(Some(NormalizerWrapper::from(space))).map_err(tk_err)?;
    let unspace = Replace::new(SPACE, " ").map_err(tk_err)?;
    inner.with_decoder(Some(DecoderWrapper::from(DecoderSequence::new(vec![
        DecoderWrapper::from(unspace),
        DecoderWrapper::from(ByteFallback::new()),
        DecoderWrapper::from(Fuse::new()),
    ]))));
    let mut special = HashSet::new();
    let mut control = Vec::new();
    let mut user = Vec::new();
    for (i, (t, &ty)) in tokens.iter().zip(&types).enumerate() {
        if t.is_empty() {
            continue;
        }
        match ty {
            TYPE_CONTROL | TYPE_UNKNOWN => {
                special.insert(i as u32);
                control.push(AddedToken::from(t.to_string(), true).normalized(false));
            }
            // Matched in the raw text (spaces, not `▁`), and plain text when decoded.
            TYPE_USER_DEFINED => user.push(AddedToken::from(t.to_string(), false).normalized(false)),
            _ => {}
        }
    }
    inner.add_special_tokens(control).map_err(tk_err)?;
    inner.add_tokens(user).map_err(tk_err)?;

    let id_of = |s: &str| tokens.iter().position(|t| *t == s).map(|i| i as u32);
    let bos = md.opt_u32("tokenizer.ggml.bos_token_id")?;
    let mut eos: Vec<u32> = md.opt_u32("tokenizer.ggml.eos_token_id")?.into_iter().collect();
    eos.extend(md.opt_u32("tokenizer.ggml.eot_token_id")?);
    eos.extend(id_of(TURN_END));
    for id in bos.iter().chain(&eos) {
        if *id as usize >= tokens.len() {
            return Err(md.bad(
                "tokenizer.ggml.bos_token_id/eos_token_id",
                format!("token id {id} is outside the vocabulary ({})", tokens.len()),
            ));
        }
    }
    // llama.cpp adds a BOS for SentencePiece vocabularies unless the file says otherwise.
    let add_bos = md.opt_bool("tokenizer.ggml.add_bos_token")?.unwrap_or(true);
    let template = md.opt_str("tokenizer.chat_template")?.unwrap_or("");
    // Only a file with Gemma's template (instruction-tuned models) gets chat prompts: the base
    // model has none, and turn markers would only confuse it.
    let chat = template.contains(TURN_START) && id_of(TURN_START).is_some() && id_of(TURN_END).is_some();
    Ok(Tokenizer::new(inner, bos, eos, add_bos, chat.then_some(CHAT_FORMAT), special))
}

/// Every split of a normal token into two tokens, ranked by the whole token's score (highest
/// first; ties, which Gemma's distinct scores do not have, by token id, then split point).
fn merges_from_scores(tokens: &[&str], scores: &[f32], types: &[i64]) -> Vec<(String, String)> {
    let index: HashMap<&str, u32> = tokens.iter().enumerate().map(|(i, t)| (*t, i as u32)).collect();
    let mut ranked: Vec<(f32, u32, usize, &str, &str)> = Vec::new();
    for (i, t) in tokens.iter().enumerate() {
        if types[i] != TYPE_NORMAL {
            continue;
        }
        for (k, _) in t.char_indices().skip(1) {
            let (a, b) = t.split_at(k);
            if index.contains_key(a) && index.contains_key(b) {
                ranked.push((scores[i], i as u32, k, a, b));
            }
        }
    }
    ranked.sort_by(|x, y| y.0.total_cmp(&x.0).then(x.1.cmp(&y.1)).then(x.2.cmp(&y.2)));
    ranked.into_iter().map(|(_, _, _, a, b)| (a.to_string(), b.to_string())).collect()
}

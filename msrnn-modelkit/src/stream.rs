//! Streaming detokenization: text out as soon as it is complete.

use crate::tokenizer::Tokenizer;

/// Incremental detokenizer that holds no tokenizer (each call is handed one), so a long-lived
/// owner (the engine's sequences) can keep it beside an `Arc` of the model. [`Detokenizer::push`]
/// returns text only once it is complete UTF-8 (a byte-level token may carry half a character).
/// Control tokens (EOS, chat markers) are not text and are skipped.
#[derive(Debug, Clone, Default)]
pub struct Detokenizer {
    ids: Vec<u32>,
    /// Start of the tokens whose text is not final yet.
    prev: usize,
    /// End of the tokens whose text was already returned.
    cur: usize,
}

impl Detokenizer {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a token; returns the text completed by it, if any.
    pub fn push(&mut self, tok: &Tokenizer, id: u32) -> Option<String> {
        if tok.is_special(id) {
            return None;
        }
        let before = tok.decode(&self.ids[self.prev..self.cur]).ok()?;
        self.ids.push(id);
        let now = match tok.decode(&self.ids[self.prev..]) {
            Ok(t) => t,
            Err(e) => {
                tracing::debug!(id, error = %e, "token stream cannot decode");
                return None;
            }
        };
        if now.len() > before.len() && !now.ends_with('\u{FFFD}') {
            if let Some(new) = now.strip_prefix(before.as_str()) {
                let new = new.to_string();
                self.prev = self.cur;
                self.cur = self.ids.len();
                return Some(new);
            }
        }
        None
    }

    /// Whatever text is still held back (an incomplete character at the end, decoded lossily).
    pub fn finish(&mut self, tok: &Tokenizer) -> Option<String> {
        let before = tok.decode(&self.ids[self.prev..self.cur]).ok()?;
        let now = tok.decode(&self.ids[self.prev..]).ok()?;
        self.prev = self.ids.len();
        self.cur = self.ids.len();
        match now.strip_prefix(before.as_str()) {
            Some(rest) if !rest.is_empty() => Some(rest.to_string()),
            _ => None,
        }
    }

    /// Every token pushed so far (control tokens excluded).
    pub fn tokens(&self) -> &[u32] {
        &self.ids
    }
}

/// A [`Detokenizer`] bound to a borrowed tokenizer, for callers that stream within one scope.
pub struct TokenStream<'a> {
    tok: &'a Tokenizer,
    inner: Detokenizer,
}

impl<'a> TokenStream<'a> {
    pub fn new(tok: &'a Tokenizer) -> Self {
        Self { tok, inner: Detokenizer::new() }
    }

    /// Adds a token; returns the text completed by it, if any.
    pub fn push(&mut self, id: u32) -> Option<String> {
        self.inner.push(self.tok, id)
    }

    /// Whatever text is still held back (an incomplete character at the end, decoded lossily).
    pub fn finish(&mut self) -> Option<String> {
        self.inner.finish(self.tok)
    }

    /// Every token pushed so far (control tokens excluded).
    pub fn tokens(&self) -> &[u32] {
        self.inner.tokens()
    }
}

//! Streaming detokenization: text out as soon as it is complete.

use crate::tokenizer::Tokenizer;

/// Incremental detokenizer for streaming generation: [`TokenStream::push`] returns text only once
/// it is complete UTF-8 (a byte-level token may carry half a character). Control tokens (EOS,
/// chat markers) are not text and are skipped.
pub struct TokenStream<'a> {
    tok: &'a Tokenizer,
    ids: Vec<u32>,
    /// Start of the tokens whose text is not final yet.
    prev: usize,
    /// End of the tokens whose text was already returned.
    cur: usize,
}

impl<'a> TokenStream<'a> {
    pub fn new(tok: &'a Tokenizer) -> Self {
        Self { tok, ids: Vec::new(), prev: 0, cur: 0 }
    }

    /// Adds a token; returns the text completed by it, if any.
    pub fn push(&mut self, id: u32) -> Option<String> {
        if self.tok.is_special(id) {
            return None;
        }
        let before = self.tok.decode(&self.ids[self.prev..self.cur]).ok()?;
        self.ids.push(id);
        let now = match self.tok.decode(&self.ids[self.prev..]) {
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
    pub fn finish(&mut self) -> Option<String> {
        let before = self.tok.decode(&self.ids[self.prev..self.cur]).ok()?;
        let now = self.tok.decode(&self.ids[self.prev..]).ok()?;
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

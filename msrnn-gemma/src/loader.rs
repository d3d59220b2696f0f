//! Opening a Gemma 3 GGUF file: its header, config, tokenizer and weights.

use std::path::Path;

use msrnn_llama::gguf::{self, Metadata};
use msrnn_llama::{Error, GgufWeights, LoadOptions, Result, Tokenizer};

use crate::config::{GemmaConfig, ARCH};
use crate::model::Gemma;

pub(crate) fn load(path: &Path, opts: &LoadOptions) -> Result<Gemma> {
    let _span = tracing::info_span!("load", path = %path.display(), weights = %opts.weights).entered();
    let (file, content) = gguf::open(path, Some(ARCH))?;
    let cfg = GemmaConfig::from_gguf(path, &content)?;
    let tokenizer = crate::tokenizer::from_gguf(&Metadata { path, ct: &content })?;
    if tokenizer.vocab_size() != cfg.vocab_size {
        return Err(Error::Config {
            path: path.into(),
            reason: format!(
                "the tokenizer has {} tokens, the embedding {} rows",
                tokenizer.vocab_size(),
                cfg.vocab_size
            ),
        });
    }
    let weights = GgufWeights::new(path, content, file, opts)?;
    Gemma::from_weights(&weights, cfg, tokenizer)
}

/// Reads only the tokenizer of a Gemma 3 GGUF file (no weights).
pub(crate) fn load_tokenizer(path: &Path) -> Result<Tokenizer> {
    let (_, content) = gguf::open(path, Some(ARCH))?;
    crate::tokenizer::from_gguf(&Metadata { path, ct: &content })
}

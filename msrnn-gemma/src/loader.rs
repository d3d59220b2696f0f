//! Opening a Gemma 3 GGUF file (its header, config, tokenizer and weights), and the family's entry
//! in the registry the CLI loads through.

use std::path::Path;

use msrnn_modelkit::gguf::{self, Metadata};
use msrnn_modelkit::{Error, Family, LoadOptions, Model, Result, Tokenizer, Weights};

use crate::config::{GemmaConfig, ARCH};
use crate::model::Gemma;

msrnn_modelkit::inventory::submit! {
    Family { name: ARCH, architectures: &[ARCH], model_types: &[], load: load_boxed, baseline: None }
}

fn load_boxed(path: &Path, opts: &LoadOptions) -> Result<Box<dyn Model>> {
    Ok(Box::new(load(path, opts)?))
}

pub(crate) fn load(path: &Path, opts: &LoadOptions) -> Result<Gemma> {
    let _span = tracing::info_span!("load", path = %path.display(), weights = %opts.weights).entered();
    let (file, content) = gguf::open(path, Some(ARCH))?;
    let cfg = GemmaConfig::from_gguf(path, &content)?;
    let tokenizer = crate::tokenizer::from_gguf(&Metadata { path, ct: &content })?;
    if tokenizer.vocab_size() != cfg.decoder.vocab_size {
        return Err(Error::Config {
            path: path.into(),
            reason: format!(
                "the tokenizer has {} tokens, the embedding {} rows",
                tokenizer.vocab_size(),
                cfg.decoder.vocab_size
            ),
        });
    }
    Gemma::from_weights(&Weights::gguf(path, content, file, opts)?, cfg, tokenizer)
}

/// Reads only the tokenizer of a Gemma 3 GGUF file (no weights).
pub(crate) fn load_tokenizer(path: &Path) -> Result<Tokenizer> {
    let (_, content) = gguf::open(path, Some(ARCH))?;
    crate::tokenizer::from_gguf(&Metadata { path, ct: &content })
}

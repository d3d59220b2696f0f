//! Opening a Gemma 3 GGUF file: magic, header, architecture.

use std::fs::File;
use std::io::{BufReader, Read, Seek, SeekFrom};
use std::path::Path;

use candle_core::quantized::gguf_file;

use crate::config::{GemmaConfig, ARCH};
use crate::error::{Error, Result};
use crate::meta::Metadata;
use crate::model::Gemma;
use crate::tokenizer::Tokenizer;
use crate::weights::GgufWeights;
use msrnn_llama::LoadOptions;

const GGUF_MAGIC: &[u8; 4] = b"GGUF";

/// Opens `path`, checks the magic and architecture, and parses the header.
pub(crate) fn open(path: &Path) -> Result<(File, gguf_file::Content)> {
    let meta = std::fs::metadata(path).map_err(|e| Error::io(path, e))?;
    if meta.is_dir() {
        return Err(Error::NotGguf { path: path.into(), reason: "it is a directory".into() });
    }
    let mut file = File::open(path).map_err(|e| Error::io(path, e))?;
    let mut magic = [0u8; 4];
    let mut n = 0;
    while n < 4 {
        match file.read(&mut magic[n..]).map_err(|e| Error::io(path, e))? {
            0 => break,
            k => n += k,
        }
    }
    if n < 4 || &magic != GGUF_MAGIC {
        let reason = if n == 0 {
            "the file is empty".into()
        } else {
            format!("it starts with bytes {:02x?}, not the GGUF magic", &magic[..n])
        };
        return Err(Error::NotGguf { path: path.into(), reason });
    }
    file.seek(SeekFrom::Start(0)).map_err(|e| Error::io(path, e))?;
    let content = gguf_file::Content::read(&mut BufReader::new(&mut file)).map_err(|e| Error::NotGguf {
        path: path.into(),
        reason: format!("cannot parse the header (truncated or corrupt?): {e}"),
    })?;
    let md = Metadata { path, ct: &content };
    match md.opt_str("general.architecture")? {
        Some(ARCH) => {}
        Some(other) => return Err(Error::UnsupportedArchitecture { path: path.into(), arch: other.into() }),
        None => return Err(md.missing("general.architecture")),
    }
    Ok((file, content))
}

pub(crate) fn load(path: &Path, opts: &LoadOptions) -> Result<Gemma> {
    let _span = tracing::info_span!("load", path = %path.display(), weights = %opts.weights).entered();
    let (file, content) = open(path)?;
    let cfg = GemmaConfig::from_gguf(path, &content)?;
    let tokenizer = Tokenizer::from_gguf(&Metadata { path, ct: &content })?;
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

//! Opening a model: a `.gguf` file, or a directory (or one of its `.safetensors` files) with
//! `config.json`, `*.safetensors` and `tokenizer.json`.

use std::fs::File;
use std::io::{BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use candle_core::quantized::gguf_file;

use crate::config::{LlamaConfig, Metadata};
use crate::error::{Error, Result};
use crate::model::Llama;
use crate::tokenizer::Tokenizer;
use crate::weights::WeightSource;
use crate::LoadOptions;

const GGUF_MAGIC: &[u8; 4] = b"GGUF";

pub(crate) fn load(path: &Path, opts: &LoadOptions) -> Result<Llama> {
    let _span = tracing::info_span!("load", path = %path.display(), weights = %opts.weights).entered();
    let meta = std::fs::metadata(path).map_err(|e| Error::io(path, e))?;
    if meta.is_dir() {
        return load_safetensors(path, opts);
    }
    let mut file = File::open(path).map_err(|e| Error::io(path, e))?;
    let mut magic = [0u8; 4];
    let n = read_up_to(&mut file, &mut magic).map_err(|e| Error::io(path, e))?;
    if n == 4 && &magic == GGUF_MAGIC {
        return load_gguf(path, file, opts);
    }
    if path.extension().is_some_and(|e| e == "safetensors") {
        let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
        return load_safetensors(dir, opts);
    }
    Err(Error::NotGguf { path: path.into(), reason: describe_magic(&magic[..n]) })
}

fn read_up_to(f: &mut File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match f.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

fn describe_magic(m: &[u8]) -> String {
    if m.is_empty() {
        "the file is empty".into()
    } else {
        format!("it starts with bytes {m:02x?}, not the GGUF magic")
    }
}

/// Reads a GGUF header (metadata and tensor table), mapping failures to errors naming the file.
fn read_content(path: &Path, file: &mut File) -> Result<gguf_file::Content> {
    file.seek(SeekFrom::Start(0)).map_err(|e| Error::io(path, e))?;
    let mut reader = BufReader::new(&mut *file);
    gguf_file::Content::read(&mut reader).map_err(|e| Error::NotGguf {
        path: path.into(),
        reason: format!("cannot parse the header (truncated or corrupt?): {e}"),
    })
}

fn check_arch(path: &Path, ct: &gguf_file::Content) -> Result<()> {
    let md = Metadata { path, ct };
    match md.opt_str("general.architecture")? {
        Some("llama") => Ok(()),
        Some(other) => Err(Error::UnsupportedArchitecture { path: path.into(), arch: other.into() }),
        None => Err(Error::MissingMetadata { path: path.into(), key: "general.architecture".into() }),
    }
}

fn load_gguf(path: &Path, mut file: File, opts: &LoadOptions) -> Result<Llama> {
    let content = read_content(path, &mut file)?;
    check_arch(path, &content)?;
    let cfg = LlamaConfig::from_gguf(path, &content)?;
    let tokenizer = Tokenizer::from_gguf(&Metadata { path, ct: &content })?;
    let source = WeightSource::gguf(path, content, file, opts)?;
    Llama::from_source(&source, cfg, tokenizer)
}

fn load_safetensors(dir: &Path, opts: &LoadOptions) -> Result<Llama> {
    let config_path = dir.join("config.json");
    let json = std::fs::read_to_string(&config_path).map_err(|e| Error::io(&config_path, e))?;
    let (cfg, extras) = LlamaConfig::from_hf_json(&config_path, &json)?;
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| Error::io(dir, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "safetensors") && p.is_file())
        .collect();
    files.sort();
    if files.is_empty() {
        return Err(Error::Config { path: dir.into(), reason: "the directory has no *.safetensors files".into() });
    }
    let tokenizer = Tokenizer::from_dir(dir, &extras)?;
    let source = WeightSource::safetensors(dir, &files, opts)?;
    Llama::from_source(&source, cfg, tokenizer)
}

/// The `general.architecture` of a GGUF file (the CLI picks a model family with it).
pub fn gguf_architecture(path: &Path) -> Result<String> {
    let mut file = File::open(path).map_err(|e| Error::io(path, e))?;
    let mut magic = [0u8; 4];
    let n = read_up_to(&mut file, &mut magic).map_err(|e| Error::io(path, e))?;
    if n < 4 || &magic != GGUF_MAGIC {
        return Err(Error::NotGguf { path: path.into(), reason: describe_magic(&magic[..n]) });
    }
    let content = read_content(path, &mut file)?;
    let md = Metadata { path, ct: &content };
    md.opt_str("general.architecture")?
        .map(str::to_string)
        .ok_or_else(|| Error::MissingMetadata { path: path.into(), key: "general.architecture".into() })
}

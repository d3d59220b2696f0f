//! GGUF files as every family adapter reads them: opening one (magic, header, architecture) and
//! typed access to its metadata, with errors naming the file and key. The hyper-parameters every
//! decoder stores are read by [`crate::DecoderConfig::from_gguf`].

use std::fs::File;
use std::io::{BufReader, Read, Seek, SeekFrom};
use std::path::Path;

use candle_core::quantized::gguf_file::{Content, Value};

use crate::config::AttentionShape;
use crate::error::{Error, Result};

#[path = "gguf_header.rs"]
mod header;
pub use header::{read_content, read_content_from_bytes, tensor_bytes, MAX_DEPTH, MAX_DIMS, MAX_STRING, MAX_VALUES};

const MAGIC: &[u8; 4] = b"GGUF";

/// Whether the file starts with the GGUF magic; `Err(reason)` says what it starts with instead.
pub(crate) fn check_magic(path: &Path, file: &mut File) -> Result<std::result::Result<(), String>> {
    let mut magic = [0u8; 4];
    let mut n = 0;
    while n < 4 {
        match file.read(&mut magic[n..]).map_err(|e| Error::io(path, e))? {
            0 => break,
            k => n += k,
        }
    }
    Ok(if n == 4 && &magic == MAGIC {
        Ok(())
    } else if n == 0 {
        Err("the file is empty".into())
    } else {
        Err(format!("it starts with bytes {:02x?}, not the GGUF magic", &magic[..n]))
    })
}

/// Opens a GGUF file and parses its header (metadata and tensor table), checking every count,
/// shape and offset against the file's size ([`read_content`]). With `arch`, a file of another
/// `general.architecture` is refused.
pub fn open(path: &Path, arch: Option<&str>) -> Result<(File, Content)> {
    let meta = std::fs::metadata(path).map_err(|e| Error::io(path, e))?;
    if meta.is_dir() {
        return Err(Error::NotGguf { path: path.into(), reason: "it is a directory".into() });
    }
    let mut file = File::open(path).map_err(|e| Error::io(path, e))?;
    if let Err(reason) = check_magic(path, &mut file)? {
        return Err(Error::NotGguf { path: path.into(), reason });
    }
    file.seek(SeekFrom::Start(0)).map_err(|e| Error::io(path, e))?;
    let content = read_content(path, &mut BufReader::new(&mut file), meta.len())?;
    if let Some(expected) = arch {
        let found = Metadata { path, ct: &content }.architecture()?;
        if found != expected {
            return Err(Error::UnsupportedArchitecture {
                path: path.into(),
                arch: found.into(),
                expected: expected.into(),
            });
        }
    }
    Ok((file, content))
}

/// The `general.architecture` of a GGUF file (the CLI picks a model family with it).
pub fn architecture(path: &Path) -> Result<String> {
    let (_, content) = open(path, None)?;
    Metadata { path, ct: &content }.architecture().map(str::to_string)
}

/// Typed access to GGUF metadata with errors naming the file and key.
pub struct Metadata<'a> {
    pub path: &'a Path,
    pub ct: &'a Content,
}

pub(crate) fn int_of(v: &Value) -> Option<i128> {
    Some(match *v {
        Value::U8(x) => x.into(),
        Value::I8(x) => x.into(),
        Value::U16(x) => x.into(),
        Value::I16(x) => x.into(),
        Value::U32(x) => x.into(),
        Value::I32(x) => x.into(),
        Value::U64(x) => x.into(),
        Value::I64(x) => x.into(),
        _ => return None,
    })
}

impl<'a> Metadata<'a> {
    pub fn bad(&self, key: &str, reason: String) -> Error {
        Error::BadMetadata { path: self.path.into(), key: key.into(), reason }
    }

    pub fn missing(&self, key: &str) -> Error {
        Error::MissingMetadata { path: self.path.into(), key: key.into() }
    }

    pub fn get(&self, key: &str) -> Option<&'a Value> {
        self.ct.metadata.get(key)
    }

    /// `general.architecture`, which every GGUF model file must have.
    pub fn architecture(&self) -> Result<&'a str> {
        self.opt_str("general.architecture")?.ok_or_else(|| self.missing("general.architecture"))
    }

    /// `general.name`, else the file's stem, else `fallback`.
    pub fn model_name(&self, fallback: &str) -> String {
        match self.get("general.name") {
            Some(Value::String(s)) if !s.is_empty() => s.clone(),
            _ => self.path.file_stem().map_or_else(|| fallback.into(), |s| s.to_string_lossy().into_owned()),
        }
    }

    pub fn opt_usize(&self, key: &str) -> Result<Option<usize>> {
        let Some(v) = self.get(key) else { return Ok(None) };
        let n = int_of(v).ok_or_else(|| self.bad(key, format!("expected an integer, found {:?}", v.value_type())))?;
        usize::try_from(n).map(Some).map_err(|_| self.bad(key, format!("{n} is out of range")))
    }

    pub fn usize(&self, key: &str) -> Result<usize> {
        self.opt_usize(key)?.ok_or_else(|| self.missing(key))
    }

    pub fn opt_u32(&self, key: &str) -> Result<Option<u32>> {
        match self.opt_usize(key)? {
            None => Ok(None),
            Some(n) => u32::try_from(n).map(Some).map_err(|_| self.bad(key, format!("{n} is out of range"))),
        }
    }

    /// A float, or an integer read as one.
    pub fn opt_f64(&self, key: &str) -> Result<Option<f64>> {
        let Some(v) = self.get(key) else { return Ok(None) };
        match *v {
            Value::F32(x) => Ok(Some(x as f64)),
            Value::F64(x) => Ok(Some(x)),
            ref v => match int_of(v) {
                Some(n) => Ok(Some(n as f64)),
                None => Err(self.bad(key, format!("expected a number, found {:?}", v.value_type()))),
            },
        }
    }

    pub fn opt_bool(&self, key: &str) -> Result<Option<bool>> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(v) => Err(self.bad(key, format!("expected a bool, found {:?}", v.value_type()))),
        }
    }

    pub fn opt_str(&self, key: &str) -> Result<Option<&'a str>> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(v) => Err(self.bad(key, format!("expected a string, found {:?}", v.value_type()))),
        }
    }

    fn array(&self, key: &str) -> Result<Option<&'a [Value]>> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::Array(vs)) => Ok(Some(vs)),
            Some(v) => Err(self.bad(key, format!("expected an array, found {:?}", v.value_type()))),
        }
    }

    pub fn opt_strings(&self, key: &str) -> Result<Option<Vec<&'a str>>> {
        let Some(vs) = self.array(key)? else { return Ok(None) };
        vs.iter()
            .map(|v| match v {
                Value::String(s) => Ok(s.as_str()),
                v => Err(self.bad(key, format!("expected strings, found {:?}", v.value_type()))),
            })
            .collect::<Result<Vec<_>>>()
            .map(Some)
    }

    pub fn opt_ints(&self, key: &str) -> Result<Option<Vec<i64>>> {
        let Some(vs) = self.array(key)? else { return Ok(None) };
        vs.iter()
            .map(|v| {
                int_of(v)
                    .and_then(|n| i64::try_from(n).ok())
                    .ok_or_else(|| self.bad(key, format!("expected integers, found {:?}", v.value_type())))
            })
            .collect::<Result<Vec<_>>>()
            .map(Some)
    }

    pub fn opt_floats(&self, key: &str) -> Result<Option<Vec<f32>>> {
        let Some(vs) = self.array(key)? else { return Ok(None) };
        vs.iter()
            .map(|v| match *v {
                Value::F32(x) => Ok(x),
                Value::F64(x) => Ok(x as f32),
                ref v => Err(self.bad(key, format!("expected floats, found {:?}", v.value_type()))),
            })
            .collect::<Result<Vec<_>>>()
            .map(Some)
    }

    /// The `[out, in]` attention shape every decoder stores under `{arch}.`: hidden size, query and
    /// KV heads, head size; refuses values of another width than keys and partial rotary
    /// embeddings, which no adapter here computes.
    pub fn attention_shape(&self, arch: &str) -> Result<AttentionShape> {
        let key = |k: &str| format!("{arch}.{k}");
        let unsupported = |what: String| Error::Unsupported { path: self.path.into(), what };
        let hidden_size = self.usize(&key("embedding_length"))?;
        let num_heads = self.usize(&key("attention.head_count"))?;
        if num_heads == 0 {
            return Err(self.bad(&key("attention.head_count"), "is 0".into()));
        }
        let num_kv_heads = self.opt_usize(&key("attention.head_count_kv"))?.unwrap_or(num_heads);
        let head_dim = self.opt_usize(&key("attention.key_length"))?.unwrap_or(hidden_size / num_heads);
        if let Some(vd) = self.opt_usize(&key("attention.value_length"))? {
            if vd != head_dim {
                return Err(unsupported(format!("value length {vd} != key length {head_dim}")));
            }
        }
        if let Some(rd) = self.opt_usize(&key("rope.dimension_count"))? {
            if rd != head_dim {
                return Err(unsupported(format!("partial rotary embedding ({rd} of {head_dim} dims)")));
            }
        }
        Ok(AttentionShape { hidden_size, num_heads, num_kv_heads, head_dim })
    }
}

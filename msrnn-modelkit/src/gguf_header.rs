//! The GGUF header reader: metadata and tensor table, every count, length, shape and offset checked
//! against the bytes the file really has before anything is allocated for it. A downloaded file is
//! untrusted input: a header may claim a string of 2^60 bytes, a billion tensors, a shape whose
//! element count overflows, an alignment of 0 or tensor data past the end of the file. Each of those
//! is an error naming what is wrong and where, never an allocation the machine cannot make nor a
//! panic. What it builds is candle's [`Content`], so the rest of the kit reads tensors as before.
//!
//! Limits beyond the file size (real models stay far below them): strings of at most
//! [`MAX_STRING`] bytes, at most [`MAX_VALUES`] metadata values in all, arrays nested at most
//! [`MAX_DEPTH`] deep, tensors of at most [`MAX_DIMS`] dimensions.

use std::collections::HashMap;
use std::io::{Read, Seek};
use std::path::Path;

use candle_core::quantized::gguf_file::{Content, TensorInfo, Value, VersionedMagic, DEFAULT_ALIGNMENT};
use candle_core::quantized::GgmlDType;

use crate::error::{Error, Result};

/// Longest string (metadata key, value or tensor name) accepted, in bytes.
pub const MAX_STRING: u64 = 1 << 24;
/// Most metadata values (array elements included) in one header: each costs tens of bytes of
/// memory however few bytes it takes in the file.
pub const MAX_VALUES: u64 = 1 << 24;
/// Deepest nesting of arrays in metadata.
pub const MAX_DEPTH: usize = 8;
/// Most dimensions of a tensor (ggml's `GGML_MAX_DIMS`).
pub const MAX_DIMS: u32 = 4;

/// The bytes a tensor's data takes, or `None` when its shape overflows or does not fill whole
/// blocks of its type.
pub fn tensor_bytes(ti: &TensorInfo) -> Option<u64> {
    let elems = ti.shape.dims().iter().try_fold(1u64, |n, &d| n.checked_mul(d as u64))?;
    let block = ti.ggml_dtype.block_size() as u64;
    if !elems.is_multiple_of(block) {
        return None;
    }
    (elems / block).checked_mul(ti.ggml_dtype.type_size() as u64)
}

/// ggml's type numbers (candle keeps its own mapping private).
fn dtype_of(n: u32) -> Option<GgmlDType> {
    Some(match n {
        0 => GgmlDType::F32,
        1 => GgmlDType::F16,
        2 => GgmlDType::Q4_0,
        3 => GgmlDType::Q4_1,
        6 => GgmlDType::Q5_0,
        7 => GgmlDType::Q5_1,
        8 => GgmlDType::Q8_0,
        9 => GgmlDType::Q8_1,
        10 => GgmlDType::Q2K,
        11 => GgmlDType::Q3K,
        12 => GgmlDType::Q4K,
        13 => GgmlDType::Q5K,
        14 => GgmlDType::Q6K,
        15 => GgmlDType::Q8K,
        30 => GgmlDType::BF16,
        _ => return None,
    })
}

/// A reader that knows how many bytes are left, so a length is checked before it is believed.
struct Header<'r, R> {
    r: &'r mut R,
    pos: u64,
    len: u64,
    /// Version 1 stores lengths and counts as u32, later versions as u64.
    wide: bool,
    values: u64,
}

type Res<T> = std::result::Result<T, String>;

impl<R: Read> Header<'_, R> {
    fn left(&self) -> u64 {
        self.len.saturating_sub(self.pos)
    }

    fn fill(&mut self, buf: &mut [u8], what: &str) -> Res<()> {
        if buf.len() as u64 > self.left() {
            return Err(format!(
                "{what} at byte {} needs {} bytes, but the file ends {} bytes later",
                self.pos,
                buf.len(),
                self.left()
            ));
        }
        self.r.read_exact(buf).map_err(|e| format!("{what} at byte {}: {e}", self.pos))?;
        self.pos += buf.len() as u64;
        Ok(())
    }

    fn array<const N: usize>(&mut self, what: &str) -> Res<[u8; N]> {
        let mut b = [0u8; N];
        self.fill(&mut b, what)?;
        Ok(b)
    }

    fn u8(&mut self, what: &str) -> Res<u8> {
        Ok(self.array::<1>(what)?[0])
    }
    fn u16(&mut self, what: &str) -> Res<u16> {
        Ok(u16::from_le_bytes(self.array(what)?))
    }
    fn u32(&mut self, what: &str) -> Res<u32> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }
    fn u64(&mut self, what: &str) -> Res<u64> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }

    /// A length or count: u32 in version 1, u64 later.
    fn count(&mut self, what: &str) -> Res<u64> {
        if self.wide {
            self.u64(what)
        } else {
            self.u32(what).map(u64::from)
        }
    }

    fn prefix(&self) -> u64 {
        if self.wide {
            8
        } else {
            4
        }
    }

    fn string(&mut self, what: &str) -> Res<String> {
        let at = self.pos;
        let n = self.count(what)?;
        if n > MAX_STRING || n > self.left() {
            return Err(format!(
                "{what} at byte {at} claims {n} bytes, but {} remain in the file (at most {MAX_STRING} accepted)",
                self.left()
            ));
        }
        let mut v = vec![0u8; n as usize];
        self.fill(&mut v, what)?;
        // As candle and llama.cpp: trailing NULs are tolerated, and bytes that are not UTF-8 read lossily.
        while v.last() == Some(&0) {
            v.pop();
        }
        Ok(String::from_utf8_lossy(&v).into_owned())
    }

    /// Smallest size a value of type `t` takes in the file.
    fn min_size(&self, t: u32) -> u64 {
        match t {
            0 | 1 | 7 => 1,
            2 | 3 => 2,
            4..=6 => 4,
            8 => self.prefix(),
            9 => 4 + self.prefix(),
            _ => 8,
        }
    }

    fn value(&mut self, t: u32, depth: usize, key: &str) -> Res<Value> {
        self.values += 1;
        if self.values > MAX_VALUES {
            return Err(format!("metadata `{key}`: more than {MAX_VALUES} metadata values in the header"));
        }
        let what = |kind: &str| format!("metadata `{key}` ({kind})");
        Ok(match t {
            0 => Value::U8(self.u8(&what("u8"))?),
            1 => Value::I8(self.u8(&what("i8"))? as i8),
            2 => Value::U16(self.u16(&what("u16"))?),
            3 => Value::I16(self.u16(&what("i16"))? as i16),
            4 => Value::U32(self.u32(&what("u32"))?),
            5 => Value::I32(self.u32(&what("i32"))? as i32),
            6 => Value::F32(f32::from_bits(self.u32(&what("f32"))?)),
            7 => match self.u8(&what("bool"))? {
                0 => Value::Bool(false),
                1 => Value::Bool(true),
                b => return Err(format!("metadata `{key}`: a bool holds {b}, not 0 or 1")),
            },
            8 => Value::String(self.string(&what("string"))?),
            9 => {
                if depth >= MAX_DEPTH {
                    return Err(format!("metadata `{key}`: arrays nested more than {MAX_DEPTH} deep"));
                }
                let at = self.pos;
                let et = self.u32(&what("array type"))?;
                if et > 12 {
                    return Err(format!("metadata `{key}`: unknown array element type {et} at byte {at}"));
                }
                let n = self.count(&what("array length"))?;
                let need = n.saturating_mul(self.min_size(et));
                if need > self.left() {
                    return Err(format!(
                        "metadata `{key}`: an array of {n} elements at byte {at} needs at least {need} bytes, but {} \
                         remain in the file",
                        self.left()
                    ));
                }
                if n > MAX_VALUES - self.values {
                    return Err(format!("metadata `{key}`: more than {MAX_VALUES} metadata values in the header"));
                }
                let mut v = Vec::new();
                for _ in 0..n {
                    v.push(self.value(et, depth + 1, key)?);
                }
                Value::Array(v)
            }
            10 => Value::U64(self.u64(&what("u64"))?),
            11 => Value::I64(self.u64(&what("i64"))? as i64),
            12 => Value::F64(f64::from_bits(self.u64(&what("f64"))?)),
            t => return Err(format!("metadata `{key}`: unknown value type {t}")),
        })
    }
}

/// Reads a GGUF header from `r` (positioned at the file's start; `file_len` is the whole file's
/// size) and checks it: every length and count against the bytes left, every tensor's shape, type,
/// alignment and data range against the file. `path` names the file in errors.
pub fn read_content<R: Read + Seek>(path: &Path, r: &mut R, file_len: u64) -> Result<Content> {
    let corrupt = |reason: String| Error::NotGguf {
        path: path.into(),
        reason: format!("cannot parse the header (truncated or corrupt?): {reason}"),
    };
    let start = r.stream_position().map_err(|e| Error::io(path, e))?;
    let mut h = Header { r, pos: start, len: file_len, wide: true, values: 0 };
    let magic = h.array::<4>("the magic").map_err(corrupt)?;
    if &magic != b"GGUF" {
        return Err(Error::NotGguf {
            path: path.into(),
            reason: format!("it starts with bytes {magic:02x?}, not the GGUF magic"),
        });
    }
    let version = h.u32("the version").map_err(corrupt)?;
    let magic = match version {
        1 => VersionedMagic::GgufV1,
        2 => VersionedMagic::GgufV2,
        3 => VersionedMagic::GgufV3,
        v => return Err(corrupt(format!("GGUF version {v} is not one of 1, 2, 3"))),
    };
    h.wide = version > 1;
    let tensors = h.count("the tensor count").map_err(corrupt)?;
    let kvs = h.count("the metadata count").map_err(corrupt)?;
    // Each metadata entry takes at least a key length, a type and one byte; each tensor a name
    // length, a dimension count, a type and an offset.
    let (p, left) = (h.prefix(), h.left());
    let need = kvs.saturating_mul(p + 5).saturating_add(tensors.saturating_mul(p + 16));
    if need > left {
        return Err(corrupt(format!(
            "it claims {tensors} tensors and {kvs} metadata entries, at least {need} bytes, but the file has {left} \
             bytes after the counts"
        )));
    }
    let mut metadata = HashMap::new();
    for _ in 0..kvs {
        let key = h.string("a metadata key").map_err(corrupt)?;
        let t = h.u32(&format!("the type of metadata `{key}`")).map_err(corrupt)?;
        let v = h.value(t, 0, &key).map_err(corrupt)?;
        if metadata.insert(key.clone(), v).is_some() {
            return Err(corrupt(format!("metadata `{key}` appears twice")));
        }
    }
    let mut infos: Vec<(String, TensorInfo)> = Vec::new();
    let mut names = std::collections::HashSet::new();
    for _ in 0..tensors {
        let name = h.string("a tensor name").map_err(corrupt)?;
        let what = |w: &str| format!("the {w} of tensor `{name}`");
        let n_dims = h.u32(&what("dimension count")).map_err(corrupt)?;
        if n_dims > MAX_DIMS {
            return Err(corrupt(format!("tensor `{name}` has {n_dims} dimensions, at most {MAX_DIMS} are allowed")));
        }
        let mut dims = Vec::with_capacity(n_dims as usize);
        for _ in 0..n_dims {
            let d = h.count(&what("shape")).map_err(corrupt)?;
            let d = usize::try_from(d).map_err(|_| corrupt(format!("tensor `{name}` has a dimension of {d}")))?;
            // No model has an empty tensor, and candle's reader casts an empty buffer's dangling
            // pointer to the block type, which aborts on its alignment check.
            if d == 0 {
                return Err(corrupt(format!("tensor `{name}` has a dimension of 0 (no elements)")));
            }
            dims.push(d);
        }
        // GGUF lists dimensions innermost first; candle's shapes are outermost first.
        dims.reverse();
        let t = h.u32(&what("type")).map_err(corrupt)?;
        let dtype = dtype_of(t).ok_or_else(|| corrupt(format!("tensor `{name}` has the unknown type {t}")))?;
        let offset = h.u64(&what("offset")).map_err(corrupt)?;
        if !names.insert(name.clone()) {
            return Err(corrupt(format!("tensor `{name}` appears twice")));
        }
        infos.push((name, TensorInfo { ggml_dtype: dtype, shape: dims.into(), offset }));
    }
    let alignment = match metadata.get("general.alignment") {
        None => DEFAULT_ALIGNMENT,
        Some(v) => match crate::gguf::int_of(v) {
            Some(a) if a > 0 && (a as u64).is_power_of_two() && a <= u32::MAX as i128 => a as u64,
            _ => return Err(corrupt(format!("`general.alignment` is {v:?}, not a power of two"))),
        },
    };
    let data_offset =
        h.pos.checked_next_multiple_of(alignment).ok_or_else(|| corrupt("the tensor data offset overflows".into()))?;
    // Tensors in file order, so a truncated file names the first tensor that does not fit.
    infos.sort_by_key(|(_, ti)| ti.offset);
    for (name, ti) in &infos {
        let bytes = tensor_bytes(ti).ok_or_else(|| {
            corrupt(format!(
                "tensor `{name}` has shape {:?}, which overflows or does not fill whole {:?} blocks of {}",
                ti.shape.dims(),
                ti.ggml_dtype,
                ti.ggml_dtype.block_size()
            ))
        })?;
        if !ti.offset.is_multiple_of(alignment) {
            return Err(corrupt(format!(
                "tensor `{name}` starts at offset {}, not a multiple of the alignment {alignment}",
                ti.offset
            )));
        }
        let end = data_offset.checked_add(ti.offset).and_then(|s| s.checked_add(bytes));
        match end {
            Some(end) if end <= file_len => {}
            _ => {
                return Err(Error::Truncated {
                    path: path.into(),
                    tensor: name.clone(),
                    needed: end.unwrap_or(u64::MAX),
                    available: file_len,
                })
            }
        }
    }
    Ok(Content { magic, metadata, tensor_infos: infos.into_iter().collect(), tensor_data_offset: data_offset })
}

/// [`read_content`] on bytes held in memory (the whole file): what the fuzz targets and the
/// corruption tests call.
pub fn read_content_from_bytes(bytes: &[u8]) -> Result<Content> {
    read_content(Path::new("(bytes)"), &mut std::io::Cursor::new(bytes), bytes.len() as u64)
}

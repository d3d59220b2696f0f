//! Typed access to GGUF metadata with errors naming the file and key.
//!
//! msrnn-llama has the same accessors but keeps them crate-private; until it exports them this is
//! the small copy Gemma needs (integers, floats, strings, arrays).

use std::path::Path;

use candle_core::quantized::gguf_file::{Content, Value};

use crate::error::{Error, Result};

pub(crate) struct Metadata<'a> {
    pub path: &'a Path,
    pub ct: &'a Content,
}

fn int_of(v: &Value) -> Option<i128> {
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

impl Metadata<'_> {
    pub fn bad(&self, key: &str, reason: String) -> Error {
        Error::BadMetadata { path: self.path.into(), key: key.into(), reason }
    }

    pub fn missing(&self, key: &str) -> Error {
        Error::MissingMetadata { path: self.path.into(), key: key.into() }
    }

    pub fn get(&self, key: &str) -> Option<&Value> {
        self.ct.metadata.get(key)
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

    pub fn opt_str(&self, key: &str) -> Result<Option<&str>> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(v) => Err(self.bad(key, format!("expected a string, found {:?}", v.value_type()))),
        }
    }

    fn array(&self, key: &str) -> Result<Option<&[Value]>> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::Array(vs)) => Ok(Some(vs)),
            Some(v) => Err(self.bad(key, format!("expected an array, found {:?}", v.value_type()))),
        }
    }

    pub fn opt_strings(&self, key: &str) -> Result<Option<Vec<&str>>> {
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
}

//! `PolicySpec`: a policy's name and parameters, as a user writes them (`h2o:recent=0.5`) or as JSON.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// A parameter value; numbers stay numbers in JSON.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum ParamValue {
    Int(i64),
    Float(f64),
    Bool(bool),
    Str(String),
}

impl ParamValue {
    fn parse(s: &str) -> Self {
        if let Ok(i) = s.parse::<i64>() {
            ParamValue::Int(i)
        } else if let Ok(f) = s.parse::<f64>() {
            ParamValue::Float(f)
        } else if let Ok(b) = s.parse::<bool>() {
            ParamValue::Bool(b)
        } else {
            ParamValue::Str(s.to_string())
        }
    }
}

impl fmt::Display for ParamValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ParamValue::Int(i) => write!(f, "{i}"),
            ParamValue::Float(x) => write!(f, "{x}"),
            ParamValue::Bool(b) => write!(f, "{b}"),
            ParamValue::Str(s) => write!(f, "{s}"),
        }
    }
}

/// Which policy, with which parameters. `Display` gives back the string form.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PolicySpec {
    pub name: String,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub params: BTreeMap<String, ParamValue>,
}

impl PolicySpec {
    pub fn new(name: impl Into<String>) -> Self {
        Self { name: name.into(), params: BTreeMap::new() }
    }

    pub fn with(mut self, key: &str, value: ParamValue) -> Self {
        self.params.insert(key.to_string(), value);
        self
    }

    fn bad(&self, reason: String) -> Error {
        Error::InvalidParam { policy: self.name.clone(), reason }
    }

    /// A non-negative integer parameter, or `default` when absent.
    pub fn get_usize(&self, key: &str, default: usize) -> Result<usize> {
        match self.params.get(key) {
            None => Ok(default),
            Some(ParamValue::Int(i)) if *i >= 0 => Ok(*i as usize),
            Some(v) => Err(self.bad(format!("`{key}` must be a non-negative integer, got `{v}`"))),
        }
    }

    /// An integer parameter as `u64` (seeds), or `default` when absent.
    pub fn get_u64(&self, key: &str, default: u64) -> Result<u64> {
        self.get_usize(key, default as usize).map(|v| v as u64)
    }

    /// A finite number parameter, or `default` when absent.
    pub fn get_f64(&self, key: &str, default: f64) -> Result<f64> {
        match self.params.get(key) {
            None => Ok(default),
            Some(ParamValue::Int(i)) => Ok(*i as f64),
            Some(ParamValue::Float(x)) if x.is_finite() => Ok(*x),
            Some(v) => Err(self.bad(format!("`{key}` must be a number, got `{v}`"))),
        }
    }

    /// Parameters in the `k=v,k=v` form used after the colon.
    pub fn params_string(&self) -> String {
        self.params.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(",")
    }
}

impl fmt::Display for PolicySpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.params.is_empty() {
            write!(f, "{}", self.name)
        } else {
            write!(f, "{}:{}", self.name, self.params_string())
        }
    }
}

impl FromStr for PolicySpec {
    type Err = Error;

    /// `name`, `name:key=value,key=value`, or a JSON object `{"name": ..., "params": {...}}`.
    fn from_str(s: &str) -> Result<Self> {
        let s = s.trim();
        let bad = |reason: &str| Error::InvalidSpec { spec: s.to_string(), reason: reason.to_string() };
        if s.starts_with('{') {
            return serde_json::from_str(s).map_err(|e| bad(&e.to_string()));
        }
        let (name, rest) = match s.split_once(':') {
            Some((n, r)) => (n.trim(), Some(r)),
            None => (s, None),
        };
        if name.is_empty() {
            return Err(bad("the policy name is empty"));
        }
        let mut spec = PolicySpec::new(name);
        for kv in rest.into_iter().flat_map(|r| r.split(',')).map(str::trim).filter(|kv| !kv.is_empty()) {
            let (k, v) = kv.split_once('=').ok_or_else(|| bad(&format!("`{kv}` is not key=value")))?;
            let (k, v) = (k.trim(), v.trim());
            if k.is_empty() || v.is_empty() {
                return Err(bad(&format!("`{kv}` has an empty key or value")));
            }
            if spec.params.insert(k.to_string(), ParamValue::parse(v)).is_some() {
                return Err(bad(&format!("`{k}` is given twice")));
            }
        }
        Ok(spec)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_three_forms_and_round_trips() {
        let a: PolicySpec = "tova".parse().unwrap();
        assert_eq!(a, PolicySpec::new("tova"));
        let b: PolicySpec = "window+i:sinks=4".parse().unwrap();
        assert_eq!(b.get_usize("sinks", 0).unwrap(), 4);
        assert_eq!(b.to_string(), "window+i:sinks=4");
        let c: PolicySpec = "h2o:recent=0.5".parse().unwrap();
        assert_eq!(c.get_f64("recent", 0.0).unwrap(), 0.5);
        let json = serde_json::to_string(&c).unwrap();
        assert_eq!(json, r#"{"name":"h2o","params":{"recent":0.5}}"#);
        assert_eq!(json.parse::<PolicySpec>().unwrap(), c);
    }

    #[test]
    fn rejects_malformed_specs_and_bad_types() {
        for s in ["", ":x=1", "h2o:recent", "h2o:recent=", "h2o:a=1,a=2", "{bad json"] {
            assert!(s.parse::<PolicySpec>().is_err(), "{s}");
        }
        let c: PolicySpec = "window+i:sinks=-1".parse().unwrap();
        assert!(c.get_usize("sinks", 4).unwrap_err().to_string().contains("non-negative"));
        let d: PolicySpec = "h2o:recent=abc".parse().unwrap();
        assert!(d.get_f64("recent", 0.5).is_err());
    }
}

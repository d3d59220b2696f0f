//! `PolicySpec`: a policy's name and parameters, as a user writes them (`h2o:recent=0.5`) or as JSON.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use msrnn_policy_api::{parse_pairs, valid_name, Param, Params};

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

    /// The parameters as a policy receives them (values as text), checked against `schema`; `None`
    /// is a policy that declares no schema and takes any key.
    pub fn to_params(&self, schema: Option<&[Param]>) -> msrnn_policy_api::Result<Params> {
        let pairs = self.params.iter().map(|(k, v)| (k.clone(), v.to_string()));
        match schema {
            Some(s) => Params::new(s, pairs),
            None => Params::unchecked(pairs),
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
        let spec = if s.starts_with('{') {
            serde_json::from_str(s).map_err(|e| bad(&e.to_string()))?
        } else {
            let (name, rest) = s.split_once(':').map_or((s, ""), |(n, r)| (n.trim(), r));
            let mut spec = PolicySpec::new(name);
            for (k, v) in parse_pairs(rest).map_err(|e| bad(e.reason()))? {
                spec.params.insert(k, ParamValue::parse(&v));
            }
            spec
        };
        // One rule for both forms, so that a spec prints back as text that parses to it (found by fuzzing: the JSON
        // form took `{"params":{"":1}}`, then `{"name":"  h2o"}`). A name no policy can have is refused here.
        if spec.name.trim().is_empty() {
            return Err(bad("the policy name is empty"));
        }
        if !valid_name(&spec.name) {
            return Err(bad(&format!("`{}` is not a policy name ({NAME_RULE})", spec.name)));
        }
        if let Some(k) = spec.params.keys().find(|k| !valid_name(k)) {
            return Err(bad(&match k.trim().is_empty() {
                true => "a parameter has an empty name".to_string(),
                false => format!("`{k}` is not a parameter name ({NAME_RULE})"),
            }));
        }
        Ok(spec)
    }
}

/// What [`valid_name`] accepts, for messages.
const NAME_RULE: &str = "1 to 64 letters, digits, `_`, `+`, `.` or `-`";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_specs_follow_the_text_form_rules() {
        let e = r#"{"name":"h2o","params":{"":20}}"#.parse::<PolicySpec>().unwrap_err().to_string();
        assert!(e.contains("a parameter has an empty name"), "{e}");
        let e = r#"{"name":" ","params":{}}"#.parse::<PolicySpec>().unwrap_err().to_string();
        assert!(e.contains("the policy name is empty"), "{e}");
        // Names and keys the text form could not write, refused in both forms.
        for s in [r#"{"name":"   h3o"}"#, r#"{"name":"h2o:recent=1"}"#, "h 2o", "h2o:re t=1"] {
            let e = s.parse::<PolicySpec>().unwrap_err().to_string();
            assert!(e.contains("is not a policy name") || e.contains("is not a parameter name"), "{s}: {e}");
        }
        let e = r#"{"name":"h2o","params":{"a,b":1}}"#.parse::<PolicySpec>().unwrap_err().to_string();
        assert!(e.contains("`a,b` is not a parameter name"), "{e}");
    }

    #[test]
    fn parses_the_three_forms_and_round_trips() {
        let a: PolicySpec = "tova".parse().unwrap();
        assert_eq!(a, PolicySpec::new("tova"));
        let b: PolicySpec = "window+i:sinks=4".parse().unwrap();
        assert_eq!(b.params["sinks"], ParamValue::Int(4));
        assert_eq!(b.to_string(), "window+i:sinks=4");
        let c: PolicySpec = "h2o:recent=0.5".parse().unwrap();
        assert_eq!(c.params["recent"], ParamValue::Float(0.5));
        let json = serde_json::to_string(&c).unwrap();
        assert_eq!(json, r#"{"name":"h2o","params":{"recent":0.5}}"#);
        assert_eq!(json.parse::<PolicySpec>().unwrap(), c);
    }

    #[test]
    fn rejects_malformed_specs_and_bad_types() {
        for s in ["", ":x=1", "h2o:recent", "h2o:recent=", "h2o:a=1,a=2", "{bad json"] {
            assert!(s.parse::<PolicySpec>().is_err(), "{s}");
        }
        let e = "h2o:recent".parse::<PolicySpec>().unwrap_err().to_string();
        assert_eq!(e, "invalid policy spec `h2o:recent`: `recent` is not key=value");
    }

    #[test]
    fn params_reach_a_policy_as_text_checked_against_its_schema() {
        let schema = [Param::new("sinks", "4", ""), Param::new("recent", "0.5", "")];
        let c: PolicySpec = "window+i:sinks=-1".parse().unwrap();
        let p = c.to_params(Some(&schema)).unwrap();
        assert!(p.get::<usize>("sinks").unwrap_err().to_string().contains("non-negative"));
        assert_eq!(p.get::<f64>("recent").unwrap(), 0.5);
        let d: PolicySpec = "h2o:recent=abc".parse().unwrap();
        assert!(d.to_params(Some(&schema)).unwrap().get::<f64>("recent").is_err());
        let e = "x:snks=1".parse::<PolicySpec>().unwrap().to_params(Some(&schema)).unwrap_err().to_string();
        assert_eq!(e, "unknown parameter `snks` (known: sinks, recent)");
        let open = "x:any=1.5".parse::<PolicySpec>().unwrap().to_params(None).unwrap();
        assert_eq!(open.to_text(), "any=1.5");
    }
}

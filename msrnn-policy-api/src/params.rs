//! Parameters: each policy declares its own ([`Param`]: name, default, help) once, and reads what it
//! was created with through [`Params`], whose typed getters take the default from that declaration.
//! Parsing and checking live here so the core, the built-ins and the plugin glue do them one way.

use std::borrow::Cow;
use std::collections::BTreeMap;

use crate::error::{Error, Result};

/// One declared parameter. The default is text, as a user would write it (`"0.5"`, `"4"`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Param {
    pub name: Cow<'static, str>,
    pub default: Cow<'static, str>,
    pub help: Cow<'static, str>,
}

impl Param {
    /// A declaration, for `const` schemas: `Param::new("sinks", "4", "tokens kept from the start")`.
    pub const fn new(name: &'static str, default: &'static str, help: &'static str) -> Self {
        Param { name: Cow::Borrowed(name), default: Cow::Borrowed(default), help: Cow::Borrowed(help) }
    }

    /// A declaration read at run time (a plugin's descriptor).
    pub fn owned(name: String, default: String, help: String) -> Self {
        Param { name: Cow::Owned(name), default: Cow::Owned(default), help: Cow::Owned(help) }
    }
}

/// A valid policy, alias or parameter name: 1 to 64 of `[A-Za-z0-9_+.-]` (no `:`, `,`, `=` or
/// spaces, which the spec syntax uses).
pub fn valid_name(s: &str) -> bool {
    !s.is_empty() && s.len() <= 64 && s.chars().all(|c| c.is_ascii_alphanumeric() || "_+.-".contains(c))
}

/// Splits `key=value,key=value` into pairs, trimmed; blank entries are skipped. A key may appear
/// once, and neither side may be empty.
pub fn parse_pairs(text: &str) -> Result<Vec<(String, String)>> {
    let mut out: Vec<(String, String)> = Vec::new();
    for kv in text.split(',').map(str::trim).filter(|kv| !kv.is_empty()) {
        let (k, v) = kv.split_once('=').ok_or_else(|| Error::Param(format!("`{kv}` is not key=value")))?;
        let (k, v) = (k.trim(), v.trim());
        if k.is_empty() || v.is_empty() {
            return Err(Error::Param(format!("`{kv}` has an empty key or value")));
        }
        if out.iter().any(|(seen, _)| seen == k) {
            return Err(Error::Param(format!("`{k}` is given twice")));
        }
        out.push((k.to_string(), v.to_string()));
    }
    Ok(out)
}

/// A type a parameter's text converts to.
pub trait FromParam: Sized {
    /// What the text must be, for messages ("a non-negative integer").
    const EXPECTED: &'static str;
    fn from_param(text: &str) -> Option<Self>;
}

macro_rules! from_str_param {
    ($($t:ty => $what:literal),* $(,)?) => {$(
        impl FromParam for $t {
            const EXPECTED: &'static str = $what;
            fn from_param(text: &str) -> Option<Self> {
                text.parse().ok()
            }
        }
    )*};
}
from_str_param!(usize => "a non-negative integer", u64 => "a non-negative integer", u32 => "a non-negative integer",
                i64 => "an integer", String => "text");

impl FromParam for f64 {
    const EXPECTED: &'static str = "a finite number";
    fn from_param(text: &str) -> Option<Self> {
        text.parse::<f64>().ok().filter(|x| x.is_finite())
    }
}

impl FromParam for bool {
    const EXPECTED: &'static str = "true or false";
    fn from_param(text: &str) -> Option<Self> {
        match text {
            "true" | "1" => Some(true),
            "false" | "0" => Some(false),
            _ => None,
        }
    }
}

/// The parameters an instance is created with: the values given (as text) and the schema they were
/// checked against, so that [`Params::get`] falls back to the declared default.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Params {
    values: BTreeMap<String, String>,
    /// `None`: no declaration (a C plugin may declare none and check its keys itself).
    schema: Option<Vec<Param>>,
}

impl Params {
    /// Values checked against `schema`: a key it does not declare is refused, naming the known ones.
    pub fn new<K: Into<String>, V: Into<String>>(
        schema: &[Param],
        pairs: impl IntoIterator<Item = (K, V)>,
    ) -> Result<Self> {
        let mut p = Self::collect(pairs)?;
        for k in p.values.keys() {
            if !schema.iter().any(|d| d.name == *k) {
                return Err(Error::Param(if schema.is_empty() {
                    format!("takes no parameters, got `{k}`")
                } else {
                    let known: Vec<&str> = schema.iter().map(|d| &*d.name).collect();
                    format!("unknown parameter `{k}` (known: {})", known.join(", "))
                }));
            }
        }
        p.schema = Some(schema.to_vec());
        Ok(p)
    }

    /// Values for a policy that declares no schema: every key passes, none has a default.
    pub fn unchecked<K: Into<String>, V: Into<String>>(pairs: impl IntoIterator<Item = (K, V)>) -> Result<Self> {
        Self::collect(pairs)
    }

    /// Parses `key=value,key=value` (see [`parse_pairs`]) and checks it against `schema`.
    pub fn parse(text: &str, schema: &[Param]) -> Result<Self> {
        Self::new(schema, parse_pairs(text)?)
    }

    fn collect<K: Into<String>, V: Into<String>>(pairs: impl IntoIterator<Item = (K, V)>) -> Result<Self> {
        let mut values = BTreeMap::new();
        for (k, v) in pairs {
            let k = k.into();
            if values.contains_key(&k) {
                return Err(Error::Param(format!("`{k}` is given twice")));
            }
            values.insert(k, v.into());
        }
        Ok(Params { values, schema: None })
    }

    /// The value of `key` as a `T`: the one given, else the schema's default.
    pub fn get<T: FromParam>(&self, key: &str) -> Result<T> {
        if let Some(v) = self.given(key) {
            return T::from_param(v).ok_or_else(|| Error::Param(format!("`{key}` must be {}, got `{v}`", T::EXPECTED)));
        }
        let decl = self.schema.as_deref().unwrap_or_default().iter().find(|d| d.name == key);
        let d = decl.ok_or_else(|| Error::Param(format!("`{key}` was not given and has no declared default")))?;
        T::from_param(&d.default).ok_or_else(|| {
            Error::Param(format!("`{key}`: the declared default `{}` is not {}", d.default, T::EXPECTED))
        })
    }

    /// The value of `key` as a `T` if it was given (a policy whose default depends on the context,
    /// such as `1 - 8/C`, computes it when this is `None`).
    pub fn get_given<T: FromParam>(&self, key: &str) -> Result<Option<T>> {
        match self.given(key) {
            None => Ok(None),
            Some(_) => self.get(key).map(Some),
        }
    }

    /// The text given for `key`, if any.
    pub fn given(&self, key: &str) -> Option<&str> {
        self.values.get(key).map(String::as_str)
    }

    /// The values given, sorted by key.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.values.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }

    /// The schema the values were checked against; `None` when the policy declares none.
    pub fn schema(&self) -> Option<&[Param]> {
        self.schema.as_deref()
    }

    /// The values given as `key=value,key=value` (what a plugin's `create` receives).
    pub fn to_text(&self) -> String {
        self.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(",")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SCHEMA: &[Param] = &[
        Param::new("sinks", "4", "tokens kept from the start"),
        Param::new("recent", "0.5", "fraction of C"),
        Param::new("on", "false", "a switch"),
        Param::new("broken", "x", "a bad default"),
    ];

    #[test]
    fn pairs_parse_and_refuse_malformed_text() {
        let p = parse_pairs(" sinks=4, recent = 0.25 ,, ").unwrap();
        assert_eq!(p, [("sinks".into(), "4".into()), ("recent".into(), "0.25".into())]);
        for (bad, needle) in [("a", "key=value"), ("a=1,a=2", "twice"), ("=1", "empty key"), ("a=", "empty")] {
            let e = parse_pairs(bad).unwrap_err();
            assert!(matches!(e, Error::Param(_)) && e.to_string().contains(needle), "{bad}: {e}");
        }
        assert!(parse_pairs("").unwrap().is_empty());
    }

    #[test]
    fn defaults_come_from_the_schema() {
        let p = Params::parse("recent=0.25", SCHEMA).unwrap();
        assert_eq!(p.get::<usize>("sinks").unwrap(), 4);
        assert_eq!(p.get::<u64>("sinks").unwrap(), 4);
        assert_eq!(p.get::<f64>("recent").unwrap(), 0.25);
        assert!(!p.get::<bool>("on").unwrap());
        assert_eq!(p.get_given::<f64>("recent").unwrap(), Some(0.25));
        assert_eq!(p.get_given::<usize>("sinks").unwrap(), None);
        assert_eq!(p.given("sinks"), None);
        let e = p.get::<usize>("broken").unwrap_err().to_string();
        assert!(e.contains("declared default `x` is not a non-negative integer"), "{e}");
        let e = p.get::<usize>("nope").unwrap_err().to_string();
        assert!(e.contains("`nope` was not given and has no declared default"), "{e}");
        assert_eq!(p.to_text(), "recent=0.25");
    }

    #[test]
    fn values_are_typed_and_unknown_keys_refused() {
        let e = Params::parse("sinks=-1", SCHEMA).unwrap().get::<usize>("sinks").unwrap_err();
        assert_eq!(e.to_string(), "`sinks` must be a non-negative integer, got `-1`");
        let e = Params::parse("recent=inf", SCHEMA).unwrap().get::<f64>("recent").unwrap_err();
        assert!(e.to_string().contains("must be a finite number"), "{e}");
        assert!(Params::parse("on=1", SCHEMA).unwrap().get::<bool>("on").unwrap());
        assert!(Params::parse("on=yes", SCHEMA).unwrap().get::<bool>("on").is_err());
        let e = Params::parse("snks=3", SCHEMA).unwrap_err().to_string();
        assert_eq!(e, "unknown parameter `snks` (known: sinks, recent, on, broken)");
        assert_eq!(Params::parse("x=1", &[]).unwrap_err().to_string(), "takes no parameters, got `x`");
        let open = Params::unchecked([("anything", "1")]).unwrap();
        assert_eq!(open.schema(), None);
        assert_eq!(open.get::<u32>("anything").unwrap(), 1);
        assert!(Params::unchecked([("a", "1"), ("a", "2")]).unwrap_err().to_string().contains("twice"));
    }

    #[test]
    fn names_are_checked() {
        for ok in ["keynorm", "window+i", "h2o.v2", "a_b-c"] {
            assert!(valid_name(ok), "{ok}");
        }
        for bad in ["", "a b", "a:b", "a,b", "a=b", "{x}", &"x".repeat(65)] {
            assert!(!valid_name(bad), "{bad}");
        }
    }
}

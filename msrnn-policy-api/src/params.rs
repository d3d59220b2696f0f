//! Parameters: each policy declares its own once, as a typed struct ([`params!`](crate::params!):
//! fields with their type, default, range and help), which gives the schema ([`Param`]s, as
//! listings and the registry see it) and the conversion from the text of a spec ([`ParamSet`]).
//! The text form ([`Params`]: `key=value` pairs checked against the schema) remains only where
//! parameters cross a boundary: specs, and a plugin's `create` at the C ABI. Parsing and checking
//! live here so the core, the built-ins and the plugin glue do them one way.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;

use crate::error::{Error, Result};

/// What a parameter's value must be. A declaration read from a plugin's descriptor is
/// [`ParamType::Any`]: the C ABI carries text alone, and the plugin checks its values itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParamType {
    Any,
    Bool,
    /// A non-negative integer.
    Integer,
    SignedInteger,
    /// A finite number.
    Number,
    Text,
}

impl ParamType {
    /// The value as a number for a range check (`None` for a type without one); `Err` when the text
    /// is not of this type, naming what it must be.
    fn read(self, text: &str) -> std::result::Result<Option<f64>, &'static str> {
        fn of<T: FromParam>(
            text: &str,
            f: impl Fn(T) -> Option<f64>,
        ) -> std::result::Result<Option<f64>, &'static str> {
            T::from_param(text).map(f).ok_or(T::EXPECTED)
        }
        match self {
            ParamType::Any | ParamType::Text => Ok(None),
            ParamType::Bool => of::<bool>(text, |_| None),
            ParamType::Integer => of::<u64>(text, |v| Some(v as f64)),
            ParamType::SignedInteger => of::<i64>(text, |v| Some(v as f64)),
            ParamType::Number => of::<f64>(text, Some),
        }
    }

    /// For listings: `number`, `integer`, ...; empty for [`ParamType::Any`].
    pub fn word(self) -> &'static str {
        match self {
            ParamType::Any => "",
            ParamType::Bool => "true/false",
            ParamType::Integer => "integer",
            ParamType::SignedInteger => "signed integer",
            ParamType::Number => "number",
            ParamType::Text => "text",
        }
    }
}

/// The values a numeric parameter may take: from `min` (inclusive) up to `max` (inclusive or not).
/// Written in [`params!`](crate::params!) as `range 0.0..=1.0`, `range 0.0..1.0` or `range 1..`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Bounds {
    pub min: f64,
    pub max: Option<f64>,
    pub max_inclusive: bool,
}

// Bounds are declared constants, never NaN.
impl Eq for Bounds {}

impl Bounds {
    /// `min..=max`
    pub const fn closed(min: f64, max: f64) -> Self {
        Bounds { min, max: Some(max), max_inclusive: true }
    }
    /// `min..max`
    pub const fn half_open(min: f64, max: f64) -> Self {
        Bounds { min, max: Some(max), max_inclusive: false }
    }
    /// `min..`
    pub const fn at_least(min: f64) -> Self {
        Bounds { min, max: None, max_inclusive: false }
    }

    pub fn contains(&self, x: f64) -> bool {
        x >= self.min
            && match self.max {
                None => true,
                Some(m) if self.max_inclusive => x <= m,
                Some(m) => x < m,
            }
    }
}

impl fmt::Display for Bounds {
    /// `in [0, 1]`, `in [0, 1)`, `at least 1`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.max {
            None => write!(f, "at least {}", self.min),
            Some(m) => write!(f, "in [{}, {m}{}", self.min, if self.max_inclusive { "]" } else { ")" }),
        }
    }
}

/// One declared parameter. The default is text, as a user would write it (`"0.5"`, `"4"`), or a
/// rule (`"1-8/C"`) where the value depends on the context.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Param {
    pub name: Cow<'static, str>,
    pub default: Cow<'static, str>,
    pub help: Cow<'static, str>,
    /// What a value must be; checked when the spec is resolved, before any instance exists.
    pub ty: ParamType,
    /// The values allowed, for a numeric type.
    pub bounds: Option<Bounds>,
}

impl Param {
    /// A declaration, for `const` schemas: `Param::new("sinks", "4", "tokens kept from the start")`.
    /// Untyped ([`ParamType::Any`]) until [`Param::typed`]; [`params!`](crate::params!) writes both.
    pub const fn new(name: &'static str, default: &'static str, help: &'static str) -> Self {
        Param {
            name: Cow::Borrowed(name),
            default: Cow::Borrowed(default),
            help: Cow::Borrowed(help),
            ty: ParamType::Any,
            bounds: None,
        }
    }

    /// A declaration read at run time (a plugin's descriptor): text only.
    pub fn owned(name: String, default: String, help: String) -> Self {
        Param {
            name: Cow::Owned(name),
            default: Cow::Owned(default),
            help: Cow::Owned(help),
            ty: ParamType::Any,
            bounds: None,
        }
    }

    pub const fn typed(mut self, ty: ParamType) -> Self {
        self.ty = ty;
        self
    }

    pub const fn bounded(mut self, bounds: Bounds) -> Self {
        self.bounds = Some(bounds);
        self
    }

    /// The value `text` is of the declared type and within the declared range.
    pub fn check(&self, text: &str) -> Result<()> {
        let name = &self.name;
        let x = self.ty.read(text).map_err(|what| Error::Param(format!("`{name}` must be {what}, got `{text}`")))?;
        match (x, self.bounds) {
            (Some(x), Some(b)) if !b.contains(x) => Err(Error::Param(format!("`{name}` must be {b}, got {text}"))),
            _ => Ok(()),
        }
    }
}

impl fmt::Display for Param {
    /// `recent=0.5  fraction of C kept (number in [0, 1])`, as listings show it.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}={}  {}", self.name, self.default, self.help)?;
        match (self.ty.word(), self.bounds) {
            ("", _) => Ok(()),
            (w, None) => write!(f, " ({w})"),
            (w, Some(b)) => write!(f, " ({w} {b})"),
        }
    }
}

/// A policy's parameters as a typed struct, declared once with [`params!`](crate::params!) (`()`
/// for a policy without any).
pub trait ParamSet: Sized {
    /// The declarations, in field order: name, type, default, range, help.
    const SCHEMA: &'static [Param];
    /// The values from their text form (checked against [`ParamSet::SCHEMA`] again, so a caller
    /// that skipped the registry gets the same refusals), the defaults for those not given.
    fn from_params(params: &Params) -> Result<Self>;
}

impl ParamSet for () {
    const SCHEMA: &'static [Param] = &[];
    fn from_params(_: &Params) -> Result<Self> {
        Ok(())
    }
}

/// The declaration of `name` in `schema` (what [`params!`](crate::params!) reads each field by).
#[doc(hidden)]
pub fn declared<'a>(schema: &'a [Param], name: &str) -> &'a Param {
    schema.iter().find(|p| p.name == name).expect("params! declares every field")
}

/// Declares a policy's parameters once: a struct with one typed field per parameter, and its
/// [`ParamSet`] (the schema the registry checks specs against, listings show, and plugins export;
/// and the conversion from text). Each field: `name: type = default, range lo..=hi, "help";` where
/// the range (`lo..=hi`, `lo..hi` or `lo..`) is optional, and a default that depends on the context
/// is an `Option` shown as a rule: `decay: Option<f64> = None => "1-8/C", range 0.0..1.0, "...";`.
///
/// ```
/// msrnn_policy_api::params! {
///     /// `h2o`'s parameters.
///     pub struct H2oParams {
///         recent: f64 = 0.5, range 0.0..=1.0, "share of C kept for the newest tokens";
///     }
/// }
/// use msrnn_policy_api::{ParamSet, Params};
/// let p = H2oParams::from_params(&Params::parse("recent=0.25", H2oParams::SCHEMA).unwrap()).unwrap();
/// assert_eq!(p.recent, 0.25);
/// let e = Params::parse("recent=2", H2oParams::SCHEMA).unwrap_err();
/// assert_eq!(e.to_string(), "`recent` must be in [0, 1], got 2");
/// assert_eq!(H2oParams::default().recent, 0.5);
/// ```
#[macro_export]
macro_rules! params {
    (
        $(#[$meta:meta])*
        $vis:vis struct $name:ident {
            $(
                $field:ident : $ty:ty = $default:expr $(=> $shown:literal)?
                    $(, range $lo:literal $dots:tt $($hi:literal)?)? , $help:literal
            );* $(;)?
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, PartialEq)]
        $vis struct $name {
            $( #[doc = $help] pub $field: $ty, )*
        }

        impl $crate::ParamSet for $name {
            const SCHEMA: &'static [$crate::Param] = &[$(
                $crate::Param::new(
                    stringify!($field),
                    $crate::__param_default!($default $(=> $shown)?),
                    $help,
                )
                .typed(<$ty as $crate::FromParam>::TYPE)
                $(.bounded($crate::__param_bounds!($lo $dots $($hi)?)))?
            ),*];

            fn from_params(params: &$crate::Params) -> $crate::Result<Self> {
                let schema = <Self as $crate::ParamSet>::SCHEMA;
                Ok(Self {
                    $($field: match params.value::<$ty>($crate::params::declared(schema, stringify!($field)))? {
                        Some(v) => v,
                        None => $default,
                    },)*
                })
            }
        }

        impl Default for $name {
            fn default() -> Self {
                Self { $($field: $default,)* }
            }
        }
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __param_default {
    ($default:expr) => {
        stringify!($default)
    };
    ($default:expr => $shown:literal) => {
        $shown
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __param_bounds {
    ($lo:literal ..= $hi:literal) => {
        $crate::params::Bounds::closed($lo as f64, $hi as f64)
    };
    ($lo:literal .. $hi:literal) => {
        $crate::params::Bounds::half_open($lo as f64, $hi as f64)
    };
    ($lo:literal ..) => {
        $crate::params::Bounds::at_least($lo as f64)
    };
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
    /// The declared type of a parameter of this type.
    const TYPE: ParamType;
    fn from_param(text: &str) -> Option<Self>;
}

macro_rules! from_str_param {
    ($($t:ty => $what:literal, $ty:ident);* $(;)?) => {$(
        impl FromParam for $t {
            const EXPECTED: &'static str = $what;
            const TYPE: ParamType = ParamType::$ty;
            fn from_param(text: &str) -> Option<Self> {
                text.parse().ok()
            }
        }
    )*};
}
from_str_param!(usize => "a non-negative integer", Integer; u64 => "a non-negative integer", Integer;
                u32 => "a non-negative integer", Integer; i64 => "an integer", SignedInteger; String => "text", Text);

impl FromParam for f64 {
    const EXPECTED: &'static str = "a finite number";
    const TYPE: ParamType = ParamType::Number;
    fn from_param(text: &str) -> Option<Self> {
        text.parse::<f64>().ok().filter(|x| x.is_finite())
    }
}

impl FromParam for bool {
    const EXPECTED: &'static str = "true or false";
    const TYPE: ParamType = ParamType::Bool;
    fn from_param(text: &str) -> Option<Self> {
        match text {
            "true" | "1" => Some(true),
            "false" | "0" => Some(false),
            _ => None,
        }
    }
}

/// A parameter whose default depends on the context (`None`: not given).
impl<T: FromParam> FromParam for Option<T> {
    const EXPECTED: &'static str = T::EXPECTED;
    const TYPE: ParamType = T::TYPE;
    fn from_param(text: &str) -> Option<Self> {
        T::from_param(text).map(Some)
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
    /// Values checked against `schema`: a key it does not declare is refused, naming the known ones,
    /// and a value not of its declared type or outside its range is refused.
    pub fn new<K: Into<String>, V: Into<String>>(
        schema: &[Param],
        pairs: impl IntoIterator<Item = (K, V)>,
    ) -> Result<Self> {
        let mut p = Self::collect(pairs)?;
        for (k, v) in &p.values {
            let Some(decl) = schema.iter().find(|d| d.name == *k) else {
                return Err(Error::Param(if schema.is_empty() {
                    format!("takes no parameters, got `{k}`")
                } else {
                    let known: Vec<&str> = schema.iter().map(|d| &*d.name).collect();
                    format!("unknown parameter `{k}` (known: {})", known.join(", "))
                }));
            };
            decl.check(v)?;
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

    /// The value given for the declared parameter `decl` as a `T`, checked against its type and
    /// range; `None` when it was not given (the typed default applies: see [`ParamSet`]).
    pub fn value<T: FromParam>(&self, decl: &Param) -> Result<Option<T>> {
        let Some(v) = self.given(&decl.name) else { return Ok(None) };
        decl.check(v)?;
        let name = &decl.name;
        T::from_param(v).map(Some).ok_or_else(|| Error::Param(format!("`{name}` must be {}, got `{v}`", T::EXPECTED)))
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

    crate::params! {
        /// A test set: every type, every kind of range, a default shown as a rule.
        struct Typed {
            frac: f64 = 0.5, range 0.0..=1.0, "a fraction";
            decay: Option<f64> = None => "1-8/C", range 0.0..1.0, "a rule default";
            count: usize = 3, range 1.., "at least one";
            on: bool = false, "a switch";
            name: String = "x".to_string() => "x", "text";
            shift: i64 = -2, "signed";
        }
    }

    #[test]
    fn a_declared_set_gives_its_schema_and_typed_values() {
        let s = Typed::SCHEMA;
        let summary: Vec<(&str, &str, ParamType)> = s.iter().map(|p| (&*p.name, &*p.default, p.ty)).collect();
        assert_eq!(
            summary,
            [
                ("frac", "0.5", ParamType::Number),
                ("decay", "1-8/C", ParamType::Number),
                ("count", "3", ParamType::Integer),
                ("on", "false", ParamType::Bool),
                ("name", "x", ParamType::Text),
                ("shift", "-2", ParamType::SignedInteger),
            ]
        );
        assert_eq!(s[0].bounds, Some(Bounds::closed(0.0, 1.0)));
        assert_eq!(s[1].bounds, Some(Bounds::half_open(0.0, 1.0)));
        assert_eq!(s[2].bounds, Some(Bounds::at_least(1.0)));
        assert_eq!(s[3].bounds, None);
        assert_eq!(s[0].to_string(), "frac=0.5  a fraction (number in [0, 1])");
        assert_eq!(s[1].to_string(), "decay=1-8/C  a rule default (number in [0, 1))");
        assert_eq!(s[2].to_string(), "count=3  at least one (integer at least 1)");
        assert_eq!(s[3].to_string(), "on=false  a switch (true/false)");
        assert_eq!(Param::new("a", "1", "h").to_string(), "a=1  h");
        // Nothing given: the typed defaults, as Default gives them.
        let d = Typed::from_params(&Params::parse("", s).unwrap()).unwrap();
        assert_eq!(d, Typed::default());
        assert_eq!((d.frac, d.decay, d.count, d.on, d.name.as_str(), d.shift), (0.5, None, 3, false, "x", -2));
        let p = Params::parse("frac=1,decay=0,count=7,on=1,name=h2o:recent=0.5,shift=-9", s).unwrap();
        let t = Typed::from_params(&p).unwrap();
        assert_eq!(
            (t.frac, t.decay, t.count, t.on, t.name.as_str(), t.shift),
            (1.0, Some(0.0), 7, true, "h2o:recent=0.5", -9)
        );
    }

    #[test]
    fn types_and_ranges_are_checked_when_the_text_is_read() {
        let e = |text: &str| Params::parse(text, Typed::SCHEMA).unwrap_err().to_string();
        assert_eq!(e("frac=1.5"), "`frac` must be in [0, 1], got 1.5");
        assert_eq!(e("decay=1"), "`decay` must be in [0, 1), got 1");
        assert_eq!(e("count=0"), "`count` must be at least 1, got 0");
        assert_eq!(e("count=-1"), "`count` must be a non-negative integer, got `-1`");
        assert_eq!(e("frac=nan"), "`frac` must be a finite number, got `nan`");
        assert_eq!(e("on=yes"), "`on` must be true or false, got `yes`");
        assert_eq!(e("shift=1.5"), "`shift` must be an integer, got `1.5`");
        assert!(Params::parse("frac=0,decay=0.999,count=1", Typed::SCHEMA).is_ok());
        // The typed conversion checks again, for text that never went through a schema.
        let raw = Params::unchecked([("frac", "2")]).unwrap();
        assert_eq!(Typed::from_params(&raw).unwrap_err().to_string(), "`frac` must be in [0, 1], got 2");
        let raw = Params::unchecked([("count", "99999999999999999999")]).unwrap();
        assert!(Typed::from_params(&raw).unwrap_err().to_string().contains("non-negative integer"));
        // An untyped declaration (a plugin's descriptor) lets any text through to the plugin.
        assert!(Params::parse("sinks=-1", SCHEMA).is_ok());
    }
}

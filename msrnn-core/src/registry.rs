//! The policy registry: built-ins collected with `inventory`, plugins added at run time, selection by
//! name with suggestions when the name is unknown.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::error::{Error, Result};
use crate::policy::Policy;
use crate::spec::PolicySpec;
use crate::state::Capacity;

/// What a factory learns about where its policy instance will live.
#[derive(Debug, Clone, Copy)]
pub struct PolicyContext {
    pub layer: usize,
    pub num_layers: usize,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub capacity: Capacity,
}

/// A parameter a policy accepts, for listings and for rejecting unknown keys.
#[derive(Debug, Clone, Copy)]
pub struct ParamInfo {
    pub name: &'static str,
    pub default: &'static str,
    pub help: &'static str,
}

/// Creates one policy instance for one layer.
pub type Factory = Arc<dyn Fn(&PolicySpec, &PolicyContext) -> Result<Box<dyn Policy>> + Send + Sync>;

/// A built-in policy, registered with `inventory::submit!` next to its implementation.
pub struct BuiltinPolicy {
    pub name: &'static str,
    pub aliases: &'static [&'static str],
    pub description: &'static str,
    pub params: &'static [ParamInfo],
    pub create: fn(&PolicySpec, &PolicyContext) -> Result<Box<dyn Policy>>,
}

inventory::collect!(BuiltinPolicy);

/// Where a registered policy came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    Builtin,
    Plugin(String),
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Source::Builtin => write!(f, "built-in"),
            Source::Plugin(p) => write!(f, "plugin {p}"),
        }
    }
}

/// One registry entry, for listings.
#[derive(Clone)]
pub struct Entry {
    pub name: String,
    pub aliases: Vec<String>,
    pub description: String,
    pub params: Vec<(String, String, String)>,
    pub source: Source,
    /// `false` for plugins that declare no parameter schema: they take any keys.
    pub strict_params: bool,
    factory: Factory,
}

impl std::fmt::Debug for Entry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Entry").field("name", &self.name).field("source", &self.source).finish()
    }
}

/// Policies by name. Built-ins come from every linked crate that registered one (call
/// `msrnn_policies::registry()` to make sure that crate is linked).
#[derive(Default, Clone)]
pub struct PolicyRegistry {
    entries: BTreeMap<String, Entry>,
    aliases: BTreeMap<String, String>,
}

impl PolicyRegistry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// Every built-in that `inventory` collected.
    pub fn with_builtins() -> Self {
        let mut r = Self::new();
        for b in inventory::iter::<BuiltinPolicy> {
            let create = b.create;
            r.insert(
                Entry {
                    name: b.name.to_string(),
                    aliases: b.aliases.iter().map(|a| a.to_string()).collect(),
                    description: b.description.to_string(),
                    params: b.params.iter().map(|p| (p.name.into(), p.default.into(), p.help.into())).collect(),
                    source: Source::Builtin,
                    strict_params: true,
                    factory: Arc::new(create),
                },
                false,
            )
            .expect("built-in policy names are unique");
        }
        r
    }

    /// Adds an entry; a name or alias already taken is an error unless `replace` is set.
    pub fn insert(&mut self, entry: Entry, replace: bool) -> Result<()> {
        for n in std::iter::once(&entry.name).chain(&entry.aliases) {
            if let Some(existing) = self.resolve(n) {
                if !replace {
                    let e = &self.entries[existing];
                    return Err(Error::InvalidSpec {
                        spec: n.clone(),
                        reason: format!("the name is already taken by `{}` ({})", e.name, e.source),
                    });
                }
            }
        }
        if replace {
            let old: Vec<String> = std::iter::once(&entry.name)
                .chain(&entry.aliases)
                .filter_map(|n| self.resolve(n).map(str::to_string))
                .collect();
            for o in old {
                if let Some(e) = self.entries.remove(&o) {
                    e.aliases.iter().for_each(|a| {
                        self.aliases.remove(a);
                    });
                }
            }
        }
        for a in &entry.aliases {
            self.aliases.insert(a.clone(), entry.name.clone());
        }
        self.entries.insert(entry.name.clone(), entry);
        Ok(())
    }

    /// Registers a policy from any factory (plugins use this). `params` is the schema as
    /// `(name, default, help)`; `None` means the policy declares none and accepts any keys.
    pub fn register(
        &mut self,
        name: &str,
        description: &str,
        params: Option<Vec<(String, String, String)>>,
        source: Source,
        factory: Factory,
        replace: bool,
    ) -> Result<()> {
        let strict_params = params.is_some();
        let params = params.unwrap_or_default();
        self.insert(
            Entry {
                name: name.into(),
                aliases: vec![],
                description: description.into(),
                params,
                source,
                strict_params,
                factory,
            },
            replace,
        )
    }

    fn resolve<'a>(&'a self, name: &'a str) -> Option<&'a str> {
        if let Some((k, _)) = self.entries.get_key_value(name) {
            Some(k)
        } else {
            self.aliases.get(name).map(String::as_str)
        }
    }

    /// The entry for a name or alias, or an error that suggests the closest names.
    pub fn get(&self, name: &str) -> Result<&Entry> {
        match self.resolve(name) {
            Some(n) => Ok(&self.entries[n]),
            None => Err(Error::UnknownPolicy { name: name.to_string(), suggestions: self.suggest(name) }),
        }
    }

    /// All entries, sorted by name.
    pub fn entries(&self) -> impl Iterator<Item = &Entry> {
        self.entries.values()
    }

    /// Up to three known names closest to `name` (edit distance), for "did you mean".
    pub fn suggest(&self, name: &str) -> Vec<String> {
        let mut all: Vec<(usize, &String)> = self
            .entries
            .keys()
            .chain(self.aliases.keys())
            .map(|k| (edit_distance(&name.to_lowercase(), &k.to_lowercase()), k))
            .collect();
        all.sort();
        let limit = (name.chars().count() / 2).max(2);
        let close: Vec<String> = all.iter().filter(|(d, _)| *d <= limit).take(3).map(|(_, k)| (*k).clone()).collect();
        if close.is_empty() {
            all.iter().take(3).map(|(_, k)| (*k).clone()).collect()
        } else {
            close
        }
    }

    /// Checks the spec's parameter names against the policy's schema.
    pub fn check_params(&self, spec: &PolicySpec) -> Result<&Entry> {
        let e = self.get(&spec.name)?;
        if e.strict_params {
            for k in spec.params.keys() {
                if !e.params.iter().any(|(n, _, _)| n == k) {
                    let known: Vec<&str> = e.params.iter().map(|(n, _, _)| n.as_str()).collect();
                    return Err(Error::InvalidParam {
                        policy: e.name.clone(),
                        reason: if known.is_empty() {
                            format!("takes no parameters, got `{k}`")
                        } else {
                            format!("unknown parameter `{k}` (known: {})", known.join(", "))
                        },
                    });
                }
            }
        }
        Ok(e)
    }

    /// One instance for one layer.
    pub fn create(&self, spec: &PolicySpec, ctx: &PolicyContext) -> Result<Box<dyn Policy>> {
        let e = self.check_params(spec)?;
        (e.factory)(spec, ctx)
    }

    /// One instance per layer, as [`crate::MsrnnState::new`] wants them.
    pub fn create_layers(
        &self,
        spec: &PolicySpec,
        num_layers: usize,
        num_heads: usize,
        num_kv_heads: usize,
        capacity: Capacity,
    ) -> Result<Vec<Box<dyn Policy>>> {
        (0..num_layers)
            .map(|layer| self.create(spec, &PolicyContext { layer, num_layers, num_heads, num_kv_heads, capacity }))
            .collect()
    }
}

/// Levenshtein distance over chars.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, &cb) in b.iter().enumerate() {
            cur[j + 1] = (prev[j] + usize::from(ca != cb)).min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::{Decision, Needs, Observation};

    struct Nop;
    impl Policy for Nop {
        fn name(&self) -> &str {
            "nop"
        }
        fn needs(&self) -> Needs {
            Needs::default()
        }
        fn step(&mut self, _: &Observation<'_>, _: usize) -> Result<Decision> {
            Ok(Decision::Keep)
        }
    }

    fn reg() -> PolicyRegistry {
        let mut r = PolicyRegistry::new();
        let f: Factory = Arc::new(|_, _| Ok(Box::new(Nop)));
        let p = Some(vec![("sinks".into(), "4".into(), "".into())]);
        r.register("window", "w", Some(vec![]), Source::Builtin, f.clone(), false).unwrap();
        r.register("window+i", "w", p, Source::Builtin, f.clone(), false).unwrap();
        r.register("tova", "t", Some(vec![]), Source::Builtin, f, false).unwrap();
        r
    }

    #[test]
    fn unknown_names_suggest_the_closest() {
        let r = reg();
        let e = r.get("tvoa").unwrap_err().to_string();
        assert!(e.contains("unknown policy `tvoa`") && e.contains("`tova`"), "{e}");
        assert_eq!(r.suggest("windw")[0], "window");
    }

    #[test]
    fn duplicate_names_need_replace_and_params_are_checked() {
        let mut r = reg();
        let f: Factory = Arc::new(|_, _| Ok(Box::new(Nop)));
        let e = r.register("tova", "x", None, Source::Plugin("p.so".into()), f.clone(), false).unwrap_err();
        assert!(e.to_string().contains("already taken"), "{e}");
        r.register("tova", "x", None, Source::Plugin("p.so".into()), f, true).unwrap();
        // no schema: any keys pass
        r.check_params(&"tova:whatever=1".parse().unwrap()).unwrap();
        assert_eq!(r.get("tova").unwrap().source, Source::Plugin("p.so".into()));
        let bad: PolicySpec = "window+i:snks=3".parse().unwrap();
        let e = r.check_params(&bad).unwrap_err().to_string();
        assert!(e.contains("unknown parameter `snks`") && e.contains("sinks"), "{e}");
        let bad: PolicySpec = "window:x=1".parse().unwrap();
        assert!(r.check_params(&bad).unwrap_err().to_string().contains("takes no parameters"));
    }
}

//! The policy registry: built-ins collected with `inventory`, plugins added at run time, selection by
//! name with suggestions when the name is unknown.

use std::collections::BTreeMap;
use std::sync::Arc;

use msrnn_policy_api::{valid_name, Context, Declare, Param, Params, Policy};

use crate::error::{Error, Result};
use crate::spec::PolicySpec;
use crate::state::Capacity;

/// Creates one instance for one layer from parameters already checked against the entry's schema.
/// It is handed the registry doing the creating, so a policy that wraps another (per-layer budgets
/// around any base policy) can create its base, plugins included.
pub type Factory = Arc<dyn Fn(&Params, &Context, &PolicyRegistry) -> Result<Box<dyn Policy>> + Send + Sync>;

/// A built-in policy, submitted to `inventory` next to its implementation; [`crate::builtin_policy!`]
/// writes it from the policy's [`Declare`] implementation.
pub struct BuiltinPolicy {
    pub name: &'static str,
    pub aliases: &'static [&'static str],
    pub description: &'static str,
    pub params: &'static [Param],
    /// [`Declare::UNBOUNDED`]: the policy never evicts and runs without a capacity.
    pub unbounded: bool,
    pub create: fn(&Params, &Context, &PolicyRegistry) -> Result<Box<dyn Policy>>,
}

impl BuiltinPolicy {
    /// The entry of a declared policy.
    pub const fn of<T: Declare>() -> Self {
        BuiltinPolicy {
            name: T::NAME,
            aliases: T::ALIASES,
            description: T::DESCRIPTION,
            params: T::PARAMS,
            unbounded: T::UNBOUNDED,
            create: create_declared::<T>,
        }
    }
}

fn create_declared<T: Declare>(params: &Params, ctx: &Context, _: &PolicyRegistry) -> Result<Box<dyn Policy>> {
    match T::create(params, ctx) {
        Ok(p) => Ok(Box::new(p)),
        Err(e) => Err(Error::from_policy(e, T::NAME, ctx.layer)),
    }
}

inventory::collect!(BuiltinPolicy);

/// Registers a [`Declare`] policy as a built-in: `msrnn_core::builtin_policy!(Tova);` next to its
/// implementation. (The same policy becomes a plugin with `msrnn_policy_api::export_policy!(Tova);`.)
#[macro_export]
macro_rules! builtin_policy {
    ($ty:ty) => {
        $crate::inventory::submit! { $crate::BuiltinPolicy::of::<$ty>() }
    };
}

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
    /// The declared parameters (empty when `strict_params` is false).
    pub params: Vec<Param>,
    pub source: Source,
    /// `false` for plugins that declare no parameter schema: they take any keys.
    pub strict_params: bool,
    /// The policy never evicts and runs without a capacity (declared, [`Declare::UNBOUNDED`]);
    /// plugins are bounded.
    pub unbounded: bool,
    factory: Factory,
}

impl Entry {
    /// An entry; `schema` `None` declares no parameters list (any key reaches the factory).
    pub fn new(name: &str, description: &str, schema: Option<Vec<Param>>, source: Source, factory: Factory) -> Self {
        Entry {
            name: name.to_string(),
            aliases: Vec::new(),
            description: description.to_string(),
            strict_params: schema.is_some(),
            params: schema.unwrap_or_default(),
            source,
            unbounded: false,
            factory,
        }
    }

    /// Declares the policy unbounded (it never evicts, so it takes no capacity).
    pub fn with_unbounded(mut self, unbounded: bool) -> Self {
        self.unbounded = unbounded;
        self
    }

    pub fn with_aliases(mut self, aliases: impl IntoIterator<Item = impl Into<String>>) -> Self {
        self.aliases = aliases.into_iter().map(Into::into).collect();
        self
    }

    /// The parameter schema, `None` when the policy declares none.
    pub fn schema(&self) -> Option<&[Param]> {
        self.strict_params.then_some(&self.params[..])
    }

    /// The spec's parameters checked against this entry's schema.
    pub fn params_of(&self, spec: &PolicySpec) -> Result<Params> {
        spec.to_params(self.schema())
            .map_err(|e| Error::InvalidParam { policy: self.name.clone(), reason: e.reason().to_string() })
    }
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
            let entry = Entry::new(b.name, b.description, Some(b.params.to_vec()), Source::Builtin, Arc::new(b.create))
                .with_aliases(b.aliases.iter().copied())
                .with_unbounded(b.unbounded);
            r.insert(entry, false).unwrap_or_else(|e| panic!("built-in policies must have unique, valid names: {e}"));
        }
        r
    }

    /// Adds an entry; a name or alias already taken is an error unless `replace` is set.
    pub fn insert(&mut self, entry: Entry, replace: bool) -> Result<()> {
        for n in std::iter::once(&entry.name).chain(&entry.aliases) {
            if !valid_name(n) {
                return Err(Error::InvalidSpec {
                    spec: n.clone(),
                    reason: "a policy name is 1 to 64 of [A-Za-z0-9_+.-]".to_string(),
                });
            }
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

    /// Checks the spec's name and parameter names against the registry.
    pub fn check_params(&self, spec: &PolicySpec) -> Result<&Entry> {
        let e = self.get(&spec.name)?;
        e.params_of(spec)?;
        Ok(e)
    }

    /// Whether the spec's policy declares itself unbounded (never evicts, takes no capacity).
    pub fn is_unbounded(&self, spec: &PolicySpec) -> Result<bool> {
        Ok(self.get(&spec.name)?.unbounded)
    }

    /// One instance for one layer.
    pub fn create(&self, spec: &PolicySpec, ctx: &Context) -> Result<Box<dyn Policy>> {
        let e = self.get(&spec.name)?;
        (e.factory)(&e.params_of(spec)?, ctx, self)
    }

    /// One instance per layer, as [`crate::MsrnnState::new`] wants them.
    pub fn create_layers(
        &self,
        spec: &PolicySpec,
        num_layers: usize,
        num_heads: usize,
        num_kv_heads: usize,
        head_dim: usize,
        capacity: Capacity,
    ) -> Result<Vec<Box<dyn Policy>>> {
        (0..num_layers)
            .map(|layer| {
                let capacity = capacity.get();
                self.create(spec, &Context { layer, num_layers, num_heads, num_kv_heads, head_dim, capacity })
            })
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
    use msrnn_policy_api::{Decision, Needs, Observation};

    struct Nop;
    impl Policy for Nop {
        fn name(&self) -> &str {
            "nop"
        }
        fn needs(&self) -> Needs {
            Needs::default()
        }
        fn step(&mut self, _: &Observation<'_>, _: usize) -> msrnn_policy_api::Result<Decision> {
            Ok(Decision::Keep)
        }
    }

    fn nop() -> Factory {
        Arc::new(|_, _, _| Ok(Box::new(Nop)))
    }

    fn reg() -> PolicyRegistry {
        let mut r = PolicyRegistry::new();
        let p = Some(vec![Param::new("sinks", "4", "")]);
        r.insert(Entry::new("window", "w", Some(vec![]), Source::Builtin, nop()), false).unwrap();
        r.insert(Entry::new("window+i", "w", p, Source::Builtin, nop()).with_aliases(["sinks"]), false).unwrap();
        r.insert(Entry::new("tova", "t", Some(vec![]), Source::Builtin, nop()), false).unwrap();
        r
    }

    #[test]
    fn unknown_names_suggest_the_closest() {
        let r = reg();
        let e = r.get("tvoa").unwrap_err().to_string();
        assert!(e.contains("unknown policy `tvoa`") && e.contains("`tova`"), "{e}");
        assert_eq!(r.suggest("windw")[0], "window");
        assert_eq!(r.get("sinks").unwrap().name, "window+i");
    }

    #[test]
    fn duplicate_names_need_replace_and_params_are_checked() {
        let mut r = reg();
        let plugin = || Entry::new("tova", "x", None, Source::Plugin("p.so".into()), nop());
        let e = r.insert(plugin(), false).unwrap_err();
        assert!(e.to_string().contains("already taken"), "{e}");
        let e = r.insert(plugin().with_aliases(["bad name"]), true).unwrap_err();
        assert!(e.to_string().contains("1 to 64 of"), "{e}");
        r.insert(plugin(), true).unwrap();
        // no schema: any keys pass
        r.check_params(&"tova:whatever=1".parse().unwrap()).unwrap();
        assert_eq!(r.get("tova").unwrap().source, Source::Plugin("p.so".into()));
        let bad: PolicySpec = "window+i:snks=3".parse().unwrap();
        let e = r.check_params(&bad).unwrap_err().to_string();
        assert!(e.contains("unknown parameter `snks`") && e.contains("sinks"), "{e}");
        // an alias reports the policy's own name
        let e = r.check_params(&"sinks:snks=3".parse().unwrap()).unwrap_err().to_string();
        assert!(e.starts_with("policy `window+i`: unknown parameter"), "{e}");
        let bad: PolicySpec = "window:x=1".parse().unwrap();
        assert!(r.check_params(&bad).unwrap_err().to_string().contains("takes no parameters"));
    }

    #[test]
    fn factories_get_checked_params_with_schema_defaults_and_the_context() {
        use std::sync::Mutex;
        let seen: Arc<Mutex<Vec<(usize, Context)>>> = Arc::default();
        let log = seen.clone();
        let f: Factory = Arc::new(move |p, ctx, _| {
            let sinks = p.get::<usize>("sinks").map_err(|e| Error::from_policy(e, "recorder", ctx.layer))?;
            log.lock().unwrap().push((sinks, *ctx));
            Ok(Box::new(Nop))
        });
        let mut r = PolicyRegistry::new();
        r.insert(Entry::new("recorder", "", Some(vec![Param::new("sinks", "4", "")]), Source::Builtin, f), false)
            .unwrap();
        let layers = r.create_layers(&"recorder".parse().unwrap(), 3, 4, 2, 16, Capacity::Bounded(8)).unwrap();
        assert_eq!(layers.len(), 3);
        r.create_layers(&"recorder:sinks=2".parse().unwrap(), 1, 4, 2, 16, Capacity::Unbounded).unwrap();
        let seen = seen.lock().unwrap();
        let ctx = |layer, num_layers, capacity| Context {
            layer,
            num_layers,
            num_heads: 4,
            num_kv_heads: 2,
            head_dim: 16,
            capacity,
        };
        assert_eq!(
            seen[..],
            [(4, ctx(0, 3, Some(8))), (4, ctx(1, 3, Some(8))), (4, ctx(2, 3, Some(8))), (2, ctx(0, 1, None))]
        );
        let e = r.create(&"recorder:sinks=x".parse().unwrap(), &seen[0].1).err().unwrap().to_string();
        assert_eq!(e, "policy `recorder`: `sinks` must be a non-negative integer, got `x`");
    }
}

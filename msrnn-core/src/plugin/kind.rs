//! What every plugin kind shares, whatever runs the policy's code: the version handshake, the checks
//! of what a plugin declares ([`PluginInfo`]), the parameters it is handed, the observation it is
//! shown and the decision it gives back. Native shared libraries use these today; a WebAssembly
//! kind (its own crate) implements [`PluginKind`] and calls the same functions, so both kinds refuse
//! the same things with the same words.

use msrnn_policy_api::abi::{CODE_BAD_CALL, CODE_FAILED, CODE_PANICKED};
use msrnn_policy_api::{
    valid_name, validate, Context, Decision, Error, Needs, Observation, Param, Params, Policy, Rows,
};

/// More parameters or aliases than this in a descriptor is taken for corruption.
pub const MAX_DECLARED: u64 = 256;

/// A loaded plugin of any kind. The registry holds one per plugin and creates instances through it.
pub trait PluginKind: Send + Sync + 'static {
    /// What the plugin declares, already checked.
    fn info(&self) -> &PluginInfo;
    /// Where it was loaded from (absolute), for listings and errors.
    fn path(&self) -> &str;
    /// One instance for one layer; `params` are already checked against [`PluginInfo::params`].
    fn instantiate(&self, params: &Params, ctx: &Context) -> crate::Result<Box<dyn Policy>>;
    /// The policy's name, as selected with `--policies NAME`.
    fn name(&self) -> &str {
        &self.info().name
    }
}

impl std::fmt::Debug for dyn PluginKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PluginKind").field("name", &self.info().name).field("path", &self.path()).finish()
    }
}

impl<T: PluginKind + ?Sized> PluginKind for std::sync::Arc<T> {
    fn info(&self) -> &PluginInfo {
        (**self).info()
    }
    fn path(&self) -> &str {
        (**self).path()
    }
    fn instantiate(&self, params: &Params, ctx: &Context) -> crate::Result<Box<dyn Policy>> {
        (**self).instantiate(params, ctx)
    }
}

/// A kind of plugin besides native libraries, registered by the crate that implements it
/// (`inventory::submit!`, as model families are): the registry opens a file with the kind whose
/// magic bytes it starts with, and as a native library otherwise. So msrnn-core stays light, and
/// a binary that links msrnn-wasm loads `.wasm` policies wherever a plugin path is accepted.
pub struct PluginLoader {
    /// For messages and listings: `WebAssembly`.
    pub kind: &'static str,
    /// The first bytes of this kind's files (`\0asm` for WebAssembly).
    pub magic: &'static [u8],
    /// Opens and checks the file (an absolute or relative path, as the user gave it).
    pub open: fn(&std::path::Path) -> crate::Result<std::sync::Arc<dyn PluginKind>>,
}

inventory::collect!(PluginLoader);

/// WebAssembly's magic: a module given to a binary without the WebAssembly kind gets an error that
/// says so, rather than "not a shared library".
const WASM_MAGIC: &[u8] = b"\0asm";

/// Opens the plugin at `path` with the kind its first bytes name (see [`PluginLoader`]), else as a
/// native shared library.
pub fn open_plugin(path: &std::path::Path) -> crate::Result<std::sync::Arc<dyn PluginKind>> {
    use std::io::Read;
    let mut head = Vec::with_capacity(8);
    // An unreadable file falls through to the native loader, whose errors say what is wrong.
    if let Ok(f) = std::fs::File::open(path) {
        let _ = f.take(8).read_to_end(&mut head);
    }
    for l in inventory::iter::<PluginLoader> {
        if !l.magic.is_empty() && head.starts_with(l.magic) {
            return (l.open)(path);
        }
    }
    if head.starts_with(WASM_MAGIC) {
        return Err(crate::Error::Plugin {
            path: path.display().to_string(),
            reason: "it is a WebAssembly module, but this program was built without the WebAssembly plugin kind \
                     (link the msrnn-wasm crate)"
                .into(),
        });
    }
    Ok(std::sync::Arc::new(super::library::Plugin::open(path)?))
}

/// The handshake every kind does first, before reading anything else the plugin declares.
pub fn check_version(found: u32) -> Result<(), String> {
    use msrnn_policy_api::abi::MIN_ABI_VERSION;
    let ours = msrnn_policy_api::abi::ABI_VERSION;
    // Version 3 only appended fields a version 2 plugin never asks for nor reads.
    if (MIN_ABI_VERSION..=ours).contains(&found) {
        Ok(())
    } else {
        Err(format!(
            "it was built for plugin ABI version {found}, but this msrnn loads versions {MIN_ABI_VERSION} to {ours}; \
             rebuild it against msrnn-policy-api (or docs/msrnn_plugin.h) version {ours}"
        ))
    }
}

/// What a plugin declares about its policy, decoded from its descriptor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PluginInfo {
    pub name: String,
    pub aliases: Vec<String>,
    pub description: String,
    /// `None`: no schema; any key reaches the plugin, which checks it itself.
    pub params: Option<Vec<Param>>,
}

impl PluginInfo {
    /// Names valid and distinct, parameters valid and distinct.
    pub fn check(&self) -> Result<(), String> {
        let bad = |what: &str, n: &str| format!("its {what} `{n}` is not 1 to 64 of [A-Za-z0-9_+.-]");
        if !valid_name(&self.name) {
            return Err(bad("policy name", &self.name));
        }
        for (i, a) in self.aliases.iter().enumerate() {
            if !valid_name(a) {
                return Err(bad("alias", a));
            }
            if *a == self.name || self.aliases[..i].contains(a) {
                return Err(format!("policy `{}` lists the name `{a}` twice", self.name));
            }
        }
        for (i, p) in self.params.iter().flatten().enumerate() {
            if !valid_name(&p.name) {
                return Err(bad("parameter name", &p.name));
            }
            if self.params.iter().flatten().take(i).any(|q| q.name == p.name) {
                return Err(format!("policy `{}` declares the parameter `{}` twice", self.name, p.name));
            }
        }
        Ok(())
    }
}

/// The parameters as the `key=value,key=value` text a plugin's `create` receives; a key with `,` or
/// `=`, or a value with `,`, cannot be passed and is refused.
pub fn params_text(params: &Params) -> Result<String, String> {
    for (k, v) in params.iter() {
        if k.contains([',', '=', '\0']) || v.contains([',', '\0']) {
            return Err(format!(
                "`{k}={v}` cannot be passed to a plugin (a key may not contain `,` or `=`, a value not `,`)"
            ));
        }
    }
    Ok(params.to_text())
}

/// The observation agrees with its counts (a plugin reads the buffers by the counts) and holds what
/// the instance asked for.
pub fn check_observation(obs: &Observation<'_>, needs: &Needs) -> Result<(), Error> {
    let n = obs.num_slots;
    // A per-head layer's per-slot arrays are per entry of every KV head.
    let entries = if obs.per_head() { n * obs.num_kv_heads } else { n };
    let opt = |s: &[f32], len: usize| s.is_empty() || s.len() == len;
    if obs.positions.len() < entries
        || obs.live.len() < entries
        || obs.probs.len() != obs.rows * obs.num_heads * n
        || !opt(obs.key_norms, obs.num_kv_heads * n)
        || !opt(obs.keys, obs.num_kv_heads * n * obs.head_dim)
        || obs.new_slots.iter().any(|&s| s >= entries)
    {
        return Err(Error::Failed(format!(
            "the observation disagrees with its counts: {n} slots but {} positions, {} live flags, {} probabilities \
             for {} rows x {} heads, {} key norms and {} key values for {} KV heads x {} dims, new slots {:?}",
            obs.positions.len(),
            obs.live.len(),
            obs.probs.len(),
            obs.rows,
            obs.num_heads,
            obs.key_norms.len(),
            obs.keys.len(),
            obs.num_kv_heads,
            obs.head_dim,
            obs.new_slots
        )));
    }
    if n > 0 {
        let missing = |what: &str| Err(Error::Failed(format!("it asked for {what}, but the observation has none")));
        if needs.key_norms && obs.key_norms.is_empty() {
            return missing("key norms");
        }
        if needs.keys && obs.keys.is_empty() {
            return missing("keys");
        }
        if needs.rows != Rows::None && obs.rows == 0 {
            return missing("attention rows");
        }
    }
    Ok(())
}

/// The decision a plugin reported in `evict[..len]` (room for `evict.len()` = live slots), checked
/// as every decision is; `path` names the plugin in the reason.
pub fn decision_from(
    evict: &[u64],
    len: u64,
    obs: &Observation<'_>,
    budget: usize,
    path: &str,
) -> Result<Decision, Error> {
    if len > evict.len() as u64 {
        return Err(Error::Decision(format!(
            "plugin {path} reported {len} slots to evict, more than the {} live slots its buffer holds",
            evict.len()
        )));
    }
    let decision = if len == 0 {
        Decision::Keep
    } else {
        Decision::Evict(evict[..len as usize].iter().map(|&s| usize::try_from(s).unwrap_or(usize::MAX)).collect())
    };
    match validate(decision.clone(), obs, budget) {
        Ok(_) => Ok(decision),
        Err(e) => Err(Error::Decision(format!("plugin {path} answered {}: {}", summary(&decision), e.reason()))),
    }
}

/// What a plugin's return code means, for error messages.
pub fn code_meaning(code: i32) -> String {
    match code {
        CODE_FAILED => "failed".to_string(),
        CODE_PANICKED => "panicked".to_string(),
        CODE_BAD_CALL => "rejected the call".to_string(),
        c => format!("returned the unknown code {c}"),
    }
}

/// A plugin's error buffer as text (up to the first NUL; never trusts the NUL to be there).
pub fn message(buf: &[u8]) -> String {
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    let m = String::from_utf8_lossy(&buf[..end]).trim().to_string();
    if m.is_empty() {
        "(no message)".to_string()
    } else {
        m
    }
}

/// `evict slots [3, 5, 9]`, at most eight shown, for error messages.
fn summary(d: &Decision) -> String {
    match d {
        Decision::Keep => "keep (no eviction)".to_string(),
        Decision::Evict(s) => {
            let shown: Vec<String> = s.iter().take(8).map(|x| x.to_string()).collect();
            let more = if s.len() > 8 { format!(", ... ({} in all)", s.len()) } else { String::new() };
            format!("evict slots [{}{more}]", shown.join(", "))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info() -> PluginInfo {
        PluginInfo {
            name: "p".into(),
            aliases: vec!["q".into()],
            description: String::new(),
            params: Some(vec![Param::new("a", "1", ""), Param::new("b", "2", "")]),
        }
    }

    #[test]
    fn declarations_are_checked() {
        assert!(info().check().is_ok());
        let e = PluginInfo { name: "a b".into(), ..info() }.check().unwrap_err();
        assert_eq!(e, "its policy name `a b` is not 1 to 64 of [A-Za-z0-9_+.-]");
        let e = PluginInfo { aliases: vec!["p".into()], ..info() }.check().unwrap_err();
        assert!(e.contains("lists the name `p` twice"), "{e}");
        let e = PluginInfo { aliases: vec!["x:y".into()], ..info() }.check().unwrap_err();
        assert!(e.contains("its alias `x:y`"), "{e}");
        let e = PluginInfo { params: Some(vec![Param::new("a", "", ""), Param::new("a", "", "")]), ..info() }.check();
        assert!(e.unwrap_err().contains("declares the parameter `a` twice"));
        assert!(check_version(msrnn_policy_api::abi::ABI_VERSION).is_ok());
        assert!(check_version(1)
            .unwrap_err()
            .contains("built for plugin ABI version 1, but this msrnn loads versions 2 to 3"));
        assert!(check_version(2).is_ok(), "version 2 plugins still load");
        assert!(check_version(4).is_err());
    }

    #[test]
    fn params_become_a_key_value_string_and_unsafe_values_are_refused() {
        let p = Params::unchecked([("stride", "8"), ("alpha", "0.5")]).unwrap();
        assert_eq!(params_text(&p).unwrap(), "alpha=0.5,stride=8");
        assert_eq!(params_text(&Params::default()).unwrap(), "");
        let bad = Params::unchecked([("x", "a,b")]).unwrap();
        assert!(params_text(&bad).unwrap_err().contains("cannot be passed"));
    }

    #[test]
    fn observations_and_decisions_are_checked() {
        let pos = [0u64, 1, 2];
        let live = [true, true, true];
        let obs = Observation {
            layer: 0,
            tokens_seen: 3,
            num_slots: 3,
            positions: &pos,
            live: &live,
            new_slots: &[2],
            num_heads: 1,
            num_kv_heads: 1,
            head_dim: 2,
            rows: 0,
            probs: &[],
            key_norms: &[],
            keys: &[0.0; 5],
            head_capacity: 0,
        };
        let e = check_observation(&obs, &Needs::default()).unwrap_err().to_string();
        assert!(e.contains("5 key values for 1 KV heads x 2 dims"), "{e}");
        let obs = Observation { keys: &[], ..obs };
        check_observation(&obs, &Needs::default()).unwrap();
        let e = check_observation(&obs, &Needs { keys: true, ..Needs::default() }).unwrap_err();
        assert_eq!(e.to_string(), "it asked for keys, but the observation has none");
        assert_eq!(decision_from(&[0, 0, 0], 1, &obs, 2, "/p").unwrap(), Decision::Evict(vec![0]));
        let e = decision_from(&[7, 0, 0], 1, &obs, 2, "/p").unwrap_err().to_string();
        assert_eq!(e, "plugin /p answered evict slots [7]: slot 7 is out of range (the layer has 3 slots)");
        let e = decision_from(&[0, 0, 0], 9, &obs, 2, "/p").unwrap_err().to_string();
        assert!(e.contains("reported 9 slots to evict, more than the 3 live slots"), "{e}");
        assert_eq!(code_meaning(42), "returned the unknown code 42");
        assert_eq!(message(b"  \0junk"), "(no message)");
        assert_eq!(message(b"no nul"), "no nul");
    }
}

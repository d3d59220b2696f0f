//! Policies as plugins: shared libraries loaded at run time and selected by name next to the built-ins.
//!
//! The ABI lives in the dependency-free crate `msrnn-plugin-abi`, re-exported here as [`abi`], so a
//! plugin `cdylib` depends on that crate alone (no candle) and a C plugin includes
//! `docs/msrnn_plugin.h`. This module is the host side:
//!
//! - [`Plugin::open`] loads a library from the path it is given (never a search: a relative path is
//!   made absolute, so the system's library search path is not consulted), binds every symbol now
//!   (`RTLD_NOW`, so a missing dependency is a load error rather than a crash mid-run), calls
//!   [`abi::ENTRY_SYMBOL`], checks the ABI version before reading anything else, then the name, the
//!   parameter schema and the functions;
//! - [`PolicyRegistry::load_plugin`] registers it under its name (a clash with a built-in or another
//!   plugin is an error unless [`PolicyRegistry::load_plugin_overriding`] is used);
//!   [`PolicyRegistry::load_plugins_from_env`] loads each path listed in `MSRNN_PLUGINS`;
//! - every instance is a [`Policy`] that converts the [`Observation`] to the C struct without copying
//!   the big buffers, calls the plugin, and validates its decision before handing it on; the core
//!   validates it again in [`crate::attend`]. A bad decision or a failure (a panic caught by the Rust
//!   glue included) is an error naming the policy, the layer and the plugin's path; nothing is
//!   evicted.
//!
//! The library stays loaded while the registry entry, the [`Plugin`] handle or any policy instance
//! created from it lives (each holds an `Arc` of it).
//!
//! Loading a library runs its initialisers: only load plugins you trust, as you would any code.

use std::ffi::{c_char, c_void, CStr, CString, OsStr};
use std::path::Path;
use std::sync::Arc;

pub use msrnn_plugin_abi as abi;

use crate::error::{Error, Result};
use crate::policy::{validate, Decision, Needs, Observation, Policy, Rows};
use crate::registry::{Factory, PolicyContext, PolicyRegistry, Source};
use crate::spec::PolicySpec;
use crate::state::Capacity;

/// The environment variable listing plugin paths, separated by `:` (`;` on Windows).
pub const PLUGINS_ENV: &str = "MSRNN_PLUGINS";

/// Room for a plugin's error message.
const ERR_CAP: usize = 1024;
/// More parameters than this in a schema is taken for a corrupt descriptor.
const MAX_PARAMS: u64 = 256;

/// A loaded plugin library. Cheap to clone; the library is unloaded when the last clone, registry
/// entry and policy instance from it are gone.
#[derive(Clone)]
pub struct Plugin {
    inner: Arc<Inner>,
}

struct Inner {
    path: String,
    name: String,
    description: String,
    params: Option<Vec<(String, String, String)>>,
    create: abi::CreateFn,
    compress: abi::CompressFn,
    reset: Option<abi::ResetFn>,
    destroy: abi::DestroyFn,
    save_state: Option<abi::SaveStateFn>,
    load_state: Option<abi::LoadStateFn>,
    // Declared last, so dropped last: the function pointers above point into it.
    _lib: libloading::Library,
}

impl std::fmt::Debug for Plugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Plugin").field("name", &self.inner.name).field("path", &self.inner.path).finish()
    }
}

/// A valid policy or parameter name: 1 to 64 of `[A-Za-z0-9_+.-]` (no `:`, `,`, `=` or spaces, which
/// the spec syntax uses).
fn valid_name(s: &str) -> bool {
    !s.is_empty() && s.len() <= 64 && s.chars().all(|c| c.is_ascii_alphanumeric() || "_+.-".contains(c))
}

/// Reads a NUL-terminated UTF-8 string from the plugin.
///
/// # Safety
/// `p` must be NULL or point at a NUL-terminated string.
unsafe fn c_str(p: *const c_char, what: &str) -> std::result::Result<String, String> {
    if p.is_null() {
        return Err(format!("its {what} is NULL"));
    }
    CStr::from_ptr(p).to_str().map(str::to_string).map_err(|_| format!("its {what} is not UTF-8"))
}

/// A plugin's error buffer as text (up to the first NUL; never trusts the NUL to be there).
fn message(buf: &[u8]) -> String {
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    let m = String::from_utf8_lossy(&buf[..end]).trim().to_string();
    if m.is_empty() {
        "(no message)".to_string()
    } else {
        m
    }
}

#[cfg(unix)]
unsafe fn open_library(path: &Path) -> std::result::Result<libloading::Library, libloading::Error> {
    use libloading::os::unix::{Library, RTLD_LOCAL, RTLD_NOW};
    Library::open(Some(path), RTLD_NOW | RTLD_LOCAL).map(Into::into)
}

#[cfg(not(unix))]
unsafe fn open_library(path: &Path) -> std::result::Result<libloading::Library, libloading::Error> {
    libloading::Library::new(path)
}

impl Plugin {
    /// Loads the library at `path` and checks its descriptor. Nothing is registered.
    pub fn open(path: impl AsRef<Path>) -> Result<Plugin> {
        let given = path.as_ref();
        let err = |p: &Path, reason: String| Error::Plugin { path: p.display().to_string(), reason };
        if given.as_os_str().is_empty() {
            return Err(err(given, "the path is empty".into()));
        }
        // An absolute path: dlopen searches the library path only for names without a slash.
        let path = std::fs::canonicalize(given).map_err(|e| err(given, format!("cannot open it: {e}")))?;
        if !path.is_file() {
            return Err(err(&path, "it is not a file".into()));
        }
        let fail = |reason: String| err(&path, reason);
        // dlerror repeats the path; the error already starts with it.
        let shorten = |e: libloading::Error| e.to_string().replace(&format!("{}: ", path.display()), "");
        // SAFETY: loading runs the library's initialisers; the user named this file as a plugin.
        let lib = unsafe { open_library(&path) }
            .map_err(|e| fail(format!("cannot be loaded as a shared library: {}", shorten(e))))?;
        let entry_name = format!("{}\0", abi::ENTRY_SYMBOL);
        // SAFETY: the symbol's type is the ABI's entry point type; checked by the version below.
        let entry: abi::EntryFn =
            unsafe { lib.get::<abi::EntryFn>(entry_name.as_bytes()) }.map(|s| *s).map_err(|e| {
                fail(format!(
                    "it does not export `{}`, so it is not an msrnn policy plugin (build it with \
                     `export_policy!` or against docs/msrnn_plugin.h): {}",
                    abi::ENTRY_SYMBOL,
                    shorten(e)
                ))
            })?;
        // SAFETY: the entry point takes nothing and returns a pointer.
        let desc = unsafe { entry() };
        if desc.is_null() {
            return Err(fail(format!("`{}` returned NULL instead of a descriptor", abi::ENTRY_SYMBOL)));
        }
        // SAFETY: every ABI version starts with the version number; read it alone first.
        let version = unsafe { std::ptr::read(desc as *const u32) };
        if version != abi::ABI_VERSION {
            return Err(fail(format!(
                "it was built for plugin ABI version {version}, but this msrnn speaks version {}; \
                 rebuild it against msrnn-plugin-abi (or docs/msrnn_plugin.h) version {}",
                abi::ABI_VERSION,
                abi::ABI_VERSION
            )));
        }
        // SAFETY: the version matches, so the layout is ours.
        let d: abi::PolicyDescriptor = unsafe { std::ptr::read(desc) };
        let name = unsafe { c_str(d.name, "policy name") }.map_err(&fail)?;
        if !valid_name(&name) {
            return Err(fail(format!("its policy name `{name}` is not 1 to 64 of [A-Za-z0-9_+.-]")));
        }
        let description = if d.description.is_null() {
            String::new()
        } else {
            unsafe { c_str(d.description, "description") }.map_err(&fail)?
        };
        if d.num_params > MAX_PARAMS || (d.num_params > 0 && d.params.is_null()) {
            return Err(fail(format!("its parameter schema is corrupt ({} entries at {:?})", d.num_params, d.params)));
        }
        let mut params = Vec::new();
        let n_params = if d.params.is_null() { 0 } else { d.num_params as usize };
        for i in 0..n_params {
            // SAFETY: `params` points at `num_params` entries (checked non-NULL above).
            let p = unsafe { &*d.params.add(i) };
            let pname = unsafe { c_str(p.name, "parameter name") }.map_err(&fail)?;
            if !valid_name(&pname) {
                return Err(fail(format!("its parameter name `{pname}` is not 1 to 64 of [A-Za-z0-9_+.-]")));
            }
            let default = if p.default_value.is_null() {
                String::new()
            } else {
                unsafe { c_str(p.default_value, "default") }.map_err(&fail)?
            };
            let help =
                if p.help.is_null() { String::new() } else { unsafe { c_str(p.help, "help") }.map_err(&fail)? };
            params.push((pname, default, help));
        }
        let params = if d.params.is_null() { None } else { Some(params) };
        let missing = |f: &str| fail(format!("policy `{name}` has no `{f}` function (NULL in its descriptor)"));
        let create = d.create.ok_or_else(|| missing("create"))?;
        let compress = d.compress.ok_or_else(|| missing("compress"))?;
        let destroy = d.destroy.ok_or_else(|| missing("destroy"))?;
        if d.save_state.is_some() != d.load_state.is_some() {
            return Err(fail(format!("policy `{name}` has only one of `save_state` and `load_state`")));
        }
        tracing::debug!(path = %path.display(), %name, "loaded policy plugin");
        Ok(Plugin {
            inner: Arc::new(Inner {
                path: path.display().to_string(),
                name,
                description,
                params,
                create,
                compress,
                reset: d.reset,
                destroy,
                save_state: d.save_state,
                load_state: d.load_state,
                _lib: lib,
            }),
        })
    }

    /// The policy's name, as selected with `--policies NAME`.
    pub fn name(&self) -> &str {
        &self.inner.name
    }
    pub fn description(&self) -> &str {
        &self.inner.description
    }
    /// The absolute path the library was loaded from.
    pub fn path(&self) -> &str {
        &self.inner.path
    }
    /// The parameter schema: (name, default, help); `None` when the plugin declares none (it then
    /// accepts any keys and checks them itself).
    pub fn params(&self) -> Option<&[(String, String, String)]> {
        self.inner.params.as_deref()
    }

    /// One instance for one layer.
    pub fn create(&self, spec: &PolicySpec, ctx: &PolicyContext) -> Result<Box<dyn Policy>> {
        let i = &self.inner;
        if let Some(schema) = &i.params {
            // The registry checks this too; a `Plugin` may also be used on its own.
            if let Some(k) = spec.params.keys().find(|k| !schema.iter().any(|(n, _, _)| n == *k)) {
                let known: Vec<&str> = schema.iter().map(|(n, _, _)| n.as_str()).collect();
                return Err(Error::InvalidParam {
                    policy: i.name.clone(),
                    reason: if known.is_empty() {
                        format!("takes no parameters, got `{k}`")
                    } else {
                        format!("unknown parameter `{k}` (known: {})", known.join(", "))
                    },
                });
            }
        }
        let params = params_string(spec, &i.name)?;
        let raw_ctx = abi::RawContext {
            layer: ctx.layer as u64,
            num_layers: ctx.num_layers as u64,
            num_heads: ctx.num_heads as u64,
            num_kv_heads: ctx.num_kv_heads as u64,
            capacity: match ctx.capacity {
                Capacity::Bounded(c) => c as u64,
                Capacity::Unbounded => u64::MAX,
            },
        };
        let mut raw_needs = abi::RawNeeds::default();
        let mut err = vec![0u8; ERR_CAP];
        // SAFETY: every pointer is valid for the call; the plugin writes at most ERR_CAP bytes.
        let handle = unsafe {
            (i.create)(params.as_ptr(), &raw_ctx, &mut raw_needs, err.as_mut_ptr() as *mut c_char, ERR_CAP as u64)
        };
        if handle.is_null() {
            return Err(Error::Plugin {
                path: i.path.clone(),
                reason: format!(
                    "policy `{}` refused to create its instance for layer {}: {}",
                    i.name,
                    ctx.layer,
                    message(&err)
                ),
            });
        }
        let mut instance = PluginPolicy {
            plugin: self.inner.clone(),
            handle,
            needs: Needs::default(),
            new_slots: Vec::new(),
            out: Vec::new(),
            err,
        };
        // From here `instance` owns the handle: an error below destroys it.
        let rows = match raw_needs.rows {
            abi::ROWS_NONE => Rows::None,
            abi::ROWS_LAST => Rows::Last,
            abi::ROWS_ALL => Rows::All,
            r => {
                return Err(Error::Plugin {
                    path: i.path.clone(),
                    reason: format!(
                        "policy `{}` asked for rows = {r}, which is none of 0 (none), 1 (last), 2 (all)",
                        i.name
                    ),
                })
            }
        };
        instance.needs = Needs { rows, key_norms: raw_needs.key_norms != 0, every_step: raw_needs.every_step != 0 };
        Ok(Box::new(instance))
    }
}

/// The spec's parameters as the ABI's `key=value,key=value` string.
fn params_string(spec: &PolicySpec, policy: &str) -> Result<CString> {
    let mut parts = Vec::with_capacity(spec.params.len());
    for (k, v) in &spec.params {
        let v = v.to_string();
        if k.contains([',', '=', '\0']) || v.contains([',', '\0']) {
            return Err(Error::InvalidParam {
                policy: policy.to_string(),
                reason: format!(
                    "`{k}={v}` cannot be passed to a plugin (a key may not contain `,` or `=`, a value not `,`)"
                ),
            });
        }
        parts.push(format!("{k}={v}"));
    }
    Ok(CString::new(parts.join(",")).expect("NUL bytes were refused above"))
}

/// One layer's instance of a plugin policy.
struct PluginPolicy {
    plugin: Arc<Inner>,
    handle: *mut c_void,
    needs: Needs,
    // Reused buffers: new slots as u64, the decision, the error message.
    new_slots: Vec<u64>,
    out: Vec<u64>,
    err: Vec<u8>,
}

// SAFETY: the ABI requires an instance to be movable between threads; it is never shared (`&mut self`
// for every call).
unsafe impl Send for PluginPolicy {}

impl Drop for PluginPolicy {
    fn drop(&mut self) {
        // SAFETY: the handle came from this plugin's `create` and is destroyed once; the library is
        // still loaded because `self.plugin` is dropped after this.
        unsafe { (self.plugin.destroy)(self.handle) }
    }
}

/// What a plugin's return code means, for error messages.
fn code_meaning(code: i32) -> String {
    match code {
        abi::CODE_FAILED => "failed".to_string(),
        abi::CODE_PANICKED => "panicked".to_string(),
        abi::CODE_BAD_CALL => "rejected the call".to_string(),
        c => format!("returned the unknown code {c}"),
    }
}

/// `[3, 5, 9]`, at most eight entries, for error messages.
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

impl Policy for PluginPolicy {
    fn name(&self) -> &str {
        &self.plugin.name
    }

    fn needs(&self) -> Needs {
        self.needs
    }

    fn step(&mut self, obs: &Observation<'_>, budget: usize) -> Result<Decision> {
        let p = self.plugin.clone();
        let failed = |reason: String| Error::PolicyFailed { policy: p.name.clone(), layer: obs.layer, reason };
        // The plugin reads the buffers with the lengths the counts give: they must agree.
        let n = obs.num_slots;
        let norms_ok = obs.key_norms.is_empty() || obs.key_norms.len() == obs.num_kv_heads * n;
        if obs.positions.len() < n
            || obs.live.len() < n
            || obs.probs.len() != obs.rows * obs.num_heads * n
            || !norms_ok
            || obs.new_slots.iter().any(|&s| s >= n)
        {
            return Err(Error::Shape {
                op: "plugin observation",
                reason: format!(
                    "{n} slots but {} positions, {} live flags, {} probabilities for {} rows x {} heads, {} key norms for {} KV heads, new slots {:?}",
                    obs.positions.len(),
                    obs.live.len(),
                    obs.probs.len(),
                    obs.rows,
                    obs.num_heads,
                    obs.key_norms.len(),
                    obs.num_kv_heads,
                    obs.new_slots
                ),
            });
        }
        if self.needs.key_norms && obs.key_norms.is_empty() && n > 0 {
            return Err(failed(format!("plugin {} asked for key norms, but the observation has none", p.path)));
        }
        if self.needs.rows != Rows::None && obs.rows == 0 && n > 0 {
            return Err(failed(format!("plugin {} asked for attention rows, but the observation has none", p.path)));
        }
        self.new_slots.clear();
        self.new_slots.extend(obs.new_slots.iter().map(|&s| s as u64));
        let live = obs.live_count();
        self.out.clear();
        self.out.resize(live, u64::MAX);
        self.err.iter_mut().for_each(|b| *b = 0);
        let ptr_or_null = |s: &[f32]| if s.is_empty() { std::ptr::null() } else { s.as_ptr() };
        let raw = abi::RawObservation {
            layer: obs.layer as u64,
            tokens_seen: obs.tokens_seen,
            num_slots: n as u64,
            positions: obs.positions.as_ptr(),
            // `bool` is one byte, 0 or 1.
            live: obs.live.as_ptr() as *const u8,
            new_slots: self.new_slots.as_ptr(),
            num_new: self.new_slots.len() as u64,
            num_heads: obs.num_heads as u64,
            num_kv_heads: obs.num_kv_heads as u64,
            rows: obs.rows as u64,
            probs: ptr_or_null(obs.probs),
            key_norms: ptr_or_null(obs.key_norms),
        };
        let mut len: u64 = 0;
        // SAFETY: every buffer is valid for the lengths in `raw` (checked above); `out` has room for
        // `live` entries, `err` for ERR_CAP bytes.
        let code = unsafe {
            (p.compress)(
                self.handle,
                &raw,
                budget as u64,
                self.out.as_mut_ptr(),
                live as u64,
                &mut len,
                self.err.as_mut_ptr() as *mut c_char,
                ERR_CAP as u64,
            )
        };
        if code != abi::CODE_OK {
            return Err(failed(format!("plugin {} {}: {}", p.path, code_meaning(code), message(&self.err))));
        }
        if len > live as u64 {
            return Err(Error::InvalidDecision {
                policy: p.name.clone(),
                layer: obs.layer,
                reason: format!(
                    "plugin {} reported {len} slots to evict, more than the {live} live slots its buffer holds",
                    p.path
                ),
            });
        }
        let decision = if len == 0 {
            Decision::Keep
        } else {
            Decision::Evict(
                self.out[..len as usize].iter().map(|&s| usize::try_from(s).unwrap_or(usize::MAX)).collect(),
            )
        };
        validate(decision.clone(), obs, budget, &p.name).map_err(|e| match e {
            Error::InvalidDecision { policy, layer, reason } => Error::InvalidDecision {
                policy,
                layer,
                reason: format!("plugin {} answered {}: {reason}", p.path, summary(&decision)),
            },
            e => e,
        })?;
        Ok(decision)
    }

    fn reset(&mut self) {
        if let Some(reset) = self.plugin.reset {
            // SAFETY: a live handle of this plugin.
            unsafe { reset(self.handle) }
        }
    }

    /// The plugin's bookkeeping. The trait gives no way to report a failure here, so one is logged
    /// (and nothing is saved; restoring then fails loudly for a plugin that expects state).
    fn save_state(&self) -> Vec<f64> {
        let p = &self.plugin;
        let Some(save) = p.save_state else { return Vec::new() };
        let mut buf = vec![0f64; 64];
        let mut err = vec![0u8; ERR_CAP];
        for _ in 0..2 {
            let mut len = 0u64;
            // SAFETY: a live handle; `buf` has room for `buf.len()` values, `err` for ERR_CAP bytes.
            let code = unsafe {
                save(
                    self.handle,
                    buf.as_mut_ptr(),
                    buf.len() as u64,
                    &mut len,
                    err.as_mut_ptr() as *mut c_char,
                    ERR_CAP as u64,
                )
            };
            if code != abi::CODE_OK {
                tracing::error!(policy = %p.name, plugin = %p.path, "save_state {}: {}", code_meaning(code), message(&err));
                return Vec::new();
            }
            if len <= buf.len() as u64 {
                buf.truncate(len as usize);
                return buf;
            }
            buf = vec![0f64; len as usize];
        }
        tracing::error!(policy = %p.name, plugin = %p.path, "save_state kept changing its length");
        Vec::new()
    }

    fn load_state(&mut self, data: &[f64]) -> Result<()> {
        let p = &self.plugin;
        let Some(load) = p.load_state else {
            return if data.is_empty() {
                Ok(())
            } else {
                Err(Error::StateFile(format!(
                    "policy `{}` (plugin {}) keeps no state but the file has {} values",
                    p.name,
                    p.path,
                    data.len()
                )))
            };
        };
        let mut err = vec![0u8; ERR_CAP];
        // SAFETY: a live handle; `data` is valid for its length.
        let code = unsafe {
            load(self.handle, data.as_ptr(), data.len() as u64, err.as_mut_ptr() as *mut c_char, ERR_CAP as u64)
        };
        if code != abi::CODE_OK {
            return Err(Error::StateFile(format!(
                "policy `{}`: plugin {} {} restoring its state: {}",
                p.name,
                p.path,
                code_meaning(code),
                message(&err)
            )));
        }
        Ok(())
    }
}

impl PolicyRegistry {
    /// Loads the plugin at `path` and registers its policy. A name already taken (by a built-in or
    /// another plugin) is an error; see [`PolicyRegistry::load_plugin_overriding`].
    pub fn load_plugin(&mut self, path: impl AsRef<Path>) -> Result<Plugin> {
        self.add_plugin(Plugin::open(path)?, false)
    }

    /// Like [`PolicyRegistry::load_plugin`], but the plugin's policy replaces one of the same name.
    pub fn load_plugin_overriding(&mut self, path: impl AsRef<Path>) -> Result<Plugin> {
        self.add_plugin(Plugin::open(path)?, true)
    }

    /// Registers an opened plugin's policy (`replace`: may take the name of an existing entry).
    pub fn add_plugin(&mut self, plugin: Plugin, replace: bool) -> Result<Plugin> {
        let name = plugin.name().to_string();
        if !replace {
            if let Ok(e) = self.get(&name) {
                return Err(Error::Plugin {
                    path: plugin.path().to_string(),
                    reason: format!(
                        "its policy `{name}` clashes with `{}` ({}); load it as an override to replace that one",
                        e.name, e.source
                    ),
                });
            }
        }
        let p = plugin.clone();
        let factory: Factory = Arc::new(move |spec: &PolicySpec, ctx: &PolicyContext| p.create(spec, ctx));
        self.register(
            &name,
            plugin.description(),
            plugin.params().map(<[_]>::to_vec),
            Source::Plugin(plugin.path().to_string()),
            factory,
            replace,
        )?;
        Ok(plugin)
    }

    /// Loads every plugin listed in `list` (paths separated by `:`, `;` on Windows; empty entries
    /// skipped), in order, stopping at the first failure.
    pub fn load_plugin_list(&mut self, list: &OsStr) -> Result<Vec<Plugin>> {
        std::env::split_paths(list).filter(|p| !p.as_os_str().is_empty()).map(|p| self.load_plugin(&p)).collect()
    }

    /// Loads every plugin listed in the `MSRNN_PLUGINS` environment variable (see
    /// [`PolicyRegistry::load_plugin_list`]); none when it is unset or empty.
    pub fn load_plugins_from_env(&mut self) -> Result<Vec<Plugin>> {
        match std::env::var_os(PLUGINS_ENV) {
            Some(list) => self.load_plugin_list(&list),
            None => Ok(Vec::new()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::ParamValue;

    fn tmp(name: &str) -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("msrnn-core-plugin-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        d.join(name)
    }

    #[test]
    fn missing_files_and_non_libraries_are_clear_errors() {
        let e = Plugin::open("/nonexistent/libnothing.so").unwrap_err().to_string();
        assert!(e.starts_with("plugin /nonexistent/libnothing.so: cannot open it"), "{e}");
        let f = tmp("not-a-library.so");
        std::fs::write(&f, "just text\n").unwrap();
        let e = Plugin::open(&f).unwrap_err().to_string();
        assert!(e.contains("not-a-library.so") && e.contains("cannot be loaded as a shared library"), "{e}");
        let e = Plugin::open(f.parent().unwrap()).unwrap_err().to_string();
        assert!(e.contains("not a file"), "{e}");
        let mut r = PolicyRegistry::new();
        let e = r.load_plugin("").unwrap_err().to_string();
        assert!(e.contains("the path is empty"), "{e}");
        assert_eq!(r.entries().count(), 0);
    }

    #[test]
    fn plugin_lists_skip_empty_entries_and_stop_at_the_first_failure() {
        let mut r = PolicyRegistry::new();
        assert!(r.load_plugin_list(OsStr::new("")).unwrap().is_empty());
        assert!(r.load_plugin_list(OsStr::new("::")).unwrap().is_empty());
        let e = r.load_plugin_list(OsStr::new(":/nonexistent/a.so:/nonexistent/b.so")).unwrap_err().to_string();
        assert!(e.contains("/nonexistent/a.so"), "{e}");
    }

    #[test]
    fn params_become_a_key_value_string_and_unsafe_values_are_refused() {
        let spec = PolicySpec::new("p").with("stride", ParamValue::Int(8)).with("alpha", ParamValue::Float(0.5));
        assert_eq!(params_string(&spec, "p").unwrap().to_str().unwrap(), "alpha=0.5,stride=8");
        assert_eq!(params_string(&PolicySpec::new("p"), "p").unwrap().to_str().unwrap(), "");
        let bad = PolicySpec::new("p").with("x", ParamValue::Str("a,b".into()));
        assert!(params_string(&bad, "p").unwrap_err().to_string().contains("cannot be passed"));
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

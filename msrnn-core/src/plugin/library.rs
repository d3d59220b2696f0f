//! A native plugin: a shared library loaded from the path the user named, its descriptor read and
//! checked. The library stays loaded while a [`Plugin`] handle, its registry entry or any instance
//! from it lives (each holds an `Arc` of it).

use std::ffi::{c_char, c_void, CStr, CString};
use std::path::Path;
use std::sync::Arc;

use msrnn_policy_api::abi;
use msrnn_policy_api::{Context, Observation, Param, Params, Policy};

use super::instance::{PluginPolicy, Raw, Transport};
use super::kind::{check_version, PluginInfo, PluginKind, MAX_DECLARED};
use crate::error::{Error, Result};
use crate::spec::PolicySpec;

/// A loaded native plugin. Cheap to clone; the library is unloaded when the last clone, registry
/// entry and policy instance from it are gone.
#[derive(Clone)]
pub struct Plugin {
    pub(super) lib: Arc<Library>,
}

/// The library and its checked descriptor.
pub(super) struct Library {
    pub path: String,
    pub info: PluginInfo,
    pub create: abi::CreateFn,
    pub compress: abi::CompressFn,
    pub reset: Option<abi::ResetFn>,
    pub destroy: abi::DestroyFn,
    pub save_state: Option<abi::SaveStateFn>,
    pub load_state: Option<abi::LoadStateFn>,
    // Declared last, so dropped last: the function pointers above point into it.
    _lib: libloading::Library,
}

impl std::fmt::Debug for Plugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Plugin").field("name", &self.lib.info.name).field("path", &self.lib.path).finish()
    }
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

/// Like [`c_str`], but NULL reads as empty.
unsafe fn c_str_or_empty(p: *const c_char, what: &str) -> std::result::Result<String, String> {
    if p.is_null() {
        Ok(String::new())
    } else {
        c_str(p, what)
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

/// Decodes a descriptor whose version was checked.
///
/// # Safety
/// `d` must come from a plugin of this ABI version: every pointer NULL or valid for its count.
unsafe fn read_info(d: &abi::PolicyDescriptor) -> std::result::Result<PluginInfo, String> {
    let name = c_str(d.name, "policy name")?;
    let description = c_str_or_empty(d.description, "description")?;
    if d.num_aliases > MAX_DECLARED || (d.num_aliases > 0 && d.aliases.is_null()) {
        return Err(format!("its alias list is corrupt ({} entries at {:?})", d.num_aliases, d.aliases));
    }
    let aliases = (0..d.num_aliases as usize).map(|i| c_str(*d.aliases.add(i), "alias")).collect::<Result<_, _>>()?;
    if d.num_params > MAX_DECLARED || (d.num_params > 0 && d.params.is_null()) {
        return Err(format!("its parameter schema is corrupt ({} entries at {:?})", d.num_params, d.params));
    }
    let params = if d.params.is_null() {
        None
    } else {
        let mut v = Vec::new();
        for i in 0..d.num_params as usize {
            let p = &*d.params.add(i);
            v.push(Param::owned(
                c_str(p.name, "parameter name")?,
                c_str_or_empty(p.default_value, "default")?,
                c_str_or_empty(p.help, "help")?,
            ));
        }
        Some(v)
    };
    Ok(PluginInfo { name, aliases, description, params })
}

impl Plugin {
    /// Loads the library at `path` and checks its descriptor. Nothing is registered.
    ///
    /// The path is made absolute first, so the system's library search path is never consulted;
    /// every symbol is bound now (`RTLD_NOW`), so a missing dependency fails here rather than mid-run.
    /// The ABI version is read alone before anything else.
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
        check_version(unsafe { std::ptr::read(desc as *const u32) }).map_err(&fail)?;
        // SAFETY: the version matches, so the layout is ours.
        let d: abi::PolicyDescriptor = unsafe { std::ptr::read(desc) };
        let info = unsafe { read_info(&d) }.map_err(&fail)?;
        info.check().map_err(&fail)?;
        let name = &info.name;
        let missing = |f: &str| fail(format!("policy `{name}` has no `{f}` function (NULL in its descriptor)"));
        let create = d.create.ok_or_else(|| missing("create"))?;
        let compress = d.compress.ok_or_else(|| missing("compress"))?;
        let destroy = d.destroy.ok_or_else(|| missing("destroy"))?;
        if d.save_state.is_some() != d.load_state.is_some() {
            return Err(fail(format!("policy `{name}` has only one of `save_state` and `load_state`")));
        }
        tracing::debug!(path = %path.display(), %name, "loaded policy plugin");
        Ok(Plugin {
            lib: Arc::new(Library {
                path: path.display().to_string(),
                info,
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
        &self.lib.info.name
    }
    pub fn description(&self) -> &str {
        &self.lib.info.description
    }
    /// The absolute path the library was loaded from.
    pub fn path(&self) -> &str {
        &self.lib.path
    }
    /// The parameter schema; `None` when the plugin declares none (it then accepts any keys and
    /// checks them itself).
    pub fn params(&self) -> Option<&[Param]> {
        self.lib.info.params.as_deref()
    }

    /// One instance for one layer, the spec's parameters checked against the schema first.
    pub fn create(&self, spec: &PolicySpec, ctx: &Context) -> Result<Box<dyn Policy>> {
        let params = spec
            .to_params(self.params())
            .map_err(|e| Error::InvalidParam { policy: self.name().to_string(), reason: e.reason().to_string() })?;
        self.instantiate(&params, ctx)
    }
}

impl PluginKind for Plugin {
    fn info(&self) -> &PluginInfo {
        &self.lib.info
    }

    fn path(&self) -> &str {
        &self.lib.path
    }

    fn instantiate(&self, params: &Params, ctx: &Context) -> Result<Box<dyn Policy>> {
        Ok(Box::new(PluginPolicy::<Native>::create(self, params, ctx)?))
    }
}

/// One instance of a native plugin: its handle, called through the library's C functions without
/// copying the big buffers. Dropping it destroys the handle.
pub(super) struct Native {
    lib: Arc<Library>,
    handle: *mut c_void,
    /// Reused buffer: the new slots as u64.
    new_slots: Vec<u64>,
}

// SAFETY: the ABI requires an instance to be movable between threads; it is never shared (`&mut self`
// for every call).
unsafe impl Send for Native {}

impl Drop for Native {
    fn drop(&mut self) {
        // SAFETY: the handle came from this library's `create` and is destroyed once; the library is
        // still loaded because `self.lib` is dropped after this.
        unsafe { (self.lib.destroy)(self.handle) }
    }
}

/// `err` as the C functions take it.
fn err_ptr(err: &mut [u8]) -> (*mut c_char, u64) {
    (err.as_mut_ptr() as *mut c_char, err.len() as u64)
}

impl Transport for Native {
    type Plugin = Plugin;

    fn create(plugin: &Plugin, params: &str, ctx: &Context, err: &mut [u8]) -> Raw<Option<(Self, abi::RawNeeds)>> {
        let l = &plugin.lib;
        let text = CString::new(params).map_err(|_| "its parameters contain a NUL byte".to_string())?;
        let raw_ctx = abi::RawContext::from(ctx);
        let mut raw_needs = abi::RawNeeds::default();
        let (err, err_cap) = err_ptr(err);
        // SAFETY: every pointer is valid for the call; the plugin writes at most `err_cap` bytes.
        let handle = unsafe { (l.create)(text.as_ptr(), &raw_ctx, &mut raw_needs, err, err_cap) };
        if handle.is_null() {
            return Ok(None);
        }
        Ok(Some((Native { lib: l.clone(), handle, new_slots: Vec::new() }, raw_needs)))
    }

    fn compress(&mut self, obs: &Observation<'_>, budget: usize, evict: &mut [u64], err: &mut [u8]) -> Raw<(i32, u64)> {
        self.new_slots.clear();
        self.new_slots.extend(obs.new_slots.iter().map(|&s| s as u64));
        let raw = abi::RawObservation::new(obs, &self.new_slots);
        let (err, err_cap) = err_ptr(err);
        let mut len: u64 = 0;
        // SAFETY: every buffer is valid for the lengths in `raw` (checked by the caller); `evict` and
        // `err` for their lengths.
        let code = unsafe {
            (self.lib.compress)(
                self.handle,
                &raw,
                budget as u64,
                evict.as_mut_ptr(),
                evict.len() as u64,
                &mut len,
                err,
                err_cap,
            )
        };
        Ok((code, len))
    }

    /// A plugin without `reset` keeps nothing to forget.
    fn reset(&mut self) -> Raw<()> {
        if let Some(reset) = self.lib.reset {
            // SAFETY: a live handle of this library.
            unsafe { reset(self.handle) }
        }
        Ok(())
    }

    fn has_state(&self) -> bool {
        self.lib.save_state.is_some()
    }

    fn save_state(&mut self, out: &mut [f64], err: &mut [u8]) -> Raw<(i32, u64)> {
        let save = self.lib.save_state.expect("has_state");
        let (err, err_cap) = err_ptr(err);
        let mut len = 0u64;
        // SAFETY: a live handle; `out` and `err` are valid for their lengths.
        let code = unsafe { save(self.handle, out.as_mut_ptr(), out.len() as u64, &mut len, err, err_cap) };
        Ok((code, len))
    }

    fn load_state(&mut self, data: &[f64], err: &mut [u8]) -> Raw<i32> {
        let load = self.lib.load_state.expect("has_state");
        let (err, err_cap) = err_ptr(err);
        // SAFETY: a live handle; `data` and `err` are valid for their lengths.
        Ok(unsafe { load(self.handle, data.as_ptr(), data.len() as u64, err, err_cap) })
    }
}

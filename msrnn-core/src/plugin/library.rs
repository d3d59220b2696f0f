//! A native plugin: a shared library loaded from the path the user named, its descriptor read and
//! checked. The library stays loaded while a [`Plugin`] handle, its registry entry or any instance
//! from it lives (each holds an `Arc` of it).

use std::ffi::{c_char, CStr, CString};
use std::path::Path;
use std::sync::Arc;

use msrnn_policy_api::abi;
use msrnn_policy_api::{Context, Param, Params, Policy};

use super::instance::NativePolicy;
use super::kind::{check_version, message, params_text, PluginInfo, PluginKind, MAX_DECLARED};
use crate::error::{Error, Result};
use crate::spec::PolicySpec;

/// Room for a plugin's error message.
pub(super) const ERR_CAP: usize = 1024;

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
        let l = &self.lib;
        let text = params_text(params).map_err(|reason| Error::InvalidParam { policy: l.info.name.clone(), reason })?;
        let text = CString::new(text).expect("NUL bytes were refused above");
        let raw_ctx = abi::RawContext::from(ctx);
        let mut raw_needs = abi::RawNeeds::default();
        let mut err = vec![0u8; ERR_CAP];
        // SAFETY: every pointer is valid for the call; the plugin writes at most ERR_CAP bytes.
        let handle = unsafe {
            (l.create)(text.as_ptr(), &raw_ctx, &mut raw_needs, err.as_mut_ptr() as *mut c_char, ERR_CAP as u64)
        };
        let refused = |reason: String| Error::Plugin { path: l.path.clone(), reason };
        if handle.is_null() {
            return Err(refused(format!(
                "policy `{}` refused to create its instance for layer {}: {}",
                l.info.name,
                ctx.layer,
                message(&err)
            )));
        }
        // From here the instance owns the handle: an error below destroys it.
        let mut instance = NativePolicy::new(self.lib.clone(), handle, err);
        let (needs, capacity) = raw_needs.decode().map_err(|e| refused(format!("policy `{}` {e}", l.info.name)))?;
        instance.set_needs(needs, capacity);
        Ok(Box::new(instance))
    }
}

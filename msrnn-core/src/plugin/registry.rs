//! Plugins in the registry: load by path, register under their names (a clash is an error unless
//! overriding on purpose), load every path in `MSRNN_PLUGINS`. Works for any [`PluginKind`].

use std::ffi::OsStr;
use std::path::Path;
use std::sync::Arc;

use super::kind::{open_plugin, PluginKind};
use crate::error::{Error, Result};
use crate::registry::{Entry, Factory, PolicyRegistry, Source};

/// The environment variable listing plugin paths, separated by `:` (`;` on Windows).
pub const PLUGINS_ENV: &str = "MSRNN_PLUGINS";

impl PolicyRegistry {
    /// Loads the plugin at `path` and registers its policy. A name already taken (by a built-in or
    /// another plugin) is an error; see [`PolicyRegistry::load_plugin_overriding`]. The kind comes
    /// from the file: a registered [`PluginLoader`](super::PluginLoader) whose magic it starts with (WebAssembly, when
    /// msrnn-wasm is linked), else a native shared library.
    pub fn load_plugin(&mut self, path: impl AsRef<Path>) -> Result<Arc<dyn PluginKind>> {
        self.add_plugin(open_plugin(path.as_ref())?, false)
    }

    /// Like [`PolicyRegistry::load_plugin`], but the plugin's policy replaces one of the same name.
    pub fn load_plugin_overriding(&mut self, path: impl AsRef<Path>) -> Result<Arc<dyn PluginKind>> {
        self.add_plugin(open_plugin(path.as_ref())?, true)
    }

    /// Registers a loaded plugin of any kind (`replace`: may take the name of an existing entry).
    pub fn add_plugin<P: PluginKind + Clone>(&mut self, plugin: P, replace: bool) -> Result<P> {
        let info = plugin.info();
        if !replace {
            for n in std::iter::once(&info.name).chain(&info.aliases) {
                if let Ok(e) = self.get(n) {
                    return Err(Error::Plugin {
                        path: plugin.path().to_string(),
                        reason: format!(
                            "its policy `{n}` clashes with `{}` ({}); load it as an override to replace that one",
                            e.name, e.source
                        ),
                    });
                }
            }
        }
        let p = plugin.clone();
        let factory: Factory = Arc::new(move |params, ctx, _| p.instantiate(params, ctx));
        let source = Source::Plugin(plugin.path().to_string());
        let entry = Entry::new(&info.name, &info.description, info.params.clone(), source, factory)
            .with_aliases(info.aliases.iter().cloned());
        self.insert(entry, replace)?;
        Ok(plugin)
    }

    /// Loads every plugin listed in `list` (paths separated by `:`, `;` on Windows; empty entries
    /// skipped), in order, stopping at the first failure.
    pub fn load_plugin_list(&mut self, list: &OsStr) -> Result<Vec<Arc<dyn PluginKind>>> {
        std::env::split_paths(list).filter(|p| !p.as_os_str().is_empty()).map(|p| self.load_plugin(&p)).collect()
    }

    /// Loads every plugin listed in the `MSRNN_PLUGINS` environment variable (see
    /// [`PolicyRegistry::load_plugin_list`]); none when it is unset or empty.
    pub fn load_plugins_from_env(&mut self) -> Result<Vec<Arc<dyn PluginKind>>> {
        match std::env::var_os(PLUGINS_ENV) {
            Some(list) => self.load_plugin_list(&list),
            None => Ok(Vec::new()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plugin::Plugin;

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
}

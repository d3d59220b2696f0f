//! Policies as plugins: code loaded at run time and selected by name next to the built-ins.
//!
//! The contract and its C layout live in the dependency-free crate msrnn-policy-api (re-exported
//! here as [`abi`] for the layout), so a plugin depends on that crate alone and a C plugin includes
//! `docs/msrnn_plugin.h`. This module is the host side, by concern:
//!
//! - `kind`: what every plugin kind shares — the [`PluginKind`] trait the registry works with, the
//!   version handshake, the checks of a declaration ([`PluginInfo`]), of the parameters handed over,
//!   of the observation shown and of the decision returned. A second kind (WebAssembly, its own
//!   crate) implements [`PluginKind`] with these same checks;
//! - `library`: a native plugin ([`Plugin`]): a shared library opened from the path the user named,
//!   its descriptor read and checked, and its transport;
//! - `instance`: one layer's instance of a plugin of any kind, [`PluginPolicy`]: a [`crate::Policy`]
//!   over a [`Transport`] (the few raw calls of a kind: the native library's C functions here,
//!   a sandboxed module's exports in msrnn-wasm), with the checks, conversions and retries done once;
//! - `registry`: [`crate::PolicyRegistry::load_plugin`], overrides, `MSRNN_PLUGINS`; the kind of a
//!   file is picked by its first bytes among the [`PluginLoader`]s linked in (msrnn-wasm registers
//!   WebAssembly), native otherwise.
//!
//! Every decision a plugin returns is validated before the core sees it (and again by the core);
//! a bad one or a failure (a panic caught by the Rust glue included) is an error naming the policy,
//! the layer and the plugin's path, and nothing is evicted. Loading a native library runs its
//! initialisers: only load plugins you trust, as you would any code.

mod instance;
mod kind;
mod library;
mod registry;

pub use instance::{PluginPolicy, Raw, Transport, ERR_CAP};
pub use kind::{
    check_observation, check_version, code_meaning, decision_from, message, open_plugin, params_text, PluginInfo,
    PluginKind, PluginLoader, MAX_DECLARED,
};
pub use library::Plugin;
pub use msrnn_policy_api::abi;
pub use registry::PLUGINS_ENV;

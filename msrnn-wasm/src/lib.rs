//! # msrnn-wasm
//!
//! Policies compiled to WebAssembly, loaded as msrnn plugins and run in a sandbox: someone else's
//! policy can be run without trusting it with the process.
//!
//! A module is a plugin of the same ABI version as a native library and says the same things in
//! the same layout (the descriptor of `docs/msrnn_plugin.h`, compiled for wasm32): a Rust policy
//! becomes one by building its `export_policy!` crate for `wasm32-unknown-unknown`. The host reads
//! and checks the declaration with msrnn-core's shared checks ([`msrnn_core::plugin`]), copies each
//! observation into the module's memory, and validates every decision the same way.
//!
//! What a module can do: compute, in its own linear memory. What it cannot: import anything (a
//! module that imports a function, memory, table or global is refused when it loads, so it has no
//! way to reach files, the network, the clock or the host's memory), use more than
//! [`Limits::memory`] bytes of memory, or run more than [`Limits::fuel`] instructions in one call.
//! A trap (an infinite loop out of fuel, a memory blow-up, `unreachable`, an out-of-bounds access, a
//! stack overflow) is an error naming the plugin, the state is left untouched, and the instance
//! refuses to step until it is reset, which builds it afresh.
//!
//! Each layer's instance has its own store (memory, fuel), so layers never share state and a
//! failure in one leaves the others as they were. Linking this crate registers the kind
//! ([`msrnn_core::plugin::PluginLoader`]): every plugin path msrnn accepts (`--plugin`,
//! `MSRNN_PLUGINS`, [`msrnn_core::PolicyRegistry::load_plugin`]) then loads `.wasm` files too, with
//! the limits from [`FUEL_ENV`] and [`MEMORY_ENV`] or the defaults.
//!
//! Without the default `runtime` feature only the wasm32 layout and the descriptor reader are
//! built (no wasmtime): what the fuzz targets use.

mod layout;
#[cfg(feature = "runtime")]
mod runtime;

pub use layout::{read_descriptor, Declared, Mem};
#[cfg(feature = "runtime")]
pub use runtime::{Limits, WasmPlugin, WasmPolicy};

/// The environment variable that sets `Limits::fuel` for plugins loaded by path.
pub const FUEL_ENV: &str = "MSRNN_WASM_FUEL";
/// The environment variable that sets `Limits::memory` (in MiB) for plugins loaded by path.
pub const MEMORY_ENV: &str = "MSRNN_WASM_MEMORY_MB";
/// WebAssembly's magic, the first four bytes of every module.
pub const MAGIC: &[u8] = b"\0asm";

//! # msrnn-plugin-abi
//!
//! The binary interface between msrnn and a compression policy built as a shared library, and the
//! [`export_policy!`] macro that writes the glue for a Rust plugin. This crate has no dependencies, so
//! a plugin `cdylib` that depends on it alone builds in seconds and does not link candle. msrnn-core
//! re-exports it as `msrnn_core::plugin::abi` and implements the host side.
//!
//! ## The ABI (version [`ABI_VERSION`])
//!
//! A plugin library exports one C symbol, [`ENTRY_SYMBOL`] (`msrnn_policy_plugin`), a function taking
//! nothing and returning a pointer to a static [`PolicyDescriptor`]. The descriptor's first field is
//! the ABI version; the host reads it before anything else and refuses any other version. The rest:
//! the policy's name and description (NUL-terminated UTF-8), its parameter schema, and four C
//! functions working on plain buffers — no Rust type crosses the boundary:
//!
//! - `create(params, ctx, needs_out, err, err_cap) -> instance` — one instance per layer; `params` is
//!   `key=value` pairs joined by `,` (empty when none); the plugin writes what it wants to observe
//!   into `needs_out`; it returns NULL and fills `err` to refuse.
//! - `compress(instance, obs, budget, evict, evict_cap, evict_len, err, err_cap) -> code` — the step;
//!   the plugin writes the slots to evict into `evict` (room for `evict_cap` = live slots), their
//!   number into `evict_len`, and returns [`CODE_OK`]; any other code is a failure explained in `err`.
//! - `reset(instance)` (may be NULL) and `destroy(instance)`;
//! - `save_state` / `load_state` (may be NULL): the instance's bookkeeping as `f64`s, so a saved
//!   msrnn state resumes exactly.
//!
//! The C header `docs/msrnn_plugin.h` declares the same layouts; `docs/plugins.md` is the guide.
//!
//! ## Semantics (the same as msrnn-core's `Policy`)
//!
//! A layer's state is a buffer of *slots*, some live. `compress` is called after attention whenever
//! more than `budget` slots are live, or at every step when the policy asked for `every_step`. When
//! `live > budget` it must name exactly `live - budget` distinct live slots; otherwise none. The host
//! checks every decision and turns a bad one into an error, leaving the state untouched. Slots are
//! reused after eviction: per-slot bookkeeping must restart for the slots in `new_slots`.
//!
//! ## A Rust plugin
//!
//! A `cdylib` crate depending on this one; the policy struct plus one line. (The same example as in
//! `docs/plugins.md`; this copy is compiled and run as a doctest.)
//!
//! ```
//! use msrnn_plugin_abi::{export_policy, Context, Decision, Needs, Observation, Param, Params, PluginPolicy};
//!
//! /// Keeps the `sinks` first tokens and otherwise the newest (StreamingLLM, as a plugin).
//! pub struct Sinks {
//!     sinks: u64,
//! }
//!
//! impl PluginPolicy for Sinks {
//!     const NAME: &'static str = "my-sinks";
//!     const DESCRIPTION: &'static str = "the first `sinks` tokens plus the newest";
//!     const PARAMS: &'static [Param] = &[Param { name: "sinks", default: "4", help: "tokens kept from the start" }];
//!
//!     fn create(params: &Params, _ctx: &Context) -> Result<Self, String> {
//!         Ok(Sinks { sinks: params.get_usize("sinks", 4)? as u64 })
//!     }
//!
//!     fn needs(&self) -> Needs {
//!         Needs::default() // positions only; called only when over budget
//!     }
//!
//!     fn step(&mut self, obs: &Observation<'_>, budget: usize) -> Result<Decision, String> {
//!         let live = obs.live_count();
//!         if live <= budget {
//!             return Ok(Decision::Keep);
//!         }
//!         let mut old: Vec<usize> = obs.live_slots().filter(|&s| obs.positions[s] >= self.sinks).collect();
//!         old.sort_by_key(|&s| obs.positions[s]);
//!         old.truncate(live - budget);
//!         if old.len() < live - budget {
//!             // budget < sinks: the sinks go too, oldest first
//!             let mut sinks: Vec<usize> = obs.live_slots().filter(|&s| obs.positions[s] < self.sinks).collect();
//!             sinks.sort_by_key(|&s| obs.positions[s]);
//!             old.extend(sinks.into_iter().take(live - budget - old.len()));
//!         }
//!         Ok(Decision::Evict(old))
//!     }
//! }
//!
//! export_policy!(Sinks);
//! # fn main() {
//! #     let d = unsafe { &*msrnn_policy_plugin() };
//! #     assert_eq!(d.abi_version, msrnn_plugin_abi::ABI_VERSION);
//! #     assert_eq!(unsafe { std::ffi::CStr::from_ptr(d.name) }.to_str().unwrap(), "my-sinks");
//! #     assert_eq!(d.num_params, 1);
//! #     let ctx = Context { layer: 0, num_layers: 1, num_heads: 1, num_kv_heads: 1, capacity: Some(3) };
//! #     let mut p = Sinks::create(&Params::parse("sinks=1").unwrap(), &ctx).unwrap();
//! #     let positions = [4u64, 0, 1, 2, 3];
//! #     let live = [true; 5];
//! #     let obs = Observation { layer: 0, tokens_seen: 5, num_slots: 5, positions: &positions, live: &live,
//! #         new_slots: &[0], num_heads: 1, num_kv_heads: 1, rows: 0, probs: &[], key_norms: &[] };
//! #     assert_eq!(p.step(&obs, 3).unwrap(), Decision::Evict(vec![2, 3]));
//! #     assert_eq!(p.step(&obs, 1).unwrap(), Decision::Evict(vec![2, 3, 4, 0]));
//! #     assert_eq!(p.step(&obs, 5).unwrap(), Decision::Keep);
//! # }
//! ```
//!
//! ## Threads
//!
//! An instance may be moved between threads but is never used from two threads at once. Different
//! instances (layers) may run concurrently, so plugin-global mutable state needs its own locking.

use std::collections::BTreeMap;
use std::ffi::{c_char, c_void, CStr};

/// The version of the layouts and calling conventions below. Bump it on any change to them.
pub const ABI_VERSION: u32 = 1;

/// The symbol every plugin exports: `const msrnn_policy_descriptor *msrnn_policy_plugin(void)`.
pub const ENTRY_SYMBOL: &str = "msrnn_policy_plugin";

/// `compress` succeeded; the decision is in `evict[..evict_len]`.
pub const CODE_OK: i32 = 0;
/// The policy refused or failed; `err` says why.
pub const CODE_FAILED: i32 = 1;
/// The policy panicked (Rust plugins; the glue caught it); `err` has the panic's message.
pub const CODE_PANICKED: i32 = 2;
/// The decision did not fit the `evict` buffer, or an argument was NULL.
pub const CODE_BAD_CALL: i32 = 3;

/// `RawNeeds::rows`: no attention probabilities.
pub const ROWS_NONE: u32 = 0;
/// `RawNeeds::rows`: the newest query's row only.
pub const ROWS_LAST: u32 = 1;
/// `RawNeeds::rows`: every query row of the chunk.
pub const ROWS_ALL: u32 = 2;

/// What an instance wants to observe; written by `create`. Booleans are 0 or 1.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RawNeeds {
    /// [`ROWS_NONE`], [`ROWS_LAST`] or [`ROWS_ALL`].
    pub rows: u32,
    /// Wants the L2 norm of every live key, per KV head.
    pub key_norms: u32,
    /// Wants `compress` at every step, not only when over budget.
    pub every_step: u32,
}

/// One parameter of the schema: name, default (as text) and a one-line help. NUL-terminated UTF-8.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct RawParam {
    pub name: *const c_char,
    pub default_value: *const c_char,
    pub help: *const c_char,
}

/// Where an instance lives.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RawContext {
    pub layer: u64,
    pub num_layers: u64,
    pub num_heads: u64,
    pub num_kv_heads: u64,
    /// The capacity C of every layer; [`u64::MAX`] when unbounded.
    pub capacity: u64,
}

/// One layer's state after the new tokens were written and attention ran. Every per-slot array has
/// `num_slots` entries; entries of dead slots are meaningless.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct RawObservation {
    pub layer: u64,
    /// Tokens seen by the state, the new ones included.
    pub tokens_seen: u64,
    pub num_slots: u64,
    /// `[num_slots]` absolute position of the token in each slot.
    pub positions: *const u64,
    /// `[num_slots]` 1 for a live slot, 0 for a free one (never anything else).
    pub live: *const u8,
    /// `[num_new]` slots written in this step, in token order (newest last).
    pub new_slots: *const u64,
    pub num_new: u64,
    pub num_heads: u64,
    pub num_kv_heads: u64,
    /// Query rows in `probs`: 0, 1, or the chunk length, as the needs asked.
    pub rows: u64,
    /// `[rows, num_heads, num_slots]` attention probabilities, row-major; NULL when `rows == 0`.
    pub probs: *const f32,
    /// `[num_kv_heads, num_slots]` key L2 norms; NULL unless the needs asked for them.
    pub key_norms: *const f32,
}

/// `create(params, ctx, needs_out, err, err_cap)`: a new instance, or NULL with a message in `err`.
pub type CreateFn = unsafe extern "C" fn(
    params: *const c_char,
    ctx: *const RawContext,
    needs_out: *mut RawNeeds,
    err: *mut c_char,
    err_cap: u64,
) -> *mut c_void;

/// `compress(instance, obs, budget, evict, evict_cap, evict_len, err, err_cap)`: a return code.
pub type CompressFn = unsafe extern "C" fn(
    instance: *mut c_void,
    obs: *const RawObservation,
    budget: u64,
    evict: *mut u64,
    evict_cap: u64,
    evict_len: *mut u64,
    err: *mut c_char,
    err_cap: u64,
) -> i32;

/// `reset(instance)`: forget all bookkeeping (a new sequence starts).
pub type ResetFn = unsafe extern "C" fn(instance: *mut c_void);

/// `destroy(instance)`: free the instance.
pub type DestroyFn = unsafe extern "C" fn(instance: *mut c_void);

/// `save_state(instance, out, cap, len, err, err_cap)`: the instance's bookkeeping as numbers (so a
/// saved msrnn state resumes exactly). Writes at most `cap` values into `out` and the full count into
/// `len`; the host calls again with a larger buffer when `len > cap`. Returns a code.
pub type SaveStateFn = unsafe extern "C" fn(
    instance: *mut c_void,
    out: *mut f64,
    cap: u64,
    len: *mut u64,
    err: *mut c_char,
    err_cap: u64,
) -> i32;

/// `load_state(instance, data, len, err, err_cap)`: restores what `save_state` gave. Returns a code.
pub type LoadStateFn =
    unsafe extern "C" fn(instance: *mut c_void, data: *const f64, len: u64, err: *mut c_char, err_cap: u64) -> i32;

/// What [`ENTRY_SYMBOL`] returns. Lives as long as the library is loaded.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct PolicyDescriptor {
    /// Must be [`ABI_VERSION`]; the host reads this field first and alone.
    pub abi_version: u32,
    /// The policy's registered name: 1 to 64 of `[A-Za-z0-9_+.-]`.
    pub name: *const c_char,
    /// One line for listings.
    pub description: *const c_char,
    /// `[num_params]` parameter schema, exactly: the host refuses other keys (`num_params` may be 0:
    /// takes none). NULL declares no schema: any keys reach `create`, which checks them itself.
    pub params: *const RawParam,
    pub num_params: u64,
    pub create: Option<CreateFn>,
    pub compress: Option<CompressFn>,
    /// May be NULL (nothing to forget).
    pub reset: Option<ResetFn>,
    pub destroy: Option<DestroyFn>,
    /// May be NULL together with `load_state`: the policy keeps no state worth saving.
    pub save_state: Option<SaveStateFn>,
    pub load_state: Option<LoadStateFn>,
}

/// The type of [`ENTRY_SYMBOL`].
pub type EntryFn = unsafe extern "C" fn() -> *const PolicyDescriptor;

// ---------------------------------------------------------------------------------------------
// The Rust plugin side: a trait mirroring msrnn-core's `Policy`, over plain types.
// ---------------------------------------------------------------------------------------------

/// Which query rows' attention probabilities a policy wants.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Rows {
    #[default]
    None,
    Last,
    All,
}

/// What an instance asks the host to compute; fixed for the instance's life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Needs {
    pub rows: Rows,
    pub key_norms: bool,
    pub every_step: bool,
}

impl Needs {
    pub fn to_raw(self) -> RawNeeds {
        RawNeeds {
            rows: match self.rows {
                Rows::None => ROWS_NONE,
                Rows::Last => ROWS_LAST,
                Rows::All => ROWS_ALL,
            },
            key_norms: self.key_norms as u32,
            every_step: self.every_step as u32,
        }
    }
}

/// Where an instance lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Context {
    pub layer: usize,
    pub num_layers: usize,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    /// `None` when unbounded.
    pub capacity: Option<usize>,
}

impl Context {
    pub fn from_raw(c: &RawContext) -> Self {
        Context {
            layer: c.layer as usize,
            num_layers: c.num_layers as usize,
            num_heads: c.num_heads as usize,
            num_kv_heads: c.num_kv_heads as usize,
            capacity: if c.capacity == u64::MAX { None } else { Some(c.capacity as usize) },
        }
    }
}

/// One entry of a plugin's parameter schema.
#[derive(Debug, Clone, Copy)]
pub struct Param {
    pub name: &'static str,
    pub default: &'static str,
    pub help: &'static str,
}

/// The parameters an instance was created with, parsed from the `key=value,key=value` string.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Params {
    map: BTreeMap<String, String>,
}

impl Params {
    /// Parses `key=value` pairs separated by `,` (blank entries ignored). Keys must be unique.
    pub fn parse(s: &str) -> Result<Self, String> {
        let mut map = BTreeMap::new();
        for kv in s.split(',').map(str::trim).filter(|kv| !kv.is_empty()) {
            let (k, v) = kv.split_once('=').ok_or_else(|| format!("`{kv}` is not key=value"))?;
            let (k, v) = (k.trim(), v.trim());
            if k.is_empty() {
                return Err(format!("`{kv}` has an empty key"));
            }
            if map.insert(k.to_string(), v.to_string()).is_some() {
                return Err(format!("`{k}` is given twice"));
            }
        }
        Ok(Params { map })
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.map.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }
    pub fn get(&self, key: &str) -> Option<&str> {
        self.map.get(key).map(String::as_str)
    }

    /// Fails on the first key not in `schema`.
    pub fn check_known(&self, schema: &[Param]) -> Result<(), String> {
        for k in self.map.keys() {
            if !schema.iter().any(|p| p.name == k) {
                return Err(if schema.is_empty() {
                    format!("takes no parameters, got `{k}`")
                } else {
                    let known: Vec<&str> = schema.iter().map(|p| p.name).collect();
                    format!("unknown parameter `{k}` (known: {})", known.join(", "))
                });
            }
        }
        Ok(())
    }

    /// A non-negative integer, or `default` when absent.
    pub fn get_usize(&self, key: &str, default: usize) -> Result<usize, String> {
        match self.get(key) {
            None => Ok(default),
            Some(v) => v.parse().map_err(|_| format!("`{key}` must be a non-negative integer, got `{v}`")),
        }
    }

    /// A finite number, or `default` when absent.
    pub fn get_f64(&self, key: &str, default: f64) -> Result<f64, String> {
        match self.get(key) {
            None => Ok(default),
            Some(v) => match v.parse::<f64>() {
                Ok(x) if x.is_finite() => Ok(x),
                _ => Err(format!("`{key}` must be a finite number, got `{v}`")),
            },
        }
    }

    /// `true`/`false`/`1`/`0`, or `default` when absent.
    pub fn get_bool(&self, key: &str, default: bool) -> Result<bool, String> {
        match self.get(key) {
            None => Ok(default),
            Some("true" | "1") => Ok(true),
            Some("false" | "0") => Ok(false),
            Some(v) => Err(format!("`{key}` must be true or false, got `{v}`")),
        }
    }
}

/// The state of one layer as a Rust plugin sees it: msrnn-core's `Observation`, field for field,
/// except that it borrows the host's buffers through the C ABI.
#[derive(Debug, Clone, Copy)]
pub struct Observation<'a> {
    pub layer: usize,
    pub tokens_seen: u64,
    pub num_slots: usize,
    pub positions: &'a [u64],
    pub live: &'a [bool],
    /// Slots written in this step, in token order (the newest token's slot is last).
    pub new_slots: &'a [usize],
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub rows: usize,
    /// `[rows, num_heads, num_slots]`.
    pub probs: &'a [f32],
    /// `[num_kv_heads, num_slots]`; empty unless asked for.
    pub key_norms: &'a [f32],
}

impl<'a> Observation<'a> {
    /// Views a [`RawObservation`]; `new_slots` is copied into `scratch`.
    ///
    /// # Safety
    /// Every pointer must be valid for the lengths the counts give (NULL allowed where the length is
    /// 0), and `live` must hold only 0 or 1 — as the msrnn host guarantees.
    pub unsafe fn from_raw(o: &'a RawObservation, scratch: &'a mut Vec<usize>) -> Self {
        unsafe fn slice<'b, T>(p: *const T, n: usize) -> &'b [T] {
            if p.is_null() || n == 0 {
                &[]
            } else {
                std::slice::from_raw_parts(p, n)
            }
        }
        let n = o.num_slots as usize;
        scratch.clear();
        scratch.extend(slice(o.new_slots, o.num_new as usize).iter().map(|&s| s as usize));
        let rows = o.rows as usize;
        let heads = o.num_heads as usize;
        let kv = o.num_kv_heads as usize;
        Observation {
            layer: o.layer as usize,
            tokens_seen: o.tokens_seen,
            num_slots: n,
            positions: slice(o.positions, n),
            live: slice(o.live as *const bool, n),
            new_slots: scratch,
            num_heads: heads,
            num_kv_heads: kv,
            rows,
            probs: slice(o.probs, rows * heads * n),
            key_norms: slice(o.key_norms, kv * n),
        }
    }

    /// Number of live slots.
    pub fn live_count(&self) -> usize {
        self.live.iter().filter(|&&l| l).count()
    }

    /// Live slots, in slot order.
    pub fn live_slots(&self) -> impl Iterator<Item = usize> + '_ {
        (0..self.num_slots).filter(|&s| self.live[s])
    }

    /// Attention of query row `row` averaged over all query heads, per slot.
    pub fn head_mean(&self, row: usize) -> Vec<f64> {
        let n = self.num_slots;
        let mut out = vec![0f64; n];
        let inv = 1.0 / self.num_heads as f64;
        let base = row * self.num_heads * n;
        for h in 0..self.num_heads {
            for (a, &p) in out.iter_mut().zip(&self.probs[base + h * n..base + (h + 1) * n]) {
                *a += p as f64 * inv;
            }
        }
        out
    }

    /// Key L2 norm of every slot averaged over KV heads (empty when key norms were not asked for).
    pub fn mean_key_norms(&self) -> Vec<f64> {
        let n = self.num_slots;
        if self.key_norms.len() != n * self.num_kv_heads || self.num_kv_heads == 0 {
            return Vec::new();
        }
        let mut out = vec![0f64; n];
        for h in 0..self.num_kv_heads {
            for (a, &x) in out.iter_mut().zip(&self.key_norms[h * n..(h + 1) * n]) {
                *a += x as f64;
            }
        }
        out.iter_mut().for_each(|a| *a /= self.num_kv_heads as f64);
        out
    }
}

/// A policy's answer for one layer and one step.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Decision {
    #[default]
    Keep,
    Evict(Vec<usize>),
}

/// A compression policy in a plugin: msrnn-core's `Policy`, plus its name, description, parameter
/// schema and constructor. `export_policy!(MyPolicy);` turns it into a loadable plugin.
pub trait PluginPolicy: Sized + Send + 'static {
    /// Registered name: 1 to 64 of `[A-Za-z0-9_+.-]`.
    const NAME: &'static str;
    /// One line for listings.
    const DESCRIPTION: &'static str;
    /// The parameters accepted; any other key is refused before [`PluginPolicy::create`] runs.
    const PARAMS: &'static [Param] = &[];
    /// One instance per layer.
    fn create(params: &Params, ctx: &Context) -> Result<Self, String>;
    /// What this instance wants to observe (asked once, right after `create`).
    fn needs(&self) -> Needs;
    /// When more than `budget` slots are live, evict exactly `live - budget`; otherwise [`Decision::Keep`].
    fn step(&mut self, obs: &Observation<'_>, budget: usize) -> Result<Decision, String>;
    /// Forget all bookkeeping (a new sequence starts).
    fn reset(&mut self) {}
    /// The bookkeeping as numbers, so a saved state resumes exactly. Stateless policies keep the default.
    fn save_state(&self) -> Vec<f64> {
        Vec::new()
    }
    /// Restores what [`PluginPolicy::save_state`] gave.
    fn load_state(&mut self, data: &[f64]) -> Result<(), String> {
        if data.is_empty() {
            Ok(())
        } else {
            Err(format!("keeps no state, but {} values were given", data.len()))
        }
    }
}

/// The `count` live slots with the lowest `score`, excluding `protected` ones; ties evict the older
/// entry (lower position). NaN counts as lowest. Same as msrnn-core's `policy::lowest_scored`.
pub fn lowest_scored(
    obs: &Observation<'_>,
    score: &[f64],
    protected: impl Fn(usize) -> bool,
    count: usize,
) -> Vec<usize> {
    let mut cands: Vec<usize> = obs.live_slots().filter(|&s| !protected(s)).collect();
    let key = |s: usize| if score[s].is_nan() { f64::NEG_INFINITY } else { score[s] };
    cands.sort_by(|&a, &b| key(a).total_cmp(&key(b)).then(obs.positions[a].cmp(&obs.positions[b])));
    cands.truncate(count);
    cands
}

/// Exports `$ty` (a [`PluginPolicy`]) as the plugin of this `cdylib`: writes the `msrnn_policy_plugin`
/// symbol and the C glue, which catches every panic at the boundary (a panic becomes an error code
/// and a message; the instance then refuses further steps until it is reset).
#[macro_export]
macro_rules! export_policy {
    ($ty:ty) => {
        #[unsafe(no_mangle)]
        pub extern "C" fn msrnn_policy_plugin() -> *const $crate::PolicyDescriptor {
            static CELL: $crate::__private::DescriptorCell = $crate::__private::DescriptorCell::new();
            CELL.get::<$ty>()
        }
    };
}

/// The glue behind [`export_policy!`]; not a stable API.
#[doc(hidden)]
pub mod __private {
    use super::*;
    use std::any::Any;
    use std::ffi::CString;
    use std::panic::{catch_unwind, AssertUnwindSafe};
    use std::sync::OnceLock;

    struct Shared(PolicyDescriptor);
    // SAFETY: the descriptor only points at leaked, immutable data.
    unsafe impl Send for Shared {}
    unsafe impl Sync for Shared {}

    pub struct DescriptorCell(OnceLock<Option<Shared>>);

    impl DescriptorCell {
        #[allow(clippy::new_without_default)]
        pub const fn new() -> Self {
            DescriptorCell(OnceLock::new())
        }

        /// The descriptor, built once; NULL if it cannot be built (a NUL byte in a name).
        pub fn get<T: PluginPolicy>(&self) -> *const PolicyDescriptor {
            let d = self.0.get_or_init(|| catch_unwind(build::<T>).ok().flatten().map(Shared));
            d.as_ref().map_or(std::ptr::null(), |s| &s.0 as *const PolicyDescriptor)
        }
    }

    fn leak(s: &str) -> Option<*const c_char> {
        Some(Box::leak(CString::new(s).ok()?.into_boxed_c_str()).as_ptr())
    }

    fn build<T: PluginPolicy>() -> Option<PolicyDescriptor> {
        let params: Vec<RawParam> = T::PARAMS
            .iter()
            .map(|p| Some(RawParam { name: leak(p.name)?, default_value: leak(p.default)?, help: leak(p.help)? }))
            .collect::<Option<_>>()?;
        let num_params = params.len() as u64;
        Some(PolicyDescriptor {
            abi_version: ABI_VERSION,
            name: leak(T::NAME)?,
            description: leak(T::DESCRIPTION)?,
            // Never NULL: a Rust plugin always declares its schema (an empty one takes no parameters).
            params: if params.is_empty() {
                std::ptr::NonNull::<RawParam>::dangling().as_ptr()
            } else {
                Box::leak(params.into_boxed_slice()).as_ptr()
            },
            num_params,
            create: Some(create::<T>),
            compress: Some(compress::<T>),
            reset: Some(reset::<T>),
            destroy: Some(destroy::<T>),
            save_state: Some(save_state::<T>),
            load_state: Some(load_state::<T>),
        })
    }

    /// One instance; `poisoned` holds the message of a panic that interrupted a step.
    struct Instance<T> {
        policy: T,
        poisoned: Option<String>,
        scratch: Vec<usize>,
    }

    fn panic_message(p: &(dyn Any + Send)) -> String {
        if let Some(s) = p.downcast_ref::<&str>() {
            s.to_string()
        } else if let Some(s) = p.downcast_ref::<String>() {
            s.clone()
        } else {
            "(no message)".to_string()
        }
    }

    /// Writes `msg` into the caller's buffer, truncated at a char boundary, NUL-terminated.
    unsafe fn write_err(err: *mut c_char, cap: u64, msg: &str) {
        if err.is_null() || cap == 0 {
            return;
        }
        let mut n = msg.len().min(cap.min(usize::MAX as u64) as usize - 1);
        while !msg.is_char_boundary(n) {
            n -= 1;
        }
        std::ptr::copy_nonoverlapping(msg.as_ptr(), err as *mut u8, n);
        *err.add(n) = 0;
    }

    unsafe extern "C" fn create<T: PluginPolicy>(
        params: *const c_char,
        ctx: *const RawContext,
        needs_out: *mut RawNeeds,
        err: *mut c_char,
        err_cap: u64,
    ) -> *mut c_void {
        if ctx.is_null() || needs_out.is_null() {
            write_err(err, err_cap, "create called with a NULL argument");
            return std::ptr::null_mut();
        }
        let r = catch_unwind(AssertUnwindSafe(|| -> Result<(T, Needs), String> {
            let text = if params.is_null() {
                ""
            } else {
                CStr::from_ptr(params).to_str().map_err(|_| "the parameters are not UTF-8".to_string())?
            };
            let p = Params::parse(text)?;
            p.check_known(T::PARAMS)?;
            let policy = T::create(&p, &Context::from_raw(&*ctx))?;
            let needs = policy.needs();
            Ok((policy, needs))
        }));
        match r {
            Ok(Ok((policy, needs))) => {
                *needs_out = needs.to_raw();
                Box::into_raw(Box::new(Instance { policy, poisoned: None, scratch: Vec::new() })) as *mut c_void
            }
            Ok(Err(msg)) => {
                write_err(err, err_cap, &msg);
                std::ptr::null_mut()
            }
            Err(p) => {
                write_err(err, err_cap, &format!("panicked: {}", panic_message(&*p)));
                std::ptr::null_mut()
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    unsafe extern "C" fn compress<T: PluginPolicy>(
        instance: *mut c_void,
        obs: *const RawObservation,
        budget: u64,
        evict: *mut u64,
        evict_cap: u64,
        evict_len: *mut u64,
        err: *mut c_char,
        err_cap: u64,
    ) -> i32 {
        if instance.is_null() || obs.is_null() || evict_len.is_null() || (evict.is_null() && evict_cap > 0) {
            write_err(err, err_cap, "compress called with a NULL argument");
            return CODE_BAD_CALL;
        }
        *evict_len = 0;
        let inst = &mut *(instance as *mut Instance<T>);
        if let Some(m) = &inst.poisoned {
            write_err(err, err_cap, &format!("refuses to step: it panicked earlier ({m}) and was not reset since"));
            return CODE_FAILED;
        }
        let budget = usize::try_from(budget).unwrap_or(usize::MAX);
        let r = catch_unwind(AssertUnwindSafe(|| {
            let o = Observation::from_raw(&*obs, &mut inst.scratch);
            inst.policy.step(&o, budget)
        }));
        match r {
            Ok(Ok(Decision::Keep)) => CODE_OK,
            Ok(Ok(Decision::Evict(slots))) => {
                if slots.len() as u64 > evict_cap {
                    write_err(
                        err,
                        err_cap,
                        &format!("decided to evict {} slots, but only {evict_cap} are live", slots.len()),
                    );
                    return CODE_BAD_CALL;
                }
                for (i, &s) in slots.iter().enumerate() {
                    *evict.add(i) = s as u64;
                }
                *evict_len = slots.len() as u64;
                CODE_OK
            }
            Ok(Err(msg)) => {
                write_err(err, err_cap, &msg);
                CODE_FAILED
            }
            Err(p) => {
                let m = panic_message(&*p);
                write_err(err, err_cap, &m);
                inst.poisoned = Some(m);
                CODE_PANICKED
            }
        }
    }

    unsafe extern "C" fn save_state<T: PluginPolicy>(
        instance: *mut c_void,
        out: *mut f64,
        cap: u64,
        len: *mut u64,
        err: *mut c_char,
        err_cap: u64,
    ) -> i32 {
        if instance.is_null() || len.is_null() || (out.is_null() && cap > 0) {
            write_err(err, err_cap, "save_state called with a NULL argument");
            return CODE_BAD_CALL;
        }
        let inst = &mut *(instance as *mut Instance<T>);
        if let Some(m) = &inst.poisoned {
            write_err(err, err_cap, &format!("refuses to save: it panicked earlier ({m}) and was not reset since"));
            return CODE_FAILED;
        }
        match catch_unwind(AssertUnwindSafe(|| inst.policy.save_state())) {
            Ok(v) => {
                let n = v.len().min(cap.min(usize::MAX as u64) as usize);
                std::ptr::copy_nonoverlapping(v.as_ptr(), out, n);
                *len = v.len() as u64;
                CODE_OK
            }
            Err(p) => {
                let m = panic_message(&*p);
                write_err(err, err_cap, &m);
                inst.poisoned = Some(m);
                CODE_PANICKED
            }
        }
    }

    unsafe extern "C" fn load_state<T: PluginPolicy>(
        instance: *mut c_void,
        data: *const f64,
        len: u64,
        err: *mut c_char,
        err_cap: u64,
    ) -> i32 {
        if instance.is_null() || (data.is_null() && len > 0) {
            write_err(err, err_cap, "load_state called with a NULL argument");
            return CODE_BAD_CALL;
        }
        let inst = &mut *(instance as *mut Instance<T>);
        let data = if len == 0 { &[][..] } else { std::slice::from_raw_parts(data, len as usize) };
        match catch_unwind(AssertUnwindSafe(|| inst.policy.load_state(data))) {
            Ok(Ok(())) => {
                inst.poisoned = None;
                CODE_OK
            }
            Ok(Err(m)) => {
                write_err(err, err_cap, &m);
                CODE_FAILED
            }
            Err(p) => {
                let m = panic_message(&*p);
                write_err(err, err_cap, &m);
                inst.poisoned = Some(m);
                CODE_PANICKED
            }
        }
    }

    unsafe extern "C" fn reset<T: PluginPolicy>(instance: *mut c_void) {
        if instance.is_null() {
            return;
        }
        let inst = &mut *(instance as *mut Instance<T>);
        // A panic in reset leaves (or makes) the instance poisoned.
        match catch_unwind(AssertUnwindSafe(|| inst.policy.reset())) {
            Ok(()) => inst.poisoned = None,
            Err(p) => inst.poisoned = Some(panic_message(&*p)),
        }
    }

    unsafe extern "C" fn destroy<T: PluginPolicy>(instance: *mut c_void) {
        if instance.is_null() {
            return;
        }
        // Nothing can be reported from here: a panicking Drop is swallowed, never unwound into C.
        let _ = catch_unwind(AssertUnwindSafe(|| drop(Box::from_raw(instance as *mut Instance<T>))));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn params_parse_check_and_convert() {
        let p = Params::parse(" sinks=4, stride = 8 ,, ").unwrap();
        assert_eq!(p.get("stride"), Some("8"));
        assert_eq!(p.get_usize("sinks", 0).unwrap(), 4);
        assert_eq!(p.get_usize("absent", 7).unwrap(), 7);
        assert!(p.get_f64("sinks", 0.0).unwrap() == 4.0);
        assert!(Params::parse("a=1,a=2").unwrap_err().contains("twice"));
        assert!(Params::parse("a").unwrap_err().contains("key=value"));
        let schema = [Param { name: "sinks", default: "4", help: "" }];
        assert!(p.check_known(&schema).unwrap_err().contains("unknown parameter `stride`"));
        assert!(Params::parse("x=1").unwrap().check_known(&[]).unwrap_err().contains("takes no parameters"));
        assert!(Params::parse("sinks=-1").unwrap().get_usize("sinks", 0).is_err());
        assert!(Params::parse("b=yes").unwrap().get_bool("b", false).is_err());
    }

    #[test]
    fn raw_observation_round_trips_and_norms_average_over_heads() {
        let pos = [3u64, 1, 2];
        let live = [1u8, 0, 1];
        let new = [2u64];
        let norms = [1.0f32, 9.0, 3.0, 3.0, 9.0, 5.0];
        let raw = RawObservation {
            layer: 1,
            tokens_seen: 4,
            num_slots: 3,
            positions: pos.as_ptr(),
            live: live.as_ptr(),
            new_slots: new.as_ptr(),
            num_new: 1,
            num_heads: 2,
            num_kv_heads: 2,
            rows: 0,
            probs: std::ptr::null(),
            key_norms: norms.as_ptr(),
        };
        let mut scratch = Vec::new();
        let o = unsafe { Observation::from_raw(&raw, &mut scratch) };
        assert_eq!(o.live, &[true, false, true]);
        assert_eq!(o.new_slots, &[2]);
        assert!(o.probs.is_empty());
        assert_eq!(o.live_count(), 2);
        assert_eq!(o.mean_key_norms(), vec![2.0, 9.0, 4.0]);
        // slot 0 (norm 2) and slot 2 (norm 4): the higher score survives.
        assert_eq!(lowest_scored(&o, &[1.0, 0.0, 2.0], |_| false, 1), vec![0]);
    }
}

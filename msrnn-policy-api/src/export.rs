//! The glue behind [`export_policy!`](crate::export_policy): a [`Declare`] policy as the C functions
//! of a [`PolicyDescriptor`]. Every call catches panics at the boundary (a panic becomes
//! [`CODE_PANICKED`] and a message; the instance then refuses to step until it is reset). Not a
//! stable API: only the macro uses it.

use std::any::Any;
use std::ffi::{c_char, c_void, CStr, CString};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::OnceLock;

use crate::abi::*;
use crate::{Context, Decision, Declare, ParamSet, Params};

/// Exports `$ty` (a [`Declare`](crate::Declare) policy) as the plugin of this `cdylib`: writes the
/// `msrnn_policy_plugin` symbol and the C glue.
///
/// ```
/// use msrnn_policy_api::{export_policy, params, Context, Decision, Declare, Needs, Observation, Policy, Result};
///
/// params! {
///     pub struct SinksParams {
///         sinks: u64 = 4, "tokens kept from the start";
///     }
/// }
///
/// /// Keeps the `sinks` first tokens and otherwise the newest.
/// pub struct Sinks(u64);
///
/// impl Declare for Sinks {
///     const NAME: &'static str = "my-sinks";
///     const DESCRIPTION: &'static str = "the first `sinks` tokens plus the newest";
///     type Params = SinksParams;
///     fn create(p: SinksParams, _ctx: &Context) -> Result<Self> {
///         Ok(Sinks(p.sinks))
///     }
/// }
///
/// impl Policy for Sinks {
///     fn name(&self) -> &str {
///         Self::NAME
///     }
///     fn needs(&self) -> Needs {
///         Needs::default()
///     }
///     fn step(&mut self, obs: &Observation<'_>, budget: usize) -> Result<Decision> {
///         // Oldest first, the sinks after every other token (they go only when budget < sinks).
///         let mut order: Vec<usize> = obs.live_slots().collect();
///         order.sort_by_key(|&s| (obs.positions[s] < self.0, obs.positions[s]));
///         order.truncate(obs.excess(budget));
///         Ok(Decision::Evict(order))
///     }
/// }
///
/// export_policy!(Sinks);
/// # fn main() {
/// #     let d = unsafe { &*msrnn_policy_plugin() };
/// #     assert_eq!(d.abi_version, msrnn_policy_api::abi::ABI_VERSION);
/// #     assert_eq!(unsafe { std::ffi::CStr::from_ptr(d.name) }.to_str().unwrap(), "my-sinks");
/// #     assert_eq!((d.num_params, d.num_aliases), (1, 0));
/// #     let ctx = Context { layer: 0, num_layers: 1, num_heads: 1, num_kv_heads: 1, head_dim: 2, capacity: Some(3) };
/// #     let mut p = Sinks::create(SinksParams { sinks: 1 }, &ctx).unwrap();
/// #     let positions = [4u64, 0, 1, 2, 3];
/// #     let live = [true; 5];
/// #     let obs = Observation { layer: 0, tokens_seen: 5, num_slots: 5, positions: &positions, live: &live,
/// #         new_slots: &[0], num_heads: 1, num_kv_heads: 1, head_dim: 2, rows: 0, probs: &[], key_norms: &[], keys: &[],
/// #         head_capacity: 0 };
/// #     assert_eq!(p.step(&obs, 3).unwrap(), Decision::Evict(vec![2, 3]));
/// #     assert_eq!(p.step(&obs, 1).unwrap(), Decision::Evict(vec![2, 3, 4, 0]));
/// #     assert_eq!(p.step(&obs, 5).unwrap(), Decision::Evict(vec![]));
/// # }
/// ```
///
/// Built for `wasm32-unknown-unknown`, the same line makes a WebAssembly plugin: the descriptor is
/// the same, and the functions it points to are exported by name as well (`msrnn_create`,
/// `msrnn_compress`, ... with the C signatures), next to `msrnn_alloc`/`msrnn_free`, through which
/// the host places a call's arguments in the module's memory (see `docs/plugins.md`).
#[macro_export]
macro_rules! export_policy {
    ($ty:ty) => {
        #[unsafe(no_mangle)]
        pub extern "C" fn msrnn_policy_plugin() -> *const $crate::abi::PolicyDescriptor {
            static CELL: $crate::export::DescriptorCell = $crate::export::DescriptorCell::new();
            CELL.get::<$ty>()
        }
        $crate::__export_wasm_entry_points!($ty);
    };
}

/// The WebAssembly entry points of [`export_policy!`]: a module cannot hand the host function
/// pointers, so each function of the descriptor is also exported under a fixed name.
#[cfg(target_family = "wasm")]
#[doc(hidden)]
#[macro_export]
macro_rules! __export_wasm_entry_points {
    ($ty:ty) => {
        #[unsafe(no_mangle)]
        pub extern "C" fn msrnn_alloc(size: usize, align: usize) -> *mut u8 {
            $crate::export::wasm_alloc(size, align)
        }
        #[unsafe(no_mangle)]
        pub unsafe extern "C" fn msrnn_free(ptr: *mut u8, size: usize, align: usize) {
            $crate::export::wasm_free(ptr, size, align)
        }
        #[unsafe(no_mangle)]
        pub unsafe extern "C" fn msrnn_create(
            params: *const ::std::ffi::c_char,
            ctx: *const $crate::abi::RawContext,
            needs_out: *mut $crate::abi::RawNeeds,
            err: *mut ::std::ffi::c_char,
            err_cap: u64,
        ) -> *mut ::std::ffi::c_void {
            $crate::export::create::<$ty>(params, ctx, needs_out, err, err_cap)
        }
        #[unsafe(no_mangle)]
        pub unsafe extern "C" fn msrnn_compress(
            instance: *mut ::std::ffi::c_void,
            obs: *const $crate::abi::RawObservation,
            budget: u64,
            evict: *mut u64,
            evict_cap: u64,
            evict_len: *mut u64,
            err: *mut ::std::ffi::c_char,
            err_cap: u64,
        ) -> i32 {
            $crate::export::compress::<$ty>(instance, obs, budget, evict, evict_cap, evict_len, err, err_cap)
        }
        #[unsafe(no_mangle)]
        pub unsafe extern "C" fn msrnn_reset(instance: *mut ::std::ffi::c_void) {
            $crate::export::reset::<$ty>(instance)
        }
        #[unsafe(no_mangle)]
        pub unsafe extern "C" fn msrnn_destroy(instance: *mut ::std::ffi::c_void) {
            $crate::export::destroy::<$ty>(instance)
        }
        #[unsafe(no_mangle)]
        pub unsafe extern "C" fn msrnn_save_state(
            instance: *mut ::std::ffi::c_void,
            out: *mut f64,
            cap: u64,
            len: *mut u64,
            err: *mut ::std::ffi::c_char,
            err_cap: u64,
        ) -> i32 {
            $crate::export::save_state::<$ty>(instance, out, cap, len, err, err_cap)
        }
        #[unsafe(no_mangle)]
        pub unsafe extern "C" fn msrnn_load_state(
            instance: *mut ::std::ffi::c_void,
            data: *const f64,
            len: u64,
            err: *mut ::std::ffi::c_char,
            err_cap: u64,
        ) -> i32 {
            $crate::export::load_state::<$ty>(instance, data, len, err, err_cap)
        }
    };
}

/// Native builds export the descriptor only.
#[cfg(not(target_family = "wasm"))]
#[doc(hidden)]
#[macro_export]
macro_rules! __export_wasm_entry_points {
    ($ty:ty) => {};
}

/// `msrnn_alloc` of a WebAssembly plugin: `size` bytes aligned to `align`, or NULL.
#[cfg(target_family = "wasm")]
pub fn wasm_alloc(size: usize, align: usize) -> *mut u8 {
    match std::alloc::Layout::from_size_align(size.max(1), align.max(1)) {
        // SAFETY: the layout has a non-zero size.
        Ok(l) => unsafe { std::alloc::alloc(l) },
        Err(_) => std::ptr::null_mut(),
    }
}

/// `msrnn_free` of a WebAssembly plugin: frees what [`wasm_alloc`] gave for the same size and
/// alignment.
///
/// # Safety
/// `ptr` must come from `wasm_alloc(size, align)` and not have been freed.
#[cfg(target_family = "wasm")]
pub unsafe fn wasm_free(ptr: *mut u8, size: usize, align: usize) {
    if let (false, Ok(l)) = (ptr.is_null(), std::alloc::Layout::from_size_align(size.max(1), align.max(1))) {
        std::alloc::dealloc(ptr, l)
    }
}

struct Shared(PolicyDescriptor);
// SAFETY: the descriptor only points at leaked, immutable data.
unsafe impl Send for Shared {}
unsafe impl Sync for Shared {}

/// The descriptor of one exported policy, built on first use.
pub struct DescriptorCell(OnceLock<Option<Shared>>);

impl DescriptorCell {
    #[allow(clippy::new_without_default)]
    pub const fn new() -> Self {
        DescriptorCell(OnceLock::new())
    }

    /// The descriptor, built once; NULL if it cannot be built (a NUL byte in a name).
    pub fn get<T: Declare>(&self) -> *const PolicyDescriptor {
        let d = self.0.get_or_init(|| catch_unwind(build::<T>).ok().flatten().map(Shared));
        d.as_ref().map_or(std::ptr::null(), |s| &s.0 as *const PolicyDescriptor)
    }
}

fn leak(s: &str) -> Option<*const c_char> {
    Some(Box::leak(CString::new(s).ok()?.into_boxed_c_str()).as_ptr())
}

/// A leaked array, or a dangling (never read) pointer when empty: never NULL, which for the schema
/// would mean "no schema".
fn leak_slice<T>(v: Vec<T>) -> *const T {
    if v.is_empty() {
        std::ptr::NonNull::<T>::dangling().as_ptr()
    } else {
        Box::leak(v.into_boxed_slice()).as_ptr()
    }
}

fn build<T: Declare>() -> Option<PolicyDescriptor> {
    let params: Vec<RawParam> = <T::Params as ParamSet>::SCHEMA
        .iter()
        .map(|p| Some(RawParam { name: leak(&p.name)?, default_value: leak(&p.default)?, help: leak(&p.help)? }))
        .collect::<Option<_>>()?;
    let aliases: Vec<*const c_char> = T::ALIASES.iter().map(|a| leak(a)).collect::<Option<_>>()?;
    Some(PolicyDescriptor {
        abi_version: ABI_VERSION,
        name: leak(T::NAME)?,
        description: leak(T::DESCRIPTION)?,
        num_aliases: aliases.len() as u64,
        aliases: leak_slice(aliases),
        num_params: params.len() as u64,
        // A Rust plugin always declares its schema (an empty one takes no parameters).
        params: leak_slice(params),
        create: Some(create::<T>),
        compress: Some(compress::<T>),
        reset: Some(reset::<T>),
        destroy: Some(destroy::<T>),
        save_state: Some(save_state::<T>),
        load_state: Some(load_state::<T>),
    })
}

/// One instance; `poisoned` holds the message of a panic that interrupted a call.
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

/// The C function of the ABI (docs/plugins.md states its contract).
#[doc(hidden)]
#[allow(clippy::missing_safety_doc)]
pub unsafe extern "C" fn create<T: Declare>(
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
    let r = catch_unwind(AssertUnwindSafe(|| -> Result<(T, RawNeeds), String> {
        let text = if params.is_null() {
            ""
        } else {
            CStr::from_ptr(params).to_str().map_err(|_| "the parameters are not UTF-8".to_string())?
        };
        let p = Params::parse(text, <T::Params as ParamSet>::SCHEMA).and_then(|p| T::Params::from_params(&p));
        let policy = T::create(p.map_err(|e| e.to_string())?, &Context::from(&*ctx)).map_err(|e| e.to_string())?;
        let needs = RawNeeds::new(policy.needs(), policy.capacity(), policy.head_capacity());
        Ok((policy, needs))
    }));
    match r {
        Ok(Ok((policy, needs))) => {
            *needs_out = needs;
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
/// The C function of the ABI (docs/plugins.md states its contract).
#[doc(hidden)]
#[allow(clippy::missing_safety_doc)]
pub unsafe extern "C" fn compress<T: Declare>(
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
        let o = crate::Observation::from_raw(&*obs, &mut inst.scratch);
        inst.policy.step(&o, budget)
    }));
    match r {
        Ok(Ok(Decision::Keep)) => CODE_OK,
        Ok(Ok(Decision::Evict(slots))) => {
            if slots.len() as u64 > evict_cap {
                let msg = format!("decided to evict {} slots, but only {evict_cap} are live", slots.len());
                write_err(err, err_cap, &msg);
                return CODE_BAD_CALL;
            }
            for (i, &s) in slots.iter().enumerate() {
                *evict.add(i) = s as u64;
            }
            *evict_len = slots.len() as u64;
            CODE_OK
        }
        Ok(Err(e)) => {
            write_err(err, err_cap, &e.to_string());
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

/// The C function of the ABI (docs/plugins.md states its contract).
#[doc(hidden)]
#[allow(clippy::missing_safety_doc)]
pub unsafe extern "C" fn save_state<T: Declare>(
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

/// The C function of the ABI (docs/plugins.md states its contract).
#[doc(hidden)]
#[allow(clippy::missing_safety_doc)]
pub unsafe extern "C" fn load_state<T: Declare>(
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
        Ok(Err(e)) => {
            write_err(err, err_cap, &e.to_string());
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

/// The C function of the ABI (docs/plugins.md states its contract).
#[doc(hidden)]
#[allow(clippy::missing_safety_doc)]
pub unsafe extern "C" fn reset<T: Declare>(instance: *mut c_void) {
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

/// The C function of the ABI (docs/plugins.md states its contract).
#[doc(hidden)]
#[allow(clippy::missing_safety_doc)]
pub unsafe extern "C" fn destroy<T: Declare>(instance: *mut c_void) {
    if instance.is_null() {
        return;
    }
    // Nothing can be reported from here: a panicking Drop is swallowed, never unwound into C.
    let _ = catch_unwind(AssertUnwindSafe(|| drop(Box::from_raw(instance as *mut Instance<T>))));
}

//! The C layout of a policy plugin, version [`ABI_VERSION`]: `#[repr(C)]` twins of
//! `docs/msrnn_plugin.h`, the return codes, and the conversions between these and the plain types.
//!
//! A plugin library exports one C symbol, [`ENTRY_SYMBOL`], returning a pointer to a static
//! [`PolicyDescriptor`]. The host reads the descriptor's first field, the ABI version, alone, and
//! refuses any other version; any change to a layout here bumps it. No Rust type crosses the
//! boundary: integers are fixed-width, strings NUL-terminated UTF-8, arrays a pointer plus a count.

use std::ffi::{c_char, c_void};

use crate::types::{Context, Needs, Observation, Rows};

/// The version of the layouts and calling conventions below.
///
/// 2: `msrnn_needs` gained `keys` and `capacity`, `msrnn_context` and `msrnn_observation` gained
/// `head_dim`, `msrnn_observation` gained `keys`, the descriptor gained `aliases`.
/// 3: `msrnn_needs` and `msrnn_observation` gained `head_capacity` (per-KV-head layers), appended,
/// so a version 2 plugin (which never asks for it and never reads it) still loads.
pub const ABI_VERSION: u32 = 3;

/// The oldest version the host still loads.
pub const MIN_ABI_VERSION: u32 = 2;

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

/// What an instance asks for; written by `create` (it arrives zeroed). Booleans are 0 or 1.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RawNeeds {
    /// [`ROWS_NONE`], [`ROWS_LAST`] or [`ROWS_ALL`].
    pub rows: u32,
    /// Wants the L2 norm of every live key, per KV head.
    pub key_norms: u32,
    /// Wants the keys themselves.
    pub keys: u32,
    /// Wants `compress` at every step, not only when over budget.
    pub every_step: u32,
    /// The capacity this instance wants for its layer; 0 takes the context's.
    pub capacity: u64,
    /// Version 3: > 0 makes the layer per-head, each KV head keeping at most this many entries
    /// ([`crate::Policy::head_capacity`]); 0 (what a version 2 plugin leaves) shares the slots.
    pub head_capacity: u64,
}

impl RawNeeds {
    pub fn new(needs: Needs, capacity: Option<usize>, head_capacity: Option<usize>) -> Self {
        RawNeeds {
            rows: match needs.rows {
                Rows::None => ROWS_NONE,
                Rows::Last => ROWS_LAST,
                Rows::All => ROWS_ALL,
            },
            key_norms: needs.key_norms as u32,
            keys: needs.keys as u32,
            every_step: needs.every_step as u32,
            capacity: capacity.map_or(0, |c| c as u64),
            head_capacity: head_capacity.map_or(0, |c| c as u64),
        }
    }

    /// The head capacity asked for (`None`: a shared layer).
    pub fn head_capacity(&self) -> Result<Option<usize>, String> {
        match self.head_capacity {
            0 => Ok(None),
            c => usize::try_from(c)
                .map(Some)
                .map_err(|_| format!("asked for a head capacity of {c}, more than memory holds")),
        }
    }

    /// The needs and the capacity asked for, or why they make no sense.
    pub fn decode(&self) -> Result<(Needs, Option<usize>), String> {
        let rows = match self.rows {
            ROWS_NONE => Rows::None,
            ROWS_LAST => Rows::Last,
            ROWS_ALL => Rows::All,
            r => return Err(format!("asked for rows = {r}, which is none of 0 (none), 1 (last), 2 (all)")),
        };
        let capacity = match self.capacity {
            0 => None,
            c => Some(usize::try_from(c).map_err(|_| format!("asked for a capacity of {c}, more than memory holds"))?),
        };
        let needs =
            Needs { rows, key_norms: self.key_norms != 0, keys: self.keys != 0, every_step: self.every_step != 0 };
        Ok((needs, capacity))
    }
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
    pub head_dim: u64,
    /// The run's capacity C per layer; [`u64::MAX`] when unbounded.
    pub capacity: u64,
}

impl From<&Context> for RawContext {
    fn from(c: &Context) -> Self {
        RawContext {
            layer: c.layer as u64,
            num_layers: c.num_layers as u64,
            num_heads: c.num_heads as u64,
            num_kv_heads: c.num_kv_heads as u64,
            head_dim: c.head_dim as u64,
            capacity: c.capacity.map_or(u64::MAX, |c| c as u64),
        }
    }
}

impl From<&RawContext> for Context {
    fn from(c: &RawContext) -> Self {
        Context {
            layer: c.layer as usize,
            num_layers: c.num_layers as usize,
            num_heads: c.num_heads as usize,
            num_kv_heads: c.num_kv_heads as usize,
            head_dim: c.head_dim as usize,
            capacity: if c.capacity == u64::MAX { None } else { Some(c.capacity as usize) },
        }
    }
}

/// One layer's state after the new tokens were written and attention ran. Every per-slot array has
/// `num_slots` entries (`num_kv_heads x num_slots` in a per-head layer); entries of dead slots are
/// meaningless.
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
    pub head_dim: u64,
    /// Query rows in `probs`: 0, 1, or the chunk length, as the needs asked.
    pub rows: u64,
    /// `[rows, num_heads, num_slots]` attention probabilities, row-major; NULL when `rows == 0`.
    pub probs: *const f32,
    /// `[num_kv_heads, num_slots]` key L2 norms; NULL unless the needs asked for them.
    pub key_norms: *const f32,
    /// `[num_kv_heads, num_slots, head_dim]` keys as stored; NULL unless the needs asked for them.
    pub keys: *const f32,
    /// Version 3: 0 for a shared layer, else the layer is per-head (positions, live and new slots
    /// are per entry `head * num_slots + slot`) and no head may keep more than this many entries.
    pub head_capacity: u64,
}

impl RawObservation {
    /// Points at `obs`'s buffers, except `new_slots`, which the caller converted to `u64`. The
    /// caller checks first that every slice has the length its counts give.
    pub fn new(obs: &Observation<'_>, new_slots: &[u64]) -> Self {
        let or_null = |s: &[f32]| if s.is_empty() { std::ptr::null() } else { s.as_ptr() };
        RawObservation {
            layer: obs.layer as u64,
            tokens_seen: obs.tokens_seen,
            num_slots: obs.num_slots as u64,
            positions: obs.positions.as_ptr(),
            // `bool` is one byte, 0 or 1.
            live: obs.live.as_ptr() as *const u8,
            new_slots: new_slots.as_ptr(),
            num_new: new_slots.len() as u64,
            num_heads: obs.num_heads as u64,
            num_kv_heads: obs.num_kv_heads as u64,
            head_dim: obs.head_dim as u64,
            rows: obs.rows as u64,
            probs: or_null(obs.probs),
            key_norms: or_null(obs.key_norms),
            keys: or_null(obs.keys),
            head_capacity: obs.head_capacity as u64,
        }
    }
}

impl<'a> Observation<'a> {
    /// Views a [`RawObservation`]; `new_slots` is copied into `scratch`.
    ///
    /// # Safety
    /// Every pointer must be valid for the lengths the counts give (NULL allowed where the length is
    /// 0), and `live` must hold only 0 or 1, as the msrnn host guarantees.
    pub unsafe fn from_raw(o: &'a RawObservation, scratch: &'a mut Vec<usize>) -> Self {
        unsafe fn slice<'b, T>(p: *const T, n: usize) -> &'b [T] {
            if p.is_null() || n == 0 {
                &[]
            } else {
                std::slice::from_raw_parts(p, n)
            }
        }
        let n = o.num_slots as usize;
        let head_capacity = o.head_capacity as usize;
        let entries = if head_capacity > 0 { n * o.num_kv_heads as usize } else { n };
        scratch.clear();
        scratch.extend(slice(o.new_slots, o.num_new as usize).iter().map(|&s| s as usize));
        let (rows, heads, kv, hd) =
            (o.rows as usize, o.num_heads as usize, o.num_kv_heads as usize, o.head_dim as usize);
        Observation {
            layer: o.layer as usize,
            tokens_seen: o.tokens_seen,
            num_slots: n,
            positions: slice(o.positions, entries),
            live: slice(o.live as *const bool, entries),
            new_slots: scratch,
            num_heads: heads,
            num_kv_heads: kv,
            head_dim: hd,
            rows,
            probs: slice(o.probs, rows * heads * n),
            key_norms: slice(o.key_norms, kv * n),
            keys: slice(o.keys, kv * n * hd),
            head_capacity,
        }
    }
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

/// `save_state(instance, out, cap, len, err, err_cap)`: the instance's bookkeeping as numbers. Writes
/// at most `cap` values into `out` and the full count into `len`; the host calls again with a larger
/// buffer when `len > cap`. Returns a code.
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
    /// `[num_aliases]` other names it answers to (NULL when `num_aliases == 0`).
    pub aliases: *const *const c_char,
    pub num_aliases: u64,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn observations_round_trip_through_the_c_layout() {
        let pos = [3u64, 1, 2];
        let live = [true, false, true];
        let norms = [1.0f32, 9.0, 3.0, 3.0, 9.0, 5.0];
        let keys: Vec<f32> = (0..12).map(|i| i as f32).collect();
        let probs = [0.5f32, 0.0, 0.5];
        let obs = Observation {
            layer: 1,
            tokens_seen: 4,
            num_slots: 3,
            positions: &pos,
            live: &live,
            new_slots: &[2],
            num_heads: 1,
            num_kv_heads: 2,
            head_dim: 2,
            rows: 1,
            probs: &probs,
            key_norms: &norms,
            keys: &keys,
            head_capacity: 0,
        };
        let raw = RawObservation::new(&obs, &[2]);
        let mut scratch = Vec::new();
        let back = unsafe { Observation::from_raw(&raw, &mut scratch) };
        assert_eq!((back.layer, back.tokens_seen, back.head_dim), (1, 4, 2));
        assert_eq!(back.live, &live);
        assert_eq!(back.new_slots, &[2]);
        assert_eq!(back.probs, &probs);
        assert_eq!(back.key_norms, &norms);
        assert_eq!(back.keys, &keys[..]);
        assert_eq!(back.key(1, 2), &[10.0, 11.0]);
        let bare = RawObservation::new(&Observation { keys: &[], key_norms: &[], rows: 0, probs: &[], ..obs }, &[]);
        assert!(bare.keys.is_null() && bare.key_norms.is_null() && bare.probs.is_null());
    }

    #[test]
    fn needs_and_context_round_trip() {
        let n = Needs { rows: Rows::All, key_norms: false, keys: true, every_step: true };
        assert_eq!(RawNeeds::new(n, Some(12), None).decode().unwrap(), (n, Some(12)));
        assert_eq!(RawNeeds::new(n, None, None).decode().unwrap(), (n, None));
        assert_eq!(RawNeeds::new(n, None, Some(7)).head_capacity().unwrap(), Some(7));
        assert_eq!(RawNeeds::default().head_capacity().unwrap(), None);
        assert_eq!(RawNeeds::default().decode().unwrap(), (Needs::default(), None));
        let e = RawNeeds { rows: 7, ..RawNeeds::default() }.decode().unwrap_err();
        assert!(e.contains("rows = 7"), "{e}");
        let c = Context { layer: 2, num_layers: 4, num_heads: 8, num_kv_heads: 2, head_dim: 64, capacity: Some(9) };
        assert_eq!(Context::from(&RawContext::from(&c)), c);
        let u = Context { capacity: None, ..c };
        assert_eq!(RawContext::from(&u).capacity, u64::MAX);
        assert_eq!(Context::from(&RawContext::from(&u)), u);
    }
}

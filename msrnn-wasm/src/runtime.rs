//! The sandbox: modules compiled and run by wasmtime, one store per layer's instance, with a
//! memory cap and fuel per call.

use std::path::Path;
use std::sync::{Arc, OnceLock};

use msrnn_core::plugin::{PluginInfo, PluginKind, PluginLoader, PluginPolicy, Raw, Transport};
use msrnn_policy_api::abi::{RawContext, RawNeeds};
use msrnn_policy_api::{Context, Observation, Params, Policy};

use crate::layout::{obs32, read_descriptor, Mem};
use wasmtime::{
    Config, Engine, InstancePre, Linker, Memory, Module, Store, StoreLimits, StoreLimitsBuilder, Trap, TypedFunc,
    WasmParams, WasmResults,
};

use crate::{FUEL_ENV, MAGIC, MEMORY_ENV};

/// Largest module file accepted: compiling is work done before any limit applies.
const MAX_MODULE_BYTES: u64 = 64 << 20;

/// What one instance (one layer's policy) may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Most bytes of linear memory: the module's own data and stack, and the observations the host
    /// copies in (the keys, for a policy that asks for them: `kv_heads x slots x head_dim x 4`).
    pub memory: usize,
    /// Most fuel one call may burn; wasmtime charges about one unit per instruction executed.
    pub fuel: u64,
}

impl Default for Limits {
    /// 256 MiB and 100 million instructions per call: far above what a policy over a state of a
    /// few thousand slots needs, and a runaway call ends in a fraction of a second.
    fn default() -> Self {
        Limits { memory: 256 << 20, fuel: 100_000_000 }
    }
}

impl Limits {
    /// The defaults, changed by [`FUEL_ENV`] (instructions per call) and [`MEMORY_ENV`] (MiB).
    pub fn from_env() -> std::result::Result<Self, String> {
        let mut l = Limits::default();
        let read = |name: &str| -> std::result::Result<Option<u64>, String> {
            match std::env::var(name) {
                Err(_) => Ok(None),
                Ok(v) => v
                    .trim()
                    .parse::<u64>()
                    .ok()
                    .filter(|&n| n > 0)
                    .map(Some)
                    .ok_or_else(|| format!("{name}={v} is not a positive integer")),
            }
        };
        if let Some(f) = read(FUEL_ENV)? {
            l.fuel = f;
        }
        if let Some(mb) = read(MEMORY_ENV)? {
            l.memory = usize::try_from(mb.saturating_mul(1 << 20)).unwrap_or(usize::MAX);
        }
        Ok(l)
    }
}

/// What a store holds for the host: the limits wasmtime enforces on memory and tables.
struct Host {
    limits: StoreLimits,
}

/// One engine for every WebAssembly plugin: fuel metering on, nothing else beyond the defaults.
fn engine() -> std::result::Result<&'static Engine, String> {
    static ENGINE: OnceLock<std::result::Result<Engine, String>> = OnceLock::new();
    ENGINE
        .get_or_init(|| {
            let mut c = Config::new();
            c.consume_fuel(true);
            Engine::new(&c).map_err(|e| format!("cannot start the WebAssembly engine: {e:#}"))
        })
        .as_ref()
        .map_err(Clone::clone)
}

/// A loaded WebAssembly plugin: the compiled module and its checked declaration. Cheap to clone;
/// instances ([`PluginKind::instantiate`]) each get a store of their own.
#[derive(Clone)]
pub struct WasmPlugin {
    shared: Arc<Shared>,
}

struct Shared {
    path: String,
    info: PluginInfo,
    limits: Limits,
    pre: InstancePre<Host>,
    /// The descriptor declares these (their exports are checked to exist).
    has_reset: bool,
    has_state: bool,
}

impl std::fmt::Debug for WasmPlugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WasmPlugin").field("name", &self.shared.info.name).field("path", &self.shared.path).finish()
    }
}

/// `msrnn_compress(instance, obs, budget, evict, evict_cap, evict_len, err, err_cap) -> code`.
type CompressArgs = (i32, i32, i64, i32, i64, i32, i32, i64);
/// `msrnn_save_state(instance, out, cap, len, err, err_cap) -> code`.
type SaveArgs = (i32, i32, i64, i32, i32, i64);
/// `msrnn_load_state(instance, data, len, err, err_cap) -> code`.
type LoadArgs = (i32, i32, i64, i32, i64);

/// The exports an instance is driven through (C signatures compiled for wasm32: pointers and
/// `usize` are i32, `uint64_t` i64).
struct Fns {
    alloc: TypedFunc<(i32, i32), i32>,
    free: Option<TypedFunc<(i32, i32, i32), ()>>,
    create: TypedFunc<(i32, i32, i32, i32, i64), i32>,
    compress: TypedFunc<CompressArgs, i32>,
    reset: Option<TypedFunc<i32, ()>>,
    save: Option<TypedFunc<SaveArgs, i32>>,
    load: Option<TypedFunc<LoadArgs, i32>>,
}

/// One running instance of the module: its store, memory, exports and a scratch block in its
/// memory where the host places each call's arguments.
struct Runtime {
    store: Store<Host>,
    memory: Memory,
    fns: Fns,
    entry: TypedFunc<(), i32>,
    scratch: u32,
    scratch_len: u32,
    limits: Limits,
}

fn typed<P: WasmParams, R: WasmResults>(
    inst: &wasmtime::Instance,
    store: &mut Store<Host>,
    name: &str,
    required: bool,
) -> std::result::Result<Option<TypedFunc<P, R>>, String> {
    match inst.get_func(&mut *store, name) {
        None if required => Err(format!(
            "it does not export `{name}`, so it is not an msrnn policy plugin (build it with `export_policy!` for \
             wasm32-unknown-unknown)"
        )),
        None => Ok(None),
        Some(f) => f.typed::<P, R>(&*store).map(Some).map_err(|e| format!("its `{name}` has the wrong signature: {e}")),
    }
}

/// What went wrong inside the sandbox, in words: out of fuel, out of memory, or which trap.
fn describe(e: &wasmtime::Error, what: &str, limits: &Limits) -> String {
    match e.downcast_ref::<Trap>() {
        Some(Trap::OutOfFuel) => format!(
            "ran out of fuel in `{what}`: it executed more than {} instructions in one call (the limit is set by \
             {FUEL_ENV})",
            limits.fuel
        ),
        Some(Trap::UnreachableCodeReached) => format!(
            "trapped in `{what}`: it executed `unreachable` (a Rust plugin panicked, or could not allocate within the \
             memory limit of {})",
            msrnn_core::util::human_bytes(limits.memory as u64)
        ),
        Some(Trap::StackOverflow) => format!("trapped in `{what}`: its call stack overflowed"),
        Some(t) => format!("trapped in `{what}`: {t}"),
        None => {
            let m = format!("{e:#}");
            if m.contains("growing memory") || m.contains("memory minimum size") {
                format!(
                    "trapped in `{what}`: it asked for more memory than its limit of {} (set by {MEMORY_ENV}): {m}",
                    msrnn_core::util::human_bytes(limits.memory as u64)
                )
            } else {
                format!("failed in `{what}`: {m}")
            }
        }
    }
}

impl Runtime {
    /// A fresh instance with its own store and limits.
    fn start(pre: &InstancePre<Host>, limits: Limits) -> std::result::Result<Self, String> {
        let engine = pre.module().engine();
        let store_limits = StoreLimitsBuilder::new()
            .memory_size(limits.memory)
            .memories(1)
            .tables(4)
            .table_elements(1 << 20)
            .instances(1)
            .trap_on_grow_failure(true)
            .build();
        let mut store = Store::new(engine, Host { limits: store_limits });
        store.limiter(|h| &mut h.limits);
        store.set_fuel(limits.fuel).map_err(|e| format!("{e:#}"))?;
        let inst = pre.instantiate(&mut store).map_err(|e| describe(&e, "instantiation", &limits))?;
        let memory = inst
            .get_memory(&mut store, "memory")
            .ok_or("it exports no memory named `memory` (a WebAssembly plugin exports its linear memory)")?;
        let entry = typed(&inst, &mut store, msrnn_policy_api::abi::ENTRY_SYMBOL, true)?.expect("required");
        let fns = Fns {
            alloc: typed(&inst, &mut store, "msrnn_alloc", true)?.expect("required"),
            free: typed(&inst, &mut store, "msrnn_free", false)?,
            create: typed(&inst, &mut store, "msrnn_create", true)?.expect("required"),
            compress: typed(&inst, &mut store, "msrnn_compress", true)?.expect("required"),
            reset: typed(&inst, &mut store, "msrnn_reset", false)?,
            save: typed(&inst, &mut store, "msrnn_save_state", false)?,
            load: typed(&inst, &mut store, "msrnn_load_state", false)?,
        };
        Ok(Runtime { store, memory, fns, entry, scratch: 0, scratch_len: 0, limits })
    }

    /// Calls `f` with a full tank: each call may burn [`Limits::fuel`].
    fn call<P: WasmParams, R: WasmResults>(
        store: &mut Store<Host>,
        limits: &Limits,
        f: &TypedFunc<P, R>,
        args: P,
        what: &str,
    ) -> std::result::Result<R, String> {
        store.set_fuel(limits.fuel).map_err(|e| format!("{e:#}"))?;
        f.call(&mut *store, args).map_err(|e| describe(&e, what, limits))
    }

    fn mem(&self) -> Mem<'_> {
        Mem(self.memory.data(&self.store))
    }

    fn bytes(&self, at: u64, len: u64, what: &str) -> std::result::Result<&[u8], String> {
        self.mem().bytes(at, len, what)
    }

    fn u64_at(&self, at: u64, what: &str) -> std::result::Result<u64, String> {
        self.mem().u64_at(at, what)
    }

    /// `size` bytes from the module's allocator, checked to lie in its memory.
    fn alloc(&mut self, size: u32) -> std::result::Result<u32, String> {
        let ptr = Self::call(&mut self.store, &self.limits, &self.fns.alloc, (size as i32, 8), "msrnn_alloc")? as u32;
        if ptr == 0 {
            return Err(format!(
                "could not allocate {size} bytes in its memory (the limit is {}, set by {MEMORY_ENV})",
                msrnn_core::util::human_bytes(self.limits.memory as u64)
            ));
        }
        self.bytes(ptr as u64, size as u64, "msrnn_alloc result")?;
        Ok(ptr)
    }

    /// A scratch block of at least `size` bytes, 8-aligned, reused across calls.
    fn scratch(&mut self, size: usize) -> std::result::Result<u32, String> {
        if size <= self.scratch_len as usize {
            return Ok(self.scratch);
        }
        let want = size.max(2 * self.scratch_len as usize).max(4096).next_multiple_of(8);
        let want = u32::try_from(want)
            .map_err(|_| format!("a call needs {size} bytes of its memory, more than a 32-bit module can address"))?;
        if self.scratch != 0 {
            if let Some(free) = &self.fns.free {
                let args = (self.scratch as i32, self.scratch_len as i32, 8);
                Self::call(&mut self.store, &self.limits, free, args, "msrnn_free")?;
            }
            self.scratch = 0;
            self.scratch_len = 0;
        }
        self.scratch = self.alloc(want)?;
        self.scratch_len = want;
        Ok(self.scratch)
    }

    fn write(&mut self, at: u32, bytes: &[u8]) {
        // Every offset written lies in a scratch block checked against the memory when allocated;
        // memory never shrinks.
        self.memory.data_mut(&mut self.store)[at as usize..at as usize + bytes.len()].copy_from_slice(bytes);
    }
}

/// The layout of a block of arguments: sections placed one after another, each 8-aligned.
struct Layout(usize);

impl Layout {
    fn take(&mut self, bytes: usize) -> usize {
        let at = self.0;
        self.0 = (self.0 + bytes).next_multiple_of(8);
        at
    }
}

fn le_u64(v: impl IntoIterator<Item = u64>) -> Vec<u8> {
    v.into_iter().flat_map(u64::to_le_bytes).collect()
}

fn le_f32(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

impl WasmPlugin {
    /// Loads the module at `path` with the limits of [`Limits::from_env`].
    pub fn open(path: impl AsRef<Path>) -> msrnn_core::Result<WasmPlugin> {
        let limits = Limits::from_env()
            .map_err(|reason| msrnn_core::Error::Plugin { path: path.as_ref().display().to_string(), reason })?;
        Self::open_with(path, limits)
    }

    /// Loads and checks the module at `path`: a WebAssembly binary importing nothing, exporting
    /// its memory and the entry points, whose descriptor passes the same checks as a native
    /// plugin's (ABI version first, alone). Nothing is registered.
    pub fn open_with(path: impl AsRef<Path>, limits: Limits) -> msrnn_core::Result<WasmPlugin> {
        let given = path.as_ref();
        let err = |p: &Path, reason: String| msrnn_core::Error::Plugin { path: p.display().to_string(), reason };
        if given.as_os_str().is_empty() {
            return Err(err(given, "the path is empty".into()));
        }
        let path = std::fs::canonicalize(given).map_err(|e| err(given, format!("cannot open it: {e}")))?;
        let fail = |reason: String| err(&path, reason);
        let meta = std::fs::metadata(&path).map_err(|e| fail(format!("cannot open it: {e}")))?;
        if !meta.is_file() {
            return Err(fail("it is not a file".into()));
        }
        if meta.len() > MAX_MODULE_BYTES {
            return Err(fail(format!(
                "it is {} bytes, more than the {MAX_MODULE_BYTES} a plugin module may be",
                meta.len()
            )));
        }
        let bytes = std::fs::read(&path).map_err(|e| fail(format!("cannot read it: {e}")))?;
        if !bytes.starts_with(MAGIC) {
            return Err(fail("it is not a WebAssembly module (it does not start with `\\0asm`)".into()));
        }
        let engine = engine().map_err(&fail)?;
        let module =
            Module::new(engine, &bytes).map_err(|e| fail(format!("it is not a valid WebAssembly module: {e:#}")))?;
        let imports: Vec<String> = module
            .imports()
            .map(|i| {
                let kind = match i.ty() {
                    wasmtime::ExternType::Func(_) => "a function",
                    wasmtime::ExternType::Memory(_) => "a memory",
                    wasmtime::ExternType::Table(_) => "a table",
                    wasmtime::ExternType::Global(_) => "a global",
                    _ => "an item",
                };
                format!("`{}.{}` ({kind})", i.module(), i.name())
            })
            .collect();
        if !imports.is_empty() {
            return Err(fail(format!(
                "it imports {}: a WebAssembly policy is given nothing by the host (no functions, memory, tables or \
                 globals), so it may import nothing",
                imports.join(", ")
            )));
        }
        let pre = Linker::new(engine).instantiate_pre(&module).map_err(|e| fail(format!("{e:#}")))?;
        // A first instance reads the descriptor; each layer gets one of its own later.
        let mut rt = Runtime::start(&pre, limits).map_err(&fail)?;
        let d =
            Runtime::call(&mut rt.store, &limits, &rt.entry, (), msrnn_policy_api::abi::ENTRY_SYMBOL).map_err(&fail)?;
        let mut exports = Vec::new();
        for (present, name) in [
            (rt.fns.reset.is_some(), "msrnn_reset"),
            (rt.fns.save.is_some(), "msrnn_save_state"),
            (rt.fns.load.is_some(), "msrnn_load_state"),
        ] {
            if present {
                exports.push(name);
            }
        }
        let (info, declared) = read_descriptor(rt.mem(), d as u32, &exports).map_err(&fail)?;
        let (has_reset, has_state) = (declared.reset, declared.state);
        tracing::debug!(path = %path.display(), name = %info.name, "loaded WebAssembly policy plugin");
        Ok(WasmPlugin {
            shared: Arc::new(Shared { path: path.display().to_string(), info, limits, pre, has_reset, has_state }),
        })
    }

    pub fn name(&self) -> &str {
        &self.shared.info.name
    }
    pub fn path(&self) -> &str {
        &self.shared.path
    }
    pub fn limits(&self) -> Limits {
        self.shared.limits
    }
}

impl PluginKind for WasmPlugin {
    fn info(&self) -> &PluginInfo {
        &self.shared.info
    }

    fn path(&self) -> &str {
        &self.shared.path
    }

    fn instantiate(&self, params: &Params, ctx: &Context) -> msrnn_core::Result<Box<dyn Policy>> {
        Ok(Box::new(WasmPolicy::create(self, params, ctx)?))
    }
}

/// One layer's instance of a WebAssembly policy: the shared plugin wrapper over a store of its own.
pub type WasmPolicy = PluginPolicy<WasmInstance>;

/// One running instance of the module, its transport: each call's arguments copied into the
/// module's memory, the answers read back.
pub struct WasmInstance {
    shared: Arc<Shared>,
    rt: Runtime,
    handle: i32,
}

impl WasmInstance {
    /// The error buffer the plugin filled at `at`, copied out into `err`.
    fn read_err(&self, at: u32, err: &mut [u8]) -> Raw<()> {
        err.copy_from_slice(self.rt.bytes(at as u64, err.len() as u64, "error buffer")?);
        Ok(())
    }
}

/// Bytes of `msrnn_needs` (version 3; a version 2 module writes the first 24).
const NEEDS_SIZE: usize = 32;

impl Transport for WasmInstance {
    type Plugin = WasmPlugin;

    /// A fresh store, and the module's `create` with the parameters and context.
    fn create(plugin: &WasmPlugin, params: &str, ctx: &Context, err: &mut [u8]) -> Raw<Option<(Self, RawNeeds)>> {
        let s = &plugin.shared;
        let mut rt = Runtime::start(&s.pre, s.limits)?;
        let mut l = Layout(0);
        let (p_params, p_ctx, p_needs, p_err) =
            (l.take(params.len() + 1), l.take(48), l.take(NEEDS_SIZE), l.take(err.len()));
        let base = rt.scratch(l.0)?;
        let at = |off: usize| base + off as u32;
        let mut text = params.as_bytes().to_vec();
        text.push(0);
        rt.write(at(p_params), &text);
        let c = RawContext::from(ctx);
        rt.write(at(p_ctx), &le_u64([c.layer, c.num_layers, c.num_heads, c.num_kv_heads, c.head_dim, c.capacity]));
        // Zeroed: a version 2 module writes the first 24 bytes only, leaving `head_capacity` 0.
        rt.write(at(p_needs), &[0u8; NEEDS_SIZE]);
        rt.write(at(p_err), &vec![0u8; err.len()]);
        let args = (at(p_params) as i32, at(p_ctx) as i32, at(p_needs) as i32, at(p_err) as i32, err.len() as i64);
        let handle = Runtime::call(&mut rt.store, &s.limits, &rt.fns.create, args, "create")?;
        if handle == 0 {
            err.copy_from_slice(rt.bytes(at(p_err) as u64, err.len() as u64, "error buffer")?);
            return Ok(None);
        }
        let n = rt.bytes(at(p_needs) as u64, NEEDS_SIZE as u64, "needs")?;
        let u32_at = |i: usize| u32::from_le_bytes(n[i..i + 4].try_into().expect("4 bytes"));
        let raw = RawNeeds {
            rows: u32_at(0),
            key_norms: u32_at(4),
            keys: u32_at(8),
            every_step: u32_at(12),
            capacity: u64::from_le_bytes(n[16..24].try_into().expect("8 bytes")),
            head_capacity: u64::from_le_bytes(n[24..32].try_into().expect("8 bytes")),
        };
        Ok(Some((WasmInstance { shared: s.clone(), rt, handle }, raw)))
    }

    /// One `compress` call: the observation copied into the module's memory, the answer read back.
    fn compress(&mut self, obs: &Observation<'_>, budget: usize, evict: &mut [u64], err: &mut [u8]) -> Raw<(i32, u64)> {
        let (n, entries) = (obs.num_slots, obs.live.len());
        let mut l = Layout(0);
        let p_obs = l.take(obs32::SIZE);
        let p_len = l.take(8);
        let p_err = l.take(err.len());
        let p_evict = l.take(evict.len() * 8);
        let p_pos = l.take(entries * 8);
        let p_new = l.take(obs.new_slots.len() * 8);
        let p_live = l.take(entries);
        let p_probs = l.take(obs.probs.len() * 4);
        let p_norms = l.take(obs.key_norms.len() * 4);
        let p_keys = l.take(obs.keys.len() * 4);
        let rt = &mut self.rt;
        let base = rt.scratch(l.0)?;
        let at = |off: usize| base + off as u32;
        let or_null = |len: usize, off: usize| if len == 0 { 0 } else { at(off) };
        let mut o = [0u8; obs32::SIZE];
        let mut put64 = |off: usize, v: u64| o[off..off + 8].copy_from_slice(&v.to_le_bytes());
        put64(obs32::LAYER, obs.layer as u64);
        put64(obs32::TOKENS_SEEN, obs.tokens_seen);
        put64(obs32::NUM_SLOTS, n as u64);
        put64(obs32::NUM_NEW, obs.new_slots.len() as u64);
        put64(obs32::NUM_HEADS, obs.num_heads as u64);
        put64(obs32::NUM_KV_HEADS, obs.num_kv_heads as u64);
        put64(obs32::HEAD_DIM, obs.head_dim as u64);
        put64(obs32::ROWS, obs.rows as u64);
        put64(obs32::HEAD_CAPACITY, obs.head_capacity as u64);
        let mut put32 = |off: usize, v: u32| o[off..off + 4].copy_from_slice(&v.to_le_bytes());
        put32(obs32::POSITIONS, at(p_pos));
        put32(obs32::LIVE, at(p_live));
        put32(obs32::NEW_SLOTS, at(p_new));
        put32(obs32::PROBS, or_null(obs.probs.len(), p_probs));
        put32(obs32::KEY_NORMS, or_null(obs.key_norms.len(), p_norms));
        put32(obs32::KEYS, or_null(obs.keys.len(), p_keys));
        rt.write(at(p_obs), &o);
        rt.write(at(p_len), &[0u8; 8]);
        rt.write(at(p_err), err);
        rt.write(at(p_pos), &le_u64(obs.positions[..entries].iter().copied()));
        rt.write(at(p_new), &le_u64(obs.new_slots.iter().map(|&s| s as u64)));
        let flags: Vec<u8> = obs.live[..entries].iter().map(|&b| b as u8).collect();
        rt.write(at(p_live), &flags);
        rt.write(at(p_probs), &le_f32(obs.probs));
        rt.write(at(p_norms), &le_f32(obs.key_norms));
        rt.write(at(p_keys), &le_f32(obs.keys));
        let args = (
            self.handle,
            at(p_obs) as i32,
            u64::try_from(budget).unwrap_or(u64::MAX) as i64,
            at(p_evict) as i32,
            evict.len() as i64,
            at(p_len) as i32,
            at(p_err) as i32,
            err.len() as i64,
        );
        let code = Runtime::call(&mut rt.store, &self.shared.limits, &rt.fns.compress, args, "compress")?;
        let len = rt.u64_at(at(p_len) as u64, "evict count")?;
        let out = rt.bytes(at(p_evict) as u64, evict.len() as u64 * 8, "evict buffer")?;
        for (e, c) in evict.iter_mut().zip(out.chunks_exact(8)) {
            *e = u64::from_le_bytes(c.try_into().expect("8 bytes"));
        }
        self.read_err(at(p_err), err)?;
        Ok((code, len))
    }

    /// The module's own `reset`; without one, the instance is built afresh.
    fn reset(&mut self) -> Raw<()> {
        let f = self.rt.fns.reset.as_ref().filter(|_| self.shared.has_reset).ok_or("it has no `msrnn_reset`")?;
        Runtime::call(&mut self.rt.store, &self.shared.limits, f, self.handle, "reset")
    }

    fn has_state(&self) -> bool {
        self.shared.has_state
    }

    fn save_state(&mut self, out: &mut [f64], err: &mut [u8]) -> Raw<(i32, u64)> {
        let mut l = Layout(0);
        let (p_out, p_len, p_err) = (l.take(out.len() * 8), l.take(8), l.take(err.len()));
        let rt = &mut self.rt;
        let base = rt.scratch(l.0)?;
        let at = |off: usize| base + off as u32;
        rt.write(at(p_len), &[0u8; 8]);
        rt.write(at(p_err), err);
        let f = rt.fns.save.as_ref().expect("checked at load");
        let args =
            (self.handle, at(p_out) as i32, out.len() as i64, at(p_len) as i32, at(p_err) as i32, err.len() as i64);
        let code = Runtime::call(&mut rt.store, &self.shared.limits, f, args, "save_state")?;
        let len = rt.u64_at(at(p_len) as u64, "length")?;
        if len <= out.len() as u64 {
            let b = rt.bytes(at(p_out) as u64, len * 8, "state")?;
            for (x, c) in out.iter_mut().zip(b.chunks_exact(8)) {
                *x = f64::from_le_bytes(c.try_into().expect("8 bytes"));
            }
        }
        self.read_err(at(p_err), err)?;
        Ok((code, len))
    }

    fn load_state(&mut self, data: &[f64], err: &mut [u8]) -> Raw<i32> {
        let mut l = Layout(0);
        let (p_data, p_err) = (l.take(data.len() * 8), l.take(err.len()));
        let rt = &mut self.rt;
        let base = rt.scratch(l.0)?;
        let at = |off: usize| base + off as u32;
        rt.write(at(p_data), &le_u64(data.iter().map(|x| x.to_bits())));
        rt.write(at(p_err), err);
        let f = rt.fns.load.as_ref().expect("checked at load");
        let args = (self.handle, at(p_data) as i32, data.len() as i64, at(p_err) as i32, err.len() as i64);
        let code = Runtime::call(&mut rt.store, &self.shared.limits, f, args, "load_state")?;
        self.read_err(at(p_err), err)?;
        Ok(code)
    }

    /// What its memory limit can hold.
    fn max_state_values(&self) -> u64 {
        self.shared.limits.memory as u64 / 8
    }
}

fn open_registered(path: &Path) -> msrnn_core::Result<Arc<dyn PluginKind>> {
    Ok(Arc::new(WasmPlugin::open(path)?))
}

msrnn_core::inventory::submit! {
    PluginLoader { kind: "WebAssembly", magic: MAGIC, open: open_registered }
}

//! WebAssembly plugins (msrnn-wasm): hostile modules written as small WAT texts (an infinite loop,
//! a memory blow-up, a trap, a stack overflow, bad decisions, a wrong ABI version, imports, ...)
//! each fail with a clear error naming the plugin, leave the state as it was and the process alive;
//! a trapped instance refuses to step until reset, and works again after it. Then the real
//! `keynorm` plugin built for `wasm32-unknown-unknown` from the same crate as the native one makes
//! the same decisions as the native library (skipped, with a message, when the wasm32 target is
//! not installed; the WAT tests need no target).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use candle_core::{DType, Device, Tensor};
use msrnn_core::{
    attend, Capacity, Context, Decision, LayerState, Observation, PluginKind, Policy, PolicyRegistry, PolicySpec,
    Source,
};
use msrnn_tests::Rng;
use msrnn_wasm::{Limits, WasmPlugin};
use proptest::prelude::*;

// ---------------------------------------------------------------------------------------------
// Modules in WAT
// ---------------------------------------------------------------------------------------------

/// The descriptor (wasm32 layout) at 1024: ABI version `version`, name `wat-policy` at 2048, a
/// description at 2080, no aliases, no schema (NULL), create/compress/destroy present.
fn descriptor(version: u32) -> String {
    let b = |v: u32| v.to_le_bytes().iter().map(|x| format!("\\{x:02x}")).collect::<String>();
    let b64 = |v: u64| v.to_le_bytes().iter().map(|x| format!("\\{x:02x}")).collect::<String>();
    let mut d = String::new();
    d += &b(version); // 0 abi_version
    d += &b(2048); // 4 name
    d += &b(2080); // 8 description
    d += &b(0); // 12 aliases
    d += &b64(0); // 16 num_aliases
    d += &b(0); // 24 params (NULL: no schema)
    d += &b(0); // 28 padding
    d += &b64(0); // 32 num_params
    d += &b(1); // 40 create
    d += &b(1); // 44 compress
    d += &b(0); // 48 reset
    d += &b(1); // 52 destroy
    d += &b(0); // 56 save_state
    d += &b(0); // 60 load_state
    format!(
        r#"(data (i32.const 1024) "{d}")
           (data (i32.const 2048) "wat-policy\00")
           (data (i32.const 2080) "a policy written in WAT\00")"#
    )
}

/// A well-behaved compress: evicts the first `live - budget` live slots in slot order (valid, if
/// arbitrary); traps when `tokens_seen` is 13, so tests can make one call fail on purpose.
const COMPRESS_OK: &str = r#"
  (func (export "msrnn_compress") (param $inst i32) (param $obs i32) (param $budget i64) (param $evict i32)
        (param $cap i64) (param $len i32) (param $err i32) (param $errcap i64) (result i32)
    (local $n i32) (local $live i32) (local $s i32) (local $count i32) (local $want i32) (local $k i32)
    (if (i64.eq (i64.load offset=8 (local.get $obs)) (i64.const 13)) (then unreachable))
    (local.set $n (i32.wrap_i64 (i64.load offset=16 (local.get $obs))))
    (local.set $live (i32.load offset=28 (local.get $obs)))
    (block $done (loop $l
      (br_if $done (i32.ge_u (local.get $s) (local.get $n)))
      (local.set $count (i32.add (local.get $count) (i32.load8_u (i32.add (local.get $live) (local.get $s)))))
      (local.set $s (i32.add (local.get $s) (i32.const 1)))
      (br $l)))
    (if (i64.gt_u (i64.extend_i32_u (local.get $count)) (local.get $budget))
      (then (local.set $want (i32.wrap_i64 (i64.sub (i64.extend_i32_u (local.get $count)) (local.get $budget))))))
    (local.set $s (i32.const 0))
    (block $done2 (loop $l2
      (br_if $done2 (i32.ge_u (local.get $k) (local.get $want)))
      (if (i32.load8_u (i32.add (local.get $live) (local.get $s)))
        (then
          (i64.store (i32.add (local.get $evict) (i32.shl (local.get $k) (i32.const 3))) (i64.extend_i32_u (local.get $s)))
          (local.set $k (i32.add (local.get $k) (i32.const 1)))))
      (local.set $s (i32.add (local.get $s) (i32.const 1)))
      (br $l2)))
    (i64.store (local.get $len) (i64.extend_i32_u (local.get $k)))
    (i32.const 0))"#;

const CREATE_OK: &str = r#"
  (func (export "msrnn_create") (param i32 i32 i32 i32 i64) (result i32) (i32.const 1))"#;

/// A bump allocator from 64 KiB up, growing the memory as needed.
const ALLOC_OK: &str = r#"
  (global $heap (mut i32) (i32.const 65536))
  (func (export "msrnn_alloc") (param $size i32) (param $align i32) (result i32)
    (local $p i32) (local $end i32)
    (local.set $p (i32.and (i32.add (global.get $heap) (i32.const 7)) (i32.const -8)))
    (local.set $end (i32.add (local.get $p) (local.get $size)))
    (block $ok (loop $grow
      (br_if $ok (i32.le_u (local.get $end) (i32.shl (memory.size) (i32.const 16))))
      (if (i32.eq (memory.grow (i32.const 1)) (i32.const -1)) (then (return (i32.const 0))))
      (br $grow)))
    (global.set $heap (local.get $end))
    (local.get $p))"#;

/// Parts of a module; each test replaces one.
#[derive(Clone)]
struct Wat {
    version: u32,
    memory_pages: u32,
    extra: String,
    alloc: String,
    create: String,
    compress: String,
    entry: String,
}

impl Default for Wat {
    fn default() -> Self {
        Wat {
            version: msrnn_core::plugin::abi::ABI_VERSION,
            memory_pages: 2,
            extra: String::new(),
            alloc: ALLOC_OK.into(),
            create: CREATE_OK.into(),
            compress: COMPRESS_OK.into(),
            entry: r#"(func (export "msrnn_policy_plugin") (result i32) (i32.const 1024))"#.into(),
        }
    }
}

impl Wat {
    fn text(&self) -> String {
        format!(
            r#"(module
  {extra}
  (memory (export "memory") {pages})
  {desc}
  {entry}
  {alloc}
  {create}
  {compress}
  (func (export "msrnn_destroy") (param i32)))"#,
            extra = self.extra,
            pages = self.memory_pages,
            desc = descriptor(self.version),
            entry = self.entry,
            alloc = self.alloc,
            create = self.create,
            compress = self.compress,
        )
    }

    /// Writes the module as a `.wasm` file named `name` in a fresh directory.
    fn file(&self, name: &str) -> PathBuf {
        let bytes = wat::parse_str(self.text()).unwrap_or_else(|e| panic!("{name}: bad WAT: {e}"));
        let p = msrnn_tests::files::scratch(&format!("wasm-{name}")).join(format!("{name}.wasm"));
        std::fs::write(&p, bytes).unwrap();
        p
    }

    fn with_compress(body: &str) -> Self {
        Wat {
            compress: format!(
                r#"(func (export "msrnn_compress") (param $inst i32) (param $obs i32) (param $budget i64)
                     (param $evict i32) (param $cap i64) (param $len i32) (param $err i32) (param $errcap i64)
                     (result i32) {body})"#
            ),
            ..Wat::default()
        }
    }
}

/// Small limits so the hostile cases end quickly.
const LIMITS: Limits = Limits { memory: 8 << 20, fuel: 5_000_000 };

fn open(w: &Wat, name: &str) -> (WasmPlugin, String) {
    let p = w.file(name);
    let plugin = WasmPlugin::open_with(&p, LIMITS).unwrap_or_else(|e| panic!("{name}: {e}"));
    let abs = std::fs::canonicalize(&p).unwrap().display().to_string();
    (plugin, abs)
}

fn load_fails(w: &Wat, name: &str, needle: &str) -> String {
    let p = w.file(name);
    let e = WasmPlugin::open_with(&p, LIMITS).expect_err("a hostile module loaded").to_string();
    println!("{name}: {e}");
    let abs = std::fs::canonicalize(&p).unwrap().display().to_string();
    assert!(e.starts_with(&format!("plugin {abs}: ")), "does not name the plugin: {e}");
    assert!(e.contains(needle), "expected `{needle}` in: {e}");
    e
}

// ---------------------------------------------------------------------------------------------
// Driving an instance through the real attend
// ---------------------------------------------------------------------------------------------

const HEAD_DIM: usize = 4;

fn ctx(kv: usize, capacity: Capacity) -> Context {
    Context {
        layer: 0,
        num_layers: 1,
        num_heads: 2 * kv,
        num_kv_heads: kv,
        head_dim: HEAD_DIM,
        capacity: capacity.get(),
    }
}

/// One layer fed with deterministic random tensors.
struct Feeder {
    layer: LayerState,
    kv: usize,
    next: u64,
    rng: Rng,
}

impl Feeder {
    fn new(kv: usize, capacity: Capacity, seed: u64) -> Self {
        let layer = LayerState::new(kv, HEAD_DIM, DType::F32, &Device::Cpu, capacity, None, 4).unwrap();
        Feeder { layer, kv, next: 0, rng: Rng::new(seed) }
    }

    /// Feeds `t` tokens; returns their positions and attend's result.
    fn feed(&mut self, t: usize, policy: &mut dyn Policy) -> (Vec<u64>, msrnn_core::Result<()>) {
        let dev = Device::Cpu;
        let heads = 2 * self.kv;
        let mut rnd =
            |h: usize| Tensor::from_vec(self.rng.vec(h * t * HEAD_DIM, -3.0, 3.0), (h, t, HEAD_DIM), &dev).unwrap();
        let (q, k, v) = (rnd(heads), rnd(self.kv), rnd(self.kv));
        let pos: Vec<u64> = (self.next..self.next + t as u64).collect();
        self.next += t as u64;
        let r = attend(&q, &k, &v, &pos, &mut self.layer, policy, 0.5).map(|_| ());
        (pos, r)
    }

    fn live(&self) -> Vec<u64> {
        self.layer.live_positions()
    }

    /// A per-head layer of head capacity C instead.
    fn per_head(mut self, capacity: Capacity) -> Self {
        let c = capacity.get().expect("bounded");
        self.layer = LayerState::per_head(self.kv, HEAD_DIM, DType::F32, &Device::Cpu, capacity, c, None, 4).unwrap();
        self
    }

    /// Each KV head's live positions.
    fn heads_live(&self) -> Vec<Vec<u64>> {
        (0..self.kv).map(|h| self.layer.head_live_positions(h)).collect()
    }
}

/// Fills a C = 4 layer (within budget), then feeds one more token: the step must fail with an
/// error naming the plugin and containing `needle`, evict nothing (the new token stays written,
/// nothing already there is lost), and leave the process alive.
fn hostile_step(w: &Wat, name: &str, needle: &str) -> Box<dyn Policy> {
    let (plugin, abs) = open(w, name);
    let cap = Capacity::Bounded(4);
    let mut p = plugin.instantiate(&Default::default(), &ctx(1, cap)).unwrap();
    let mut f = Feeder::new(1, cap, 7);
    for _ in 0..4 {
        f.feed(1, p.as_mut()).1.unwrap();
    }
    let before = f.live();
    let (new, r) = f.feed(1, p.as_mut());
    let msg = r.expect_err("the hostile step was accepted").to_string();
    println!("{name}: {msg}");
    assert!(msg.contains("`wat-policy`") && msg.contains(&abs), "does not name the plugin: {msg}");
    assert!(msg.contains(needle), "expected `{needle}` in: {msg}");
    assert!(msg.ends_with("(state left untouched)"), "{msg}");
    let mut want: Vec<u64> = before.iter().chain(&new).copied().collect();
    want.sort();
    assert_eq!(f.live(), want, "the state changed");
    p
}

// ---------------------------------------------------------------------------------------------
// Hostile modules
// ---------------------------------------------------------------------------------------------

#[test]
fn a_well_behaved_wat_policy_runs_through_attend() {
    let (plugin, abs) = open(&Wat::default(), "ok");
    assert_eq!(plugin.name(), "wat-policy");
    assert_eq!(plugin.info().description, "a policy written in WAT");
    assert_eq!(plugin.info().params, None);
    let cap = Capacity::Bounded(3);
    let mut p = plugin.instantiate(&Default::default(), &ctx(2, cap)).unwrap();
    let mut f = Feeder::new(2, cap, 1);
    for t in [1, 2, 4, 1, 3, 1] {
        f.feed(t, p.as_mut()).1.unwrap();
        assert!(f.layer.live_count() <= 3);
    }
    assert_eq!(f.layer.live_count(), 3);
    // Through the registry, next to the built-ins, by the file's magic.
    let mut reg = msrnn_policies::registry();
    let loaded = reg.load_plugin(&abs).unwrap();
    assert_eq!(loaded.name(), "wat-policy");
    assert_eq!(reg.get("wat-policy").unwrap().source, Source::Plugin(abs.clone()));
    let layers = reg.create_layers(&PolicySpec::new("wat-policy"), 3, 2, 1, HEAD_DIM, cap).unwrap();
    assert_eq!(layers.len(), 3);
}

#[test]
fn an_infinite_loop_runs_out_of_fuel() {
    let w = Wat::with_compress("(loop $forever (br $forever)) (i32.const 0)");
    hostile_step(&w, "loop", "ran out of fuel in `compress`: it executed more than 5000000 instructions");
}

#[test]
fn a_memory_blow_up_stops_at_the_limit() {
    let w =
        Wat::with_compress("(loop $g (br_if $g (i32.ne (memory.grow (i32.const 16)) (i32.const -1)))) (i32.const 0)");
    hostile_step(&w, "grow", "asked for more memory than its limit of 8.0 MiB");
}

#[test]
fn a_trap_is_an_error_and_the_instance_recovers_after_reset() {
    let w = Wat::with_compress("unreachable");
    hostile_step(&w, "trap", "trapped in `compress`: it executed `unreachable`");

    // The well-behaved module traps when tokens_seen is 13: that instance then refuses to step
    // until it is reset, which builds it afresh.
    let (plugin, _) = open(&Wat::default(), "trap-once");
    let pos = [0u64, 1, 2];
    let live = [true; 3];
    let obs = |seen: u64| Observation {
        layer: 0,
        tokens_seen: seen,
        num_slots: 3,
        positions: &pos,
        live: &live,
        new_slots: &[2],
        num_heads: 1,
        num_kv_heads: 1,
        head_dim: 2,
        rows: 0,
        probs: &[],
        key_norms: &[],
        keys: &[],
        head_capacity: 0,
    };
    let mut p = plugin.instantiate(&Default::default(), &ctx(1, Capacity::Bounded(2))).unwrap();
    assert_eq!(p.step(&obs(3), 2).unwrap(), Decision::Evict(vec![0]));
    let e = p.step(&obs(13), 2).unwrap_err().to_string();
    assert!(e.contains("trapped in `compress`"), "{e}");
    let e = p.step(&obs(3), 2).unwrap_err().to_string();
    assert!(e.contains("refuses to step: it failed earlier (trapped in `compress`"), "{e}");
    p.reset();
    assert_eq!(p.step(&obs(3), 1).unwrap(), Decision::Evict(vec![0, 1]));
}

#[test]
fn reading_outside_its_memory_traps() {
    let w = Wat::with_compress("(drop (i64.load (i32.const -8))) (i32.const 0)");
    hostile_step(&w, "oob", "trapped in `compress`: wasm trap: out of bounds memory access");
}

#[test]
fn a_stack_overflow_traps() {
    let w = Wat {
        extra: r#"(func $down (param i32) (result i32) (i32.add (call $down (local.get 0)) (i32.const 1)))"#.into(),
        ..Wat::with_compress("(drop (call $down (i32.const 0))) (i32.const 0)")
    };
    hostile_step(&w, "stack", "trapped in `compress`: its call stack overflowed");
}

#[test]
fn bad_decisions_are_refused_as_for_native_plugins() {
    let out_of_range = r#"(i64.store (local.get $evict) (i64.const 999)) (i64.store (local.get $len) (i64.const 1))
                          (i32.const 0)"#;
    hostile_step(&Wat::with_compress(out_of_range), "range", "slot 999 is out of range (the layer has");
    let overflow = "(i64.store (local.get $len) (i64.const 1000)) (i32.const 0)";
    hostile_step(&Wat::with_compress(overflow), "overflow", "reported 1000 slots to evict, more than the 5 live slots");
    let keep = "(i32.const 0)";
    hostile_step(&Wat::with_compress(keep), "keep", "evicted 0 slots, but 5 are live with a budget of 4, so exactly 1");
    let fail = r#"(i64.store (local.get $err) (i64.const 0x6c696166)) (i32.const 1)"#;
    hostile_step(&Wat::with_compress(fail), "fail", "failed: fail");
    hostile_step(&Wat::with_compress("(i32.const 42)"), "code", "returned the unknown code 42: (no message)");
}

/// A version 2 module (written for the layouts before `head_capacity` was appended) still loads
/// and runs: its needs leave the head capacity zero, so its layer is shared.
#[test]
fn a_version_2_module_still_loads_and_runs() {
    let (plugin, _) = open(&Wat { version: 2, ..Wat::default() }, "v2");
    let cap = Capacity::Bounded(3);
    let mut p = plugin.instantiate(&Default::default(), &ctx(2, cap)).unwrap();
    assert_eq!(p.head_capacity(), None);
    let mut f = Feeder::new(2, cap, 1);
    for t in [1, 2, 4, 1] {
        f.feed(t, p.as_mut()).1.unwrap();
    }
    assert_eq!(f.layer.live_count(), 3);
}

#[test]
fn a_wrong_abi_version_is_refused() {
    let w = Wat { version: 1, ..Wat::default() };
    load_fails(&w, "version", "it was built for plugin ABI version 1, but this msrnn loads versions 2 to 3");
}

#[test]
fn imports_are_refused() {
    let w = Wat { extra: r#"(import "env" "log" (func $log (param i32)))"#.into(), ..Wat::default() };
    load_fails(&w, "import", "it imports `env.log` (a function): a WebAssembly policy is given nothing by the host");
    let w = Wat { extra: r#"(import "env" "t" (table 1 funcref))"#.into(), ..Wat::default() };
    load_fails(&w, "import-table", "`env.t` (a table)");
}

#[test]
fn broken_modules_are_refused_when_loading() {
    // A start function that never ends: out of fuel before the descriptor is read.
    let w = Wat { extra: "(func $spin (loop $l (br $l))) (start $spin)".into(), ..Wat::default() };
    load_fails(&w, "start-loop", "ran out of fuel in `instantiation`");
    // More initial memory than the limit.
    let w = Wat { memory_pages: 1000, ..Wat::default() };
    load_fails(&w, "huge-memory", "its limit of 8.0 MiB");
    // A descriptor outside memory, and a NULL one.
    let w =
        Wat { entry: r#"(func (export "msrnn_policy_plugin") (result i32) (i32.const -16))"#.into(), ..Wat::default() };
    load_fails(&w, "desc-oob", "lies outside its memory");
    let w =
        Wat { entry: r#"(func (export "msrnn_policy_plugin") (result i32) (i32.const 0))"#.into(), ..Wat::default() };
    load_fails(&w, "desc-null", "returned NULL instead of a descriptor");
    // No compress export, or one of the wrong type.
    let w = Wat { compress: String::new(), ..Wat::default() };
    load_fails(&w, "no-compress", "it does not export `msrnn_compress`");
    let w = Wat {
        compress: r#"(func (export "msrnn_compress") (param i32) (result i32) (i32.const 0))"#.into(),
        ..Wat::default()
    };
    load_fails(&w, "bad-compress", "its `msrnn_compress` has the wrong signature");
    // Not WebAssembly at all, and garbage after the magic.
    let dir = msrnn_tests::files::scratch("wasm-junk");
    let text = dir.join("text.wasm");
    std::fs::write(&text, "(module)").unwrap();
    let e = WasmPlugin::open_with(&text, LIMITS).unwrap_err().to_string();
    assert!(e.contains("it is not a WebAssembly module"), "{e}");
    let junk = dir.join("junk.wasm");
    std::fs::write(&junk, b"\0asm\x01\0\0\0\xff\xff\xff").unwrap();
    let e = WasmPlugin::open_with(&junk, LIMITS).unwrap_err().to_string();
    assert!(e.contains("it is not a valid WebAssembly module"), "{e}");
    // The registry picks the kind by the magic: the junk module is refused as WebAssembly.
    let e = PolicyRegistry::new().load_plugin(&junk).unwrap_err().to_string();
    assert!(e.contains("not a valid WebAssembly module"), "{e}");
}

#[test]
fn create_runs_under_the_same_limits() {
    let w = Wat {
        create:
            r#"(func (export "msrnn_create") (param i32 i32 i32 i32 i64) (result i32) (loop $l (br $l)) (i32.const 1))"#
                .into(),
        ..Wat::default()
    };
    let (plugin, abs) = open(&w, "create-loop");
    let e = plugin.instantiate(&Default::default(), &ctx(1, Capacity::Bounded(4))).err().expect("refused").to_string();
    assert!(e.starts_with(&format!("plugin {abs}: ")) && e.contains("ran out of fuel in `create`"), "{e}");
    // A NULL instance with a message, as a native plugin refuses.
    let w = Wat {
        create: r#"(func (export "msrnn_create") (param i32 i32 i32 i32 i64) (result i32)
                     (i64.store (local.get 3) (i64.const 0x6f6e)) (i32.const 0))"#
            .into(),
        ..Wat::default()
    };
    let (plugin, _) = open(&w, "create-refuses");
    let e = plugin.instantiate(&Default::default(), &ctx(1, Capacity::Bounded(4))).err().expect("refused").to_string();
    assert!(e.contains("policy `wat-policy` refused to create its instance for layer 0: no"), "{e}");
    // Needs that make no sense.
    let w = Wat {
        create: r#"(func (export "msrnn_create") (param i32 i32 i32 i32 i64) (result i32)
                     (i32.store (local.get 2) (i32.const 7)) (i32.const 1))"#
            .into(),
        ..Wat::default()
    };
    let (plugin, _) = open(&w, "create-rows");
    let e = plugin.instantiate(&Default::default(), &ctx(1, Capacity::Bounded(4))).err().expect("refused").to_string();
    assert!(e.contains("asked for rows = 7"), "{e}");
    // An allocator that answers with memory it does not have.
    let w = Wat {
        alloc: r#"(func (export "msrnn_alloc") (param i32 i32) (result i32) (i32.const 0x7fff0000))"#.into(),
        ..Wat::default()
    };
    let (plugin, _) = open(&w, "alloc-lies");
    let e = plugin.instantiate(&Default::default(), &ctx(1, Capacity::Bounded(4))).err().expect("refused").to_string();
    assert!(e.contains("its msrnn_alloc result") && e.contains("lies outside its memory"), "{e}");
}

// ---------------------------------------------------------------------------------------------
// The real keynorm plugin, built for wasm32 from the same crate as the native one
// ---------------------------------------------------------------------------------------------

/// Whether the wasm32-unknown-unknown target is installed (`MSRNN_TEST_NO_WASM32=1` pretends not).
fn wasm32_target() -> bool {
    if std::env::var_os("MSRNN_TEST_NO_WASM32").is_some_and(|v| v != "0") {
        return false;
    }
    let rustc = std::env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    let Ok(o) = Command::new(rustc).args(["--print", "sysroot"]).output() else { return false };
    let sysroot = String::from_utf8_lossy(&o.stdout).trim().to_string();
    Path::new(&sysroot).join("lib/rustlib/wasm32-unknown-unknown/lib").is_dir()
}

/// `(native .so, .wasm)` of keynorm, built into this test's target dir; `None` (after saying why)
/// without the wasm32 target.
fn keynorm_builds() -> Option<&'static (PathBuf, PathBuf)> {
    static B: OnceLock<Option<(PathBuf, PathBuf)>> = OnceLock::new();
    B.get_or_init(|| {
        if !wasm32_target() {
            let why = "SKIPPED: the wasm32-unknown-unknown target is not installed (rustup target add \
                       wasm32-unknown-unknown); the WAT tests still ran";
            println!("{why}");
            eprintln!("{why}");
            return None;
        }
        let native = msrnn_tests::plugins::keynorm();
        msrnn_tests::plugins::cargo_build(&["msrnn-plugin-keynorm"], Some("wasm32-unknown-unknown"));
        let profile_dir = msrnn_tests::plugins::profile_dir();
        let target_dir = profile_dir.parent().unwrap().to_path_buf();
        let wasm_dir = target_dir.join("wasm32-unknown-unknown").join(profile_dir.file_name().unwrap());
        Some((native, wasm_dir.join("msrnn_keynorm.wasm")))
    })
    .as_ref()
}

#[test]
fn keynorm_as_wasm_loads_with_the_same_declaration_as_native() {
    let Some((native, wasm)) = keynorm_builds() else { return };
    let n = msrnn_core::Plugin::open(native).unwrap();
    let w = WasmPlugin::open(wasm).unwrap();
    assert_eq!(n.info(), w.info());
    let mut reg = msrnn_policies::registry();
    reg.load_plugin(wasm).unwrap();
    let e = reg.get("keynorm").unwrap();
    assert!(matches!(&e.source, Source::Plugin(p) if p.ends_with(".wasm")), "{:?}", e.source);
    // Parameters are checked against the same schema.
    let e =
        reg.create(&"keynorm:x=1".parse().unwrap(), &ctx(1, Capacity::Bounded(4))).err().expect("refused").to_string();
    assert!(e.contains("unknown parameter `x` (known: per_head)"), "{e}");
}

#[test]
fn keynorm_as_wasm_keeps_exactly_what_native_keynorm_keeps() {
    let Some((native, wasm)) = keynorm_builds() else { return };
    let (n, w) = (msrnn_core::Plugin::open(native).unwrap(), WasmPlugin::open(wasm).unwrap());
    for seed in 0..8u64 {
        let (kv, cap) = (1 + seed as usize % 3, Capacity::Bounded(3 + seed as usize % 5));
        let mut pn = n.instantiate(&Default::default(), &ctx(kv, cap)).unwrap();
        let mut pw = w.instantiate(&Default::default(), &ctx(kv, cap)).unwrap();
        let (mut fna, mut fwa) = (Feeder::new(kv, cap, seed), Feeder::new(kv, cap, seed));
        let mut rng = Rng::new(seed + 100);
        for _ in 0..40 {
            let t = 1 + rng.below(4) as usize;
            fna.feed(t, pn.as_mut()).1.unwrap();
            fwa.feed(t, pw.as_mut()).1.unwrap();
            assert_eq!(fna.live(), fwa.live(), "seed {seed}");
        }
        pw.reset();
        pn.reset();
    }
}

/// ABI version 3 through the sandbox: `keynorm:per_head=true` built for wasm32 makes the native
/// library's per-head decisions (per-entry observations copied into the module's memory, entries
/// read back).
#[test]
fn per_head_keynorm_as_wasm_keeps_exactly_what_native_keeps() {
    let Some((native, wasm)) = keynorm_builds() else { return };
    let (n, w) = (msrnn_core::Plugin::open(native).unwrap(), WasmPlugin::open(wasm).unwrap());
    let schema = n.info().params.clone().expect("keynorm declares its parameters");
    let p = msrnn_core::Params::parse("per_head=true", &schema).unwrap();
    for seed in 0..6u64 {
        let (kv, cap) = (2 + seed as usize % 2, Capacity::Bounded(3 + seed as usize % 5));
        let mut pn = n.instantiate(&p, &ctx(kv, cap)).unwrap();
        let mut pw = w.instantiate(&p, &ctx(kv, cap)).unwrap();
        assert_eq!((pn.head_capacity(), pw.head_capacity()), (cap.get(), cap.get()));
        let (mut fna, mut fwa) = (Feeder::new(kv, cap, seed).per_head(cap), Feeder::new(kv, cap, seed).per_head(cap));
        let mut rng = Rng::new(seed + 100);
        for _ in 0..30 {
            let t = 1 + rng.below(4) as usize;
            fna.feed(t, pn.as_mut()).1.unwrap();
            fwa.feed(t, pw.as_mut()).1.unwrap();
            assert_eq!(fna.heads_live(), fwa.heads_live(), "seed {seed}");
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// Arbitrary observations (dead slots, ties, NaN norms, budgets below and above the live
    /// count): the WebAssembly build answers exactly as the native one.
    #[test]
    fn keynorm_wasm_and_native_agree_on_arbitrary_observations(
        n in 1usize..=40,
        kv in 1usize..=3,
        live_bits in any::<u64>(),
        picks in prop::collection::vec(0usize..5, 120),
        budget in 0usize..=41,
    ) {
        let Some((native, wasm)) = keynorm_builds() else { return Ok(()) };
        static PLUGINS: OnceLock<(msrnn_core::Plugin, WasmPlugin)> = OnceLock::new();
        let (np, wp) = PLUGINS.get_or_init(|| (msrnn_core::Plugin::open(native).unwrap(), WasmPlugin::open(wasm).unwrap()));
        let positions: Vec<u64> = (0..n as u64).map(|i| (i * 7919) % 1000).collect();
        let live: Vec<bool> = (0..n).map(|s| live_bits >> s & 1 == 1).collect();
        let norms: Vec<f32> = (0..kv * n).map(|i| [0.5f32, 1.0, 2.0, f32::NAN, 1.0][picks[i]]).collect();
        let obs = Observation {
            layer: 0, tokens_seen: 1000, num_slots: n, positions: &positions, live: &live, new_slots: &[],
            num_heads: kv, num_kv_heads: kv, head_dim: 0, rows: 0, probs: &[], key_norms: &norms, keys: &[],
            head_capacity: 0,
        };
        let c = ctx(kv, Capacity::Bounded(budget.max(1)));
        let a = np.instantiate(&Default::default(), &c).unwrap().step(&obs, budget).map_err(|e| e.to_string());
        let b = wp.instantiate(&Default::default(), &c).unwrap().step(&obs, budget).map_err(|e| e.to_string());
        prop_assert_eq!(a, b);
    }
}

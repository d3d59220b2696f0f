//! Policy plugins end to end: build the real plugins (`plugins/keynorm`, a Rust `cdylib`;
//! `plugins/strided-c`, C against `docs/msrnn_plugin.h`) and the hostile fixtures (`tests/fixtures`),
//! load them, run them through the real `attend` under the same invariants as the built-ins, and
//! check that every kind of bad plugin is a clear error naming the plugin, with the state untouched
//! and the process alive.
//!
//! The Rust plugins are built by running `cargo build -p ...` from the test (cargo has released its
//! build lock by the time tests run); the C ones with `$CC` (default `cc`) into
//! `target/<profile>/msrnn-test-plugins/`.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex, OnceLock};

use candle_core::{DType, Device, Tensor};
use msrnn_core::plugin::abi::ABI_VERSION;
use msrnn_core::{
    attend, Capacity, Context, Decision, Entry, Error, LayerState, MsrnnState, Needs, Observation, ParamValue,
    PluginKind, Policy, PolicyRegistry, PolicySpec, Source, StateConfig,
};
use msrnn_tests::plugins::{cargo_build, dylib, profile_dir};
use msrnn_tests::Rng;
use proptest::prelude::*;

// ---------------------------------------------------------------------------------------------
// Building the plugins
// ---------------------------------------------------------------------------------------------

struct Built {
    keynorm: PathBuf,
    panicky: PathBuf,
    strided: PathBuf,
    hostile: PathBuf,
    wrong_version: PathBuf,
    version_2: PathBuf,
    no_symbol: PathBuf,
    null_compress: PathBuf,
    bad_name: PathBuf,
    null_descriptor: PathBuf,
    bad_alias: PathBuf,
    /// `target/<profile>`, where cargo puts the cdylibs.
    profile_dir: PathBuf,
    /// Where the C plugins go.
    c_dir: PathBuf,
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

/// Compiles one C plugin; writes to a temporary name and renames, so a library another test process
/// has loaded is never overwritten in place.
fn compile_c(src: &Path, out: &Path, defines: &[&str]) {
    let cc = std::env::var_os("CC").unwrap_or_else(|| "cc".into());
    let tmp = out.with_extension(format!("tmp{}", std::process::id()));
    let shared = if cfg!(target_os = "macos") { "-dynamiclib" } else { "-shared" };
    let o = Command::new(&cc)
        .args([shared, "-fPIC", "-O2", "-Wall"])
        .arg("-I")
        .arg(root().join("docs"))
        .args(defines.iter().map(|d| format!("-D{d}")))
        .arg("-o")
        .arg(&tmp)
        .arg(src)
        .arg("-lm")
        .output()
        .unwrap_or_else(|e| panic!("cannot run the C compiler {cc:?}: {e}"));
    assert!(o.status.success(), "{cc:?} failed on {}: {}", src.display(), String::from_utf8_lossy(&o.stderr));
    std::fs::rename(&tmp, out).unwrap();
}

fn build_all() -> Built {
    cargo_build(&["msrnn-plugin-keynorm", "msrnn-fixture-panicky"], None);
    let profile_dir = profile_dir();

    let c_dir = profile_dir.join("msrnn-test-plugins");
    std::fs::create_dir_all(&c_dir).unwrap();
    let strided = dylib(&c_dir, "strided");
    compile_c(&root().join("plugins/strided-c/strided.c"), &strided, &[]);
    let hostile_src = root().join("tests/fixtures/hostile.c");
    let variant = |name: &str, defines: &[&str]| {
        let p = dylib(&c_dir, name);
        compile_c(&hostile_src, &p, defines);
        p
    };
    Built {
        keynorm: dylib(&profile_dir, "msrnn_keynorm"),
        panicky: dylib(&profile_dir, "msrnn_fixture_panicky"),
        strided,
        hostile: variant("hostile", &[]),
        wrong_version: variant("hostile_wrong_version", &["WRONG_VERSION"]),
        version_2: variant("hostile_version_2", &["VERSION_2"]),
        no_symbol: variant("hostile_no_symbol", &["NO_SYMBOL"]),
        null_compress: variant("hostile_null_compress", &["NULL_COMPRESS"]),
        bad_name: variant("hostile_bad_name", &["BAD_NAME"]),
        null_descriptor: variant("hostile_null_descriptor", &["NULL_DESCRIPTOR"]),
        bad_alias: variant("hostile_bad_alias", &["BAD_ALIAS"]),
        profile_dir,
        c_dir,
    }
}

fn built() -> &'static Built {
    static B: OnceLock<Built> = OnceLock::new();
    B.get_or_init(build_all)
}

/// A registry with the built-ins and the two real plugins plus the two fixtures.
fn registry() -> PolicyRegistry {
    let b = built();
    let mut r = msrnn_policies::registry();
    for p in [&b.keynorm, &b.strided, &b.panicky, &b.hostile] {
        r.load_plugin(p).unwrap_or_else(|e| panic!("{e}"));
    }
    r
}

fn ctx(heads: usize, kv: usize, capacity: Capacity) -> Context {
    Context {
        layer: 0,
        num_layers: 1,
        num_heads: heads,
        num_kv_heads: kv,
        head_dim: HEAD_DIM,
        capacity: capacity.get(),
    }
}

// ---------------------------------------------------------------------------------------------
// Driving a policy through the real attend
// ---------------------------------------------------------------------------------------------

/// What a policy saw at one call: tokens seen, and (position, key norm averaged over KV heads) per
/// live slot, computed exactly as the plugin computes it.
#[derive(Debug, Clone)]
struct Call {
    tokens_seen: u64,
    live: Vec<(u64, f64)>,
}

/// Wraps a policy and records what it saw; always asks for key norms (to record them) but hands the
/// inner policy only what it asked for.
struct Spy {
    inner: Box<dyn Policy>,
    log: Arc<Mutex<Vec<Call>>>,
}

impl Policy for Spy {
    fn name(&self) -> &str {
        self.inner.name()
    }
    fn needs(&self) -> Needs {
        Needs { key_norms: true, ..self.inner.needs() }
    }
    fn step(&mut self, obs: &Observation<'_>, budget: usize) -> msrnn_core::policy::Result<Decision> {
        let n = obs.num_slots;
        let mean = |s: usize| {
            let mut a = 0f64;
            for h in 0..obs.num_kv_heads {
                a += obs.key_norms[h * n + s] as f64;
            }
            a / obs.num_kv_heads as f64
        };
        self.log.lock().unwrap().push(Call {
            tokens_seen: obs.tokens_seen,
            live: obs.live_slots().map(|s| (obs.positions[s], mean(s))).collect(),
        });
        let mut o = *obs;
        if !self.inner.needs().key_norms {
            o.key_norms = &[];
        }
        self.inner.step(&o, budget)
    }
    fn reset(&mut self) {
        self.inner.reset()
    }
}

/// One layer fed with deterministic random tensors.
struct Feeder {
    layer: LayerState,
    heads: usize,
    kv: usize,
    next: u64,
    rng: Rng,
}

const HEAD_DIM: usize = 4;

impl Feeder {
    fn new(heads: usize, kv: usize, capacity: Capacity, seed: u64) -> Self {
        let layer = LayerState::new(kv, HEAD_DIM, DType::F32, &Device::Cpu, capacity, None, 4).unwrap();
        Feeder { layer, heads, kv, next: 0, rng: Rng::new(seed) }
    }

    fn rnd(&mut self, n: usize) -> Vec<f32> {
        self.rng.vec(n, -3.0, 3.0)
    }

    /// Feeds `t` tokens; returns their positions and attend's result (the tokens are written either way).
    fn feed(&mut self, t: usize, policy: &mut dyn Policy) -> (Vec<u64>, msrnn_core::Result<()>) {
        let dev = Device::Cpu;
        let q = Tensor::from_vec(self.rnd(self.heads * t * HEAD_DIM), (self.heads, t, HEAD_DIM), &dev).unwrap();
        let k = Tensor::from_vec(self.rnd(self.kv * t * HEAD_DIM), (self.kv, t, HEAD_DIM), &dev).unwrap();
        let v = Tensor::from_vec(self.rnd(self.kv * t * HEAD_DIM), (self.kv, t, HEAD_DIM), &dev).unwrap();
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

/// keynorm's per-head rule written again from the keys themselves (f64 norms): per KV head, the
/// entries of largest norm go, ties evict the older.
struct PerHeadKeyNormRef(usize);

impl Policy for PerHeadKeyNormRef {
    fn name(&self) -> &str {
        "keynorm-ref"
    }
    fn needs(&self) -> Needs {
        Needs { keys: true, ..Needs::default() }
    }
    fn head_capacity(&self) -> Option<usize> {
        Some(self.0)
    }
    fn step(&mut self, obs: &Observation<'_>, budget: usize) -> msrnn_core::policy::Result<Decision> {
        let n = obs.num_slots;
        let mut out = Vec::new();
        for h in 0..obs.num_kv_heads {
            let norm = |e: usize| obs.key(h, e - h * n).iter().map(|&x| x as f64 * x as f64).sum::<f64>().sqrt();
            let mut mine: Vec<usize> = obs.live_slots().filter(|&e| e / n == h).collect();
            mine.sort_by(|&a, &b| norm(b).total_cmp(&norm(a)).then(obs.positions[a].cmp(&obs.positions[b])));
            mine.truncate(mine.len().saturating_sub(budget));
            out.extend(mine);
        }
        Ok(Decision::Evict(out))
    }
}

/// The native plugin decides per KV head (ABI version 3's `head_capacity`): each head keeps
/// exactly what the rule, recomputed from the keys, keeps, and the heads disagree.
#[test]
fn a_per_head_plugin_keeps_per_head_what_its_rule_keeps() {
    let reg = registry();
    let mut disagreed = false;
    for seed in 0..6u64 {
        let (kv, c) = (2 + seed as usize % 2, 3 + seed as usize % 4);
        let cap = Capacity::Bounded(c);
        let mut plugin = reg.create(&"keynorm:per_head=true".parse().unwrap(), &ctx(2 * kv, kv, cap)).unwrap();
        assert_eq!(plugin.head_capacity(), Some(c));
        let mut reference = PerHeadKeyNormRef(c);
        let (mut a, mut b) =
            (Feeder::new(2 * kv, kv, cap, seed).per_head(cap), Feeder::new(2 * kv, kv, cap, seed).per_head(cap));
        let mut rng = Rng::new(seed + 50);
        for _ in 0..30 {
            let t = 1 + rng.below(4) as usize;
            a.feed(t, plugin.as_mut()).1.unwrap();
            b.feed(t, &mut reference).1.unwrap();
            assert_eq!(a.heads_live(), b.heads_live(), "seed {seed}");
            assert!(a.heads_live().iter().all(|h| h.len() == c.min(a.next as usize)));
            disagreed |= a.heads_live().windows(2).any(|w| w[0] != w[1]);
        }
    }
    assert!(disagreed, "random keys: some heads keep different tokens");
}

#[derive(Debug, Clone)]
struct Case {
    heads: usize,
    kv: usize,
    cap: usize,
    chunks: Vec<usize>,
    data_seed: u64,
    // strided's parameters
    sinks: usize,
    stride: usize,
    recent: usize,
}

fn case() -> impl Strategy<Value = Case> {
    (
        (1usize..=2, 1usize..=2, 1usize..=10),
        prop::collection::vec(1usize..=4, 1..20),
        any::<u64>(),
        (0usize..=3, 1usize..=4, 0usize..=3),
    )
        .prop_map(|((kv, g, cap), chunks, data_seed, (sinks, stride, recent))| Case {
            heads: kv * g,
            kv,
            cap,
            chunks,
            data_seed,
            sinks,
            stride,
            recent,
        })
}

/// Runs a policy over the case: the live positions after every step, the calls it saw, the new
/// positions of every step.
fn run(reg: &PolicyRegistry, spec: &PolicySpec, c: &Case) -> (Vec<Vec<u64>>, Vec<Call>, Vec<Vec<u64>>) {
    let capacity = Capacity::Bounded(c.cap);
    let inner = reg.create(spec, &ctx(c.heads, c.kv, capacity)).unwrap_or_else(|e| panic!("{e}"));
    let log = Arc::new(Mutex::new(Vec::new()));
    let mut spy = Spy { inner, log: log.clone() };
    let mut f = Feeder::new(c.heads, c.kv, capacity, c.data_seed);
    let (mut after, mut news) = (Vec::new(), Vec::new());
    for &t in &c.chunks {
        let (pos, r) = f.feed(t, &mut spy);
        r.unwrap_or_else(|e| panic!("{spec}: {e}"));
        after.push(f.live());
        news.push(pos);
    }
    let log = log.lock().unwrap().clone();
    (after, log, news)
}

/// keynorm's rule on what it saw: the `cap` smallest mean norms survive, ties to the newer.
fn keynorm_survivors(call: &Call, cap: usize) -> Vec<u64> {
    let mut s = call.live.clone();
    s.sort_by(|a, b| a.1.total_cmp(&b.1).then(b.0.cmp(&a.0)));
    let mut keep: Vec<u64> = s.iter().take(cap).map(|x| x.0).collect();
    keep.sort();
    keep
}

/// strided's class of a position (2 sinks and recent, 1 grid, 0 else).
fn strided_class(p: u64, seen: u64, sinks: u64, stride: u64, recent: u64) -> u8 {
    if p < sinks || p + recent >= seen {
        2
    } else if p.is_multiple_of(stride) {
        1
    } else {
        0
    }
}

/// strided's rule: the `cap` highest (class, position) survive.
fn strided_survivors(positions: &[u64], seen: u64, cap: usize, c: (u64, u64, u64)) -> Vec<u64> {
    let mut s = positions.to_vec();
    s.sort_by_key(|&p| std::cmp::Reverse((strided_class(p, seen, c.0, c.1, c.2), p)));
    let mut keep: Vec<u64> = s.into_iter().take(cap).collect();
    keep.sort();
    keep
}

fn reg_for_props() -> &'static Mutex<PolicyRegistry> {
    static R: OnceLock<Mutex<PolicyRegistry>> = OnceLock::new();
    R.get_or_init(|| Mutex::new(registry()))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// The built-ins' invariants, for every plugin policy: live size == min(tokens seen, C) after
    /// every step, kept ⊆ previous ∪ new, positions unique, same seed same result; plus each
    /// plugin's own rule checked against what it saw.
    #[test]
    fn plugin_policies_keep_the_state_invariants(c in case()) {
        let reg = reg_for_props().lock().unwrap().clone();
        let strided = PolicySpec::new("strided")
            .with("sinks", ParamValue::Int(c.sinks as i64))
            .with("stride", ParamValue::Int(c.stride as i64))
            .with("recent", ParamValue::Int(c.recent as i64));
        let specs = [PolicySpec::new("keynorm"), strided, PolicySpec::new("panicky"), "hostile:mode=ok".parse().unwrap()];
        for spec in &specs {
            let (after, log, news) = run(&reg, spec, &c);
            let mut seen = 0usize;
            let mut prev: Vec<u64> = Vec::new();
            let mut over_budget_steps = 0;
            for (step, live) in after.iter().enumerate() {
                if prev.len() + c.chunks[step] > c.cap {
                    over_budget_steps += 1;
                }
                seen += c.chunks[step];
                prop_assert_eq!(live.len(), seen.min(c.cap), "{}: live size at step {}", spec, step);
                let mut u = live.clone();
                u.dedup();
                prop_assert_eq!(u.len(), live.len(), "{}: duplicate positions", spec);
                for p in live {
                    prop_assert!(prev.contains(p) || news[step].contains(p), "{}: position {} came from nowhere", spec, p);
                }
                prev = live.clone();
            }
            // None of these asks for every step: called exactly when over budget.
            prop_assert_eq!(log.len(), over_budget_steps, "{}: calls", spec);
            let (again, _, _) = run(&reg, spec, &c);
            prop_assert_eq!(&after, &again, "{} is not deterministic", spec);

            // Each plugin's own rule, on the steps where it was called.
            let called: Vec<usize> = {
                let mut prev_len = 0;
                let mut v = Vec::new();
                for (step, live) in after.iter().enumerate() {
                    if prev_len + c.chunks[step] > c.cap { v.push(step); }
                    prev_len = live.len();
                }
                v
            };
            for (call, &step) in log.iter().zip(&called) {
                let live_pos: Vec<u64> = call.live.iter().map(|x| x.0).collect();
                let want = match spec.name.as_str() {
                    "keynorm" => keynorm_survivors(call, c.cap),
                    "strided" => strided_survivors(&live_pos, call.tokens_seen, c.cap,
                        (c.sinks as u64, c.stride as u64, c.recent as u64)),
                    // both are window policies: the newest C
                    _ => { let mut p = live_pos.clone(); p.sort(); p.split_off(p.len() - c.cap) }
                };
                prop_assert_eq!(&after[step], &want, "{} at step {} broke its rule", spec, step);
            }
        }
    }

    /// keynorm and strided against their rules on arbitrary observations: dead slots with any
    /// positions, ties in the norms, budgets below and above the live count.
    #[test]
    fn plugin_rules_hold_on_arbitrary_observations(
        n in 1usize..=12,
        kv in 1usize..=3,
        live_bits in any::<u16>(),
        pos_seed in any::<u64>(),
        norm_picks in prop::collection::vec(0usize..4, 36),
        budget in 0usize..=13,
        extra_seen in 0u64..3,
        (sinks, stride, recent) in (0u64..=3, 1u64..=4, 0u64..=3),
    ) {
        let reg = reg_for_props().lock().unwrap().clone();
        // Distinct positions: a seeded shuffle of 0..2n.
        let mut all: Vec<u64> = (0..2 * n as u64).collect();
        Rng::new(pos_seed).shuffle(&mut all);
        let positions: Vec<u64> = all[..n].to_vec();
        let live: Vec<bool> = (0..n).map(|s| live_bits >> s & 1 == 1).collect();
        let norms: Vec<f32> = (0..kv * n).map(|i| [0.5f32, 1.0, 2.0, 3.0][norm_picks[i]]).collect();
        let tokens_seen = positions.iter().max().unwrap() + 1 + extra_seen;
        let obs = Observation {
            layer: 0, tokens_seen, num_slots: n, positions: &positions, live: &live, new_slots: &[],
            num_heads: kv, num_kv_heads: kv, head_dim: 0, rows: 0, probs: &[], key_norms: &norms, keys: &[],
            head_capacity: 0,
        };
        let live_pos: Vec<(usize, u64)> = (0..n).filter(|&s| live[s]).map(|s| (s, positions[s])).collect();
        let slots_of = |keep: &[u64]| -> Vec<usize> {
            let mut e: Vec<usize> = live_pos.iter().filter(|(_, p)| !keep.contains(p)).map(|(s, _)| *s).collect();
            e.sort();
            e
        };
        let c = ctx(kv, kv, Capacity::Bounded(budget.max(1)));
        let mut keynorm = reg.create(&PolicySpec::new("keynorm"), &c).unwrap();
        let spec = PolicySpec::new("strided")
            .with("sinks", ParamValue::Int(sinks as i64))
            .with("stride", ParamValue::Int(stride as i64))
            .with("recent", ParamValue::Int(recent as i64));
        let mut strided = reg.create(&spec, &c).unwrap();
        let call = Call {
            tokens_seen,
            live: live_pos.iter().map(|&(s, p)| (p, (0..kv).map(|h| norms[h * n + s] as f64).sum::<f64>() / kv as f64)).collect(),
        };
        let lp: Vec<u64> = live_pos.iter().map(|x| x.1).collect();
        for (policy, keep) in [
            (&mut keynorm, keynorm_survivors(&call, budget)),
            (&mut strided, strided_survivors(&lp, tokens_seen, budget, (sinks, stride, recent))),
        ] {
            let got = policy.step(&obs, budget).unwrap_or_else(|e| panic!("{e}"));
            let want = slots_of(&keep);
            let got = match got {
                Decision::Keep => vec![],
                Decision::Evict(mut s) => { s.sort(); s }
            };
            prop_assert_eq!(got, want, "{} on {:?} with budget {}", policy.name(), obs, budget);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The real plugins
// ---------------------------------------------------------------------------------------------

#[test]
fn real_plugins_load_next_to_the_builtins_and_list_with_their_source() {
    let b = built();
    let reg = registry();
    for (name, path) in [("keynorm", &b.keynorm), ("strided", &b.strided)] {
        let e = reg.get(name).unwrap();
        let abs = std::fs::canonicalize(path).unwrap().display().to_string();
        assert_eq!(e.source, Source::Plugin(abs.clone()), "{name}");
        assert!(!e.description.is_empty());
        println!("{:10} {:60} {}", e.name, e.description, e.source);
    }
    // Built-ins are still there.
    assert_eq!(reg.get("window").unwrap().source, Source::Builtin);
    let strided = reg.get("strided").unwrap();
    let names: Vec<&str> = strided.params.iter().map(|p| &*p.name).collect();
    assert_eq!(names, ["sinks", "stride", "recent"]);
    assert_eq!(strided.params[1].default, "8");
    let keynorm: Vec<&str> = reg.get("keynorm").unwrap().params.iter().map(|p| &*p.name).collect();
    assert_eq!(keynorm, ["per_head"]);
}

/// Hand-computed through the real attend: one KV head, keys of norms 3, 1, 2, 5, 0.5 in one chunk,
/// C = 3: keynorm keeps the three smallest norms, positions 1, 2 and 4. Then a tie: two more keys of
/// norm 2 and 1: the means are 1 (pos 1), 2 (pos 2), 0.5 (pos 4), 2 (pos 5), 1 (pos 6) -> evict the
/// largest, 2, and of the tie at 2 the older (pos 2) goes first, then pos 5: keeps 1, 4, 6.
#[test]
fn keynorm_on_a_hand_computed_case() {
    let reg = registry();
    let dev = Device::Cpu;
    let cap = Capacity::Bounded(3);
    let mut p = reg.create(&PolicySpec::new("keynorm"), &ctx(1, 1, cap)).unwrap();
    assert_eq!(p.needs(), Needs { key_norms: true, ..Needs::default() });
    let mut layer = LayerState::new(1, 2, DType::F32, &dev, cap, None, 5).unwrap();
    let k = Tensor::new(&[[[3f32, 0.], [0., 1.], [0., -2.], [3., 4.], [0.3, 0.4]]], &dev).unwrap();
    let q = Tensor::ones((1, 5, 2), DType::F32, &dev).unwrap();
    attend(&q, &k, &k, &[0, 1, 2, 3, 4], &mut layer, p.as_mut(), 1.0).unwrap();
    assert_eq!(layer.live_positions(), vec![1, 2, 4]);
    let k = Tensor::new(&[[[2f32, 0.], [0., 1.]]], &dev).unwrap();
    let q = Tensor::ones((1, 2, 2), DType::F32, &dev).unwrap();
    attend(&q, &k, &k, &[5, 6], &mut layer, p.as_mut(), 1.0).unwrap();
    assert_eq!(layer.live_positions(), vec![1, 4, 6]);
}

/// Hand-computed: sinks = 2, stride = 4, recent = 1, C = 6, tokens one at a time. Off-grid entries
/// go first (oldest first), then grid points. After 17 tokens: sinks 0 and 1, grid points 4..=16 and
/// the newest, 16; after 20: the three newest grid points 8, 12, 16 and the newest token 19 (grid
/// point 4 went at token 17, when no off-grid entry was left to go).
#[test]
fn strided_on_a_hand_computed_case() {
    let reg = registry();
    let cap = Capacity::Bounded(6);
    let spec: PolicySpec = "strided:sinks=2,stride=4,recent=1".parse().unwrap();
    let mut p = reg.create(&spec, &ctx(2, 1, cap)).unwrap();
    assert_eq!(p.needs(), Needs::default());
    let mut f = Feeder::new(2, 1, cap, 7);
    for _ in 0..17 {
        f.feed(1, p.as_mut()).1.unwrap();
    }
    assert_eq!(f.live(), vec![0, 1, 4, 8, 12, 16]);
    for _ in 0..3 {
        f.feed(1, p.as_mut()).1.unwrap();
    }
    assert_eq!(f.live(), vec![0, 1, 8, 12, 16, 19]);
    // A chunk of 4 (20..=23): 23 is the newest, 20 a grid point; 19, 21 and 22 go, then the oldest
    // grid point, 8.
    f.feed(4, p.as_mut()).1.unwrap();
    assert_eq!(f.live(), vec![0, 1, 12, 16, 20, 23]);
}

/// The minimal C plugin in docs/plugins.md compiles, loads and is the window policy it claims.
#[test]
fn the_c_example_in_the_docs_works() {
    let b = built();
    let doc = std::fs::read_to_string(root().join("docs/plugins.md")).unwrap();
    let block = doc
        .split("```c\n")
        .skip(1)
        .map(|b| b.split("```").next().unwrap())
        .find(|b| b.contains("\"c-window\""))
        .expect("docs/plugins.md lost its C example");
    let src = b.c_dir.join(format!("c_window_{}.c", std::process::id()));
    std::fs::write(&src, block).unwrap();
    let lib = dylib(&b.c_dir, &format!("c_window_{}", std::process::id()));
    compile_c(&src, &lib, &[]);
    let mut reg = msrnn_policies::registry();
    reg.load_plugin(&lib).unwrap();
    let e = reg.create(&"c-window:x=1".parse().unwrap(), &ctx(1, 1, Capacity::Bounded(3))).err().unwrap();
    assert!(e.to_string().contains("takes no parameters, got `x=1`"), "{e}");
    let mut p = reg.create(&PolicySpec::new("c-window"), &ctx(1, 1, Capacity::Bounded(3))).unwrap();
    let mut f = Feeder::new(1, 1, Capacity::Bounded(3), 2);
    for chunk in [2, 3, 1, 4] {
        f.feed(chunk, p.as_mut()).1.unwrap();
        let n = f.next;
        assert_eq!(f.live(), (n.saturating_sub(3)..n).collect::<Vec<u64>>());
    }
}

// ---------------------------------------------------------------------------------------------
// Hostile plugins: loading
// ---------------------------------------------------------------------------------------------

/// Loads `path` into a registry with the built-ins, expects an `Error::Plugin` naming the path and
/// containing `needle`, and checks the registry is unchanged. Returns the message.
fn load_fails(path: &Path, needle: &str) -> String {
    let mut reg = msrnn_policies::registry();
    let before: Vec<String> = reg.entries().map(|e| e.name.clone()).collect();
    let e = reg.load_plugin(path).unwrap_err();
    let msg = e.to_string();
    println!("{msg}");
    assert!(matches!(e, Error::Plugin { .. }), "{e:?}");
    let file = path.file_name().unwrap().to_str().unwrap();
    assert!(msg.starts_with("plugin ") && msg.contains(file), "does not name the plugin: {msg}");
    assert!(msg.contains(needle), "expected `{needle}` in: {msg}");
    let after: Vec<String> = reg.entries().map(|e| e.name.clone()).collect();
    assert_eq!(before, after, "a failed load changed the registry");
    msg
}

#[test]
fn a_wrong_abi_version_is_refused() {
    let needle = format!("built for plugin ABI version 999, but this msrnn loads versions 2 to {ABI_VERSION}");
    load_fails(&built().wrong_version, &needle);
}

/// A library declaring ABI version 2 (before `head_capacity`) still loads and runs, shared.
#[test]
fn a_version_2_library_still_loads_and_runs() {
    let mut reg = msrnn_policies::registry();
    reg.load_plugin(&built().version_2).unwrap();
    let cap = Capacity::Bounded(3);
    let mut p = reg.create(&"hostile:mode=ok".parse().unwrap(), &ctx(2, 1, cap)).unwrap();
    assert_eq!(p.head_capacity(), None);
    let mut f = Feeder::new(2, 1, cap, 4);
    for t in [2, 2, 1, 3] {
        f.feed(t, p.as_mut()).1.unwrap();
    }
    assert_eq!(f.layer.live_count(), 3);
}

#[test]
fn a_missing_entry_symbol_is_refused() {
    load_fails(&built().no_symbol, "does not export `msrnn_policy_plugin`");
}

#[test]
fn a_file_that_is_not_a_library_is_refused() {
    let dir = &built().c_dir;
    let text = dir.join(format!("not-a-library-{}.so", std::process::id()));
    std::fs::write(&text, "this is not an ELF file\n").unwrap();
    load_fails(&text, "cannot be loaded as a shared library");
    let empty = dir.join(format!("empty-{}.so", std::process::id()));
    std::fs::write(&empty, "").unwrap();
    load_fails(&empty, "cannot be loaded as a shared library");
    load_fails(&dir.join("no-such-plugin.so"), "cannot open it");
    load_fails(dir, "not a file");
}

#[test]
fn a_broken_descriptor_is_refused() {
    let b = built();
    load_fails(&b.null_descriptor, "returned NULL instead of a descriptor");
    load_fails(&b.null_compress, "policy `hostile` has no `compress` function");
    load_fails(&b.bad_name, "its policy name `bad name:x` is not 1 to 64 of [A-Za-z0-9_+.-]");
    load_fails(&b.bad_alias, "its alias `bad alias` is not 1 to 64 of [A-Za-z0-9_+.-]");
}

#[test]
fn a_name_clash_needs_an_override() {
    let b = built();
    // With a built-in: pretend `keynorm` were built in.
    let mut reg = msrnn_policies::registry();
    let f: msrnn_core::Factory = Arc::new(|_, _, _| Err(Error::Input("the fake built-in".into())));
    reg.insert(Entry::new("keynorm", "a fake built-in", Some(vec![]), Source::Builtin, f), false).unwrap();
    let e = reg.load_plugin(&b.keynorm).unwrap_err().to_string();
    println!("{e}");
    assert!(e.contains("its policy `keynorm` clashes with `keynorm` (built-in)"), "{e}");
    assert_eq!(reg.get("keynorm").unwrap().source, Source::Builtin);
    reg.load_plugin_overriding(&b.keynorm).unwrap();
    assert!(matches!(reg.get("keynorm").unwrap().source, Source::Plugin(_)));
    assert!(reg.create(&PolicySpec::new("keynorm"), &ctx(1, 1, Capacity::Bounded(4))).is_ok());
    // With itself, loaded twice.
    let e = reg.load_plugin(&b.keynorm).unwrap_err().to_string();
    println!("{e}");
    assert!(e.contains("clashes with `keynorm` (plugin /"), "{e}");
    // A plugin cannot shadow a real built-in by accident either: registering `window` from a plugin.
    let mut reg = msrnn_policies::registry();
    let plugin = msrnn_core::Plugin::open(&b.strided).unwrap();
    let f: msrnn_core::Factory = Arc::new(move |p, c, _| plugin.instantiate(p, c));
    let e = reg.insert(Entry::new("window", "", None, Source::Plugin("x".into()), f), false).unwrap_err();
    assert!(e.to_string().contains("already taken"), "{e}");
}

#[test]
fn plugin_parameters_are_checked() {
    let reg = registry();
    let c = ctx(2, 1, Capacity::Bounded(4));
    let cases = [
        ("keynorm:x=1", "unknown parameter `x` (known: per_head)"),
        ("strided:bogus=1", "unknown parameter `bogus` (known: sinks, stride, recent)"),
        ("strided:stride=0", "`stride` must be at least 1"),
        ("strided:sinks=-1", "`sinks` must be a non-negative integer, got `-1`"),
        // No schema declared: the key reaches the plugin, which refuses it itself.
        ("hostile:bogus=1", "only `mode` is accepted, got `bogus=1`"),
        ("hostile:mode=nonsense", "unknown mode `nonsense`"),
        ("hostile:mode=refuse", "refusing on purpose"),
        ("hostile:mode=bad_rows", "asked for rows = 7"),
        ("panicky:panic_in_create=1", "panicked: told to panic in create"),
        ("panicky:panic_at=x", "`panic_at` must be a non-negative integer, got `x`"),
    ];
    for (spec, needle) in cases {
        let e =
            reg.create(&spec.parse().unwrap(), &c).err().unwrap_or_else(|| panic!("{spec} was accepted")).to_string();
        println!("{spec}: {e}");
        assert!(e.contains(needle), "{spec}: expected `{needle}` in: {e}");
    }
    assert!(reg.create(&"strided:sinks=0,stride=3,recent=2".parse().unwrap(), &c).is_ok());
}

// ---------------------------------------------------------------------------------------------
// Hostile plugins: decisions
// ---------------------------------------------------------------------------------------------

/// Fills a C = 4 layer with `hostile:mode=MODE` (4 tokens, within budget), then feeds `chunk` more:
/// the step must fail with an error naming the plugin and containing `needle`, evict nothing (the
/// new tokens stay written, nothing already there is lost), and leave the process alive.
fn hostile_step(mode: &str, chunk: usize, needle: &str) -> Error {
    let b = built();
    let reg = registry();
    let cap = Capacity::Bounded(4);
    let mut p = reg.create(&format!("hostile:mode={mode}").parse().unwrap(), &ctx(2, 1, cap)).unwrap();
    let mut f = Feeder::new(2, 1, cap, 11);
    if mode != "evict_within" {
        for _ in 0..4 {
            f.feed(1, p.as_mut()).1.unwrap();
        }
    }
    let before = f.live();
    let (new, r) = f.feed(chunk, p.as_mut());
    let e = r.expect_err("the bad decision was accepted");
    let msg = e.to_string();
    println!("{mode}: {msg}");
    let path = std::fs::canonicalize(&b.hostile).unwrap().display().to_string();
    assert!(msg.contains("`hostile`") && msg.contains(&path), "does not name the plugin: {msg}");
    assert!(msg.contains(needle), "expected `{needle}` in: {msg}");
    assert!(msg.ends_with("(state left untouched)"), "{msg}");
    let mut want: Vec<u64> = before.iter().chain(&new).copied().collect();
    want.sort();
    assert_eq!(f.live(), want, "the state changed");
    e
}

#[test]
fn an_out_of_range_slot_is_refused() {
    let e = hostile_step("out_of_range", 1, "is out of range (the layer has 5 slots)");
    assert!(matches!(e, Error::InvalidDecision { layer: 0, .. }), "{e:?}");
}

#[test]
fn a_duplicate_slot_is_refused() {
    let e = hostile_step("duplicate", 2, "is listed twice");
    assert!(matches!(e, Error::InvalidDecision { .. }), "{e:?}");
}

#[test]
fn too_few_slots_are_refused() {
    hostile_step("too_few", 2, "evicted 1 slots, but 6 are live with a budget of 4, so exactly 2 must go");
}

#[test]
fn too_many_slots_are_refused() {
    hostile_step("too_many", 1, "evicted 2 slots, but 5 are live with a budget of 4, so exactly 1 must go");
}

#[test]
fn a_decision_larger_than_the_buffer_is_refused() {
    hostile_step("overflow", 1, "reported 10 slots to evict, more than the 5 live slots its buffer holds");
}

#[test]
fn eviction_within_budget_is_refused() {
    hostile_step("evict_within", 1, "evicted 1 slots, but 1 are live with a budget of 4, so exactly 0 must go");
}

#[test]
fn a_reported_failure_names_the_plugin_and_its_message() {
    let e = hostile_step("fail", 1, "failed: told to fail (5 live, budget 4)");
    assert!(matches!(e, Error::PolicyFailed { layer: 0, .. }), "{e:?}");
    hostile_step("weird_code", 1, "returned the unknown code 42: (no message)");
}

/// A free slot needs a hole in the slot buffer: built on a synthetic observation, through the same
/// host wrapper.
#[test]
fn a_dead_slot_is_refused() {
    let reg = registry();
    let mut p = reg.create(&"hostile:mode=dead".parse().unwrap(), &ctx(1, 1, Capacity::Bounded(2))).unwrap();
    let positions = [0u64, 1, 2, 3];
    let live = [true, false, true, true];
    let obs = Observation {
        layer: 3,
        tokens_seen: 4,
        num_slots: 4,
        positions: &positions,
        live: &live,
        new_slots: &[3],
        num_heads: 1,
        num_kv_heads: 1,
        head_dim: HEAD_DIM,
        rows: 0,
        probs: &[],
        key_norms: &[],
        keys: &[],
        head_capacity: 0,
    };
    let e = p.step(&obs, 2).unwrap_err();
    assert!(matches!(e, msrnn_core::policy::Error::Decision(_)), "{e:?}");
    let e = Error::from_policy(e, p.name(), obs.layer);
    println!("dead: {e}");
    assert!(matches!(e, Error::InvalidDecision { layer: 3, .. }), "{e:?}");
    assert!(e.to_string().contains("answered evict slots [1]: slot 1 is not live"), "{e}");
}

#[test]
fn a_panicking_plugin_is_an_error_and_the_process_survives() {
    let b = built();
    let reg = registry();
    let path = std::fs::canonicalize(&b.panicky).unwrap().display().to_string();
    let cap = Capacity::Bounded(3);
    let mut p = reg.create(&"panicky:panic_at=2".parse().unwrap(), &ctx(2, 2, cap)).unwrap();
    let mut f = Feeder::new(2, 2, cap, 5);
    for _ in 0..4 {
        f.feed(1, p.as_mut()).1.unwrap(); // the 4th token is call 1: fine
    }
    assert_eq!(f.live(), vec![1, 2, 3]);
    // Call 2 panics inside the plugin: an error, nothing evicted.
    let (_, r) = f.feed(1, p.as_mut());
    let e = r.unwrap_err();
    println!("{e}");
    assert!(matches!(e, Error::PolicyFailed { .. }), "{e:?}");
    assert!(e.to_string().contains(&format!("plugin {path} panicked: told to panic on call 2")), "{e}");
    assert_eq!(f.live(), vec![1, 2, 3, 4]);
    // The instance is poisoned until reset.
    let (_, r) = f.feed(1, p.as_mut());
    let e = r.unwrap_err().to_string();
    println!("{e}");
    assert!(
        e.contains("refuses to step: it panicked earlier (told to panic on call 2) and was not reset since"),
        "{e}"
    );
    assert_eq!(f.live(), vec![1, 2, 3, 4, 5]);
    // After a reset it works again (its call counter restarts, so call 2 panics again: feed to call 1).
    f.layer.clear();
    p.reset();
    for _ in 0..4 {
        f.feed(1, p.as_mut()).1.unwrap();
    }
    assert_eq!(f.live().len(), 3);

    // An error returned (not panicked) from Rust, and a decision too big for the buffer.
    let mut p = reg.create(&"panicky:fail_at=1".parse().unwrap(), &ctx(2, 2, cap)).unwrap();
    let mut f = Feeder::new(2, 2, cap, 5);
    for _ in 0..3 {
        f.feed(1, p.as_mut()).1.unwrap();
    }
    let e = f.feed(1, p.as_mut()).1.unwrap_err().to_string();
    println!("{e}");
    assert!(e.contains(&format!("plugin {path} failed: told to fail on call 1")), "{e}");
    let mut p = reg.create(&"panicky:too_many_at=1".parse().unwrap(), &ctx(2, 2, cap)).unwrap();
    let mut f = Feeder::new(2, 2, cap, 5);
    for _ in 0..3 {
        f.feed(1, p.as_mut()).1.unwrap();
    }
    let e = f.feed(1, p.as_mut()).1.unwrap_err().to_string();
    println!("{e}");
    assert!(e.contains("rejected the call: decided to evict 7 slots, but only 4 are live"), "{e}");
    assert_eq!(f.live(), vec![0, 1, 2, 3]);
}

#[test]
fn plugin_bookkeeping_saves_and_restores() {
    let reg = registry();
    let cap = Capacity::Bounded(2);
    let c = ctx(1, 1, cap);
    let spec: PolicySpec = "panicky:panic_at=3".parse().unwrap();
    let mut p = reg.create(&spec, &c).unwrap();
    let mut f = Feeder::new(1, 1, cap, 3);
    for _ in 0..4 {
        f.feed(1, p.as_mut()).1.unwrap(); // calls 1 and 2
    }
    assert_eq!(p.save_state(), vec![2.0]);
    // A fresh instance restored from it panics on its next call (call 3), as the original would.
    let mut q = reg.create(&spec, &c).unwrap();
    q.load_state(&[2.0]).unwrap();
    let e = f.feed(1, q.as_mut()).1.unwrap_err().to_string();
    assert!(e.contains("told to panic on call 3"), "{e}");
    let e = q.load_state(&[-1.0]).unwrap_err().to_string();
    println!("{e}");
    assert!(e.contains("failed restoring its state: expected one call count, got [-1.0]"), "{e}");
    // A plugin without save/load functions: nothing to save, and state for it is refused.
    let mut s = reg.create(&PolicySpec::new("strided"), &c).unwrap();
    assert!(s.save_state().is_empty());
    s.load_state(&[]).unwrap();
    let e = s.load_state(&[1.0]).unwrap_err().to_string();
    println!("{e}");
    assert!(e.contains("keeps no state but the file has 1 values"), "{e}");
    // keynorm (Rust, stateless): the default refuses values too.
    let mut k = reg.create(&PolicySpec::new("keynorm"), &c).unwrap();
    assert!(k.save_state().is_empty());
    assert!(k.load_state(&[1.0]).unwrap_err().to_string().contains("keeps no state, but 1 values were given"));
}

// ---------------------------------------------------------------------------------------------
// Lifetime, environment, search paths
// ---------------------------------------------------------------------------------------------

fn mapped(path: &str) -> bool {
    std::fs::read_to_string("/proc/self/maps").unwrap().contains(path)
}

/// Policies keep their library loaded after the registry and every `Plugin` handle are gone (and
/// after the file itself is deleted); the last one to go unloads it.
#[test]
fn the_library_outlives_the_registry() {
    let b = built();
    let copy = b.c_dir.join(format!("strided-lifetime-{}.so", std::process::id()));
    let tmp = copy.with_extension("tmp");
    std::fs::copy(&b.strided, &tmp).unwrap();
    std::fs::rename(&tmp, &copy).unwrap();
    let abs = std::fs::canonicalize(&copy).unwrap().display().to_string();
    let mut reg = PolicyRegistry::new();
    reg.load_plugin(&copy).unwrap();
    let cap = Capacity::Bounded(5);
    let mut policies = reg.create_layers(&"strided:sinks=1,stride=2".parse().unwrap(), 2, 2, 1, HEAD_DIM, cap).unwrap();
    drop(reg);
    std::fs::remove_file(&copy).unwrap();
    let linux = cfg!(target_os = "linux");
    if linux {
        assert!(mapped(&abs), "the plugin is not mapped while its policies live");
    }
    for (i, p) in policies.iter_mut().enumerate() {
        let mut f = Feeder::new(2, 1, cap, i as u64);
        for n in 1..=30u64 {
            f.feed(1, p.as_mut()).1.unwrap();
            assert_eq!(f.live().len() as u64, n.min(5));
        }
    }
    drop(policies);
    if linux {
        assert!(!mapped(&abs), "the plugin stayed loaded after its last policy went");
    }
}

/// Runs this test binary again on one `#[ignore]`d test, with `envs`, in `cwd`.
fn child(test: &str, envs: &[(&str, OsString)], cwd: &Path) -> String {
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.args(["--exact", test, "--ignored", "--nocapture", "--test-threads=1"]).current_dir(cwd);
    cmd.env("MSRNN_PLUGIN_TEST_CHILD", test);
    for (k, v) in envs {
        cmd.env(k, v);
    }
    let o = cmd.output().unwrap();
    let out = format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    assert!(o.status.success(), "child {test} failed:\n{out}");
    assert!(out.contains("1 passed"), "child {test} ran nothing:\n{out}");
    out
}

fn is_child(test: &str) -> bool {
    std::env::var("MSRNN_PLUGIN_TEST_CHILD").as_deref() == Ok(test)
}

#[test]
fn plugins_load_from_the_msrnn_plugins_variable() {
    let b = built();
    let list = std::env::join_paths([b.keynorm.as_os_str(), "".as_ref(), b.strided.as_os_str()]).unwrap();
    let out = child("child_loads_plugins_from_env", &[("MSRNN_PLUGINS", list)], &root());
    assert!(out.contains("CHILD-OK keynorm,strided"), "{out}");
}

#[test]
#[ignore = "run as a child process by plugins_load_from_the_msrnn_plugins_variable"]
fn child_loads_plugins_from_env() {
    if !is_child("child_loads_plugins_from_env") {
        return;
    }
    assert!(std::env::var_os(msrnn_core::PLUGINS_ENV).is_some());
    let mut reg = msrnn_policies::registry();
    let loaded = reg.load_plugins_from_env().unwrap();
    let names: Vec<&str> = loaded.iter().map(|p| p.name()).collect();
    assert!(matches!(reg.get("strided").unwrap().source, Source::Plugin(_)));
    println!("CHILD-OK {}", names.join(","));
}

/// A bare file name is not looked up on the library search path (nor anywhere but the current
/// directory): with the plugin's directory on `LD_LIBRARY_PATH`, a plain `dlopen` finds it, but
/// `load_plugin` and `MSRNN_PLUGINS` do not.
#[cfg(target_os = "linux")]
#[test]
fn no_plugin_is_loaded_from_a_path_the_user_did_not_name() {
    let b = built();
    let empty = b.c_dir.join(format!("empty-dir-{}", std::process::id()));
    std::fs::create_dir_all(&empty).unwrap();
    let name = b.keynorm.file_name().unwrap().to_os_string();
    let out = child(
        "child_does_not_search",
        &[("LD_LIBRARY_PATH", b.profile_dir.clone().into_os_string()), ("MSRNN_PLUGINS", name)],
        &empty,
    );
    assert!(out.contains("CHILD-OK"), "{out}");
    println!("{out}");
}

#[cfg(target_os = "linux")]
#[test]
#[ignore = "run as a child process by no_plugin_is_loaded_from_a_path_the_user_did_not_name"]
fn child_does_not_search() {
    if !is_child("child_does_not_search") {
        return;
    }
    let name = std::env::var("MSRNN_PLUGINS").unwrap();
    // Control: the search path would find it.
    assert!(unsafe { libloading::Library::new(&name) }.is_ok(), "the control dlopen failed");
    let mut reg = PolicyRegistry::new();
    let e = reg.load_plugin(&name).unwrap_err().to_string();
    assert!(e.contains("cannot open it"), "{e}");
    let e2 = reg.load_plugins_from_env().unwrap_err().to_string();
    assert!(e2.contains("cannot open it"), "{e2}");
    assert_eq!(reg.entries().count(), 0);
    println!("CHILD-OK {e}");
}

/// Unbounded capacity reaches the plugin as "no capacity" and it is never asked to evict.
#[test]
fn plugins_under_unbounded_capacity_never_evict() {
    let reg = registry();
    let mut p = reg.create(&PolicySpec::new("keynorm"), &ctx(2, 1, Capacity::Unbounded)).unwrap();
    let mut f = Feeder::new(2, 1, Capacity::Unbounded, 1);
    for _ in 0..20 {
        f.feed(3, p.as_mut()).1.unwrap();
    }
    assert_eq!(f.live().len(), 60);
}

// ---------------------------------------------------------------------------------------------
// ABI version 2: keys and the head size, per-layer capacities, aliases
// ---------------------------------------------------------------------------------------------

/// Keys cross the C layout as stored, with the head size the context promised: the C fixture checks
/// every live key against its key norm, the Rust one checks the shape; both then act as a window.
#[test]
fn keys_reach_plugins_in_c_and_rust() {
    let reg = registry();
    let cap = Capacity::Bounded(3);
    for spec in ["hostile:mode=keys", "panicky:keys=1"] {
        let mut p = reg.create(&spec.parse().unwrap(), &ctx(4, 2, cap)).unwrap();
        assert!(p.needs().keys, "{spec}");
        let mut f = Feeder::new(4, 2, cap, 9);
        for chunk in [2, 1, 3, 1, 4] {
            f.feed(chunk, p.as_mut()).1.unwrap_or_else(|e| panic!("{spec}: {e}"));
            let n = f.next;
            assert_eq!(f.live(), (n.saturating_sub(3)..n).collect::<Vec<u64>>(), "{spec}");
        }
    }
    // A head size other than the context's is caught by the plugin.
    let mut p = reg.create(&"panicky:keys=1".parse().unwrap(), &ctx(4, 2, cap)).unwrap();
    let mut layer = LayerState::new(2, 2, DType::F32, &Device::Cpu, cap, None, 4).unwrap();
    let q = Tensor::ones((4, 4, 2), DType::F32, &Device::Cpu).unwrap();
    let k = Tensor::ones((2, 4, 2), DType::F32, &Device::Cpu).unwrap();
    let e = attend(&q, &k, &k, &[0, 1, 2, 3], &mut layer, p.as_mut(), 1.0).unwrap_err().to_string();
    assert!(e.contains("expected 32 key values of head size 4, got 16 of head size 2"), "{e}");
}

fn state_config(layers: usize, capacity: Capacity) -> StateConfig {
    StateConfig { max_chunk: 4, ..StateConfig::new(layers, 1, HEAD_DIM, capacity) }
}

/// A plugin instance may ask for its own layer's capacity (C through `msrnn_needs.capacity`, Rust
/// through `Policy::capacity`); the state sizes the layer by it and refuses a total above layers x C.
#[test]
fn plugins_ask_for_per_layer_capacities() {
    let reg = registry();
    let cap = Capacity::Bounded(6);
    let policies = reg.create_layers(&"hostile:mode=half".parse().unwrap(), 3, 2, 1, HEAD_DIM, cap).unwrap();
    assert!(policies.iter().all(|p| p.capacity() == Some(3)));
    let mut state = MsrnnState::new(&state_config(3, cap), policies).unwrap();
    assert!((0..3).all(|i| state.layer(i).capacity() == Capacity::Bounded(3)));
    let dev = Device::Cpu;
    for t in 0..10u64 {
        let q = Tensor::ones((2, 1, HEAD_DIM), DType::F32, &dev).unwrap();
        let k = Tensor::ones((1, 1, HEAD_DIM), DType::F32, &dev).unwrap();
        for i in 0..3 {
            state.attend(i, &q, &k, &k, &[t], 0.5).unwrap();
        }
        state.advance(1);
    }
    assert_eq!(state.layer(2).live_positions(), vec![7, 8, 9], "the layer keeps the 3 it asked for");

    let policies = reg.create_layers(&"hostile:mode=greedy".parse().unwrap(), 3, 2, 1, HEAD_DIM, cap).unwrap();
    let e = MsrnnState::new(&state_config(3, cap), policies).err().unwrap().to_string();
    assert!(
        e.contains("policy `hostile` asks for 21 tokens over 3 layers ([7, 7, 7]), more than layers x C = 3 x 6 = 18"),
        "{e}"
    );

    // The Rust glue passes it too; under an unbounded run a request is refused.
    let policies = reg.create_layers(&"panicky:capacity=12".parse().unwrap(), 1, 2, 1, HEAD_DIM, cap).unwrap();
    let e = MsrnnState::new(&state_config(1, cap), policies).err().unwrap().to_string();
    assert!(e.contains("asks for 12 tokens over 1 layers ([12]), more than layers x C = 1 x 6 = 6"), "{e}");
    let policies = reg.create_layers(&"panicky:capacity=2".parse().unwrap(), 1, 2, 1, HEAD_DIM, cap).unwrap();
    let state = MsrnnState::new(&state_config(1, cap), policies).unwrap();
    assert_eq!(state.layer(0).capacity(), Capacity::Bounded(2));
    let policies =
        reg.create_layers(&"panicky:capacity=2".parse().unwrap(), 1, 2, 1, HEAD_DIM, Capacity::Unbounded).unwrap();
    let e = MsrnnState::new(&state_config(1, Capacity::Unbounded), policies).err().unwrap().to_string();
    assert!(e.contains("asks for 2 tokens on layer 0, but the run is unbounded"), "{e}");
}

/// Aliases declared by a plugin (C descriptor or Rust `ALIASES`) select it like its name, list with
/// it, and clash like names do.
#[test]
fn plugin_aliases_select_the_policy() {
    let reg = registry();
    assert_eq!(reg.get("hostile-c").unwrap().name, "hostile");
    assert_eq!(reg.get("panicky-window").unwrap().name, "panicky");
    assert_eq!(reg.get("hostile").unwrap().aliases, ["hostile-c"]);
    let p = reg.create(&"panicky-window:panic_at=9".parse().unwrap(), &ctx(1, 1, Capacity::Bounded(2))).unwrap();
    assert_eq!(p.name(), "panicky");
    let mut again = PolicyRegistry::new();
    let f: msrnn_core::Factory = Arc::new(|_, _, _| Err(Error::Input("unused".into())));
    again.insert(Entry::new("hostile-c", "", None, Source::Builtin, f), false).unwrap();
    let e = again.load_plugin(&built().hostile).unwrap_err().to_string();
    assert!(e.contains("its policy `hostile-c` clashes with `hostile-c` (built-in)"), "{e}");
}

/// Parameters a Rust plugin leaves out take the defaults it declared; the listing shows them.
#[test]
fn plugin_defaults_come_from_the_declared_schema() {
    let reg = registry();
    let e = reg.get("panicky").unwrap();
    let defaults: Vec<(&str, &str)> = e.params.iter().map(|p| (&*p.name, &*p.default)).collect();
    assert_eq!(defaults[0], ("panic_at", "0"));
    assert_eq!(defaults[5], ("keys", "false"));
    // Nothing given: never panics, asks for no keys and the run's capacity.
    let mut p = reg.create(&PolicySpec::new("panicky"), &ctx(1, 1, Capacity::Bounded(2))).unwrap();
    assert_eq!((p.needs(), p.capacity()), (Needs::default(), None));
    let mut f = Feeder::new(1, 1, Capacity::Bounded(2), 4);
    for _ in 0..8 {
        f.feed(1, p.as_mut()).1.unwrap();
    }
    assert_eq!(f.live(), vec![6, 7]);
}

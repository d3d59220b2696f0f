//! Per-KV-head states and the policies that use them: the rules on hand-computed observations, the
//! state's bookkeeping through the real `attend` (exactness against the shared layer where every
//! head agrees, memory, save/resume, rollback), the errors, and a property test over random
//! per-head decisions.

use candle_core::{DType, Device, Tensor};
use msrnn_core::policy::Result as PolicyResult;
use msrnn_core::{
    attend, Capacity, Context, Decision, Error, LayerState, MsrnnState, Needs, Observation, Policy, PolicySpec,
    StateConfig,
};
use msrnn_tests::Rng;
use proptest::prelude::*;

fn ctx(num_heads: usize, num_kv_heads: usize, c: usize) -> Context {
    Context { layer: 0, num_layers: 1, num_heads, num_kv_heads, head_dim: 2, capacity: Some(c) }
}

fn create(spec: &str, c: &Context) -> Box<dyn Policy> {
    msrnn_policies::registry().create(&spec.parse().unwrap(), c).unwrap()
}

/// A per-head observation: 2 KV heads x 3 slots, 4 query heads (2 per KV head), every entry live
/// at positions 0, 1, 2 in both heads, one row of probabilities.
fn obs<'a>(probs: &'a [f32], keys: &'a [f32], head_capacity: usize) -> Observation<'a> {
    const POS: [u64; 6] = [0, 1, 2, 0, 1, 2];
    const LIVE: [bool; 6] = [true; 6];
    Observation {
        layer: 0,
        tokens_seen: 3,
        num_slots: 3,
        positions: &POS,
        live: &LIVE,
        new_slots: &[2, 5],
        num_heads: 4,
        num_kv_heads: 2,
        head_dim: 2,
        rows: 1,
        probs,
        key_norms: &[],
        keys,
        head_capacity,
    }
}

/// Query heads 0 and 1 read KV head 0: means [0.4, 0.2, 0.4]; heads 2 and 3 read KV head 1: means
/// [0.1, 0.15, 0.75].
const PROBS: [f32; 12] = [0.5, 0.1, 0.4, 0.3, 0.3, 0.4, 0.1, 0.1, 0.8, 0.1, 0.2, 0.7];

#[test]
fn tova_head_evicts_each_heads_own_lowest() {
    let mut p = create("tova-head", &ctx(4, 2, 2));
    assert_eq!(p.head_capacity(), Some(2));
    // Budget 2 per head: head 0 drops slot 1 (0.2), head 1 drops slot 0 (0.1): entries 1 and 3.
    // (`tova` would average all four query heads and drop one position from both heads.)
    assert_eq!(p.step(&obs(&PROBS, &[], 2), 2).unwrap(), Decision::Evict(vec![1, 3]));
    // Budget 1: each head keeps its top one; ties (0.4 at positions 0 and 2) evict the older.
    assert_eq!(p.step(&obs(&PROBS, &[], 1), 1).unwrap(), Decision::Evict(vec![1, 0, 3, 4]));
}

#[test]
fn adakv_shares_the_budget_between_heads_within_floor_and_cap() {
    // C = 2, max_share 1.5: a head may keep 3. The layer's two lowest are both in head 1 (0.1 and
    // 0.15): head 1 keeps one entry, head 0 all three.
    let mut p = create("adakv:max_share=1.5", &ctx(4, 2, 2));
    assert_eq!(p.head_capacity(), Some(3));
    assert_eq!(p.step(&obs(&PROBS, &[], 3), 2).unwrap(), Decision::Evict(vec![3, 4]));
    // A floor of C (floor=1): head 1 may not drop below 2, so the next lowest, head 0's 0.2, goes.
    let mut p = create("adakv:max_share=1.5,floor=1", &ctx(4, 2, 2));
    assert_eq!(p.step(&obs(&PROBS, &[], 3), 2).unwrap(), Decision::Evict(vec![3, 1]));
    // Over its cap a head loses its own lowest first, whatever the other head scores: head 0 holds
    // 3 with a cap of 2 (max_share=1), so its 0.2 goes although head 1's 0.1 is lower.
    let mut p = create("adakv:max_share=1", &ctx(4, 2, 2));
    let live = [true, true, true, true, false, false];
    let o = Observation { live: &live, new_slots: &[2, 3], ..obs(&PROBS, &[], 2) };
    assert_eq!(o.excess(2), 1);
    assert_eq!(p.step(&o, 2).unwrap(), Decision::Evict(vec![1]));
}

#[test]
fn keydiff_head_compares_each_key_with_its_own_heads_anchor() {
    // KV head 0: keys e0, e1 and (1, 0.1), whose direction is closest to the anchor: it goes.
    // KV head 1: e0, e0, e1: the two e0 tie as most similar; the older (position 0) goes.
    let keys = [1.0, 0.0, 0.0, 1.0, 1.0, 0.1, 1.0, 0.0, 1.0, 0.0, 0.0, 1.0];
    let mut p = create("keydiff-head", &ctx(4, 2, 2));
    assert_eq!(p.needs(), Needs { keys: true, ..Needs::default() });
    assert_eq!(p.step(&obs(&[], &keys, 2), 2).unwrap(), Decision::Evict(vec![2, 3]));
}

/// Evicts each head's oldest entries: with every head agreeing, a per-head `window`.
struct OldestPerHead(usize);

impl Policy for OldestPerHead {
    fn name(&self) -> &str {
        "oldest-per-head"
    }
    fn needs(&self) -> Needs {
        Needs::default()
    }
    fn head_capacity(&self) -> Option<usize> {
        Some(self.0)
    }
    fn step(&mut self, obs: &Observation<'_>, budget: usize) -> PolicyResult<Decision> {
        let mut out = Vec::new();
        for h in 0..obs.num_kv_heads {
            let mut mine: Vec<usize> = obs.live_slots().filter(|&e| obs.head_of(e) == h).collect();
            mine.sort_by_key(|&e| obs.positions[e]);
            mine.truncate(obs.head_live_count(h).saturating_sub(budget));
            out.extend(mine);
        }
        Ok(Decision::Evict(out))
    }
}

/// Random head-major q, k, v for `t` tokens.
fn qkv(rng: &mut Rng, heads: usize, kv: usize, t: usize, d: usize) -> (Tensor, Tensor, Tensor) {
    let dev = Device::Cpu;
    let mut x = |h: usize| Tensor::from_vec(rng.vec(h * t * d, -2.0, 2.0), (h, t, d), &dev).unwrap();
    (x(heads), x(kv), x(kv))
}

/// A per-head layer whose heads all keep the same tokens computes exactly what the shared layer
/// computes (bit for bit, over chunks and decode steps), in the same bytes.
#[test]
fn a_per_head_layer_whose_heads_agree_is_the_shared_layer() {
    let (heads, kv, d, c) = (6, 3, 8, 5);
    let dev = Device::Cpu;
    let cap = Capacity::Bounded(c);
    let mut shared = LayerState::new(kv, d, DType::F32, &dev, cap, None, 4).unwrap();
    let mut per = LayerState::per_head(kv, d, DType::F32, &dev, cap, c, None, 4).unwrap();
    assert!(per.is_per_head() && !shared.is_per_head());
    assert_eq!(per.allocated_kv_bytes(), shared.allocated_kv_bytes());
    let mut window = create("window", &ctx(heads, kv, c));
    let mut oldest = OldestPerHead(c);
    let mut rng = Rng::new(7);
    let mut next = 0u64;
    for t in [4, 1, 1, 3, 1, 1, 1, 2, 1, 1] {
        let (q, k, v) = qkv(&mut rng, heads, kv, t, d);
        let pos: Vec<u64> = (next..next + t as u64).collect();
        next += t as u64;
        let a = attend(&q, &k, &v, &pos, &mut shared, window.as_mut(), 0.35).unwrap();
        let b = attend(&q, &k, &v, &pos, &mut per, &mut oldest, 0.35).unwrap();
        assert_eq!(
            a.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            b.flatten_all().unwrap().to_vec1::<f32>().unwrap()
        );
        for h in 0..kv {
            assert_eq!(per.head_live_positions(h), shared.live_positions());
        }
        assert_eq!(per.live_kv_bytes(), shared.live_kv_bytes());
        assert_eq!(per.live_count(), shared.live_count());
    }
    assert_eq!(per.head_live_counts(), vec![c; kv]);
}

/// With one KV head, `tova-head` is `tova`.
#[test]
fn tova_head_with_one_kv_head_is_tova() {
    let (heads, d, c) = (3, 4, 6);
    let dev = Device::Cpu;
    let cap = Capacity::Bounded(c);
    let mut shared = LayerState::new(1, d, DType::F32, &dev, cap, None, 4).unwrap();
    let mut per = LayerState::per_head(1, d, DType::F32, &dev, cap, c, None, 4).unwrap();
    let (mut tova, mut head) = (create("tova", &ctx(heads, 1, c)), create("tova-head", &ctx(heads, 1, c)));
    let mut rng = Rng::new(11);
    let mut next = 0u64;
    for t in [3, 4, 1, 1, 2, 1, 1, 1, 1, 4, 1] {
        let (q, k, v) = qkv(&mut rng, heads, 1, t, d);
        let pos: Vec<u64> = (next..next + t as u64).collect();
        next += t as u64;
        let a = attend(&q, &k, &v, &pos, &mut shared, tova.as_mut(), 0.5).unwrap();
        let b = attend(&q, &k, &v, &pos, &mut per, head.as_mut(), 0.5).unwrap();
        assert_eq!(
            a.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            b.flatten_all().unwrap().to_vec1::<f32>().unwrap()
        );
        assert_eq!(per.live_positions(), shared.live_positions());
    }
}

/// Heads really keep different tokens, each within C, and the layer's bytes are a shared layer's.
#[test]
fn tova_head_keeps_different_tokens_per_head_in_the_same_bytes() {
    let (heads, kv, d, c) = (4, 2, 4, 4);
    let dev = Device::Cpu;
    let cap = Capacity::Bounded(c);
    let mut per = LayerState::per_head(kv, d, DType::F32, &dev, cap, c, None, 1).unwrap();
    let shared = LayerState::new(kv, d, DType::F32, &dev, cap, None, 1).unwrap();
    let mut p = create("tova-head", &ctx(heads, kv, c));
    let mut rng = Rng::new(3);
    for i in 0..40u64 {
        let (q, k, v) = qkv(&mut rng, heads, kv, 1, d);
        attend(&q, &k, &v, &[i], &mut per, p.as_mut(), 1.0).unwrap();
        assert_eq!(per.head_live_counts(), vec![c.min(i as usize + 1); kv]);
    }
    assert_ne!(per.head_live_positions(0), per.head_live_positions(1), "random attention: the heads disagree");
    assert_eq!(per.allocated_kv_bytes(), shared.allocated_kv_bytes());
    assert_eq!(per.live_kv_bytes(), shared.allocated_kv_bytes() / shared.num_slots() * c);
}

#[test]
fn policies_and_layers_of_the_other_kind_are_refused() {
    let dev = Device::Cpu;
    let cap = Capacity::Bounded(2);
    let (q, k, v) = qkv(&mut Rng::new(1), 2, 2, 1, 2);
    let mut shared = LayerState::new(2, 2, DType::F32, &dev, cap, None, 1).unwrap();
    let e = attend(&q, &k, &v, &[0], &mut shared, create("tova-head", &ctx(2, 2, 2)).as_mut(), 1.0).unwrap_err();
    assert!(e.to_string().contains("policy `tova-head` decides per KV head, but layer 0 is shared"), "{e}");
    let mut per = LayerState::per_head(2, 2, DType::F32, &dev, cap, 2, None, 1).unwrap();
    let e = attend(&q, &k, &v, &[0], &mut per, create("tova", &ctx(2, 2, 2)).as_mut(), 1.0).unwrap_err();
    assert!(e.to_string().contains("keeps one set of tokens for all KV heads, but layer 0 is per-head"), "{e}");
    // Head capacities outside C..=C x kv_heads, and unbounded runs.
    for (hc, needle) in [(1, "outside 2..=4"), (5, "outside 2..=4")] {
        let e = LayerState::per_head(2, 2, DType::F32, &dev, cap, hc, None, 1).err().unwrap();
        assert!(matches!(e, Error::InvalidCapacity(_)) && e.to_string().contains(needle), "{e}");
    }
    let e = LayerState::per_head(2, 2, DType::F32, &dev, Capacity::Unbounded, 2, None, 1).err().unwrap();
    assert!(e.to_string().contains("needs a bounded capacity"), "{e}");
    let e = msrnn_policies::registry()
        .create(&"tova-head".parse().unwrap(), &Context { capacity: None, ..ctx(2, 2, 2) })
        .err()
        .unwrap();
    assert!(e.to_string().contains("give one (--capacity)"), "{e}");
    // A decision that leaves one head over its capacity names the head.
    struct Lopsided;
    impl Policy for Lopsided {
        fn name(&self) -> &str {
            "lopsided"
        }
        fn needs(&self) -> Needs {
            Needs::default()
        }
        fn head_capacity(&self) -> Option<usize> {
            Some(1)
        }
        fn step(&mut self, obs: &Observation<'_>, budget: usize) -> PolicyResult<Decision> {
            Ok(Decision::Evict(obs.live_slots().filter(|&e| obs.head_of(e) == 0).take(obs.excess(budget)).collect()))
        }
    }
    let mut per = LayerState::per_head(2, 2, DType::F32, &dev, Capacity::Bounded(1), 1, None, 2).unwrap();
    let (q, k, v) = qkv(&mut Rng::new(2), 2, 2, 2, 2);
    let e = attend(&q, &k, &v, &[0, 1], &mut per, &mut Lopsided, 1.0).unwrap_err();
    assert!(e.to_string().contains("KV head 1 would keep 2 entries, more than the 1 one head may keep"), "{e}");
}

/// A two-layer state of `spec` over 2 KV heads and 4 query heads, head size 4.
fn state(spec: &str, c: usize) -> MsrnnState {
    let cfg = StateConfig { max_chunk: 4, ..StateConfig::new(2, 2, 4, Capacity::Bounded(c)) };
    let reg = msrnn_policies::registry();
    let policies = reg.create_layers(&spec.parse().unwrap(), 2, 4, 2, 4, cfg.capacity).unwrap();
    MsrnnState::new(&cfg, policies).unwrap()
}

/// Feeds `chunks` random tokens through both layers; returns every output value.
fn feed(st: &mut MsrnnState, rng: &mut Rng, chunks: &[usize]) -> Vec<f32> {
    let mut out = Vec::new();
    for &t in chunks {
        let pos = st.next_positions(t);
        for l in 0..st.num_layers() {
            let (q, k, v) = qkv(rng, 4, 2, t, 4);
            out.extend(st.attend(l, &q, &k, &v, &pos, 0.5).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap());
        }
        st.advance(t);
    }
    out
}

#[test]
fn per_head_states_save_resume_and_roll_back_exactly() {
    for spec in ["tova-head", "adakv", "keydiff-head"] {
        let mut a = state(spec, 5);
        assert!(a.layer(0).is_per_head());
        let mut rng = Rng::new(5);
        feed(&mut a, &mut rng, &[4, 3, 1, 1, 2, 1, 1, 1]);
        let spec_v: PolicySpec = spec.parse().unwrap();
        let bytes = a.save_bytes("test-model", &spec_v, &[]).unwrap();
        let mut b = state(spec, 5);
        b.load_bytes(&bytes, "test-model", &spec_v).unwrap();
        for l in 0..2 {
            for h in 0..2 {
                assert_eq!(a.layer(l).head_live_positions(h), b.layer(l).head_live_positions(h), "{spec}");
            }
        }
        let mut rng_b = Rng::new(99);
        let mut rng_a = Rng::new(99);
        assert_eq!(feed(&mut a, &mut rng_a, &[1, 1, 3, 1]), feed(&mut b, &mut rng_b, &[1, 1, 3, 1]), "{spec}");
        // Rollback: a step taken and undone, then taken again, is the step taken once.
        let mark = a.checkpoint();
        let before: Vec<Vec<u64>> = (0..2).map(|h| a.layer(1).head_live_positions(h)).collect();
        feed(&mut a, &mut Rng::new(1), &[2]);
        a.rollback(mark).unwrap();
        assert_eq!((0..2).map(|h| a.layer(1).head_live_positions(h)).collect::<Vec<_>>(), before, "{spec}");
        assert_eq!(feed(&mut a, &mut Rng::new(1), &[2]), feed(&mut b, &mut Rng::new(1), &[2]), "{spec}");
        // A per-head file is refused by a shared state of another policy, with the reason.
        let mut shared = state("tova", 5);
        let e = shared.load_bytes(&bytes, "test-model", &"tova".parse().unwrap()).unwrap_err();
        assert!(e.to_string().contains(spec), "{e}");
    }
}

#[test]
fn adakv_allocates_for_its_cap_and_keeps_c_times_heads_entries() {
    let mut st = state("adakv:max_share=2", 16);
    let shared = state("tova", 16);
    feed(&mut st, &mut Rng::new(8), &[4, 4, 4, 4, 4, 1, 1, 2, 1]);
    for l in 0..2 {
        let counts = st.layer(l).head_live_counts();
        assert_eq!(counts.iter().sum::<usize>(), 32, "layer {l}: C x kv_heads entries ({counts:?})");
        assert!(counts.iter().all(|&n| n <= 32));
        assert_eq!(st.layer(l).live_count(), 16);
    }
    assert_eq!(st.live_kv_bytes(), shared.allocated_kv_bytes() / shared.layer(0).num_slots() * 16);
    assert!(st.allocated_kv_bytes() > shared.allocated_kv_bytes(), "slots sized for 2C per head (48 vs 32 per head)");
}

/// Random per-head decisions (any entries, any split between heads, within the rules) keep the
/// invariants: each head within its capacity, C x kv_heads entries once full, positions unique and
/// seen, and the decision's entries really gone from their own head only.
struct RandomPerHead {
    rng: Rng,
    cap: usize,
}

impl Policy for RandomPerHead {
    fn name(&self) -> &str {
        "random-per-head"
    }
    fn needs(&self) -> Needs {
        Needs::default()
    }
    fn head_capacity(&self) -> Option<usize> {
        Some(self.cap)
    }
    fn step(&mut self, obs: &Observation<'_>, budget: usize) -> PolicyResult<Decision> {
        let mut left: Vec<usize> = (0..obs.num_kv_heads).map(|h| obs.head_live_count(h)).collect();
        let mut live: Vec<usize> = obs.live_slots().collect();
        let mut out = Vec::new();
        // Heads over their capacity first, then any entry.
        for (h, n) in left.iter_mut().enumerate() {
            while *n > obs.head_capacity {
                let i = live.iter().position(|&e| obs.head_of(e) == h).unwrap();
                out.push(live.remove(i));
                *n -= 1;
            }
        }
        while out.len() < obs.excess(budget) {
            let i = (self.rng.next_u64() % live.len() as u64) as usize;
            let e = live.remove(i);
            left[obs.head_of(e)] -= 1;
            out.push(e);
        }
        Ok(Decision::Evict(out))
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn random_per_head_decisions_keep_the_invariants(
        kv in 1usize..=3, group in 1usize..=2, c in 1usize..=6, share in 1usize..=3,
        chunks in prop::collection::vec(1usize..=4, 1..16), seed in any::<u64>(),
    ) {
        let dev = Device::Cpu;
        let hc = (c * share).min(c * kv);
        let mut layer = LayerState::per_head(kv, 4, DType::F32, &dev, Capacity::Bounded(c), hc, None, 4).unwrap();
        let mut p = RandomPerHead { rng: Rng::new(seed), cap: hc };
        let mut rng = Rng::new(seed ^ 1);
        let mut next = 0u64;
        let mut prev: Vec<Vec<u64>> = vec![Vec::new(); kv];
        for &t in &chunks {
            let (q, k, v) = qkv(&mut rng, kv * group, kv, t, 4);
            let pos: Vec<u64> = (next..next + t as u64).collect();
            next += t as u64;
            attend(&q, &k, &v, &pos, &mut layer, &mut p, 0.5).unwrap();
            let counts = layer.head_live_counts();
            prop_assert!(counts.iter().all(|&n| n <= hc), "{counts:?} over {hc}");
            let seen = next as usize;
            prop_assert_eq!(counts.iter().sum::<usize>(), kv * seen.min(c));
            for (h, prev_h) in prev.iter_mut().enumerate() {
                let now = layer.head_live_positions(h);
                let mut u = now.clone();
                u.dedup();
                prop_assert_eq!(u.len(), now.len());
                prop_assert!(now.iter().all(|p| prev_h.contains(p) || pos.contains(p)), "head {h}: {now:?}");
                *prev_h = now;
            }
        }
    }
}

/// When the floor blocks more than the few lowest entries `adakv` orders first, it goes on in
/// order through the rest: the same entries as ordering everything.
#[test]
fn adakv_past_a_floor_that_blocks_the_lowest_entries() {
    // C = 20, floor = C: KV head 1 (20 live) may lose nothing; head 0 (22 live) must lose 2. Head 1
    // holds the 20 lowest scores, head 0's lowest are slots 5 and 9.
    let n = 24;
    let positions: Vec<u64> = (0..2 * n as u64).map(|e| e % n as u64).collect();
    let live: Vec<bool> = (0..2 * n).map(|e| if e < n { e < 22 } else { e - n < 20 }).collect();
    let mut probs = vec![0f32; 2 * n];
    for (s, p) in probs[..22].iter_mut().enumerate() {
        *p = 0.5 + s as f32 * 0.001;
    }
    probs[5] = 0.2;
    probs[9] = 0.3;
    for s in 0..20 {
        probs[n + s] = 0.01 * (s + 1) as f32 / 10.0;
    }
    let o = Observation {
        layer: 0,
        tokens_seen: 22,
        num_slots: n,
        positions: &positions,
        live: &live,
        new_slots: &[],
        num_heads: 2,
        num_kv_heads: 2,
        head_dim: 2,
        rows: 1,
        probs: &probs,
        key_norms: &[],
        keys: &[],
        head_capacity: 40,
    };
    assert_eq!(o.excess(20), 2);
    let mut p = create("adakv:floor=1", &Context { num_heads: 2, ..ctx(2, 2, 20) });
    assert_eq!(p.step(&o, 20).unwrap(), Decision::Evict(vec![5, 9]));
}

/// PyramidKV's per-layer capacities around a per-head base: each layer per-head, with its own C.
#[test]
fn pyramid_over_a_per_head_base_is_per_head_with_its_layer_capacities() {
    let mut st = state("pyramid:base=tova-head", 8);
    let caps: Vec<usize> = (0..2).map(|l| st.layer(l).capacity().budget()).collect();
    assert_ne!(caps[0], caps[1]);
    assert!((0..2).all(|l| st.layer(l).head_capacity() == Some(caps[l])), "{caps:?}");
    feed(&mut st, &mut Rng::new(4), &[4, 4, 4, 4, 1, 1]);
    for (l, &c) in caps.iter().enumerate() {
        assert_eq!(st.layer(l).head_live_counts(), vec![c; 2], "layer {l}");
    }
}

#[test]
fn tova_ema_head_smooths_each_heads_own_attention() {
    // 2 KV heads of one query head each, 3 slots per head, decay 0.5, budget 2 per head.
    let mut p = create("tova-ema-head:decay=0.5", &Context { num_heads: 2, ..ctx(2, 2, 2) });
    let base = |positions, live, new_slots, probs, tokens_seen| Observation {
        layer: 0,
        tokens_seen,
        num_slots: 3,
        positions,
        live,
        new_slots,
        num_heads: 2,
        num_kv_heads: 2,
        head_dim: 2,
        rows: 1,
        probs,
        key_norms: &[],
        keys: &[],
        head_capacity: 2,
    };
    // Step 1 (two old tokens, nothing new): scores 0.5 * a = [0.3, 0.2 | 0.05, 0.45]; within budget.
    let (pos1, live1) = ([0u64, 1, 0, 0, 1, 0], [true, true, false, true, true, false]);
    let probs1 = [0.6f32, 0.4, 0.0, 0.1, 0.9, 0.0];
    assert_eq!(p.step(&base(&pos1, &live1, &[], &probs1, 2), 2).unwrap(), Decision::Keep);
    // Step 2: token 2 arrives in slot 2 of each head. Head 0: 0.2, 0.35, new 0.4 -> entry 0 goes;
    // head 1: 0.275, 0.325, new 0.3 -> entry 3 goes (tova-head would drop entry 4, at 0.2).
    let (pos2, live2) = ([0u64, 1, 2, 0, 1, 2], [true; 6]);
    let probs2 = [0.1f32, 0.5, 0.4, 0.5, 0.2, 0.3];
    assert_eq!(p.step(&base(&pos2, &live2, &[2, 5], &probs2, 3), 2).unwrap(), Decision::Evict(vec![0, 3]));
}

#[test]
fn tova_ema_head_without_memory_is_tova_head() {
    let (heads, kv, d, c) = (4, 2, 4, 5);
    let dev = Device::Cpu;
    let cap = Capacity::Bounded(c);
    let mut a = LayerState::per_head(kv, d, DType::F32, &dev, cap, c, None, 4).unwrap();
    let mut b = LayerState::per_head(kv, d, DType::F32, &dev, cap, c, None, 4).unwrap();
    let (mut pa, mut pb) =
        (create("tova-head", &ctx(heads, kv, c)), create("tova-ema-head:decay=0", &ctx(heads, kv, c)));
    let mut rng = Rng::new(21);
    for next in 0..30u64 {
        // One token per step: a chunk is scored by its last row in tova-head, by every row here.
        let (q, k, v) = qkv(&mut rng, heads, kv, 1, d);
        attend(&q, &k, &v, &[next], &mut a, pa.as_mut(), 0.5).unwrap();
        attend(&q, &k, &v, &[next], &mut b, pb.as_mut(), 0.5).unwrap();
        for h in 0..kv {
            assert_eq!(a.head_live_positions(h), b.head_live_positions(h));
        }
    }
}

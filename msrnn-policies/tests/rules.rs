//! Each policy's rule on small hand-computed cases.

use msrnn_core::{Capacity, Context, Decision, MsrnnState, Observation, Policy, PolicySpec, StateConfig};
use msrnn_policies::{
    pyramid_capacities, registry, H2o, H2oEma, KeyDiff, Random, SnapKv, Tova, TovaEma, Window, WindowSinks,
};

struct Obs {
    positions: Vec<u64>,
    live: Vec<bool>,
    new_slots: Vec<usize>,
    num_heads: usize,
    rows: usize,
    probs: Vec<f32>,
    num_kv_heads: usize,
    head_dim: usize,
    keys: Vec<f32>,
}

impl Obs {
    fn new(positions: &[u64], new_slots: &[usize]) -> Self {
        Obs {
            positions: positions.to_vec(),
            live: vec![true; positions.len()],
            new_slots: new_slots.to_vec(),
            num_heads: 1,
            rows: 0,
            probs: vec![],
            num_kv_heads: 1,
            head_dim: 0,
            keys: vec![],
        }
    }
    /// `kv_heads` x `slots` x `head_dim` keys.
    fn keys(mut self, kv_heads: usize, head_dim: usize, keys: &[f32]) -> Self {
        assert_eq!(keys.len(), kv_heads * self.positions.len() * head_dim);
        (self.num_kv_heads, self.head_dim, self.keys) = (kv_heads, head_dim, keys.to_vec());
        self
    }
    /// `rows` x `heads` x `slots` probabilities.
    fn probs(mut self, heads: usize, rows: &[&[f32]]) -> Self {
        self.num_heads = heads;
        self.rows = rows.len();
        self.probs = rows.iter().flat_map(|r| r.iter().copied()).collect();
        assert_eq!(self.probs.len(), self.rows * heads * self.positions.len());
        self
    }
    fn view(&self) -> Observation<'_> {
        Observation {
            layer: 0,
            tokens_seen: self.positions.iter().max().map_or(0, |m| m + 1),
            num_slots: self.positions.len(),
            positions: &self.positions,
            live: &self.live,
            new_slots: &self.new_slots,
            num_heads: self.num_heads,
            num_kv_heads: self.num_kv_heads,
            head_dim: self.head_dim,
            rows: self.rows,
            probs: &self.probs,
            key_norms: &[],
            keys: &self.keys,
            head_capacity: 0,
        }
    }
}

fn evicted(p: &mut dyn Policy, o: &Obs, budget: usize) -> Vec<usize> {
    match p.step(&o.view(), budget).unwrap() {
        Decision::Keep => vec![],
        Decision::Evict(mut v) => {
            v.sort();
            v
        }
    }
}

#[test]
fn window_evicts_the_oldest_positions() {
    let o = Obs::new(&[10, 3, 7, 12], &[3]);
    assert_eq!(evicted(&mut Window, &o, 2), vec![1, 2]);
    assert_eq!(evicted(&mut Window, &o, 3), vec![1]);
}

#[test]
fn sinks_keep_the_first_positions_and_the_newest() {
    // slots hold positions 5,0,6,1,7,2 ; sinks=2 keeps 0,1; budget 4 keeps the 2 newest (6,7).
    let o = Obs::new(&[5, 0, 6, 1, 7, 2], &[4]);
    assert_eq!(evicted(&mut WindowSinks::new(2), &o, 4), vec![0, 5]);
    // with sinks=0 it is the plain window
    assert_eq!(evicted(&mut WindowSinks::new(0), &o, 4), vec![1, 3]);
}

#[test]
fn tova_drops_the_lowest_head_mean_and_ties_keep_the_newer() {
    // 2 heads over 4 slots (positions 0..3, slot 3 newest). Means: 0.25, 0.15, 0.35, 0.25.
    let o = Obs::new(&[0, 1, 2, 3], &[3]).probs(2, &[&[0.3, 0.1, 0.4, 0.2, 0.2, 0.2, 0.3, 0.3]]);
    assert_eq!(evicted(&mut Tova, &o, 3), vec![1]);
    // budget 2: slot 1 (0.15) and then the tie 0.25 between positions 0 and 3 evicts the older (slot 0).
    assert_eq!(evicted(&mut Tova, &o, 2), vec![0, 1]);
    // the newest entry is a candidate too
    let o = Obs::new(&[0, 1, 2], &[2]).probs(1, &[&[0.5, 0.4, 0.1]]);
    assert_eq!(evicted(&mut Tova, &o, 2), vec![2]);
    // within budget: nothing
    assert_eq!(evicted(&mut Tova, &o, 3), Vec::<usize>::new());
}

#[test]
fn h2o_accumulates_every_step_and_keeps_a_recent_window() {
    // recent = 1 (C = 3, recent = 0.5 -> floor(1.5) = 1)
    let spec: PolicySpec = "h2o:recent=0.5".parse().unwrap();
    let ctx = Context { layer: 0, num_layers: 1, num_heads: 1, num_kv_heads: 1, head_dim: 4, capacity: Some(3) };
    let mut p = registry().create(&spec, &ctx).unwrap();
    // step 1: token 0 in slot 0, attends to itself: score[0] = 1
    assert!(evicted(p.as_mut(), &Obs::new(&[0], &[0]).probs(1, &[&[1.0]]), 3).is_empty());
    // step 2: token 1 in slot 1; row (0.6, 0.4): scores 1.6, 0.4
    assert!(evicted(p.as_mut(), &Obs::new(&[0, 1], &[1]).probs(1, &[&[0.6, 0.4]]), 3).is_empty());
    // step 3 as a chunk of two (tokens 2, 3 in slots 2, 3), two rows:
    //   row for token 2: (0.1, 0.2, 0.7, 0)   row for token 3: (0.1, 0.5, 0.1, 0.3)
    //   scores: 1.8, 1.1, 0.8, 0.3; recent window = {slot 3}; keep 2 more of {0,1,2} -> evict slot 2.
    let o = Obs::new(&[0, 1, 2, 3], &[2, 3]).probs(1, &[&[0.1, 0.2, 0.7, 0.0], &[0.1, 0.5, 0.1, 0.3]]);
    assert_eq!(evicted(p.as_mut(), &o, 3), vec![2]);
    // step 4: token 4 reuses slot 2, its score restarts at 0 before adding this row.
    //   row (0.0, 0.1, 0.2, 0.7) over slots 0..3 -> scores 1.8, 1.2, 0.2, 1.0; recent = slot 2 (pos 4);
    //   among {0,1,3} evict the lowest: slot 3 (1.0).
    let mut o = Obs::new(&[0, 1, 4, 3], &[2]).probs(1, &[&[0.0, 0.1, 0.2, 0.7]]);
    assert_eq!(evicted(p.as_mut(), &o, 3), vec![3]);
    // ties keep the newer: a fresh H2O where slots 0 (pos 0) and 1 (pos 1) tie.
    let mut q = H2o::new(0);
    o = Obs::new(&[0, 1, 2], &[0, 1, 2]).probs(1, &[&[0.25, 0.25, 0.5]]);
    assert_eq!(evicted(&mut q, &o, 2), vec![0]);
}

#[test]
fn random_is_seeded_and_evicts_live_entries() {
    let o = Obs::new(&[0, 1, 2, 3, 4, 5, 6, 7], &[7]);
    let a: Vec<Vec<usize>> = (0..5).scan(Random::new(3, 0), |p, _| Some(evicted(p, &o, 5))).collect();
    let b: Vec<Vec<usize>> = (0..5).scan(Random::new(3, 0), |p, _| Some(evicted(p, &o, 5))).collect();
    let c: Vec<Vec<usize>> = (0..5).scan(Random::new(4, 0), |p, _| Some(evicted(p, &o, 5))).collect();
    assert_eq!(a, b);
    assert_ne!(a, c, "another seed should give other evictions");
    assert!(a.iter().all(|e| e.len() == 3));
}

#[test]
fn creation_checks_params_and_capacity() {
    let r = registry();
    let ctx = |capacity| Context { layer: 0, num_layers: 1, num_heads: 1, num_kv_heads: 1, head_dim: 4, capacity };
    let err = |s: &str, c| r.create(&s.parse().unwrap(), &ctx(c)).err().expect(s).to_string();
    assert!(err("window+i:sinks=4", Some(4)).contains("must exceed sinks=4"));
    assert!(err("sinks:sinks=8", Some(3)).contains("must exceed"));
    assert!(err("h2o:recent=1.5", Some(8)).contains("[0, 1]"));
    assert!(err("full", Some(8)).contains("unbounded"));
    assert!(err("tova:x=1", Some(8)).contains("takes no parameters"));
    assert!(err("h2o:recnt=0.2", Some(8)).contains("unknown parameter `recnt`"));
    let e = err("tvoa", Some(8));
    assert!(e.contains("unknown policy `tvoa`") && e.contains("`tova`"), "{e}");
    assert!(r.create(&"window+i".parse().unwrap(), &ctx(Some(5))).is_ok());
}

#[test]
fn registry_lists_every_builtin_with_a_description() {
    let names: Vec<String> = registry().entries().map(|e| e.name.clone()).collect();
    for n in
        ["full", "h2o", "h2o-ema", "keydiff", "pyramid", "random", "snapkv", "tova", "tova-ema", "window", "window+i"]
    {
        assert!(names.contains(&n.to_string()), "{n} missing from {names:?}");
    }
    assert!(registry().entries().all(|e| !e.description.is_empty() && !e.description.contains('\n')));
    assert_eq!(registry().get("sinks").unwrap().name, "window+i");
    assert_eq!(registry().get("none").unwrap().name, "full");
    assert_eq!(registry().get("heavy-hitter").unwrap().name, "h2o");
}

/// Defaults are declared once, in the schema: listings show them and creation uses them.
#[test]
fn defaults_come_from_the_declaration() {
    let r = registry();
    let defaults = |name: &str| -> Vec<(String, String)> {
        r.get(name).unwrap().params.iter().map(|p| (p.name.to_string(), p.default.to_string())).collect()
    };
    assert_eq!(defaults("h2o"), [("recent".to_string(), "0.5".to_string())]);
    assert_eq!(defaults("window+i"), [("sinks".to_string(), "4".to_string())]);
    assert_eq!(defaults("random"), [("seed".to_string(), "0".to_string())]);
    let ctx = Context { layer: 0, num_layers: 1, num_heads: 1, num_kv_heads: 1, head_dim: 4, capacity: Some(6) };
    // window+i without parameters keeps sinks 0..4: with C = 6, the two newest beside them.
    let mut p = r.create(&"window+i".parse().unwrap(), &ctx).unwrap();
    let o = Obs::new(&[0, 1, 2, 3, 4, 5, 6, 7], &[7]);
    assert_eq!(evicted(p.as_mut(), &o, 6), vec![4, 5]);
    // the default seed is 0 and the default recent fraction is 0.5, exactly as given explicitly.
    let draw = |spec: &str| {
        let mut p = r.create(&spec.parse().unwrap(), &ctx).unwrap();
        (0..4).map(|_| evicted(p.as_mut(), &o, 5)).collect::<Vec<_>>()
    };
    assert_eq!(draw("random"), draw("random:seed=0"));
    assert_ne!(draw("random"), draw("random:seed=1"));
    // h2o's default recent = 0.5: floor(0.5 x 6) = 3 newest kept, so the low-scored newest survive.
    let o = Obs::new(&[0, 1, 2, 3, 4, 5, 6, 7], &[7]).probs(1, &[&[0.3, 0.2, 0.15, 0.1, 0.1, 0.05, 0.05, 0.05]]);
    let h2o = |spec: &str| evicted(r.create(&spec.parse().unwrap(), &ctx).unwrap().as_mut(), &o, 6);
    assert_eq!(h2o("h2o"), vec![3, 4]);
    assert_eq!(h2o("h2o:recent=0.5"), vec![3, 4]);
    assert_eq!(h2o("h2o:recent=0"), vec![5, 6]);
}

/// Probabilities are f32: compare the f64 bookkeeping to hand-computed values at f32 precision.
#[track_caller]
fn assert_close(got: &[f64], want: &[f64]) {
    assert!(got.len() == want.len() && got.iter().zip(want).all(|(a, b)| (a - b).abs() < 1e-6), "{got:?} vs {want:?}");
}

fn ctx(layer: usize, num_layers: usize, capacity: Option<usize>) -> Context {
    Context { layer, num_layers, num_heads: 1, num_kv_heads: 1, head_dim: 2, capacity }
}

#[test]
fn tova_ema_smooths_every_row_and_a_new_entry_starts_at_its_own_attention() {
    let mut p = TovaEma::new(0.5);
    // token 0: s0 = 1 (its arrival row)
    assert!(evicted(&mut p, &Obs::new(&[0], &[0]).probs(1, &[&[1.0]]), 4).is_empty());
    // token 1: s0 = 0.5*1 + 0.5*0.6 = 0.8, s1 = 0.4
    assert!(evicted(&mut p, &Obs::new(&[0, 1], &[1]).probs(1, &[&[0.6, 0.4]]), 4).is_empty());
    assert_close(&p.save_state(), &[0.8, 0.4]);
    // tokens 2 and 3 as one chunk, one decay per row:
    //   row 0: s0 = 0.45, s1 = 0.3, s2 = 0.7 (arrives), slot 3 not there yet
    //   row 1: s0 = 0.275, s1 = 0.4, s2 = 0.4, s3 = 0.3 (arrives)
    // budget 2 evicts 0.275 (slot 0) and 0.3 (slot 3); TOVA, by the last row, would evict slots 0 and 2.
    let chunk = Obs::new(&[0, 1, 2, 3], &[2, 3]).probs(1, &[&[0.1, 0.2, 0.7, 0.0], &[0.1, 0.5, 0.1, 0.3]]);
    let mut q = TovaEma::new(0.5);
    q.load_state(&p.save_state()).unwrap();
    assert_eq!(evicted(&mut q, &chunk, 2), vec![0, 3]);
    let mut t = Tova;
    let last = Obs::new(&[0, 1, 2, 3], &[2, 3]).probs(1, &[&[0.1, 0.5, 0.1, 0.3]]);
    assert_eq!(evicted(&mut t, &last, 2), vec![0, 2]);
    // The chunk gives the same scores as feeding its tokens one at a time.
    let mut one = TovaEma::new(0.5);
    one.load_state(&p.save_state()).unwrap();
    assert!(evicted(&mut one, &Obs::new(&[0, 1, 2], &[2]).probs(1, &[&[0.1, 0.2, 0.7]]), 4).is_empty());
    assert!(evicted(&mut one, &Obs::new(&[0, 1, 2, 3], &[3]).probs(1, &[&[0.1, 0.5, 0.1, 0.3]]), 4).is_empty());
    let mut chunked = TovaEma::new(0.5);
    chunked.load_state(&p.save_state()).unwrap();
    assert!(evicted(&mut chunked, &chunk, 4).is_empty());
    let (a, b) = (one.save_state(), chunked.save_state());
    assert!(a.iter().zip(&b).all(|(x, y)| (x - y).abs() < 1e-12), "{a:?} vs {b:?}");
    assert_close(&a, &[0.275, 0.4, 0.4, 0.3]);
    // decay 0 is TOVA
    assert_eq!(evicted(&mut TovaEma::new(0.0), &last, 2), vec![0, 2]);
}

#[test]
fn tova_ema_default_decay_is_one_minus_8_over_c() {
    let r = registry();
    assert_eq!(r.get("tova-ema").unwrap().params[0].default, "1-8/C");
    let o = Obs::new(&[0, 1], &[0, 1]).probs(1, &[&[1.0, 0.0], &[0.2, 0.8]]);
    let run = |spec: &str, c| {
        let mut p = r.create(&spec.parse().unwrap(), &ctx(0, 1, Some(c))).unwrap();
        evicted(p.as_mut(), &o, 8);
        p.save_state()
    };
    // C = 16: d = 0.5, so s0 = 0.5*1 + 0.5*0.2 = 0.6; C = 4 clamps to d = 0 (TOVA).
    assert_eq!(run("tova-ema", 16), run("tova-ema:decay=0.5", 16));
    assert_close(&run("tova-ema", 16), &[0.6, 0.8]);
    assert_close(&run("tova-ema", 4), &[0.2, 0.8]);
    assert_eq!(TovaEma::default_decay(Some(512)), 1.0 - 8.0 / 512.0);
    let e = r.create(&"tova-ema:decay=1".parse().unwrap(), &ctx(0, 1, Some(8))).err().unwrap().to_string();
    assert!(e.contains("[0, 1)"), "{e}");
}

#[test]
fn keydiff_evicts_the_keys_closest_to_the_mean_direction() {
    // One KV head, head size 2: keys (1,0), (0,1), (2,0), (1,1). Unit keys sum to the anchor
    // (1 + 0 + 1 + 0.7071, 0 + 1 + 0 + 0.7071); cosines: 0.846, 0.533, 0.846, 0.975.
    let keys = [1.0, 0.0, 0.0, 1.0, 2.0, 0.0, 1.0, 1.0];
    let o = Obs::new(&[0, 1, 2, 3], &[3]).keys(1, 2, &keys);
    let sim = msrnn_policies::anchor_similarity(&o.view());
    let an = (2.7071067811865475f64.powi(2) + 1.7071067811865475f64.powi(2)).sqrt();
    assert!((sim[1] - 1.7071067811865475 / an).abs() < 1e-9 && (sim[0] - sim[2]).abs() < 1e-12);
    assert_eq!(evicted(&mut KeyDiff, &o, 3), vec![3]);
    // the tie between (1,0) and (2,0) evicts the older
    assert_eq!(evicted(&mut KeyDiff, &o, 2), vec![0, 3]);
    // Two KV heads average their cosines: head 1 reverses the order of slots 1 and 3.
    let keys2 = [1.0, 0.0, 0.0, 1.0, 2.0, 0.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.0, 1.0, 1.0, 0.0, 1.0];
    let o2 = Obs::new(&[0, 1, 2, 3], &[3]).keys(2, 2, &keys2);
    let s2 = msrnn_policies::anchor_similarity(&o2.view());
    let o_h1 = Obs::new(&[0, 1, 2, 3], &[3]).keys(1, 2, &keys2[8..]);
    let s_h1 = msrnn_policies::anchor_similarity(&o_h1.view());
    for s in 0..4 {
        assert!((s2[s] - (sim[s] + s_h1[s]) / 2.0).abs() < 1e-12);
    }
    // within budget: nothing
    assert!(evicted(&mut KeyDiff, &o, 4).is_empty());
}

#[test]
fn snapkv_pools_the_window_queries_attention_and_keeps_the_window() {
    // window 1, kernel 3: the newest (slot 5) is kept; the older ones' votes 0.3, 0, 0, 0.05, 0.05
    // pool to 0.1, 0.1, 0.0167, 0.0333, 0.0333: slot 2 goes, then the older of the tie (slot 3).
    let o = Obs::new(&[0, 1, 2, 3, 4, 5], &[5]).probs(1, &[&[0.3, 0.0, 0.0, 0.05, 0.05, 0.6]]);
    assert_eq!(evicted(&mut SnapKv::new(1, 3), &o, 4), vec![2, 3]);
    // without pooling the two zero votes go, and the heavy hitter's neighbour is not saved
    assert_eq!(evicted(&mut SnapKv::new(1, 1), &o, 4), vec![1, 2]);
    // window 2 sums the last two queries' rows: votes 0.5, 0.5, 0.2 for slots 0..2 (3 and 4 are
    // the window); with window 1 only the last row counts (0, 0.4, 0.1, 0.2 for slots 0..3).
    let a = Obs::new(&[0, 1, 2, 3], &[3]).probs(1, &[&[0.5, 0.1, 0.1, 0.3]]);
    let b = Obs::new(&[0, 1, 2, 3, 4], &[4]).probs(1, &[&[0.0, 0.4, 0.1, 0.2, 0.3]]);
    for (window, want) in [(2, vec![2]), (1, vec![0])] {
        let mut p = SnapKv::new(window, 1);
        assert!(evicted(&mut p, &a, 8).is_empty());
        assert_eq!(evicted(&mut p, &b, 4), want, "window {window}");
    }
    // a rewritten slot forgets the old token's votes: slot 0 now holds position 5
    let mut p = SnapKv::new(2, 1);
    assert!(evicted(&mut p, &a, 8).is_empty());
    let c = Obs::new(&[5, 1, 2, 3], &[0]).probs(1, &[&[0.2, 0.3, 0.2, 0.3]]);
    assert_close(&p.save_state()[2..6], &[0.5, 0.1, 0.1, 0.3]);
    assert!(evicted(&mut p, &c, 8).is_empty());
    assert_close(&p.save_state()[2..6], &[0.0, 0.1, 0.1, 0.3]);
    // the window is kept even when it holds the lowest votes
    let d = Obs::new(&[0, 1, 2], &[2]).probs(1, &[&[0.9, 0.1, 0.0]]);
    assert_eq!(evicted(&mut SnapKv::new(1, 1), &d, 2), vec![1]);
    // defaults and refusals
    let r = registry();
    let defaults: Vec<(String, String)> =
        r.get("snapkv").unwrap().params.iter().map(|p| (p.name.to_string(), p.default.to_string())).collect();
    assert_eq!(defaults, [("window".into(), "16".into()), ("kernel".into(), "5".into())]);
    let err = |s: &str| r.create(&s.parse().unwrap(), &ctx(0, 1, Some(8))).err().unwrap().to_string();
    assert!(err("snapkv:kernel=4").contains("odd"));
    assert!(err("snapkv:window=0").contains("at least 1"));
}

#[test]
fn pyramid_budgets_fall_linearly_and_sum_to_layers_times_c() {
    // C = 10, 4 layers, beta 4: last 10/4 = 2, first 20 - 2 = 18; 18, 12.67, 7.33, 2 round down
    // to 18, 12, 7, 2 and the missing token goes to the first layer.
    assert_eq!(pyramid_capacities(10, 4, 4.0), vec![19, 12, 7, 2]);
    // C/beta below 1 keeps 1 in the last layer
    assert_eq!(pyramid_capacities(10, 3, 20.0), vec![19, 10, 1]);
    assert_eq!(pyramid_capacities(7, 1, 20.0), vec![7]);
    for (c, layers) in [(64, 30), (128, 30), (512, 30), (1, 30), (3, 7), (100, 2)] {
        let caps = pyramid_capacities(c, layers, 20.0);
        assert_eq!(caps.iter().sum::<usize>(), c * layers, "C={c}, {layers} layers");
        assert!(caps.windows(2).all(|w| w[0] >= w[1]) && caps.iter().all(|&x| x >= 1), "{caps:?}");
    }
}

#[test]
fn pyramid_wraps_a_base_policy_through_the_registry() {
    let r = registry();
    let spec: PolicySpec = "pyramid:base=h2o:recent=0.5,beta=4".parse().unwrap();
    assert_eq!(spec.params["base"].to_string(), "h2o:recent=0.5");
    let layers = r.create_layers(&spec, 4, 1, 1, 2, Capacity::Bounded(10)).unwrap();
    let caps: Vec<Option<usize>> = layers.iter().map(|p| p.capacity()).collect();
    assert_eq!(caps, [Some(19), Some(12), Some(7), Some(2)]);
    assert!(layers.iter().all(|p| p.name() == "pyramid" && p.needs() == H2o::new(0).needs()));
    // The state sizes each layer by it.
    let state = MsrnnState::new(&StateConfig::new(4, 1, 2, Capacity::Bounded(10)), layers).unwrap();
    let got: Vec<Capacity> = (0..4).map(|l| state.layer(l).capacity()).collect();
    assert_eq!(got, [19, 12, 7, 2].map(Capacity::Bounded));
    // The base gets its layer's capacity as its C: h2o's recent window of floor(0.5 x 2) = 1 on the
    // last layer keeps the newest entry even though its score is the lowest.
    let mut last = r.create(&spec, &ctx(3, 4, Some(10))).unwrap();
    let o = Obs::new(&[0, 1, 2], &[0, 1, 2]).probs(1, &[&[0.5, 0.4, 0.1]]);
    assert_eq!(evicted(last.as_mut(), &o, 2), vec![1]);
    // The default base is tova; unbounded runs ask for no capacity of their own.
    let p = r.create(&"pyramid".parse().unwrap(), &ctx(0, 4, None)).unwrap();
    assert_eq!((p.capacity(), p.needs()), (None, Tova.needs()));
    let err = |s: &str| r.create(&s.parse().unwrap(), &ctx(0, 4, Some(8))).err().unwrap().to_string();
    assert!(err("pyramid:base=pyramid").contains("cannot be `pyramid`"));
    assert!(err("pyramid:base=tvoa").contains("unknown policy `tvoa`"));
    assert!(err("pyramid:base=h2o:recnt=1").contains("unknown parameter `recnt`"));
    assert!(err("pyramid:beta=0.5").contains("at least 1"));
    assert_eq!(r.get("pyramidkv").unwrap().name, "pyramid");
}

#[test]
fn h2o_ema_keeps_the_heavy_hitters_and_fills_the_rest_by_moving_average() {
    // decay 0.5, one head. Rows: (1), (0.2, 0.8), (0, 0.3, 0.7).
    //   sums:  1 | 1.2, 0.8      | 1.2, 1.1, 0.7
    //   EMAs:  1 | 0.6, 0.8      | 0.3, 0.55, 0.7
    let steps = [
        Obs::new(&[0], &[0]).probs(1, &[&[1.0]]),
        Obs::new(&[0, 1], &[1]).probs(1, &[&[0.2, 0.8]]),
        Obs::new(&[0, 1, 2], &[2]).probs(1, &[&[0.0, 0.3, 0.7]]),
    ];
    let run = |p: &mut dyn Policy, budget| {
        for o in &steps[..2] {
            assert!(evicted(p, o, 4).is_empty());
        }
        evicted(p, &steps[2], budget)
    };
    // One heavy hitter (slot 0, sum 1.2) is kept although its average is the lowest; the lowest
    // average among the rest (slot 1) goes.
    assert_eq!(run(&mut H2oEma::new(1, 0.5), 2), vec![1]);
    let mut p = H2oEma::new(1, 0.5);
    run(&mut p, 4);
    assert_close(&p.save_state(), &[1.2, 1.1, 0.7, 0.3, 0.55, 0.7]);
    // Without heavy hitters it is tova-ema.
    assert_eq!(run(&mut H2oEma::new(0, 0.5), 2), vec![0]);
    assert_eq!(run(&mut TovaEma::new(0.5), 2), vec![0]);
    // The heavy hitters never take more than the budget.
    assert_eq!(run(&mut H2oEma::new(1, 0.5), 1), vec![1, 2]);
    assert_eq!(run(&mut H2oEma::new(5, 0.5), 1), vec![1, 2]);
    // Defaults: heavy = floor(C/8), decay = 1 - 8/C.
    let r = registry();
    let defaults: Vec<(String, String)> =
        r.get("h2o-ema").unwrap().params.iter().map(|p| (p.name.to_string(), p.default.to_string())).collect();
    assert_eq!(
        defaults,
        [("heavy".into(), "0.125".into()), ("decay".into(), "1-8/C".into()), ("diverse".into(), "0".into())]
    );
    let with = |spec: &str| {
        let mut p = r.create(&spec.parse().unwrap(), &ctx(0, 1, Some(16))).unwrap();
        let got = run(p.as_mut(), 2);
        (got, p.save_state())
    };
    assert_eq!(with("h2o-ema"), with("h2o-ema:heavy=0.125,decay=0.5"));
    // C = 16: two heavy hitters, slots 0 and 1 (sums 1.2 and 1.1): slot 2 goes.
    assert_eq!(with("h2o-ema").0, vec![2]);
    let err = |s: &str| r.create(&s.parse().unwrap(), &ctx(0, 1, Some(8))).err().unwrap().to_string();
    assert!(err("h2o-ema:heavy=2").contains("[0, 1]"));
    assert!(err("h2o-ema:decay=1").contains("[0, 1)"));
    assert!(err("h2o-ema:diverse=-0.5").contains("[0, 1]"));
}

#[test]
fn h2o_ema_diverse_keeps_the_most_distinct_keys_among_the_rest() {
    // keydiff's keys (1,0), (0,1), (2,0), (1,1): similarity to the mean key 0.846, 0.533, 0.846,
    // 0.975. Four new entries, one row (0.4, 0.1, 0.3, 0.2): sums and moving averages both equal it.
    let keys = [1.0, 0.0, 0.0, 1.0, 2.0, 0.0, 1.0, 1.0];
    let o = Obs::new(&[0, 1, 2, 3], &[0, 1, 2, 3]).keys(1, 2, &keys).probs(1, &[&[0.4, 0.1, 0.3, 0.2]]);
    // Budget 2, one heavy hitter (slot 0): without diverse the lowest averages go (slots 1, 3).
    assert_eq!(evicted(&mut H2oEma::new(1, 0.5), &o, 2), vec![1, 3]);
    // One diverse entry: slot 1, the most distinct key of slots 1-3, stays; slots 2 and 3 go.
    let mut p = H2oEma::new(1, 0.5).with_diverse(1);
    assert!(p.needs().keys && !H2oEma::new(1, 0.5).needs().keys);
    assert_eq!(evicted(&mut p, &o, 2), vec![2, 3]);
    // Heavy and diverse together never exceed the budget: with budget 1 only the heavy hitter stays.
    assert_eq!(evicted(&mut H2oEma::new(1, 0.5).with_diverse(1), &o, 1), vec![1, 2, 3]);
    // Through the registry: C = 4 gives floor(0.25 x 4) = 1 of each.
    let r = registry();
    let mut q = r.create(&"h2o-ema:heavy=0.25,diverse=0.25".parse().unwrap(), &ctx(0, 1, Some(4))).unwrap();
    assert_eq!(evicted(q.as_mut(), &o, 2), vec![2, 3]);
}

/// Parameters are typed where they are declared: the registry refuses a value of the wrong type
/// or outside its range when the spec is resolved, before any instance (or state) exists, and the
/// listing shows each parameter's type and range.
#[test]
fn parameters_are_typed_and_checked_when_the_spec_is_resolved() {
    let r = registry();
    let refused = |s: &str| r.check_params(&s.parse().unwrap()).expect_err(s).to_string();
    assert_eq!(refused("h2o:recent=2"), "policy `h2o`: `recent` must be in [0, 1], got 2");
    assert_eq!(refused("heavy-hitter:recent=x"), "policy `h2o`: `recent` must be a finite number, got `x`");
    assert_eq!(refused("tova-ema:decay=1"), "policy `tova-ema`: `decay` must be in [0, 1), got 1");
    assert_eq!(refused("snapkv:window=0"), "policy `snapkv`: `window` must be at least 1, got 0");
    assert_eq!(refused("pyramid:beta=0.5"), "policy `pyramid`: `beta` must be at least 1, got 0.5");
    assert_eq!(refused("random:seed=-1"), "policy `random`: `seed` must be a non-negative integer, got `-1`");
    assert_eq!(refused("sinks:sinks=1.5"), "policy `window+i`: `sinks` must be a non-negative integer, got `1.5`");
    for ok in ["h2o:recent=1", "h2o:recent=0", "tova-ema:decay=0", "h2o-ema:diverse=0.5", "pyramid:base=h2o"] {
        r.check_params(&ok.parse().unwrap()).unwrap_or_else(|e| panic!("{ok}: {e}"));
    }
    // Every built-in parameter has a type; a listed default is either a value of that type within
    // its range, or a rule computed from the context.
    for e in r.entries() {
        for p in &e.params {
            assert_ne!(p.ty, msrnn_policy_api::ParamType::Any, "{}: `{}` has no type", e.name, p.name);
            assert!(p.check(&p.default).is_ok() || p.default.contains('/'), "{}: default {p}", e.name);
        }
    }
    let h2o = &r.get("h2o").unwrap().params[0];
    assert_eq!(h2o.to_string(), "recent=0.5  fraction of C kept as a recency window (rounded down) (number in [0, 1])");
}

//! Each policy's rule on small hand-computed cases.

use msrnn_core::{Context, Decision, Observation, Policy, PolicySpec};
use msrnn_policies::{registry, H2o, Random, Tova, Window, WindowSinks};

struct Obs {
    positions: Vec<u64>,
    live: Vec<bool>,
    new_slots: Vec<usize>,
    num_heads: usize,
    rows: usize,
    probs: Vec<f32>,
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
        }
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
            num_kv_heads: 1,
            head_dim: 0,
            rows: self.rows,
            probs: &self.probs,
            key_norms: &[],
            keys: &[],
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
    for n in ["full", "h2o", "random", "tova", "window", "window+i"] {
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

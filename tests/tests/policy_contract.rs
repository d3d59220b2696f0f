//! The policy contract's additions, through the real state: the keys a policy asks for are the keys
//! as stored (with the head size), and a policy instance may ask for its own layer's capacity, the
//! state sizing each layer by it within a total of `layers x C`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use candle_core::{DType, Device, Tensor};
use msrnn_core::policy::Result;
use msrnn_core::{attend, Capacity, Decision, LayerState, MsrnnState, Needs, Observation, Policy, StateConfig};
use msrnn_tests::Rng;

/// One live slot as a policy saw it: position, key per KV head, key norm per KV head.
type Seen = (u64, Vec<Vec<f32>>, Vec<f32>);

/// Records, at every step, every live slot it saw.
#[derive(Default)]
struct KeySpy {
    log: Arc<Mutex<Vec<Vec<Seen>>>>,
    head_dims: Arc<Mutex<Vec<usize>>>,
}

impl Policy for KeySpy {
    fn name(&self) -> &str {
        "key-spy"
    }
    fn needs(&self) -> Needs {
        Needs { keys: true, key_norms: true, every_step: true, ..Needs::default() }
    }
    fn step(&mut self, obs: &Observation<'_>, budget: usize) -> Result<Decision> {
        assert_eq!(obs.keys.len(), obs.num_kv_heads * obs.num_slots * obs.head_dim);
        self.head_dims.lock().unwrap().push(obs.head_dim);
        let n = obs.num_slots;
        let seen = obs
            .live_slots()
            .map(|s| {
                let keys = (0..obs.num_kv_heads).map(|h| obs.key(h, s).to_vec()).collect();
                let norms = (0..obs.num_kv_heads).map(|h| obs.key_norms[h * n + s]).collect();
                (obs.positions[s], keys, norms)
            })
            .collect();
        self.log.lock().unwrap().push(seen);
        // the oldest go
        let mut old: Vec<usize> = obs.live_slots().collect();
        old.sort_by_key(|&s| obs.positions[s]);
        old.truncate(obs.excess(budget));
        Ok(Decision::Evict(old))
    }
}

/// Feeds chunks of random keys into one layer of `dtype` and checks every observation against what
/// was written (rounded to the state's dtype, as stored).
fn keys_match_what_was_written(dtype: DType) {
    let (heads, kv, hd, cap) = (4, 2, 3, 5);
    let dev = Device::Cpu;
    let mut spy = KeySpy::default();
    let (log, dims) = (spy.log.clone(), spy.head_dims.clone());
    let mut layer = LayerState::new(kv, hd, dtype, &dev, Capacity::Bounded(cap), None, 4).unwrap();
    let mut rng = Rng::new(11);
    let mut written: HashMap<u64, Vec<Vec<f32>>> = HashMap::new();
    let mut next = 0u64;
    for t in [3usize, 1, 4, 2, 1, 1, 4] {
        let q = Tensor::from_vec(rng.vec(heads * t * hd, -1.0, 1.0), (heads, t, hd), &dev).unwrap();
        let k = Tensor::from_vec(rng.vec(kv * t * hd, -2.0, 2.0), (kv, t, hd), &dev).unwrap();
        // What the state stores: the keys rounded to its dtype.
        let stored: Vec<Vec<Vec<f32>>> =
            k.to_dtype(dtype).unwrap().to_dtype(DType::F32).unwrap().to_vec3::<f32>().unwrap();
        for (i, p) in (next..next + t as u64).enumerate() {
            written.insert(p, stored.iter().map(|head| head[i].clone()).collect());
        }
        let pos: Vec<u64> = (next..next + t as u64).collect();
        next += t as u64;
        let (q, k) = (q.to_dtype(dtype).unwrap(), k.to_dtype(dtype).unwrap());
        attend(&q, &k, &k, &pos, &mut layer, &mut spy, 0.5).unwrap();
    }
    let log = log.lock().unwrap();
    assert_eq!(log.len(), 7);
    assert!(dims.lock().unwrap().iter().all(|&d| d == hd));
    for step in log.iter() {
        for (p, keys, norms) in step {
            assert_eq!(keys, &written[p], "{dtype:?}: keys of position {p}");
            for (key, &norm) in keys.iter().zip(norms) {
                let n = key.iter().map(|x| x * x).sum::<f32>().sqrt();
                assert!((n - norm).abs() <= 1e-2 * (1.0 + norm), "{dtype:?}: norm {norm} vs key {key:?}");
            }
        }
    }
}

#[test]
fn keys_in_the_observation_are_the_stored_keys() {
    keys_match_what_was_written(DType::F32);
    keys_match_what_was_written(DType::F16);
}

/// Wraps a policy and asks for another capacity for its layer, as a per-layer budget policy would.
struct Budgeted {
    inner: Box<dyn Policy>,
    capacity: Option<usize>,
}

impl Policy for Budgeted {
    fn name(&self) -> &str {
        "budgeted"
    }
    fn needs(&self) -> Needs {
        self.inner.needs()
    }
    fn capacity(&self) -> Option<usize> {
        self.capacity
    }
    fn step(&mut self, obs: &Observation<'_>, budget: usize) -> Result<Decision> {
        self.inner.step(obs, budget)
    }
}

fn config(layers: usize, capacity: Capacity) -> StateConfig {
    StateConfig { max_chunk: 3, ..StateConfig::new(layers, 1, 2, capacity) }
}

fn budgeted(asks: &[Option<usize>], capacity: Capacity) -> Vec<Box<dyn Policy>> {
    let reg = msrnn_policies::registry();
    let policies = reg.create_layers(&"window".parse().unwrap(), asks.len(), 1, 1, 2, capacity).unwrap();
    policies.into_iter().zip(asks).map(|(inner, &capacity)| Box::new(Budgeted { inner, capacity }) as _).collect()
}

#[test]
fn per_layer_capacities_size_the_layers_within_layers_times_c() {
    // C = 6 over 4 layers: 8 + 4 + 6 + 6 = 24 = 4 x 6, accepted.
    let cap = Capacity::Bounded(6);
    let asks = [Some(8), Some(4), None, Some(6)];
    let mut state = MsrnnState::new(&config(4, cap), budgeted(&asks, cap)).unwrap();
    let caps: Vec<Capacity> = (0..4).map(|i| state.layer(i).capacity()).collect();
    assert_eq!(caps, [8, 4, 6, 6].map(Capacity::Bounded));
    assert_eq!(state.capacity(), cap, "the run's C stays what it was");
    let dev = Device::Cpu;
    let x = Tensor::ones((1, 3, 2), DType::F32, &dev).unwrap();
    for step in 0..5u64 {
        let pos: Vec<u64> = (3 * step..3 * step + 3).collect();
        for i in 0..4 {
            state.attend(i, &x, &x, &x, &pos, 1.0).unwrap();
        }
        state.advance(3);
    }
    let live: Vec<usize> = (0..4).map(|i| state.layer(i).live_count()).collect();
    assert_eq!(live, [8, 4, 6, 6], "each layer keeps what it asked for");
    assert_eq!(state.layer(1).live_positions(), vec![11, 12, 13, 14]);

    let refused = |asks: &[Option<usize>], capacity: Capacity| {
        MsrnnState::new(&config(asks.len(), capacity), budgeted(asks, capacity)).err().unwrap().to_string()
    };
    let e = refused(&[Some(9), Some(4), None, Some(6)], cap);
    assert_eq!(
        e,
        "invalid capacity: policy `budgeted` asks for 25 tokens over 4 layers ([9, 4, 6, 6]), more than layers x C \
         = 4 x 6 = 24"
    );
    let e = refused(&[None, Some(0)], cap);
    assert!(e.contains("asks for 0 tokens on layer 1; a layer keeps at least 1"), "{e}");
    let e = refused(&[None, Some(3)], Capacity::Unbounded);
    assert!(e.contains("asks for 3 tokens on layer 1, but the run is unbounded"), "{e}");
}

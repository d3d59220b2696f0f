//! A saved state resumes with exactly the outputs of an uninterrupted run (in every KV format), and
//! a state from another model, policy, capacity, position mode or KV format is refused.

use candle_core::{DType, Device, Tensor};
use msrnn_core::{Capacity, KvFormat, MsrnnState, PolicySpec, Positions, RopeSpec, RopeStyle, StateConfig};

fn cfg(capacity: Capacity, positions: Positions) -> StateConfig {
    StateConfig {
        num_layers: 2,
        num_kv_heads: 2,
        head_dim: 4,
        dtype: DType::F32,
        device: Device::Cpu,
        capacity,
        windows: vec![None, Some(5)],
        ropes: vec![
            Some(RopeSpec { theta: 100.0, style: RopeStyle::Interleaved }),
            Some(RopeSpec { theta: 1000.0, style: RopeStyle::HalfSplit }),
        ],
        positions,
        max_chunk: 3,
        kv: KvFormat::F32,
    }
}

fn state_in(spec: &PolicySpec, capacity: Capacity, positions: Positions) -> MsrnnState {
    let r = msrnn_policies::registry();
    MsrnnState::new(&cfg(capacity, positions), r.create_layers(spec, 2, 4, 2, 4, capacity).unwrap()).unwrap()
}

/// Feeds `steps` chunks of pseudo-random q/k/v (seeded by step index) and returns every output.
fn feed(s: &mut MsrnnState, steps: std::ops::Range<usize>) -> Vec<Vec<f32>> {
    let dev = Device::Cpu;
    let mut outs = Vec::new();
    for step in steps {
        let t = 1 + step % 3;
        let mk = |h: usize, salt: u64| {
            let v: Vec<f32> = (0..h * t * 4)
                .map(|i| (((i as u64 + 1) * 2654435761 + step as u64 * 97 + salt) % 1000) as f32 / 250.0 - 2.0)
                .collect();
            Tensor::from_vec(v, (h, t, 4), &dev).unwrap()
        };
        let pos = s.next_positions(t);
        for layer in 0..2 {
            let (q, k, v) = (mk(4, 1 + layer as u64), mk(2, 2), mk(2, 3));
            let o = s.attend(layer, &q, &k, &v, &pos, 0.5).unwrap();
            outs.push(o.flatten_all().unwrap().to_vec1::<f32>().unwrap());
        }
        s.advance(t);
    }
    outs
}

#[test]
fn resuming_a_saved_state_gives_identical_outputs() {
    let dir = std::env::temp_dir().join(format!("msrnn-state-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cases = [
        ("h2o:recent=0.25", Positions::Absolute),
        ("random:seed=5", Positions::Absolute),
        ("tova", Positions::Absolute),
        ("window+i:sinks=2", Positions::Absolute),
        ("tova", Positions::Cache),
        ("window+i:sinks=2", Positions::Cache),
    ];
    for (spec, positions) in cases {
        let spec: PolicySpec = spec.parse().unwrap();
        let cap = Capacity::Bounded(6);
        let state = |spec: &PolicySpec, cap| state_in(spec, cap, positions);
        let mut a = state(&spec, cap);
        feed(&mut a, 0..12);
        let path = dir.join("s.safetensors");
        a.save(&path, "tiny-model", &spec).unwrap();
        let uninterrupted = feed(&mut a, 12..30);

        let mut b = state(&spec, cap);
        let h = b.load(&path, "tiny-model", &spec).unwrap();
        assert_eq!(h.tokens_seen, a.tokens_seen() - feed_len(12..30));
        let resumed = feed(&mut b, 12..30);
        assert_eq!(uninterrupted, resumed, "{spec}: resumed outputs differ");
        assert_eq!(a.tokens_seen(), b.tokens_seen());

        // Refusals name what differs.
        let e = state(&spec, cap).load(&path, "other-model", &spec).unwrap_err().to_string();
        assert!(e.contains("model `tiny-model`") && e.contains("other-model"), "{e}");
        let other: PolicySpec = "window".parse().unwrap();
        let e = state(&other, cap).load(&path, "tiny-model", &other).unwrap_err().to_string();
        assert!(e.contains("policy"), "{e}");
        let e = state(&spec, Capacity::Bounded(7)).load(&path, "tiny-model", &spec).unwrap_err().to_string();
        assert!(e.contains("capacity `6`"), "{e}");
        let other = if positions == Positions::Cache { Positions::Absolute } else { Positions::Cache };
        let e = state_in(&spec, cap, other).load(&path, "tiny-model", &spec).unwrap_err().to_string();
        assert!(e.contains(&format!("positions `{positions}`")), "{e}");
    }
    let junk = dir.join("junk.safetensors");
    std::fs::write(&junk, b"not a state").unwrap();
    assert!(MsrnnState::read_header(&junk).unwrap_err().to_string().contains("not a state file"));
    std::fs::remove_dir_all(&dir).ok();
}

fn feed_len(r: std::ops::Range<usize>) -> u64 {
    r.map(|s| 1 + s as u64 % 3).sum()
}

#[test]
fn a_cloned_state_continues_exactly_like_the_original() {
    for (spec, positions) in [("h2o:recent=0.25", Positions::Absolute), ("tova", Positions::Cache)] {
        let spec: PolicySpec = spec.parse().unwrap();
        let cap = Capacity::Bounded(6);
        let mut a = state_in(&spec, cap, positions);
        feed(&mut a, 0..12);
        let r = msrnn_policies::registry();
        let mut b = a.clone_with(r.create_layers(&spec, 2, 4, 2, 4, cap).unwrap()).unwrap();
        assert_eq!(feed(&mut a, 12..30), feed(&mut b, 12..30), "{spec}");
        let other: PolicySpec = "window".parse().unwrap();
        assert!(a.clone_with(r.create_layers(&other, 2, 4, 2, 4, cap).unwrap()).is_err());
    }
}

#[test]
fn every_kv_format_resumes_exactly_and_a_file_in_another_is_refused() {
    let dir = std::env::temp_dir().join(format!("msrnn-kv-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cap = Capacity::Bounded(6);
    // keydiff reads the keys themselves: it gets them dequantized.
    for spec in ["tova", "keydiff"] {
        let spec: PolicySpec = spec.parse().unwrap();
        let state = |kv: KvFormat| {
            let r = msrnn_policies::registry();
            let c = StateConfig { kv, ..cfg(cap, Positions::Absolute) };
            MsrnnState::new(&c, r.create_layers(&spec, 2, 4, 2, 4, cap).unwrap()).unwrap()
        };
        let mut exact = state(KvFormat::F32);
        let want = feed(&mut exact, 0..12);
        for kv in KvFormat::ALL {
            let mut a = state(kv);
            assert_eq!(a.kv_format(), kv);
            let got = feed(&mut a, 0..12);
            // head size 4: f16 rows are 8 bytes, q8_0 rows 4 codes and one 2-byte scale.
            let row = [16, 8, 6][kv as usize];
            assert_eq!(a.live_kv_bytes(), exact.live_kv_bytes() * row / 16, "{kv}");
            let worst =
                got.iter().flatten().zip(want.iter().flatten()).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max);
            assert!(worst < [1e-9, 1e-2, 0.1][kv as usize], "{spec} {kv}: outputs off f32 by {worst}");
            let path = dir.join(format!("{kv}.safetensors"));
            a.save(&path, "tiny-model", &spec).unwrap();
            assert_eq!(MsrnnState::read_header(&path).unwrap().kv, kv);
            let uninterrupted = feed(&mut a, 12..30);
            let mut b = state(kv);
            b.load(&path, "tiny-model", &spec).unwrap();
            assert_eq!(feed(&mut b, 12..30), uninterrupted, "{spec} {kv}: resumed outputs differ");
            for other in KvFormat::ALL.into_iter().filter(|&o| o != kv) {
                let e = state(other).load(&path, "tiny-model", &spec).unwrap_err().to_string();
                assert!(e.contains(&format!("KV format `{kv}`, but this run uses `{other}`")), "{e}");
            }
        }
    }
    std::fs::remove_dir_all(&dir).ok();
}

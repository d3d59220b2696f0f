use super::*;

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn sym(&mut self) -> f32 {
        ((self.next() >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0) as f32
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// A case: shapes, a slot layout with dead slots and shuffled positions, a chunk of queries.
struct Case {
    heads: usize,
    kv: usize,
    d: usize,
    slots: usize,
    hi: usize,
    q: Vec<f32>,
    k: Vec<f32>,
    kb: Vec<f32>,
    v: Vec<f32>,
    slot_pos: Vec<u64>,
    live: Vec<bool>,
    q_pos: Vec<u64>,
    window: Option<u64>,
}

fn case(rng: &mut Rng, heads: usize, kv: usize, d: usize, hi: usize, t: usize, window: Option<u64>) -> Case {
    let slots = (hi + 3).next_multiple_of(KEY_BLOCK);
    // Positions: a shuffled run ending with the chunk's own tokens (which are live).
    let base = 100 + rng.below(50);
    let mut slot_pos: Vec<u64> = (0..hi as u64).map(|i| base + i).collect();
    for i in (1..hi).rev() {
        slot_pos.swap(i, rng.below(i as u64 + 1) as usize);
    }
    slot_pos.resize(slots, 0);
    let top = base + hi as u64 - 1;
    let q_pos: Vec<u64> = (0..t as u64).map(|i| top - (t as u64 - 1) + i).collect();
    let holes = hi % 2 == 1;
    let mut live: Vec<bool> = (0..slots).map(|s| s < hi && (!holes || rng.below(5) != 0)).collect();
    for (s, &p) in slot_pos.iter().enumerate().take(hi) {
        if q_pos.contains(&p) {
            live[s] = true;
        }
    }
    let n = |rng: &mut Rng, len: usize| (0..len).map(|_| rng.sym() * 2.0).collect::<Vec<f32>>();
    let k = n(rng, kv * slots * d);
    let mut kb = vec![f32::NAN; k.len()];
    for g in 0..kv {
        for s in 0..slots {
            write_key(&mut kb, slots, g, s, &k[(g * slots + s) * d..][..d]);
        }
    }
    let mut back = vec![0f32; d];
    read_key(&kb, slots, kv - 1, slots - 1, &mut back);
    assert_eq!(back, k[((kv - 1) * slots + slots - 1) * d..][..d]);
    Case {
        heads,
        kv,
        d,
        slots,
        hi,
        q: n(rng, t * heads * d + 5),
        k,
        kb,
        v: n(rng, kv * slots * d),
        slot_pos,
        live,
        q_pos,
        window,
    }
}

fn step(c: &Case) -> Step<'_> {
    Step {
        q: &c.q[5..],
        q_stride: c.heads * c.d,
        q_pos: &c.q_pos,
        k: KvSlice::F32(&c.kb),
        v: KvSlice::F32(&c.v),
        slots: c.slots,
        hi: c.hi,
        slot_pos: &c.slot_pos,
        live: &c.live,
        window: c.window,
        num_heads: c.heads,
        num_kv_heads: c.kv,
        head_dim: c.d,
        scale: 1.0 / (c.d as f32).sqrt(),
        key_angles: None,
    }
}

/// Naive f64 attention: per row and head, softmax over the visible slots, weighted values.
fn reference(c: &Case) -> (Vec<f64>, Vec<f64>) {
    let (t, h, d) = (c.q_pos.len(), c.heads, c.d);
    let group = h / c.kv;
    let mut out = vec![0f64; t * h * d];
    let mut probs = vec![0f64; t * h * c.hi];
    let q = &c.q[5..];
    for r in 0..t {
        for head in 0..h {
            let g = head / group;
            let vis: Vec<usize> = (0..c.hi)
                .filter(|&s| {
                    let sp = c.slot_pos[s];
                    c.live[s] && sp <= c.q_pos[r] && c.window.is_none_or(|w| c.q_pos[r] - sp < w)
                })
                .collect();
            let sc: Vec<f64> = vis
                .iter()
                .map(|&s| {
                    let dot: f64 = (0..d)
                        .map(|i| q[r * h * d + head * d + i] as f64 * c.k[(g * c.slots + s) * d + i] as f64)
                        .sum();
                    dot / (d as f64).sqrt()
                })
                .collect();
            let m = sc.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let e: Vec<f64> = sc.iter().map(|x| (x - m).exp()).collect();
            let z: f64 = e.iter().sum();
            for (&s, &w) in vis.iter().zip(&e) {
                let p = w / z;
                probs[(r * h + head) * c.hi + s] = p;
                for i in 0..d {
                    out[(r * h + head) * d + i] += p * c.v[(g * c.slots + s) * d + i] as f64;
                }
            }
        }
    }
    (out, probs)
}

fn run_case(isa: Isa, c: &Case, prob_rows: usize, threads: bool) -> (Vec<f32>, Vec<f32>) {
    let t = c.q_pos.len();
    let stride = c.heads * c.d + 3;
    let mut out = vec![f32::NAN; t * stride];
    let mut probs = vec![f32::NAN; prob_rows * c.heads * c.hi];
    let s = step(c);
    let sink = Sink { out: &mut out, out_stride: stride, probs: &mut probs, prob_rows };
    if threads {
        let par = |n: usize, f: &(dyn Fn(usize) + Sync)| {
            std::thread::scope(|sc| {
                for i in (0..n).rev() {
                    sc.spawn(move || f(i));
                }
            })
        };
        attention_with(isa, &s, sink, &par).unwrap();
    } else {
        attention_with(isa, &s, sink, &|n, f| (0..n).for_each(f)).unwrap();
    }
    let out: Vec<f32> = out.chunks(stride).flat_map(|r| r[..c.heads * c.d].to_vec()).collect();
    (out, probs)
}

#[test]
fn every_variant_matches_the_reference_and_the_portable_code_exactly() {
    let mut rng = Rng(42);
    let shapes = [
        // heads, kv, d, hi, t, window
        (9, 3, 64, 37, 1, None),
        (9, 3, 64, 37, 7, None),
        (4, 1, 256, 19, 3, Some(8)),
        (2, 2, 4, 5, 1, None),
        (6, 2, 12, 33, 13, Some(5)),
        (1, 1, 17, 1, 1, None),
        (8, 4, 8, 70, 16, None),
        // even hi: no dead slots, so decode rows take the unmasked path
        (9, 3, 64, 48, 1, None),
        (9, 3, 64, 130, 1, None),
        (4, 1, 256, 34, 2, None),
        (3, 3, 128, 64, 9, Some(40)),
        // one block of rows over more than SPLIT slots: split ranges, merged
        (9, 3, 64, 600, 1, None),
        (9, 3, 64, 777, 3, None),
        (9, 3, 64, 1024, 1, None),
        // a window so narrow that whole ranges see nothing
        (4, 1, 17, 530, 2, Some(5)),
        (6, 2, 12, 513, 8, Some(300)),
    ];
    for (i, &(h, g, d, hi, t, w)) in shapes.iter().enumerate() {
        let c = case(&mut rng, h, g, d, hi, t, w);
        let (want_out, want_probs) = reference(&c);
        let prob_rows = [0, 1, t][i % 3];
        let simd = Isa::supported().into_iter().filter(|&i| i != Isa::Scalar).collect::<Vec<_>>();
        let base = *simd.first().unwrap_or(&Isa::Scalar);
        let (base_out, base_probs) = run_case(base, &c, prob_rows, false);
        for isa in Isa::supported() {
            let (out, probs) = run_case(isa, &c, prob_rows, false);
            for (a, b) in out.iter().zip(&want_out) {
                assert!((*a as f64 - b).abs() < 1e-5 * (1.0 + b.abs()), "{isa:?} shape {i}: {a} vs {b}");
            }
            let first = (t - prob_rows) * h * hi;
            for (a, b) in probs.iter().zip(&want_probs[first..]) {
                assert!((*a as f64 - b).abs() < 1e-6, "{isa:?} shape {i}: prob {a} vs {b}");
            }
        }
        for &isa in &simd {
            for threads in [false, true] {
                let (out, probs) = run_case(isa, &c, prob_rows, threads);
                assert_eq!(out, base_out, "{isa:?} shape {i}: output differs from {base:?}");
                assert_eq!(probs, base_probs, "{isa:?} shape {i}: probabilities differ");
            }
        }
        for (a, b) in base_out.iter().zip(&want_out) {
            assert!((*a as f64 - b).abs() < 1e-5 * (1.0 + b.abs()), "shape {i}: {a} vs {b}");
        }
        let first = (t - prob_rows) * h * hi;
        for (a, b) in base_probs.iter().zip(&want_probs[first..]) {
            assert!((*a as f64 - b).abs() < 1e-6, "shape {i}: prob {a} vs {b}");
        }
    }
}

#[test]
fn keys_rotated_per_block_score_as_keys_rotated_beforehand() {
    use crate::rope::{block_angles, rotate_keys_blocked, RopeStyle};
    let mut rng = Rng(7);
    // heads, kv, d, hi, t: decode and chunks, a ragged last block, split slot ranges
    let shapes = [(9, 3, 64, 37, 1), (4, 2, 12, 70, 9), (6, 3, 8, 600, 1), (2, 1, 34, 530, 3)];
    for (i, &(h, g, d, hi, t)) in shapes.iter().enumerate() {
        let c = case(&mut rng, h, g, d, hi, t, None);
        let half = d / 2;
        let rows = hi + 5;
        let cos: Vec<f32> = (0..rows * half).map(|x| (x as f32 * 0.37).cos()).collect();
        let sin: Vec<f32> = (0..rows * half).map(|x| (x as f32 * 0.37).sin()).collect();
        let angle_row: Vec<u32> = (0..hi as u32).map(|s| (s * 13) % rows as u32).collect();
        for style in [RopeStyle::Interleaved, RopeStyle::HalfSplit] {
            let mut pre = c.kb.clone();
            rotate_keys_blocked(&c.kb, &mut pre, c.slots, hi, g, d, &angle_row, &cos, &sin, style);
            let (mut ct, mut st) = (Vec::new(), Vec::new());
            block_angles(Isa::Scalar, &angle_row, hi, half, &cos, &sin, &mut ct, &mut st);
            for isa in Isa::supported() {
                let run = |keys: &[f32], angles: Option<KeyAngles<'_>>| {
                    let mut out = vec![0f32; t * h * d];
                    let mut probs = vec![0f32; h * hi];
                    let s = Step { k: KvSlice::F32(keys), key_angles: angles, ..step(&c) };
                    let sink = Sink { out: &mut out, out_stride: h * d, probs: &mut probs, prob_rows: 1 };
                    attention_with(isa, &s, sink, &|n, f| (0..n).for_each(f)).unwrap();
                    (out, probs)
                };
                let want = run(&pre, None);
                let got = run(&c.kb, Some(KeyAngles { cos: &ct, sin: &st, style }));
                assert!(got == want, "{isa:?} {style:?} shape {i}: differs from keys rotated beforehand");
            }
        }
    }
}

/// `c`'s keys and values stored in `format`, and the same values dequantized into f32 buffers.
fn stored(c: &Case, format: crate::KvFormat) -> [crate::KvBuf; 4] {
    use crate::KvBuf;
    let (g, n, d) = (c.kv, c.slots, c.d);
    let (mut k, mut v) = (KvBuf::zeros(format, g, n, d).unwrap(), KvBuf::zeros(format, g, n, d).unwrap());
    let (mut kf, mut vf) = (vec![0f32; g * n * d], vec![0f32; g * n * d]);
    let mut row = vec![0f32; d];
    for h in 0..g {
        for s in 0..n {
            let at = (h * n + s) * d;
            k.write_key(n, h, s, &c.k[at..][..d]);
            v.write_value(n, h, s, &c.v[at..][..d]);
            k.read_key(n, h, s, &mut row);
            write_key(&mut kf, n, h, s, &row);
            v.read_value(n, h, s, &mut vf[at..][..d]);
        }
    }
    [k, v, KvBuf::F32(kf), KvBuf::F32(vf)]
}

#[test]
fn every_kv_format_scores_exactly_as_its_values_dequantized_to_f32() {
    use crate::kv::KvFormat;
    let mut rng = Rng(11);
    // heads, kv, d, hi, t, window: decode and chunks, head sizes off the 16/32 grid (q8_0's last
    // block ragged), SmolLM2's 64 and Gemma's 256, split slot ranges, a model window.
    let shapes = [
        (9, 3, 64, 37, 1, None),
        (9, 3, 64, 48, 1, None),
        (4, 1, 256, 19, 3, Some(8)),
        (6, 2, 12, 33, 13, Some(5)),
        (1, 1, 17, 1, 1, None),
        (2, 2, 40, 70, 9, None),
        (8, 4, 96, 21, 2, None),
        (9, 3, 64, 600, 1, None),
        (4, 2, 48, 530, 3, Some(300)),
    ];
    for (i, &(h, g, d, hi, t, w)) in shapes.iter().enumerate() {
        let mut c = case(&mut rng, h, g, d, hi, t, w);
        // Awkward blocks: all zero (scale 0), one spike, tiny values.
        c.k[..d.min(32)].fill(0.0);
        c.v[d..2 * d].iter_mut().for_each(|x| *x *= 1e-4);
        c.k[2 * d + 3] = 8.0;
        for format in [KvFormat::F16, KvFormat::Q8_0] {
            let [k, v, kf, vf] = stored(&c, format);
            let prob_rows = [1, t, 0][i % 3];
            let run = |isa: Isa, k: &crate::KvBuf, v: &crate::KvBuf, angles: Option<KeyAngles<'_>>| {
                let mut out = vec![0f32; t * h * d];
                let mut probs = vec![0f32; prob_rows * h * hi];
                let s = Step { k: k.view(), v: v.view(), key_angles: angles, ..step(&c) };
                let sink = Sink { out: &mut out, out_stride: h * d, probs: &mut probs, prob_rows };
                attention_with(isa, &s, sink, &|n, f| (0..n).for_each(f)).unwrap();
                (out, probs)
            };
            // Cache mode: keys rotated block by block as they are read.
            let half = d / 2;
            let cos: Vec<f32> = (0..(hi + 1) * half).map(|x| (x as f32 * 0.31).cos()).collect();
            let sin: Vec<f32> = (0..(hi + 1) * half).map(|x| (x as f32 * 0.31).sin()).collect();
            let rank: Vec<u32> = (0..hi as u32).rev().collect();
            let (mut ct, mut st) = (Vec::new(), Vec::new());
            crate::rope::block_angles(Isa::Scalar, &rank, hi, half, &cos, &sin, &mut ct, &mut st);
            let angles = (d % 2 == 0).then_some(KeyAngles { cos: &ct, sin: &st, style: RopeStyle::HalfSplit });
            let mut simd = Vec::new();
            for isa in Isa::supported() {
                for a in [None, angles] {
                    let got = run(isa, &k, &v, a);
                    assert!(got == run(isa, &kf, &vf, a), "{isa:?} {format} shape {i}: differs from f32");
                    if isa != Isa::Scalar {
                        simd.push(got);
                    }
                }
            }
            for pair in simd.chunks(2).collect::<Vec<_>>().windows(2) {
                assert!(pair[0] == pair[1], "{format} shape {i}: SIMD variants differ");
            }
            // And the stored values are the format's rounding of the originals.
            let (want, _) = reference(&c);
            let (got, _) = run(Isa::Scalar, &k, &v, None);
            let tol = if format == KvFormat::F16 { 2e-2 } else { 0.1 };
            for (a, b) in got.iter().zip(&want) {
                assert!((*a as f64 - b).abs() < tol * (1.0 + b.abs()), "{format} shape {i}: {a} vs {b}");
            }
        }
    }
}

#[test]
fn keys_and_values_in_different_formats_are_refused() {
    let mut rng = Rng(3);
    let c = case(&mut rng, 2, 1, 32, 5, 1, None);
    let [k, ..] = stored(&c, crate::KvFormat::F16);
    let s = Step { k: k.view(), ..step(&c) };
    let mut out = vec![0f32; 64];
    let e = attention(&s, Sink { out: &mut out, out_stride: 64, probs: &mut [], prob_rows: 0 }).unwrap_err();
    assert!(e.contains("keys in f16 but values in f32"), "{e}");
}

#[test]
fn bad_shapes_are_errors() {
    let mut rng = Rng(1);
    let c = case(&mut rng, 9, 3, 64, 10, 2, None);
    let mut s = step(&c);
    s.num_kv_heads = 4;
    let mut out = vec![0f32; 2 * 576];
    let e = attention(&s, Sink { out: &mut out, out_stride: 576, probs: &mut [], prob_rows: 0 });
    assert!(e.unwrap_err().contains("cannot share"));
    let s = step(&c);
    let e = attention(&s, Sink { out: &mut out[..10], out_stride: 576, probs: &mut [], prob_rows: 0 });
    assert!(e.unwrap_err().contains("output"));
    let e = attention(&s, Sink { out: &mut out, out_stride: 576, probs: &mut [], prob_rows: 1 });
    assert!(e.unwrap_err().contains("probability"));
}

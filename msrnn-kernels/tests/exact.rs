//! Every instruction-set variant against plain references, on awkward sizes.
//!
//! References: (1) the exact integer-block formula written straight from the GGUF bytes (bit-equal expected, since
//! every variant promises that sequence), (2) an f64 dot product of the dequantized weights with the unquantized
//! inputs, within the bound that 8-bit activation blocks allow.

use half::f16;
use msrnn_kernels::act::QActs;
use msrnn_kernels::format::{self, BLOCK};
use msrnn_kernels::{pool, Format, Isa, QMatrix};
use msrnn_tests::Rng;

const IN_DIMS: [usize; 3] = [32, 96, 608];
const OUT_DIMS: [usize; 5] = [1, 7, 13, 33, 200];
const ROWS: [usize; 7] = [1, 2, 7, 13, 64, 65, 70];

/// Random GGUF blocks: every code value possible (Q8_0 includes -128, Q6_K scales of either sign), block scales of
/// either sign for the symmetric formats, every 6-bit sub-block scale and min.
fn random_ggml(rng: &mut Rng, format: Format, out_dim: usize, in_dim: usize) -> Vec<u8> {
    let n = out_dim * in_dim / format.block_weights();
    let mut bytes = Vec::with_capacity(n * format.block_bytes());
    let f16b = |v: f32| f16::from_f32(v).to_le_bytes();
    for _ in 0..n {
        let mut b: Vec<u8> = (0..format.block_bytes()).map(|_| rng.below(256) as u8).collect();
        match format {
            Format::Q8_0 | Format::Q4_0 | Format::Q5_0 => b[0..2].copy_from_slice(&f16b(rng.uniform(-0.02, 0.02))),
            Format::Q4_1 | Format::Q5_1 => {
                b[0..2].copy_from_slice(&f16b(rng.uniform(0.0, 0.02)));
                b[2..4].copy_from_slice(&f16b(rng.uniform(-0.15, 0.0)));
            }
            Format::Q4K | Format::Q5K => {
                b[0..2].copy_from_slice(&f16b(rng.uniform(0.0, 0.002)));
                b[2..4].copy_from_slice(&f16b(rng.uniform(0.0, 0.004)));
            }
            Format::Q6K => b[208..210].copy_from_slice(&f16b(rng.uniform(0.0, 0.0005))),
        }
        bytes.extend_from_slice(&b);
    }
    bytes
}

/// Input widths for a format: awkward numbers of blocks (K-quants: of 256).
fn in_dims(format: Format) -> Vec<usize> {
    if format.is_k() {
        vec![256, 768]
    } else {
        IN_DIMS.to_vec()
    }
}

/// Inputs with the awkward cases mixed in: an all-zero block, a lone spike, large and tiny magnitudes.
fn random_x(rng: &mut Rng, rows: usize, in_dim: usize) -> Vec<f32> {
    let mut x = rng.vec(rows * in_dim, -2.0, 2.0);
    for (r, row) in x.chunks_exact_mut(in_dim).enumerate() {
        match r % 4 {
            0 => row[..BLOCK].fill(0.0),
            1 => {
                row[..BLOCK].fill(1e-3);
                row[5] = 300.0;
            }
            2 => row.iter_mut().for_each(|v| *v *= 1e-4),
            _ => {}
        }
    }
    x
}

/// The exact integer-block formula (the sequence `kernels/mod.rs` documents), straight from the GGUF bytes.
fn reference_exact(format: Format, bytes: &[u8], out_dim: usize, acts: &QActs) -> Vec<f32> {
    let (nb, bb, bw) = (acts.nb, format.block_bytes(), format.block_weights());
    let mut y = vec![0f32; acts.rows * out_dim];
    for r in 0..acts.rows {
        for o in 0..out_dim {
            let mut acc = 0f32;
            for u in 0..nb * BLOCK / bw {
                let x = format::decode_block(format, &bytes[(o * nb * BLOCK / bw + u) * bb..][..bb]);
                let (d, m) = (f16::from_bits(x.d).to_f32(), f16::from_bits(x.m).to_f32());
                for j in 0..bw / BLOCK {
                    let b = u * bw / BLOCK + j;
                    let xq = &acts.qs[r * acts.in_dim + b * BLOCK..][..BLOCK];
                    let q = &x.q[j * BLOCK..][..BLOCK];
                    let (dx, sx) = (acts.d[r * nb + b], acts.s[r * nb + b]);
                    let dot = |lo: usize, hi: usize| (lo..hi).map(|i| q[i] as i32 * xq[i] as i32).sum::<i32>();
                    let sum = |lo: usize, hi: usize| (lo..hi).map(|i| xq[i] as i32).sum::<i32>();
                    match format {
                        Format::Q8_0 | Format::Q4_0 | Format::Q5_0 => {
                            let isum = dot(0, 32) - format.offset() * sum(0, 32);
                            acc = (isum as f32).mul_add(d * dx, acc);
                        }
                        Format::Q4_1 | Format::Q5_1 => {
                            acc = (dot(0, 32) as f32).mul_add(d * dx, acc);
                            acc = m.mul_add(sx, acc);
                        }
                        Format::Q4K | Format::Q5K => {
                            acc = (dot(0, 32) as f32).mul_add((d * x.sc[j] as f32) * dx, acc);
                            acc = (-(m * x.mn[j] as f32)).mul_add(sx, acc);
                        }
                        Format::Q6K => {
                            let (sa, sb) = (x.sc[2 * j] as i8 as i32, x.sc[2 * j + 1] as i8 as i32);
                            let isum = sa * (dot(0, 16) - 32 * sum(0, 16)) + sb * (dot(16, 32) - 32 * sum(16, 32));
                            acc = (isum as f32).mul_add(d * dx, acc);
                        }
                    }
                }
            }
            y[r * out_dim + o] = acc;
        }
    }
    y
}

/// f64 dot products of dequantized weights with the unquantized inputs, and for each output the bound that
/// activation quantization allows: Σ|w| * d_x / 2 per block (plus a little for f32 rounding).
fn reference_f64(w: &[f32], x: &[f32], rows: usize, out_dim: usize, in_dim: usize) -> (Vec<f64>, Vec<f64>) {
    let (mut y, mut bound) = (vec![0f64; rows * out_dim], vec![0f64; rows * out_dim]);
    for r in 0..rows {
        let xr = &x[r * in_dim..][..in_dim];
        for o in 0..out_dim {
            let wr = &w[o * in_dim..][..in_dim];
            let (mut dot, mut err, mut mag) = (0f64, 0f64, 0f64);
            for b in 0..in_dim / BLOCK {
                let (xb, wb) = (&xr[b * BLOCK..][..BLOCK], &wr[b * BLOCK..][..BLOCK]);
                let dx = xb.iter().fold(0f32, |a, v| a.max(v.abs())) as f64 / 127.0;
                for (wv, xv) in wb.iter().zip(xb) {
                    dot += *wv as f64 * *xv as f64;
                    err += (*wv as f64).abs() * dx * 0.5;
                    mag += (*wv as f64 * *xv as f64).abs();
                }
            }
            y[r * out_dim + o] = dot;
            bound[r * out_dim + o] = err * 1.001 + mag * 1e-5 + 1e-30;
        }
    }
    (y, bound)
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|f| f.to_bits()).collect()
}

#[test]
fn every_variant_matches_both_references_on_awkward_sizes() {
    let mut rng = Rng::new(13);
    let isas = Isa::supported();
    eprintln!("variants tested: {isas:?}");
    for format in Format::ALL {
        for in_dim in in_dims(format) {
            for out_dim in OUT_DIMS {
                let bytes = random_ggml(&mut rng, format, out_dim, in_dim);
                let m = QMatrix::from_ggml(format, &bytes, out_dim, in_dim).unwrap();
                let w = m.dequantize();
                for rows in ROWS {
                    // An unaligned slice: one f32 into the buffer.
                    let buf = [vec![0.5f32], random_x(&mut rng, rows, in_dim)].concat();
                    let x = &buf[1..];
                    let acts = QActs::quantize(Isa::Scalar, x, rows, in_dim);
                    let exact = reference_exact(format, &bytes, out_dim, &acts);
                    let (y64, bound) = reference_f64(&w, x, rows, out_dim, in_dim);
                    for &isa in &isas {
                        let mut y = vec![f32::NAN; rows * out_dim];
                        m.matmul_with(isa, x, rows, &mut y);
                        let what = format!("{format} {isa} out {out_dim} in {in_dim} rows {rows}");
                        assert_eq!(bits(&y), bits(&exact), "{what}: not the exact block formula");
                        for (i, ((a, b), e)) in y.iter().zip(&y64).zip(&bound).enumerate() {
                            assert!((*a as f64 - b).abs() <= *e, "{what}: y[{i}] = {a}, f64 reference {b} +- {e}");
                        }
                    }
                }
            }
        }
    }
}

#[test]
fn activation_codes_are_identical_in_every_variant() {
    let mut rng = Rng::new(5);
    let x = random_x(&mut rng, 9, 608);
    let base = QActs::quantize(Isa::Scalar, &x, 9, 608);
    assert!(base.qs.iter().all(|&q| q != -128), "codes stay within +-127");
    for isa in Isa::supported() {
        let a = QActs::quantize(isa, &x, 9, 608);
        assert_eq!(a.qs, base.qs, "{isa}");
        assert_eq!(bits(&a.d), bits(&base.d), "{isa}");
        assert_eq!(bits(&a.s), bits(&base.s), "{isa}");
        assert_eq!(a.bias, base.bias, "{isa}");
        assert_eq!(a.sum_lo, base.sum_lo, "{isa}");
    }
    let lo: Vec<i32> = base.qs.chunks(BLOCK).map(|b| b[..16].iter().map(|&q| q as i32).sum()).collect();
    assert_eq!(base.sum_lo, lo, "sum_lo is the first 16 codes' sum");
}

/// Blocks the random inputs never make: exact ties, NaN and infinite inputs, subnormal magnitudes (whose `1 / d`
/// overflows), negative zeros; every variant gives the reference's codes, and the reference the hand-computed ones.
#[test]
fn activation_codes_agree_on_ties_nans_infinities_and_subnormals() {
    let mut blocks: Vec<[f32; BLOCK]> = Vec::new();
    // amax 127: d = 1, so x / d is x itself; ties round to even (0.5 -> 0, 1.5 -> 2, 2.5 -> 2, -3.5 -> -4).
    let mut ties = [0f32; BLOCK];
    ties[..6].copy_from_slice(&[127.0, 0.5, 1.5, 2.5, -3.5, -0.0]);
    blocks.push(ties);
    let mut nan = [1.0f32; BLOCK];
    nan[3] = f32::NAN;
    nan[7] = -127.0;
    blocks.push(nan);
    let mut inf = [1.0f32; BLOCK];
    inf[9] = f32::INFINITY;
    blocks.push(inf);
    blocks.push([1e-40; BLOCK]);
    blocks.push([-0.0; BLOCK]);
    blocks.push(std::array::from_fn(|i| (i as f32 - 15.5) * 3.0));
    let x: Vec<f32> = blocks.iter().flatten().copied().collect();
    // 6 blocks as 1 row, 2 rows of 3 blocks and 6 rows of 1 block: row and block boundaries fall elsewhere.
    for rows in [1, 2, 6] {
        let in_dim = x.len() / rows;
        let base = QActs::quantize(Isa::Scalar, &x, rows, in_dim);
        assert_eq!(&base.qs[..6], &[127, 0, 2, 2, -4, 0], "ties to even");
        assert_eq!(base.d[0], 1.0);
        assert_eq!(base.bias[0], -128 * (127 + 2 + 2 - 4));
        assert_eq!(base.sum_lo[0], 127 + 2 + 2 - 4);
        assert_eq!(base.qs[BLOCK + 3], 0, "a NaN input codes as 0");
        assert_eq!(base.qs[BLOCK + 7], -127, "a NaN input does not set the scale");
        assert_eq!(base.d[1], 1.0);
        assert!(base.d[2].is_infinite() && base.qs[2 * BLOCK..3 * BLOCK].iter().all(|&q| q == 0), "inf: all 0");
        assert!(base.qs[3 * BLOCK..5 * BLOCK].iter().all(|&q| q == 0), "subnormal and -0 blocks: all 0");
        assert_eq!(base.bias[3], 0);
        for isa in Isa::supported() {
            let a = QActs::quantize(isa, &x, rows, in_dim);
            assert_eq!(a.qs, base.qs, "{isa}");
            assert_eq!(bits(&a.d), bits(&base.d), "{isa}");
            assert_eq!(bits(&a.s), bits(&base.s), "{isa}");
            assert_eq!(a.bias, base.bias, "{isa}");
            assert_eq!(a.sum_lo, base.sum_lo, "{isa}");
        }
    }
}

#[test]
fn a_rows_result_does_not_depend_on_the_batch_its_place_or_the_thread_count() {
    let mut rng = Rng::new(99);
    let (in_dim, out_dim, rows) = (768, 330, 70);
    let before = pool::threads();
    for format in Format::ALL {
        let m = QMatrix::from_ggml(format, &random_ggml(&mut rng, format, out_dim, in_dim), out_dim, in_dim).unwrap();
        let x = random_x(&mut rng, rows, in_dim);
        for isa in Isa::supported() {
            pool::set_threads(1);
            let mut whole = vec![0f32; rows * out_dim];
            m.matmul_with(isa, &x, rows, &mut whole);
            // Alone, one row per call.
            for r in 0..rows {
                let mut y = vec![0f32; out_dim];
                m.matmul_with(isa, &x[r * in_dim..][..in_dim], 1, &mut y);
                assert_eq!(bits(&y), bits(&whole[r * out_dim..][..out_dim]), "{format} {isa}: row {r} alone");
            }
            // Reversed order, sub-batches of 7, and 2 or 3 threads.
            for threads in [2, 3] {
                pool::set_threads(threads);
                let rev: Vec<f32> = (0..rows).rev().flat_map(|r| x[r * in_dim..][..in_dim].to_vec()).collect();
                let mut y = vec![0f32; rows * out_dim];
                m.matmul_with(isa, &rev, rows, &mut y);
                for r in 0..rows {
                    let got = &y[(rows - 1 - r) * out_dim..][..out_dim];
                    assert_eq!(bits(got), bits(&whole[r * out_dim..][..out_dim]), "{format} {isa}: {threads} threads");
                }
                for start in (0..rows).step_by(7) {
                    let n = 7.min(rows - start);
                    let mut y = vec![0f32; n * out_dim];
                    m.matmul_with(isa, &x[start * in_dim..(start + n) * in_dim], n, &mut y);
                    assert_eq!(bits(&y), bits(&whole[start * out_dim..(start + n) * out_dim]), "{format} {isa}: chunk");
                }
            }
        }
    }
    pool::set_threads(before);
}

#[test]
fn gguf_bytes_round_trip_and_rows_dequantize_as_the_blocks_do() {
    let mut rng = Rng::new(3);
    for format in Format::ALL {
        for (out_dim, blocks) in [(1, 1), (7, 3), (33, 19), (17, 2)] {
            let in_dim = blocks * format.block_weights();
            let bytes = random_ggml(&mut rng, format, out_dim, in_dim);
            let m = QMatrix::from_ggml(format, &bytes, out_dim, in_dim).unwrap();
            assert_eq!(m.to_ggml(), bytes, "{format} {out_dim}x{in_dim}");
            let mut want = vec![0f32; out_dim * in_dim];
            format::dequantize_blocks(format, &bytes, &mut want);
            assert_eq!(bits(&m.dequantize()), bits(&want), "{format} {out_dim}x{in_dim}");
            // Repacking keeps the bytes (codes and scales unpacked to whole bytes where the file packs them).
            let bound = bytes.len() * 2 + 16 * 64 + 16 * format.block_bytes() * 19;
            assert!(m.bytes() >= bytes.len() && m.bytes() < bound, "{format}: {} bytes", m.bytes());
        }
    }
}

/// Every format dequantizes bit for bit as candle's `k_quants` (the GGUF reference) does, on random blocks.
#[test]
fn every_format_dequantizes_like_candle() {
    use candle_core::quantized::{ggml_file, GgmlDType};
    let mut rng = Rng::new(31);
    for format in Format::ALL {
        let dtype = match format {
            Format::Q4_0 => GgmlDType::Q4_0,
            Format::Q4_1 => GgmlDType::Q4_1,
            Format::Q5_0 => GgmlDType::Q5_0,
            Format::Q5_1 => GgmlDType::Q5_1,
            Format::Q8_0 => GgmlDType::Q8_0,
            Format::Q4K => GgmlDType::Q4K,
            Format::Q5K => GgmlDType::Q5K,
            Format::Q6K => GgmlDType::Q6K,
        };
        let (out_dim, in_dim) = (5, 2 * format.block_weights());
        let bytes = random_ggml(&mut rng, format, out_dim, in_dim);
        let q = ggml_file::qtensor_from_ggml(dtype, &bytes, vec![out_dim, in_dim], &candle_core::Device::Cpu).unwrap();
        let want = q.dequantize(&candle_core::Device::Cpu).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let m = QMatrix::from_ggml(format, &bytes, out_dim, in_dim).unwrap();
        assert_eq!(bits(&m.dequantize()), bits(&want), "{format}");
        let mut plain = vec![0f32; out_dim * in_dim];
        format::dequantize_blocks(format, &bytes, &mut plain);
        assert_eq!(bits(&plain), bits(&want), "{format}: format::dequantize_blocks");
    }
}

#[test]
fn quantizing_dense_weights_keeps_each_value_within_half_a_step() {
    let mut rng = Rng::new(8);
    let (out_dim, in_dim) = (9, 96);
    let w = rng.vec(out_dim * in_dim, -1.0, 1.0);
    for format in Format::ALL.into_iter().filter(|f| !matches!(f, Format::Q4_1 | Format::Q8_0)) {
        assert!(QMatrix::quantize(format, &w, out_dim, in_dim).is_err(), "{format}: only read, never made");
    }
    for format in [Format::Q4_1, Format::Q8_0] {
        let m = QMatrix::quantize(format, &w, out_dim, in_dim).unwrap();
        let back = m.dequantize();
        for (blk_w, blk_b) in w.chunks(BLOCK).zip(back.chunks(BLOCK)) {
            let (lo, hi) = blk_w.iter().fold((f32::MAX, f32::MIN), |(a, b), &v| (a.min(v), b.max(v)));
            let step = match format {
                Format::Q8_0 => lo.abs().max(hi.abs()) / 127.0,
                _ => (hi - lo) / 15.0,
            };
            for (a, b) in blk_w.iter().zip(blk_b) {
                assert!((a - b).abs() <= step * 0.5 + 2e-3 * step.max(1e-3) + 1e-3 * a.abs(), "{format}: {a} vs {b}");
            }
        }
    }
}

#[test]
fn concat_rows_stacks_outputs() {
    let mut rng = Rng::new(21);
    for format in Format::ALL {
        let w = 3 * format.block_weights();
        let parts: Vec<QMatrix> = [5, 16, 19]
            .iter()
            .map(|&o| QMatrix::from_ggml(format, &random_ggml(&mut rng, format, o, w), o, w).unwrap())
            .collect();
        let refs: Vec<&QMatrix> = parts.iter().collect();
        let all = QMatrix::concat_rows(&refs).unwrap();
        assert_eq!((all.out_dim(), all.in_dim(), all.format()), (40, w, format));
        let x = random_x(&mut rng, 3, w);
        let mut y = vec![0f32; 3 * 40];
        all.matmul(&x, 3, &mut y);
        let mut col = 0;
        for p in &parts {
            let mut yp = vec![0f32; 3 * p.out_dim()];
            p.matmul(&x, 3, &mut yp);
            for r in 0..3 {
                assert_eq!(bits(&yp[r * p.out_dim()..][..p.out_dim()]), bits(&y[r * 40 + col..][..p.out_dim()]));
            }
            col += p.out_dim();
        }
        let w2 = 2 * format.block_weights();
        let other = QMatrix::from_ggml(format, &random_ggml(&mut rng, format, 2, w2), 2, w2).unwrap();
        assert!(QMatrix::concat_rows(&[&parts[0], &other]).is_err());
        assert!(QMatrix::concat_rows(&[]).is_err());
    }
}

#[test]
fn bad_shapes_are_errors_not_panics() {
    assert!(QMatrix::from_ggml(Format::Q8_0, &[0; 34], 1, 33).is_err());
    assert!(QMatrix::from_ggml(Format::Q8_0, &[0; 33], 1, 32).is_err());
    assert!(QMatrix::from_ggml(Format::Q4_1, &[], 0, 32).is_err());
    assert!(QMatrix::quantize(Format::Q4_1, &[0.0; 31], 1, 32).is_err());
    assert_eq!(Format::from_ggml_id(3).unwrap(), Format::Q4_1);
    assert!(Format::from_ggml_id(10).is_err(), "Q2_K is not read");
    assert_eq!(Format::from_ggml_id(12).unwrap(), Format::Q4K);
    assert!(QMatrix::from_ggml(Format::Q4K, &[0; 144], 1, 32).is_err(), "K-quants take whole super-blocks");
    assert!(QMatrix::from_ggml(Format::Q6K, &[0; 209], 1, 256).is_err());
    for f in Format::ALL {
        assert_eq!(f.name().parse::<Format>().unwrap(), f);
        assert_eq!(Format::from_ggml_id(f.ggml_id()).unwrap(), f);
    }
    assert_eq!("q4k".parse::<Format>().unwrap(), Format::Q4K);
    assert!("avx9".parse::<Isa>().is_err());
    assert_eq!("AVX2".parse::<Isa>().unwrap(), Isa::Avx2);
}

#[test]
fn zero_rows_is_a_no_op() {
    let m = QMatrix::quantize(Format::Q8_0, &[0.25; 64], 2, 32).unwrap();
    m.matmul(&[], 0, &mut []);
}

//! The real SmolLM2-135M (Q4_1) and Gemma 3 270M (Q4_K_M: Q5_0, Q4_K, Q6_K and Q8_0 tensors) files (each skipped
//! when `models/` lacks it): their own blocks load bit for bit, dequantize exactly as candle does, every variant gives
//! the same bits, and products stay within the activation-quantization bound; and how much a Q8_0 re-quantization
//! of the weights moves the outputs (printed; `--nocapture` shows it).

use candle_core::quantized::gguf_file;
use candle_core::Device;
use msrnn_kernels::format::BLOCK;
use msrnn_kernels::{Format, Isa, QMatrix};
use msrnn_tests::Rng;
use std::io::{Read, Seek, SeekFrom};

const MODEL: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../models/SmolLM2-135M-Instruct.Q4_1.gguf");
const GEMMA: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../models/gemma-3-270m-q4_k_m.gguf");

struct Tensor {
    format: Format,
    out_dim: usize,
    in_dim: usize,
    bytes: Vec<u8>,
    candle: Vec<f32>,
}

fn load(file: &mut std::fs::File, content: &gguf_file::Content, name: &str) -> Tensor {
    let info = &content.tensor_infos[name];
    let dims = info.shape.dims();
    let (out_dim, in_dim) = (dims[0], dims[1]);
    use candle_core::quantized::GgmlDType as T;
    let format = Format::from_ggml_id(match info.ggml_dtype {
        T::Q4_0 => 2,
        T::Q4_1 => 3,
        T::Q5_0 => 6,
        T::Q5_1 => 7,
        T::Q8_0 => 8,
        T::Q4K => 12,
        T::Q5K => 13,
        T::Q6K => 14,
        other => panic!("{name}: unexpected {other:?}"),
    })
    .unwrap();
    let mut bytes = vec![0u8; format.matrix_bytes(out_dim, in_dim).unwrap()];
    file.seek(SeekFrom::Start(content.tensor_data_offset + info.offset)).unwrap();
    file.read_exact(&mut bytes).unwrap();
    let q = content.tensor(file, name, &Device::Cpu).unwrap();
    let candle = q.dequantize(&Device::Cpu).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
    Tensor { format, out_dim, in_dim, bytes, candle }
}

/// Relative RMS difference of `y` from the f64 product of dequantized `w` with `x`.
fn rel_rms(w: &[f32], x: &[f32], y: &[f32], rows: usize, out_dim: usize, in_dim: usize) -> f64 {
    let (mut num, mut den) = (0f64, 0f64);
    for r in 0..rows {
        for o in 0..out_dim {
            let dot: f64 = (0..in_dim).map(|i| w[o * in_dim + i] as f64 * x[r * in_dim + i] as f64).sum();
            num += (y[r * out_dim + o] as f64 - dot).powi(2);
            den += dot * dot;
        }
    }
    (num / den).sqrt()
}

#[test]
fn smollm2_blocks_round_trip_dequantize_like_candle_and_multiply_within_bounds() {
    check_file(MODEL, &["blk.0.attn_q.weight", "blk.7.attn_k.weight", "blk.29.ffn_down.weight", "token_embd.weight"]);
}

#[test]
fn gemma3_q4_k_m_blocks_round_trip_dequantize_like_candle_and_multiply_within_bounds() {
    // Q5_0 (in_dim 640 is no whole number of super-blocks), Q4_K, Q6_K, Q8_0.
    check_file(
        GEMMA,
        &[
            "blk.0.attn_q.weight",
            "blk.0.attn_output.weight",
            "blk.0.ffn_down.weight",
            "blk.3.ffn_down.weight",
            "blk.0.attn_v.weight",
        ],
    );
}

fn check_file(path: &str, names: &[&str]) {
    let Ok(mut file) = std::fs::File::open(path) else {
        eprintln!("skipped: {path} not found (scripts/fetch-model.sh fetches it)");
        return;
    };
    let content = gguf_file::Content::read(&mut file).unwrap();
    let mut rng = Rng::new(11);
    for &name in names {
        let t = load(&mut file, &content, name);
        let m = QMatrix::from_ggml(t.format, &t.bytes, t.out_dim, t.in_dim).unwrap();
        assert_eq!(m.to_ggml(), t.bytes, "{name}: GGUF bytes round trip");
        let w = m.dequantize();
        assert!(w.iter().zip(&t.candle).all(|(a, b)| a.to_bits() == b.to_bits()), "{name}: dequantized != candle's");

        // Activations shaped like a hidden state (a few large channels), 3 rows; the head on 1024 of its rows.
        let out_dim = t.out_dim.min(1024);
        let rows = 3;
        let mut x = rng.vec(rows * t.in_dim, -1.0, 1.0);
        for v in x.iter_mut().step_by(97) {
            *v *= 20.0;
        }
        let sub = QMatrix::from_ggml(
            t.format,
            &t.bytes[..t.format.matrix_bytes(out_dim, t.in_dim).unwrap()],
            out_dim,
            t.in_dim,
        )
        .unwrap();
        let mut y = vec![0f32; rows * out_dim];
        for isa in Isa::supported() {
            let mut yi = vec![0f32; rows * out_dim];
            sub.matmul_with(isa, &x, rows, &mut yi);
            if isa == Isa::Scalar {
                y = yi;
            } else {
                assert!(yi.iter().zip(&y).all(|(a, b)| a.to_bits() == b.to_bits()), "{name}: {isa} != scalar");
            }
        }
        let wsub = &w[..out_dim * t.in_dim];
        let native = rel_rms(wsub, &x, &y, rows, out_dim, t.in_dim);
        // The same product after re-quantizing the file's weights to Q8_0 (what `--weights q8_0` does).
        let q8 = QMatrix::quantize(Format::Q8_0, wsub, out_dim, t.in_dim).unwrap();
        let mut y8 = vec![0f32; rows * out_dim];
        q8.matmul(&x, rows, &mut y8);
        let requant = rel_rms(wsub, &x, &y8, rows, out_dim, t.in_dim);
        eprintln!(
            "{name} ({} {}x{}): relative RMS error vs f64 of the file's weights: as stored {native:.2e}, re-quantized to Q8_0 {requant:.2e}",
            t.format, t.out_dim, t.in_dim
        );
        assert!(native < 2e-2, "{name}: {native}");
        assert_eq!(t.in_dim % BLOCK, 0);
    }
}

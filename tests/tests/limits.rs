//! Resource limits with clear errors, never an abort: a capacity above the model's context is
//! refused up front with what the state would cost; a text is read only as far as the tokens asked
//! for need (even an endless one); a GGUF file that claims more than it holds is refused before
//! anything is allocated for it.

use std::io::Read;

use candle_core::quantized::GgmlDType;
use msrnn_core::{new_state, Capacity, PolicySpec};
use msrnn_modelkit::{load_model, LoadOptions, Model, PREFIX_MARGIN};
use msrnn_tests::files::scratch;
use msrnn_tests::tiny_llama::{tiny_config, TinyLlama};

use msrnn_llama as _;

fn tiny_model() -> Box<dyn Model> {
    let p = scratch("limits-tiny").join("tiny.gguf");
    TinyLlama::random(tiny_config(), 9).write_gguf(&p, GgmlDType::Q8_0, true);
    load_model(&p, &LoadOptions::default()).unwrap()
}

#[test]
fn a_capacity_above_the_context_is_refused_with_its_cost() {
    let m = tiny_model();
    let ctx = m.info().max_context;
    let reg = msrnn_policies::registry();
    let spec: PolicySpec = "tova".parse().unwrap();
    new_state(m.as_ref(), &reg, &spec, Capacity::Bounded(ctx), 1).unwrap();
    for c in [ctx + 1, 1_000_000_000_000, usize::MAX] {
        let e = new_state(m.as_ref(), &reg, &spec, Capacity::Bounded(c), 1).err().expect("refused").to_string();
        assert!(e.contains(&format!("capacity {c} is more than the model's context of {ctx} tokens")), "{e}");
        assert!(e.contains("bytes of keys and values per token"), "{e}");
    }
    // `full` grows with the stream: not bounded by this check.
    new_state(m.as_ref(), &reg, &"full".parse().unwrap(), Capacity::Unbounded, 1).unwrap();
}

/// Text that never ends: `the cat sat on the mat. ` forever, counting what was read.
struct Endless {
    read: u64,
}

impl Read for Endless {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        const T: &[u8] = b"the cat sat on the mat. ";
        for (i, b) in buf.iter_mut().enumerate() {
            *b = T[(self.read as usize + i) % T.len()];
        }
        self.read += buf.len() as u64;
        Ok(buf.len())
    }
}

#[test]
fn a_text_is_read_only_as_far_as_the_tokens_need() {
    let m = tiny_model();
    let tok = m.tokenizer();
    for n in [1usize, 10, 300, 5000] {
        let mut r = Endless { read: 0 };
        let p = tok.encode_prefix(&mut r, n, true).unwrap();
        assert_eq!(p.tokens.len(), n);
        assert!(!p.whole);
        assert_eq!(p.bytes_read, r.read);
        // The same tokens as the whole of a text that long.
        let text: String = "the cat sat on the mat. ".repeat((p.bytes_read as usize / 24) + 40);
        let full = tok.encode(&text, true).unwrap();
        assert_eq!(p.tokens, full[..n], "n = {n}");
        assert!(full.len() >= n + PREFIX_MARGIN);
    }
    // A short text: all of it, and it says so.
    let p = tok.encode_prefix("the cat".as_bytes(), 100, false).unwrap();
    assert!(p.whole && p.tokens == tok.encode("the cat", false).unwrap());
    // Bytes that are not UTF-8: an error naming where.
    let mut bad = b"the cat ".repeat(10);
    bad.push(0xff);
    let e = tok.encode_prefix(&bad[..], 1000, false).unwrap_err().to_string();
    assert!(e.contains("not UTF-8 (bad bytes at offset 80)"), "{e}");
    // A character cut by a read boundary is not an error: 4-byte characters from byte 1 on.
    let mut s = String::from("a");
    s.push_str(&"\u{1F600} ".repeat(3000));
    let p = tok.encode_prefix(s.as_bytes(), usize::MAX, false).unwrap();
    assert_eq!(p.tokens, tok.encode(&s, false).unwrap());
}

#[test]
fn the_real_text_gives_the_same_first_tokens_streamed() {
    let (Some(model), Some(text)) = (msrnn_tests::files::smollm2(), msrnn_tests::files::hamlet()) else { return };
    let m = load_model(&model, &LoadOptions::default()).unwrap();
    let tok = m.tokenizer();
    let all = tok.encode(&std::fs::read_to_string(&text).unwrap(), tok.wants_bos()).unwrap();
    let size = std::fs::metadata(&text).unwrap().len();
    for n in [1usize, 2, 100, 2048, 10_000] {
        let p = tok.encode_prefix(std::fs::File::open(&text).unwrap(), n, tok.wants_bos()).unwrap();
        assert_eq!(p.tokens, all[..n], "n = {n}");
        if n <= 2048 {
            assert!(p.bytes_read < size / 4, "read {} of {size} bytes for {n} tokens", p.bytes_read);
        }
    }
}

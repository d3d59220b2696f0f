//! A WebAssembly plugin's memory: the first 4 bytes pick the descriptor's offset, the rest is the
//! module's linear memory. The wasm32 descriptor reader and the declaration checks every plugin
//! kind shares either accept a declaration that passes the checks or say why not.
#![no_main]

use libfuzzer_sys::fuzz_target;
use msrnn_wasm::{read_descriptor, Mem};

const ALL_EXPORTS: &[&str] = &["msrnn_reset", "msrnn_save_state", "msrnn_load_state"];

fuzz_target!(|bytes: &[u8]| {
    if bytes.len() < 4 {
        return;
    }
    let at = u32::from_le_bytes(bytes[..4].try_into().unwrap());
    let mem = &bytes[4..];
    for exports in [ALL_EXPORTS, &[][..]] {
        if let Ok((info, _)) = read_descriptor(Mem(mem), at, exports) {
            assert!(info.check().is_ok(), "an accepted declaration fails the checks: {info:?}");
        }
    }
});

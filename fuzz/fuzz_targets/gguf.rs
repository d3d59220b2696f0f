//! A whole GGUF file: the header reader; for an accepted header every tensor read and dequantized,
//! the LLaMA config and the tokenizer built from the metadata. Any input ends in `Ok` or an error.
#![no_main]

use candle_core::Device;
use libfuzzer_sys::fuzz_target;
use msrnn_modelkit::gguf::{read_content_from_bytes, tensor_bytes, Metadata};
use msrnn_modelkit::{DecoderConfig, Tokenizer};

fuzz_target!(|bytes: &[u8]| {
    let Ok(ct) = read_content_from_bytes(bytes) else { return };
    for ti in ct.tensor_infos.values() {
        let n = tensor_bytes(ti).expect("accepted tensors have a size");
        assert!(ct.tensor_data_offset + ti.offset + n <= bytes.len() as u64, "a tensor outside the file was accepted");
        if let Ok(q) = ti.read(&mut std::io::Cursor::new(bytes), ct.tensor_data_offset, &Device::Cpu) {
            let _ = q.dequantize(&Device::Cpu);
        }
    }
    let md = Metadata { path: std::path::Path::new("(fuzz)"), ct: &ct };
    let _ = DecoderConfig::from_gguf(&md, "llama", 2048, 1e-5);
    let _ = Tokenizer::from_gguf(&md);
});

//! Policy specs as text: parsing (both forms), the registry's parameter checks, printing back and
//! parsing again (the same spec whenever its values print unambiguously).
#![no_main]

use libfuzzer_sys::fuzz_target;
use msrnn_core::{ParamValue, PolicySpec};

fuzz_target!(|bytes: &[u8]| {
    let Ok(text) = std::str::from_utf8(bytes) else { return };
    let Ok(spec) = text.parse::<PolicySpec>() else { return };
    let reg = msrnn_policies::registry();
    let _ = spec.to_params(None);
    let _ = reg.check_params(&spec);
    let shown = spec.to_string();
    if !spec.params.values().any(|v| matches!(v, ParamValue::Str(_) | ParamValue::Float(_))) {
        let again: PolicySpec = shown.parse().unwrap_or_else(|e| panic!("{shown:?} (from {text:?}) does not parse: {e}"));
        assert_eq!(again, spec, "{shown:?}");
    }
});

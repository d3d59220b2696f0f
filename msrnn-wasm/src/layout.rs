//! The wasm32 side of the ABI: where the fields of the C layouts lie when a plugin is compiled
//! for wasm32 (pointers 4 bytes, `uint64_t` 8-aligned), and the reading of a descriptor out of a
//! module's memory, every pointer checked against it. No wasmtime here: the fuzz targets and the
//! corruption tests read descriptors from plain bytes.

use msrnn_core::plugin::{check_version, PluginInfo, MAX_DECLARED};
use msrnn_policy_api::Param;

/// Longest description or name read from a module's memory.
const MAX_TEXT: usize = 4096;

/// A module's linear memory as the host reads it: every pointer the module gave is checked against
/// its size before a byte is read.
#[derive(Clone, Copy)]
pub struct Mem<'a>(pub &'a [u8]);

impl<'a> Mem<'a> {
    /// `len` bytes at `at`, or why they are not there.
    pub fn bytes(self, at: u64, len: u64, what: &str) -> std::result::Result<&'a [u8], String> {
        let m = self.0;
        match at.checked_add(len) {
            Some(end) if end <= m.len() as u64 => Ok(&m[at as usize..end as usize]),
            _ => Err(format!("its {what} ({len} bytes at {at}) lies outside its memory of {} bytes", m.len())),
        }
    }

    pub fn u32_at(self, at: u64, what: &str) -> std::result::Result<u32, String> {
        Ok(u32::from_le_bytes(self.bytes(at, 4, what)?.try_into().expect("4 bytes")))
    }

    pub fn u64_at(self, at: u64, what: &str) -> std::result::Result<u64, String> {
        Ok(u64::from_le_bytes(self.bytes(at, 8, what)?.try_into().expect("8 bytes")))
    }

    /// A NUL-terminated UTF-8 string at `at` (at most 4 KiB); `None` for a NULL pointer.
    pub fn c_str(self, at: u32, what: &str) -> std::result::Result<Option<String>, String> {
        if at == 0 {
            return Ok(None);
        }
        let rest = self.0.get(at as usize..).ok_or_else(|| format!("its {what} points outside its memory ({at})"))?;
        let end = rest
            .iter()
            .take(MAX_TEXT)
            .position(|&b| b == 0)
            .ok_or_else(|| format!("its {what} is not NUL-terminated within {MAX_TEXT} bytes"))?;
        std::str::from_utf8(&rest[..end]).map(|s| Some(s.to_string())).map_err(|_| format!("its {what} is not UTF-8"))
    }
}

/// What a descriptor declares besides the [`PluginInfo`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Declared {
    pub reset: bool,
    /// `save_state` and `load_state` (both or neither).
    pub state: bool,
}

/// Field offsets of `msrnn_policy_descriptor` compiled for wasm32 (pointers 4 bytes, `uint64_t`
/// 8-aligned).
pub(crate) mod desc32 {
    pub const VERSION: u64 = 0;
    pub const NAME: u64 = 4;
    pub const DESCRIPTION: u64 = 8;
    pub const ALIASES: u64 = 12;
    pub const NUM_ALIASES: u64 = 16;
    pub const PARAMS: u64 = 24;
    pub const NUM_PARAMS: u64 = 32;
    pub const CREATE: u64 = 40;
    pub const COMPRESS: u64 = 44;
    pub const RESET: u64 = 48;
    pub const DESTROY: u64 = 52;
    pub const SAVE_STATE: u64 = 56;
    pub const LOAD_STATE: u64 = 60;
    pub const SIZE: u64 = 64;
    /// `msrnn_param`: three pointers.
    pub const PARAM_SIZE: u64 = 12;
}

/// Field offsets of `msrnn_observation` compiled for wasm32.
pub(crate) mod obs32 {
    pub const LAYER: usize = 0;
    pub const TOKENS_SEEN: usize = 8;
    pub const NUM_SLOTS: usize = 16;
    pub const POSITIONS: usize = 24;
    pub const LIVE: usize = 28;
    pub const NEW_SLOTS: usize = 32;
    pub const NUM_NEW: usize = 40;
    pub const NUM_HEADS: usize = 48;
    pub const NUM_KV_HEADS: usize = 56;
    pub const HEAD_DIM: usize = 64;
    pub const ROWS: usize = 72;
    pub const PROBS: usize = 80;
    pub const KEY_NORMS: usize = 84;
    pub const KEYS: usize = 88;
    /// ABI version 3 (a version 2 module never reads it).
    pub const HEAD_CAPACITY: usize = 96;
    pub const SIZE: usize = 104;
}

/// Decodes and checks the descriptor at `d` in a module's memory (wasm32 layout), as the native
/// host does: the ABI version first and alone, then names, aliases and schema ([`PluginInfo::check`]),
/// the required functions, `save_state`/`load_state` together. `exports` says which optional
/// entry points the module exports (`msrnn_reset`, `msrnn_save_state`, `msrnn_load_state`): a
/// function the descriptor declares must be exported.
pub fn read_descriptor(mem: Mem<'_>, d: u32, exports: &[&str]) -> std::result::Result<(PluginInfo, Declared), String> {
    use desc32::*;
    if d == 0 {
        return Err(format!("`{}` returned NULL instead of a descriptor", msrnn_policy_api::abi::ENTRY_SYMBOL));
    }
    let d = d as u64;
    check_version(mem.u32_at(d + VERSION, "descriptor")?)?;
    mem.bytes(d, SIZE, "descriptor")?;
    let ptr = |off: u64| mem.u32_at(d + off, "descriptor");
    let name = mem.c_str(ptr(NAME)?, "policy name")?.ok_or("its policy name is NULL")?;
    let description = mem.c_str(ptr(DESCRIPTION)?, "description")?.unwrap_or_default();
    let (aliases_at, n_aliases) = (ptr(ALIASES)?, mem.u64_at(d + NUM_ALIASES, "descriptor")?);
    if n_aliases > MAX_DECLARED || (n_aliases > 0 && aliases_at == 0) {
        return Err(format!("its alias list is corrupt ({n_aliases} entries at {aliases_at:#x})"));
    }
    let mut aliases = Vec::new();
    for i in 0..n_aliases {
        let p = mem.u32_at(aliases_at as u64 + 4 * i, "alias list")?;
        aliases.push(mem.c_str(p, "alias")?.ok_or("its alias is NULL")?);
    }
    let (params_at, n_params) = (ptr(PARAMS)?, mem.u64_at(d + NUM_PARAMS, "descriptor")?);
    if n_params > MAX_DECLARED || (n_params > 0 && params_at == 0) {
        return Err(format!("its parameter schema is corrupt ({n_params} entries at {params_at:#x})"));
    }
    let params = if params_at == 0 {
        None
    } else {
        let mut v = Vec::new();
        for i in 0..n_params {
            let at = params_at as u64 + PARAM_SIZE * i;
            let field = |k: u64| mem.u32_at(at + 4 * k, "parameter schema");
            v.push(Param::owned(
                mem.c_str(field(0)?, "parameter name")?.ok_or("its parameter name is NULL")?,
                mem.c_str(field(1)?, "default")?.unwrap_or_default(),
                mem.c_str(field(2)?, "help")?.unwrap_or_default(),
            ));
        }
        Some(v)
    };
    let info = PluginInfo { name, aliases, description, params };
    info.check()?;
    let name = &info.name;
    for (off, f) in [(CREATE, "create"), (COMPRESS, "compress"), (DESTROY, "destroy")] {
        if ptr(off)? == 0 {
            return Err(format!("policy `{name}` has no `{f}` function (NULL in its descriptor)"));
        }
    }
    let (save, load) = (ptr(SAVE_STATE)? != 0, ptr(LOAD_STATE)? != 0);
    if save != load {
        return Err(format!("policy `{name}` has only one of `save_state` and `load_state`"));
    }
    let reset = ptr(RESET)? != 0;
    for (declared, f) in [(reset, "reset"), (save, "save_state"), (load, "load_state")] {
        if declared && !exports.contains(&format!("msrnn_{f}").as_str()) {
            return Err(format!("policy `{name}` declares `{f}` but does not export `msrnn_{f}`"));
        }
    }
    Ok((info, Declared { reset, state: save }))
}

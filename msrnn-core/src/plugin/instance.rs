//! One layer's instance of a native plugin policy: a [`Policy`] that hands the observation to the
//! plugin's C functions without copying the big buffers, and checks everything that comes back.

use std::ffi::{c_char, c_void};
use std::sync::Arc;

use msrnn_policy_api::abi;
use msrnn_policy_api::{Decision, Error, Needs, Observation, Policy, Result};

use super::kind::{check_observation, code_meaning, decision_from, message};
use super::library::{Library, ERR_CAP};

pub(super) struct NativePolicy {
    lib: Arc<Library>,
    handle: *mut c_void,
    needs: Needs,
    capacity: Option<usize>,
    // Reused buffers: new slots as u64, the decision, the error message.
    new_slots: Vec<u64>,
    out: Vec<u64>,
    err: Vec<u8>,
}

// SAFETY: the ABI requires an instance to be movable between threads; it is never shared (`&mut self`
// for every call).
unsafe impl Send for NativePolicy {}

impl NativePolicy {
    /// Takes ownership of `handle` (from `lib`'s `create`): dropping the result destroys it.
    pub fn new(lib: Arc<Library>, handle: *mut c_void, err: Vec<u8>) -> Self {
        NativePolicy {
            lib,
            handle,
            needs: Needs::default(),
            capacity: None,
            new_slots: Vec::new(),
            out: Vec::new(),
            err,
        }
    }

    pub fn set_needs(&mut self, needs: Needs, capacity: Option<usize>) {
        self.needs = needs;
        self.capacity = capacity;
    }
}

impl Drop for NativePolicy {
    fn drop(&mut self) {
        // SAFETY: the handle came from this library's `create` and is destroyed once; the library is
        // still loaded because `self.lib` is dropped after this.
        unsafe { (self.lib.destroy)(self.handle) }
    }
}

impl Policy for NativePolicy {
    fn name(&self) -> &str {
        &self.lib.info.name
    }

    fn needs(&self) -> Needs {
        self.needs
    }

    fn capacity(&self) -> Option<usize> {
        self.capacity
    }

    fn step(&mut self, obs: &Observation<'_>, budget: usize) -> Result<Decision> {
        let l = self.lib.clone();
        check_observation(obs, &self.needs).map_err(|e| Error::Failed(format!("plugin {}: {e}", l.path)))?;
        self.new_slots.clear();
        self.new_slots.extend(obs.new_slots.iter().map(|&s| s as u64));
        let live = obs.live_count();
        self.out.clear();
        self.out.resize(live, u64::MAX);
        self.err.iter_mut().for_each(|b| *b = 0);
        let raw = abi::RawObservation::new(obs, &self.new_slots);
        let mut len: u64 = 0;
        // SAFETY: every buffer is valid for the lengths in `raw` (checked above); `out` has room for
        // `live` entries, `err` for ERR_CAP bytes.
        let code = unsafe {
            (l.compress)(
                self.handle,
                &raw,
                budget as u64,
                self.out.as_mut_ptr(),
                live as u64,
                &mut len,
                self.err.as_mut_ptr() as *mut c_char,
                ERR_CAP as u64,
            )
        };
        if code != abi::CODE_OK {
            return Err(Error::Failed(format!("plugin {} {}: {}", l.path, code_meaning(code), message(&self.err))));
        }
        decision_from(&self.out, len, obs, budget, &l.path)
    }

    fn reset(&mut self) {
        if let Some(reset) = self.lib.reset {
            // SAFETY: a live handle of this library.
            unsafe { reset(self.handle) }
        }
    }

    /// The plugin's bookkeeping. The trait gives no way to report a failure here, so one is logged
    /// (and nothing is saved; restoring then fails loudly for a plugin that expects state).
    fn save_state(&self) -> Vec<f64> {
        let l = &self.lib;
        let Some(save) = l.save_state else { return Vec::new() };
        let mut buf = vec![0f64; 64];
        let mut err = vec![0u8; ERR_CAP];
        for _ in 0..2 {
            let mut len = 0u64;
            // SAFETY: a live handle; `buf` has room for `buf.len()` values, `err` for ERR_CAP bytes.
            let code = unsafe {
                save(
                    self.handle,
                    buf.as_mut_ptr(),
                    buf.len() as u64,
                    &mut len,
                    err.as_mut_ptr() as *mut c_char,
                    ERR_CAP as u64,
                )
            };
            if code != abi::CODE_OK {
                tracing::error!(policy = %l.info.name, plugin = %l.path, "save_state {}: {}", code_meaning(code), message(&err));
                return Vec::new();
            }
            if len <= buf.len() as u64 {
                buf.truncate(len as usize);
                return buf;
            }
            buf = vec![0f64; len as usize];
        }
        tracing::error!(policy = %l.info.name, plugin = %l.path, "save_state kept changing its length");
        Vec::new()
    }

    fn load_state(&mut self, data: &[f64]) -> Result<()> {
        let l = &self.lib;
        let Some(load) = l.load_state else {
            return if data.is_empty() {
                Ok(())
            } else {
                Err(Error::State(format!("plugin {} keeps no state but the file has {} values", l.path, data.len())))
            };
        };
        let mut err = vec![0u8; ERR_CAP];
        // SAFETY: a live handle; `data` is valid for its length.
        let code = unsafe {
            load(self.handle, data.as_ptr(), data.len() as u64, err.as_mut_ptr() as *mut c_char, ERR_CAP as u64)
        };
        if code != abi::CODE_OK {
            let m = message(&err);
            return Err(Error::State(format!("plugin {} {} restoring its state: {m}", l.path, code_meaning(code))));
        }
        Ok(())
    }
}

//! One layer's instance of a plugin policy, whatever runs the plugin's code. A [`Transport`] is the
//! few raw calls of one kind (a native library's C functions, a WebAssembly module's exports in a
//! sandbox); [`PluginPolicy`] is the [`Policy`] over it and does everything the kinds share: the
//! observation checked before a call, the decision converted and checked after it, the
//! grow-and-retry `save_state`, the rebuild after the transport itself failed, and the error words.

use std::cell::RefCell;

use msrnn_policy_api::abi::{RawNeeds, CODE_OK};
use msrnn_policy_api::{Context, Decision, Error, Needs, Observation, Params, Policy, Result};

use super::kind::{check_observation, code_meaning, decision_from, message, params_text, PluginKind};

/// Room for a plugin's error message, whatever its kind.
pub const ERR_CAP: usize = 1024;

/// What a raw call gives: its answer, or why the transport itself failed.
pub type Raw<T> = std::result::Result<T, String>;

/// The raw calls of one plugin kind on one instance. Each returns the plugin's return code and what
/// it reported; `Err` is a failure of the transport itself (a trap in the sandbox, a limit), after
/// which [`PluginPolicy`] refuses to step until the instance is built afresh. A transport never
/// interprets a code or checks a decision: the wrapper does, the same way for every kind.
pub trait Transport: Send + Sized + 'static {
    /// The loaded plugin the instances are created from.
    type Plugin: PluginKind + Clone;

    /// The plugin's `create` with its parameters as `key=value,...` text (no NUL) and the layer's
    /// context: the instance and the needs it declared, or `None` when the plugin refused (its
    /// reason in `err`).
    fn create(plugin: &Self::Plugin, params: &str, ctx: &Context, err: &mut [u8]) -> Raw<Option<(Self, RawNeeds)>>;

    /// `compress`: the evicted slots written to `evict` (room for the live slots), their count
    /// returned with the code.
    fn compress(&mut self, obs: &Observation<'_>, budget: usize, evict: &mut [u64], err: &mut [u8]) -> Raw<(i32, u64)>;

    /// `reset`, where the plugin has one; `Err` (none, or a failure) has the instance built afresh.
    fn reset(&mut self) -> Raw<()>;

    /// Whether the plugin keeps state (`save_state` and `load_state`).
    fn has_state(&self) -> bool;

    /// `save_state` into `out`; the length the plugin reports may exceed `out` (then it is asked
    /// again with room for that many).
    fn save_state(&mut self, out: &mut [f64], err: &mut [u8]) -> Raw<(i32, u64)>;

    /// `load_state` from `data`.
    fn load_state(&mut self, data: &[f64], err: &mut [u8]) -> Raw<i32>;

    /// The most values of state the host takes from one `save_state` (a length above it is an
    /// error, not an allocation).
    fn max_state_values(&self) -> u64 {
        (isize::MAX as u64) / 8
    }
}

/// What an instance asks for when created: its needs, its layer's capacity, its head capacity.
type Asks = (Needs, Option<usize>, Option<usize>);

/// One layer's instance of a plugin policy over a [`Transport`].
pub struct PluginPolicy<T: Transport> {
    plugin: T::Plugin,
    /// What it was created with, to build it afresh after the transport failed.
    params: String,
    ctx: Context,
    needs: Needs,
    capacity: Option<usize>,
    head_capacity: Option<usize>,
    /// In a cell because saving state (`&self`) calls the plugin too.
    live: RefCell<Live<T>>,
    /// Reused buffer for the decision.
    out: Vec<u64>,
}

struct Live<T> {
    transport: T,
    /// Why it refuses to run: its transport failed and it was not built afresh since.
    poisoned: Option<String>,
    err: Vec<u8>,
}

impl<T: Transport> PluginPolicy<T> {
    /// One instance for one layer: the parameters as text, the plugin's `create`, its needs decoded.
    pub fn create(plugin: &T::Plugin, params: &Params, ctx: &Context) -> crate::Result<Self> {
        let name = &plugin.info().name;
        let text = params_text(params).map_err(|reason| crate::Error::InvalidParam { policy: name.clone(), reason })?;
        let (transport, (needs, capacity, head_capacity)) = Self::build(plugin, &text, ctx)
            .map_err(|reason| crate::Error::Plugin { path: plugin.path().into(), reason })?;
        Ok(PluginPolicy {
            plugin: plugin.clone(),
            params: text,
            ctx: *ctx,
            needs,
            capacity,
            head_capacity,
            live: RefCell::new(Live { transport, poisoned: None, err: vec![0; ERR_CAP] }),
            out: Vec::new(),
        })
    }

    fn build(plugin: &T::Plugin, params: &str, ctx: &Context) -> std::result::Result<(T, Asks), String> {
        let name = &plugin.info().name;
        let mut err = vec![0u8; ERR_CAP];
        let Some((transport, raw)) = T::create(plugin, params, ctx, &mut err)? else {
            let m = message(&err);
            return Err(format!("policy `{name}` refused to create its instance for layer {}: {m}", ctx.layer));
        };
        // From here `transport` owns the instance: an error below drops (destroys) it.
        let (needs, capacity) = raw.decode().map_err(|e| format!("policy `{name}` {e}"))?;
        let head_capacity = raw.head_capacity().map_err(|e| format!("policy `{name}` {e}"))?;
        Ok((transport, (needs, capacity, head_capacity)))
    }

    /// Builds the instance afresh; its needs must not change.
    fn rebuild(&mut self) -> std::result::Result<(), String> {
        let (transport, asks) = Self::build(&self.plugin, &self.params, &self.ctx)?;
        if asks != (self.needs, self.capacity, self.head_capacity) {
            let (needs, capacity, head) = asks;
            return Err(format!(
                "policy `{}` asked for other needs when built again ({needs:?}, capacity {capacity:?}, head \
                 capacity {head:?})",
                self.plugin.info().name
            ));
        }
        let live = self.live.get_mut();
        (live.transport, live.poisoned) = (transport, None);
        Ok(())
    }
}

impl<T: Transport> Policy for PluginPolicy<T> {
    fn name(&self) -> &str {
        &self.plugin.info().name
    }

    fn needs(&self) -> Needs {
        self.needs
    }

    fn capacity(&self) -> Option<usize> {
        self.capacity
    }

    fn head_capacity(&self) -> Option<usize> {
        self.head_capacity
    }

    fn step(&mut self, obs: &Observation<'_>, budget: usize) -> Result<Decision> {
        let path = self.plugin.path();
        let live = self.live.get_mut();
        if let Some(m) = &live.poisoned {
            return Err(failed(path, format!("refuses to step: it failed earlier ({m}) and was not reset since")));
        }
        check_observation(obs, &self.needs).map_err(|e| Error::Failed(format!("plugin {path}: {e}")))?;
        self.out.clear();
        self.out.resize(obs.live_count(), u64::MAX);
        let Live { transport, err, poisoned } = live;
        err.fill(0);
        match transport.compress(obs, budget, &mut self.out, err) {
            Err(m) => {
                let e = failed(path, &m);
                *poisoned = Some(m);
                Err(e)
            }
            Ok((CODE_OK, len)) => decision_from(&self.out, len, obs, budget, path),
            Ok((code, _)) => Err(failed(path, format!("{}: {}", code_meaning(code), message(err)))),
        }
    }

    /// Forgets the bookkeeping: the plugin's own `reset`, or, after a failure (or when it has
    /// none that succeeds), an instance built afresh.
    fn reset(&mut self) {
        let live = self.live.get_mut();
        if live.poisoned.is_none() && live.transport.reset().is_ok() {
            return;
        }
        if let Err(m) = self.rebuild() {
            let (name, path) = (&self.plugin.info().name, self.plugin.path());
            tracing::error!(policy = %name, plugin = %path, "cannot build the instance again: {m}");
            self.live.get_mut().poisoned = Some(m);
        }
    }

    /// The plugin's bookkeeping. The trait gives no way to report a failure here, so one is logged
    /// (and nothing is saved; restoring then fails loudly for a plugin that expects state).
    fn save_state(&self) -> Vec<f64> {
        let mut live = self.live.borrow_mut();
        if !live.transport.has_state() || live.poisoned.is_some() {
            return Vec::new();
        }
        match save_state_of(&mut live) {
            Ok(v) => v,
            Err((m, transport_failed)) => {
                let (name, path) = (&self.plugin.info().name, self.plugin.path());
                tracing::error!(policy = %name, plugin = %path, "save_state: {m}");
                if transport_failed {
                    live.poisoned = Some(m);
                }
                Vec::new()
            }
        }
    }

    fn load_state(&mut self, data: &[f64]) -> Result<()> {
        let path = self.plugin.path();
        let live = self.live.get_mut();
        if !live.transport.has_state() {
            return if data.is_empty() {
                Ok(())
            } else {
                Err(Error::State(format!("plugin {path} keeps no state but the file has {} values", data.len())))
            };
        }
        let Live { transport, err, poisoned } = live;
        err.fill(0);
        match transport.load_state(data, err) {
            Ok(CODE_OK) => Ok(()),
            Ok(code) => {
                let m = message(err);
                Err(Error::State(format!("plugin {path} {} restoring its state: {m}", code_meaning(code))))
            }
            Err(m) => {
                let e = Error::State(format!("plugin {path} {m}"));
                *poisoned = Some(m);
                Err(e)
            }
        }
    }
}

/// `plugin PATH {m}`: the plugin named in every failure.
fn failed(path: &str, m: impl std::fmt::Display) -> Error {
    Error::Failed(format!("plugin {path} {m}"))
}

/// Calls `save_state`, with a larger buffer if the first was too small. The error says whether the
/// transport failed (`true`: the instance is poisoned) or the plugin reported one.
fn save_state_of<T: Transport>(live: &mut Live<T>) -> std::result::Result<Vec<f64>, (String, bool)> {
    let Live { transport, err, .. } = live;
    let mut buf = vec![0f64; 64];
    for _ in 0..2 {
        err.fill(0);
        let (code, len) = transport.save_state(&mut buf, err).map_err(|m| (m, true))?;
        if code != CODE_OK {
            return Err((format!("{}: {}", code_meaning(code), message(err)), false));
        }
        if len <= buf.len() as u64 {
            buf.truncate(len as usize);
            return Ok(buf);
        }
        let max = transport.max_state_values();
        if len > max {
            return Err((format!("it reported {len} values of state, more than the {max} it may keep"), false));
        }
        buf = vec![0f64; len as usize];
    }
    Err(("it kept changing its length".into(), false))
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use msrnn_policy_api::abi::{CODE_FAILED, CODE_PANICKED};

    use super::*;
    use crate::plugin::PluginInfo;

    /// What the fake plugin does next; shared by its instances so a test can steer them.
    #[derive(Default)]
    struct Script {
        /// `compress` fails in the transport (a trap) when set.
        trap: bool,
        /// The code `compress` returns, with this message.
        code: i32,
        /// The state `save_state` reports (its length first, then what fits).
        state: Vec<f64>,
        /// `save_state` reports this length instead, when set.
        claimed: Option<u64>,
        created: usize,
        refuse_create: bool,
    }

    #[derive(Clone)]
    struct Fake {
        info: PluginInfo,
        script: Arc<Mutex<Script>>,
    }

    impl PluginKind for Fake {
        fn info(&self) -> &PluginInfo {
            &self.info
        }
        fn path(&self) -> &str {
            "/fake.so"
        }
        fn instantiate(&self, params: &Params, ctx: &Context) -> crate::Result<Box<dyn Policy>> {
            Ok(Box::new(PluginPolicy::<FakeInstance>::create(self, params, ctx)?))
        }
    }

    struct FakeInstance(Arc<Mutex<Script>>);

    fn write(err: &mut [u8], m: &str) {
        err[..m.len()].copy_from_slice(m.as_bytes());
    }

    impl Transport for FakeInstance {
        type Plugin = Fake;
        fn create(plugin: &Fake, params: &str, _: &Context, err: &mut [u8]) -> Raw<Option<(Self, RawNeeds)>> {
            let mut s = plugin.script.lock().unwrap();
            if s.refuse_create {
                write(err, &format!("no thanks to `{params}`"));
                return Ok(None);
            }
            s.created += 1;
            Ok(Some((FakeInstance(plugin.script.clone()), RawNeeds::default())))
        }
        fn compress(
            &mut self,
            obs: &Observation<'_>,
            budget: usize,
            evict: &mut [u64],
            err: &mut [u8],
        ) -> Raw<(i32, u64)> {
            let s = self.0.lock().unwrap();
            if s.trap {
                return Err("trapped in `compress`: boom".into());
            }
            if s.code != CODE_OK {
                write(err, "told to fail");
                return Ok((s.code, 0));
            }
            let k = obs.live_count().saturating_sub(budget);
            evict[..k].iter_mut().enumerate().for_each(|(i, e)| *e = i as u64);
            Ok((CODE_OK, k as u64))
        }
        fn reset(&mut self) -> Raw<()> {
            Err("no reset".into())
        }
        fn has_state(&self) -> bool {
            true
        }
        fn save_state(&mut self, out: &mut [f64], err: &mut [u8]) -> Raw<(i32, u64)> {
            let s = self.0.lock().unwrap();
            if s.code != CODE_OK {
                write(err, "cannot save");
                return Ok((s.code, 0));
            }
            let n = s.state.len().min(out.len());
            out[..n].copy_from_slice(&s.state[..n]);
            Ok((CODE_OK, s.claimed.unwrap_or(s.state.len() as u64)))
        }
        fn load_state(&mut self, data: &[f64], err: &mut [u8]) -> Raw<i32> {
            if data.len() == 1 {
                write(err, "one value is not enough");
                return Ok(CODE_FAILED);
            }
            Ok(CODE_OK)
        }
        fn max_state_values(&self) -> u64 {
            1000
        }
    }

    fn fake() -> (Fake, Arc<Mutex<Script>>) {
        let script = Arc::new(Mutex::new(Script::default()));
        let info = PluginInfo { name: "fake".into(), aliases: vec![], description: String::new(), params: None };
        (Fake { info, script: script.clone() }, script)
    }

    const CTX: Context =
        Context { layer: 2, num_layers: 3, num_heads: 1, num_kv_heads: 1, head_dim: 2, capacity: Some(2) };

    fn obs<'a>(pos: &'a [u64], live: &'a [bool]) -> Observation<'a> {
        Observation {
            layer: 2,
            tokens_seen: pos.len() as u64,
            num_slots: pos.len(),
            positions: pos,
            live,
            new_slots: &[],
            num_heads: 1,
            num_kv_heads: 1,
            head_dim: 2,
            rows: 0,
            probs: &[],
            key_norms: &[],
            keys: &[],
            head_capacity: 0,
        }
    }

    #[test]
    fn steps_are_checked_and_failures_name_the_plugin() {
        let (plugin, script) = fake();
        let mut p = plugin.instantiate(&Params::default(), &CTX).unwrap();
        let (pos, live) = ([0, 1, 2], [true; 3]);
        assert_eq!(p.step(&obs(&pos, &live), 2).unwrap(), Decision::Evict(vec![0]));
        script.lock().unwrap().code = CODE_PANICKED;
        let e = p.step(&obs(&pos, &live), 2).unwrap_err().to_string();
        assert_eq!(e, "plugin /fake.so panicked: told to fail");
        // A plugin's own failure does not poison the instance; a transport failure does, until reset.
        script.lock().unwrap().code = CODE_OK;
        p.step(&obs(&pos, &live), 2).unwrap();
        script.lock().unwrap().trap = true;
        assert_eq!(
            p.step(&obs(&pos, &live), 2).unwrap_err().to_string(),
            "plugin /fake.so trapped in `compress`: boom"
        );
        script.lock().unwrap().trap = false;
        let e = p.step(&obs(&pos, &live), 2).unwrap_err().to_string();
        assert!(
            e.contains("refuses to step: it failed earlier (trapped in `compress`: boom) and was not reset"),
            "{e}"
        );
        assert!(p.save_state().is_empty(), "a poisoned instance saves nothing");
        let before = script.lock().unwrap().created;
        p.reset();
        assert_eq!(script.lock().unwrap().created, before + 1, "reset without a `reset` builds it afresh");
        p.step(&obs(&pos, &live), 2).unwrap();
        // An observation that disagrees with its counts never reaches the plugin.
        let e = p.step(&obs(&pos, &live[..2]), 2).unwrap_err().to_string();
        assert!(e.starts_with("plugin /fake.so: the observation disagrees with its counts"), "{e}");
    }

    #[test]
    fn save_state_grows_its_buffer_once_and_refuses_absurd_lengths() {
        let (plugin, script) = fake();
        let mut p = plugin.instantiate(&Params::default(), &CTX).unwrap();
        let long: Vec<f64> = (0..100).map(f64::from).collect();
        script.lock().unwrap().state = long.clone();
        assert_eq!(p.save_state(), long, "64 values at first, then all 100");
        script.lock().unwrap().state = vec![1.0, 2.0];
        assert_eq!(p.save_state(), [1.0, 2.0]);
        script.lock().unwrap().claimed = Some(5000);
        assert!(p.save_state().is_empty(), "more than the transport takes");
        script.lock().unwrap().claimed = Some(500);
        assert_eq!(p.save_state().len(), 500, "asked again with room for what it reported");
        script.lock().unwrap().claimed = None;
        script.lock().unwrap().code = CODE_FAILED;
        assert!(p.save_state().is_empty());
        p.load_state(&[1.0, 2.0]).unwrap();
        let e = p.load_state(&[1.0]).unwrap_err().to_string();
        assert_eq!(e, "plugin /fake.so failed restoring its state: one value is not enough");
    }

    #[test]
    fn a_refused_create_names_the_policy_and_layer() {
        let (plugin, script) = fake();
        script.lock().unwrap().refuse_create = true;
        let params = Params::unchecked([("a", "1")]).unwrap();
        let e = plugin.instantiate(&params, &CTX).err().unwrap().to_string();
        assert!(e.contains("policy `fake` refused to create its instance for layer 2: no thanks to `a=1`"), "{e}");
        assert!(e.contains("/fake.so"), "{e}");
    }
}

//! The engine thread: it owns the [`Engine`] and steps every admitted sequence together
//! (continuous batching). Handlers send it [`Job`]s over a channel; each job carries the sender of
//! its own channel, on which the thread streams [`Out`] messages. A job whose receiver is gone (the
//! client disconnected, its handler was dropped) is cancelled before the next step and its slots
//! freed.
//!
//! Admission: the KV bytes reserved by admitted sequences stay under `--kv-budget`. A job that does
//! not fit waits in a bounded queue (first come, first served) for at most `--queue-timeout`; a
//! full queue or a job that waited too long gets 429 with a `Retry-After` estimated from the
//! running sequences' remaining tokens and the step time.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use msrnn_core::MsrnnState;
use msrnn_engine::{Engine, Event, Finished, GenConfig, SeqId};
use tokio::sync::mpsc::UnboundedSender;

use crate::error::ApiError;
use crate::metrics::Metrics;

/// One turn for the engine: the state to run on (fresh or resumed), the prompt, and how to
/// generate.
pub struct Job {
    pub state: MsrnnState,
    pub prompt: Vec<u32>,
    pub cfg: GenConfig,
    /// KV bytes this sequence may come to hold (its buffers, or for an unbounded state what its
    /// tokens will need).
    pub kv_bytes: usize,
    pub out: UnboundedSender<Out>,
    pub arrived: Instant,
}

/// What the engine thread tells a job's handler, in order: `Started` (or `Failed`), then `Token`s,
/// then `Finished` or `Failed`.
pub enum Out {
    /// Admitted: it is in the batch now.
    Started,
    /// A generated token and the text it completes (may be empty).
    Token {
        text: String,
    },
    /// The turn is over; the state is handed back to be stored.
    Finished(Box<Finished>),
    Failed(ApiError),
}

pub enum Cmd {
    Submit(Box<Job>),
    /// Finish the running turns, refuse the rest, then stop.
    Drain,
}

pub struct Settings {
    pub kv_budget: usize,
    pub max_queue: usize,
    pub queue_timeout: Duration,
}

struct Active {
    out: UnboundedSender<Out>,
    kv_bytes: usize,
    arrived: Instant,
    max_tokens: usize,
    /// When its last token went out (none yet: the next is its first).
    last_token: Option<Instant>,
}

pub struct Worker {
    engine: Engine,
    settings: Settings,
    metrics: Arc<Metrics>,
    queue: VecDeque<Box<Job>>,
    active: HashMap<SeqId, Active>,
    reserved: usize,
    draining: bool,
    /// Seconds per step, smoothed: for `Retry-After`.
    step_ema: f64,
    /// No step ran since the heap was last trimmed ([`TRIM_AFTER`]).
    trimmed: bool,
}

/// How long the engine stays idle before freed memory is handed back to the OS. glibc keeps freed
/// buffers (states, a batch's activations, states serialized for the store) in its arenas, so
/// without this RSS stays at the high-water mark of past bursts; trimming only after a quiet
/// second keeps the cost (a few ms, and page faults when the next burst comes) off busy periods.
/// Numbers in docs/serving.md.
const TRIM_AFTER: Duration = Duration::from_secs(1);

/// Hands freed heap memory back to the OS (glibc; other allocators do it themselves).
fn trim_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only walks the allocator's own free lists.
    unsafe {
        libc::malloc_trim(0);
    }
}

impl Worker {
    pub fn new(engine: Engine, settings: Settings, metrics: Arc<Metrics>) -> Self {
        metrics.kv_budget_bytes.store(settings.kv_budget as u64, Relaxed);
        metrics.sample_rates(Instant::now(), true);
        Self {
            engine,
            settings,
            metrics,
            queue: VecDeque::new(),
            active: HashMap::new(),
            reserved: 0,
            draining: false,
            step_ema: 0.05,
            trimmed: true,
        }
    }

    /// Runs until the channel closes, or a drain finishes.
    pub fn run(mut self, rx: Receiver<Cmd>) {
        let _span = tracing::info_span!("engine_thread").entered();
        loop {
            let idle = self.engine.active() == 0 && self.queue.is_empty();
            if idle && self.draining {
                break;
            }
            if idle {
                match self.wait_idle(&rx) {
                    Some(cmd) => self.command(cmd),
                    None => break,
                }
                // The idle gap ends now: the tokens/s gauges read it as flat.
                self.metrics.sample_rates(Instant::now(), true);
            } else if self.engine.active() == 0 {
                // Only queued jobs, none fits (their clients may all be gone): wake up to expire them.
                match rx.recv_timeout(Duration::from_millis(100)) {
                    Ok(cmd) => self.command(cmd),
                    Err(RecvTimeoutError::Timeout) => {}
                    Err(RecvTimeoutError::Disconnected) => self.draining = true,
                }
            }
            loop {
                match rx.try_recv() {
                    Ok(cmd) => self.command(cmd),
                    Err(std::sync::mpsc::TryRecvError::Empty) => break,
                    Err(std::sync::mpsc::TryRecvError::Disconnected) => {
                        self.draining = true;
                        break;
                    }
                }
            }
            self.cancel_gone();
            self.expire_queue();
            self.admit();
            if self.engine.active() > 0 {
                self.step();
            }
            self.publish();
        }
        for job in self.queue.drain(..) {
            let _ = job.out.send(Out::Failed(ApiError::unavailable("the server is shutting down")));
        }
        self.publish();
        tracing::info!("engine thread stopped");
    }

    /// The next command; once the engine has been idle for [`TRIM_AFTER`], the heap is trimmed
    /// first. None when every sender is gone.
    fn wait_idle(&mut self, rx: &Receiver<Cmd>) -> Option<Cmd> {
        if !self.trimmed {
            match rx.recv_timeout(TRIM_AFTER) {
                Ok(cmd) => return Some(cmd),
                Err(RecvTimeoutError::Disconnected) => return None,
                Err(RecvTimeoutError::Timeout) => {
                    let t0 = Instant::now();
                    trim_heap();
                    self.trimmed = true;
                    tracing::debug!(ms = t0.elapsed().as_secs_f64() * 1e3, "idle: heap trimmed");
                }
            }
        }
        rx.recv().ok()
    }

    fn command(&mut self, cmd: Cmd) {
        match cmd {
            Cmd::Drain => {
                tracing::info!(active = self.engine.active(), queued = self.queue.len(), "draining");
                self.draining = true;
                for job in self.queue.drain(..) {
                    let _ = job.out.send(Out::Failed(ApiError::unavailable("the server is shutting down")));
                }
            }
            Cmd::Submit(job) => self.submit(job),
        }
    }

    fn submit(&mut self, job: Box<Job>) {
        if self.draining {
            let _ = job.out.send(Out::Failed(ApiError::unavailable("the server is shutting down")));
            return;
        }
        if job.kv_bytes > self.settings.kv_budget {
            let e = ApiError::invalid(format!(
                "this request needs {} bytes of KV cache, more than the server's whole --kv-budget of {} bytes; \
                 use a smaller capacity (or a bounded policy, or fewer max_tokens)",
                job.kv_bytes, self.settings.kv_budget
            ))
            .with_code("kv_budget_exceeded");
            let _ = job.out.send(Out::Failed(e));
            return;
        }
        if self.queue.is_empty() && self.fits(job.kv_bytes) {
            self.start(job);
        } else if self.queue.len() >= self.settings.max_queue {
            self.metrics.rejected_queue_full.fetch_add(1, Relaxed);
            let e = ApiError::busy(
                format!(
                    "the server is at its KV budget and its queue is full ({} waiting); retry later",
                    self.queue.len()
                ),
                self.retry_after(),
            );
            let _ = job.out.send(Out::Failed(e));
        } else {
            self.queue.push_back(job);
        }
    }

    fn fits(&self, bytes: usize) -> bool {
        self.reserved + bytes <= self.settings.kv_budget
    }

    fn start(&mut self, job: Box<Job>) {
        let Job { state, prompt, cfg, kv_bytes, out, arrived } = *job;
        let max_tokens = cfg.max_tokens;
        match self.engine.add(state, prompt, cfg) {
            Ok(id) => {
                self.reserved += kv_bytes;
                let _ = out.send(Out::Started);
                self.active.insert(id, Active { out, kv_bytes, arrived, max_tokens, last_token: None });
            }
            Err(e) => {
                let _ = out.send(Out::Failed(ApiError::invalid(e.to_string())));
            }
        }
    }

    /// Admits queued jobs in order while they fit.
    fn admit(&mut self) {
        while let Some(job) = self.queue.front() {
            if job.out.is_closed() {
                self.queue.pop_front();
                continue;
            }
            if !self.fits(job.kv_bytes) {
                break;
            }
            let job = self.queue.pop_front().expect("front exists");
            self.start(job);
        }
    }

    fn expire_queue(&mut self) {
        let timeout = self.settings.queue_timeout;
        let retry = self.retry_after();
        let metrics = &self.metrics;
        self.queue.retain(|job| {
            if job.out.is_closed() {
                return false;
            }
            if job.arrived.elapsed() < timeout {
                return true;
            }
            metrics.rejected_queue_full.fetch_add(1, Relaxed);
            let e = ApiError::busy(
                format!("waited {:.0} s for KV budget (--queue-timeout); retry later", timeout.as_secs_f64()),
                retry,
            );
            let _ = job.out.send(Out::Failed(e));
            false
        });
    }

    /// Cancels sequences whose client went away; their slots are freed now.
    fn cancel_gone(&mut self) {
        let gone: Vec<SeqId> = self.active.iter().filter(|(_, a)| a.out.is_closed()).map(|(id, _)| *id).collect();
        for id in gone {
            self.release(id);
            if let Some(f) = self.engine.cancel(id) {
                tracing::info!(id = %id, generated = f.tokens.len(), "client gone; sequence cancelled");
            }
            self.metrics.cancelled.fetch_add(1, Relaxed);
        }
    }

    fn release(&mut self, id: SeqId) -> Option<Active> {
        let a = self.active.remove(&id)?;
        self.reserved -= a.kv_bytes;
        Some(a)
    }

    fn step(&mut self) {
        self.trimmed = false;
        let before: HashMap<SeqId, usize> =
            self.engine.ids().into_iter().filter_map(|id| Some((id, self.engine.progress(id)?.fed))).collect();
        let prompt_len: HashMap<SeqId, usize> = self
            .engine
            .ids()
            .into_iter()
            .filter_map(|id| Some((id, self.engine.progress(id)?.prompt_tokens)))
            .collect();
        let t0 = Instant::now();
        let events = match self.engine.step() {
            Ok(e) => e,
            Err(e) => {
                // The engine reports per-sequence failures as events; an error here leaves every
                // sequence in doubt, so all of them fail.
                tracing::error!(error = %e, "engine step failed");
                for id in self.engine.ids() {
                    self.engine.cancel(id);
                    if let Some(a) = self.release(id) {
                        let _ = a.out.send(Out::Failed(ApiError::internal(format!("the engine failed: {e}"))));
                    }
                }
                return;
            }
        };
        let took = t0.elapsed().as_secs_f64();
        self.step_ema = 0.8 * self.step_ema + 0.2 * took;
        self.metrics.steps.fetch_add(1, Relaxed);
        self.metrics.evicted_entries.store(self.engine.evicted_entries(), Relaxed);
        let mut prefilled = 0;
        for (id, fed) in &before {
            let now = self.engine.progress(*id).map_or(prompt_len[id], |p| p.fed);
            prefilled += now.saturating_sub(*fed);
        }
        self.metrics.prefill_tokens.fetch_add(prefilled as u64, Relaxed);
        for ev in events {
            match ev {
                Event::Token { id, text, .. } => {
                    self.metrics.decode_tokens.fetch_add(1, Relaxed);
                    let Some(a) = self.active.get_mut(&id) else { continue };
                    let now = Instant::now();
                    match a.last_token.replace(now) {
                        None => self.metrics.first_token_seconds.observe(now - a.arrived),
                        Some(t) => self.metrics.inter_token_seconds.observe(now - t),
                    }
                    let gone = a.out.send(Out::Token { text }).is_err();
                    if gone && self.engine.contains(id) {
                        self.release(id);
                        self.engine.cancel(id);
                        self.metrics.cancelled.fetch_add(1, Relaxed);
                    }
                }
                // The server adds no scoring sequences.
                Event::Scored { .. } => {}
                Event::Finished(f) => {
                    if let Some(a) = self.release(f.id) {
                        let _ = a.out.send(Out::Finished(Box::new(f)));
                    }
                }
                Event::Failed { id, error } => {
                    if let Some(a) = self.release(id) {
                        let _ = a.out.send(Out::Failed(ApiError::internal(format!("generation failed: {error}"))));
                    }
                }
            }
        }
    }

    /// Seconds until the first running sequence is expected to finish.
    fn retry_after(&self) -> u64 {
        let remaining = self
            .active
            .iter()
            .filter_map(|(id, a)| Some(a.max_tokens.saturating_sub(self.engine.progress(*id)?.generated)))
            .min()
            .unwrap_or(0);
        ((remaining as f64 * self.step_ema).ceil() as u64).clamp(1, 600)
    }

    fn publish(&self) {
        let m = &self.metrics;
        m.active.store(self.engine.active() as u64, Relaxed);
        m.queued.store(self.queue.len() as u64, Relaxed);
        m.kv_live_bytes.store(self.engine.live_kv_bytes() as u64, Relaxed);
        m.kv_allocated_bytes.store(self.engine.allocated_kv_bytes() as u64, Relaxed);
        // Going idle is sampled whatever the interval, so the gap that follows reads as flat.
        m.sample_rates(Instant::now(), self.engine.active() == 0);
    }
}

#[cfg(test)]
mod tests {
    //! Admission on a tiny random LLaMA (msrnn-tests): fast, so every rule is checked in `cargo test`.

    use std::sync::mpsc::Sender;
    use std::sync::{Arc, OnceLock};
    use std::thread::JoinHandle;

    use candle_core::quantized::GgmlDType;
    use candle_core::Device;
    use msrnn_core::{Capacity, Sampling, StateRecipe};
    use msrnn_engine::{EngineOptions, LoadedModel};
    use msrnn_llama as _;
    use msrnn_modelkit::WeightFormat;
    use msrnn_tests::tiny_llama::{tiny_config, TinyLlama};
    use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver};

    use super::*;

    fn model() -> Arc<LoadedModel> {
        static M: OnceLock<Arc<LoadedModel>> = OnceLock::new();
        M.get_or_init(|| {
            let path = msrnn_tests::files::scratch("server-worker").join("tiny.gguf");
            TinyLlama::random(tiny_config(), 5).write_gguf(&path, GgmlDType::F32, true);
            Arc::new(msrnn_engine::load(&path, WeightFormat::F32, &Device::Cpu).unwrap())
        })
        .clone()
    }

    fn registry() -> Arc<msrnn_core::PolicyRegistry> {
        Arc::new(msrnn_policies::registry())
    }

    /// A TOVA C=16 turn of `max_tokens` greedy tokens (no stop token: it runs its length).
    fn job(max_tokens: usize) -> (Box<Job>, UnboundedReceiver<Out>) {
        let recipe = StateRecipe::new("tova".parse().unwrap(), Capacity::Bounded(16)).max_chunk(8);
        let state = registry().build_state(model().model(), &recipe).unwrap();
        let kv_bytes = state.allocated_kv_bytes();
        let cfg = GenConfig {
            max_tokens,
            sampling: Sampling::Greedy,
            stop_tokens: vec![],
            stop_strings: vec![],
            prefill_chunk: 8,
        };
        let (out, rx) = unbounded_channel();
        let prompt = (0..12).map(|i| 3 + i * 7).collect();
        (Box::new(Job { state, prompt, cfg, kv_bytes, out, arrived: Instant::now() }), rx)
    }

    fn one_state() -> usize {
        job(1).0.kv_bytes
    }

    fn start(
        kv_budget: usize,
        max_queue: usize,
        queue_timeout: Duration,
    ) -> (Sender<Cmd>, JoinHandle<()>, Arc<Metrics>) {
        start_after(kv_budget, max_queue, queue_timeout, std::iter::empty())
    }

    /// The engine thread, started once `jobs` are in its channel (so they all join its first step).
    fn start_after(
        kv_budget: usize,
        max_queue: usize,
        queue_timeout: Duration,
        jobs: impl IntoIterator<Item = Box<Job>>,
    ) -> (Sender<Cmd>, JoinHandle<()>, Arc<Metrics>) {
        let engine = Engine::new(model(), registry(), EngineOptions::default());
        let metrics = Arc::new(Metrics::default());
        let w = Worker::new(engine, Settings { kv_budget, max_queue, queue_timeout }, metrics.clone());
        let (tx, rx) = std::sync::mpsc::channel();
        for j in jobs {
            tx.send(Cmd::Submit(j)).unwrap();
        }
        (tx, std::thread::spawn(move || w.run(rx)), metrics)
    }

    fn submit(tx: &Sender<Cmd>, max_tokens: usize) -> UnboundedReceiver<Out> {
        let (j, rx) = job(max_tokens);
        tx.send(Cmd::Submit(j)).unwrap();
        rx
    }

    /// The first message, or the error it carries.
    fn first(rx: &mut UnboundedReceiver<Out>) -> Result<(), ApiError> {
        match rx.blocking_recv() {
            Some(Out::Started) => Ok(()),
            Some(Out::Failed(e)) => Err(e),
            _ => panic!("expected Started or Failed first"),
        }
    }

    /// The tokens up to the end of the turn.
    fn finish(rx: &mut UnboundedReceiver<Out>) -> usize {
        let mut n = 0;
        loop {
            match rx.blocking_recv() {
                Some(Out::Token { .. }) => n += 1,
                Some(Out::Finished(f)) => {
                    assert_eq!(f.tokens.len(), n);
                    return n;
                }
                Some(Out::Failed(e)) => panic!("failed: {e}"),
                Some(Out::Started) => {}
                None => panic!("channel closed before the end"),
            }
        }
    }

    const FOREVER: usize = 1 << 30;

    #[test]
    fn beyond_the_budget_requests_queue_then_a_full_queue_gets_429() {
        let (tx, thread, metrics) = start(one_state(), 1, Duration::from_secs(60));
        let mut a = submit(&tx, FOREVER);
        first(&mut a).unwrap();
        let mut b = submit(&tx, 3);
        let mut c = submit(&tx, 3);
        let e = first(&mut c).unwrap_err();
        assert_eq!(e.status, axum::http::StatusCode::TOO_MANY_REQUESTS, "{e:?}");
        assert!(e.retry_after.unwrap() >= 1);
        // b waits while a holds the budget ...
        assert!(matches!(a.blocking_recv(), Some(Out::Token { .. })));
        assert!(b.try_recv().is_err(), "b must wait");
        // ... and starts once a's client is gone (cancelled, its slots freed).
        drop(a);
        first(&mut b).unwrap();
        assert_eq!(finish(&mut b), 3);
        assert_eq!(metrics.cancelled.load(Relaxed), 1);
        assert_eq!(metrics.rejected_queue_full.load(Relaxed), 1);
        drop(tx);
        thread.join().unwrap();
        assert_eq!(metrics.active.load(Relaxed), 0);
        assert_eq!(metrics.kv_allocated_bytes.load(Relaxed), 0);
    }

    #[test]
    fn a_queued_request_times_out_with_429_and_one_larger_than_the_budget_gets_400() {
        let (tx, thread, _) = start(one_state(), 4, Duration::from_millis(200));
        let mut a = submit(&tx, FOREVER);
        first(&mut a).unwrap();
        let mut b = submit(&tx, 3);
        let t0 = Instant::now();
        let e = first(&mut b).unwrap_err();
        assert_eq!(e.status, axum::http::StatusCode::TOO_MANY_REQUESTS);
        assert!(t0.elapsed() >= Duration::from_millis(150), "timed out early: {:?}", t0.elapsed());
        assert!(e.message.contains("--queue-timeout"), "{}", e.message);

        let (mut big, mut rx) = job(3);
        big.kv_bytes = one_state() + 1;
        tx.send(Cmd::Submit(big)).unwrap();
        let e = first(&mut rx).unwrap_err();
        assert_eq!((e.status, e.code), (axum::http::StatusCode::BAD_REQUEST, Some("kv_budget_exceeded")));
        drop(a);
        drop(tx);
        thread.join().unwrap();
    }

    #[test]
    fn concurrent_turns_share_steps_and_each_runs_its_length() {
        let (jobs, mut rxs): (Vec<_>, Vec<_>) = [5, 9, 2, 7].iter().map(|&n| job(n)).unzip();
        let (tx, thread, metrics) = start_after(10 * one_state(), 4, Duration::from_secs(60), jobs);
        let counts: Vec<usize> = rxs
            .iter_mut()
            .map(|rx| {
                first(rx).unwrap();
                finish(rx)
            })
            .collect();
        assert_eq!(counts, [5, 9, 2, 7]);
        drop(tx);
        thread.join().unwrap();
        // Batched: the longest's steps (2 prefill chunks, then 8 more tokens), where one at a time
        // would take 4 x 2 + 19 = 27.
        assert_eq!(metrics.steps.load(Relaxed), 10);
        assert_eq!(metrics.decode_tokens.load(Relaxed), 23);
        assert_eq!(metrics.prefill_tokens.load(Relaxed), 48);
        // TOVA C=16 keeps 16 of the 12 prompt tokens and the n - 1 fed back: 16, 20, 13 and 18
        // seen, so 0 + 4 + 0 + 2 entries evicted in every layer.
        let layers = job(1).0.state.num_layers() as u64;
        assert_eq!(metrics.evicted_entries.load(Relaxed), 6 * layers);
        let text = metrics.render(None);
        assert!(text.contains(&format!("\nmsrnn_kv_evicted_entries_total {}\n", 6 * layers)), "{text}");
        // One first token per sequence, n - 1 gaps between its tokens.
        assert!(text.contains("\nmsrnn_time_to_first_token_seconds_count 4\n"), "{text}");
        assert!(text.contains("\nmsrnn_inter_token_seconds_count 19\n"), "{text}");
        // Just now, 23 tokens were generated; the gauge averages them over the window.
        let (_, decode) = metrics.token_rates(Instant::now());
        assert!((decode - 23.0 / crate::metrics::RATE_WINDOW.as_secs_f64()).abs() < 1e-9, "{decode}");
    }

    #[test]
    fn drain_finishes_running_turns_and_refuses_the_rest() {
        // Every command is in the channel before the thread starts, so `a` is running and `queued`
        // waiting (the budget holds one state) when the drain comes, however fast `a` would
        // finish: on a loaded machine it could end before a command sent after its start arrived.
        let (a, a_rx) = job(40);
        let (queued, queued_rx) = job(3);
        let (late, late_rx) = job(3);
        let engine = Engine::new(model(), registry(), EngineOptions::default());
        let settings = Settings { kv_budget: one_state(), max_queue: 4, queue_timeout: Duration::from_secs(60) };
        let w = Worker::new(engine, settings, Arc::new(Metrics::default()));
        let (tx, rx) = std::sync::mpsc::channel();
        for cmd in [Cmd::Submit(a), Cmd::Submit(queued), Cmd::Drain, Cmd::Submit(late)] {
            tx.send(cmd).unwrap();
        }
        let thread = std::thread::spawn(move || w.run(rx));
        let (mut a, mut queued, mut late) = (a_rx, queued_rx, late_rx);
        first(&mut a).unwrap();
        assert_eq!(finish(&mut a), 40);
        assert_eq!(first(&mut queued).unwrap_err().status, axum::http::StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(first(&mut late).unwrap_err().status, axum::http::StatusCode::SERVICE_UNAVAILABLE);
        // The thread stops on its own once drained, with the sender still alive.
        thread.join().unwrap();
        drop(tx);
    }
}

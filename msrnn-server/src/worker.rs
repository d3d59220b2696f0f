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
    first_token: bool,
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
}

impl Worker {
    pub fn new(engine: Engine, settings: Settings, metrics: Arc<Metrics>) -> Self {
        metrics.kv_budget_bytes.store(settings.kv_budget as u64, Relaxed);
        Self {
            engine,
            settings,
            metrics,
            queue: VecDeque::new(),
            active: HashMap::new(),
            reserved: 0,
            draining: false,
            step_ema: 0.05,
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
                match rx.recv() {
                    Ok(cmd) => self.command(cmd),
                    Err(_) => break,
                }
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
                self.active.insert(id, Active { out, kv_bytes, arrived, max_tokens, first_token: false });
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
                    if !a.first_token {
                        a.first_token = true;
                        self.metrics.first_token_seconds.observe(a.arrived.elapsed());
                    }
                    let gone = a.out.send(Out::Token { text }).is_err();
                    if gone && self.engine.contains(id) {
                        self.release(id);
                        self.engine.cancel(id);
                        self.metrics.cancelled.fetch_add(1, Relaxed);
                    }
                }
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
    }
}

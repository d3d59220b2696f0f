//! The thread pool the matmuls (and the attention step) share.
//!
//! Rules:
//! - The caller participates: [`for_each`] publishes `n` tasks, the caller and the workers claim them one at a time
//!   (dynamic claiming), and the call returns when all are done.
//! - Workers wait for the next call spinning for [`SPIN`] (after the first microseconds, yielding the CPU at each
//!   turn, so a worker that shares a core with its caller hands it back at once), then park: an idle pool uses no
//!   CPU. The caller waits for the workers' last tasks the same way.
//! - One call at a time: a call made while the pool is busy (another thread's call, or a task calling back into the
//!   pool) runs its tasks inline on the calling thread. Results never depend on who ran a task.
//! - Stalls: a worker that the OS deschedules while it holds a task makes the caller wait. When the caller waits much
//!   longer than a task takes, that is a stall; [`STALLS_TO_BACK_OFF`] stalls within [`STALL_WINDOW`] mean another
//!   program wants the core, and the pool runs the following calls serially for a back-off period (doubling each time,
//!   up to [`MAX_BACKOFF`]; halving after a clean stretch), so a busy machine gets one-thread speed, not less. A single
//!   stall (a shared host's occasional preemption) costs its wait and nothing more: backing off on each one ran most
//!   of a two-thread benchmark serially on an otherwise idle 2-core VM.

use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU64, AtomicUsize, Ordering::*};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::{self, JoinHandle, Thread};
use std::time::{Duration, Instant};

/// How long an idle worker spins before it parks.
pub const SPIN: Duration = Duration::from_micros(50);
/// A wait for a worker's task is a stall when it exceeds this and several times the caller's own mean task time.
pub const STALL: Duration = Duration::from_micros(200);
/// The first serial period after a stall.
pub const MIN_BACKOFF: Duration = Duration::from_millis(20);
/// The longest serial period.
pub const MAX_BACKOFF: Duration = Duration::from_secs(1);
/// Stalls within [`STALL_WINDOW`] that start a serial period.
pub const STALLS_TO_BACK_OFF: u32 = 3;
/// The window in which [`STALLS_TO_BACK_OFF`] stalls start a serial period.
pub const STALL_WINDOW: Duration = Duration::from_millis(100);

/// Spin iterations (a pause instruction each) before a waiting thread starts yielding its CPU.
const PURE_SPINS: u32 = 256;

/// Tasks per call that the claim word can count; larger calls are grouped.
const MAX_TASKS: usize = (1 << 20) - 1;

// The claim word: epoch (24 bits) | next task (20 bits) | task count (20 bits). A claim is a compare-exchange on the
// whole word, so a late worker can never claim a task of a later call than the one it read the closure of.
fn pack(epoch: u64, next: u64, n: u64) -> u64 {
    ((epoch & 0xFF_FFFF) << 40) | (next << 20) | n
}
fn unpack(w: u64) -> (u64, u64, u64) {
    (w >> 40, (w >> 20) & 0xF_FFFF, w & 0xF_FFFF)
}

/// The closure of the current call; lives on the caller's stack while any of its tasks is unfinished.
struct Desc {
    f: *const (dyn Fn(usize) + Sync + 'static),
}

/// Keeps a hot atomic on a cache line of its own (claims and completions would otherwise bounce one line).
#[repr(align(64))]
struct Line<T>(T);

impl<T> std::ops::Deref for Line<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.0
    }
}

struct Shared {
    word: Line<AtomicU64>,
    desc: AtomicPtr<Desc>,
    done: Line<AtomicUsize>,
    panicked: AtomicBool,
    caller_sleeping: AtomicBool,
    caller: Mutex<Option<Thread>>,
    worker_tasks: AtomicU64,
}

struct WorkerCtl {
    sleeping: AtomicBool,
    stop: AtomicBool,
}

struct Worker {
    ctl: Arc<WorkerCtl>,
    thread: Thread,
    handle: JoinHandle<()>,
}

struct State {
    workers: Vec<Worker>,
    epoch: u64,
    serial_until: Option<Instant>,
    backoff: Duration,
    last_change: Instant,
    /// Stalls since `window_start` (reset when the window has passed).
    recent_stalls: u32,
    window_start: Instant,
}

struct Pool {
    shared: Arc<Shared>,
    state: Mutex<State>,
    threads: AtomicUsize,
    parallel_calls: AtomicU64,
    inline_calls: AtomicU64,
    serial_calls: AtomicU64,
    stalls: AtomicU64,
}

fn pool() -> &'static Pool {
    static POOL: OnceLock<Pool> = OnceLock::new();
    POOL.get_or_init(|| {
        let pool = Pool {
            shared: Arc::new(Shared {
                word: Line(AtomicU64::new(0)),
                desc: AtomicPtr::new(std::ptr::null_mut()),
                done: Line(AtomicUsize::new(0)),
                panicked: AtomicBool::new(false),
                caller_sleeping: AtomicBool::new(false),
                caller: Mutex::new(None),
                worker_tasks: AtomicU64::new(0),
            }),
            state: Mutex::new(State {
                workers: Vec::new(),
                epoch: 0,
                serial_until: None,
                backoff: MIN_BACKOFF,
                last_change: Instant::now(),
                recent_stalls: 0,
                window_start: Instant::now(),
            }),
            threads: AtomicUsize::new(1),
            parallel_calls: AtomicU64::new(0),
            inline_calls: AtomicU64::new(0),
            serial_calls: AtomicU64::new(0),
            stalls: AtomicU64::new(0),
        };
        let n = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
        resize(&pool, &mut pool.state.lock().unwrap_or_else(|e| e.into_inner()), n);
        pool
    })
}

/// The most threads the pool runs, whatever is asked: far above any core count it helps with, far below what makes
/// the OS refuse threads.
pub const MAX_THREADS: usize = 256;

fn resize(pool: &Pool, st: &mut State, threads: usize) -> usize {
    let threads = threads.clamp(1, MAX_THREADS);
    while st.workers.len() + 1 > threads {
        let w = st.workers.pop().expect("a worker to stop");
        w.ctl.stop.store(true, SeqCst);
        w.thread.unpark();
        let _ = w.handle.join();
    }
    while st.workers.len() + 1 < threads {
        let ctl = Arc::new(WorkerCtl { sleeping: AtomicBool::new(false), stop: AtomicBool::new(false) });
        let (shared, c) = (pool.shared.clone(), ctl.clone());
        let spawned = thread::Builder::new()
            .name(format!("msrnn-pool-{}", st.workers.len() + 1))
            .spawn(move || worker_main(&shared, &c));
        match spawned {
            Ok(handle) => st.workers.push(Worker { ctl, thread: handle.thread().clone(), handle }),
            // The OS refused another thread: run with the ones there are.
            Err(_) => break,
        }
    }
    let n = st.workers.len() + 1;
    pool.threads.store(n, SeqCst);
    n
}

/// Sets the number of threads that run a call's tasks, the caller included (`n = 1`: no workers); returns the number
/// set, which is less than `n` above [`MAX_THREADS`] or when the OS refuses to start more threads (never a panic).
pub fn set_threads(n: usize) -> usize {
    let pool = pool();
    let mut st = pool.state.lock().unwrap_or_else(|e| e.into_inner());
    resize(pool, &mut st, n)
}

/// The number of threads a call may use, the caller included (by default, the CPUs available).
pub fn threads() -> usize {
    pool().threads.load(Relaxed)
}

/// Counters since the process started, for benches and diagnostics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Calls whose tasks were offered to the workers.
    pub parallel_calls: u64,
    /// Calls run inline because the pool was busy, had no workers or had a single task.
    pub inline_calls: u64,
    /// Calls run inline in a serial period (after stalls close together).
    pub serial_calls: u64,
    /// Calls in which the caller waited for a descheduled worker.
    pub stalls: u64,
    /// Tasks the workers ran.
    pub worker_tasks: u64,
}

pub fn stats() -> Stats {
    let p = pool();
    Stats {
        parallel_calls: p.parallel_calls.load(Relaxed),
        inline_calls: p.inline_calls.load(Relaxed),
        serial_calls: p.serial_calls.load(Relaxed),
        stalls: p.stalls.load(Relaxed),
        worker_tasks: p.shared.worker_tasks.load(Relaxed),
    }
}

fn worker_main(shared: &Shared, ctl: &WorkerCtl) {
    let mut seen = unpack(shared.word.load(Acquire)).0;
    loop {
        let mut since = Instant::now();
        let mut spins = 0u32;
        loop {
            if ctl.stop.load(Acquire) {
                return;
            }
            let e = unpack(shared.word.load(Acquire)).0;
            if e != seen {
                seen = e;
                break;
            }
            spins = spins.wrapping_add(1);
            if spins > PURE_SPINS {
                // Another thread (perhaps our caller, when a busy machine put us on its core) may want this CPU.
                thread::yield_now();
            }
            if spins.is_multiple_of(64) && since.elapsed() > SPIN {
                ctl.sleeping.store(true, SeqCst);
                if unpack(shared.word.load(SeqCst)).0 == seen && !ctl.stop.load(SeqCst) {
                    thread::park();
                }
                ctl.sleeping.store(false, SeqCst);
                since = Instant::now();
                spins = 0;
            } else {
                std::hint::spin_loop();
            }
        }
        let n = run_tasks(shared, seen, None);
        shared.worker_tasks.fetch_add(n as u64, Relaxed);
    }
}

/// Claims and runs tasks of call `epoch` until none is left; returns how many it ran. A panic is recorded (workers)
/// or kept in `payload` (the caller) and the task still counts as done, so the call always completes.
fn run_tasks(shared: &Shared, epoch: u64, mut payload: Option<&mut Option<Box<dyn std::any::Any + Send>>>) -> usize {
    let mut ran = 0;
    loop {
        let w = shared.word.load(Acquire);
        let (e, next, n) = unpack(w);
        if e != epoch || next >= n {
            return ran;
        }
        if shared.word.compare_exchange_weak(w, pack(e, next + 1, n), AcqRel, Acquire).is_err() {
            continue;
        }
        // SAFETY: the claim succeeded, so call `epoch` has an unfinished task and its caller is still waiting in
        // `for_each`, which keeps `desc` and the closure alive (a later call cannot have replaced `desc` yet).
        let f = unsafe { &*(*shared.desc.load(Acquire)).f };
        if let Err(p) = catch_unwind(AssertUnwindSafe(|| f(next as usize))) {
            shared.panicked.store(true, SeqCst);
            if let Some(slot) = payload.as_deref_mut() {
                slot.get_or_insert(p);
            }
        }
        ran += 1;
        if shared.done.fetch_add(1, AcqRel) + 1 == n as usize && shared.caller_sleeping.load(SeqCst) {
            if let Some(t) = shared.caller.lock().unwrap_or_else(|e| e.into_inner()).as_ref() {
                t.unpark();
            }
        }
    }
}

/// Runs `f(i)` for every `i < n_tasks`, on the pool's threads and the caller's; returns when all are done.
/// A panic in a task is re-raised here once every task has finished.
pub fn for_each(n_tasks: usize, f: &(dyn Fn(usize) + Sync)) {
    if n_tasks == 0 {
        return;
    }
    if n_tasks > MAX_TASKS {
        let g = n_tasks.div_ceil(MAX_TASKS);
        return for_each(n_tasks.div_ceil(g), &|t| (t * g..((t + 1) * g).min(n_tasks)).for_each(f));
    }
    let pool = pool();
    let inline = |counter: &AtomicU64| {
        counter.fetch_add(1, Relaxed);
        (0..n_tasks).for_each(f)
    };
    if n_tasks == 1 {
        return inline(&pool.inline_calls);
    }
    let Ok(mut st) = pool.state.try_lock() else {
        return inline(&pool.inline_calls);
    };
    if st.workers.is_empty() {
        drop(st);
        return inline(&pool.inline_calls);
    }
    if let Some(until) = st.serial_until {
        if Instant::now() < until {
            drop(st);
            return inline(&pool.serial_calls);
        }
        st.serial_until = None;
    }
    pool.parallel_calls.fetch_add(1, Relaxed);
    let shared = &*pool.shared;
    // SAFETY: only the lifetime is erased; `for_each` does not return before every task is done.
    let f: *const (dyn Fn(usize) + Sync + 'static) = unsafe { std::mem::transmute(f) };
    let desc = Desc { f };
    shared.done.store(0, Relaxed);
    shared.panicked.store(false, Relaxed);
    shared.desc.store(&desc as *const Desc as *mut Desc, Release);
    st.epoch = (st.epoch + 1) & 0xFF_FFFF;
    let epoch = st.epoch;
    shared.word.store(pack(epoch, 0, n_tasks as u64), SeqCst);
    for w in &st.workers {
        if w.ctl.sleeping.swap(false, SeqCst) {
            w.thread.unpark();
        }
    }
    let t0 = Instant::now();
    let mut payload = None;
    let mine = run_tasks(shared, epoch, Some(&mut payload));
    let t1 = Instant::now();
    let mean = t1.duration_since(t0) / mine.max(1) as u32;
    let patience = STALL.max(mean * 3);
    let mut stalled = false;
    let mut spins = 0u32;
    while shared.done.load(Acquire) < n_tasks {
        if t1.elapsed() < patience {
            spins += 1;
            if spins > PURE_SPINS {
                thread::yield_now();
            } else {
                std::hint::spin_loop();
            }
            continue;
        }
        // A worker holds a task and is not running: sleep so the OS can run it here, and be woken when it is done.
        stalled = true;
        *shared.caller.lock().unwrap_or_else(|e| e.into_inner()) = Some(thread::current());
        shared.caller_sleeping.store(true, SeqCst);
        if shared.done.load(SeqCst) < n_tasks {
            thread::park_timeout(Duration::from_millis(1));
        }
        shared.caller_sleeping.store(false, SeqCst);
    }
    shared.desc.store(std::ptr::null_mut(), Release);
    let now = Instant::now();
    if stalled {
        pool.stalls.fetch_add(1, Relaxed);
        if now.duration_since(st.window_start) > STALL_WINDOW {
            (st.recent_stalls, st.window_start) = (0, now);
        }
        st.recent_stalls += 1;
        if st.recent_stalls >= STALLS_TO_BACK_OFF {
            st.recent_stalls = 0;
            st.serial_until = Some(now + st.backoff);
            st.backoff = (st.backoff * 2).min(MAX_BACKOFF);
            st.last_change = now;
        }
    } else if st.backoff > MIN_BACKOFF && now.duration_since(st.last_change) > st.backoff * 4 {
        st.backoff = (st.backoff / 2).max(MIN_BACKOFF);
        st.last_change = now;
    }
    let panicked = shared.panicked.load(SeqCst);
    drop(st);
    if let Some(p) = payload {
        resume_unwind(p);
    }
    if panicked {
        panic!("a task of pool::for_each panicked on a worker thread");
    }
}

/// Runs `f(i, &mut items[i])` for every item, as [`for_each`] does (each item is visited by exactly one thread).
pub fn for_each_mut<T: Send>(items: &mut [T], f: &(dyn Fn(usize, &mut T) + Sync)) {
    struct Items<T>(*mut T);
    // SAFETY: every index is visited once, so the `&mut` handed out are disjoint; T: Send lets them cross threads.
    unsafe impl<T: Send> Sync for Items<T> {}
    let base = Items(items.as_mut_ptr());
    let base = &base;
    for_each(items.len(), &|i| f(i, unsafe { &mut *base.0.add(i) }));
}

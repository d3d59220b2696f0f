//! The pool: every task runs exactly once, callers from many threads and nested calls work, panics come back to the
//! caller, idle workers park, and matmul results are the same for every thread count.

use msrnn_kernels::{pool, Format, QMatrix};
use msrnn_tests::Rng;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

/// The thread count is process-wide: the tests take turns (which also keeps the idle test's CPU count clean).
static THREADS: Mutex<()> = Mutex::new(());

#[test]
fn every_task_runs_once_for_any_thread_count() {
    let _g = THREADS.lock().unwrap_or_else(|e| e.into_inner());
    for threads in [1, 2, 3, 4] {
        pool::set_threads(threads);
        assert_eq!(pool::threads(), threads);
        for n in [0, 1, 2, 3, 17, 1000] {
            let hits: Vec<AtomicUsize> = (0..n).map(|_| AtomicUsize::new(0)).collect();
            for _ in 0..20 {
                pool::for_each(n, &|i| {
                    hits[i].fetch_add(1, Ordering::Relaxed);
                });
            }
            assert!(hits.iter().all(|h| h.load(Ordering::Relaxed) == 20), "{threads} threads, {n} tasks");
        }
    }
    pool::set_threads(2);
}

/// A huge count (`--threads 100000`) is capped, never a panic, and the pool still runs every task.
#[test]
fn a_huge_thread_count_is_capped_not_a_panic() {
    let _g = THREADS.lock().unwrap_or_else(|e| e.into_inner());
    for n in [100_000, usize::MAX, 0] {
        let got = pool::set_threads(n);
        assert!((1..=pool::MAX_THREADS).contains(&got), "{n}: {got}");
        assert_eq!(pool::threads(), got);
        let hits: Vec<AtomicUsize> = (0..3000).map(|_| AtomicUsize::new(0)).collect();
        pool::for_each(hits.len(), &|i| {
            hits[i].fetch_add(1, Ordering::Relaxed);
        });
        assert!(hits.iter().all(|h| h.load(Ordering::Relaxed) == 1), "{n} threads asked, {got} set");
    }
    assert_eq!(pool::set_threads(0), 1, "0 means the caller alone");
    assert_eq!(pool::set_threads(2), 2);
}

#[test]
fn for_each_mut_visits_each_item_once() {
    let _g = THREADS.lock().unwrap_or_else(|e| e.into_inner());
    let mut items: Vec<u64> = (0..333).collect();
    pool::for_each_mut(&mut items, &|i, v| *v = *v * 2 + i as u64);
    assert!(items.iter().enumerate().all(|(i, &v)| v == 3 * i as u64));
}

#[test]
fn calls_from_many_threads_and_nested_calls_complete() {
    let _g = THREADS.lock().unwrap_or_else(|e| e.into_inner());
    let total = AtomicUsize::new(0);
    std::thread::scope(|s| {
        for _ in 0..4 {
            s.spawn(|| {
                for _ in 0..50 {
                    pool::for_each(8, &|_| {
                        // A task calling back into the pool runs its inner call inline.
                        pool::for_each(3, &|_| {
                            total.fetch_add(1, Ordering::Relaxed);
                        });
                    });
                }
            });
        }
    });
    assert_eq!(total.load(Ordering::Relaxed), 4 * 50 * 8 * 3);
}

#[test]
fn a_panicking_task_reaches_the_caller_and_the_pool_still_works() {
    let _g = THREADS.lock().unwrap_or_else(|e| e.into_inner());
    pool::set_threads(2);
    for bad in [0, 63] {
        let r = std::panic::catch_unwind(|| pool::for_each(64, &|i| assert!(i != bad, "task {i} fails")));
        assert!(r.is_err(), "task {bad}'s panic was lost");
    }
    let n = AtomicUsize::new(0);
    pool::for_each(64, &|_| {
        n.fetch_add(1, Ordering::Relaxed);
    });
    assert_eq!(n.load(Ordering::Relaxed), 64);
}

#[test]
fn matmul_results_are_identical_for_one_two_and_three_threads() {
    let _g = THREADS.lock().unwrap_or_else(|e| e.into_inner());
    let mut rng = Rng::new(4);
    let (out_dim, in_dim) = (1000, 576);
    let w = rng.vec(out_dim * in_dim, -0.1, 0.1);
    // The formats made here (the others share the tiling and the pool split; tests/exact.rs checks them).
    for format in [Format::Q4_1, Format::Q8_0] {
        let m = QMatrix::quantize(format, &w, out_dim, in_dim).unwrap();
        for rows in [1, 5, 130] {
            let x = rng.vec(rows * in_dim, -1.0, 1.0);
            let mut want = vec![0f32; rows * out_dim];
            pool::set_threads(1);
            m.matmul(&x, rows, &mut want);
            for threads in [2, 3] {
                pool::set_threads(threads);
                for _ in 0..5 {
                    let mut y = vec![0f32; rows * out_dim];
                    m.matmul(&x, rows, &mut y);
                    assert!(y.iter().zip(&want).all(|(a, b)| a.to_bits() == b.to_bits()), "{format} {rows} {threads}");
                }
            }
        }
    }
    pool::set_threads(2);
}

/// Idle workers park after a short spin: a process with an idle pool uses (almost) no CPU.
#[cfg(target_os = "linux")]
#[test]
fn idle_workers_park() {
    let _g = THREADS.lock().unwrap_or_else(|e| e.into_inner());
    pool::set_threads(2);
    pool::for_each(16, &|_| {});
    std::thread::sleep(std::time::Duration::from_millis(20));
    let cpu = || {
        // utime + stime of the whole process, in clock ticks.
        let stat = std::fs::read_to_string("/proc/self/stat").unwrap();
        let f: Vec<&str> = stat[stat.rfind(')').unwrap() + 2..].split_whitespace().collect();
        f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()
    };
    let before = cpu();
    std::thread::sleep(std::time::Duration::from_millis(500));
    let ticks = cpu() - before;
    // A spinning worker would burn ~50 ticks (at 100 Hz) in 0.5 s; other tests of this binary may run meanwhile.
    assert!(ticks < 40, "{ticks} clock ticks of CPU in 0.5 s of idling");
}

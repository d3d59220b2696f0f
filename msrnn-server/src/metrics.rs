//! Counters for `GET /metrics`, in Prometheus' text format. Written by hand: a dozen atomics do
//! not need a metrics framework.

use std::collections::{BTreeMap, VecDeque};
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Upper bounds (seconds) of the latency histograms' buckets.
const BUCKETS: [f64; 12] = [0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0];

/// A latency histogram: cumulative counts are computed when rendered.
#[derive(Default)]
pub struct Histogram {
    counts: [AtomicU64; BUCKETS.len() + 1],
    sum_us: AtomicU64,
}

impl Histogram {
    pub fn observe(&self, d: Duration) {
        let s = d.as_secs_f64();
        let i = BUCKETS.iter().position(|&b| s <= b).unwrap_or(BUCKETS.len());
        self.counts[i].fetch_add(1, Relaxed);
        self.sum_us.fetch_add(d.as_micros() as u64, Relaxed);
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        let mut cum = 0;
        for (i, b) in BUCKETS.iter().enumerate() {
            cum += self.counts[i].load(Relaxed);
            let _ = writeln!(out, "{name}_bucket{{le=\"{b}\"}} {cum}");
        }
        cum += self.counts[BUCKETS.len()].load(Relaxed);
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {cum}");
        let _ = writeln!(out, "{name}_sum {}", self.sum_us.load(Relaxed) as f64 / 1e6);
        let _ = writeln!(out, "{name}_count {cum}");
    }
}

/// The span the tokens/s gauges average over.
pub const RATE_WINDOW: Duration = Duration::from_secs(10);
/// The engine thread samples the token counters at most this often while busy.
const SAMPLE_EVERY: Duration = Duration::from_millis(250);

/// Samples of the token counters `(when, prefill, decode)`, oldest first: the tokens/s gauges are
/// the counters' growth over the last [`RATE_WINDOW`], read between samples by linear
/// interpolation. The engine thread samples when it wakes from idle and when it goes idle, so an
/// idle gap reads as flat, not as a slow trickle.
#[derive(Default)]
struct Samples(VecDeque<(Instant, u64, u64)>);

impl Samples {
    /// The counters' values at `t`: before the first sample, the first; after the last, the last.
    fn at(&self, t: Instant) -> (f64, f64) {
        let s = &self.0;
        let Some(i) = s.iter().position(|x| x.0 >= t) else {
            return s.back().map_or((0.0, 0.0), |x| (x.1 as f64, x.2 as f64));
        };
        if i == 0 {
            return (s[0].1 as f64, s[0].2 as f64);
        }
        let (a, b) = (s[i - 1], s[i]);
        let f = (t - a.0).as_secs_f64() / (b.0 - a.0).as_secs_f64().max(1e-9);
        let lerp = |x: u64, y: u64| x as f64 + f * (y as f64 - x as f64);
        (lerp(a.1, b.1), lerp(a.2, b.2))
    }

    /// Drops what the window no longer needs: everything but the last sample at or before its start.
    fn prune(&mut self, now: Instant) {
        let start = now.checked_sub(RATE_WINDOW).unwrap_or(now);
        while self.0.len() >= 2 && self.0[1].0 <= start {
            self.0.pop_front();
        }
    }
}

/// Everything `/metrics` reports. Gauges are set by the engine thread after every step; counters
/// only grow.
#[derive(Default)]
pub struct Metrics {
    pub active: AtomicU64,
    pub queued: AtomicU64,
    pub kv_live_bytes: AtomicU64,
    pub kv_allocated_bytes: AtomicU64,
    pub kv_budget_bytes: AtomicU64,
    pub prefill_tokens: AtomicU64,
    pub decode_tokens: AtomicU64,
    pub steps: AtomicU64,
    /// Key/value entries (one token in one layer) the states' policies evicted.
    pub evicted_entries: AtomicU64,
    pub cancelled: AtomicU64,
    pub rejected_queue_full: AtomicU64,
    pub sessions_saved: AtomicU64,
    pub sessions_resumed: AtomicU64,
    pub open_connections: AtomicU64,
    pub request_seconds: Histogram,
    pub first_token_seconds: Histogram,
    /// Between consecutive tokens of one sequence, as the engine thread emits them.
    pub inter_token_seconds: Histogram,
    samples: Mutex<Samples>,
    requests: Mutex<BTreeMap<(&'static str, u16), u64>>,
}

impl Metrics {
    /// An HTTP response to `endpoint` with its status code. (A completion's duration is observed
    /// when its last byte is ready, which for a stream is long after the response started.)
    pub fn request(&self, endpoint: &'static str, status: u16) {
        *self.requests.lock().unwrap_or_else(|p| p.into_inner()).entry((endpoint, status)).or_default() += 1;
    }

    /// Samples the token counters for the tokens/s gauges: at most every 250 ms unless `force`d
    /// (waking from idle, going idle).
    pub fn sample_rates(&self, now: Instant, force: bool) {
        let mut s = self.samples.lock().unwrap_or_else(|p| p.into_inner());
        if !force && s.0.back().is_some_and(|b| now.saturating_duration_since(b.0) < SAMPLE_EVERY) {
            return;
        }
        s.0.push_back((now, self.prefill_tokens.load(Relaxed), self.decode_tokens.load(Relaxed)));
        s.prune(now);
    }

    /// Prefill and decode tokens per second over the [`RATE_WINDOW`] ending at `now`.
    pub fn token_rates(&self, now: Instant) -> (f64, f64) {
        let s = self.samples.lock().unwrap_or_else(|p| p.into_inner());
        if s.0.is_empty() {
            return (0.0, 0.0);
        }
        let (p0, d0) = s.at(now.checked_sub(RATE_WINDOW).unwrap_or(now));
        let w = RATE_WINDOW.as_secs_f64();
        let rate = |now: u64, then: f64| (now as f64 - then).max(0.0) / w;
        (rate(self.prefill_tokens.load(Relaxed), p0), rate(self.decode_tokens.load(Relaxed), d0))
    }

    /// The text `/metrics` returns; `sessions` is the store's count (None if it could not be read).
    pub fn render(&self, sessions: Option<usize>) -> String {
        self.render_at(sessions, Instant::now())
    }

    fn render_at(&self, sessions: Option<usize>, now: Instant) -> String {
        let mut out = String::new();
        let mut one = |name: &str, kind: &str, help: &str, v: u64| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}");
        };
        let g = |a: &AtomicU64| a.load(Relaxed);
        one("msrnn_sequences_active", "gauge", "Sequences in the engine's batch.", g(&self.active));
        one("msrnn_sequences_queued", "gauge", "Requests waiting for KV budget.", g(&self.queued));
        one(
            "msrnn_kv_live_bytes",
            "gauge",
            "Bytes of live key/value entries in active states.",
            g(&self.kv_live_bytes),
        );
        one(
            "msrnn_kv_allocated_bytes",
            "gauge",
            "Bytes of key/value buffers allocated by active states.",
            g(&self.kv_allocated_bytes),
        );
        one("msrnn_kv_budget_bytes", "gauge", "The --kv-budget admission limit.", g(&self.kv_budget_bytes));
        one("msrnn_prefill_tokens_total", "counter", "Prompt tokens fed to the model.", g(&self.prefill_tokens));
        one("msrnn_decode_tokens_total", "counter", "Tokens generated.", g(&self.decode_tokens));
        one("msrnn_engine_steps_total", "counter", "Batched forward steps.", g(&self.steps));
        one(
            "msrnn_kv_evicted_entries_total",
            "counter",
            "Key/value entries (one token in one layer) evicted from running states by their policies \
             (or the model's sliding window).",
            g(&self.evicted_entries),
        );
        one(
            "msrnn_sequences_cancelled_total",
            "counter",
            "Sequences cancelled because their client went away.",
            g(&self.cancelled),
        );
        one(
            "msrnn_requests_rejected_total",
            "counter",
            "Requests refused with 429 (queue full or waited too long).",
            g(&self.rejected_queue_full),
        );
        one("msrnn_session_saves_total", "counter", "Finished turns stored.", g(&self.sessions_saved));
        one(
            "msrnn_session_resumes_total",
            "counter",
            "Turns that resumed a stored session.",
            g(&self.sessions_resumed),
        );
        one("msrnn_open_connections", "gauge", "Open HTTP connections.", g(&self.open_connections));
        if let Some(n) = sessions {
            one("msrnn_sessions_stored", "gauge", "Sessions in the session store.", n as u64);
        }
        let (prefill_rate, decode_rate) = self.token_rates(now);
        for (name, help, v) in [
            ("msrnn_prefill_tokens_per_second", "Prompt tokens fed per second over the last 10 s.", prefill_rate),
            ("msrnn_decode_tokens_per_second", "Tokens generated per second over the last 10 s.", decode_rate),
        ] {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v:.3}");
        }
        let _ = writeln!(
            out,
            "# HELP msrnn_http_requests_total HTTP requests by endpoint and status.\n# TYPE msrnn_http_requests_total counter"
        );
        for ((ep, code), n) in self.requests.lock().unwrap_or_else(|p| p.into_inner()).iter() {
            let _ = writeln!(out, "msrnn_http_requests_total{{endpoint=\"{ep}\",code=\"{code}\"}} {n}");
        }
        self.request_seconds.render(
            &mut out,
            "msrnn_request_duration_seconds",
            "Completion requests, from arrival to the last byte of the answer.",
        );
        self.first_token_seconds.render(
            &mut out,
            "msrnn_time_to_first_token_seconds",
            "From a request's arrival to its first generated token.",
        );
        self.inter_token_seconds.render(
            &mut out,
            "msrnn_inter_token_seconds",
            "Between consecutive generated tokens of one sequence.",
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_prometheus_text() {
        let m = Metrics::default();
        m.active.store(3, Relaxed);
        m.request("/v1/chat/completions", 200);
        m.request("/v1/chat/completions", 200);
        m.request("/health", 200);
        m.request_seconds.observe(Duration::from_millis(30));
        m.request_seconds.observe(Duration::from_secs(100));
        let t = m.render(Some(7));
        assert!(t.contains("\nmsrnn_sequences_active 3\n"), "{t}");
        assert!(t.contains("msrnn_sessions_stored 7"));
        assert!(t.contains("msrnn_http_requests_total{endpoint=\"/v1/chat/completions\",code=\"200\"} 2"));
        // 30 ms falls in the 0.05 bucket; 100 s only in +Inf.
        assert!(t.contains("msrnn_request_duration_seconds_bucket{le=\"0.025\"} 0"));
        assert!(t.contains("msrnn_request_duration_seconds_bucket{le=\"0.05\"} 1"));
        assert!(t.contains("msrnn_request_duration_seconds_bucket{le=\"60\"} 1"));
        assert!(t.contains("msrnn_request_duration_seconds_bucket{le=\"+Inf\"} 2"));
        assert!(t.contains("msrnn_request_duration_seconds_count 2"));
        assert!(t.contains("msrnn_request_duration_seconds_sum 100.03"));
        // Every sample line is `name{labels} value` with a numeric value.
        for line in t.lines().filter(|l| !l.starts_with('#')) {
            let v = line.rsplit(' ').next().unwrap();
            assert!(v.parse::<f64>().is_ok(), "{line}");
        }
    }

    #[test]
    fn token_rates_average_the_last_window_and_read_idle_gaps_as_flat() {
        let m = Metrics::default();
        let t0 = Instant::now();
        let at = |s: f64| t0 + Duration::from_secs_f64(s);
        assert_eq!(m.token_rates(at(1.0)), (0.0, 0.0), "no samples yet");
        m.sample_rates(t0, true);
        // 100 ms later: too soon for an unforced sample, which is skipped.
        m.decode_tokens.store(5, Relaxed);
        m.sample_rates(at(0.1), false);
        assert_eq!(m.samples.lock().unwrap().0.len(), 1);
        // Busy for 2 s: 200 decode and 1,000 prefill tokens, then idle (a forced sample).
        m.decode_tokens.store(200, Relaxed);
        m.prefill_tokens.store(1000, Relaxed);
        m.sample_rates(at(2.0), true);
        // Within the window everything counts: 1000 / 10 and 200 / 10.
        assert_eq!(m.token_rates(at(3.0)), (100.0, 20.0));
        // 11 s in, the window starts at 1 s, halfway through the busy stretch (interpolated).
        assert_eq!(m.token_rates(at(11.0)), (50.0, 10.0));
        // Long idle: nothing.
        assert_eq!(m.token_rates(at(60.0)), (0.0, 0.0));
        // Work resumes at 100 s (a forced sample on waking: the gap stays flat), 30 tokens by 101 s.
        m.sample_rates(at(100.0), true);
        m.decode_tokens.store(230, Relaxed);
        m.sample_rates(at(101.0), false);
        assert_eq!(m.token_rates(at(101.0)), (0.0, 3.0));
        // Pruned to what the window needs: the last sample before it, and those inside.
        assert_eq!(m.samples.lock().unwrap().0.len(), 3);
        let t = m.render_at(None, at(101.0));
        assert!(t.contains("\nmsrnn_decode_tokens_per_second 3.000\n"), "{t}");
        assert!(t.contains("\nmsrnn_prefill_tokens_per_second 0.000\n"), "{t}");
    }
}

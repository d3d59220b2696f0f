//! Counters for `GET /metrics`, in Prometheus' text format. Written by hand: a dozen atomics do
//! not need a metrics framework.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;
use std::time::Duration;

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
    pub cancelled: AtomicU64,
    pub rejected_queue_full: AtomicU64,
    pub sessions_saved: AtomicU64,
    pub sessions_resumed: AtomicU64,
    pub open_connections: AtomicU64,
    pub request_seconds: Histogram,
    pub first_token_seconds: Histogram,
    requests: Mutex<BTreeMap<(&'static str, u16), u64>>,
}

impl Metrics {
    /// An HTTP response to `endpoint` with its status code. (A completion's duration is observed
    /// when its last byte is ready, which for a stream is long after the response started.)
    pub fn request(&self, endpoint: &'static str, status: u16) {
        *self.requests.lock().unwrap_or_else(|p| p.into_inner()).entry((endpoint, status)).or_default() += 1;
    }

    /// The text `/metrics` returns; `sessions` is the store's count (None if it could not be read).
    pub fn render(&self, sessions: Option<usize>) -> String {
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
}

//! Prometheus metrics, written by hand in the text exposition format (a few
//! counters and histograms do not justify a metrics framework).
//!
//! Label values come only from the router's own paths (or `unmatched`), so
//! a client cannot blow up the series count with random URLs.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

/// Request latency buckets, seconds.
const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];
/// Batch size buckets, cases.
const BATCH_BUCKETS: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0];

/// A cumulative histogram with fixed buckets.
#[derive(Debug, Clone)]
struct Histogram {
    bounds: &'static [f64],
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

impl Histogram {
    fn new(bounds: &'static [f64]) -> Self {
        Self {
            bounds,
            counts: vec![0; bounds.len()],
            sum: 0.0,
            count: 0,
        }
    }

    fn observe(&mut self, v: f64) {
        if let Some(i) = self.bounds.iter().position(|&b| v <= b) {
            self.counts[i] += 1;
        }
        self.sum += v;
        self.count += 1;
    }

    fn write(&self, out: &mut String, name: &str, labels: &str) {
        let sep = if labels.is_empty() { "" } else { "," };
        let mut cum = 0;
        for (b, c) in self.bounds.iter().zip(&self.counts) {
            cum += c;
            let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"{b}\"}} {cum}");
        }
        let _ = writeln!(
            out,
            "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {}",
            self.count
        );
        let braces = |l: &str| {
            if l.is_empty() {
                String::new()
            } else {
                format!("{{{l}}}")
            }
        };
        let _ = writeln!(out, "{name}_sum{} {}", braces(labels), self.sum);
        let _ = writeln!(out, "{name}_count{} {}", braces(labels), self.count);
    }
}

/// Why a request was answered by the fallback model.
#[derive(Debug, Clone, Copy)]
pub enum FallbackReason {
    /// The primary missed the request's deadline.
    Deadline,
    /// The primary failed on the batch (the engine's chain switched).
    PrimaryError,
    /// The primary did not load: the fallback serves alone (degraded).
    PrimaryUnavailable,
}

/// All server metrics. Cheap to update from handlers and the batcher thread.
#[derive(Debug)]
pub struct Metrics {
    /// (endpoint, status) -> count.
    requests: Mutex<BTreeMap<(String, u16), u64>>,
    /// endpoint -> latency histogram.
    latency: Mutex<BTreeMap<String, Histogram>>,
    batch_size: Mutex<Histogram>,
    batch_seconds: Mutex<Histogram>,
    cases: AtomicU64,
    truncated: AtomicU64,
    /// Tagged cases by language (`lang`), and those that got a note (a
    /// language the model was not trained on, or none could be told).
    by_language: Mutex<BTreeMap<&'static str, u64>>,
    noted: AtomicU64,
    fallback_deadline: AtomicU64,
    fallback_error: AtomicU64,
    fallback_unavailable: AtomicU64,
    connections_open: AtomicU64,
    connections_refused: AtomicU64,
    header_timeouts: AtomicU64,
    reload_ok: AtomicU64,
    reload_error: AtomicU64,
    dropped_jobs: AtomicU64,
    model_panics: AtomicU64,
}

impl Default for Metrics {
    fn default() -> Self {
        Self {
            requests: Mutex::default(),
            latency: Mutex::default(),
            batch_size: Mutex::new(Histogram::new(BATCH_BUCKETS)),
            batch_seconds: Mutex::new(Histogram::new(LATENCY_BUCKETS)),
            cases: AtomicU64::new(0),
            truncated: AtomicU64::new(0),
            by_language: Mutex::default(),
            noted: AtomicU64::new(0),
            fallback_deadline: AtomicU64::new(0),
            fallback_error: AtomicU64::new(0),
            fallback_unavailable: AtomicU64::new(0),
            connections_open: AtomicU64::new(0),
            connections_refused: AtomicU64::new(0),
            header_timeouts: AtomicU64::new(0),
            reload_ok: AtomicU64::new(0),
            reload_error: AtomicU64::new(0),
            dropped_jobs: AtomicU64::new(0),
            model_panics: AtomicU64::new(0),
        }
    }
}

/// A poisoned metrics lock only means a panic happened mid-update of a
/// counter; the numbers are still good enough to keep serving.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Gauges read at scrape time from their owners.
pub struct Gauges {
    pub queue_depth: usize,
    pub queue_capacity: usize,
    pub in_flight_cases: usize,
    pub ready: bool,
    /// The primary model is not loaded and the fallback serves alone.
    pub degraded: bool,
    pub model_generation: u64,
}

/// Counts a connection as open while it lives.
pub struct OpenConnection<'a>(&'a Metrics);

impl Drop for OpenConnection<'_> {
    fn drop(&mut self) {
        self.0.connections_open.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Metrics {
    pub fn observe_request(&self, endpoint: &str, status: u16, elapsed: Duration) {
        *lock(&self.requests)
            .entry((endpoint.to_string(), status))
            .or_default() += 1;
        lock(&self.latency)
            .entry(endpoint.to_string())
            .or_insert_with(|| Histogram::new(LATENCY_BUCKETS))
            .observe(elapsed.as_secs_f64());
    }

    pub fn observe_batch(&self, cases: usize, elapsed: Duration) {
        lock(&self.batch_size).observe(cases as f64);
        lock(&self.batch_seconds).observe(elapsed.as_secs_f64());
        self.cases.fetch_add(cases as u64, Ordering::Relaxed);
    }

    pub fn fallback(&self, reason: FallbackReason) {
        let c = match reason {
            FallbackReason::Deadline => &self.fallback_deadline,
            FallbackReason::PrimaryError => &self.fallback_error,
            FallbackReason::PrimaryUnavailable => &self.fallback_unavailable,
        };
        c.fetch_add(1, Ordering::Relaxed);
    }

    pub fn reload(&self, ok: bool) {
        let c = if ok {
            &self.reload_ok
        } else {
            &self.reload_error
        };
        c.fetch_add(1, Ordering::Relaxed);
    }

    pub fn truncated(&self, n: usize) {
        self.truncated.fetch_add(n as u64, Ordering::Relaxed);
    }

    /// Count answered cases by language, and those with a language note.
    /// The codes come from the detector's fixed set, so the label's
    /// cardinality is bounded.
    pub fn languages(&self, cases: impl Iterator<Item = (&'static str, bool)>) {
        let mut m = lock(&self.by_language);
        for (lang, noted) in cases {
            *m.entry(lang).or_default() += 1;
            if noted {
                self.noted.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    pub fn dropped_job(&self) {
        self.dropped_jobs.fetch_add(1, Ordering::Relaxed);
    }

    pub fn connection_opened(&self) -> OpenConnection<'_> {
        self.connections_open.fetch_add(1, Ordering::Relaxed);
        OpenConnection(self)
    }

    /// Connections open now.
    pub fn connections_open(&self) -> u64 {
        self.connections_open.load(Ordering::Relaxed)
    }

    pub fn connection_refused(&self) {
        self.connections_refused.fetch_add(1, Ordering::Relaxed);
    }

    pub fn header_timeout(&self) {
        self.header_timeouts.fetch_add(1, Ordering::Relaxed);
    }

    pub fn model_panic(&self) {
        self.model_panics.fetch_add(1, Ordering::Relaxed);
    }

    /// The Prometheus text exposition.
    pub fn render(&self, g: &Gauges) -> String {
        let mut o = String::with_capacity(8192);
        o.push_str("# HELP casetag_http_requests_total HTTP requests by endpoint and status.\n");
        o.push_str("# TYPE casetag_http_requests_total counter\n");
        for ((ep, st), n) in lock(&self.requests).iter() {
            let _ = writeln!(
                o,
                "casetag_http_requests_total{{endpoint=\"{ep}\",status=\"{st}\"}} {n}"
            );
        }
        o.push_str("# HELP casetag_http_request_duration_seconds Request latency by endpoint.\n");
        o.push_str("# TYPE casetag_http_request_duration_seconds histogram\n");
        for (ep, h) in lock(&self.latency).iter() {
            h.write(
                &mut o,
                "casetag_http_request_duration_seconds",
                &format!("endpoint=\"{ep}\""),
            );
        }
        o.push_str("# HELP casetag_batch_size_cases Cases per model batch.\n");
        o.push_str("# TYPE casetag_batch_size_cases histogram\n");
        lock(&self.batch_size).write(&mut o, "casetag_batch_size_cases", "");
        o.push_str("# HELP casetag_batch_duration_seconds Model time per batch.\n");
        o.push_str("# TYPE casetag_batch_duration_seconds histogram\n");
        lock(&self.batch_seconds).write(&mut o, "casetag_batch_duration_seconds", "");

        let counter = |o: &mut String, name: &str, help: &str, v: u64| {
            let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}");
        };
        let gauge = |o: &mut String, name: &str, help: &str, v: u64| {
            let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}");
        };
        counter(
            &mut o,
            "casetag_cases_tagged_total",
            "Cases run through the model batcher.",
            self.cases.load(Ordering::Relaxed),
        );
        counter(
            &mut o,
            "casetag_texts_truncated_total",
            "Case texts cut to the model's text cap.",
            self.truncated.load(Ordering::Relaxed),
        );
        o.push_str("# HELP casetag_cases_by_language_total Tagged cases by detected language.\n");
        o.push_str("# TYPE casetag_cases_by_language_total counter\n");
        for (lang, n) in lock(&self.by_language).iter() {
            let _ = writeln!(o, "casetag_cases_by_language_total{{lang=\"{lang}\"}} {n}");
        }
        counter(
            &mut o,
            "casetag_cases_language_noted_total",
            "Tagged cases in a language the model was not trained on, or undetermined.",
            self.noted.load(Ordering::Relaxed),
        );
        o.push_str("# HELP casetag_fallback_total Requests answered by the fallback model.\n");
        o.push_str("# TYPE casetag_fallback_total counter\n");
        let _ = writeln!(
            o,
            "casetag_fallback_total{{reason=\"deadline\"}} {}",
            self.fallback_deadline.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            o,
            "casetag_fallback_total{{reason=\"primary_error\"}} {}",
            self.fallback_error.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            o,
            "casetag_fallback_total{{reason=\"primary_unavailable\"}} {}",
            self.fallback_unavailable.load(Ordering::Relaxed)
        );
        o.push_str("# HELP casetag_reloads_total Model reloads by result.\n");
        o.push_str("# TYPE casetag_reloads_total counter\n");
        let _ = writeln!(
            o,
            "casetag_reloads_total{{result=\"ok\"}} {}",
            self.reload_ok.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            o,
            "casetag_reloads_total{{result=\"error\"}} {}",
            self.reload_error.load(Ordering::Relaxed)
        );
        counter(
            &mut o,
            "casetag_dropped_jobs_total",
            "Queued requests dropped because their caller had gone.",
            self.dropped_jobs.load(Ordering::Relaxed),
        );
        counter(
            &mut o,
            "casetag_model_panics_total",
            "Model batches that panicked (caught; the model thread lives on).",
            self.model_panics.load(Ordering::Relaxed),
        );
        gauge(
            &mut o,
            "casetag_queue_depth_cases",
            "Cases waiting for the model.",
            g.queue_depth as u64,
        );
        gauge(
            &mut o,
            "casetag_queue_capacity_cases",
            "Queue capacity (--queue-capacity).",
            g.queue_capacity as u64,
        );
        gauge(
            &mut o,
            "casetag_in_flight_cases",
            "Cases admitted and not yet answered (queued or in the model).",
            g.in_flight_cases as u64,
        );
        gauge(
            &mut o,
            "casetag_ready",
            "1 when a model is loaded and the server is not draining.",
            g.ready as u64,
        );
        gauge(
            &mut o,
            "casetag_degraded",
            "1 when the primary model is not loaded and the fallback serves alone.",
            g.degraded as u64,
        );
        gauge(
            &mut o,
            "casetag_connections_open",
            "HTTP connections open now.",
            self.connections_open(),
        );
        counter(
            &mut o,
            "casetag_connections_refused_total",
            "Connections refused with 503 because --max-connections were open.",
            self.connections_refused.load(Ordering::Relaxed),
        );
        counter(
            &mut o,
            "casetag_header_timeouts_total",
            "Connections closed for not sending a request head within --header-timeout-ms (stalled or idle).",
            self.header_timeouts.load(Ordering::Relaxed),
        );
        gauge(
            &mut o,
            "casetag_model_generation",
            "Models installed so far (1 after startup, +1 per successful reload).",
            g.model_generation,
        );
        o
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_is_cumulative() {
        let m = Metrics::default();
        m.observe_batch(1, Duration::from_millis(1));
        m.observe_batch(3, Duration::from_millis(1));
        m.observe_batch(1000, Duration::from_millis(1));
        let g = Gauges {
            queue_depth: 0,
            queue_capacity: 8,
            in_flight_cases: 0,
            ready: true,
            degraded: false,
            model_generation: 1,
        };
        let t = m.render(&g);
        assert!(
            t.contains("casetag_batch_size_cases_bucket{le=\"1\"} 1\n"),
            "{t}"
        );
        assert!(
            t.contains("casetag_batch_size_cases_bucket{le=\"4\"} 2\n"),
            "{t}"
        );
        assert!(
            t.contains("casetag_batch_size_cases_bucket{le=\"+Inf\"} 3\n"),
            "{t}"
        );
        assert!(t.contains("casetag_batch_size_cases_sum 1004\n"), "{t}");
        assert!(t.contains("casetag_batch_size_cases_count 3\n"), "{t}");
        assert!(t.contains("casetag_cases_tagged_total 1004\n"), "{t}");
    }

    #[test]
    fn requests_are_labelled() {
        let m = Metrics::default();
        m.observe_request("/v1/tag", 200, Duration::from_millis(3));
        m.observe_request("/v1/tag", 200, Duration::from_millis(3));
        m.observe_request("/v1/tag", 429, Duration::from_millis(3));
        let g = Gauges {
            queue_depth: 0,
            queue_capacity: 8,
            in_flight_cases: 0,
            ready: true,
            degraded: false,
            model_generation: 1,
        };
        let t = m.render(&g);
        assert!(t.contains("casetag_http_requests_total{endpoint=\"/v1/tag\",status=\"200\"} 2\n"));
        assert!(t.contains(
            "casetag_http_request_duration_seconds_bucket{endpoint=\"/v1/tag\",le=\"0.005\"} 3\n"
        ));
    }
}

//! Prometheus metrics through `prometheus-client` (the Prometheus project's
//! Rust client), exposed in the Prometheus text format 0.0.4.
//!
//! The long-lived counters and histograms live in [`Metrics`]; at each
//! scrape they are registered, with the gauges read from their owners at
//! that moment ([`Gauges`], the drift window), in a fresh registry that is
//! encoded once. Label values come only from the router's own paths (or
//! `unmatched`), the detector's fixed language codes and fixed reason
//! names, so a client cannot blow up the series count.

use std::sync::atomic::AtomicU64;
use std::time::Duration;

use prometheus_client::encoding::prometheus_text;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// The `Content-Type` of `GET /metrics`.
pub const CONTENT_TYPE: &str = prometheus_text::CONTENT_TYPE;

/// Request latency buckets, seconds.
const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];
/// Batch size buckets, cases.
const BATCH_BUCKETS: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0];
/// Encoder tokens per batch: one short query up to a full default budget
/// and beyond.
const TOKEN_BUCKETS: &[f64] = &[
    64.0, 128.0, 256.0, 512.0, 1024.0, 2048.0, 4096.0, 8192.0, 16384.0,
];

fn latency_histogram() -> Histogram {
    Histogram::new(LATENCY_BUCKETS.iter().copied())
}

/// A label set: (name, value) pairs.
pub type Labels = Vec<(&'static str, String)>;

/// A float gauge (the drift statistics).
pub type FloatGauge = Gauge<f64, AtomicU64>;

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

impl FallbackReason {
    const ALL: [FallbackReason; 3] = [
        FallbackReason::Deadline,
        FallbackReason::PrimaryError,
        FallbackReason::PrimaryUnavailable,
    ];

    fn label(self) -> Labels {
        let name = match self {
            FallbackReason::Deadline => "deadline",
            FallbackReason::PrimaryError => "primary_error",
            FallbackReason::PrimaryUnavailable => "primary_unavailable",
        };
        vec![("reason", name.to_string())]
    }
}

fn reload_label(ok: bool) -> Labels {
    vec![("result", if ok { "ok" } else { "error" }.to_string())]
}

/// All server metrics. Cheap to update from handlers and the batcher thread
/// (atomics; a family takes a read lock to find its series).
#[derive(Debug)]
pub struct Metrics {
    requests: Family<Labels, Counter>,
    latency: Family<Labels, Histogram, fn() -> Histogram>,
    batch_size: Histogram,
    batch_tokens: Histogram,
    batch_seconds: Histogram,
    cases: Counter,
    truncated: Counter,
    /// Tagged cases by language (`lang`), and those that got a note (a
    /// language the model was not trained on, or none could be told).
    by_language: Family<Labels, Counter>,
    noted: Counter,
    fallback: Family<Labels, Counter>,
    connections_open: Gauge,
    connections_refused: Counter,
    header_timeouts: Counter,
    reloads: Family<Labels, Counter>,
    dropped_jobs: Counter,
    model_panics: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        let m = Self {
            requests: Family::default(),
            latency: Family::new_with_constructor(latency_histogram),
            batch_size: Histogram::new(BATCH_BUCKETS.iter().copied()),
            batch_tokens: Histogram::new(TOKEN_BUCKETS.iter().copied()),
            batch_seconds: latency_histogram(),
            cases: Counter::default(),
            truncated: Counter::default(),
            by_language: Family::default(),
            noted: Counter::default(),
            fallback: Family::default(),
            connections_open: Gauge::default(),
            connections_refused: Counter::default(),
            header_timeouts: Counter::default(),
            reloads: Family::default(),
            dropped_jobs: Counter::default(),
            model_panics: Counter::default(),
        };
        // Every reason and result is exposed from the start, at 0, so a
        // rate over them never starts from a missing series.
        for r in FallbackReason::ALL {
            let _ = m.fallback.get_or_create(&r.label());
        }
        for ok in [true, false] {
            let _ = m.reloads.get_or_create(&reload_label(ok));
        }
        m
    }
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
    /// Cases in the primary's `--stream-novelty` window (`None`: the
    /// primary does not judge cases against the stream).
    pub stream_window: Option<usize>,
}

/// Counts a connection as open while it lives.
pub struct OpenConnection<'a>(&'a Metrics);

impl Drop for OpenConnection<'_> {
    fn drop(&mut self) {
        self.0.connections_open.dec();
    }
}

/// A gauge holding `v` now, to register for one scrape.
pub fn gauge_at(v: i64) -> Gauge {
    let g = Gauge::default();
    g.set(v);
    g
}

/// A gauge set to a count (saturating at `i64::MAX`).
pub fn gauge_of<T: TryInto<i64>>(n: T) -> Gauge {
    gauge_at(n.try_into().unwrap_or(i64::MAX))
}

impl Metrics {
    pub fn observe_request(&self, endpoint: &str, status: u16, elapsed: Duration) {
        self.requests
            .get_or_create(&vec![
                ("endpoint", endpoint.to_string()),
                ("status", status.to_string()),
            ])
            .inc();
        self.latency
            .get_or_create(&vec![("endpoint", endpoint.to_string())])
            .observe(elapsed.as_secs_f64());
    }

    /// One model batch: its cases, its encoder tokens (`None` for a model
    /// that does not tokenize) and how long the model took.
    pub fn observe_batch(&self, cases: usize, tokens: Option<usize>, elapsed: Duration) {
        self.batch_size.observe(cases as f64);
        if let Some(t) = tokens {
            self.batch_tokens.observe(t as f64);
        }
        self.batch_seconds.observe(elapsed.as_secs_f64());
        self.cases.inc_by(cases as u64);
    }

    pub fn fallback(&self, reason: FallbackReason) {
        self.fallback.get_or_create(&reason.label()).inc();
    }

    pub fn reload(&self, ok: bool) {
        self.reloads.get_or_create(&reload_label(ok)).inc();
    }

    pub fn truncated(&self, n: usize) {
        self.truncated.inc_by(n as u64);
    }

    /// Count answered cases by language, and those with a language note.
    /// The codes come from the detector's fixed set, so the label's
    /// cardinality is bounded.
    pub fn languages(&self, cases: impl Iterator<Item = (&'static str, bool)>) {
        for (lang, noted) in cases {
            self.by_language
                .get_or_create(&vec![("lang", lang.to_string())])
                .inc();
            if noted {
                self.noted.inc();
            }
        }
    }

    pub fn dropped_job(&self) {
        self.dropped_jobs.inc();
    }

    pub fn connection_opened(&self) -> OpenConnection<'_> {
        self.connections_open.inc();
        OpenConnection(self)
    }

    /// Connections open now.
    pub fn connections_open(&self) -> u64 {
        self.connections_open.get().max(0) as u64
    }

    pub fn connection_refused(&self) {
        self.connections_refused.inc();
    }

    pub fn header_timeout(&self) {
        self.header_timeouts.inc();
    }

    pub fn model_panic(&self) {
        self.model_panics.inc();
    }

    /// The Prometheus text exposition: these metrics, the gauges `g`, and
    /// whatever `more` registers (the drift gauges).
    pub fn render(&self, g: &Gauges, more: impl FnOnce(&mut Registry)) -> String {
        let mut r = Registry::default();
        // Counters are registered without `_total`, which the encoder adds.
        r.register(
            "casetag_http_requests",
            "HTTP requests by endpoint and status",
            self.requests.clone(),
        );
        r.register(
            "casetag_http_request_duration_seconds",
            "Request latency by endpoint",
            self.latency.clone(),
        );
        r.register(
            "casetag_batch_size_cases",
            "Cases per model batch",
            self.batch_size.clone(),
        );
        r.register(
            "casetag_batch_size_tokens",
            "Encoder tokens per model batch (models that tokenize)",
            self.batch_tokens.clone(),
        );
        r.register(
            "casetag_batch_duration_seconds",
            "Model time per batch",
            self.batch_seconds.clone(),
        );
        r.register(
            "casetag_cases_tagged",
            "Cases run through the model batcher",
            self.cases.clone(),
        );
        r.register(
            "casetag_texts_truncated",
            "Case texts cut to the model's text cap",
            self.truncated.clone(),
        );
        r.register(
            "casetag_cases_by_language",
            "Tagged cases by detected language",
            self.by_language.clone(),
        );
        r.register(
            "casetag_cases_language_noted",
            "Tagged cases in a language the model was not trained on, or undetermined",
            self.noted.clone(),
        );
        r.register(
            "casetag_fallback",
            "Requests answered by the fallback model",
            self.fallback.clone(),
        );
        r.register(
            "casetag_reloads",
            "Model reloads by result",
            self.reloads.clone(),
        );
        r.register(
            "casetag_dropped_jobs",
            "Queued requests dropped because their caller had gone",
            self.dropped_jobs.clone(),
        );
        r.register(
            "casetag_model_panics",
            "Model batches that panicked (caught; the model thread lives on)",
            self.model_panics.clone(),
        );
        r.register(
            "casetag_connections_open",
            "HTTP connections open now",
            self.connections_open.clone(),
        );
        r.register(
            "casetag_connections_refused",
            "Connections refused with 503 because --max-connections were open",
            self.connections_refused.clone(),
        );
        r.register(
            "casetag_header_timeouts",
            "Connections closed for not sending a request head within --header-timeout-ms (stalled or idle)",
            self.header_timeouts.clone(),
        );
        r.register(
            "casetag_queue_depth_cases",
            "Cases waiting for the model",
            gauge_of(g.queue_depth),
        );
        r.register(
            "casetag_queue_capacity_cases",
            "Queue capacity (--queue-capacity)",
            gauge_of(g.queue_capacity),
        );
        r.register(
            "casetag_in_flight_cases",
            "Cases admitted and not yet answered (queued or in the model)",
            gauge_of(g.in_flight_cases),
        );
        r.register(
            "casetag_ready",
            "1 when a model is loaded and the server is not draining",
            gauge_at(i64::from(g.ready)),
        );
        r.register(
            "casetag_degraded",
            "1 when the primary model is not loaded and the fallback serves alone",
            gauge_at(i64::from(g.degraded)),
        );
        r.register(
            "casetag_model_generation",
            "Models installed so far (1 after startup, +1 per successful reload)",
            gauge_of(g.model_generation),
        );
        if let Some(n) = g.stream_window {
            r.register(
                "casetag_stream_window_cases",
                "Recent cases the primary judges each new case against (--stream-novelty; empty after startup and each reload to another bundle)",
                gauge_of(n),
            );
        }
        more(&mut r);
        let mut o = String::with_capacity(8192);
        // Writing into a String cannot fail.
        let _ = prometheus_text::encode(&mut o, &r);
        o
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_is_cumulative() {
        let m = Metrics::default();
        m.observe_batch(1, None, Duration::from_millis(1));
        m.observe_batch(3, Some(40), Duration::from_millis(1));
        m.observe_batch(1000, Some(9000), Duration::from_millis(1));
        let g = Gauges {
            queue_depth: 0,
            queue_capacity: 8,
            in_flight_cases: 0,
            ready: true,
            degraded: false,
            model_generation: 1,
            stream_window: None,
        };
        let t = m.render(&g, |_| {});
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
        assert!(t.contains("casetag_batch_size_cases_sum 1004.0\n"), "{t}");
        assert!(t.contains("casetag_batch_size_cases_count 3\n"), "{t}");
        assert!(t.contains("casetag_cases_tagged_total 1004\n"), "{t}");
        // Tokens only for the batches of a model that tokenizes.
        assert!(t.contains("casetag_batch_size_tokens_count 2\n"), "{t}");
        assert!(
            t.contains("casetag_batch_size_tokens_bucket{le=\"64\"} 1\n"),
            "{t}"
        );
        assert!(t.contains("casetag_batch_size_tokens_sum 9040.0\n"), "{t}");
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
            stream_window: None,
        };
        let t = m.render(&g, |_| {});
        assert!(t.contains("casetag_http_requests_total{endpoint=\"/v1/tag\",status=\"200\"} 2\n"));
        // Only a primary that judges against the stream has a window.
        assert!(!t.contains("casetag_stream_window"), "{t}");
        assert!(t.contains(
            "casetag_http_request_duration_seconds_bucket{endpoint=\"/v1/tag\",le=\"0.005\"} 3\n"
        ));
    }

    /// Every sample line is `name{labels} value` with a float value, and
    /// every name belongs to a family declared by `# TYPE` before it (the
    /// families a scraper would otherwise drop or misread).
    #[test]
    fn exposition_is_well_formed() {
        let m = Metrics::default();
        m.observe_request("/v1/tag", 200, Duration::from_millis(3));
        m.observe_batch(2, None, Duration::from_millis(4));
        m.languages([("en", false), ("th", true)].into_iter());
        m.fallback(FallbackReason::Deadline);
        let _open = m.connection_opened();
        let g = Gauges {
            queue_depth: 3,
            queue_capacity: 8,
            in_flight_cases: 4,
            ready: true,
            degraded: false,
            model_generation: 2,
            stream_window: Some(7),
        };
        let t = m.render(&g, |r| {
            let f = Family::<Labels, FloatGauge>::default();
            f.get_or_create(&vec![("level", "l1".to_string())])
                .set(0.25);
            r.register("casetag_extra", "An extra family", f);
        });
        let mut families = Vec::new();
        let mut samples = 0;
        for line in t.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest.split_once(' ').unwrap();
                assert!(["counter", "gauge", "histogram"].contains(&kind), "{line}");
                families.push(name.to_string());
                continue;
            }
            if line.starts_with("# HELP ") {
                continue;
            }
            let (series, value) = line.rsplit_once(' ').expect(line);
            assert!(value.parse::<f64>().is_ok(), "{line}");
            let name = series.split('{').next().unwrap();
            let family = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| name.strip_suffix(s))
                .filter(|f| families.iter().any(|x| x == f))
                .unwrap_or(name);
            assert!(families.iter().any(|f| f == family), "undeclared: {line}");
            samples += 1;
        }
        assert!(samples > 40, "{t}");
        for line in [
            "casetag_queue_depth_cases 3",
            "casetag_in_flight_cases 4",
            "casetag_model_generation 2",
            "casetag_stream_window_cases 7",
            "casetag_connections_open 1",
            "casetag_cases_by_language_total{lang=\"th\"} 1",
            "casetag_cases_language_noted_total 1",
            "casetag_fallback_total{reason=\"deadline\"} 1",
            "casetag_fallback_total{reason=\"primary_error\"} 0",
            "casetag_reloads_total{result=\"error\"} 0",
            "casetag_extra{level=\"l1\"} 0.25",
        ] {
            assert!(t.lines().any(|l| l == line), "no {line:?} in\n{t}");
        }
    }
}

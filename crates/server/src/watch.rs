//! Drift gauges: the primary model's most recent answers compared, at each
//! scrape of `/metrics`, with the sample of its validation answers its
//! bundle carries (`reference_sample.json`), by the same statistics as
//! `casetag monitor` ([`casetag_engine::drift`]). Only what `monitor` reads
//! from a tagged file is kept per case (tags, confidences, depth,
//! out-of-scope flag, text length): never a text.

use std::collections::VecDeque;
use std::sync::Mutex;

use casetag_engine::decide::Decision;
use casetag_engine::drift::{compare, Tagged, Thresholds, REFERENCE_FILE};
use casetag_engine::{LoadedModel, Tagged as Answer};
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

use crate::metrics::{gauge_at, gauge_of, FloatGauge, Labels};

/// Fewest recent answers before the gauges are computed.
pub const MIN_WINDOW: usize = 50;

/// The recent answers of one primary model and its reference sample.
#[derive(Default)]
struct Window {
    /// The model the answers and the reference belong to.
    model: Option<String>,
    /// `None` when the bundle carries no reference (trained before it was
    /// recorded) or it could not be read.
    reference: Option<Tagged>,
    recent: VecDeque<(Decision, usize)>,
}

/// Recent answers of the primary model, at most `capacity`.
pub struct DriftWatch {
    capacity: usize,
    window: Mutex<Window>,
}

impl DriftWatch {
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity,
            window: Mutex::new(Window::default()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Window> {
        self.window.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Keep the answers `primary` gave (a fallback's are not its traffic),
    /// each with its text length in characters. A new primary (a reload)
    /// starts a new window against its own reference.
    pub fn record<'a>(
        &self,
        primary: Option<&LoadedModel>,
        answers: impl Iterator<Item = (&'a Answer, usize)>,
    ) {
        let Some(primary) = primary else { return };
        if self.capacity == 0 {
            return;
        }
        let mut w = self.lock();
        if w.model.as_deref() != Some(primary.id()) {
            let path = primary.bundle.dir.join(REFERENCE_FILE);
            w.reference = std::fs::read(&path)
                .ok()
                .and_then(|b| serde_json::from_slice(&b).ok());
            w.model = Some(primary.id().to_string());
            w.recent.clear();
        }
        for (a, chars) in answers.filter(|(a, _)| a.model_id == primary.id()) {
            if w.recent.len() == self.capacity {
                w.recent.pop_front();
            }
            // What `Tagged::push` reads, without the alternatives and
            // actions a clone would copy only to drop.
            let d = &a.decision;
            let kept = Decision {
                tag: d.tag.clone(),
                depth: d.depth,
                top_path: d.top_path.clone(),
                confidence: d.confidence.clone(),
                out_of_scope: d.out_of_scope,
                oos_score: d.oos_score,
                actions: Vec::new(),
                alternatives: Vec::new(),
                level_alternatives: Vec::new(),
            };
            w.recent.push_back((kept, chars));
        }
    }

    /// Register the gauges for one scrape (the window's size always; the
    /// statistics once the window holds [`MIN_WINDOW`] answers of a model
    /// with a reference).
    pub fn register(&self, reg: &mut Registry) {
        let w = self.lock();
        reg.register(
            "casetag_drift_window_cases",
            "Recent primary-model answers held for the drift gauges",
            gauge_of(w.recent.len()),
        );
        let Some(reference) = &w.reference else {
            return;
        };
        if w.recent.len() < MIN_WINDOW {
            return;
        }
        let mut current = Tagged::default();
        for (d, chars) in &w.recent {
            current.push(d, *chars);
        }
        let r = compare(reference, &current, &Thresholds::default());
        reg.register(
            "casetag_drift_detected",
            "1 when any drift statistic of the recent answers clears its threshold and its noise level",
            gauge_at(i64::from(r.drift)),
        );
        // A family of float gauges with the finite values of `rows`.
        let mut gauge = |name: &str, help: &str, rows: Vec<(Labels, Option<f64>)>| {
            let family = Family::<Labels, FloatGauge>::default();
            for (labels, v) in rows {
                if let Some(v) = v.filter(|v| v.is_finite()) {
                    family.get_or_create(&labels).set(v);
                }
            }
            reg.register(name, help, family);
        };
        let level = |i: usize| vec![("level", format!("l{}", i + 1))];
        gauge(
            "casetag_drift_label_js_distance",
            "Jensen-Shannon distance of the recent label mix from the validation answers', per level",
            r.levels
                .iter()
                .enumerate()
                .map(|(i, l)| (level(i), l.mix.js_distance))
                .collect(),
        );
        gauge(
            "casetag_drift_label_psi",
            "PSI of the recent label mix against the validation answers', per level",
            r.levels
                .iter()
                .enumerate()
                .map(|(i, l)| (level(i), l.mix.psi))
                .collect(),
        );
        gauge(
            "casetag_drift_confidence_wasserstein",
            "Normed Wasserstein distance of recent confidences from the validation answers', per level",
            r.confidence
                .iter()
                .enumerate()
                .map(|(i, c)| (level(i), c.normed_wasserstein))
                .collect(),
        );
        gauge(
            "casetag_drift_text_length_wasserstein",
            "Normed Wasserstein distance of recent text lengths from the validation texts'",
            vec![(
                Labels::new(),
                r.text_length.as_ref().and_then(|t| t.normed_wasserstein),
            )],
        );
        gauge(
            "casetag_drift_rate",
            "Abstention, back-off and out-of-scope rates of the recent answers (window=current) and the validation answers (window=reference)",
            r.rates
                .iter()
                .flat_map(|x| {
                    [
                        (
                            vec![("rate", x.name.to_string()), ("window", "current".to_string())],
                            x.current,
                        ),
                        (
                            vec![("rate", x.name.to_string()), ("window", "reference".to_string())],
                            x.reference,
                        ),
                    ]
                })
                .collect(),
        );
    }
}

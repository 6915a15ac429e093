//! Shared server state: config, the live model slot, the batcher, metrics,
//! and reloading.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Instant;

use casetag_engine::{LoadedModel, Tagger};
use serde_json::{json, Value};
use tokio::sync::Semaphore;

use crate::batcher::Batcher;
use crate::metrics::{Gauges, Metrics};
use crate::models::{self, manifest_summary, ModelSlot};
use crate::{ServerConfig, ServerError};

/// The environment variable holding the admin bearer token.
pub const ADMIN_TOKEN_ENV: &str = "CASETAG_ADMIN_TOKEN";

/// Everything handlers share. Cheap to clone.
#[derive(Clone)]
pub struct AppState {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub cfg: ServerConfig,
    pub models: Arc<ModelSlot>,
    pub batcher: Batcher,
    pub metrics: Arc<Metrics>,
    /// Recent answers for the drift gauges.
    pub drift: crate::watch::DriftWatch,
    admin_token: RwLock<Option<String>>,
    /// One reload at a time; a second waits for the first.
    reload_lock: tokio::sync::Mutex<()>,
    /// Set once shutdown began: `/readyz` turns 503 so balancers stop
    /// sending while in-flight requests drain.
    pub draining: AtomicBool,
    /// Bounds concurrent deadline fallbacks on the blocking pool.
    pub fallback_slots: Arc<Semaphore>,
    pub started: Instant,
}

/// What a successful reload did.
#[derive(Debug, Clone)]
pub struct ReloadOutcome {
    pub previous: Option<String>,
    pub model: Value,
    pub fallback: Option<Value>,
    pub path: String,
}

impl AppState {
    /// Load the model(s) named by `cfg` and start the batcher thread.
    /// Blocking (loading a transformer takes a while): call it before the
    /// runtime, or from a blocking thread.
    pub fn new(cfg: &ServerConfig) -> Result<AppState, ServerError> {
        let state = Self::unloaded(cfg)?;
        let (tagger, primary_failed) =
            models::load_initial(&cfg.model, cfg.fallback.as_deref(), cfg.stream_window)?;
        if let Some(e) = primary_failed {
            tracing::warn!(
                "the primary model failed to load; the fallback serves alone (degraded): {}",
                crate::error::log_safe(&e.to_string())
            );
        }
        state.install(tagger);
        Ok(state)
    }

    /// A state serving `tagger` (tests inject wrapped classifiers this way;
    /// `cfg` still names the bundles used by reloads).
    pub fn with_tagger(cfg: &ServerConfig, tagger: Tagger) -> Result<AppState, ServerError> {
        let state = Self::unloaded(cfg)?;
        state.install(tagger);
        Ok(state)
    }

    /// A state with no model yet: `/readyz` and `/v1/tag` answer 503 until
    /// [`AppState::install`] or a reload. The batcher thread is running.
    pub fn unloaded(cfg: &ServerConfig) -> Result<AppState, ServerError> {
        cfg.limits.check()?;
        let metrics = Arc::new(Metrics::default());
        let slot = Arc::new(ModelSlot::default());
        let batcher = Batcher::spawn(slot.clone(), &cfg.limits, metrics.clone())?;
        let workers = std::thread::available_parallelism().map_or(2, |n| n.get());
        Ok(AppState {
            inner: Arc::new(Inner {
                cfg: cfg.clone(),
                models: slot,
                batcher,
                metrics,
                drift: crate::watch::DriftWatch::new(cfg.limits.drift_window),
                admin_token: RwLock::new(
                    std::env::var(ADMIN_TOKEN_ENV)
                        .ok()
                        .filter(|t| !t.is_empty()),
                ),
                reload_lock: tokio::sync::Mutex::new(()),
                draining: AtomicBool::new(false),
                fallback_slots: Arc::new(Semaphore::new(workers.max(2))),
                started: Instant::now(),
            }),
        })
    }

    /// Replace the admin token read from `CASETAG_ADMIN_TOKEN` (`None`
    /// turns the admin API off). Tests use this rather than the process
    /// environment, which is shared between concurrently running tests.
    pub fn with_admin_token(self, token: Option<String>) -> Self {
        *self
            .inner
            .admin_token
            .write()
            .unwrap_or_else(|e| e.into_inner()) = token.filter(|t| !t.is_empty());
        self
    }

    pub(crate) fn admin_token(&self) -> Option<String> {
        self.inner
            .admin_token
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Swap in a model; batches in flight finish on the old one.
    pub fn install(&self, tagger: Tagger) {
        self.inner.models.install(Arc::new(tagger));
    }

    /// The models answering now (`None` before one is loaded).
    pub fn tagger(&self) -> Option<Arc<Tagger>> {
        self.inner.models.get()
    }

    pub fn config(&self) -> &ServerConfig {
        &self.inner.cfg
    }

    /// A model is loaded and the server is not draining.
    pub fn is_ready(&self) -> bool {
        !self.inner.draining.load(Ordering::Relaxed) && self.inner.models.get().is_some()
    }

    /// The primary model is not loaded and the fallback serves alone.
    pub fn is_degraded(&self) -> bool {
        self.inner.models.get().is_some_and(|t| t.primary.is_none())
    }

    /// HTTP connections open now.
    pub fn open_connections(&self) -> u64 {
        self.inner.metrics.connections_open()
    }

    /// Mark the server as shutting down (`/readyz` answers 503).
    pub fn begin_drain(&self) {
        self.inner.draining.store(true, Ordering::Relaxed);
    }

    /// Cases waiting for the model (for tests and the queue-depth gauge).
    pub fn queue_depth(&self) -> usize {
        self.inner.batcher.queue_depth()
    }

    /// Cases in the primary's stream window, when it judges against one.
    fn stream_window_len(&self) -> Option<usize> {
        let t = self.inner.models.get()?;
        let w = t.primary.as_ref()?.stream.as_ref()?;
        let len = w.lock().unwrap_or_else(|p| p.into_inner()).len();
        Some(len)
    }

    /// The Prometheus exposition.
    pub fn render_metrics(&self) -> String {
        let b = &self.inner.batcher;
        let gauges = Gauges {
            queue_depth: b.queue_depth(),
            queue_capacity: b.capacity(),
            in_flight_cases: b.in_flight(),
            ready: self.is_ready(),
            degraded: self.is_degraded(),
            model_generation: self.inner.models.generation(),
            stream_window: self.stream_window_len(),
        };
        self.inner
            .metrics
            .render(&gauges, |r| self.inner.drift.register(r))
    }

    /// Re-resolve `--model` (a registry NAME follows its champion), load it
    /// (and the fallback) on a blocking thread and swap it in. On any error
    /// the running model stays.
    pub async fn reload(&self) -> Result<ReloadOutcome, ServerError> {
        let _one_at_a_time = self.inner.reload_lock.lock().await;
        let cfg = self.inner.cfg.clone();
        let started = Instant::now();
        let loaded = tokio::task::spawn_blocking(move || {
            let path = models::resolve_model(&cfg.models_root, &cfg.model_spec)?;
            let t = models::load_strict(&path, cfg.fallback.as_deref(), cfg.stream_window)?;
            Ok::<_, ServerError>((path, t))
        })
        .await
        .map_err(|e| ServerError::Internal(format!("reload task failed: {e}")))
        .and_then(|r| r);
        let (path, tagger) = match loaded {
            Ok(x) => x,
            Err(e) => {
                self.inner.metrics.reload(false);
                tracing::error!(
                    "reload refused, the current model keeps serving: {}",
                    crate::error::log_safe(&e.to_string())
                );
                return Err(e);
            }
        };
        let model = tagger
            .primary
            .as_ref()
            .map(|m| manifest_summary(m, true))
            .unwrap_or(Value::Null);
        let fallback = tagger.fallback.as_ref().map(|m| manifest_summary(m, true));
        // The same bundle again (a reload that changed nothing): its stream
        // goes on with the recent cases (but those answered while the
        // window is copied); another bundle starts with an empty window.
        if let (Some(old), Some(new)) = (self.inner.models.get(), tagger.primary.as_ref()) {
            if let Some(bytes) = old
                .primary
                .as_ref()
                .filter(|o| same_bundle(o, new))
                .and_then(|o| o.stream_state())
            {
                if let Err(e) = new.restore_stream_state(&bytes) {
                    tracing::warn!("the stream window starts empty: {e}");
                }
            }
        }
        let previous = self
            .inner
            .models
            .install(Arc::new(tagger))
            .map(|t| t.active().id().to_string());
        self.inner.metrics.reload(true);
        tracing::info!(
            "reloaded model {} from {} in {:.2}s (was {})",
            model["id"].as_str().unwrap_or("?"),
            path.display(),
            started.elapsed().as_secs_f64(),
            previous.as_deref().unwrap_or("none")
        );
        Ok(ReloadOutcome {
            previous,
            model,
            fallback,
            path: path.display().to_string(),
        })
    }

    /// `GET /v1/model`; filesystem paths only `with_paths` (an
    /// authenticated caller).
    pub(crate) fn model_json(&self, with_paths: bool) -> Option<Value> {
        let t = self.inner.models.get()?;
        let summary = |m: &casetag_engine::LoadedModel| manifest_summary(m, with_paths);
        let mut v = json!({
            "active": summary(t.active()),
            "primary": t.primary.as_ref().map(summary),
            "fallback": t.fallback.as_ref().map(summary),
            "degraded": t.primary.is_none(),
            "generation": self.inner.models.generation(),
            "uptime_s": self.inner.started.elapsed().as_secs(),
        });
        if with_paths {
            v["model_spec"] = json!(self.inner.cfg.model_spec);
        }
        Some(v)
    }
}

/// Whether two loaded models are the same bundle (id and creation time).
fn same_bundle(a: &LoadedModel, b: &LoadedModel) -> bool {
    let (a, b) = (&a.bundle.manifest, &b.bundle.manifest);
    a.id == b.id && a.created == b.created
}

#![forbid(unsafe_code)]
//! casetag-server: the real-time HTTP JSON API (`casetag serve`).
//!
//! Place in the pipeline: the last layer, over `casetag-engine` (which loads
//! bundles and turns scores into decisions). This crate adds what serving
//! needs and the engine does not: request validation and limits, dynamic
//! batching on one model thread with a bounded queue (overload is a 429, not
//! a growing queue), a per-request deadline with fallback to the baseline,
//! hot reload without dropping requests, Prometheus metrics, an OpenAPI
//! document, and graceful shutdown.
//!
//! Entry points: [`serve_blocking`] for the CLI; [`app`] and [`run`] for
//! tests and embedding (shutdown is a parameter, so tests bind
//! `127.0.0.1:0` and stop the server with a oneshot).
//!
//! Endpoints: `POST /v1/tag`, `GET /v1/model`, `GET /v1/taxonomy`,
//! `GET /healthz`, `GET /readyz`, `GET /metrics`, `GET /openapi.json`,
//! `POST /v1/admin/reload` (bearer `CASETAG_ADMIN_TOKEN`; also SIGHUP).

mod batcher;
mod config;
mod error;
mod handlers;
mod listen;
mod metrics;
mod models;
mod request;
mod state;
mod watch;

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
use axum::Router;
use tokio::net::TcpListener;
use tower_http::catch_panic::CatchPanicLayer;

pub use config::{Limits, ServerConfig};
pub use error::{ApiError, ErrorKind, ServerError};
pub use models::{resolve_model, taxonomy_json, ModelInfo};
pub use request::{DEFAULT_TOP_K, MAX_TOP_K};
pub use state::{AppState, ReloadOutcome, ADMIN_TOKEN_ENV};

/// The router with every endpoint, limits and middleware.
pub fn app(state: AppState) -> Router {
    let max_body = state.config().limits.max_body_bytes;
    Router::new()
        .route("/v1/tag", post(handlers::tag))
        .route("/v1/model", get(handlers::model))
        .route("/v1/taxonomy", get(handlers::taxonomy))
        .route("/v1/admin/reload", post(handlers::reload))
        .route("/healthz", get(handlers::healthz))
        .route("/readyz", get(handlers::readyz))
        .route("/metrics", get(handlers::metrics))
        .route("/openapi.json", get(handlers::openapi))
        .fallback(handlers::not_found)
        .method_not_allowed_fallback(handlers::method_not_allowed)
        .layer(DefaultBodyLimit::max(max_body))
        // Before any body is read: a declared oversized body is refused
        // without waiting for it.
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            handlers::refuse_oversized,
        ))
        // Inside `track`, so a panicking handler is still counted as a 500.
        .layer(CatchPanicLayer::custom(handlers::panic_response))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            handlers::track,
        ))
        .with_state(state)
}

/// Serve on `listener` until `shutdown` resolves, then stop accepting,
/// turn `/readyz` to 503 and let in-flight requests finish (at most
/// `--drain-timeout-s`). Connections are bounded by `--max-connections`
/// and `--header-timeout-ms` (see [`Limits`]).
pub async fn run(
    listener: TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let limits = state.config().limits.clone();
    let drain = Duration::from_secs(limits.drain_timeout_s);
    let signal = {
        let st = state.clone();
        async move {
            shutdown.await;
            st.begin_drain();
            tracing::info!("shutting down: draining in-flight requests");
        }
    };
    let metrics = state.inner.metrics.clone();
    listen::serve(listener, app(state), metrics, &limits, signal, drain).await
}

/// The `casetag serve` entry point: build a runtime, bind, load the model
/// (while already answering `/healthz`, with `/readyz` 503 until loaded),
/// serve until SIGTERM or Ctrl-C, drain. SIGHUP reloads the model.
///
/// A bad address or bad bundle is an input error ([`ServerError::is_input`]).
pub fn serve_blocking(cfg: ServerConfig) -> Result<(), ServerError> {
    cfg.limits.check()?;
    // Panics are caught per request or batch and answered; the report goes
    // to the log as one line, with quoted values (case text) masked,
    // instead of the default hook's raw message on stderr.
    std::panic::set_hook(Box::new(|info| {
        let at = info
            .location()
            .map_or_else(String::new, |l| format!(" at {}:{}", l.file(), l.line()));
        tracing::error!("panic{at}: {}", models::panic_message(info.payload()));
    }));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("casetag-http")
        .build()?;
    rt.block_on(serve(cfg))
}

async fn serve(cfg: ServerConfig) -> Result<(), ServerError> {
    let addr_err = |message: String| ServerError::Address {
        addr: cfg.addr.clone(),
        message,
    };
    let listener = TcpListener::bind(&cfg.addr)
        .await
        .map_err(|e| addr_err(e.to_string()))?;
    let local = listener.local_addr().map_err(|e| addr_err(e.to_string()))?;
    let state = AppState::unloaded(&cfg)?;

    // Load off the runtime; a failure stops the server with that error.
    let (failed_tx, failed_rx) = tokio::sync::oneshot::channel::<ServerError>();
    {
        let st = state.clone();
        let cfg = cfg.clone();
        tokio::spawn(async move {
            let (model, fallback) = (cfg.model.clone(), cfg.fallback.clone());
            let stream = cfg.stream_window;
            let r = tokio::task::spawn_blocking(move || {
                models::load_initial(&model, fallback.as_deref(), stream)
            })
            .await
            .unwrap_or_else(|e| Err(ServerError::Internal(format!("model loading failed: {e}"))));
            match r {
                Ok((t, primary_failed)) => {
                    let (id, kind) = (t.active().id().to_string(), t.active().kind().to_string());
                    st.install(t);
                    // Said once the outcome is known, and as it is.
                    match &primary_failed {
                        None => eprintln!(
                            "casetag serve: listening on http://{local} (model {}, {}); ready",
                            id, kind
                        ),
                        Some(e) => eprintln!(
                            "casetag serve: listening on http://{local}, DEGRADED: the primary model failed to load ({}); the fallback {} serves alone",
                            error::log_safe(&e.to_string()),
                            id
                        ),
                    }
                }
                Err(e) => {
                    let _ = failed_tx.send(e);
                }
            }
        });
    }
    #[cfg(unix)]
    {
        let st = state.clone();
        tokio::spawn(async move {
            use tokio::signal::unix::{signal, SignalKind};
            let mut hup = match signal(SignalKind::hangup()) {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!("cannot listen for SIGHUP (reload via the admin API only): {e}");
                    return;
                }
            };
            while hup.recv().await.is_some() {
                tracing::info!("SIGHUP: reloading the model");
                // Errors are logged and counted by `reload`; the old model stays.
                let _ = st.reload().await;
            }
        });
    }

    let failure: Arc<Mutex<Option<ServerError>>> = Arc::default();
    let shutdown = {
        let failure = failure.clone();
        async move {
            let load_failed = async move {
                match failed_rx.await {
                    Ok(e) => e,
                    // Loaded fine: only a signal stops the server.
                    Err(_) => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = shutdown_signal() => {}
                e = load_failed => {
                    *failure.lock().unwrap_or_else(|p| p.into_inner()) = Some(e);
                }
            }
        }
    };
    run(listener, state, shutdown).await?;
    let failed = failure.lock().unwrap_or_else(|p| p.into_inner()).take();
    match failed {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// SIGTERM or Ctrl-C. A signal that cannot be installed never fires (rather
/// than shutting the server down at once).
async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
}

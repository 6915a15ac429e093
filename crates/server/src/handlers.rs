//! HTTP handlers. They validate, admit and shape; inference happens on the
//! batcher thread (or, past the deadline, the fallback on the blocking pool).

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{MatchedPath, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;
use casetag_core::Transcript;
use serde_json::json;

use crate::batcher::{Answer, Reply};
use crate::error::{ApiError, ErrorKind};
use crate::metrics::FallbackReason;
use crate::models::{model_by_id, panic_message, taxonomy_json, ModelInfo};
use crate::request::{parse_tag_request, to_result, TagResponse};
use crate::AppState;

/// The hand-written OpenAPI 3 document.
const OPENAPI: &str = include_str!("openapi.json");

/// `POST /v1/tag`.
pub async fn tag(
    State(st): State<AppState>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<TagResponse>, ApiError> {
    let limits = &st.inner.cfg.limits;
    let body = body.map_err(|r| {
        if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::new(
                ErrorKind::PayloadTooLarge,
                format!(
                    "request body is larger than {} bytes (--max-body-bytes)",
                    limits.max_body_bytes
                ),
            )
        } else {
            ApiError::new(
                ErrorKind::MalformedJson,
                format!("cannot read the body: {}", r.body_text()),
            )
        }
    })?;
    if st.inner.models.get().is_none() {
        return Err(ApiError::new(ErrorKind::NotReady, "no model is loaded yet"));
    }
    let value: serde_json::Value = serde_json::from_slice(&body).map_err(|e| {
        ApiError::new(
            ErrorKind::MalformedJson,
            format!("body is not valid JSON: {e}"),
        )
    })?;
    let req = parse_tag_request(&value, limits)?;
    let cases = Arc::new(req.cases);
    let rx = st.inner.batcher.submit(cases.clone(), req.top_k)?;
    let answer = wait_for_answer(&st, rx, cases, req.top_k).await?;
    let tagger = &answer.tagger;
    let info = answer
        .tagged
        .first()
        .and_then(|t| model_by_id(tagger, &t.model_id))
        .unwrap_or_else(|| tagger.active());
    let n_cut = answer.tagged.iter().filter(|t| t.truncated).count();
    if n_cut > 0 {
        st.inner.metrics.truncated(n_cut);
    }
    let results = answer
        .tagged
        .into_iter()
        .zip(req.ids)
        .map(|(t, id)| to_result(id, t))
        .collect();
    Ok(Json(TagResponse {
        model: ModelInfo::of(info),
        results,
    }))
}

/// Wait for the batcher within the deadline; past it, answer with the
/// fallback model (or 503 `deadline_exceeded` without one).
async fn wait_for_answer(
    st: &AppState,
    rx: tokio::sync::oneshot::Receiver<Reply>,
    cases: Arc<Vec<Transcript>>,
    top_k: usize,
) -> Result<Answer, ApiError> {
    let deadline_ms = st.inner.cfg.limits.deadline_ms;
    let reply = if deadline_ms == 0 {
        rx.await
    } else {
        match tokio::time::timeout(Duration::from_millis(deadline_ms), rx).await {
            Ok(r) => r,
            // Dropping `rx` here tells the batcher to skip this job if it has
            // not started on it yet.
            Err(_) => return deadline_fallback(st, cases, top_k).await,
        }
    };
    reply.map_err(|_| ApiError::internal("the model thread dropped the request"))?
}

async fn deadline_fallback(
    st: &AppState,
    cases: Arc<Vec<Transcript>>,
    top_k: usize,
) -> Result<Answer, ApiError> {
    let deadline_ms = st.inner.cfg.limits.deadline_ms;
    let tagger = st
        .inner
        .models
        .get()
        .ok_or_else(|| ApiError::new(ErrorKind::NotReady, "no model is loaded"))?;
    let Some(fb) = tagger.fallback.as_ref() else {
        tracing::warn!(
            "a request of {} cases missed the {deadline_ms} ms deadline (queue depth {}) and there is no fallback model",
            cases.len(),
            st.queue_depth()
        );
        return Err(ApiError::new(
            ErrorKind::DeadlineExceeded,
            format!(
                "the model did not answer within {deadline_ms} ms (--deadline-ms) and no fallback model is configured"
            ),
        ));
    };
    tracing::warn!(
        "a request of {} cases missed the {deadline_ms} ms deadline (queue depth {}); answering with fallback {}",
        cases.len(),
        st.queue_depth(),
        fb.id()
    );
    st.inner.metrics.fallback(FallbackReason::Deadline);
    // Bounded: under a stampede of missed deadlines the blocking pool does
    // not grow one thread per request.
    let _slot = st
        .inner
        .fallback_slots
        .clone()
        .acquire_owned()
        .await
        .map_err(|_| ApiError::internal("fallback pool closed"))?;
    let t = tagger.clone();
    let r = tokio::task::spawn_blocking(move || {
        catch_unwind(AssertUnwindSafe(|| t.tag_fallback(&cases, top_k)))
    })
    .await
    .map_err(|e| ApiError::internal(format!("fallback task failed: {e}")))?;
    match r {
        Ok(Some(Ok(tagged))) => Ok(Answer { tagged, tagger }),
        Ok(Some(Err(e))) => Err(ApiError::internal(format!("fallback model failure: {e}"))),
        Ok(None) => Err(ApiError::internal("no fallback model")),
        Err(p) => {
            st.inner.metrics.model_panic();
            Err(ApiError::internal(format!(
                "the fallback model panicked: {}",
                panic_message(&*p)
            )))
        }
    }
}

/// `GET /v1/model`.
pub async fn model(State(st): State<AppState>) -> Result<Response, ApiError> {
    st.model_json()
        .map(|v| Json(v).into_response())
        .ok_or_else(|| ApiError::new(ErrorKind::NotReady, "no model is loaded yet"))
}

/// `GET /v1/taxonomy`.
pub async fn taxonomy(State(st): State<AppState>) -> Result<Response, ApiError> {
    let t = st
        .inner
        .models
        .get()
        .ok_or_else(|| ApiError::new(ErrorKind::NotReady, "no model is loaded yet"))?;
    Ok(Json(taxonomy_json(t.active())).into_response())
}

/// `GET /healthz`: the process is alive and answering.
pub async fn healthz() -> Response {
    Json(json!({"status": "ok"})).into_response()
}

/// `GET /readyz`: 200 once a model is loaded; 503 before and while draining.
pub async fn readyz(State(st): State<AppState>) -> Result<Response, ApiError> {
    if st.inner.draining.load(std::sync::atomic::Ordering::Relaxed) {
        return Err(ApiError::new(
            ErrorKind::ShuttingDown,
            "the server is shutting down",
        ));
    }
    match st.inner.models.get() {
        Some(t) => Ok(Json(json!({
            "status": "ready",
            "model": ModelInfo::of(t.active()),
            "fallback": t.fallback.as_ref().map(ModelInfo::of),
        }))
        .into_response()),
        None => Err(ApiError::new(
            ErrorKind::NotReady,
            "the model is still loading",
        )),
    }
}

/// `GET /metrics`: Prometheus text format.
pub async fn metrics(State(st): State<AppState>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
        )],
        st.render_metrics(),
    )
        .into_response()
}

/// `GET /openapi.json`.
pub async fn openapi() -> Response {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        OPENAPI,
    )
        .into_response()
}

/// `POST /v1/admin/reload` with `Authorization: Bearer $CASETAG_ADMIN_TOKEN`.
pub async fn reload(State(st): State<AppState>, headers: HeaderMap) -> Result<Response, ApiError> {
    let Some(token) = st.admin_token() else {
        return Err(ApiError::new(
            ErrorKind::AdminDisabled,
            "the admin API is off: set CASETAG_ADMIN_TOKEN to enable it",
        ));
    };
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    match given {
        Some(g) if constant_time_eq(g.as_bytes(), token.as_bytes()) => {}
        Some(_) => return Err(ApiError::new(ErrorKind::Unauthorized, "wrong bearer token")),
        None => {
            return Err(ApiError::new(
                ErrorKind::Unauthorized,
                "missing `Authorization: Bearer <token>` header",
            ))
        }
    }
    match st.reload().await {
        Ok(o) => Ok(Json(json!({
            "status": "reloaded",
            "previous": o.previous,
            "path": o.path,
            "model": o.model,
            "fallback": o.fallback,
        }))
        .into_response()),
        Err(e) => Err(ApiError::new(
            if e.is_input() {
                ErrorKind::BadBundle
            } else {
                ErrorKind::Internal
            },
            format!("reload refused, the current model keeps serving: {e}"),
        )),
    }
}

/// Compare secrets without an early exit that leaks the matching prefix.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

pub async fn not_found(req: Request) -> ApiError {
    ApiError::new(
        ErrorKind::NotFound,
        format!(
            "no route for {} {} (see /openapi.json)",
            req.method(),
            req.uri().path()
        ),
    )
}

pub async fn method_not_allowed(req: Request) -> ApiError {
    ApiError::new(
        ErrorKind::MethodNotAllowed,
        format!("{} is not allowed on {}", req.method(), req.uri().path()),
    )
}

/// Turn a handler panic into a JSON 500 (the connection stays up).
pub fn panic_response(p: Box<dyn std::any::Any + Send + 'static>) -> Response {
    let msg = panic_message(&*p);
    tracing::error!("a request handler panicked: {msg}");
    ApiError::internal("internal error while handling the request").into_response()
}

/// Count requests and their latency by route and status.
pub async fn track(State(st): State<AppState>, req: Request, next: Next) -> Response {
    let endpoint = req
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_string(), |m| m.as_str().to_string());
    let t = Instant::now();
    let resp = next.run(req).await;
    st.inner
        .metrics
        .observe_request(&endpoint, resp.status().as_u16(), t.elapsed());
    resp
}

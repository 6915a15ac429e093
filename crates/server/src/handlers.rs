//! HTTP handlers. They validate, admit and shape; inference happens on the
//! batcher thread (or, past the deadline, the fallback on the blocking pool).

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{FromRequest, MatchedPath, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;
use casetag_core::Transcript;
use serde_json::json;

use crate::batcher::{Answer, Pending};
use crate::error::{ApiError, ErrorKind};
use crate::metrics::FallbackReason;
use crate::models::{model_by_id, panic_message, taxonomy_json, ModelInfo};
use crate::request::{parse_tag_request, to_result, TagResponse};
use crate::AppState;

/// The hand-written OpenAPI 3 document.
const OPENAPI: &str = include_str!("openapi.json");

/// `POST /v1/tag`.
pub async fn tag(State(st): State<AppState>, req: Request) -> Result<Json<TagResponse>, ApiError> {
    let limits = &st.inner.cfg.limits;
    // The whole body within the timeout, however slowly it trickles in.
    let body = tokio::time::timeout(
        Duration::from_millis(limits.body_timeout_ms),
        Bytes::from_request(req, &st),
    )
    .await
    .map_err(|_| {
        ApiError::new(
            ErrorKind::RequestTimeout,
            format!(
                "the request body did not arrive within {} ms (--body-timeout-ms)",
                limits.body_timeout_ms
            ),
        )
    })?;
    let body = body.map_err(|r: BytesRejection| {
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
    let pending = st.inner.batcher.submit(cases.clone(), req.top_k)?;
    let answer = wait_for_answer(&st, pending, cases.clone(), req.top_k).await?;
    let tagger = &answer.tagger;
    let info = answer
        .tagged
        .first()
        .and_then(|t| model_by_id(tagger, &t.model_id))
        .unwrap_or_else(|| tagger.active());
    st.inner.drift.record(
        tagger.primary.as_ref(),
        answer
            .tagged
            .iter()
            .zip(cases.iter())
            .map(|(t, c)| (t, c.text.chars().count())),
    );
    let n_cut = answer.tagged.iter().filter(|t| t.truncated).count();
    if n_cut > 0 {
        st.inner.metrics.truncated(n_cut);
    }
    st.inner
        .metrics
        .languages(answer.tagged.iter().map(|t| (t.lang, t.note.is_some())));
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
    mut pending: Pending,
    cases: Arc<Vec<Transcript>>,
    top_k: usize,
) -> Result<Answer, ApiError> {
    let deadline_ms = st.inner.cfg.limits.deadline_ms;
    let reply = if deadline_ms == 0 {
        pending.await
    } else {
        match tokio::time::timeout(Duration::from_millis(deadline_ms), &mut pending).await {
            Ok(r) => r,
            Err(_) => {
                // Out of the queue before the fallback starts: the missed job
                // is not computed and its capacity is free for live requests.
                drop(pending);
                return deadline_fallback(st, cases, top_k).await;
            }
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

/// `GET /v1/model`. Where the bundles live on disk (`dir`, `model_spec`)
/// is shown only with the admin bearer token; a wrong token is a 401.
pub async fn model(State(st): State<AppState>, headers: HeaderMap) -> Result<Response, ApiError> {
    let with_paths = match bearer(&headers) {
        None => false,
        Some(_) => {
            authorize(&st, &headers)?;
            true
        }
    };
    st.model_json(with_paths)
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
/// A server whose primary model failed to load and whose fallback serves
/// alone still answers 200 (it can serve, and taking every such replica
/// out of rotation would turn a degraded service into an outage) but says
/// `"status": "degraded"`, as does the `casetag_degraded` gauge.
pub async fn readyz(State(st): State<AppState>) -> Result<Response, ApiError> {
    if st.inner.draining.load(std::sync::atomic::Ordering::Relaxed) {
        return Err(ApiError::new(
            ErrorKind::ShuttingDown,
            "the server is shutting down",
        ));
    }
    match st.inner.models.get() {
        Some(t) if t.primary.is_none() => Ok(Json(json!({
            "status": "degraded",
            "reason": "the primary model failed to load; the fallback model answers every request",
            "model": ModelInfo::of(t.active()),
            "fallback": t.fallback.as_ref().map(ModelInfo::of),
        }))
        .into_response()),
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
            HeaderValue::from_static(crate::metrics::CONTENT_TYPE),
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
    authorize(&st, &headers)?;
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

/// The credentials of an `Authorization` header using the Bearer scheme.
/// The scheme is case-insensitive (RFC 9110 11.1) and separated from the
/// token by spaces; the token is taken as sent, not trimmed.
fn bearer(headers: &HeaderMap) -> Option<&[u8]> {
    let v = headers.get(header::AUTHORIZATION)?.as_bytes();
    let sp = v.iter().position(|&b| b == b' ')?;
    let (scheme, rest) = v.split_at(sp);
    if !scheme.eq_ignore_ascii_case(b"bearer") {
        return None;
    }
    let start = rest.iter().position(|&b| b != b' ')?;
    Some(&rest[start..])
}

/// Check the admin bearer token: 403 when the admin API is off, 401 when
/// the token is missing or wrong.
fn authorize(st: &AppState, headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(token) = st.admin_token() else {
        return Err(ApiError::new(
            ErrorKind::AdminDisabled,
            "the admin API is off: set CASETAG_ADMIN_TOKEN to enable it",
        ));
    };
    match bearer(headers) {
        Some(g) if secrets_equal(g, token.as_bytes()) => Ok(()),
        Some(_) => Err(ApiError::new(ErrorKind::Unauthorized, "wrong bearer token")),
        None => Err(ApiError::new(
            ErrorKind::Unauthorized,
            "missing `Authorization: Bearer <token>` header",
        )),
    }
}

/// Compare secrets in time that depends on neither their contents nor
/// their lengths: both are hashed to 32 bytes, which are compared without
/// an early exit.
fn secrets_equal(given: &[u8], secret: &[u8]) -> bool {
    use sha2::{Digest, Sha256};
    let (a, b) = (Sha256::digest(given), Sha256::digest(secret));
    let diff = a
        .iter()
        .zip(b.iter())
        .fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
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

/// Refuse a request whose declared `Content-Length` is over
/// `--max-body-bytes` before reading any of its body (413, connection
/// closed). Bodies without a length are still cut off at the limit while
/// they are read.
pub async fn refuse_oversized(State(st): State<AppState>, req: Request, next: Next) -> Response {
    let max = st.inner.cfg.limits.max_body_bytes;
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    match declared {
        Some(n) if n > max as u64 => ApiError::new(
            ErrorKind::PayloadTooLarge,
            format!("request body of {n} bytes is larger than {max} bytes (--max-body-bytes)"),
        )
        .into_response(),
        _ => next.run(req).await,
    }
}

/// Count requests and their latency by route and status.
pub async fn track(State(st): State<AppState>, req: Request, next: Next) -> Response {
    let endpoint = req
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_string(), |m| m.as_str().to_string());
    let t = Instant::now();
    let id = request_id(req.headers());
    let mut resp = next.run(req).await;
    let took = t.elapsed();
    st.inner
        .metrics
        .observe_request(&endpoint, resp.status().as_u16(), took);
    let h = resp.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&id) {
        h.insert(REQUEST_ID, v);
    }
    if let Ok(v) = HeaderValue::from_str(&format!("total;dur={:.3}", took.as_secs_f64() * 1000.0)) {
        h.insert(SERVER_TIMING, v);
    }
    resp
}

/// The request id header, echoed on every response.
pub const REQUEST_ID: &str = "x-request-id";
/// Time spent in the server, in milliseconds (`total;dur=1.234`).
pub const SERVER_TIMING: &str = "server-timing";

/// The caller's `x-request-id` when it is 1 to 128 visible ASCII
/// characters (so it can be echoed and logged as is); otherwise a new one,
/// unique within this process and unlikely to repeat across processes.
pub fn request_id(headers: &HeaderMap) -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::OnceLock;
    if let Some(v) = headers.get(REQUEST_ID).and_then(|v| v.to_str().ok()) {
        if (1..=128).contains(&v.len()) && v.bytes().all(|b| b.is_ascii_graphic()) {
            return v.to_string();
        }
    }
    static PROCESS: OnceLock<u64> = OnceLock::new();
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let process = *PROCESS.get_or_init(|| {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        (t ^ u64::from(std::process::id()).rotate_left(32)).wrapping_mul(0x9E37_79B9_7F4A_7C15)
    });
    format!(
        "{:016x}-{:08x}",
        process,
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn auth(v: &'static [u8]) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, HeaderValue::from_bytes(v).unwrap());
        h
    }

    #[test]
    fn bearer_scheme_is_case_insensitive_and_the_token_is_not_trimmed() {
        assert_eq!(bearer(&auth(b"Bearer s3cret")), Some(&b"s3cret"[..]));
        assert_eq!(bearer(&auth(b"bearer s3cret")), Some(&b"s3cret"[..]));
        assert_eq!(bearer(&auth(b"BEARER  s3cret")), Some(&b"s3cret"[..]));
        assert_eq!(bearer(&auth(b"Bearer s3 cret")), Some(&b"s3 cret"[..]));
        assert_eq!(bearer(&auth(b"Basic czNjcmV0")), None);
        assert_eq!(bearer(&auth(b"Bearers3cret")), None);
        assert_eq!(bearer(&HeaderMap::new()), None);
    }

    #[test]
    fn request_ids_are_echoed_when_safe_and_made_otherwise() {
        let with = |v: &[u8]| {
            let mut h = HeaderMap::new();
            h.insert(REQUEST_ID, HeaderValue::from_bytes(v).unwrap());
            request_id(&h)
        };
        assert_eq!(with(b"abc-123"), "abc-123");
        let made = request_id(&HeaderMap::new());
        assert_eq!(made.len(), 25, "{made}");
        assert_ne!(made, request_id(&HeaderMap::new()));
        assert_ne!(with(b"has space"), "has space");
        assert_ne!(with(&[b'x'; 129]).len(), 129);
        assert_eq!(with(&[b'x'; 128]).len(), 128);
    }

    #[test]
    fn secrets_are_compared_over_their_full_length() {
        assert!(secrets_equal(b"s3cret", b"s3cret"));
        assert!(!secrets_equal(b"s3cre", b"s3cret"));
        assert!(!secrets_equal(b"s3cret ", b"s3cret"));
        assert!(!secrets_equal(b"", b"s3cret"));
        assert!(!secrets_equal(b"s3creT", b"s3cret"));
    }
}

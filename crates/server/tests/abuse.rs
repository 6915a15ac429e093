//! A server under abuse: stalled and idle connections, too many
//! connections, declared oversized and trickling bodies, requests that miss
//! their deadline while the model is busy.
//!
//! Timeouts are configured short (200 ms) and each check allows a generous
//! bound (10 s) for the server to act: a slow machine makes them slower,
//! never wrong.

mod common;

use std::sync::Arc;
use std::time::Duration;

use casetag_server::{AppState, Limits};
use common::{config, err_type, fixture, raw_exchange, raw_status, tagger, Gate, TestServer};

const BOUND: Duration = Duration::from_secs(10);

async fn until(what: &str, mut cond: impl FnMut() -> bool) {
    let t = tokio::time::Instant::now();
    while !cond() {
        assert!(t.elapsed() < BOUND * 3, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

async fn server(limits: Limits) -> TestServer {
    let fx = fixture();
    let mut cfg = config(&fx.v1);
    cfg.limits = limits;
    TestServer::start(AppState::new(&cfg).unwrap()).await
}

fn short_timeouts() -> Limits {
    Limits {
        deadline_ms: 0,
        header_timeout_ms: 200,
        body_timeout_ms: 200,
        ..Limits::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stalled_request_head_is_closed_after_the_header_timeout() {
    let s = server(short_timeouts()).await;
    // Slowloris: half a request head, then nothing.
    let got = raw_exchange(
        &s.base,
        b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ",
        BOUND,
    )
    .await;
    let got = got.expect("the server kept a stalled connection open");
    assert!(!String::from_utf8_lossy(&got).contains("200 OK"), "{got:?}");
    until("the timeout counted", || {
        s.state
            .render_metrics()
            .contains("casetag_header_timeouts_total 1\n")
    })
    .await;
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_idle_keep_alive_connection_is_closed() {
    let s = server(short_timeouts()).await;
    // One whole request on a keep-alive connection, then silence.
    let got = raw_exchange(&s.base, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n", BOUND)
        .await
        .expect("the server kept an idle keep-alive connection open");
    assert_eq!(raw_status(&got), 200, "{}", String::from_utf8_lossy(&got));
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn connections_over_the_cap_are_refused_with_503() {
    let s = server(Limits {
        deadline_ms: 0,
        max_connections: 2,
        ..Limits::default()
    })
    .await;
    let addr = s.base.trim_start_matches("http://").to_string();
    let a = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let b = tokio::net::TcpStream::connect(&addr).await.unwrap();
    until("two connections open", || s.state.open_connections() == 2).await;
    let got = raw_exchange(&s.base, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n", BOUND)
        .await
        .expect("a refused connection is closed");
    let text = String::from_utf8_lossy(&got);
    assert_eq!(raw_status(&got), 503, "{text}");
    assert!(text.contains("\"too_many_connections\""), "{text}");
    assert!(
        text.to_ascii_lowercase().contains("retry-after: 1"),
        "{text}"
    );
    // A slot frees when a connection closes.
    drop(a);
    until("one connection closed", || s.state.open_connections() == 1).await;
    let (st, _) = s.get("/healthz").await;
    assert_eq!(st, 200);
    drop(b);
    // The client keeps its /healthz connection; wait until the server has
    // seen `b` close, or a new connection for /metrics could find the cap
    // still full and be refused before it sends its request.
    until("b closed", || s.state.open_connections() <= 1).await;
    let (_, m) = s.get_text("/metrics").await;
    assert!(m.contains("casetag_connections_refused_total 1\n"), "{m}");
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_declared_oversized_body_is_refused_before_it_is_read() {
    let s = server(Limits {
        deadline_ms: 0,
        max_body_bytes: 1000,
        ..Limits::default()
    })
    .await;
    // The head declares a terabyte; not one byte of body follows.
    let req = b"POST /v1/tag HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 1000000000000\r\n\r\n";
    let got = raw_exchange(&s.base, req, BOUND)
        .await
        .expect("the server waited for the body instead of refusing it");
    let text = String::from_utf8_lossy(&got);
    assert_eq!(raw_status(&got), 413, "{text}");
    assert!(text.contains("\"payload_too_large\""), "{text}");
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_trickling_body_gets_408() {
    let s = server(short_timeouts()).await;
    // 100 bytes declared, 10 sent, then nothing.
    let req = b"POST /v1/tag HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"cases\":";
    let got = raw_exchange(&s.base, req, BOUND)
        .await
        .expect("the server waited for the body indefinitely");
    let text = String::from_utf8_lossy(&got);
    assert_eq!(raw_status(&got), 408, "{text}");
    assert!(text.contains("\"request_timeout\""), "{text}");
    s.shutdown().await;
}

/// A request that misses its deadline while the model is busy leaves the
/// queue at once: its capacity is free for the next request (no 429 while
/// the queue only holds abandoned work) and the model never computes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_missed_deadline_leaves_the_queue_and_is_not_computed() {
    let fx = fixture();
    let mut cfg = config(&fx.v1);
    cfg.fallback = Some(fx.fallback.clone());
    cfg.limits = Limits {
        max_cases: 1,
        queue_capacity: 2,
        deadline_ms: 100,
        ..Limits::default()
    };
    let (gate, mut entered) = Gate::new();
    let state = AppState::with_tagger(&cfg, tagger(&fx.v1, Some(gate.clone()), Some(&fx.fallback)))
        .unwrap();
    let s = Arc::new(TestServer::start(state).await);
    // A holds the model (one of the two places)...
    let sa = s.clone();
    let a = tokio::spawn(async move { sa.tag(&["item missing"]).await });
    entered.recv().await.unwrap();
    // ...B queues behind it, misses its deadline and is answered by the
    // fallback; B's place is free again at once.
    let (st, v) = s.tag(&["parcel late"]).await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["model"]["id"], "fallback");
    assert_eq!(s.state.queue_depth(), 0);
    // So C is admitted, not refused with 429 (and is answered by the
    // fallback in turn).
    let (st, v) = s.tag(&["screen cracked"]).await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(err_type(&v), "<no error type>");
    gate.open();
    let (st, _) = a.await.unwrap();
    assert_eq!(st, 200);
    until("A's batch finished", || {
        s.state
            .render_metrics()
            .contains("casetag_in_flight_cases 0\n")
    })
    .await;
    // Only A's case ever reached the model.
    let m = s.state.render_metrics();
    assert!(m.contains("casetag_cases_tagged_total 1\n"), "{m}");
    assert!(m.contains("casetag_dropped_jobs_total 2\n"), "{m}");
    assert!(!m.contains("status=\"429\""), "{m}");
}

//! Operations: overload (429), deadlines and fallback, panics, batching,
//! hot reload (auth, under traffic, bad bundle) and graceful shutdown.
//!
//! Slow models are simulated with a gate the test opens, so the outcome
//! never depends on timing: the test awaits "the model is busy" and only
//! then sends what must be refused or time out.

mod common;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use casetag_server::{AppState, Limits};
use common::{config, err_type, fixture, registry, set_champion, tagger, Gate, TestServer};
use serde_json::json;

/// Wait until `cond` holds (polling, bounded by a generous timeout) for
/// states that have no event to await.
async fn until(what: &str, mut cond: impl FnMut() -> bool) {
    let t = tokio::time::Instant::now();
    while !cond() {
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn full_queue_answers_429_at_once() {
    let fx = fixture();
    let mut cfg = config(&fx.v1);
    cfg.limits = Limits {
        max_cases: 2,
        queue_capacity: 2,
        deadline_ms: 0,
        ..Limits::default()
    };
    let (gate, mut entered) = Gate::new();
    let state = AppState::with_tagger(&cfg, tagger(&fx.v1, Some(gate.clone()), None)).unwrap();
    let s = Arc::new(TestServer::start(state).await);

    // One case is in the model (holding 1 of the 2 slots)...
    let s1 = s.clone();
    let busy = tokio::spawn(async move { s1.tag(&["item missing"]).await });
    entered.recv().await.unwrap();
    // ...so a 2-case request cannot be admitted.
    let (st, v) = s.tag(&["item missing", "parcel late"]).await;
    assert_eq!(st, 429, "{v}");
    assert_eq!(err_type(&v), "overloaded");
    let r = s
        .client
        .post(s.url("/v1/tag"))
        .json(&json!({"cases": [{"text": "a"}, {"text": "b"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 429);
    assert_eq!(r.headers()["retry-after"], "1");

    gate.open();
    let (st, v) = busy.await.unwrap();
    assert_eq!(st, 200, "{v}");
    // Capacity is back.
    assert_eq!(s.tag(&["item missing", "parcel late"]).await.0, 200);
    let (_, m) = s.get_text("/metrics").await;
    assert!(
        m.contains("casetag_http_requests_total{endpoint=\"/v1/tag\",status=\"429\"} 2\n"),
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn missed_deadline_without_fallback_is_503() {
    let fx = fixture();
    let mut cfg = config(&fx.v1);
    cfg.limits.deadline_ms = 50;
    let (gate, _entered) = Gate::new();
    let state = AppState::with_tagger(&cfg, tagger(&fx.v1, Some(gate.clone()), None)).unwrap();
    let s = TestServer::start(state).await;
    // The gate stays closed until the answer is in, so the deadline must pass.
    let (st, v) = s.tag(&["item missing"]).await;
    assert_eq!(st, 503, "{v}");
    assert_eq!(err_type(&v), "deadline_exceeded");
    gate.open();
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn missed_deadline_is_served_by_the_fallback() {
    let fx = fixture();
    let mut cfg = config(&fx.v1);
    cfg.limits.deadline_ms = 50;
    cfg.fallback = Some(fx.fallback.clone());
    let (gate, _entered) = Gate::new();
    let state = AppState::with_tagger(&cfg, tagger(&fx.v1, Some(gate.clone()), Some(&fx.fallback)))
        .unwrap();
    let s = TestServer::start(state).await;
    let (st, v) = s
        .tag(&["the screen arrived cracked", "parcel is late"])
        .await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["model"]["id"], "fallback");
    for r in v["results"].as_array().unwrap() {
        assert_eq!(r["served_by"], "baseline");
        assert_eq!(r["model_id"], "fallback");
    }
    let (_, m) = s.get_text("/metrics").await;
    assert!(
        m.contains("casetag_fallback_total{reason=\"deadline\"} 1\n"),
        "{m}"
    );
    gate.open();
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_panicking_model_fails_the_request_not_the_server() {
    let fx = fixture();
    let cfg = config(&fx.v1);
    let state = AppState::with_tagger(&cfg, tagger(&fx.v1, None, None)).unwrap();
    let s = TestServer::start(state).await;
    let (st, v) = s.tag(&["PANIC please"]).await;
    assert_eq!(st, 500, "{v}");
    assert_eq!(err_type(&v), "internal");
    // The model thread survived.
    let (st, v) = s.tag(&["item missing"]).await;
    assert_eq!(st, 200, "{v}");
    let (_, m) = s.get_text("/metrics").await;
    assert!(m.contains("casetag_model_panics_total 1\n"), "{m}");
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_panicking_primary_falls_back() {
    let fx = fixture();
    let mut cfg = config(&fx.v1);
    cfg.fallback = Some(fx.fallback.clone());
    let state = AppState::with_tagger(&cfg, tagger(&fx.v1, None, Some(&fx.fallback))).unwrap();
    let s = TestServer::start(state).await;
    let (st, v) = s.tag(&["PANIC please"]).await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["results"][0]["model_id"], "fallback");
    let (_, m) = s.get_text("/metrics").await;
    assert!(
        m.contains("casetag_fallback_total{reason=\"primary_error\"} 1\n"),
        "{m}"
    );
    s.shutdown().await;
}

/// While the model is busy, two requests of two words (tokens, for the test
/// classifier) each queue up; with batching they run as one batch, without
/// it as two.
async fn batches_after_a_busy_model(limits: impl FnOnce(&mut Limits)) -> String {
    let fx = fixture();
    let mut cfg = config(&fx.v1);
    limits(&mut cfg.limits);
    let (gate, mut entered) = Gate::new();
    let state = AppState::with_tagger(&cfg, tagger(&fx.v1, Some(gate.clone()), None)).unwrap();
    let s = Arc::new(TestServer::start(state).await);
    let mut tasks = Vec::new();
    let s1 = s.clone();
    tasks.push(tokio::spawn(async move { s1.tag(&["item missing"]).await }));
    entered.recv().await.unwrap();
    for text in ["parcel late", "screen cracked"] {
        let si = s.clone();
        tasks.push(tokio::spawn(async move { si.tag(&[text]).await }));
    }
    until("two requests queued", || s.state.queue_depth() == 2).await;
    gate.open();
    for t in tasks {
        let (st, v) = t.await.unwrap();
        assert_eq!(st, 200, "{v}");
    }
    s.get_text("/metrics").await.1
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn queued_requests_are_batched_together() {
    let m = batches_after_a_busy_model(|_| {}).await;
    assert!(m.contains("casetag_batch_size_cases_count 2\n"), "{m}");
    assert!(
        m.contains("casetag_batch_size_cases_bucket{le=\"1\"} 1\n"),
        "{m}"
    );
    assert!(m.contains("casetag_batch_size_cases_sum 3.0\n"), "{m}");
    // "item missing", then "parcel late" + "screen cracked".
    assert!(m.contains("casetag_batch_size_tokens_sum 6.0\n"), "{m}");
}

/// The batch budget in tokens: two queued requests of two tokens each do
/// not share a batch of at most three.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_token_budget_splits_batches() {
    let m = batches_after_a_busy_model(|l| l.max_batch_tokens = 3).await;
    assert!(m.contains("casetag_batch_size_cases_count 3\n"), "{m}");
    assert!(
        m.contains("casetag_batch_size_cases_bucket{le=\"1\"} 3\n"),
        "{m}"
    );
    assert!(m.contains("casetag_batch_size_tokens_count 3\n"), "{m}");
    assert!(m.contains("casetag_batch_size_tokens_sum 6.0\n"), "{m}");
}

/// Two groups of clients taking turns on the model merge back into one batch:
/// the group that waited behind a batch also waits (up to `max_wait`) for
/// the client that batch just answered, when it comes straight back.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_waiting_group_waits_for_the_client_just_answered() {
    let fx = fixture();
    let mut cfg = config(&fx.v1);
    // Long enough that only the rule, not the timing, decides.
    cfg.limits.max_wait_ms = 5_000;
    let (gate, mut entered) = Gate::new();
    let state = AppState::with_tagger(&cfg, tagger(&fx.v1, Some(gate.clone()), None)).unwrap();
    let s = Arc::new(TestServer::start(state).await);
    // Client A: one request, then back with a second once the batcher has
    // taken B's two off the queue. That order is certain: without the rule,
    // B's two would already be running as a batch of their own.
    let sa = s.clone();
    let a = tokio::spawn(async move {
        let first = sa.tag(&["item missing"]).await;
        until("B's requests taken off the queue", || {
            sa.state.queue_depth() == 0
        })
        .await;
        let second = sa.tag(&["item missing again"]).await;
        (first, second)
    });
    entered.recv().await.unwrap();
    // Group B queues up behind A's batch.
    let mut b = Vec::new();
    for text in ["parcel late", "screen cracked"] {
        let si = s.clone();
        b.push(tokio::spawn(async move { si.tag(&[text]).await }));
    }
    until("two requests queued", || s.state.queue_depth() == 2).await;
    let started = std::time::Instant::now();
    gate.open();
    let ((st1, v1), (st2, v2)) = a.await.unwrap();
    assert_eq!((st1, st2), (200, 200), "{v1} {v2}");
    for t in b {
        let (st, v) = t.await.unwrap();
        assert_eq!(st, 200, "{v}");
    }
    // A alone, then B's two with A's second: two batches, not three, and
    // without sitting out the whole wait.
    let (_, m) = s.get_text("/metrics").await;
    assert!(m.contains("casetag_batch_size_cases_count 2\n"), "{m}");
    assert!(m.contains("casetag_batch_size_cases_sum 4.0\n"), "{m}");
    assert!(
        m.contains("casetag_batch_size_cases_bucket{le=\"1\"} 1\n"),
        "{m}"
    );
    assert!(
        started.elapsed() < std::time::Duration::from_secs(4),
        "waited out max_wait"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn no_batching_runs_each_request_alone() {
    let m = batches_after_a_busy_model(|l| l.no_batching = true).await;
    assert!(m.contains("casetag_batch_size_cases_count 3\n"), "{m}");
    assert!(
        m.contains("casetag_batch_size_cases_bucket{le=\"1\"} 3\n"),
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reload_needs_the_bearer_token() {
    let fx = fixture();
    let cfg = config(&fx.v1);
    let s = TestServer::start(AppState::new(&cfg).unwrap().with_admin_token(None)).await;
    let (st, v) = s.reload(Some("anything")).await;
    assert_eq!(st, 403);
    assert_eq!(err_type(&v), "admin_disabled");
    s.shutdown().await;

    let s = TestServer::start(
        AppState::new(&cfg)
            .unwrap()
            .with_admin_token(Some("s3cret".into())),
    )
    .await;
    let (st, v) = s.reload(None).await;
    assert_eq!(st, 401);
    assert_eq!(err_type(&v), "unauthorized");
    let (st, _) = s.reload(Some("wrong")).await;
    assert_eq!(st, 401);
    let (st, v) = s.reload(Some("s3cret")).await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["status"], "reloaded");
    assert_eq!(v["previous"], "tagger-v1");
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reload_under_traffic_drops_no_request() {
    let root = registry();
    let mut cfg = config(&root.path().join("tagger").join("v1"));
    cfg.model_spec = "tagger".into();
    cfg.models_root = root.path().to_path_buf();
    cfg.fallback = Some(fixture().fallback.clone());
    let state = AppState::new(&cfg)
        .unwrap()
        .with_admin_token(Some("t".into()));
    let s = Arc::new(TestServer::start(state).await);

    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicUsize::new(0));
    let mut clients = Vec::new();
    for i in 0..8 {
        let (s, stop, ok) = (s.clone(), stop.clone(), ok.clone());
        clients.push(tokio::spawn(async move {
            let mut seen = std::collections::BTreeSet::new();
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) || n == 0 {
                let (st, v) = s.tag(&["item missing from the box", "parcel late"]).await;
                assert_eq!(st, 200, "client {i}: {v}");
                seen.insert(v["results"][0]["model_id"].as_str().unwrap().to_string());
                ok.fetch_add(1, Ordering::Relaxed);
                n += 1;
            }
            seen
        }));
    }
    for (k, version) in ["v2", "v1", "v2", "v1", "v2"].iter().enumerate() {
        // Let some traffic through between reloads.
        let before = ok.load(Ordering::Relaxed);
        until("traffic between reloads", || {
            ok.load(Ordering::Relaxed) >= before + 8
        })
        .await;
        set_champion(root.path(), version);
        let (st, v) = s.reload(Some("t")).await;
        assert_eq!(st, 200, "reload {k}: {v}");
        assert_eq!(v["model"]["id"], format!("tagger-{version}"));
        let (_, m) = s.get("/v1/model").await;
        assert_eq!(m["active"]["id"], format!("tagger-{version}"));
        assert_eq!(m["fallback"]["id"], "fallback");
    }
    let before = ok.load(Ordering::Relaxed);
    until("traffic after the last reload", || {
        ok.load(Ordering::Relaxed) >= before + 8
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    let mut seen = std::collections::BTreeSet::new();
    for c in clients {
        seen.extend(c.await.unwrap());
    }
    assert!(
        seen.contains("tagger-v1") && seen.contains("tagger-v2"),
        "{seen:?}"
    );
    let (_, m) = s.get_text("/metrics").await;
    assert!(
        m.contains("casetag_reloads_total{result=\"ok\"} 5\n"),
        "{m}"
    );
    assert!(!m.contains("status=\"5"), "no 5xx during reloads:\n{m}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_bad_bundle_is_refused_and_the_old_model_keeps_serving() {
    let dir = tempfile::tempdir().unwrap();
    let bundle = dir.path().join("live");
    common::copy_dir(&fixture().v1, &bundle);
    let cfg = config(&bundle);
    let s = TestServer::start(
        AppState::new(&cfg)
            .unwrap()
            .with_admin_token(Some("t".into())),
    )
    .await;
    // Corrupt a weights file: its checksum no longer matches the manifest.
    let victim = std::fs::read_dir(&bundle)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| {
            let n = p.file_name().unwrap().to_string_lossy().to_string();
            n != "manifest.json" && n != "manifest.sha256" && n != "taxonomy.yaml"
        })
        .expect("a weights file");
    let mut bytes = std::fs::read(&victim).unwrap();
    bytes.extend_from_slice(b"garbage");
    std::fs::write(&victim, bytes).unwrap();

    let (st, v) = s.reload(Some("t")).await;
    assert_eq!(st, 422, "{v}");
    assert_eq!(err_type(&v), "bad_bundle");
    assert!(
        v["error"]["message"].as_str().unwrap().contains("checksum"),
        "{v}"
    );

    // A bundle that vanished entirely is refused too.
    std::fs::remove_file(bundle.join("manifest.json")).unwrap();
    let (st, v) = s.reload(Some("t")).await;
    assert_eq!(st, 422, "{v}");

    let (st, v) = s.tag(&["item missing"]).await;
    assert_eq!(st, 200);
    assert_eq!(v["results"][0]["model_id"], "tagger-v1");
    assert_eq!(s.get("/readyz").await.0, 200);
    let (_, m) = s.get_text("/metrics").await;
    assert!(
        m.contains("casetag_reloads_total{result=\"error\"} 2\n"),
        "{m}"
    );
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn shutdown_drains_in_flight_requests() {
    let fx = fixture();
    let cfg = config(&fx.v1);
    let (gate, mut entered) = Gate::new();
    let state = AppState::with_tagger(&cfg, tagger(&fx.v1, Some(gate.clone()), None)).unwrap();
    let mut s = TestServer::start(state).await;
    let (client, url) = (s.client.clone(), s.url("/v1/tag"));
    let in_flight = tokio::spawn(async move {
        let r = client
            .post(url)
            .json(&json!({"cases": [{"text": "item missing"}]}))
            .send()
            .await
            .unwrap();
        (
            r.status().as_u16(),
            r.json::<serde_json::Value>().await.unwrap(),
        )
    });
    entered.recv().await.unwrap();
    let server = s.begin_shutdown();
    // Draining: not ready any more, while the request is still running.
    until("draining", || !s.state.is_ready()).await;
    gate.open();
    let (st, v) = in_flight.await.unwrap();
    assert_eq!(st, 200, "{v}");
    server.await.unwrap().unwrap();
}

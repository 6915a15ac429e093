//! What the server tells and to whom: a fallback serving alone is visible
//! (degraded), the fallback must be a baseline, bundle paths only with the
//! admin token, the bearer scheme, and error messages free of case text.

mod common;

use casetag_server::AppState;
use common::{config, copy_dir, err_type, fixture, reseal, tagger, TestServer};

/// A copy of the primary whose weights no longer match their checksum.
fn corrupt_primary(dir: &std::path::Path) -> std::path::PathBuf {
    let bundle = dir.join("corrupt");
    copy_dir(&fixture().v1, &bundle);
    let w = bundle.join("baseline.safetensors");
    let mut bytes = std::fs::read(&w).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    std::fs::write(&w, bytes).unwrap();
    bundle
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_fallback_serving_alone_is_reported_degraded() {
    let fx = fixture();
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(&corrupt_primary(dir.path()));
    cfg.fallback = Some(fx.fallback.clone());
    let s = TestServer::start(AppState::new(&cfg).unwrap()).await;

    let (st, v) = s.get("/readyz").await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["status"], "degraded", "{v}");
    assert_eq!(v["model"]["id"], "fallback", "{v}");
    let (_, v) = s.get("/v1/model").await;
    assert_eq!(v["degraded"], true, "{v}");

    let (st, v) = s.tag(&["item missing", "parcel late"]).await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["results"][0]["served_by"], "baseline");
    let (_, m) = s.get_text("/metrics").await;
    assert!(m.contains("casetag_degraded 1\n"), "{m}");
    assert!(
        m.contains("casetag_fallback_total{reason=\"primary_unavailable\"} 1\n"),
        "{m}"
    );
    s.shutdown().await;

    // With both models loaded the same server is simply ready.
    let mut cfg = config(&fx.v1);
    cfg.fallback = Some(fx.fallback.clone());
    let s = TestServer::start(AppState::new(&cfg).unwrap()).await;
    let (st, v) = s.get("/readyz").await;
    assert_eq!((st, v["status"].as_str()), (200, Some("ready")), "{v}");
    let (_, m) = s.get_text("/metrics").await;
    assert!(m.contains("casetag_degraded 0\n"), "{m}");
    s.shutdown().await;
}

#[test]
fn the_fallback_must_be_a_baseline() {
    let fx = fixture();
    let dir = tempfile::tempdir().unwrap();
    let fb = dir.path().join("not-a-baseline");
    copy_dir(&fx.fallback, &fb);
    reseal(&fb, |m| m["kind"] = "transformer".into());
    let mut cfg = config(&fx.v1);
    cfg.fallback = Some(fb);
    let e = AppState::new(&cfg)
        .err()
        .expect("a transformer fallback is refused");
    assert!(e.is_input(), "{e}");
    let msg = e.to_string();
    assert!(msg.contains("must be a baseline bundle"), "{msg}");
    assert_eq!(msg.lines().count(), 1, "{msg}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn model_paths_are_shown_only_to_the_admin() {
    let fx = fixture();
    let mut cfg = config(&fx.v1);
    cfg.fallback = Some(fx.fallback.clone());
    let state = AppState::new(&cfg)
        .unwrap()
        .with_admin_token(Some("s3cret".into()));
    let s = TestServer::start(state).await;
    let root = fx.v1.parent().unwrap().to_string_lossy().to_string();

    let (st, body) = s.get_text("/v1/model").await;
    assert_eq!(st, 200, "{body}");
    assert!(
        !body.contains(&root),
        "paths shown without the token: {body}"
    );
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["active"]["id"], "tagger-v1");
    assert!(v["active"].get("dir").is_none() && v.get("model_spec").is_none());

    let get = |auth: &'static str| {
        s.client
            .get(s.url("/v1/model"))
            .header("authorization", auth)
            .send()
    };
    // The scheme is case-insensitive.
    let r = get("bearer s3cret").await.unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(
        v["active"]["dir"].as_str(),
        Some(fx.v1.to_str().unwrap()),
        "{v}"
    );
    // A wrong token, or the right one with extra characters, is refused.
    for bad in ["Bearer s3cre", "Bearer s3cret x", "Bearer S3CRET"] {
        let r = get(bad).await.unwrap();
        assert_eq!(r.status().as_u16(), 401, "{bad}");
    }
    // Reload takes the same credentials.
    let r = s
        .client
        .post(s.url("/v1/admin/reload"))
        .header("authorization", "BEARER s3cret")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_model_panic_does_not_echo_the_case() {
    let fx = fixture();
    let cfg = config(&fx.v1);
    let state = AppState::with_tagger(&cfg, tagger(&fx.v1, None, None)).unwrap();
    let s = TestServer::start(state).await;
    // The test model panics quoting the case, as std's own panics do.
    let (st, v) = s
        .tag(&["PANIC my card 4111 1111 1111 1111\u{1b}[31m\nexpires 09/29"])
        .await;
    assert_eq!(st, 500, "{v}");
    assert_eq!(err_type(&v), "internal");
    let msg = v["error"]["message"].as_str().unwrap();
    assert!(!msg.contains("4111"), "case text in the error: {msg}");
    assert!(!msg.chars().any(char::is_control), "{msg:?}");
    s.shutdown().await;
}

//! The HTTP contract: result fields, read-only endpoints, and every request
//! error status, against a real server on 127.0.0.1:0.

mod common;

use std::sync::Arc;

use casetag_server::{AppState, Limits};
use common::{config, err_type, fixture, TestServer};
use serde_json::{json, Value};

async fn server_with(limits: Limits) -> TestServer {
    let mut cfg = config(&fixture().v1);
    cfg.limits = limits;
    TestServer::start(AppState::new(&cfg).unwrap()).await
}

async fn server() -> TestServer {
    server_with(config(&fixture().v1).limits).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tag_returns_the_contract_fields() {
    let s = server().await;
    let (st, v) = s
        .post_json(
            "/v1/tag",
            &json!({"cases": [
                {"id": "a", "text": "the screen arrived cracked and broken, I want a refund"},
                {"id": "b", "text": "where is my order, the delivery is two weeks late"},
                {"text": "no id on this one: item missing from the box"},
                {"id": "th", "text": "ฉันยังไม่ได้รับสินค้าเลยค่ะ ช่วยตรวจสอบให้หน่อย"}
            ], "top_k": 2}),
        )
        .await;
    assert_eq!(st, 200, "{v}");
    // Every case carries its language; the Thai one, a language the
    // English-trained model never saw, says so instead of abstaining silently.
    let mut v = v;
    let thai = v["results"].as_array_mut().unwrap().pop().unwrap();
    assert_eq!(thai["lang"], "th");
    let note = thai["note"].as_str().unwrap();
    assert!(note.contains("'th'") && note.contains("(en)"), "{note}");
    assert_eq!(v["model"]["id"], "tagger-v1");
    assert_eq!(v["model"]["kind"], "baseline");
    assert!(v["model"]["created"].is_string());
    let results = v["results"].as_array().unwrap();
    assert_eq!(results.len(), 3);
    assert_eq!(results[0]["id"], "a");
    assert_eq!(results[1]["id"], "b");
    assert!(results[2]["id"].is_null());
    for r in results {
        let depth = r["depth"].as_u64().unwrap();
        assert!(depth <= 3);
        let oos = r["out_of_scope"].as_bool().unwrap();
        if depth == 0 {
            assert!(r["tag"].is_null(), "{r}");
        } else {
            assert!(!oos);
            let tag = r["tag"].as_object().unwrap();
            assert!(tag["l1"].is_string());
            // Levels past the depth are left out.
            assert_eq!(tag.len() as u64, depth, "{r}");
        }
        // The best guess is there at every depth; the tag is its prefix.
        let guess = r["guess"].as_object().unwrap();
        assert!(guess["l1"].is_string(), "{r}");
        if let Some(tag) = r["tag"].as_object() {
            for (k, v) in tag {
                assert_eq!(&guess[k], v, "{r}");
            }
        }
        let c = r["confidence"].as_object().unwrap();
        let l1 = c["l1"].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&l1));
        assert!(r["actions"].is_array());
        for a in r["actions"].as_array().unwrap() {
            assert!(a["id"].is_string());
            assert!(["auto", "suggest"].contains(&a["mode"].as_str().unwrap()));
        }
        let alts = r["alternatives"].as_array().unwrap();
        assert_eq!(alts.len(), 2, "top_k = 2");
        assert!(alts[0]["tag"]["l1"].is_string());
        assert!(
            alts[0]["probability"].as_f64().unwrap() >= alts[1]["probability"].as_f64().unwrap()
        );
        // Per level, top_k nodes by marginal, most likely first; where the
        // guess's node is listed, its probability is the level's confidence.
        let levels = r["level_alternatives"].as_object().unwrap();
        let top1 = levels["l1"].as_array().unwrap();
        assert_eq!(top1.len(), 2, "top_k = 2 per level");
        let p = |a: &Value| a["probability"].as_f64().unwrap();
        assert!(p(&top1[0]) >= p(&top1[1]));
        for a in top1 {
            if a["node"] == guess["l1"] {
                assert!((p(a) - l1).abs() < 1e-5, "{r}");
            }
        }
        for k in ["l2", "l3"] {
            if let Some(v) = levels.get(k) {
                assert!(!v.as_array().unwrap().is_empty() && v.as_array().unwrap().len() <= 2);
            }
        }
        assert_eq!(r["served_by"], "baseline");
        assert_eq!(r["model_id"], "tagger-v1");
        assert_eq!(r["truncated"], false);
        assert_eq!(r["lang"], "en");
        assert!(r["note"].is_null(), "{r}");
    }
    // The trained model gets the obvious cases right at level 1.
    assert_eq!(results[0]["alternatives"][0]["tag"]["l1"], "returns");
    assert_eq!(results[1]["alternatives"][0]["tag"]["l1"], "logistics");
    // Operations see the language mix and the noted cases on /metrics.
    let (_, m) = s.get_text("/metrics").await;
    assert!(
        m.contains("casetag_cases_by_language_total{lang=\"en\"} 3\n"),
        "{m}"
    );
    assert!(
        m.contains("casetag_cases_by_language_total{lang=\"th\"} 1\n"),
        "{m}"
    );
    assert!(m.contains("casetag_cases_language_noted_total 1\n"), "{m}");
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_only_endpoints() {
    let s = server().await;
    let (st, v) = s.get("/healthz").await;
    assert_eq!((st, v["status"].as_str()), (200, Some("ok")));
    let (st, v) = s.get("/readyz").await;
    assert_eq!(st, 200);
    assert_eq!(v["model"]["id"], "tagger-v1");

    let (st, v) = s.get("/v1/model").await;
    assert_eq!(st, 200);
    assert_eq!(v["active"]["id"], "tagger-v1");
    assert_eq!(v["active"]["kind"], "baseline");
    assert!(v["active"]["calibration"]["temperature"].is_number());
    assert!(v["active"]["training_data_hash"].is_string());
    assert_eq!(v["active"]["oos_judging"], "per_case");
    assert!(v["fallback"].is_null());

    let (st, v) = s.get("/v1/taxonomy").await;
    assert_eq!(st, 200);
    assert_eq!(v["depth"], 3);
    assert_eq!(v["n_paths"], 3);
    let nodes = v["nodes"].as_array().unwrap();
    assert_eq!(nodes.len(), 2);
    let returns = &nodes[0];
    assert_eq!(returns["id"], "returns");
    assert_eq!(returns["name"], "Returns and refunds");
    assert_eq!(returns["level"], 1);
    let leaf = &returns["children"][0]["children"][0];
    assert_eq!(leaf["id"], "refund_missing");
    assert_eq!(leaf["level"], 3);
    assert_eq!(leaf["actions"][0]["id"], "refund");
    assert!(v["actions"]["refund"].is_object());

    let (st, v) = s.get("/openapi.json").await;
    assert_eq!(st, 200);
    assert!(v["openapi"].as_str().unwrap().starts_with("3."));
    for p in [
        "/v1/tag",
        "/v1/model",
        "/v1/taxonomy",
        "/healthz",
        "/readyz",
        "/metrics",
        "/openapi.json",
        "/v1/admin/reload",
    ] {
        assert!(v["paths"][p].is_object(), "openapi lacks {p}");
    }
    assert!(v["components"]["schemas"]["Error"].is_object());
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_requests_batches_and_statuses() {
    let s = server().await;
    assert_eq!(s.tag(&["item missing"]).await.0, 200);
    assert_eq!(s.post_raw("/v1/tag", b"{".to_vec()).await.0, 400);
    let (st, text) = s.get_text("/metrics").await;
    assert_eq!(st, 200);
    for needle in [
        "casetag_http_requests_total{endpoint=\"/v1/tag\",status=\"200\"} 1\n",
        "casetag_http_requests_total{endpoint=\"/v1/tag\",status=\"400\"} 1\n",
        "casetag_http_request_duration_seconds_bucket{endpoint=\"/v1/tag\",le=\"+Inf\"} 2\n",
        "casetag_batch_size_cases_count 1\n",
        "casetag_queue_depth_cases 0\n",
        "casetag_fallback_total{reason=\"deadline\"} 0\n",
        "casetag_reloads_total{result=\"ok\"} 0\n",
        "casetag_ready 1\n",
    ] {
        assert!(text.contains(needle), "metrics lack {needle:?}:\n{text}");
    }
    s.shutdown().await;
}

/// The drift gauges compare the primary's recent answers with its bundle's
/// validation answers: traffic of one kind only is flagged; no text is
/// kept; `--drift-window 0` turns them off.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drift_gauges_flag_a_one_sided_traffic_mix() {
    let s = server().await;
    let (_, text) = s.get_text("/metrics").await;
    assert!(text.contains("casetag_drift_window_cases 0\n"), "{text}");
    assert!(!text.contains("casetag_drift_detected"), "{text}");
    let late = "where is my order, the delivery is two weeks late";
    assert_eq!(s.tag(&[late; 60]).await.0, 200);
    let (_, text) = s.get_text("/metrics").await;
    for needle in [
        "casetag_drift_window_cases 60\n",
        "casetag_drift_detected 1\n",
        "casetag_drift_label_js_distance{level=\"l1\"} ",
        "casetag_drift_label_psi{level=\"l3\"} ",
        "casetag_drift_confidence_wasserstein{level=\"l1\"} ",
        "casetag_drift_rate{rate=\"abstention\",window=\"current\"} ",
        "casetag_drift_text_length_wasserstein ",
    ] {
        assert!(text.contains(needle), "metrics lack {needle:?}:\n{text}");
    }
    assert!(!text.contains("two weeks late"));
    let js: f64 = text
        .lines()
        .find_map(|l| l.strip_prefix("casetag_drift_label_js_distance{level=\"l1\"} "))
        .unwrap()
        .parse()
        .unwrap();
    assert!(js > 0.3 && js <= 1.0, "{js}");
    s.shutdown().await;

    let off = server_with(Limits {
        drift_window: 0,
        ..Limits::default()
    })
    .await;
    assert_eq!(off.tag(&[late; 60]).await.0, 200);
    let (_, text) = off.get_text("/metrics").await;
    assert!(text.contains("casetag_drift_window_cases 0\n"), "{text}");
    off.shutdown().await;
}

/// Under `--stream-novelty` the window's size is a gauge: empty at start,
/// one more per case judged, never past the window; a primary judging case
/// by case has none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_window_gauge_counts_the_cases_judged() {
    let gauge = |text: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix("casetag_stream_window_cases "))
            .map(|v| v.parse::<u64>().unwrap())
    };
    // Served from a directory of its own, so a reload can find another bundle there.
    let tmp = tempfile::tempdir().unwrap();
    let served = tmp.path().join("m");
    common::copy_dir(&common::stream_bundle(), &served);
    let mut cfg = config(&served);
    cfg.stream_window = Some(5);
    let s = TestServer::start(AppState::new(&cfg).unwrap()).await;
    assert_eq!(
        s.get("/v1/model").await.1["active"]["oos_judging"],
        "stream"
    );
    assert_eq!(gauge(&s.get_text("/metrics").await.1), Some(0));
    let (status, v) = s
        .tag(&["[buyer] give my money back", "[buyer] parcel lost", "hello"])
        .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(gauge(&s.get_text("/metrics").await.1), Some(3));
    let more = [
        "[buyer] late",
        "[buyer] smashed",
        "[buyer] rate",
        "[buyer] why",
    ];
    assert_eq!(s.tag(&more).await.0, 200);
    assert_eq!(gauge(&s.get_text("/metrics").await.1), Some(5));
    // A reload that brings the same bundle keeps the window; answers go on
    // as if nothing had happened.
    let before = s.state.tagger().unwrap();
    let window = before.primary.as_ref().unwrap().stream_state();
    s.state.reload().await.unwrap();
    let after = s.state.tagger().unwrap();
    assert!(!Arc::ptr_eq(&before, &after), "a new model was installed");
    assert_eq!(after.primary.as_ref().unwrap().stream_state(), window);
    assert_eq!(gauge(&s.get_text("/metrics").await.1), Some(5));
    // Another bundle's embeddings are not comparable: its window starts empty.
    let other = tmp.path().join("other");
    common::train_stream_bundle(&other, 14);
    std::fs::remove_dir_all(&served).unwrap();
    common::copy_dir(&other, &served);
    s.state.reload().await.unwrap();
    let now = s.state.tagger().unwrap();
    assert_ne!(now.active().id(), after.active().id());
    assert_eq!(gauge(&s.get_text("/metrics").await.1), Some(0));
    s.shutdown().await;

    cfg.stream_window = None;
    let per_case = TestServer::start(AppState::new(&cfg).unwrap()).await;
    assert_eq!(per_case.tag(&more).await.0, 200);
    assert_eq!(gauge(&per_case.get_text("/metrics").await.1), None);
    per_case.shutdown().await;
}

/// Every response, errors included, carries a request id (the caller's
/// when it sent a usable one) and the time spent in the server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn responses_carry_request_id_and_timing() {
    let s = server().await;
    let body = json!({"cases": [{"id": "a", "text": "item missing from the box"}]});
    let r = s
        .client
        .post(s.url("/v1/tag"))
        .header("x-request-id", "trace-42")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-request-id"], "trace-42");
    let timing = r.headers()["server-timing"].to_str().unwrap().to_string();
    let ms: f64 = timing.strip_prefix("total;dur=").unwrap().parse().unwrap();
    assert!(ms >= 0.0, "{timing}");
    let mut ids = Vec::new();
    for path in ["/healthz", "/nope"] {
        let r = s.client.get(s.url(path)).send().await.unwrap();
        assert!(r.headers().contains_key("server-timing"), "{path}");
        ids.push(r.headers()["x-request-id"].to_str().unwrap().to_string());
    }
    assert_ne!(ids[0], ids[1]);
    let r = s
        .client
        .post(s.url("/v1/tag"))
        .header("x-request-id", "bad id with spaces")
        .body("{")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let id = r.headers()["x-request-id"].to_str().unwrap();
    assert!(!id.contains(' ') && !id.is_empty(), "{id}");
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_json_is_400() {
    let s = server().await;
    let (st, v) = s.post_raw("/v1/tag", b"{\"cases\": [".to_vec()).await;
    assert_eq!(st, 400);
    assert_eq!(err_type(&v), "malformed_json");
    assert!(v["error"]["message"].as_str().unwrap().contains("JSON"));
    let (st, _) = s.post_raw("/v1/tag", b"not json at all".to_vec()).await;
    assert_eq!(st, 400);
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_body_is_413() {
    let s = server_with(Limits {
        max_body_bytes: 1024,
        deadline_ms: 0,
        ..Limits::default()
    })
    .await;
    let big = "x".repeat(4096);
    let (st, v) = s.tag(&[&big]).await;
    assert_eq!(st, 413, "{v}");
    assert_eq!(err_type(&v), "payload_too_large");
    // The server is still fine afterwards.
    assert_eq!(s.tag(&["item missing"]).await.0, 200);
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_fields_are_422_naming_the_field() {
    let s = server_with(Limits {
        max_cases: 4,
        queue_capacity: 8,
        deadline_ms: 0,
        ..Limits::default()
    })
    .await;
    let five: Vec<Value> = (0..5).map(|_| json!({"text": "x"})).collect();
    let cases: Vec<(Value, &str)> = vec![
        (json!({}), "cases"),
        (json!({"cases": []}), "cases"),
        (json!({"cases": "text"}), "cases"),
        (json!({ "cases": five }), "cases"),
        (json!({"cases": [{"text": 42}]}), "cases[0].text"),
        (json!({"cases": [{"id": "a"}]}), "cases[0].text"),
        (
            json!({"cases": [{"text": "ok"}, {"text": "   "}]}),
            "cases[1].text",
        ),
        (json!({"cases": [{"id": 7, "text": "ok"}]}), "cases[0].id"),
        (json!({"cases": ["just a string"]}), "cases[0]"),
        (json!({"cases": [{"text": "ok"}], "top_k": 51}), "top_k"),
        (json!({"cases": [{"text": "ok"}], "top_k": -1}), "top_k"),
        (json!({"cases": [{"text": "ok"}], "top_k": "3"}), "top_k"),
        (json!([1, 2]), "body"),
    ];
    for (body, field) in cases {
        let (st, v) = s.post_json("/v1/tag", &body).await;
        assert_eq!(st, 422, "{body} -> {v}");
        assert_eq!(err_type(&v), "invalid_field", "{body}");
        let msg = v["error"]["message"].as_str().unwrap();
        assert!(msg.starts_with(&format!("{field}:")), "{body} -> {msg}");
    }
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_texts_are_truncated_and_marked() {
    let s = server_with(Limits {
        deadline_ms: 0,
        ..Limits::default()
    })
    .await;
    // Longer than the bundle's recorded cap (the default text pipeline).
    let cap = casetag_core::text::DEFAULT_MAX_CHARS;
    let long = format!("item missing from the box {}", "blah ".repeat(cap / 5 + 10));
    let (st, v) = s.tag(&[&long, "item missing"]).await;
    assert_eq!(st, 200);
    assert_eq!(v["results"][0]["truncated"], true);
    assert_eq!(v["results"][1]["truncated"], false);
    let (_, m) = s.get_text("/metrics").await;
    assert!(m.contains("casetag_texts_truncated_total 1\n"));
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_routes_and_methods_answer_json() {
    let s = server().await;
    let (st, v) = s.get("/v1/nope").await;
    assert_eq!(st, 404);
    assert_eq!(err_type(&v), "not_found");
    let (st, v) = s.get("/v1/tag").await;
    assert_eq!(st, 405);
    assert_eq!(err_type(&v), "method_not_allowed");
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_model_it_is_alive_but_not_ready() {
    let s = TestServer::start(AppState::unloaded(&config(&fixture().v1)).unwrap()).await;
    assert_eq!(s.get("/healthz").await.0, 200);
    let (st, v) = s.get("/readyz").await;
    assert_eq!(st, 503);
    assert_eq!(err_type(&v), "not_ready");
    let (st, v) = s.tag(&["item missing"]).await;
    assert_eq!(st, 503);
    assert_eq!(err_type(&v), "not_ready");
    assert_eq!(s.get("/v1/model").await.0, 503);
    assert_eq!(s.get("/v1/taxonomy").await.0, 503);
    // Installing a model makes it ready.
    s.state
        .install(casetag_engine::Tagger::load(&fixture().v1, None).unwrap());
    assert_eq!(s.get("/readyz").await.0, 200);
    assert_eq!(s.tag(&["item missing"]).await.0, 200);
    s.shutdown().await;
}

#[test]
fn bad_address_and_bad_bundle_are_input_errors() {
    let mut cfg = config(&fixture().v1);
    cfg.addr = "not-an-address".into();
    let e = casetag_server::serve_blocking(cfg).unwrap_err();
    assert!(e.is_input(), "{e}");
    assert!(e.to_string().contains("not-an-address"), "{e}");

    let dir = tempfile::tempdir().unwrap();
    let Err(e) = AppState::new(&config(dir.path())) else {
        panic!("an empty directory is not a bundle")
    };
    assert!(e.is_input(), "{e}");

    let bad = Limits {
        max_cases: 100,
        queue_capacity: 10,
        ..Limits::default()
    };
    let mut cfg = config(&fixture().v1);
    cfg.limits = bad;
    let Err(e) = AppState::new(&cfg) else {
        panic!("a queue smaller than a request is refused")
    };
    assert!(
        e.is_input() && e.to_string().contains("--queue-capacity"),
        "{e}"
    );
}

/// Check `v` against an OpenAPI 3.0 schema (the subset `openapi.json` uses:
/// `$ref`, `allOf`, `type`, `nullable`, `enum`, `properties`, `required`,
/// `items`, `additionalProperties`). An object schema with `properties`
/// and no `additionalProperties` is closed: a field the document does not
/// declare is an error, so the document cannot fall behind the types.
fn conforms(spec: &Value, schema: &Value, v: &Value, at: &str, errs: &mut Vec<String>) {
    if let Some(r) = schema["$ref"].as_str() {
        let name = r.trim_start_matches("#/components/schemas/");
        let target = &spec["components"]["schemas"][name];
        assert!(target.is_object(), "dangling $ref {r}");
        return conforms(spec, target, v, at, errs);
    }
    if v.is_null() && schema["nullable"] == true {
        return;
    }
    if let Some(all) = schema["allOf"].as_array() {
        for s in all {
            conforms(spec, s, v, at, errs);
        }
    }
    if let Some(e) = schema["enum"].as_array() {
        if !e.contains(v) {
            errs.push(format!("{at}: {v} not in {e:?}"));
        }
    }
    let ok = match schema["type"].as_str() {
        None => true,
        Some("string") => v.is_string(),
        Some("integer") => v.is_i64() || v.is_u64(),
        Some("number") => v.is_number(),
        Some("boolean") => v.is_boolean(),
        Some("array") => v.is_array(),
        Some("object") => v.is_object(),
        Some(t) => panic!("{at}: type {t} not handled"),
    };
    if !ok {
        errs.push(format!("{at}: {v} is not {}", schema["type"]));
        return;
    }
    if let (Some(items), Some(a)) = (schema.get("items"), v.as_array()) {
        for (i, x) in a.iter().enumerate() {
            conforms(spec, items, x, &format!("{at}[{i}]"), errs);
        }
    }
    if let Some(o) = v.as_object() {
        for r in schema["required"].as_array().into_iter().flatten() {
            if !o.contains_key(r.as_str().unwrap()) {
                errs.push(format!("{at}: required '{r}' missing"));
            }
        }
        if let Some(props) = schema["properties"].as_object() {
            let open = schema.get("additionalProperties");
            for (k, x) in o {
                match props.get(k) {
                    Some(p) => conforms(spec, p, x, &format!("{at}.{k}"), errs),
                    None if open.is_some_and(|a| a != false) => {
                        if let Some(s) = open.filter(|a| a.is_object()) {
                            conforms(spec, s, x, &format!("{at}.{k}"), errs);
                        }
                    }
                    None => errs.push(format!("{at}: '{k}' is not in the document")),
                }
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openapi_describes_every_answer_as_served() {
    let s = server().await;
    let (_, spec) = s.get("/openapi.json").await;
    let schema = |path: &str, method: &str, status: &str| -> Value {
        let r = &spec["paths"][path][method]["responses"][status];
        assert!(
            r.is_object(),
            "openapi.json: no {status} for {method} {path}"
        );
        r["content"]["application/json"]["schema"].clone()
    };
    let mut errs = Vec::new();
    let mut check = |what: &str, sch: Value, v: &Value| conforms(&spec, &sch, v, what, &mut errs);
    for top_k in [0, 3] {
        let (st, v) = s
            .post_json(
                "/v1/tag",
                &json!({"cases": [
                    {"id": "a", "text": "the screen arrived cracked and broken, I want a refund"},
                    {"text": "where is my order, the delivery is two weeks late"}
                ], "top_k": top_k}),
            )
            .await;
        assert_eq!(st, 200, "{v}");
        check("POST /v1/tag 200", schema("/v1/tag", "post", "200"), &v);
    }
    // The request schema accepts what the server accepts.
    check(
        "TagRequest",
        json!({"$ref": "#/components/schemas/TagRequest"}),
        &json!({"cases": [{"id": "a", "text": "x"}], "top_k": 3}),
    );
    let (st, v) = s.post_json("/v1/tag", &json!({"cases": []})).await;
    assert_eq!(st, 422);
    check("POST /v1/tag 422", schema("/v1/tag", "post", "422"), &v);
    let (st, v) = s.post_raw("/v1/tag", b"{not json".to_vec()).await;
    assert_eq!(st, 400);
    check("POST /v1/tag 400", schema("/v1/tag", "post", "400"), &v);
    for path in ["/v1/model", "/v1/taxonomy", "/healthz", "/readyz"] {
        let (st, v) = s.get(path).await;
        assert_eq!(st, 200, "{path}: {v}");
        check(&format!("GET {path} 200"), schema(path, "get", "200"), &v);
    }
    assert!(
        errs.is_empty(),
        "openapi.json and the answers disagree:\n{}",
        errs.join("\n")
    );
    s.shutdown().await;
}

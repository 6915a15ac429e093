//! Fuzz properties of `POST /v1/tag` body parsing, against a real server on
//! 127.0.0.1:0 (see `docs/fuzzing.md`; corpus in `fuzz/corpus/tag_request`).
//!
//! For any body: the server answers (never a dropped connection or a 5xx),
//! with the status the contract gives that body: 413 over
//! `--max-body-bytes`, 400 when it is not JSON, 422 when a field is missing
//! or invalid, 200 otherwise. Errors are the JSON error shape with a
//! one-line message free of control characters; a 200 has one result per
//! case, in order, with the case's id echoed and `truncated` set exactly
//! when the bundle's text pipeline cut the text.

mod common;
#[path = "../../../fuzz/support.rs"]
mod support;

use casetag_core::text::TextPipeline;
use casetag_server::{AppState, Limits, MAX_TOP_K};
use common::{config, fixture, TestServer};
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;
use serde_json::{json, Map, Value};
use support::{clean_message, ensure, Input};

/// Default number of cases per target (CI); see `docs/fuzzing.md`.
const CASES: u32 = 400;

const MAX_BODY_BYTES: usize = 4096;
const MAX_CASES: usize = 6;

fn limits() -> Limits {
    Limits {
        max_body_bytes: MAX_BODY_BYTES,
        max_cases: MAX_CASES,
        max_wait_ms: 1,
        queue_capacity: 64,
        // No deadline: timing must not decide the status.
        deadline_ms: 0,
        ..Limits::default()
    }
}

const JSON_TOKENS: &[&[u8]] = &[
    b"{",
    b"}",
    b"[",
    b"]",
    b",",
    b":",
    b"null",
    b"true",
    b"0",
    b"-1",
    b"3.0",
    b"51",
    b"18446744073709551616",
    b"\"\"",
    b"\"   \"",
    b"\"\\u0000\"",
    b"\"\\ud800\"",
    b"\"\\u001b[2J\"",
    b"\"\\n\"",
    b"\"cases\"",
    b"\"text\"",
    b"\"id\"",
    b"\"top_k\"",
    b"{\"text\": \"refund\"}",
    b"{\"id\": \"c\", \"text\": \"where is my parcel\"}",
    b"[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[",
];

/// What the contract says about a body: its status, and for a 200 the
/// cases (id, text) and `top_k` the results must match.
enum Expect {
    Status(u16),
    /// 200 or 422: both are defensible (a float top_k with an integral value).
    Either,
    Ok {
        cases: Vec<(Option<String>, String)>,
        top_k: usize,
    },
}

fn expect(body: &[u8]) -> Expect {
    if body.len() > MAX_BODY_BYTES {
        return Expect::Status(413);
    }
    let Ok(v) = serde_json::from_slice::<Value>(body) else {
        return Expect::Status(400);
    };
    let invalid = Expect::Status(422);
    let Some(obj) = v.as_object() else {
        return invalid;
    };
    let Some(Value::Array(cases)) = obj.get("cases") else {
        return invalid;
    };
    if cases.is_empty() || cases.len() > MAX_CASES {
        return invalid;
    }
    let mut either = false;
    let top_k = match obj.get("top_k") {
        None | Some(Value::Null) => 3,
        Some(Value::Number(n)) => match (n.as_u64(), n.as_f64()) {
            (Some(k), _) if k as usize <= MAX_TOP_K => k as usize,
            (None, Some(f)) if f.fract() == 0.0 && (0.0..=MAX_TOP_K as f64).contains(&f) => {
                either = true;
                f as usize
            }
            _ => return invalid,
        },
        Some(_) => return invalid,
    };
    let mut out = Vec::new();
    for c in cases {
        let Some(c) = c.as_object() else {
            return invalid;
        };
        let id = match c.get("id") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => Some(s.clone()),
            Some(_) => return invalid,
        };
        let text = match c.get("text") {
            Some(Value::String(s)) if !s.trim().is_empty() => s.clone(),
            _ => return invalid,
        };
        out.push((id, text));
    }
    if either {
        Expect::Either
    } else {
        Expect::Ok { cases: out, top_k }
    }
}

fn error_type(status: u16) -> &'static str {
    match status {
        400 => "malformed_json",
        413 => "payload_too_large",
        422 => "invalid_field",
        _ => "?",
    }
}

fn check_error(status: u16, v: &Value) -> Result<(), TestCaseError> {
    ensure(v["error"]["type"] == error_type(status), || {
        format!("status {status} with error {v}")
    })?;
    let msg = v["error"]["message"]
        .as_str()
        .ok_or_else(|| TestCaseError::fail(format!("no error message: {v}")))?;
    clean_message(msg)
}

fn check_results(
    v: &Value,
    cases: &[(Option<String>, String)],
    top_k: usize,
) -> Result<(), TestCaseError> {
    let results = v["results"]
        .as_array()
        .ok_or_else(|| TestCaseError::fail(format!("no results: {v}")))?;
    ensure(results.len() == cases.len(), || {
        format!("{} results for {} cases", results.len(), cases.len())
    })?;
    ensure(v["model"]["id"].is_string(), || format!("no model id: {v}"))?;
    for (r, (id, text)) in results.iter().zip(cases) {
        let want_id = id.clone().map_or(Value::Null, Value::String);
        ensure(r["id"] == want_id, || {
            format!("result id {} for {want_id}", r["id"])
        })?;
        // The fixture bundle records the default pipeline.
        let cut = TextPipeline::default().prepare(text).truncated;
        ensure(r["truncated"] == cut, || {
            format!(
                "truncated {} for a text of {} chars",
                r["truncated"],
                text.chars().count()
            )
        })?;
        let depth = r["depth"].as_u64().unwrap_or(99);
        ensure(depth <= 3, || format!("depth {}", r["depth"]))?;
        let l1 = r["confidence"]["l1"].as_f64().unwrap_or(-1.0);
        ensure((0.0..=1.0).contains(&l1), || {
            format!("confidence {}", r["confidence"])
        })?;
        let alts = r["alternatives"].as_array().map_or(usize::MAX, Vec::len);
        ensure(alts <= top_k, || {
            format!("{alts} alternatives for top_k {top_k}")
        })?;
        ensure(r["served_by"].is_string(), || {
            format!("served_by {}", r["served_by"])
        })?;
    }
    Ok(())
}

struct Harness {
    rt: tokio::runtime::Runtime,
    server: TestServer,
}

impl Harness {
    fn start() -> Harness {
        let mut cfg = config(&fixture().v1);
        cfg.limits = limits();
        let state = AppState::new(&cfg).expect("fixture model loads");
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let server = rt.block_on(TestServer::start(state));
        Harness { rt, server }
    }

    /// POST the body; the status, the content type and the body text.
    fn post(&self, body: Vec<u8>) -> Result<(u16, String, String), TestCaseError> {
        self.rt.block_on(async {
            let r = self
                .server
                .client
                .post(self.server.url("/v1/tag"))
                .header("content-type", "application/json")
                .body(body)
                .send()
                .await
                .map_err(|e| TestCaseError::fail(format!("no answer: {e}")))?;
            let status = r.status().as_u16();
            let ctype = r
                .headers()
                .get("content-type")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_string();
            let text = r
                .text()
                .await
                .map_err(|e| TestCaseError::fail(format!("body cut off: {e}")))?;
            Ok::<_, TestCaseError>((status, ctype, text))
        })
    }

    fn case(&self, body: &[u8]) -> Result<(), TestCaseError> {
        let (status, ctype, text) = self.post(body.to_vec())?;
        ensure(ctype.starts_with("application/json"), || {
            format!("status {status} with content type {ctype:?}: {text}")
        })?;
        let v: Value = serde_json::from_str(&text).map_err(|e| {
            TestCaseError::fail(format!("status {status}, body not JSON ({e}): {text}"))
        })?;
        match expect(body) {
            Expect::Status(want) => {
                ensure(status == want, || {
                    format!("status {status}, expected {want}: {text}")
                })?;
                check_error(status, &v)
            }
            Expect::Either => match status {
                422 => check_error(status, &v),
                200 => Ok(()),
                _ => Err(TestCaseError::fail(format!("status {status}: {text}"))),
            },
            Expect::Ok { cases, top_k } => {
                ensure(status == 200, || {
                    format!("status {status}, expected 200: {text}")
                })?;
                check_results(&v, &cases, top_k)
            }
        }
    }
}

#[test]
fn fuzz_tag_request_bytes() {
    let h = Harness::start();
    support::fuzz_bytes(
        "tag_request",
        JSON_TOKENS,
        CASES,
        2 * MAX_BODY_BYTES,
        |i: &Input| h.case(&i.bytes),
    );
}

// ------------------------------------------------ generated request values

fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => "[a-z ]{1,30}",
        1 => "[ \t\n\u{3000}]{0,4}",
        1 => "[退货款物流 📦a-z]{30,60}",
        1 => proptest::collection::vec(any::<char>(), 0..50).prop_map(|c| c.into_iter().collect()),
    ]
}

fn scalar() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        text().prop_map(Value::String),
        Just(json!([])),
        Just(json!({})),
    ]
}

/// A field that is usually right and sometimes any other JSON value.
fn field<S: Strategy<Value = Value>>(good: S) -> impl Strategy<Value = Option<Value>> {
    prop_oneof![
        6 => good.prop_map(Some),
        1 => Just(None),
        1 => scalar().prop_map(Some),
    ]
}

fn case_value() -> impl Strategy<Value = Value> {
    let obj = (
        field(text().prop_map(Value::String)),
        field(text().prop_map(Value::String)),
        proptest::option::weighted(0.1, ("[a-z_]{1,8}", scalar())),
    )
        .prop_map(|(id, text, extra)| {
            let mut m = Map::new();
            if let Some(id) = id {
                m.insert("id".into(), id);
            }
            if let Some(t) = text {
                m.insert("text".into(), t);
            }
            if let Some((k, v)) = extra {
                m.insert(k, v);
            }
            Value::Object(m)
        });
    prop_oneof![9 => obj, 1 => scalar()]
}

fn request_value() -> impl Strategy<Value = Value> {
    let top_k = prop_oneof![
        4 => (0u64..=60).prop_map(Value::from),
        1 => Just(json!(3.0)),
        1 => Just(json!(-1)),
        1 => Just(json!(u64::MAX)),
    ];
    let cases = prop_oneof![
        9 => proptest::collection::vec(case_value(), 0..9).prop_map(Value::Array),
        1 => scalar(),
    ];
    let obj = (field(cases), field(top_k)).prop_map(|(cases, top_k)| {
        let mut m = Map::new();
        if let Some(c) = cases {
            m.insert("cases".into(), c);
        }
        if let Some(k) = top_k {
            m.insert("top_k".into(), k);
        }
        Value::Object(m)
    });
    prop_oneof![19 => obj, 1 => scalar()]
}

#[test]
fn fuzz_tag_request_values() {
    let h = Harness::start();
    let strategy = (request_value(), any::<bool>());
    support::check("tag_request_values", CASES, strategy, |(v, pretty)| {
        let body = if pretty {
            serde_json::to_vec_pretty(&v).unwrap()
        } else {
            serde_json::to_vec(&v).unwrap()
        };
        h.case(&body)
    });
}

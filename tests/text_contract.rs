//! The one text contract: the same raw cases sent through `casetag tag`,
//! `casetag serve` and the engine API get identical tags and confidences,
//! because every path hands raw text to the engine, which prepares it with
//! the bundle's recorded pipeline (normalise, mask PII, cap).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use casetag_core::text::{TextPipeline, DEFAULT_MAX_CHARS};
use casetag_core::Transcript;
use serde_json::{json, Value};

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_casetag"))
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Raw cases that exercise every step of the pipeline: PII of each kind,
/// full-width characters, stray whitespace and control characters, and a
/// transcript past the length cap.
fn cases() -> Vec<(String, String)> {
    let long = format!(
        "[buyer] the parcel never arrived, order no. AB-12345678\n{}[buyer] still nothing, I want a refund",
        "[agent] we are checking with the carrier\n".repeat(DEFAULT_MAX_CHARS / 40 + 10)
    );
    [
        "my card 4111 1111 1111 1111 was charged twice for order #MP2026-48213977",
        "ＩＴＥＭ  ＤＡＭＡＧＥＤ\t\tin transit,\r\n\r\nplease call me at +44 20 7946 0958",
        "refund not received\u{0007} yet, mail me at jane.doe@shop.example.com",
        "[buyer] the seller refused my return\n\n\n[agent] opening a dispute for order 123456789",
        "wrong size delivered, want an exchange",
        long.as_str(),
    ]
    .iter()
    .enumerate()
    .map(|(i, t)| (format!("c{i}"), t.to_string()))
    .collect()
}

/// A tag and its per-level confidences, as every path reports them.
#[derive(Debug, PartialEq)]
struct Answer {
    tag: [Option<String>; 3],
    depth: u64,
    conf: [Option<f32>; 3],
}

fn train_baseline(out: &Path) {
    let r = root();
    let p = |s: &str| r.join(s).to_str().unwrap().to_string();
    let o = bin()
        .args([
            "train",
            "--kind",
            "baseline",
            "--train",
            &p("data/aftersales/train.csv"),
            "--val",
            &p("data/aftersales/val.csv"),
            "--taxonomy",
            &p("data/taxonomy.yaml"),
            "--features",
            "4096",
            "--out",
            out.to_str().unwrap(),
            "--force",
        ])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

fn via_tag(model: &Path, dir: &Path, cases: &[(String, String)]) -> Vec<Answer> {
    let input = dir.join("cases.jsonl");
    let output = dir.join("tagged.jsonl");
    let lines: Vec<String> = cases
        .iter()
        .map(|(id, text)| json!({"id": id, "text": text}).to_string())
        .collect();
    std::fs::write(&input, lines.join("\n") + "\n").unwrap();
    let o = bin()
        .args(["tag", "--model", model.to_str().unwrap()])
        .args(["--input", input.to_str().unwrap()])
        .args(["--output", output.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let text = std::fs::read_to_string(&output).unwrap();
    let rows: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rows.len(), cases.len());
    rows.iter()
        .zip(cases)
        .map(|(r, (id, _))| {
            assert_eq!(r["id"], id.as_str());
            assert!(r["error"].is_null(), "{r}");
            Answer {
                tag: ["l1", "l2", "l3"].map(|k| r[k].as_str().map(String::from)),
                depth: r["depth"].as_u64().unwrap(),
                conf: ["conf_l1", "conf_l2", "conf_l3"].map(|k| r[k].as_f64().map(|c| c as f32)),
            }
        })
        .collect()
}

/// A `casetag serve` child on an OS-chosen loopback port, killed on drop.
struct Server {
    child: Child,
    addr: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn serve(model: &Path) -> Server {
    let mut child = bin()
        .args(["serve", "--model", model.to_str().unwrap()])
        .args(["--addr", "127.0.0.1:0", "--deadline-ms", "0"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut err = BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    let addr = loop {
        line.clear();
        assert!(err.read_line(&mut line).unwrap() > 0, "serve exited");
        if let Some(rest) = line.split("listening on http://").nth(1) {
            break rest.split_whitespace().next().unwrap().to_string();
        }
    };
    // Keep draining stderr so the server never blocks on a full pipe.
    std::thread::spawn(move || std::io::copy(&mut err, &mut std::io::sink()));
    Server { child, addr }
}

/// One HTTP/1.1 exchange on a fresh connection: the status line's code and
/// the body.
fn http(addr: &str, method: &str, path: &str, body: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    let (head, body) = resp.split_once("\r\n\r\n").unwrap();
    let code = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    (code, body.to_string())
}

/// `POST /v1/tag`, once `/readyz` says the model is loaded (the server
/// listens while it loads).
fn post(addr: &str, body: &Value) -> Value {
    let ready = (0..1200).any(|_| {
        let up = http(addr, "GET", "/readyz", "").0 == 200;
        if !up {
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        up
    });
    assert!(ready, "the server never became ready");
    let (code, body) = http(addr, "POST", "/v1/tag", &body.to_string());
    assert_eq!(code, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

fn via_serve(model: &Path, cases: &[(String, String)]) -> (Vec<Answer>, Vec<bool>) {
    let server = serve(model);
    let req = json!({
        "cases": cases.iter().map(|(id, t)| json!({"id": id, "text": t})).collect::<Vec<_>>(),
        "top_k": 0,
    });
    let v = post(&server.addr, &req);
    let results = v["results"].as_array().unwrap();
    assert_eq!(results.len(), cases.len());
    let answers = results
        .iter()
        .map(|r| Answer {
            tag: ["l1", "l2", "l3"].map(|k| r["tag"][k].as_str().map(String::from)),
            depth: r["depth"].as_u64().unwrap(),
            conf: ["l1", "l2", "l3"].map(|k| r["confidence"][k].as_f64().map(|c| c as f32)),
        })
        .collect();
    let truncated = results
        .iter()
        .map(|r| r["truncated"].as_bool().unwrap())
        .collect();
    (answers, truncated)
}

fn via_engine(model: &Path, cases: &[(String, String)]) -> Vec<Answer> {
    let tagger = casetag_engine::Tagger::load(model, None).unwrap();
    let input: Vec<Transcript> = cases.iter().map(|(_, t)| Transcript::new(t)).collect();
    tagger
        .tag(&input, 0)
        .unwrap()
        .into_iter()
        .map(|t| {
            let d = t.decision;
            let tag = d.tag.as_ref();
            Answer {
                tag: [
                    tag.map(|p| p.l1.clone()),
                    tag.and_then(|p| p.l2.clone()),
                    tag.and_then(|p| p.l3.clone()),
                ],
                depth: d.depth as u64,
                conf: [0, 1, 2].map(|k| d.confidence.get(k).copied()),
            }
        })
        .collect()
}

#[test]
fn tag_serve_and_engine_agree_on_raw_text() {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("text-contract");
    std::fs::create_dir_all(&dir).unwrap();
    let model = dir.join("baseline");
    train_baseline(&model);
    let manifest: Value =
        serde_json::from_str(&std::fs::read_to_string(model.join("manifest.json")).unwrap())
            .unwrap();
    // The pipeline is recorded in the bundle.
    let recorded: TextPipeline = serde_json::from_value(manifest["text"].clone()).unwrap();
    assert_eq!(recorded, TextPipeline::default());

    let cases = cases();
    let engine = via_engine(&model, &cases);
    let tagged = via_tag(&model, &dir, &cases);
    let (served, truncated) = via_serve(&model, &cases);
    for (i, (id, _)) in cases.iter().enumerate() {
        assert_eq!(tagged[i], engine[i], "tag vs engine, case {id}");
        assert_eq!(served[i], engine[i], "serve vs engine, case {id}");
    }
    assert_eq!(truncated, [false, false, false, false, false, true]);

    // The contract matters: the model scores the raw texts differently from
    // the prepared ones, so a path that skipped preparation (as `serve`
    // once did) would not agree.
    let m = casetag_engine::load_model(&model).unwrap();
    let raw: Vec<Transcript> = cases.iter().map(|(_, t)| Transcript::new(t)).collect();
    let (prepared, _) = m.prepare(&raw);
    let differs = raw
        .iter()
        .zip(&prepared)
        .filter(|(r, p)| r.text != p.text)
        .count();
    assert!(differs >= 4, "only {differs} texts changed when prepared");
    let unprepared = m.classifier.predict(&raw).unwrap();
    let ready = m.classifier.predict(&prepared).unwrap();
    assert_ne!(unprepared[0].logits, ready[0].logits);
}

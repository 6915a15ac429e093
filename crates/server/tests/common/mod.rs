//! Shared fixtures: tiny baseline bundles trained once per test binary, a
//! classifier wrapper that can block (gate) or panic on demand, and a real
//! server on `127.0.0.1:0` driven by a real HTTP client.
#![allow(dead_code)] // each test binary uses a different subset

use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, OnceLock};

use casetag_core::{
    Classifier, ClassifierError, LabelSpace, LevelScores, TagPath, Taxonomy, Transcript,
};
use casetag_engine::calibrate::OosDetector;
use casetag_engine::{load_model, Example, LoadedModel, Tagger, TrainConfig};
use casetag_server::{AppState, Limits, ServerConfig};
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::sync::oneshot;

const TAXONOMY: &str = r#"
name: test
actions:
  refund: {description: "Issue a refund", mode: auto, min_confidence: 0.5}
  route_logistics: {description: "Hand to the logistics desk", mode: suggest}
nodes:
  - id: returns
    name: Returns and refunds
    children:
      - id: refund
        name: Refund
        children:
          - {id: refund_missing, name: Item missing, actions: [refund]}
          - {id: refund_damaged, name: Item damaged, actions: [refund]}
  - id: logistics
    name: Logistics
    children:
      - {id: delayed, name: Delivery delayed, actions: [route_logistics]}
"#;

/// Bundles trained once for the whole test binary.
pub struct Fixture {
    _dir: tempfile::TempDir,
    /// Primary candidates (ids `tagger-v1`, `tagger-v2`).
    pub v1: PathBuf,
    pub v2: PathBuf,
    /// The fallback (id `fallback`).
    pub fallback: PathBuf,
}

fn examples() -> Vec<Example> {
    let classes: [(&str, &[&str], TagPath); 3] = [
        (
            "missing",
            &[
                "my parcel arrived but the item was missing from the box",
                "the package came without the charger, one item is missing",
                "box was empty, nothing inside, please refund the missing item",
                "only two of the three items arrived, one is missing",
            ],
            TagPath::new("returns", Some("refund"), Some("refund_missing")),
        ),
        (
            "damaged",
            &[
                "the screen arrived cracked and broken, I want a refund",
                "item arrived damaged, the glass is shattered",
                "the mug was broken in transit, refund the damaged item please",
                "product came scratched and dented, it is damaged",
            ],
            TagPath::new("returns", Some("refund"), Some("refund_damaged")),
        ),
        (
            "delayed",
            &[
                "where is my order, the delivery is two weeks late",
                "tracking has not updated for days, shipment delayed",
                "courier keeps postponing delivery, my order is late",
                "the parcel is stuck in transit and the delivery date passed",
            ],
            TagPath::new("logistics", Some("delayed"), None),
        ),
    ];
    let suffixes = [
        "",
        " thanks",
        " order 1234",
        " buyer: hello",
        " please help",
    ];
    let mut rows = Vec::new();
    for (_, texts, label) in &classes {
        for t in texts.iter() {
            for s in suffixes {
                let row = rows.len() + 1;
                rows.push(Example {
                    text: format!("{t}{s}"),
                    label: Some(label.clone()),
                    row,
                });
            }
        }
    }
    rows
}

fn train(out: &Path, id: &str) {
    let mut cfg = TrainConfig {
        kind: "baseline".into(),
        id: Some(id.to_string()),
        taxonomy: Some(Taxonomy::from_yaml_str(TAXONOMY).unwrap()),
        val_fraction: 0.2,
        ..Default::default()
    };
    // Small and quick: a few hundred hashed features are plenty here.
    cfg.baseline.n_features = 512;
    cfg.baseline.max_iterations = 50;
    casetag_engine::train(&cfg, examples(), None, out, &|_| {}).expect("train test bundle");
}

pub fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let v1 = dir.path().join("v1");
        let v2 = dir.path().join("v2");
        let fallback = dir.path().join("fallback");
        train(&v1, "tagger-v1");
        train(&v2, "tagger-v2");
        train(&fallback, "fallback");
        Fixture {
            _dir: dir,
            v1,
            v2,
            fallback,
        }
    })
}

/// A transformer bundle (a tiny random BERT built in code) whose learned
/// out-of-scope detector has the batch rule `--stream-novelty` needs;
/// trained once per test binary.
pub fn stream_bundle() -> PathBuf {
    static B: OnceLock<tempfile::TempDir> = OnceLock::new();
    let dir = B.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        train_stream_bundle(&dir.path().join("model"), 15);
        dir
    });
    dir.path().join("model")
}

/// Train a bundle like [`stream_bundle`]'s into `out` (its encoder beside
/// it), its head for `epochs` epochs: another number gives another bundle.
pub fn train_stream_bundle(out: &Path, epochs: usize) {
    let enc = out.with_extension("encoder");
    casetag_transformer::fixtures::write_tiny_bert(&enc, 5).unwrap();
    let intents = [
        ("refund", "give my money back"),
        ("broken", "it came smashed to pieces"),
        ("late", "the courier is days late"),
        ("lost", "my parcel went missing in transit"),
        ("review", "how do i rate the seller"),
    ];
    let mut rows = Vec::new();
    for (label, text) in intents {
        for i in 0..16 {
            rows.push(Example {
                text: format!("[buyer] {text} ticket {i}"),
                label: Some(TagPath::new(label, None, None)),
                row: rows.len() + 2,
            });
        }
    }
    let nodes: Vec<String> = intents
        .iter()
        .map(|(c, _)| format!("{{id: {c}}}"))
        .collect();
    let mut cfg = TrainConfig {
        kind: "transformer".into(),
        taxonomy: Some(Taxonomy::from_yaml_str(&format!("nodes: [{}]", nodes.join(", "))).unwrap()),
        encoder: Some(enc.display().to_string()),
        val_fraction: 0.25,
        ..Default::default()
    };
    cfg.transformer.epochs = epochs;
    cfg.baseline.n_features = 256;
    cfg.decision.oos_detector = OosDetector::Meta;
    casetag_engine::train(&cfg, rows, None, out, &|_| {}).expect("train the stream bundle");
}

pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        if e.path().is_file() {
            std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
        }
    }
}

/// A registry root holding `tagger/v1` and `tagger/v2` with `champion` = v1.
pub fn registry() -> tempfile::TempDir {
    let fx = fixture();
    let root = tempfile::tempdir().unwrap();
    copy_dir(&fx.v1, &root.path().join("tagger").join("v1"));
    copy_dir(&fx.v2, &root.path().join("tagger").join("v2"));
    set_champion(root.path(), "v1");
    root
}

pub fn set_champion(root: &Path, version: &str) {
    std::fs::write(root.join("tagger").join("champion"), format!("{version}\n")).unwrap();
}

/// Config serving `model` with limits suited to tests: no deadline unless a
/// test asks for one (timing must not decide pass/fail).
pub fn config(model: &Path) -> ServerConfig {
    let mut cfg = ServerConfig::for_model(model);
    cfg.limits = Limits {
        deadline_ms: 0,
        ..Limits::default()
    };
    cfg
}

/// Blocks `predict` until opened; reports each entry.
#[derive(Default)]
pub struct Gate {
    open: Mutex<bool>,
    cv: Condvar,
    entered: Mutex<Option<tokio::sync::mpsc::UnboundedSender<()>>>,
}

impl Gate {
    /// A closed gate and a receiver that gets one message per `predict` call.
    pub fn new() -> (Arc<Gate>, tokio::sync::mpsc::UnboundedReceiver<()>) {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let g = Gate::default();
        *g.entered.lock().unwrap() = Some(tx);
        (Arc::new(g), rx)
    }

    pub fn open(&self) {
        *self.open.lock().unwrap() = true;
        self.cv.notify_all();
    }

    fn pass(&self) {
        if let Some(tx) = self.entered.lock().unwrap().as_ref() {
            let _ = tx.send(());
        }
        let mut open = self.open.lock().unwrap();
        while !*open {
            open = self.cv.wait(open).unwrap();
        }
    }
}

/// Wraps a real classifier: waits at an optional gate, panics on texts
/// containing `PANIC`, counts a token per word.
pub struct TestClassifier {
    inner: Box<dyn Classifier>,
    gate: Option<Arc<Gate>>,
}

impl Classifier for TestClassifier {
    fn id(&self) -> &str {
        self.inner.id()
    }
    fn kind(&self) -> &str {
        self.inner.kind()
    }
    fn label_space(&self) -> &LabelSpace {
        self.inner.label_space()
    }
    fn predict(&self, cases: &[Transcript]) -> Result<Vec<LevelScores>, ClassifierError> {
        if let Some(g) = &self.gate {
            g.pass();
        }
        if let Some(c) = cases.iter().find(|c| c.text.contains("PANIC")) {
            // Quotes the case, as the standard library's own panics do.
            panic!("test classifier asked to panic on {:?}", c.text);
        }
        self.inner.predict(cases)
    }
    /// A stand-in tokenizer: one token per word.
    fn tokens(&self, cases: &[Transcript]) -> Option<Vec<usize>> {
        Some(
            cases
                .iter()
                .map(|c| c.text.split_whitespace().count())
                .collect(),
        )
    }
}

pub fn wrapped(dir: &Path, gate: Option<Arc<Gate>>) -> LoadedModel {
    let m = load_model(dir).unwrap();
    LoadedModel {
        bundle: m.bundle,
        classifier: Box::new(TestClassifier {
            inner: m.classifier,
            gate,
        }),
        decider: m.decider,
        detector: m.detector,
        guard: m.guard,
        judging: m.judging,
        stream: m.stream,
        coverage: m.coverage,
    }
}

/// A tagger whose primary is `wrapped(primary)` and whose fallback is real.
pub fn tagger(primary: &Path, gate: Option<Arc<Gate>>, fallback: Option<&Path>) -> Tagger {
    Tagger {
        primary: Some(wrapped(primary, gate)),
        fallback: fallback.map(|f| load_model(f).unwrap()),
    }
}

/// A real server on an ephemeral loopback port.
pub struct TestServer {
    pub base: String,
    pub client: reqwest::Client,
    pub state: AppState,
    stop: Option<oneshot::Sender<()>>,
    handle: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
}

impl TestServer {
    pub async fn start(state: AppState) -> TestServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let (stop, rx) = oneshot::channel::<()>();
        let handle = tokio::spawn(casetag_server::run(listener, state.clone(), async move {
            let _ = rx.await;
        }));
        let client = reqwest::Client::builder().no_proxy().build().unwrap();
        TestServer {
            base,
            client,
            state,
            stop: Some(stop),
            handle: Some(handle),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub async fn get(&self, path: &str) -> (u16, Value) {
        let r = self.client.get(self.url(path)).send().await.unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    pub async fn get_text(&self, path: &str) -> (u16, String) {
        let r = self.client.get(self.url(path)).send().await.unwrap();
        (r.status().as_u16(), r.text().await.unwrap())
    }

    pub async fn post_json(&self, path: &str, body: &Value) -> (u16, Value) {
        let r = self
            .client
            .post(self.url(path))
            .json(body)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    pub async fn post_raw(&self, path: &str, body: Vec<u8>) -> (u16, Value) {
        let r = self
            .client
            .post(self.url(path))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    pub async fn tag(&self, texts: &[&str]) -> (u16, Value) {
        let cases: Vec<Value> = texts
            .iter()
            .enumerate()
            .map(|(i, t)| json!({"id": format!("c{i}"), "text": t}))
            .collect();
        self.post_json("/v1/tag", &json!({ "cases": cases })).await
    }

    pub async fn reload(&self, token: Option<&str>) -> (u16, Value) {
        let mut rq = self.client.post(self.url("/v1/admin/reload"));
        if let Some(t) = token {
            rq = rq.bearer_auth(t);
        }
        let r = rq.send().await.unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    /// Trigger shutdown and wait for `run` to return.
    pub async fn shutdown(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(h) = self.handle.take() {
            h.await.unwrap().unwrap();
        }
    }

    pub fn begin_shutdown(&mut self) -> tokio::task::JoinHandle<std::io::Result<()>> {
        let _ = self.stop.take().unwrap().send(());
        self.handle.take().unwrap()
    }
}

/// The error `type` of an error body.
pub fn err_type(v: &Value) -> &str {
    v["error"]["type"].as_str().unwrap_or("<no error type>")
}

/// Send `request` on a fresh connection and read until the server closes
/// it (or `within` passes: `None`). Returns what the server sent.
pub async fn raw_exchange(
    base: &str,
    request: &[u8],
    within: std::time::Duration,
) -> Option<Vec<u8>> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = base.trim_start_matches("http://");
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(request).await.unwrap();
    let mut got = Vec::new();
    let read = async {
        let mut buf = [0u8; 4096];
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    };
    tokio::time::timeout(within, read).await.ok()?;
    Some(got)
}

/// The status code of a raw HTTP/1.1 response.
pub fn raw_status(resp: &[u8]) -> u16 {
    let text = String::from_utf8_lossy(resp);
    text.split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

/// Rewrite a bundle's manifest with `edit` and recompute its digest, as a
/// tool that knows the format would.
pub fn reseal(bundle: &Path, edit: impl FnOnce(&mut Value)) {
    use sha2::Digest;
    let p = bundle.join("manifest.json");
    let mut m: Value = serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
    edit(&mut m);
    let text = serde_json::to_string_pretty(&m).unwrap();
    std::fs::write(&p, &text).unwrap();
    let digest = hex::encode(sha2::Sha256::digest(text.as_bytes()));
    std::fs::write(bundle.join("manifest.sha256"), format!("{digest}\n")).unwrap();
}

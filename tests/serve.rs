//! `casetag serve` and the registry as an operator sees them: what the
//! server says on stderr when its primary model fails to load, plain log
//! lines when stderr is not a terminal, and registry names that stay under
//! `--root`.

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_casetag"))
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A small baseline bundle trained on the bundled corpus.
fn train(out: &Path) {
    let r = root();
    let o = bin()
        .args(["train", "--kind", "baseline", "--features", "256", "--out"])
        .arg(out)
        .arg("--train")
        .arg(r.join("data/aftersales/train.csv"))
        .arg("--taxonomy")
        .arg(r.join("data/taxonomy.yaml"))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

fn get(addr: &str, path: &str) -> String {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

#[test]
fn a_primary_that_fails_to_load_is_announced_and_logs_are_plain() {
    let tmp = tempfile::tempdir().unwrap();
    let good = tmp.path().join("good");
    train(&good);
    let bad = tmp.path().join("bad");
    std::fs::create_dir_all(&bad).unwrap();
    for e in std::fs::read_dir(&good).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), bad.join(e.file_name())).unwrap();
    }
    let w = bad.join("baseline.safetensors");
    let mut bytes = std::fs::read(&w).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    std::fs::write(&w, bytes).unwrap();

    let mut child = bin()
        .args(["--log", "info", "serve", "--addr", "127.0.0.1:0", "--model"])
        .arg(&bad)
        .arg("--fallback")
        .arg(&good)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    let mut err = BufReader::new(child.stderr.take().unwrap());
    let reader = std::thread::spawn(move || {
        let mut line = Vec::new();
        while err.read_until(b'\n', &mut line).unwrap_or(0) > 0 {
            let _ = tx.send(String::from_utf8_lossy(&line).into_owned());
            line.clear();
        }
    });
    let started = Instant::now();
    let mut seen = String::new();
    let listening = loop {
        let line = rx
            .recv_timeout(Duration::from_secs(120))
            .expect("the server said nothing");
        seen.push_str(&line);
        if line.contains("listening on") {
            break line;
        }
        assert!(started.elapsed() < Duration::from_secs(120), "{seen}");
    };
    // Not "(model bad)" as if it were serving: what serves is said as it is.
    assert!(listening.contains("DEGRADED"), "{listening}");
    assert!(
        !listening.contains(&format!("(model {}", bad.display())),
        "{listening}"
    );
    let addr = listening
        .split("http://")
        .nth(1)
        .and_then(|r| r.split([',', ' ']).next())
        .unwrap()
        .to_string();
    let ready = get(&addr, "/readyz");
    assert!(ready.contains("\"status\":\"degraded\""), "{ready}");

    let st = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(st.success());
    let exit = child.wait().unwrap();
    reader.join().unwrap();
    seen.extend(rx.try_iter());
    assert!(exit.success(), "{seen}");
    // Info lines were logged (shutdown), without colour codes: stderr is a pipe.
    assert!(seen.contains("shutting down"), "{seen}");
    assert!(
        !seen.contains('\u{1b}'),
        "ANSI codes in a piped log: {seen:?}"
    );
}

#[test]
fn registry_names_cannot_leave_the_root() {
    let tmp = tempfile::tempdir().unwrap();
    let reg = tmp.path().join("models");
    std::fs::create_dir_all(reg.join("tagger")).unwrap();
    // A champion pointing outside the registry.
    std::fs::write(reg.join("tagger").join("champion"), "../../etc\n").unwrap();
    for (args, want) in [
        (vec!["show", "tagger"], "is not a version name"),
        (vec!["show", "../../no-such-dir"], "not a registry name"),
        (vec!["promote", "../tagger"], "not a registry name"),
        (vec!["promote", "tagger/.."], "not a registry name"),
    ] {
        let o = bin()
            .args(["models", "--root"])
            .arg(&reg)
            .args(&args)
            .output()
            .unwrap();
        let e = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {e}");
        assert!(e.contains(want), "{args:?}: {e}");
        assert_eq!(e.trim().lines().count(), 1, "{args:?}: {e}");
    }
}

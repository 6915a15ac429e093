//! End-to-end tests that drive the real `casetag` binary on the bundled data.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_casetag"))
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn run(args: &[&str]) -> Output {
    bin().args(args).output().expect("run casetag")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).to_string()
}

/// `casetag CMD --model M IN_FLAG IN OUT_FLAG OUT`, then `extra` arguments.
fn model_run(
    cmd: &str,
    model: &Path,
    (in_flag, input): (&str, &Path),
    (out_flag, output): (&str, &Path),
    extra: &[&str],
) -> Output {
    let mut args = vec![
        cmd,
        "--model",
        model.to_str().unwrap(),
        in_flag,
        input.to_str().unwrap(),
        out_flag,
        output.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    run(&args)
}

/// `casetag tag --model M --input I --output O`, then `extra` arguments.
fn tag(model: &Path, input: &Path, output: &Path, extra: &[&str]) -> Output {
    model_run(
        "tag",
        model,
        ("--input", input),
        ("--output", output),
        extra,
    )
}

/// `casetag eval --model M --data D --out O`, then `extra` arguments.
fn eval(model: &Path, data: &Path, out: &Path, extra: &[&str]) -> Output {
    model_run("eval", model, ("--data", data), ("--out", out), extra)
}

/// `casetag train --kind baseline` on the bundled corpus with `features`
/// selected hashed features.
fn train_baseline(out: &Path, features: usize, id: Option<&str>) -> Output {
    let r = root();
    let path = |p: &str| r.join(p).to_str().unwrap().to_string();
    let mut args = vec![
        "train".to_string(),
        "--kind".into(),
        "baseline".into(),
        "--train".into(),
        path("data/aftersales/train.csv"),
        "--val".into(),
        path("data/aftersales/val.csv"),
        "--taxonomy".into(),
        path("data/taxonomy.yaml"),
        "--features".into(),
        features.to_string(),
        "--out".into(),
        out.to_str().unwrap().to_string(),
        "--force".into(),
    ];
    if let Some(id) = id {
        args.extend(["--id".to_string(), id.to_string()]);
    }
    bin().args(&args).output().expect("run casetag")
}

/// One baseline bundle trained on the bundled corpus, shared by the tests.
/// nextest runs every test in its own process, so the bundle is shared
/// through the target directory: trained once into a private directory and
/// renamed into place (the first process to finish wins).
fn baseline() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let base = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
        let model = base.join("cli-baseline-fixture");
        let fresh = |m: &Path| {
            // Reuse only a bundle built from the current corpus and binary.
            let Ok(meta) = std::fs::metadata(m.join("manifest.json")) else {
                return false;
            };
            let built = meta.modified().unwrap();
            [
                PathBuf::from(env!("CARGO_BIN_EXE_casetag")),
                root().join("data/aftersales/train.csv"),
            ]
            .iter()
            .all(|p| {
                std::fs::metadata(p)
                    .map(|m| m.modified().unwrap() <= built)
                    .unwrap_or(false)
            })
        };
        if fresh(&model) {
            return model;
        }
        let mine = base.join(format!("cli-baseline-{}", std::process::id()));
        // A smaller feature space keeps the fixture quick to fit.
        let o = train_baseline(&mine, 2048, None);
        assert!(o.status.success(), "train failed: {}", stderr(&o));
        if !fresh(&model) {
            let _ = std::fs::remove_dir_all(&model);
        }
        if std::fs::rename(&mine, &model).is_err() {
            let _ = std::fs::remove_dir_all(&mine);
        }
        model
    })
}

#[test]
fn help_for_every_subcommand() {
    for c in [
        "prepare", "train", "eval", "tag", "serve", "models", "monitor", "review",
    ] {
        let o = run(&[c, "--help"]);
        assert!(o.status.success(), "{c} --help");
        let s = String::from_utf8_lossy(&o.stdout);
        assert!(s.contains("Usage: casetag"), "{c}: {s}");
        assert!(s.len() > 200, "{c} help is too thin: {s}");
    }
}

#[test]
fn train_tag_eval_on_bundled_data() {
    let model = baseline();
    let manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(model.join("manifest.json")).unwrap())
            .unwrap();
    assert_eq!(manifest["kind"], "baseline");
    assert!(manifest["calibration"]["temperature"].as_f64().unwrap() > 0.0);
    assert!(manifest["files"].as_object().unwrap().len() >= 2);

    let tmp = tempfile::tempdir().unwrap();
    let test = self::root().join("data/aftersales/test.csv");
    let report = tmp.path().join("report");
    let o = eval(model, &test, &report, &["--slice", "region"]);
    assert!(o.status.success(), "eval: {}", stderr(&o));
    let r: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(report.join("report.json")).unwrap())
            .unwrap();
    let m = &r["models"][0];
    for k in [
        "path_accuracy",
        "hierarchical_f1",
        "ece",
        "in_scope_accuracy",
        "coverage",
        "selective_accuracy",
        "oos_recall",
        "oos_precision",
    ] {
        assert!(m[k].is_number(), "missing {k}: {m}");
    }
    for l in ["l1", "l2", "l3"] {
        let acc = m["levels"][l]["accuracy"].as_f64().unwrap();
        assert!(acc > 0.5, "{l} accuracy {acc} is implausibly low");
        assert!(m["levels"][l]["macro_f1"].is_number());
        // Each level's ECE comes with the floor a calibrated model would
        // show on as many rows: positive on a finite split, p90 above mean.
        let floor = m["levels"][l]["ece_floor"].as_f64().unwrap();
        let p90 = m["levels"][l]["ece_floor_p90"].as_f64().unwrap();
        assert!(floor > 0.0 && floor <= p90, "{l}: floor {floor}, p90 {p90}");
    }
    // Levels are nested: L1 is at least as easy as L3.
    assert!(m["levels"]["l1"]["accuracy"].as_f64() >= m["levels"]["l3"]["accuracy"].as_f64());
    let html = std::fs::read_to_string(report.join("report.html")).unwrap();
    assert!(html.contains("<svg") && html.contains("Reliability"));
    assert!(html.contains("Calibration per level") && html.contains("floor (mean / p90)"));

    // Tag the same file: rows in = rows out, prediction columns present.
    let out = tmp.path().join("tagged.csv");
    let o = tag(model, &test, &out, &["--chunk-rows", "500"]);
    assert!(o.status.success(), "tag: {}", stderr(&o));
    let n_in = count_csv_rows(&test);
    let n_out = count_csv_rows(&out);
    assert_eq!(n_in, n_out);
    let header = std::fs::read_to_string(&out).unwrap();
    let header = header.lines().next().unwrap();
    for c in [
        "pred_l1",
        "pred_l3",
        "depth",
        "conf_l1",
        "out_of_scope",
        "oos_score",
        "actions",
        "model_id",
        "lang",
        "note",
    ] {
        assert!(header.contains(c), "{c} missing from {header}");
    }
}

fn count_csv_rows(p: &Path) -> usize {
    // Texts are multi-line and quoted: count records, not lines.
    let text = std::fs::read_to_string(p).unwrap();
    let mut n = 0;
    let mut quoted = false;
    for ch in text.chars() {
        match ch {
            '"' => quoted = !quoted,
            '\n' if !quoted => n += 1,
            _ => {}
        }
    }
    n - 1
}

#[test]
fn bad_rows_are_kept_and_reported() {
    let model = baseline();
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("in.jsonl");
    std::fs::write(
        &input,
        "{\"id\":\"a\",\"text\":\"my refund never arrived for order 12345678\"}\n\
         {\"id\":\"b\",\"text\":\"\"}\n\
         {\"id\":\"c\",\"text\":null}\n\
         {\"id\":\"d\",\"text\":\"the parcel is lost, tracking has not moved in 10 days\"}\n",
    )
    .unwrap();
    let out = tmp.path().join("out.jsonl");
    let o = tag(model, &input, &out, &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    let rows: Vec<serde_json::Value> = std::fs::read_to_string(&out)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rows.len(), 4);
    assert_eq!(rows[1]["id"], "b");
    assert!(rows[1]["error"].as_str().unwrap().contains("empty"));
    assert!(rows[0]["error"].is_null());
    assert!(rows[0]["depth"].as_i64().unwrap() >= 0);
    // The best guess is kept for every tagged row; the tag is its prefix.
    for r in [&rows[0], &rows[3]] {
        assert!(r["guess_l1"].is_string(), "{r}");
        let depth = r["depth"].as_i64().unwrap();
        for (k, l) in ["l1", "l2", "l3"].iter().enumerate() {
            if (k as i64) < depth {
                assert_eq!(r[*l], r[format!("guess_{l}").as_str()], "{r}");
            } else {
                assert!(r[*l].is_null(), "{r}");
            }
        }
    }
    assert!(rows[1]["guess_l1"].is_null());
    assert!(stderr(&o).contains("row 2"), "{}", stderr(&o));
}

#[test]
fn top_k_and_actions_are_lists_where_the_format_has_lists() {
    let model = baseline();
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("in.jsonl");
    std::fs::write(
        &input,
        "{\"id\":\"a\",\"text\":\"my refund never arrived for order 12345678, please refund me\"}\n\
         {\"id\":\"b\",\"text\":\"\"}\n\
         {\"id\":\"c\",\"text\":\"the parcel is lost, tracking has not moved in 10 days\"}\n",
    )
    .unwrap();
    // JSONL: actions a list of {id, mode}; per level, two {node, probability}.
    let out = tmp.path().join("out.jsonl");
    let o = tag(model, &input, &out, &["--top-k", "2"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let rows: Vec<serde_json::Value> = std::fs::read_to_string(&out)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let mut saw_action = false;
    for r in [&rows[0], &rows[2]] {
        for a in r["actions"]
            .as_array()
            .unwrap_or_else(|| panic!("actions not a list: {r}"))
        {
            assert!(a["id"].is_string(), "{r}");
            assert!(
                ["auto", "suggest"].contains(&a["mode"].as_str().unwrap()),
                "{r}"
            );
            saw_action = true;
        }
        for (k, l) in ["l1", "l2", "l3"].iter().enumerate() {
            let top = r[format!("top_{l}").as_str()].as_array().unwrap();
            assert_eq!(top.len(), 2, "{r}");
            let p = |i: usize| top[i]["probability"].as_f64().unwrap();
            assert!(p(0) >= p(1) && p(0) <= 1.0 + 1e-6, "{r}");
            // Where the guess's node is listed, its probability is the
            // level's confidence (the same calibrated marginal).
            let conf = r[format!("conf_{l}").as_str()].as_f64().unwrap();
            for (i, a) in top.iter().enumerate() {
                if a["node"] == r[format!("guess_{l}").as_str()] {
                    assert!((p(i) - conf).abs() < 1e-5, "level {} {r}", k + 1);
                }
            }
        }
    }
    assert!(saw_action, "no case got an action: {rows:?}");
    // An untagged row has no lists.
    assert!(rows[1]["actions"].is_null() && rows[1]["top_l1"].is_null());

    // Parquet holds the same lists; CSV, which has none, joins them.
    let pq = tmp.path().join("out.parquet");
    assert!(tag(model, &input, &pq, &["--top-k", "2"]).status.success());
    let df = casetag_data::read_table(&pq).unwrap();
    for c in ["actions", "top_l1", "top_l3"] {
        let dt = df.column(c).unwrap().dtype().to_string();
        assert!(dt.starts_with("list[struct"), "{c}: {dt}");
    }
    let csv = tmp.path().join("out.csv");
    assert!(tag(model, &input, &csv, &["--top-k", "2"]).status.success());
    let text = std::fs::read_to_string(&csv).unwrap();
    let first = rows[0]["top_l1"][0]["node"].as_str().unwrap();
    assert!(text.contains(&format!("{first}:")), "{text}");
    let acts: Vec<String> = rows[0]["actions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            format!(
                "{}:{}",
                a["id"].as_str().unwrap(),
                a["mode"].as_str().unwrap()
            )
        })
        .collect();
    assert!(text.contains(&acts.join(";")), "{text}");
    // Without --top-k there are no top columns.
    let plain = tmp.path().join("plain.jsonl");
    assert!(tag(model, &input, &plain, &[]).status.success());
    assert!(!std::fs::read_to_string(&plain).unwrap().contains("top_l1"));
    // More than 50 is refused with one line.
    let o = tag(model, &input, &plain, &["--top-k", "51"]);
    assert!(!o.status.success());
}

#[test]
fn review_queues_the_uncertain_cases_and_extra_trains_on_the_reviewed_ones() {
    let model = baseline();
    let tmp = tempfile::tempdir().unwrap();
    let test = self::root().join("data/aftersales/test.csv");
    let tagged = tmp.path().join("tagged.parquet");
    assert!(tag(model, &test, &tagged, &["--top-k", "2"])
        .status
        .success());
    let q = tmp.path().join("q");
    let o = run(&[
        "review",
        "--input",
        tagged.to_str().unwrap(),
        "--budget",
        "20",
        "--out",
        q.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let summary: serde_json::Value = serde_json::from_str(stdout(&o).trim()).unwrap();
    assert_eq!(summary["items"], 20, "{summary}");
    let queue = casetag_data::read_table(&q.join("queue.csv")).unwrap();
    assert_eq!(queue.height(), 20);
    let col = |n: &str| -> Vec<String> {
        let c = queue
            .column(n)
            .unwrap()
            .cast(&polars::prelude::DataType::String)
            .unwrap();
        c.str()
            .unwrap()
            .iter()
            .map(|v| v.unwrap_or("").to_string())
            .collect()
    };
    // Ranked 1..20, every item with a reason, values not increasing.
    assert_eq!(
        col("rank"),
        (1..=20).map(|i| i.to_string()).collect::<Vec<_>>()
    );
    assert!(
        col("reasons").iter().all(|r| !r.is_empty()),
        "{:?}",
        col("reasons")
    );
    let values: Vec<f64> = col("value").iter().map(|v| v.parse().unwrap()).collect();
    assert!(values.windows(2).all(|w| w[0] >= w[1]), "{values:?}");
    // The test split's out-of-scope cases are the most uncertain of all.
    assert!(
        col("reasons")[0].contains("out_of_scope"),
        "{:?}",
        col("reasons")
    );
    for (name, key) in [("label_studio.json", "data"), ("argilla.json", "fields")] {
        let v: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(q.join(name)).unwrap()).unwrap();
        assert_eq!(v.as_array().unwrap().len(), 20, "{name}");
        assert!(v[0][key]["text"].is_string(), "{name}: {}", v[0]);
    }
    // A second model answering differently is a reason of its own.
    let o = run(&[
        "review",
        "--input",
        tagged.to_str().unwrap(),
        "--compare",
        test.to_str().unwrap(),
        "--budget",
        "5",
        "--out",
        tmp.path().join("q2").to_str().unwrap(),
    ]);
    assert_eq!(
        o.status.code(),
        Some(2),
        "test.csv has no guess columns: {}",
        stderr(&o)
    );
    assert!(stderr(&o).contains("guess_l1"), "{}", stderr(&o));

    // The reviewer fills the queue: 17 with the true labels, one out of
    // scope, two left empty; `--extra` trains on the 18 reviewed rows.
    let truth = casetag_data::read_table(&test).unwrap();
    let tcol = |n: &str| -> Vec<String> {
        let c = truth.column(n).unwrap();
        c.str()
            .unwrap()
            .iter()
            .map(|v| v.unwrap_or("").to_string())
            .collect()
    };
    let (tid, tl) = (tcol("id"), [tcol("l1"), tcol("l2"), tcol("l3")]);
    let mut reviewed = String::from("id,text,l1,l2,l3\n");
    let (ids, texts) = (col("id"), col("text"));
    for i in 0..20 {
        let t = tid.iter().position(|x| *x == ids[i]).unwrap();
        let labels = match i {
            0 => ["out_of_scope".to_string(), String::new(), String::new()],
            18 | 19 => [String::new(), String::new(), String::new()],
            _ if tl[0][t].is_empty() => ["out_of_scope".to_string(), String::new(), String::new()],
            _ => [tl[0][t].clone(), tl[1][t].clone(), tl[2][t].clone()],
        };
        reviewed.push_str(&format!(
            "{},\"{}\",{},{},{}\n",
            ids[i],
            texts[i].replace('"', "\"\""),
            labels[0],
            labels[1],
            labels[2]
        ));
    }
    let extra = tmp.path().join("reviewed.csv");
    std::fs::write(&extra, reviewed).unwrap();
    let base = tmp.path().join("base");
    let o = train_baseline(&base, 1024, None);
    assert!(o.status.success(), "{}", stderr(&o));
    let more = tmp.path().join("more");
    let r = self::root();
    let o = run(&[
        "train",
        "--kind",
        "baseline",
        "--train",
        r.join("data/aftersales/train.csv").to_str().unwrap(),
        "--val",
        r.join("data/aftersales/val.csv").to_str().unwrap(),
        "--taxonomy",
        r.join("data/taxonomy.yaml").to_str().unwrap(),
        "--features",
        "1024",
        "--extra",
        extra.to_str().unwrap(),
        "--out",
        more.to_str().unwrap(),
        "--log",
        "info",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("18 labelled row(s) added (2 without a label skipped)"),
        "{}",
        stderr(&o)
    );
    let rows = |m: &Path| -> i64 {
        let man: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(m.join("manifest.json")).unwrap())
                .unwrap();
        man["validation_metrics"]["train_rows"].as_i64().unwrap()
    };
    assert_eq!(rows(&more), rows(&base) + 18);
}

#[test]
fn formats_round_trip() {
    let model = baseline();
    let tmp = tempfile::tempdir().unwrap();
    let csv = tmp.path().join("in.csv");
    std::fs::write(
        &csv,
        "id,text,region\nx1,\"I want to return the shoes, wrong size\",EU\nx2,\"where is my parcel\",US\n",
    )
    .unwrap();
    let mut prev = csv.clone();
    for ext in ["parquet", "jsonl", "csv"] {
        let out = tmp.path().join(format!("out.{ext}"));
        let o = tag(model, &csv, &out, &[]);
        assert!(o.status.success(), "{ext}: {}", stderr(&o));
        // Re-tag the output: the pass-through columns and the row count survive.
        let again = tmp.path().join(format!("again.{ext}"));
        let o = tag(model, &out, &again, &[]);
        assert!(o.status.success(), "{ext} again: {}", stderr(&o));
        prev = again;
    }
    let text = std::fs::read_to_string(&prev).unwrap();
    assert!(text.contains("x1") && text.contains("EU") && text.contains("x2"));
}

#[test]
fn corrupt_bundle_is_rejected() {
    let model = baseline();
    let tmp = tempfile::tempdir().unwrap();
    let copy = tmp.path().join("m");
    std::fs::create_dir_all(&copy).unwrap();
    for e in std::fs::read_dir(model).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), copy.join(e.file_name())).unwrap();
    }
    // Flip bytes in the largest weights file.
    let mut files: Vec<_> = std::fs::read_dir(&copy)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| !p.ends_with("manifest.json"))
        .collect();
    files.sort_by_key(|p| std::cmp::Reverse(std::fs::metadata(p).unwrap().len()));
    let mut bytes = std::fs::read(&files[0]).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    std::fs::write(&files[0], &bytes).unwrap();
    let input = tmp.path().join("in.csv");
    std::fs::write(&input, "text\nhello\n").unwrap();
    let o = tag(&copy, &input, &tmp.path().join("o.csv"), &[]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    let e = stderr(&o);
    assert!(e.contains("checksum mismatch"), "{e}");
    assert_eq!(e.trim().lines().count(), 1, "one line: {e}");
    // A manifest that still parses but whose thresholds were edited.
    let text = std::fs::read_to_string(copy.join("manifest.json")).unwrap();
    let edited = text.replacen("\"min_margin\": 0.", "\"min_margin\": 0.9", 1);
    assert_ne!(edited, text);
    std::fs::write(copy.join("manifest.json"), edited).unwrap();
    let o = run(&["models", "show", copy.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2));
    let e = stderr(&o);
    assert!(e.contains("checksum mismatch for 'manifest.json'"), "{e}");
    assert_eq!(e.trim().lines().count(), 1, "one line: {e}");
    // Truncated manifest.
    std::fs::write(copy.join("manifest.json"), "{\"id\": ").unwrap();
    let o = run(&["models", "show", copy.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("manifest.json is corrupt"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn batch_novelty_needs_a_model_with_a_batch_rule() {
    let model = baseline();
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("in.csv");
    std::fs::write(&input, "text\nwhere is my parcel\n").unwrap();
    let out = tmp.path().join("o.csv");
    let o = tag(model, &input, &out, &["--batch-novelty"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    let e = stderr(&o);
    assert!(e.contains("--batch-novelty"), "{e}");
    assert_eq!(e.trim().lines().count(), 1, "one line: {e}");
    assert!(!out.exists());
}

#[test]
fn stream_novelty_needs_a_model_with_a_batch_rule() {
    let model = baseline();
    let tmp = tempfile::tempdir().unwrap();
    let test = self::root().join("data/aftersales/test.csv");
    let report_dir = tmp.path().join("r");
    let eval = |extra: &[&str]| eval(model, &test, &report_dir, extra);
    // eval judges such a model case by case, says so, and the report says how.
    // tag refuses, in one line, before writing anything.
    let input = tmp.path().join("in.csv");
    std::fs::write(&input, "text\nwhere is my parcel\n").unwrap();
    let out = tmp.path().join("o.csv");
    let o = tag(model, &input, &out, &["--stream-novelty"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("--stream-novelty"), "{}", stderr(&o));
    assert_eq!(stderr(&o).trim().lines().count(), 1, "{}", stderr(&o));
    assert!(!out.exists());
    let o = eval(&["--stream-novelty", "--stream-window", "50"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(stderr(&o).contains("--stream-novelty"), "{}", stderr(&o));
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(report_dir.join("report.json")).unwrap()).unwrap();
    assert_eq!(report["models"][0]["oos_judging"], "per_case", "{report}");
    // One way of judging at a time, and a window of at least one case.
    for extra in [
        &["--stream-novelty", "--batch-novelty"][..],
        &["--stream-novelty", "--stream-window", "0"][..],
    ] {
        let o = eval(extra);
        assert_eq!(o.status.code(), Some(2), "{extra:?}: {}", stderr(&o));
    }
    // serve refuses to start rather than serve without what was asked,
    // with a fallback too (the primary loaded; it cannot do what was asked).
    let m = model.to_str().unwrap();
    for extra in [&[][..], &["--fallback", m][..]] {
        let mut args = vec![
            "serve",
            "--addr",
            "127.0.0.1:0",
            "--model",
            m,
            "--stream-novelty",
        ];
        args.extend_from_slice(extra);
        // A server that starts anyway would never exit: stop it after a minute.
        let mut child = bin()
            .args(&args)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let started = std::time::Instant::now();
        while child.try_wait().unwrap().is_none() {
            if started.elapsed() > std::time::Duration::from_secs(60) {
                child.kill().unwrap();
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        let o = child.wait_with_output().unwrap();
        assert_eq!(o.status.code(), Some(2), "{extra:?}: {}", stderr(&o));
        let e = stderr(&o);
        assert!(e.contains("--stream-novelty"), "{e}");
        assert_eq!(e.trim().lines().count(), 1, "one line: {e}");
    }
}

#[test]
fn out_of_range_budgets_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("m");
    let train = root().join("data/aftersales/train.csv");
    for (flag, value) in [
        ("--oos-budget", "1.5"),
        ("--oos-batch-budget", "-0.1"),
        ("--oos-batch-budget", "lots"),
    ] {
        let arg = format!("{flag}={value}");
        let o = run(&[
            "train",
            "--kind",
            "baseline",
            "--train",
            train.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
            &arg,
        ]);
        assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
        let e = stderr(&o);
        let first = e.lines().next().unwrap_or_default();
        assert!(first.contains(flag) && first.contains(value), "{e}");
        assert!(!out.exists());
    }
}

#[test]
fn prepare_rejects_malformed_csv() {
    let tmp = tempfile::tempdir().unwrap();
    let bad = tmp.path().join("bad.csv");
    std::fs::write(&bad, "id,body\n1,hello\n2,world\n").unwrap();
    let o = run(&[
        "prepare",
        "--input",
        bad.to_str().unwrap(),
        "--out",
        tmp.path().join("o").to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    let e = stderr(&o);
    assert!(e.contains("text"), "names the missing column: {e}");
    assert_eq!(e.trim().lines().count(), 1, "{e}");
    assert!(!e.contains("panicked"));
}

#[test]
fn eval_gate_fails_with_exit_3() {
    let model = baseline();
    let tmp = tempfile::tempdir().unwrap();
    let gate = tmp.path().join("gate.yaml");
    std::fs::write(
        &gate,
        "min:\n  levels.l1.accuracy: 0.999999\n  path_accuracy: 0.0\n",
    )
    .unwrap();
    let test = self::root().join("data/aftersales/test.csv");
    let args = |g: &Path| {
        eval(
            model,
            &test,
            &tmp.path().join("r"),
            &["--gate", g.to_str().unwrap()],
        )
    };
    let o = args(&gate);
    assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
    assert!(stderr(&o).contains("levels.l1.accuracy"), "{}", stderr(&o));
    std::fs::write(&gate, "min:\n  levels.l1.accuracy: 0.1\n").unwrap();
    assert_eq!(args(&gate).status.code(), Some(0));
}

fn copy_bundle(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
    }
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).to_string()
}

#[test]
fn registry_list_show_promote() {
    let model = baseline();
    let tmp = tempfile::tempdir().unwrap();
    let reg = tmp.path().join("models");
    copy_bundle(model, &reg.join("tagger/v1"));
    copy_bundle(model, &reg.join("tagger/v2"));
    let root = reg.to_str().unwrap();
    let models = |args: &[&str]| {
        let mut all = vec!["models", "--root", root];
        all.extend_from_slice(args);
        run(&all)
    };

    let o = models(&["list"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let s = stdout(&o);
    assert!(
        s.contains("tagger/v1\tbaseline") && s.contains("tagger/v2\tbaseline"),
        "{s}"
    );
    assert!(
        !s.contains("champion\n") && !s.contains("\tchampion"),
        "{s}"
    );
    // No champion yet: the bare name does not resolve.
    assert_eq!(models(&["show", "tagger"]).status.code(), Some(2));

    let o = models(&["promote", "tagger/v1"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(
        std::fs::read_to_string(reg.join("tagger/champion"))
            .unwrap()
            .trim(),
        "v1"
    );
    let s = stdout(&models(&["list"]));
    let champ: Vec<&str> = s.lines().filter(|l| l.ends_with("\tchampion")).collect();
    assert_eq!(champ.len(), 1, "{s}");
    assert!(champ[0].starts_with("tagger/v1\t"), "{s}");

    // `show NAME` follows the champion and prints the verified manifest.
    let o = models(&["show", "tagger"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let m: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(m["kind"], "baseline");
    // The build that trained it: version, and the commit when built from git.
    let build = m["build"].as_str().unwrap();
    assert!(build.starts_with(env!("CARGO_PKG_VERSION")), "{build}");
    if let Ok(g) = Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
    {
        let commit = String::from_utf8_lossy(&g.stdout).trim().to_string();
        if g.status.success() && std::env::var_os("CASETAG_BUILD_ID").is_none() {
            assert_eq!(build, format!("{}+{commit}", env!("CARGO_PKG_VERSION")));
        }
    }

    // Promotion moves the alias; an unknown version is refused.
    assert!(models(&["promote", "tagger/v2"]).status.success());
    assert_eq!(
        std::fs::read_to_string(reg.join("tagger/champion"))
            .unwrap()
            .trim(),
        "v2"
    );
    // Every command that takes a model takes a registry name: `tag` and
    // `eval` with the champion (v2) by name, `eval` with a version, and
    // `monitor` with a bundle's reference sample by name.
    let test = self::root().join("data/aftersales/test.csv");
    let out = tmp.path().join("by_name.csv");
    let o = run(&[
        "tag",
        "--models-root",
        root,
        "--model",
        "tagger",
        "--fallback",
        "tagger/v1",
        "--input",
        test.to_str().unwrap(),
        "--output",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(count_csv_rows(&out), count_csv_rows(&test));
    let report = tmp.path().join("by_name_report");
    let o = run(&[
        "eval",
        "--models-root",
        root,
        "--model",
        "tagger/v2",
        "--data",
        test.to_str().unwrap(),
        "--out",
        report.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let o = run(&[
        "monitor",
        "--models-root",
        root,
        "--reference",
        "tagger",
        "--current",
        out.to_str().unwrap(),
        "--out",
        tmp.path().join("drift").to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    // A name that is in no registry, nor a directory, is one line.
    let o = run(&[
        "tag",
        "--models-root",
        root,
        "--model",
        "nobody",
        "--input",
        test.to_str().unwrap(),
        "--output",
        out.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert_eq!(stderr(&o).trim().lines().count(), 1, "{}", stderr(&o));
    assert!(stderr(&o).contains("'nobody'"), "{}", stderr(&o));

    let o = models(&["promote", "tagger/v9"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert_eq!(stderr(&o).trim().lines().count(), 1, "{}", stderr(&o));
    assert!(models(&["promote", "tagger"]).status.code() == Some(2));

    // A bundle whose files changed after writing fails its checksums: show
    // and promote refuse it, and the champion stays where it was.
    let w = reg.join("tagger/v1").join("baseline.safetensors");
    let mut bytes = std::fs::read(&w).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x01;
    std::fs::write(&w, &bytes).unwrap();
    let o = models(&["show", "tagger/v1"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("checksum mismatch"), "{}", stderr(&o));
    let o = models(&["promote", "tagger/v1"]);
    assert_eq!(o.status.code(), Some(2));
    assert_eq!(
        std::fs::read_to_string(reg.join("tagger/champion"))
            .unwrap()
            .trim(),
        "v2"
    );
    // No temporary champion files are left behind.
    let left: Vec<_> = std::fs::read_dir(reg.join("tagger"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .filter(|n| n.starts_with('.'))
        .collect();
    assert!(left.is_empty(), "{left:?}");
}

/// A deliberately weak candidate (16 features) against the fixture as the
/// reference: max_regression per level and per slice, and min_coverage.
#[test]
fn eval_gate_regression_and_coverage_checks() {
    let reference = baseline();
    let tmp = tempfile::tempdir().unwrap();
    let r = root();
    let weak = tmp.path().join("weak");
    let o = train_baseline(&weak, 16, Some("weak"));
    assert!(o.status.success(), "train weak: {}", stderr(&o));
    let gate = tmp.path().join("gate.yaml");
    let test = r.join("data/aftersales/test.csv");
    let eval = |candidate: &Path, yaml: &str| {
        std::fs::write(&gate, yaml).unwrap();
        run(&[
            "eval",
            "--model",
            reference.to_str().unwrap(),
            "--model",
            candidate.to_str().unwrap(),
            "--data",
            test.to_str().unwrap(),
            "--out",
            tmp.path().join("report").to_str().unwrap(),
            "--slice",
            "region",
            "--gate",
            gate.to_str().unwrap(),
            "--resamples",
            "200",
        ])
    };
    // The weak model loses many points at L3 and in every region.
    let o = eval(&weak, "max_regression:\n  l3: 0.02\n  slice: 0.02\n");
    assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
    let e = stderr(&o);
    assert!(e.contains("weak: l3 accuracy drops"), "{e}");
    assert!(e.contains("slice region="), "{e}");
    // The verdict is saved with the report, not only printed.
    let report = |name: &str| -> serde_json::Value {
        serde_json::from_str(
            &std::fs::read_to_string(tmp.path().join("report").join(name)).unwrap(),
        )
        .unwrap_or_default()
    };
    let saved = report("report.json");
    assert_eq!(saved["gate"]["passed"], false, "{}", saved["gate"]);
    assert_eq!(saved["gate"]["reference"], reference_id(reference));
    assert!(saved["gate"]["failed"][0]
        .as_str()
        .unwrap()
        .contains("l3 accuracy drops"));
    let html = std::fs::read_to_string(tmp.path().join("report/report.html")).unwrap();
    assert!(html.contains("Release gate") && html.contains("FAILED"));
    // Coverage: an unreachable minimum fails.
    let o = eval(&weak, "min_coverage: 1.0\n");
    assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
    assert!(stderr(&o).contains("coverage ="), "{}", stderr(&o));
    // Generous limits pass, in shares or in points, and the report says so.
    let o = eval(
        &weak,
        "max_regression:\n  l1: 0.9\n  l2: 90 points\n  l3: 0.9\nmin_coverage: 0.0\n",
    );
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(report("report.json")["gate"]["passed"], true);
    // A one meant as one point would allow a 100-point drop: refused.
    let o = eval(&weak, "max_regression:\n  l3: 1\n");
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("1 point"), "{}", stderr(&o));
    // A malformed gate is an input error, not a pass.
    let o = eval(&weak, "max_regresion:\n  l3: 0.0\n");
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    // Two bundles with one id cannot be told apart in a report: refused.
    let same = tmp.path().join("same");
    copy_bundle(reference, &same);
    let o = eval(&same, "min_coverage: 0.0\n");
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    let e = stderr(&o);
    assert!(
        e.contains("the same id") && e.trim().lines().count() == 1,
        "{e}"
    );
}

fn reference_id(bundle: &Path) -> String {
    let m: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(bundle.join("manifest.json")).unwrap())
            .unwrap();
    m["id"].as_str().unwrap().to_string()
}

/// The rows of a JSONL output.
fn jsonl_rows(p: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(p)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// The JSON summary `tag` prints on stdout (its only output there).
fn summary(o: &Output) -> serde_json::Value {
    let out = stdout(o);
    serde_json::from_str(out.trim()).unwrap_or_else(|_| panic!("no summary in: {out}"))
}

#[test]
fn blank_lines_never_end_the_input() {
    let model = baseline();
    let tmp = tempfile::tempdir().unwrap();
    let rows = |r: std::ops::Range<usize>| -> String {
        r.map(|i| format!("c{i},where is my parcel {i}\n"))
            .collect()
    };
    for (name, body, chunk) in [
        // One empty line after row 100, one row per chunk.
        (
            "one.csv",
            format!("id,text\n{}\n{}", rows(0..100), rows(100..150)),
            "1",
        ),
        // A run of blank lines longer than a chunk.
        (
            "run.csv",
            format!(
                "id,text\n{}{}{}",
                rows(0..100),
                "\n".repeat(40),
                rows(100..150)
            ),
            "16",
        ),
    ] {
        let input = tmp.path().join(name);
        std::fs::write(&input, body).unwrap();
        let out = tmp.path().join(format!("{name}.jsonl"));
        let o = tag(model, &input, &out, &["--chunk-rows", chunk]);
        assert!(o.status.success(), "{}", stderr(&o));
        let ids: Vec<String> = jsonl_rows(&out)
            .iter()
            .map(|r| r["id"].as_str().unwrap().to_string())
            .collect();
        let want: Vec<String> = (0..150).map(|i| format!("c{i}")).collect();
        assert_eq!(ids, want, "{name}");
        assert_eq!(summary(&o)["rows"], 150);
    }
}

#[test]
fn damaged_rows_are_kept_named_and_counted() {
    let model = baseline();
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("in.csv");
    let mut body = b"id,text,region\n".to_vec();
    body.extend_from_slice(b"a,my refund never arrived,EU\n");
    body.extend_from_slice(b"b,ragged,row,with,extra\n");
    body.extend_from_slice(b"c,\"bad \xFF utf8 jo@x.io\",EU\n");
    body.extend_from_slice(b"d,\"nul \0\x1b[31m byte\",EU\n");
    body.extend_from_slice(b"e,,EU\n");
    body.extend_from_slice(b"f,\"unterminated parcel text\n");
    body.extend_from_slice(b"g,the parcel is lost,US\n");
    std::fs::write(&input, &body).unwrap();
    let out = tmp.path().join("out.jsonl");
    let o = tag(model, &input, &out, &["--chunk-rows", "2"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let rows = jsonl_rows(&out);
    let ids: Vec<&str> = rows.iter().map(|r| r["id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["a", "b", "c", "d", "e", "f", "g"]);
    let err = |i: usize| rows[i]["error"].as_str().unwrap_or_default().to_string();
    let name = input.display().to_string();
    assert_eq!(
        err(1),
        format!("{name}: line 3: expected 3 fields, found 5")
    );
    assert_eq!(
        err(2),
        format!("{name}: line 4, column 'text': invalid UTF-8")
    );
    assert_eq!(err(3), format!("{name}: line 5, column 'text': NUL byte"));
    assert!(err(4).contains("empty"));
    assert_eq!(
        err(5),
        format!("{name}: line 7, column 'text': quoted field is never closed")
    );
    for i in [0, 6] {
        assert!(
            rows[i]["error"].is_null() && rows[i]["l1"].is_string(),
            "{}",
            rows[i]
        );
    }
    for r in &rows[1..6] {
        assert!(r["l1"].is_null() && r["served_by"].is_null(), "{r}");
    }
    let s = summary(&o);
    assert_eq!(s["rows"], 7);
    assert_eq!(s["tagged_rows"], 2);
    assert_eq!(s["bad_input_rows"], 4);
    assert_eq!(s["empty_text_rows"], 1);
    assert_eq!(s["rows_by_model"]["baseline"], 2);
    assert_eq!(s["fallback_rows"], 0);
    // stderr names the lines, never echoes raw control characters or the
    // case text.
    let e = stderr(&o);
    assert!(e.contains("line 5, column 'text': NUL byte"), "{e}");
    assert!(!e.contains('\u{1b}') && !e.contains('\0'), "{e:?}");
    assert!(
        !e.contains("jo@x.io") && !e.contains("unterminated parcel"),
        "{e}"
    );
}

#[test]
fn damaged_jsonl_lines_are_kept() {
    let model = baseline();
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("in.jsonl");
    let mut body = Vec::new();
    body.extend_from_slice(b"{\"id\":\"a\",\"text\":\"where is my parcel\"}\n\n");
    body.extend_from_slice(b"{\"id\":\"b\",\"text\":\"refund \xFF please\"}\n");
    body.extend_from_slice(b"{\"id\":\"c\",\"text\":\"cut sh\n");
    body.extend_from_slice(b"{\"id\":\"d\",\"text\":\"cancel my order\"}\n");
    std::fs::write(&input, &body).unwrap();
    let out = tmp.path().join("out.csv");
    let o = tag(model, &input, &out, &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(count_csv_rows(&out), 4);
    let text = std::fs::read_to_string(&out).unwrap();
    assert!(
        text.contains("line 3, column 'text': invalid UTF-8"),
        "{text}"
    );
    assert!(text.contains("line 4, column 24: invalid JSON"), "{text}");
    let s = summary(&o);
    assert_eq!(
        (s["rows"].as_u64(), s["bad_input_rows"].as_u64()),
        (Some(4), Some(2))
    );
}

#[test]
fn whole_job_failures_are_one_line_exit_2_and_leave_nothing() {
    let model = baseline();
    let tmp = tempfile::tempdir().unwrap();
    let good = tmp.path().join("in.csv");
    std::fs::write(&good, "id,text\n1,where is my parcel\n").unwrap();
    let file = tmp.path().join("file.txt");
    std::fs::write(&file, "x").unwrap();
    let dir_out = tmp.path().join("dir.csv");
    std::fs::create_dir(&dir_out).unwrap();
    let dup = tmp.path().join("dup.csv");
    std::fs::write(&dup, "id,text,id\n1,hello,2\n").unwrap();
    let esc = tmp.path().join("esc.csv");
    std::fs::write(&esc, "id,bo\u{1b}[2Jdy\n1,hello\n").unwrap();
    let out = tmp.path().join("o.csv");
    for (input, output, needle) in [
        // Output folders that cannot be made, or a directory in the way.
        (&good, file.join("o.csv"), "cannot write"),
        (&good, dir_out.clone(), "is a directory"),
        // Repeated input columns.
        (
            &dup,
            out.clone(),
            "column 'id': appears twice in the header (columns 1 and 3)",
        ),
        // A missing column whose neighbours hold control characters.
        (
            &esc,
            out.clone(),
            "column 'text': missing (found: id, bo\\u{1b}[2Jdy)",
        ),
    ] {
        let o = tag(model, input, &output, &[]);
        assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
        let e = stderr(&o);
        assert_eq!(e.trim().lines().count(), 1, "one line: {e}");
        assert!(e.contains(needle), "{needle}: {e}");
        assert!(!e.contains('\u{1b}'), "{e:?}");
        assert!(!out.exists());
    }
    let left: Vec<_> = std::fs::read_dir(tmp.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .filter(|n| n.starts_with('.'))
        .collect();
    assert!(left.is_empty(), "{left:?}");
}

#[test]
fn empty_input_gives_output_with_its_columns() {
    let model = baseline();
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("in.csv");
    std::fs::write(&input, "id,text,region\n\n").unwrap();
    let out = tmp.path().join("o.csv");
    let o = tag(model, &input, &out, &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(
        std::fs::read_to_string(&out).unwrap(),
        "id,text,region,l1,l2,l3,depth,conf_l1,conf_l2,conf_l3,guess_l1,guess_l2,guess_l3,out_of_scope,oos_score,actions,served_by,model_id,lang,note,error\n"
    );
    // Parquet output keeps the types too.
    let pq = tmp.path().join("o.parquet");
    let o = tag(model, &input, &pq, &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    use polars::prelude::SerReader;
    let df = polars::prelude::ParquetReader::new(std::fs::File::open(&pq).unwrap())
        .finish()
        .unwrap();
    assert_eq!(df.height(), 0);
    assert_eq!(df.width(), 21);
    assert_eq!(
        df.column("conf_l1").unwrap().dtype(),
        &polars::prelude::DataType::Float32
    );
    assert_eq!(summary(&o)["rows"], 0);
}

#[test]
fn eval_refuses_data_without_labels() {
    let model = baseline();
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("unlabelled.csv");
    std::fs::write(&data, "id,text\n1,where is my parcel\n2,refund please\n").unwrap();
    let report = tmp.path().join("r");
    let o = eval(model, &data, &report, &[]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    let e = stderr(&o);
    assert_eq!(e.trim().lines().count(), 1, "{e}");
    assert!(
        e.contains("unlabelled.csv") && e.contains("column 'l1'"),
        "{e}"
    );
    assert!(!report.join("report.json").exists());
}

/// Two-class training rows for the tiny transformer (`dir/train.csv`).
fn tiny_train_csv(dir: &Path) -> PathBuf {
    let train = dir.join("train.csv");
    let mut body = String::from("text,l1\n");
    for i in 0..40 {
        let (t, l) = if i % 2 == 0 {
            ("refund my money back please", "refund")
        } else {
            ("where is my parcel tracking late", "logistics")
        };
        body.push_str(&format!("{t} {i},{l}\n"));
    }
    std::fs::write(&train, body).unwrap();
    train
}

/// Train a transformer on a tiny random encoder through the CLI into
/// `dir/NAME`, with extra flags.
fn train_tiny_transformer(dir: &Path, name: &str, extra: &[&str]) -> (PathBuf, Output) {
    let train = tiny_train_csv(dir);
    train_tiny_transformer_on(dir, name, &train, extra)
}

/// [`train_tiny_transformer`] on the rows of `train`.
fn train_tiny_transformer_on(
    dir: &Path,
    name: &str,
    train: &Path,
    extra: &[&str],
) -> (PathBuf, Output) {
    let enc = dir.join("enc");
    if !enc.exists() {
        casetag_transformer::fixtures::write_tiny_bert(&enc, 7).unwrap();
    }
    let m = dir.join(name);
    let mut args = vec![
        "train",
        "--kind",
        "transformer",
        "--train",
        train.to_str().unwrap(),
        "--encoder",
        enc.to_str().unwrap(),
        "--epochs",
        "1",
        "--out",
        m.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    let o = run(&args);
    (m, o)
}

/// A transformer bundle on a tiny random encoder, trained through the CLI.
fn tiny_transformer(dir: &Path) -> PathBuf {
    let (m, o) = train_tiny_transformer(dir, "transformer", &[]);
    assert!(o.status.success(), "train: {}", stderr(&o));
    m
}

fn manifest(bundle: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(bundle.join("manifest.json")).unwrap()).unwrap()
}

/// Without `--mode`, the transformer fine-tunes its encoder's top 2 layers
/// for at most 3 epochs, reading buyer lines first; `--mode frozen` trains
/// the head alone, and explicit flags override the defaults.
#[test]
fn the_default_recipe_fine_tunes_the_top_two_layers() {
    let tmp = tempfile::tempdir().unwrap();
    let m = manifest(&tiny_transformer(tmp.path()));
    let hp = &m["hyper_parameters"];
    assert_eq!(hp["mode"]["fine_tune"]["top_layers"], 2, "{hp}");
    assert_eq!(hp["epochs"], 1, "--epochs overrides: {hp}");
    assert_eq!(hp["truncation"], "buyer_first", "{hp}");
    assert_eq!(hp["linear_probe"], true, "{hp}");
    let (frozen, o) = train_tiny_transformer(tmp.path(), "frozen", &["--mode", "frozen"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(manifest(&frozen)["hyper_parameters"]["mode"], "frozen");
    let (one, o) = train_tiny_transformer(tmp.path(), "one", &["--top-layers", "1"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(
        manifest(&one)["hyper_parameters"]["mode"]["fine_tune"]["top_layers"],
        1
    );
}

/// A report that evaluates a transformer breaks its metrics down by the
/// texts' whole length in that model's tokens as well as in words; one
/// without a transformer only by words.
#[test]
fn eval_slices_by_token_length_with_a_transformer() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tiny_transformer(tmp.path());
    let data = tmp.path().join("lengths.csv");
    let mut body = String::from("text,l1\n");
    for i in 1..=20 {
        let (t, l) = if i % 2 == 0 {
            ("refund my money", "refund")
        } else {
            ("where is my parcel", "logistics")
        };
        body.push_str(&format!("{} {t},{l}\n", "please ".repeat(i)));
    }
    std::fs::write(&data, body).unwrap();
    let (o, r) = eval_model(&t, &data, &tmp.path().join("r"), &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    let r = r.unwrap();
    let slices = r["details"][0]["slices"].as_array().unwrap();
    let of = |col: &str| -> Vec<(String, u64)> {
        slices
            .iter()
            .filter(|s| s["column"] == col)
            .map(|s| {
                (
                    s["value"].as_str().unwrap().to_string(),
                    s["n"].as_u64().unwrap(),
                )
            })
            .collect()
    };
    let tokens = of("tokens");
    assert_eq!(tokens.len(), 4, "{tokens:?}");
    assert!(
        tokens.iter().all(|(v, _)| v.ends_with(" tokens")),
        "{tokens:?}"
    );
    assert_eq!(tokens.iter().map(|(_, n)| n).sum::<u64>(), 20);
    assert_eq!(of("length").len(), 4);
    // The baseline alone: words only.
    let (o, r) = eval_fixture(&data, &tmp.path().join("b"), &["--unknown-labels", "wrong"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let r = r.unwrap();
    let cols: Vec<&str> = r["details"][0]["slices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["column"].as_str().unwrap())
        .collect();
    assert!(
        cols.contains(&"length") && !cols.contains(&"tokens"),
        "{cols:?}"
    );
}

/// The default transformer pools its scores with a lexical model trained on
/// the same rows; on a random encoder the lexical model carries the answer.
#[test]
fn transformer_pools_lexical_evidence() {
    let tmp = tempfile::tempdir().unwrap();
    // Frozen: the random encoder stays random (fine-tuned, it learns the
    // four validation rows as well as the lexical model does).
    let (fused, o) = train_tiny_transformer(tmp.path(), "transformer", &["--mode", "frozen"]);
    assert!(o.status.success(), "train: {}", stderr(&o));
    assert!(fused.join("fusion.json").is_file());
    assert!(fused.join("baseline.safetensors").is_file());
    let m = manifest(&fused);
    assert_eq!(m["kind"], "transformer");
    assert_eq!(m["hyper_parameters"]["fusion"], "lexical");
    let f = &m["validation_metrics"]["fusion"];
    assert_eq!(f["lexical_source"], "trained", "{f}");
    let w = f["weight"].as_f64().unwrap();
    assert!(w < 1.0, "a random encoder must not get all the weight: {f}");
    assert!(f["val_nll"].as_f64().unwrap() <= f["val_nll_transformer"].as_f64().unwrap());
    let input = tmp.path().join("in.csv");
    std::fs::write(
        &input,
        "id,text\na,please refund my money back\nb,my parcel is late where is the tracking\n",
    )
    .unwrap();
    let out = tmp.path().join("o.jsonl");
    let o = tag(&fused, &input, &out, &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    let rows = jsonl_rows(&out);
    assert_eq!(rows[0]["l1"], "refund", "{}", rows[0]);
    assert_eq!(rows[1]["l1"], "logistics", "{}", rows[1]);

    // Alone: no lexical model in the bundle.
    let (alone, o) = train_tiny_transformer(tmp.path(), "alone", &["--fusion", "none"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(!alone.join("fusion.json").exists());
    assert!(!alone.join("baseline.safetensors").exists());

    // A baseline bundle trained on the same rows serves as the lexical model.
    let train = tiny_train_csv(tmp.path());
    let lex = tmp.path().join("lex");
    let o = run(&[
        "train",
        "--kind",
        "baseline",
        "--train",
        train.to_str().unwrap(),
        "--out",
        lex.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let lex_id = manifest(&lex)["id"].clone();
    let (reused, o) = train_tiny_transformer(
        tmp.path(),
        "reused",
        &["--lexical-from", lex.to_str().unwrap()],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(
        manifest(&reused)["validation_metrics"]["fusion"]["lexical_source"],
        lex_id
    );
    // One trained on other rows is refused in one line, and so is the flag
    // where it means nothing.
    let (_, o) = train_tiny_transformer(
        tmp.path(),
        "other",
        &["--lexical-from", baseline().to_str().unwrap()],
    );
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    let e = stderr(&o);
    assert_eq!(e.trim().lines().count(), 1, "{e}");
    assert!(
        e.contains("--lexical-from") && e.contains("other rows"),
        "{e}"
    );
    let (_, o) = train_tiny_transformer(
        tmp.path(),
        "other",
        &["--fusion", "none", "--lexical-from", lex.to_str().unwrap()],
    );
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    // A bundle of another kind is refused before the transformer is fitted.
    let (_, o) = train_tiny_transformer(
        tmp.path(),
        "other",
        &["--lexical-from", reused.to_str().unwrap(), "--log", "info"],
    );
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    let e = stderr(&o);
    assert!(e.contains("a baseline bundle is needed"), "{e}");
    assert!(
        !e.contains("linear probe"),
        "refused only after fitting: {e}"
    );
}

#[test]
fn fallback_must_be_a_baseline() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tiny_transformer(tmp.path());
    let input = tmp.path().join("in.csv");
    std::fs::write(&input, "text\nwhere is my parcel\n").unwrap();
    let out = tmp.path().join("o.csv");
    let o = tag(
        baseline(),
        &input,
        &out,
        &["--fallback", t.to_str().unwrap()],
    );
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    let e = stderr(&o);
    assert_eq!(e.trim().lines().count(), 1, "{e}");
    assert!(e.contains("--fallback") && e.contains("baseline"), "{e}");
    assert!(!out.exists());
    // The transformer with the baseline behind it: rows counted by model.
    let o = tag(
        &t,
        &input,
        &out,
        &["--fallback", baseline().to_str().unwrap()],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let s = summary(&o);
    assert_eq!(s["rows_by_model"]["transformer"], 1, "{s}");
    assert_eq!(s["fallback_rows"], 0);
    // A primary that does not load: the fallback answers, and says so.
    let broken = tmp.path().join("broken");
    copy_bundle(&t, &broken);
    std::fs::write(broken.join("manifest.json"), "{").unwrap();
    let o = tag(
        &broken,
        &input,
        &out,
        &["--fallback", baseline().to_str().unwrap()],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let s = summary(&o);
    assert_eq!(s["rows_by_model"]["baseline"], 1, "{s}");
    assert_eq!(s["fallback_rows"], 1, "{s}");
    assert_eq!(s["primary_loaded"], false, "{s}");
}

/// Run `tag` until it stops at `failpoint` (or, with `None`, is killed
/// after `wait`), kill it with SIGKILL and check it left no output.
fn kill_tag(
    model: &Path,
    input: &Path,
    out: &Path,
    args: &[&str],
    failpoint: Option<&str>,
    wait: std::time::Duration,
) {
    use std::io::BufRead;
    let mut cmd = bin();
    cmd.args([
        "tag",
        "--model",
        model.to_str().unwrap(),
        "--input",
        input.to_str().unwrap(),
    ])
    .args(["--output", out.to_str().unwrap()])
    .args(args)
    .stderr(std::process::Stdio::piped())
    .stdout(std::process::Stdio::null());
    if let Some(f) = failpoint {
        cmd.env("CASETAG_TAG_FAILPOINT", f);
    }
    let mut child = cmd.spawn().unwrap();
    match failpoint {
        Some(f) => {
            let err = std::io::BufReader::new(child.stderr.take().unwrap());
            let mut seen = Vec::new();
            let mut reached = false;
            for line in err.lines() {
                let line = line.unwrap();
                if line.contains("failpoint") {
                    reached = true;
                    break;
                }
                seen.push(line);
            }
            assert!(reached, "{f}: ended before its failpoint: {seen:?}");
        }
        None => std::thread::sleep(wait),
    }
    child.kill().unwrap();
    child.wait().unwrap();
}

/// Property: a `tag` job killed with SIGKILL at any point and rerun with
/// `--resume` writes the same bytes as a job never interrupted. Kill points:
/// after a chunk's part file is written but before it is committed, right
/// after a commit, at random chunks (seeded), and at random times.
#[test]
fn killed_tag_resumes_to_identical_output() {
    use rand::{Rng, SeedableRng};
    let model = baseline();
    let tmp = tempfile::tempdir().unwrap();
    let input = root().join("data/aftersales/test.csv");
    let chunk = ["--chunk-rows", "97"];
    let n_chunks = count_csv_rows(&input).div_ceil(97);
    let mut rng = rand::rngs::StdRng::seed_from_u64(16);
    for ext in ["csv", "parquet"] {
        let reference = tmp.path().join(format!("reference.{ext}"));
        let o = tag(model, &input, &reference, &chunk);
        assert!(o.status.success(), "{}", stderr(&o));
        let want = std::fs::read(&reference).unwrap();
        let out = tmp.path().join(format!("resumed.{ext}"));
        let mut points: Vec<Option<String>> = vec![
            Some("1:part".into()),
            Some(format!("{}:commit", n_chunks - 1)),
            Some(format!("{n_chunks}:part")),
        ];
        for _ in 0..2 {
            let k = rng.random_range(1..=n_chunks);
            points.push(Some(format!(
                "{k}:{}",
                ["part", "commit"][rng.random_range(0..2)]
            )));
        }
        points.push(None);
        for p in points {
            let wait = std::time::Duration::from_millis(rng.random_range(50..1500));
            kill_tag(model, &input, &out, &chunk, p.as_deref(), wait);
            let ctx = format!("{ext}, killed at {p:?} / {wait:?}");
            if p.is_some() {
                assert!(!out.exists(), "{ctx}: output appeared before the end");
                assert!(
                    tmp.path()
                        .join(format!(".resumed.{ext}.casetag-job"))
                        .is_dir(),
                    "{ctx}"
                );
            }
            // Other options are refused: the output would differ.
            if p.as_deref() == Some(format!("{}:commit", n_chunks - 1).as_str()) {
                let o = tag(model, &input, &out, &["--chunk-rows", "50", "--resume"]);
                assert_eq!(o.status.code(), Some(2), "{ctx}: {}", stderr(&o));
                assert!(stderr(&o).contains("--resume"), "{}", stderr(&o));
            }
            let mut args = chunk.to_vec();
            args.push("--resume");
            let o = tag(model, &input, &out, &args);
            assert!(o.status.success(), "{ctx}: {}", stderr(&o));
            assert!(
                std::fs::read(&out).unwrap() == want,
                "{ctx}: output differs"
            );
            let s = summary(&o);
            assert_eq!(
                s["rows"].as_u64(),
                Some(count_csv_rows(&input) as u64),
                "{ctx}"
            );
            std::fs::remove_file(&out).unwrap();
        }
        // Without --resume a killed job's state is dropped and the job
        // starts over; nothing is left beside the output afterwards.
        kill_tag(
            model,
            &input,
            &out,
            &chunk,
            Some("2:commit"),
            Default::default(),
        );
        let o = tag(model, &input, &out, &chunk);
        assert!(o.status.success(), "{}", stderr(&o));
        assert_eq!(summary(&o)["resumed_rows"], 0);
        assert!(std::fs::read(&out).unwrap() == want);
        let left: Vec<_> = std::fs::read_dir(tmp.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
            .filter(|n| n.starts_with('.'))
            .collect();
        assert!(left.is_empty(), "{left:?}");
    }
}

/// `tag --stream-novelty` judges each row against the rows before it: its
/// answers do not depend on how the input is chunked, differ from those
/// judged case by case, and a killed job resumed with `--resume` carries
/// its window on, writing the same bytes as a job never interrupted.
#[test]
fn stream_tag_is_chunk_free_and_resumes_its_window() {
    let tmp = tempfile::tempdir().unwrap();
    // Five intents, so the detector can learn from hiding some of them.
    let train = tmp.path().join("train.csv");
    let mut body = String::from("text,l1\n");
    let intents = [
        ("refund my money back", "refund"),
        ("the item arrived broken", "broken"),
        ("delivery is late again", "late"),
        ("tracking says parcel lost", "lost"),
        ("i want to leave a review", "review"),
    ];
    for i in 0..120 {
        let (t, l) = intents[i % intents.len()];
        body.push_str(&format!(
            "{t} {} {},{l}\n",
            ["please", "now", "thanks"][i % 3],
            i / 5
        ));
    }
    std::fs::write(&train, body).unwrap();
    let (model, o) = train_tiny_transformer_on(tmp.path(), "m", &train, &["--mode", "frozen"]);
    assert!(o.status.success(), "train: {}", stderr(&o));
    let input = tmp.path().join("in.csv");
    let mut body = String::from("text\n");
    let words = [
        "refund", "parcel", "late", "voucher", "broken", "seller", "zzz", "colour",
    ];
    for i in 0..300usize {
        let (a, b) = (words[i % words.len()], words[(i * 7 / 3) % words.len()]);
        body.push_str(&format!("{a} {b} my order {} please\n", i % 23));
    }
    std::fs::write(&input, body).unwrap();
    let stream = ["--stream-novelty", "--stream-window", "40"];
    let run_tag = |out: &Path, chunk: &str, extra: &[&str]| {
        let mut args = vec!["--chunk-rows", chunk];
        args.extend_from_slice(extra);
        let o = tag(&model, &input, out, &args);
        assert!(o.status.success(), "{extra:?}: {}", stderr(&o));
        o
    };
    let reference = tmp.path().join("reference.jsonl");
    let o = run_tag(&reference, "37", &stream);
    assert_eq!(summary(&o)["stream_novelty"], true, "{}", stdout(&o));
    assert_eq!(summary(&o)["batch_novelty"], false);
    let want = std::fs::read(&reference).unwrap();
    let scores = |p: &Path| -> Vec<f64> {
        jsonl_rows(p)
            .iter()
            .map(|r| r["oos_score"].as_f64().unwrap())
            .collect()
    };
    // The encoder's floats move in their last digits with the batch's
    // padding, as they do case by case; the stream itself is chunk-free.
    let whole = tmp.path().join("whole.jsonl");
    run_tag(&whole, "100000", &stream);
    for (i, (a, b)) in scores(&whole).iter().zip(scores(&reference)).enumerate() {
        assert!(
            (a - b).abs() < 1e-3,
            "row {i}: {a} vs {b}: chunking changed answers"
        );
    }
    let per_case = tmp.path().join("per_case.jsonl");
    let o = run_tag(&per_case, "37", &[]);
    assert_eq!(summary(&o)["stream_novelty"], false);
    let moved = scores(&per_case)
        .iter()
        .zip(scores(&reference))
        .filter(|(a, b)| (*a - b).abs() > 1e-3)
        .count();
    assert!(
        moved > 100,
        "the stream is not used: {moved} of 300 rows moved"
    );

    let mut chunk_stream = vec!["--chunk-rows", "37"];
    chunk_stream.extend_from_slice(&stream);
    // Each file of a directory is a stream of its own: two copies tag alike.
    let dir = tmp.path().join("dir");
    std::fs::create_dir(&dir).unwrap();
    for f in ["a.csv", "b.csv"] {
        std::fs::copy(&input, dir.join(f)).unwrap();
    }
    let mut args = chunk_stream.clone();
    args.extend(["--output-format", "jsonl"]);
    let o = tag(&model, &dir, &tmp.path().join("dir_out"), &args);
    assert!(o.status.success(), "{}", stderr(&o));
    for f in ["a.jsonl", "b.jsonl"] {
        let got = std::fs::read(tmp.path().join("dir_out").join(f)).unwrap();
        assert!(got == want, "{f} differs from the file tagged alone");
    }

    let out = tmp.path().join("resumed.jsonl");
    let job = tmp.path().join(".resumed.jsonl.casetag-job");
    let kill_at = |point| {
        kill_tag(
            &model,
            &input,
            &out,
            &chunk_stream,
            Some(point),
            Default::default(),
        )
    };
    let resume = |extra: &[&str]| {
        let mut args = extra.to_vec();
        args.push("--resume");
        tag(&model, &input, &out, &args)
    };
    for point in ["1:part", "3:commit", "5:part", "8:commit"] {
        kill_at(point);
        if point == "3:commit" {
            // Another window would give other answers: refused.
            let o = resume(&["--chunk-rows", "37", "--stream-novelty"]);
            assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
            kill_at(point);
            // A damaged window is named, not silently restarted.
            std::fs::write(job.join("carry-00000003.bin"), b"junk").unwrap();
            let o = resume(&chunk_stream);
            assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
            assert!(stderr(&o).contains("stream window"), "{}", stderr(&o));
            kill_at(point);
        }
        let o = resume(&chunk_stream);
        assert!(o.status.success(), "{point}: {}", stderr(&o));
        assert!(
            std::fs::read(&out).unwrap() == want,
            "{point}: output differs"
        );
        assert!(!job.exists());
        std::fs::remove_file(&out).unwrap();
    }
}

/// Every file of a bundle is created like any other file (its mode follows
/// the umask), so another account can serve or tag with it.
#[cfg(unix)]
#[test]
fn bundle_files_follow_the_umask() {
    use std::os::unix::fs::PermissionsExt;
    let tmp = tempfile::tempdir().unwrap();
    let t = tiny_transformer(tmp.path());
    let probe = tmp.path().join("probe");
    std::fs::write(&probe, b"x").unwrap();
    let want = std::fs::metadata(&probe).unwrap().permissions().mode() & 0o777;
    for bundle in [t.as_path(), baseline()] {
        for e in std::fs::read_dir(bundle).unwrap() {
            let e = e.unwrap();
            let mode = e.metadata().unwrap().permissions().mode() & 0o777;
            assert_eq!(
                mode,
                want,
                "{}: mode {mode:o}, want {want:o}",
                e.path().display()
            );
        }
    }
}

/// `--root` goes before or after the action; an empty or misshapen registry
/// says what layout it expects; a format 1 bundle loads only once sealed.
#[test]
fn models_root_anywhere_and_seal() {
    let tmp = tempfile::tempdir().unwrap();
    let reg = tmp.path().join("reg");
    let v1 = reg.join("tagger/v1");
    copy_bundle(baseline(), &v1);
    let root = reg.to_str().unwrap();
    let o = run(&["models", "list", "--root", root]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("tagger/v1\tbaseline"), "{}", stdout(&o));
    let o = run(&["models", "list", "--root", tmp.path().to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("NAME/VERSION/manifest.json"),
        "{}",
        stderr(&o)
    );
    // A bundle declared format 1 without its digest is refused by every
    // command until `models seal` verifies it.
    let mp = v1.join("manifest.json");
    let text = std::fs::read_to_string(&mp).unwrap();
    std::fs::write(&mp, text.replace("\"format\": 2", "\"format\": 1")).unwrap();
    std::fs::remove_file(v1.join("manifest.sha256")).unwrap();
    let o = run(&["models", "show", "tagger/v1", "--root", root]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("models seal"), "{}", stderr(&o));
    let o = run(&["models", "seal", "tagger/v1", "--root", root]);
    assert!(o.status.success(), "{}", stderr(&o));
    let o = run(&["models", "show", "tagger/v1", "--root", root]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&stdout(&o)).unwrap()["format"],
        2
    );
}

fn dir_files(d: &Path) -> BTreeMap<String, Vec<u8>> {
    std::fs::read_dir(d)
        .unwrap()
        .map(|e| {
            let p = e.unwrap().path();
            (
                p.file_name().unwrap().to_string_lossy().into_owned(),
                std::fs::read(&p).unwrap(),
            )
        })
        .collect()
}

/// `tag --input DIR --shard I --shards N`: every file falls to exactly one
/// shard, the shards' outputs together are the single run's, and a re-run
/// of one index replaces its files.
#[test]
fn sharded_tag_equals_one_run() {
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("in");
    std::fs::create_dir(&input).unwrap();
    let texts = [
        "where is my parcel it has not arrived",
        "please refund my order",
        "I want to cancel the order before it ships",
        "",
        "the seller sent the wrong colour, I want a return",
    ];
    for f in 0..5 {
        let mut body = String::from("id,text\n");
        for i in 0..12 {
            body.push_str(&format!("f{f}r{i},\"{}\"\n", texts[(f + i) % texts.len()]));
        }
        std::fs::write(input.join(format!("part-{f}.csv")), body).unwrap();
    }
    std::fs::write(
        input.join("part-9.jsonl"),
        "{\"id\":\"j1\",\"text\":\"refund please\"}\n{\"id\":\"j2\",\"text\":\"late parcel\"}\n",
    )
    .unwrap();
    std::fs::write(input.join("README.txt"), "not a table").unwrap();
    let m = baseline().to_str().unwrap();
    let tag_dir = |out: &Path, extra: &[&str]| tag(baseline(), &input, out, extra);
    let one = tmp.path().join("one");
    let o = tag_dir(&one, &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    let s = summary(&o);
    assert_eq!(s["rows"], 62, "{s}");
    assert_eq!(s["files"].as_array().unwrap().len(), 6, "{s}");
    let whole = dir_files(&one);
    assert_eq!(whole.len(), 6, "{:?}", whole.keys());
    assert!(whole.contains_key("part-9.jsonl"));

    let sharded = tmp.path().join("sharded");
    let mut rows = 0;
    for i in 0..4 {
        let o = tag_dir(&sharded, &["--shard", &i.to_string(), "--shards", "4"]);
        assert!(o.status.success(), "{}", stderr(&o));
        rows += summary(&o)["rows"].as_u64().unwrap();
    }
    assert_eq!(rows, 62);
    assert_eq!(dir_files(&sharded), whole);
    // A re-run of one index replaces its outputs; nothing is duplicated.
    let o = tag_dir(&sharded, &["--shard", "1", "--shards", "4"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(dir_files(&sharded), whole);
    // A glob, and one format for every output.
    let glob = tmp.path().join("glob");
    let o = run(&[
        "tag",
        "--model",
        m,
        "--input",
        input.join("part-[0-9]*").to_str().unwrap(),
        "--output",
        glob.to_str().unwrap(),
    ]);
    assert_eq!(
        o.status.code(),
        Some(2),
        "brackets are not a glob: {}",
        stderr(&o)
    );
    // One format for every output, by its name or the extension's other
    // spelling.
    for (format, ext) in [("parquet", ".parquet"), ("ndjson", ".jsonl")] {
        let out = tmp.path().join(format);
        let o = run(&[
            "tag",
            "--model",
            m,
            "--input",
            input.join("part-?.csv").to_str().unwrap(),
            "--output",
            out.to_str().unwrap(),
            "--output-format",
            format,
        ]);
        assert!(o.status.success(), "{}", stderr(&o));
        let names: Vec<String> = dir_files(&out).into_keys().collect();
        assert_eq!(names.len(), 5, "{names:?}");
        assert!(names.iter().all(|n| n.ends_with(ext)), "{names:?}");
    }
    // Usage errors are one line, exit 2.
    for extra in [
        &["--shard", "4", "--shards", "4"][..],
        &["--shards", "0"][..],
        &["--output-format", "xlsx"][..],
    ] {
        let o = tag_dir(&tmp.path().join("bad"), extra);
        assert_eq!(o.status.code(), Some(2), "{extra:?}: {}", stderr(&o));
        assert_eq!(stderr(&o).trim().lines().count(), 1, "{}", stderr(&o));
    }
    let single = input.join("part-0.csv");
    let o = tag(
        baseline(),
        &single,
        &tmp.path().join("x.csv"),
        &["--shards", "2"],
    );
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("directory or glob"), "{}", stderr(&o));
}

/// `eval` of the baseline fixture on `data` into `out` with `extra` flags:
/// the output and the report, when one was written.
fn eval_fixture(data: &Path, out: &Path, extra: &[&str]) -> (Output, Option<serde_json::Value>) {
    eval_model(baseline(), data, out, extra)
}

/// `eval` of `model` on `data` into `out` with `extra` flags: the output
/// and the report, when one was written.
fn eval_model(
    model: &Path,
    data: &Path,
    out: &Path,
    extra: &[&str],
) -> (Output, Option<serde_json::Value>) {
    let o = eval(model, data, out, &[&["--resamples", "10"], extra].concat());
    let report = std::fs::read_to_string(out.join("report.json"))
        .ok()
        .map(|t| serde_json::from_str::<serde_json::Value>(&t).unwrap());
    (o, report)
}

/// A test set with tags the model's taxonomy does not know (added after it
/// was trained): refused by default with a hint, else scored as asked and
/// said in the report.
#[test]
fn eval_scores_labels_the_model_does_not_know_as_asked() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("new_labels.csv");
    std::fs::write(
        &data,
        "id,text,l1,l2,l3\n\
         a,my refund was approved but the money never arrived,returns_refunds,refund_request,refund_not_received\n\
         b,the refund never reached my card,returns_refunds,refund_request,refund_not_received\n\
         c,where is my refund it has been two weeks,returns_refunds,refund_request,refund_not_received\n\
         d,refund me in shop credit instead of to my card please,returns_refunds,refund_request,refund_to_wallet_2027\n\
         e,can the refund go to my wallet balance,returns_refunds,refund_request,refund_to_wallet_2027\n\
         f,can I pay with bitcoin,crypto_payments,,\n",
    )
    .unwrap();
    let eval = |policy: Option<&str>, out: &str| {
        let mut extra = vec![];
        if let Some(p) = policy {
            extra.extend(["--unknown-labels", p]);
        }
        eval_fixture(&data, &tmp.path().join(out), &extra)
    };
    let (o, r) = eval(None, "r0");
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    let e = stderr(&o);
    assert_eq!(e.trim().lines().count(), 1, "{e}");
    assert!(
        e.contains("--unknown-labels") && e.contains("refund_to_wallet_2027"),
        "{e}"
    );
    assert!(r.is_none());

    let (o, r) = eval(Some("wrong"), "r1");
    assert!(o.status.success(), "{}", stderr(&o));
    let r = r.unwrap();
    let u = &r["unknown_labels"][0];
    assert_eq!(u["rows"], 3, "{u}");
    assert_eq!(u["policy"], "wrong");
    assert_eq!(u["labels"]["crypto_payments"], 1, "{u}");
    let wrong = &r["models"][0];
    assert_eq!(wrong["n"], 6);
    assert_eq!(wrong["levels"]["l1"]["n"], 6);

    let (o, r) = eval(Some("parent"), "r2");
    assert!(o.status.success(), "{}", stderr(&o));
    let parent = &r.unwrap()["models"][0];
    // The two new L3 rows are scored down to L2; the unknown L1 stays wrong.
    assert_eq!(
        parent["levels"]["l3"]["n"].as_u64().unwrap() + 2,
        wrong["levels"]["l3"]["n"].as_u64().unwrap()
    );
    assert_eq!(parent["levels"]["l1"]["n"], 6);

    let (o, r) = eval(Some("drop"), "r3");
    assert!(o.status.success(), "{}", stderr(&o));
    let r = r.unwrap();
    assert_eq!(r["models"][0]["n"], 3);
    assert_eq!(r["unknown_labels"][0]["policy"], "drop");
}

/// Data labelled with another taxonomy version: a label map renames and
/// merges tags before scoring; a split tag cannot be mapped and is named,
/// in `eval` and in `monitor`.
#[test]
fn a_label_map_carries_labels_across_taxonomy_versions() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("old_labels.csv");
    std::fs::write(
        &data,
        "id,text,l1,l2,l3\n\
         a,my refund was approved but the money never arrived,returns_refunds,refund_request,refund_missing_v1\n\
         b,the refund never reached my card,returns_refunds,refund_request,refund_missing_v1\n\
         c,where is my refund it has been two weeks,refunds_v1,refund_request,refund_not_received\n\
         d,refund me in shop credit instead of to my card please,returns_refunds,refund_request,refund_other_v1\n",
    )
    .unwrap();
    let map = tmp.path().join("map.yaml");
    std::fs::write(
        &map,
        "refund_missing_v1: refund_not_received\nrefunds_v1: returns_refunds\n\
         refund_other_v1: [refund_not_received, refund_wrong_method]\n",
    )
    .unwrap();
    let eval = |policy: &str, out: &str| {
        let extra = [
            "--label-map",
            map.to_str().unwrap(),
            "--unknown-labels",
            policy,
        ];
        eval_fixture(&data, &tmp.path().join(out), &extra)
    };
    // By default the split tag stops the run, named with what it became.
    let (o, r) = eval("error", "r0");
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    let e = stderr(&o);
    assert_eq!(e.trim().lines().count(), 1, "{e}");
    assert!(
        e.contains("refund_other_v1") && e.contains("refund_wrong_method"),
        "{e}"
    );
    assert!(r.is_none());
    // Dropping it, the three mapped rows are scored as the new tags.
    let (o, r) = eval("drop", "r1");
    assert!(o.status.success(), "{}", stderr(&o));
    let r = r.unwrap();
    assert_eq!(r["models"][0]["n"], 3, "{}", r["unknown_labels"]);
    let map_entry = r["unknown_labels"]
        .as_array()
        .unwrap()
        .iter()
        .find(|u| u.get("label_map").is_some())
        .expect("the report records the map");
    assert_eq!(map_entry["unmapped_split_tags"]["refund_other_v1"], 1);
    let mapped: u64 = map_entry["mapped"]
        .as_object()
        .unwrap()
        .values()
        .map(|v| v.as_u64().unwrap())
        .sum();
    assert_eq!(mapped, 3);
    // A bad map is one line naming the entry.
    std::fs::write(&map, "refund_other_v1: [only_one]\n").unwrap();
    let (o, _) = eval("drop", "r2");
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("refund_other_v1"), "{}", stderr(&o));

    // monitor: the reference's tags are mapped before comparing; a split
    // tag is compared as it is and named.
    let tagged = tmp.path().join("tagged.csv");
    assert!(tag(baseline(), &data, &tagged, &[]).status.success());
    let text = std::fs::read_to_string(&tagged).unwrap();
    let renamed = text.replace(",refund_not_received,", ",refund_missing_v1,");
    let reference = tmp.path().join("reference.csv");
    std::fs::write(&reference, &renamed).unwrap();
    std::fs::write(
        &map,
        "refund_missing_v1: refund_not_received\nreturns_refunds_v0: [returns_refunds, exchange_replacement]\n",
    )
    .unwrap();
    let o = run(&[
        "monitor",
        "--reference",
        reference.to_str().unwrap(),
        "--current",
        tagged.to_str().unwrap(),
        "--out",
        tmp.path().join("drift").to_str().unwrap(),
        "--label-map",
        map.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let drift: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(tmp.path().join("drift/drift.json")).unwrap(),
    )
    .unwrap();
    let notes = drift["notes"].to_string();
    assert!(notes.contains("relabelled"), "{notes}");
    assert!(
        !drift["findings"].to_string().contains("refund_missing_v1"),
        "mapped tags are not new or vanished: {}",
        drift["findings"]
    );
}

#[test]
fn shell_completions() {
    for shell in ["bash", "zsh", "fish"] {
        let o = run(&["completions", shell]);
        assert!(o.status.success(), "{shell}: {}", stderr(&o));
        let s = String::from_utf8_lossy(&o.stdout);
        assert!(
            s.contains("casetag") && s.contains("unknown-labels"),
            "{shell}"
        );
    }
    let o = run(&["completions", "tcsh"]);
    assert_eq!(o.status.code(), Some(2));
}

#[test]
fn precision_is_for_transformers_and_checked() {
    let r = root();
    let train = r.join("data/aftersales/train.csv");
    let out = tempfile::tempdir().unwrap();
    let m = out.path().join("m");
    for (kind, precision, says) in [
        (
            "baseline",
            "int8",
            "--precision: only for --kind transformer",
        ),
        ("transformer", "int4", "int4"),
    ] {
        let o = run(&[
            "train",
            "--kind",
            kind,
            "--train",
            train.to_str().unwrap(),
            "--precision",
            precision,
            "--out",
            m.to_str().unwrap(),
        ]);
        assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
        assert!(stderr(&o).contains(says), "{}", stderr(&o));
    }
    assert!(!m.exists());
}

/// A turn-level table is tagged one row per case (turns joined as `prepare`
/// joins them, in order of first appearance), with the same answers as the
/// joined cases given as a case-level table; a turn that cannot be joined is
/// kept with its error; `--text-column` names the text column.
#[test]
fn turn_level_input_is_tagged_per_case() {
    let model = baseline();
    let tmp = tempfile::tempdir().unwrap();
    let turns = root().join("data/aftersales/sample_turns.csv");
    let mut raw = std::fs::read_to_string(&turns).unwrap();
    raw.push_str("AS999999,two,buyer,not a turn number,,,,EU,chat\n");
    let input = tmp.path().join("turns.csv");
    std::fs::write(&input, &raw).unwrap();
    let out = tmp.path().join("cases.jsonl");
    let o = tag(model, &input, &out, &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    let rows = jsonl_rows(&out);
    let mut case_ids: Vec<String> = Vec::new();
    for line in raw.lines().skip(1) {
        let id = line.split(',').next().unwrap().to_string();
        if !id.is_empty() && !case_ids.contains(&id) && id != "AS999999" {
            case_ids.push(id);
        }
    }
    assert!(case_ids.len() > 3, "{case_ids:?}");
    assert_eq!(rows.len(), case_ids.len() + 1);
    let ids: Vec<&str> = rows.iter().map(|r| r["id"].as_str().unwrap()).collect();
    assert_eq!(
        ids[..case_ids.len()],
        case_ids.iter().map(String::as_str).collect::<Vec<_>>()[..]
    );
    let first = rows[0]["text"].as_str().unwrap();
    assert!(
        first.starts_with(
            "[buyer] Hello, this is a goodwill and vouchers matter.\n[agent] Thank you"
        ),
        "{first}"
    );
    let bad = rows.last().unwrap();
    assert_eq!(bad["id"], "AS999999");
    let err = bad["error"].as_str().unwrap();
    assert!(
        err.contains("column 'turn': 'two' is not an integer"),
        "{err}"
    );
    assert!(bad["pred_l1"].is_null() && bad["l1"].is_null(), "{bad}");
    let s = summary(&o);
    assert_eq!(s["rows"], rows.len());
    assert_eq!(s["untagged_rows"], 1);

    // The joined cases, as a case-level table under another column name,
    // get the same answers.
    let mut cases = String::from("id,body\n");
    for r in &rows[..case_ids.len()] {
        let text = r["text"].as_str().unwrap().replace('"', "\"\"");
        cases.push_str(&format!("{},\"{text}\"\n", r["id"].as_str().unwrap()));
    }
    let case_input = tmp.path().join("cases.csv");
    std::fs::write(&case_input, cases).unwrap();
    let out2 = tmp.path().join("cases2.jsonl");
    let o = tag(model, &case_input, &out2, &["--text-column", "body"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let rows2 = jsonl_rows(&out2);
    assert_eq!(rows2.len(), case_ids.len());
    for (a, b) in rows.iter().zip(&rows2) {
        for k in ["l1", "l2", "l3", "conf_l1", "conf_l2", "conf_l3", "depth"] {
            let ka = if a.get(format!("pred_{k}")).is_some() {
                format!("pred_{k}")
            } else {
                k.to_string()
            };
            assert_eq!(a[&ka], b[k], "{k} of {}", a["id"]);
        }
    }
    // A --text-column the table lacks is one line naming it and the columns.
    let o = tag(
        model,
        &case_input,
        &tmp.path().join("x.csv"),
        &["--text-column", "message"],
    );
    assert_eq!(o.status.code(), Some(2));
    let e = stderr(&o);
    assert!(
        e.contains("column 'message': missing (found: id, body)"),
        "{e}"
    );
}

/// `monitor` on the bundled corpus: the test split, a fresh sample of the
/// validation split's distribution, is not flagged against it; the test
/// split with one L2 tag's cases repeated is, and `--fail-on-drift` exits
/// 3; a file `tag` did not write is refused naming what is missing.
#[test]
fn monitor_flags_a_shifted_label_mix_and_not_a_fresh_sample() {
    let model = baseline();
    let tmp = tempfile::tempdir().unwrap();
    let reference = tmp.path().join("val.parquet");
    let current = tmp.path().join("test.jsonl");
    for (src, out) in [("val", &reference), ("test", &current)] {
        let input = root().join(format!("data/aftersales/{src}.csv"));
        let o = tag(model, &input, out, &[]);
        assert!(o.status.success(), "{}", stderr(&o));
    }
    let monitor_with = |reference: &Path, current: &Path, out: &str, extra: &[&str]| {
        let mut args = vec![
            "monitor",
            "--reference",
            reference.to_str().unwrap(),
            "--current",
            current.to_str().unwrap(),
            "--out",
        ];
        let out = tmp.path().join(out);
        args.push(out.to_str().unwrap());
        args.extend_from_slice(extra);
        let o = run(&args);
        let report: serde_json::Value = std::fs::read_to_string(out.join("drift.json"))
            .map(|s| serde_json::from_str(&s).unwrap())
            .unwrap_or_default();
        (o, report, out)
    };
    let monitor =
        |current: &Path, out: &str, extra: &[&str]| monitor_with(&reference, current, out, extra);
    let (o, report, _) = monitor(&current, "fresh", &["--slice", "region", "--fail-on-drift"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(report["drift"], false, "{}", report["findings"]);
    assert_eq!(report["judged"], true);
    assert_eq!(report["levels"].as_array().unwrap().len(), 3);
    assert!(report["slices"].as_array().unwrap().len() >= 2);

    // The bundle itself as the reference: its validation answers.
    let (o, report, _) = monitor_with(model, &current, "bundle", &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(report["drift"], false, "{}", report["findings"]);
    assert_eq!(report["reference_rows"], 597);
    let bare = tmp.path().join("bare");
    std::fs::create_dir_all(&bare).unwrap();
    let (o, _, _) = monitor_with(&bare, &current, "bare-out", &[]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("no reference_sample.json"),
        "{}",
        stderr(&o)
    );

    // Repeat the cases of one mid-sized L2 tag nine more times (from about
    // 2% of the cases to about 17%).
    let rows = jsonl_rows(&current);
    let mut counts = BTreeMap::<String, usize>::new();
    for r in &rows {
        if let Some(l) = r["pred_l2"].as_str() {
            *counts.entry(l.to_string()).or_default() += 1;
        }
    }
    let mut by_size: Vec<(usize, String)> = counts.into_iter().map(|(l, n)| (n, l)).collect();
    by_size.sort();
    let shifted_tag = by_size[by_size.len() / 2].1.clone();
    let mut lines: Vec<String> = rows.iter().map(|r| r.to_string()).collect();
    for _ in 0..9 {
        for r in rows.iter().filter(|r| r["pred_l2"] == shifted_tag.as_str()) {
            lines.push(r.to_string());
        }
    }
    let shifted = tmp.path().join("shifted.jsonl");
    std::fs::write(&shifted, lines.join("\n") + "\n").unwrap();
    let (o, report, out) = monitor(&shifted, "shifted", &["--fail-on-drift"]);
    assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
    assert!(stderr(&o).contains("drift found"), "{}", stderr(&o));
    assert_eq!(report["drift"], true);
    let l2 = &report["levels"][1];
    assert_eq!(l2["drift"], true, "{l2}");
    let findings = report["findings"].to_string();
    assert!(findings.contains(&shifted_tag), "{findings}");
    let html = std::fs::read_to_string(out.join("drift.html")).unwrap();
    assert!(html.contains("Drift detected: yes") && html.contains(&shifted_tag));

    // Not a tagged file: one line naming the missing column.
    let (o, _, _) = monitor(&root().join("data/aftersales/sample_turns.csv"), "bad", &[]);
    assert_eq!(o.status.code(), Some(2));
    let e = stderr(&o);
    assert!(
        e.contains("column 'conf_l1': missing; is this a file written by `casetag tag`?"),
        "{e}"
    );
}

/// Flag errors clap finds (a value outside a flag's choices, a missing
/// flag, an unknown command) are one line naming the flag and the choices,
/// exit 2; `--help` still prints the full help and exits 0.
#[test]
fn usage_errors_are_one_line() {
    let train = [
        "train",
        "--kind",
        "transformer",
        "--train",
        "t.csv",
        "--out",
        "o",
    ];
    for (extra, names) in [
        (
            &["--mode", "warm"][..],
            &["--mode", "frozen", "finetune"][..],
        ),
        (
            &["--truncation", "tail"][..],
            &["--truncation", "head-tail", "windows"][..],
        ),
        (
            &["--precision", "int4"][..],
            &["--precision", "f32", "int8"][..],
        ),
        (
            &["--fusion", "late"][..],
            &["--fusion", "lexical", "none"][..],
        ),
        (
            &["--oos-detector", "knn"][..],
            &["--oos-detector", "meta", "msp"][..],
        ),
    ] {
        let o = run(&[&train[..], extra].concat());
        let e = stderr(&o);
        assert_eq!(o.status.code(), Some(2), "{extra:?}: {e}");
        assert_eq!(e.trim().lines().count(), 1, "{extra:?}: {e}");
        for n in names {
            assert!(e.contains(n), "{extra:?} should name {n}: {e}");
        }
    }
    for args in [&["tag", "--model", "m"][..], &["frob"][..]] {
        let o = run(args);
        let e = stderr(&o);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {e}");
        assert_eq!(e.trim().lines().count(), 1, "{args:?}: {e}");
        assert!(e.starts_with("error: "), "{e}");
    }
    let e = stderr(&run(&["tag", "--model", "m"]));
    assert!(e.contains("--input") && e.contains("--output"), "{e}");
    let o = run(&["train", "--help"]);
    assert!(o.status.success());
    let help = String::from_utf8_lossy(&o.stdout);
    assert!(
        help.lines().count() > 20 && help.contains("finetune"),
        "{help}"
    );
}

/// `train --from M --add FILE` writes a bundle that knows the new tag and
/// names its parent in the manifest, `models show` and `eval`'s report;
/// `--add` alone is a usage error.
#[test]
fn new_tags_are_added_from_a_few_examples() {
    let tmp = tempfile::tempdir().unwrap();
    let parent = tiny_transformer(tmp.path());
    let add = tmp.path().join("add.csv");
    let mut body = String::from("text,l1\n");
    for i in 0..6 {
        body.push_str(&format!("the item arrived broken damaged {i},damaged\n"));
    }
    std::fs::write(&add, &body).unwrap();
    let child = tmp.path().join("child");
    let o = run(&[
        "train",
        "--from",
        parent.to_str().unwrap(),
        "--add",
        add.to_str().unwrap(),
        "--out",
        child.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let m = manifest(&child);
    assert_eq!(m["parent"]["id"], manifest(&parent)["id"]);
    assert_eq!(m["parent"]["added"], serde_json::json!(["damaged"]));
    assert_eq!(m["parent"]["guard_margin"], 0.15, "the default check");
    assert_eq!(summary(&o)["parent"]["examples"]["damaged"], 6);
    // Where the parent answered most examples with one old tag, a warning
    // names it; otherwise there is none.
    let answers = m["parent"]["overlap"]["damaged"]["parent_answers"]
        .as_object()
        .unwrap();
    let counts: Vec<u64> = answers.values().map(|v| v.as_u64().unwrap()).collect();
    assert_eq!(counts.iter().sum::<u64>(), 6, "{answers:?}");
    let e = stderr(&o);
    let top = counts.iter().max().unwrap();
    let tag = answers
        .iter()
        .find(|(_, v)| v.as_u64() == Some(*top))
        .unwrap()
        .0;
    if *top >= 3 && tag != "out_of_scope" {
        assert!(
            e.contains(&format!("warning: new tag 'damaged' looks like '{tag}'")),
            "{e}"
        );
    } else {
        assert!(!e.contains("looks like"), "{e}");
    }
    let o = run(&["models", "show", child.to_str().unwrap()]);
    assert!(stdout(&o).contains("\"added\""), "{}", stdout(&o));

    let data = tmp.path().join("test.csv");
    std::fs::write(&data, format!("{body}refund my money back please,refund\n")).unwrap();
    let out = tmp.path().join("report");
    let o = eval(&child, &data, &out, &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    let r: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("report.json")).unwrap()).unwrap();
    assert_eq!(r["models"][0]["parent"]["added"][0], "damaged");
    let html = std::fs::read_to_string(out.join("report.html")).unwrap();
    assert!(html.contains("+ damaged"), "the report names the added tag");

    let o = run(&["train", "--add", add.to_str().unwrap(), "--out", "x"]);
    assert_eq!(o.status.code(), Some(2));
    assert_eq!(stderr(&o).trim().lines().count(), 1, "{}", stderr(&o));
    // A new model's settings are refused, not silently ignored.
    let (p, a) = (parent.to_str().unwrap(), add.to_str().unwrap());
    let o = run(&[
        "train",
        "--from",
        p,
        "--add",
        a,
        "--out",
        "y",
        "--precision",
        "int8",
    ]);
    assert_eq!(o.status.code(), Some(2));
    let e = stderr(&o);
    assert!(
        e.contains("--precision") && e.trim().lines().count() == 1,
        "{e}"
    );
    assert!(!Path::new("y").exists());
    // `--guard-margin off` records no check; a margin out of range is a
    // usage error.
    let plain = tmp.path().join("plain");
    let o = run(&[
        "train",
        "--from",
        p,
        "--add",
        a,
        "--out",
        plain.to_str().unwrap(),
        "--guard-margin",
        "off",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(manifest(&plain)["parent"].get("guard_margin").is_none());
    let o = run(&[
        "train",
        "--from",
        p,
        "--add",
        a,
        "--out",
        "z",
        "--guard-margin",
        "3",
    ]);
    assert_eq!(o.status.code(), Some(2));
    let e = stderr(&o);
    assert!(
        e.contains("--guard-margin") && e.contains("'3'") && e.trim().lines().count() == 1,
        "{e}"
    );
}

//! Integration tests of casetag-data on tiny fixtures written to temp dirs.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use casetag_core::TagPath;
use casetag_data::*;
use polars::prelude::*;

mod common;
use common::strs;

fn write(dir: &Path, name: &str, body: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, body).unwrap();
    p
}

fn cfg(input: PathBuf, out: PathBuf) -> PrepareConfig {
    PrepareConfig {
        input,
        out,
        ..Default::default()
    }
}

const TAXONOMY: &str = r#"
nodes:
  - id: refund
    children:
      - id: refund_request
        children: [{id: refund_not_received}, {id: refund_partial}]
  - id: logistics
    children:
      - id: delivery
        children: [{id: late}, {id: lost}]
"#;

#[test]
fn masking_placeholders_and_negatives() {
    let s = "Hi, I'm jo@x.io, tel +1 415-555-0132, card 4111 1111 1111 1111, \
             order #MP2026-48213977 and order no. AB-12345678. I paid $25.99 for 2 items.";
    let m = mask_pii(s);
    assert_eq!(
        m,
        "Hi, I'm <EMAIL>, tel <PHONE>, card <CARD>, order <ORDER_ID> and order no. <ORDER_ID>. \
         I paid $25.99 for 2 items."
    );
    assert_eq!(
        mask_pii("2 items, $25.99, 3 days"),
        "2 items, $25.99, 3 days"
    );
}

#[test]
fn normalization() {
    assert_eq!(
        normalize_text("\u{FEFF}  Ｍｙ  parcel\t\tis\u{0000} late \n\n\n  ok  "),
        "My parcel is late\nok"
    );
}

#[test]
fn turns_are_joined_in_order_with_speakers() {
    let df = df!(
        "case_id" => ["c2", "c1", "c1", "c2", "c1"],
        "turn" => [2i64, 3, 1, 1, 2],
        "speaker" => ["seller", "buyer", "buyer", "buyer", "seller"],
        "text" => ["we can refund", "thanks", "where is my parcel", "refund please", "it is on the way"],
        "l1" => [None, Some("logistics"), None, Some("refund"), None],
        "region" => ["EU", "US", "US", "EU", "US"]
    )
    .unwrap();
    let out = join_turns(df).unwrap();
    assert_eq!(
        out.get_column_names()
            .iter()
            .map(|n| n.as_str())
            .collect::<Vec<_>>(),
        ["id", "text", "l1", "l2", "l3", "region"]
    );
    // Cases keep their order of first appearance.
    assert_eq!(strs(&out, "id"), [Some("c2".into()), Some("c1".into())]);
    let texts = strs(&out, "text");
    assert_eq!(
        texts[1].as_deref(),
        Some("[buyer] where is my parcel\n[seller] it is on the way\n[buyer] thanks")
    );
    assert_eq!(
        texts[0].as_deref(),
        Some("[buyer] refund please\n[seller] we can refund")
    );
    // First non-empty label in turn order; pass-through first value.
    assert_eq!(
        strs(&out, "l1"),
        [Some("refund".into()), Some("logistics".into())]
    );
    assert_eq!(strs(&out, "l2"), [None, None]);
    assert_eq!(strs(&out, "region"), [Some("EU".into()), Some("US".into())]);
}

#[test]
fn turn_level_file_through_load_cases() {
    let dir = tempfile::tempdir().unwrap();
    let p = write(
        dir.path(),
        "turns.csv",
        "case_id,turn,speaker,text,l1,l2,l3,channel\n\
         a,2,agent,Call me at 415-555-0132,,,,app\n\
         a,1,buyer,\"Parcel for order 123456789\nnever came\",logistics,delivery,lost,app\n\
         b,1,buyer,hello,,,,web\n",
    );
    let (cases, extra) = load_cases(&p, &[]).unwrap();
    assert_eq!(cases.len(), 2);
    assert_eq!(cases[0].id, "a");
    assert_eq!(
        cases[0].text,
        "[buyer] Parcel for order <ORDER_ID>\nnever came\n[agent] Call me at <PHONE>"
    );
    assert_eq!(
        cases[0].label,
        Some(TagPath::new("logistics", Some("delivery"), Some("lost")))
    );
    assert_eq!(cases[1].label, None);
    assert_eq!(cases[1].row, 2);
    assert_eq!(
        strs(&extra, "channel"),
        [Some("app".into()), Some("web".into())]
    );
}

#[test]
fn bad_turn_value_names_the_row() {
    let dir = tempfile::tempdir().unwrap();
    let p = write(
        dir.path(),
        "turns.csv",
        "case_id,turn,speaker,text\na,1,buyer,hi\na,x,seller,yo\n",
    );
    let e = load_cases(&p, &[]).unwrap_err();
    let m = e.to_string();
    assert!(e.is_input());
    assert!(
        m.contains("turns.csv") && m.contains("row 2") && m.contains("'x'"),
        "{m}"
    );
}

#[test]
fn label_gap_in_load_cases_names_the_row() {
    let dir = tempfile::tempdir().unwrap();
    let p = write(
        dir.path(),
        "c.csv",
        "id,text,l1,l2,l3\nx1,hello,a,b,c\nx2,world,a,,c\n",
    );
    let m = load_cases(&p, &[]).unwrap_err().to_string();
    assert!(
        m.contains("c.csv: row 2") && m.contains("l2 is empty"),
        "{m}"
    );
}

#[test]
fn stratified_split_is_deterministic_and_covers_classes() {
    let mut keys = Vec::new();
    for (k, n) in [("a", 500), ("b", 300), ("c", 3), ("d", 1), ("<oos>", 100)] {
        keys.extend(std::iter::repeat_n(k.to_string(), n));
    }
    let r = [0.8, 0.1, 0.1];
    let a1 = split_indices(&keys, r, 7);
    let a2 = split_indices(&keys, r, 7);
    let a3 = split_indices(&keys, r, 8);
    assert_eq!(a1, a2);
    assert_ne!(a1, a3);
    let mut per: BTreeMap<&str, [usize; 3]> = BTreeMap::new();
    for (k, s) in keys.iter().zip(&a1) {
        per.entry(k).or_default()[*s as usize] += 1;
    }
    for (k, c) in &per {
        assert!(c[0] >= 1, "class {k} has no train row");
    }
    assert_eq!(per["a"], [400, 50, 50]);
    assert_eq!(per["b"], [240, 30, 30]);
    assert_eq!(per["d"], [1, 0, 0]);
    let total = keys.len() as f64;
    let train = a1.iter().filter(|&&s| s == 0).count() as f64;
    assert!((train / total - 0.8).abs() < 0.02);
}

fn labeled_csv(dir: &Path) -> PathBuf {
    let mut body = String::from("id,text,l1,l2,l3,region\n");
    for i in 0..40 {
        let (l1, l2, l3) = match i % 4 {
            0 => ("refund", "refund_request", "refund_not_received"),
            1 => ("refund", "refund_request", "refund_partial"),
            2 => ("logistics", "delivery", "late"),
            _ => ("logistics", "delivery", "lost"),
        };
        body.push_str(&format!(
            "c{i},case number {i} about {l3},{l1},{l2},{l3},EU\n"
        ));
    }
    body.push_str("c40,nothing to tag here,,,,EU\n");
    body.push_str("c41,   ,refund,,,EU\n");
    body.push_str(
        "c42,case number 1 about refund_partial,refund,refund_request,refund_partial,EU\n",
    );
    body.push_str("c43,mail a@b.com please,refund,refund_request,refund_partial,US\n");
    write(dir, "cases.csv", &body)
}

#[test]
fn prepare_writes_splits_taxonomy_and_stats() {
    let dir = tempfile::tempdir().unwrap();
    let input = labeled_csv(dir.path());
    let out = dir.path().join("prep");
    let tax = write(dir.path(), "tax.yaml", TAXONOMY);
    let mut c = cfg(input, out.clone());
    c.taxonomy = Some(tax);
    let stats = prepare(&c).unwrap();
    assert_eq!(stats.rows_in, 44);
    assert_eq!(stats.empty_dropped, 1);
    assert_eq!(stats.duplicates_dropped, 1);
    assert_eq!(stats.unknown_dropped, 0);
    assert_eq!(stats.out_of_scope, 1);
    assert_eq!(stats.rows_out, 42);
    assert_eq!(stats.per_class["refund/refund_request/refund_partial"], 11);
    assert_eq!(stats.per_class.len(), 4);
    assert_eq!(
        stats.splits.train + stats.splits.val + stats.splits.test,
        42
    );
    assert_eq!(stats.input_kind, "case");
    let train = read_table(&out.join("train.parquet")).unwrap();
    assert_eq!(train.height(), stats.splits.train);
    let names: Vec<String> = train
        .get_column_names()
        .iter()
        .map(|n| n.to_string())
        .collect();
    assert_eq!(names, ["id", "text", "l1", "l2", "l3", "region"]);
    let all: Vec<String> = ["train", "val", "test"]
        .iter()
        .flat_map(|s| {
            strs(
                &read_table(&out.join(format!("{s}.parquet"))).unwrap(),
                "text",
            )
        })
        .flatten()
        .collect();
    assert!(all.contains(&"mail <EMAIL> please".to_string()));
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("stats.json")).unwrap()).unwrap();
    for k in [
        "rows_in",
        "rows_out",
        "empty_dropped",
        "duplicates_dropped",
        "unknown_dropped",
        "out_of_scope",
        "per_class",
        "text_len_quantiles",
        "splits",
        "elapsed_s",
        "input_kind",
    ] {
        assert!(json.get(k).is_some(), "stats.json lacks {k}");
    }
    let t = casetag_core::Taxonomy::load(&out.join("taxonomy.yaml")).unwrap();
    assert_eq!(t.n_paths(), 4);
    // Same seed, same split.
    let again = prepare(&c).unwrap();
    assert_eq!(again.splits, stats.splits);
    let train2 = read_table(&out.join("train.parquet")).unwrap();
    assert_eq!(strs(&train, "id"), strs(&train2, "id"));
}

#[test]
fn unknown_labels_are_listed_or_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let mut body = String::from("id,text,l1,l2,l3\n");
    for i in 0..30 {
        let l3 = if i % 2 == 0 {
            format!("foo{i}")
        } else {
            "late".into()
        };
        body.push_str(&format!("c{i},text {i},logistics,delivery,{l3}\n"));
    }
    body.push_str("c30,text 30,refund,delivery,late\n");
    let input = write(dir.path(), "c.csv", &body);
    let tax = write(dir.path(), "tax.yaml", TAXONOMY);
    let mut c = cfg(input, dir.path().join("out"));
    c.taxonomy = Some(tax);
    let e = prepare(&c).unwrap_err();
    assert!(e.is_input());
    let m = e.to_string();
    assert!(!m.contains('\n'), "{m}");
    assert!(m.contains("16 row(s)"), "{m}");
    assert!(m.contains("row 1 (id c0): unknown l3 label 'foo0'"), "{m}");
    assert!(m.contains("and 6 more"), "{m}");
    assert!(m.contains("--drop-unknown"), "{m}");
    c.drop_unknown = true;
    let s = prepare(&c).unwrap();
    assert_eq!(s.unknown_dropped, 16);
    assert_eq!(s.rows_out, 15);
}

#[test]
fn taxonomy_is_inferred_without_file() {
    let dir = tempfile::tempdir().unwrap();
    let input = labeled_csv(dir.path());
    let s = prepare(&cfg(input, dir.path().join("o"))).unwrap();
    assert!(s.taxonomy_inferred);
    assert_eq!(s.per_class.len(), 4);
}

#[test]
fn malformed_inputs_give_one_line_errors() {
    let dir = tempfile::tempdir().unwrap();
    let no_text = write(dir.path(), "no_text.csv", "id,body,l1\n1,hello,a\n");
    let e = prepare(&cfg(no_text, dir.path().join("o1"))).unwrap_err();
    let m = e.to_string();
    assert!(e.is_input());
    assert!(
        m.contains("no_text.csv") && m.contains("column 'text'") && m.contains("id, body, l1"),
        "{m}"
    );
    assert!(!m.contains('\n'));

    let quotes = write(
        dir.path(),
        "quotes.csv",
        "id,text,l1\n1,\"unterminated,a\n2,fine,b\n3,\"x\"y\"z,a,extra,fields\n",
    );
    match prepare(&cfg(quotes.clone(), dir.path().join("o2"))) {
        Err(e) => {
            let m = e.to_string();
            assert!(e.is_input(), "{m}");
            assert!(m.contains("quotes.csv"), "{m}");
            assert!(!m.contains('\n'), "{m}");
        }
        Ok(s) => panic!("malformed CSV accepted: {s:?}"),
    }
    // The streaming reader keeps every row and names each fault.
    let c = ChunkReader::open(&quotes, 10)
        .unwrap()
        .next_chunk()
        .unwrap()
        .unwrap();
    assert_eq!(
        strs(&c.df, "id"),
        [Some("1".into()), Some("2".into()), Some("3".into())]
    );
    let q = quotes.display();
    assert_eq!(
        c.faults,
        [
            Some(format!(
                "{q}: line 2, column 'text': quoted field is never closed"
            )),
            None,
            Some(format!(
                "{q}: line 4, column 'text': text after a closing quote"
            )),
        ]
    );
    let open = write(
        dir.path(),
        "open.csv",
        "id,text\n1,ok\n2,\"never closed\n3,x\n",
    );
    let c = ChunkReader::open(&open, 10)
        .unwrap()
        .next_chunk()
        .unwrap()
        .unwrap();
    assert_eq!(c.df.height(), 3);
    let m = c.faults[1].as_deref().unwrap();
    assert!(
        m.contains("open.csv: line 3") && m.contains("never closed"),
        "{m}"
    );
    let m = prepare(&cfg(open, dir.path().join("o5")))
        .unwrap_err()
        .to_string();
    assert!(m.contains("open.csv") && !m.contains('\n'), "{m}");

    let bad_ext = write(dir.path(), "x.txt", "text\nhi\n");
    let m = prepare(&cfg(bad_ext, dir.path().join("o3")))
        .unwrap_err()
        .to_string();
    assert!(m.contains("x.txt") && m.contains("unsupported"), "{m}");

    let mut c = cfg(
        write(dir.path(), "ok.csv", "text\nhi\n"),
        dir.path().join("o4"),
    );
    c.split = [0.5, 0.2, 0.2];
    assert!(prepare(&c).unwrap_err().to_string().contains("sum to 1"));
}

#[test]
#[cfg_attr(
    not(has_banking77),
    ignore = "BANKING77 not found: put it in ../shared/data/banking77 or set CASETAG_SHARED_DATA"
)]
fn label_map_and_banking77() {
    // Set by the build script when the file exists (cfg has_banking77).
    let path = PathBuf::from(option_env!("CASETAG_BANKING77_TRAIN").unwrap_or_default());
    let dir = tempfile::tempdir().unwrap();
    let mut c = cfg(path.clone(), dir.path().join("b77"));
    c.label_columns = vec![("category".into(), "l1".into())];
    c.seed = 13;
    let s = prepare(&c).unwrap();
    assert_eq!(s.rows_in, 10003);
    assert_eq!(s.per_class.len(), 77);
    assert_eq!(s.out_of_scope, 0);
    assert_eq!(s.unknown_dropped, 0);
    assert_eq!(
        s.rows_out + s.duplicates_dropped + s.empty_dropped,
        s.rows_in
    );
    assert!(s.per_class.keys().all(|k| !k.contains('/')));
    let frac = s.splits.train as f64 / s.rows_out as f64;
    assert!((frac - 0.8).abs() < 0.01, "{frac}");
    let t = casetag_core::Taxonomy::load(&dir.path().join("b77/taxonomy.yaml")).unwrap();
    assert_eq!((t.depth(), t.n_paths()), (1, 77));
    // The same mapping through load_cases.
    let (cases, _) = load_cases(&path, &c.label_columns).unwrap();
    assert_eq!(cases.len(), 10003);
    assert_eq!(cases[0].label.as_ref().unwrap().l1, "card_arrival");
    // Without the mapping there is nothing to learn: every row is out of scope.
    let (cases, extra) = load_cases(&path, &[]).unwrap();
    assert!(cases.iter().all(|c| c.label.is_none()));
    assert!(extra.column("category").is_ok());
    // A mapping from a column that does not exist is named.
    let m = load_cases(&path, &[("intent".into(), "l1".into())])
        .unwrap_err()
        .to_string();
    assert!(
        m.contains("column 'intent'") && m.contains("category"),
        "{m}"
    );
}

fn roundtrip(fmt_ext: &str) {
    let dir = tempfile::tempdir().unwrap();
    let n = 1003usize;
    let mut src = df!(
        "id" => (0..n).map(|i| format!("c{i}")).collect::<Vec<_>>(),
        "text" => (0..n).map(|i| if i % 100 == 7 { None } else { Some(format!("line one {i}, \"quoted\"\nline two")) }).collect::<Vec<_>>(),
        "region" => (0..n).map(|i| ["EU", "US", "APAC"][i % 3]).collect::<Vec<_>>()
    )
    .unwrap();
    let input = dir.path().join(format!("in.{fmt_ext}"));
    write_table(&mut src, &input).unwrap();
    let mut r = ChunkReader::open(&input, 100).unwrap();
    if fmt_ext == "parquet" {
        assert_eq!(r.total_rows_hint(), Some(n));
    }
    let output = dir.path().join(format!("out.{fmt_ext}"));
    let mut w = ChunkWriter::create(&output, Format::from_path(&output).unwrap()).unwrap();
    let mut chunks = 0;
    let mut texts = 0;
    while let Some(mut chunk) = r.next_chunk().unwrap() {
        assert!(chunk.df.height() <= 100);
        assert!(chunk.faults.iter().all(Option::is_none));
        chunks += 1;
        let t = chunk_texts(&chunk.df, "text").unwrap();
        assert_eq!(t.len(), chunk.df.height());
        texts += t.iter().flatten().count();
        w.write(&mut chunk.df, &serde_json::Value::Null).unwrap();
    }
    w.finish().unwrap();
    assert_eq!(chunks, 11);
    assert_eq!(texts, n - 10);
    assert!(!std::fs::read_dir(dir.path()).unwrap().any(|e| e
        .unwrap()
        .file_name()
        .to_string_lossy()
        .contains(".tmp")));
    let back = read_table(&output).unwrap();
    assert_eq!(back.height(), n);
    let names: Vec<String> = back
        .get_column_names()
        .iter()
        .map(|s| s.to_string())
        .collect();
    assert_eq!(names, ["id", "text", "region"]);
    assert_eq!(strs(&back, "id"), strs(&src, "id"));
    assert_eq!(strs(&back, "text"), strs(&src, "text"));
    assert_eq!(strs(&back, "region"), strs(&src, "region"));
}

#[test]
fn chunk_roundtrip_csv() {
    roundtrip("csv");
}

#[test]
fn chunk_roundtrip_parquet() {
    roundtrip("parquet");
}

#[test]
fn chunk_roundtrip_jsonl() {
    roundtrip("jsonl");
}

#[test]
fn chunk_texts_reads_the_named_column() {
    let df = df!("body" => ["hi", " "]).unwrap();
    assert_eq!(
        chunk_texts(&df, "body").unwrap(),
        [Some("hi".to_string()), None]
    );
    let m = chunk_texts(&df, "text").unwrap_err().to_string();
    assert!(m.contains("column 'text'") && m.contains("body"), "{m}");
}

/// A turn-level table streams one row per case, its turns joined as
/// `prepare` joins them, across chunk boundaries and in any row order;
/// rows that cannot be joined are kept after the cases with their fault.
#[test]
fn turn_level_tables_stream_joined_cases() {
    let dir = tempfile::tempdir().unwrap();
    let p = write(
        dir.path(),
        "t.csv",
        "case_id,turn,speaker,text,region\n\
         a,2,seller,sorry about that,US\n\
         b,1,buyer,where is my parcel,ID\n\
         a,1,buyer,my order came broken,US\n\
         ,1,buyer,no case id,US\n\
         b,x,agent,bad turn,ID\n\
         c,1,buyer,\"refund, please\",BR\n",
    );
    let mut r = ChunkReader::open(&p, 2).unwrap();
    // Before the first read: the joined columns, without label columns the
    // input lacks.
    let cols: Vec<String> = r
        .empty_frame()
        .unwrap()
        .get_column_names()
        .iter()
        .map(|c| c.to_string())
        .collect();
    assert_eq!(cols, ["id", "text", "region"]);
    let mut ids = Vec::new();
    let mut texts = Vec::new();
    let mut faults = Vec::new();
    while let Some(c) = r.next_chunk().unwrap() {
        assert!(c.df.height() <= 2);
        ids.extend(strs(&c.df, "id"));
        texts.extend(chunk_texts(&c.df, "text").unwrap());
        faults.extend(c.faults);
    }
    assert_eq!(r.total_rows_hint(), Some(5));
    let ids: Vec<String> = ids.into_iter().map(Option::unwrap_or_default).collect();
    assert_eq!(ids, ["a", "b", "c", "", "b"]);
    assert_eq!(
        texts[0].as_deref(),
        Some("[buyer] my order came broken\n[seller] sorry about that")
    );
    assert_eq!(texts[1].as_deref(), Some("[buyer] where is my parcel"));
    assert_eq!(texts[3].as_deref(), Some("no case id"));
    assert_eq!(faults[..3], [None, None, None]);
    let f3 = faults[3].clone().unwrap();
    assert!(
        f3.contains("t.csv: row 4: column 'case_id' is empty"),
        "{f3}"
    );
    let f4 = faults[4].clone().unwrap();
    assert!(
        f4.contains("row 5: column 'turn': 'x' is not an integer"),
        "{f4}"
    );

    // Resuming after the first chunk hands out the same remaining rows.
    let mut r2 = ChunkReader::open(&p, 2).unwrap();
    let first = r2.next_chunk().unwrap().unwrap();
    let mut r3 = ChunkReader::open(&p, 2).unwrap();
    r3.seek(first.end).unwrap();
    let rest: Vec<String> = strs(&r3.next_chunk().unwrap().unwrap().df, "id")
        .into_iter()
        .map(Option::unwrap_or_default)
        .collect();
    assert_eq!(rest, ["c", ""]);
}

#[test]
fn turn_level_prepare_reports_kind() {
    let dir = tempfile::tempdir().unwrap();
    let p = write(
        dir.path(),
        "t.jsonl",
        "{\"case_id\":\"a\",\"turn\":2,\"speaker\":\"seller\",\"text\":\"ok\",\"l1\":null}\n\
         {\"case_id\":\"a\",\"turn\":1,\"speaker\":\"buyer\",\"text\":\"late\",\"l1\":\"logistics\"}\n\
         {\"case_id\":\"b\",\"turn\":1,\"speaker\":\"buyer\",\"text\":\"refund\",\"l1\":\"refund\"}\n",
    );
    let s = prepare(&cfg(p, dir.path().join("o"))).unwrap();
    assert_eq!(s.input_kind, "turn");
    assert_eq!((s.rows_in, s.cases_in, s.rows_out), (3, 2, 2));
}

#[test]
fn csv_stream_handles_bom_crlf_and_header_only() {
    let dir = tempfile::tempdir().unwrap();
    let p = write(
        dir.path(),
        "w.csv",
        "\u{FEFF}id,text\r\n1,\"multi\r\nline, \"\"quoted\"\"\"\r\n2,plain\r\n",
    );
    let mut r = ChunkReader::open(&p, 1).unwrap();
    let a = r.next_chunk().unwrap().unwrap().df;
    let b = r.next_chunk().unwrap().unwrap().df;
    assert!(r.next_chunk().unwrap().is_none());
    assert_eq!(r.rows_read(), 2);
    assert_eq!(strs(&a, "id"), [Some("1".into())]);
    // Raw text as read (the engine prepares it with the bundle's pipeline).
    assert_eq!(
        chunk_texts(&a, "text").unwrap(),
        [Some("multi\r\nline, \"quoted\"".to_string())]
    );
    assert_eq!(strs(&b, "text"), [Some("plain".into())]);
    let h = write(dir.path(), "h.csv", "id,text\n");
    assert!(ChunkReader::open(&h, 10)
        .unwrap()
        .next_chunk()
        .unwrap()
        .is_none());
    let e = write(dir.path(), "e.csv", "");
    assert!(ChunkReader::open(&e, 10).unwrap_err().is_input());
}

/// Ids of every row the streaming reader hands out, in order.
fn streamed_ids(path: &Path, chunk_rows: usize) -> Vec<String> {
    let mut r = ChunkReader::open(path, chunk_rows).unwrap();
    let mut ids = Vec::new();
    while let Some(c) = r.next_chunk().unwrap() {
        ids.extend(strs(&c.df, "id").into_iter().map(Option::unwrap));
    }
    ids
}

#[test]
fn blank_lines_do_not_end_a_csv_stream() {
    let dir = tempfile::tempdir().unwrap();
    let rows = |r: std::ops::Range<usize>| -> String {
        r.map(|i| format!("c{i},case number {i}\n")).collect()
    };
    let want: Vec<String> = (0..200).map(|i| format!("c{i}")).collect();
    // One empty line after row 100, read one row at a time.
    let one = write(
        dir.path(),
        "one.csv",
        &format!("id,text\n{}\n{}", rows(0..100), rows(100..200)),
    );
    assert_eq!(streamed_ids(&one, 1), want);
    // A run of blank lines longer than a chunk.
    let run = write(
        dir.path(),
        "run.csv",
        &format!(
            "id,text\n{}{}{}",
            rows(0..100),
            "\n \r\n".repeat(30),
            rows(100..200)
        ),
    );
    assert_eq!(streamed_ids(&run, 7), want);
    assert_eq!(streamed_ids(&run, 50_000), want);
}

/// Every row of a stream: ids and faults, in order.
fn stream_all(path: &Path, chunk_rows: usize) -> (Vec<Option<String>>, Vec<Option<String>>) {
    let mut r = ChunkReader::open(path, chunk_rows).unwrap();
    let (mut ids, mut faults) = (Vec::new(), Vec::new());
    while let Some(c) = r.next_chunk().unwrap() {
        assert_eq!(c.faults.len(), c.df.height());
        assert!(c.df.height() <= chunk_rows);
        ids.extend(strs(&c.df, "id"));
        faults.extend(c.faults);
    }
    (ids, faults)
}

#[test]
fn damaged_csv_rows_are_kept_with_their_fault() {
    let dir = tempfile::tempdir().unwrap();
    let mut body = b"id,text,region\n".to_vec();
    body.extend_from_slice(b"a,fine,EU\n");
    body.extend_from_slice(b"b,too,many,fields\n");
    body.extend_from_slice(b"c,too few\n");
    body.extend_from_slice(b"d,\"text\"after quote,EU\n");
    body.extend_from_slice(b"e,bad \xFF\xFE utf8,EU\n");
    body.extend_from_slice(b"f,nul \0 byte,EU\n");
    body.extend_from_slice(b"g,\"never closed,EU\n");
    body.extend_from_slice(b"h,\"multi\nline, fine\",US\n");
    body.extend_from_slice(b"i,last,US");
    let p = dir.path().join("bad.csv");
    std::fs::write(&p, &body).unwrap();
    let mut r = ChunkReader::open(&p, 4).unwrap();
    let mut all = Vec::new();
    while let Some(c) = r.next_chunk().unwrap() {
        let ids = strs(&c.df, "id");
        let texts = strs(&c.df, "text");
        let regions = strs(&c.df, "region");
        for i in 0..c.df.height() {
            all.push((
                ids[i].clone().unwrap(),
                texts[i].clone(),
                regions[i].clone(),
                c.faults[i].clone(),
            ));
        }
    }
    let ids: Vec<&str> = all.iter().map(|r| r.0.as_str()).collect();
    assert_eq!(ids, ["a", "b", "c", "d", "e", "f", "g", "h", "i"]);
    let fault = |id: &str| all.iter().find(|r| r.0 == id).unwrap().3.clone();
    for id in ["a", "h", "i"] {
        assert_eq!(fault(id), None, "{id}");
    }
    let name = p.display().to_string();
    let expect = [
        ("b", "line 3: expected 3 fields, found 4"),
        ("c", "line 4: expected 3 fields, found 2"),
        ("d", "line 5, column 'text': text after a closing quote"),
        ("e", "line 6, column 'text': invalid UTF-8"),
        ("f", "line 7, column 'text': NUL byte"),
        ("g", "line 8, column 'text': quoted field is never closed"),
    ];
    for (id, msg) in expect {
        assert_eq!(fault(id), Some(format!("{name}: {msg}")), "{id}");
    }
    // What can be recovered is kept.
    let row = |id: &str| all.iter().find(|r| r.0 == id).unwrap().clone();
    assert_eq!(row("c").2, None);
    assert_eq!(row("e").1.as_deref(), Some("bad \u{FFFD}\u{FFFD} utf8"));
    assert_eq!(row("h").1.as_deref(), Some("multi\nline, fine"));
    assert_eq!(row("i").2.as_deref(), Some("US"));
}

#[test]
fn damaged_jsonl_lines_are_kept_with_their_fault() {
    let dir = tempfile::tempdir().unwrap();
    let mut body = Vec::new();
    body.extend_from_slice(b"{\"id\":\"a\",\"text\":\"fine\"}\n");
    body.extend_from_slice(b"\n   \n");
    body.extend_from_slice(b"{\"id\":\"b\",\"text\":\"bad \xFF utf8\"}\n");
    body.extend_from_slice(b"{\"id\":\"c\",\"text\":\"nul \0 here\"}\n");
    body.extend_from_slice(b"{\"id\":\"d\",\"text\":\"trunc\n");
    body.extend_from_slice(b"[1, 2]\n");
    body.extend_from_slice(b"{\"id\":\"f\",\"text\":\"esc \x1b[2J here\"}\n");
    body.extend_from_slice(b"{\"id\":\"e\",\"text\":\"last\"}");
    let p = dir.path().join("bad.jsonl");
    std::fs::write(&p, &body).unwrap();
    let (ids, faults) = stream_all(&p, 2);
    let ids: Vec<Option<&str>> = ids.iter().map(|i| i.as_deref()).collect();
    assert_eq!(
        ids,
        [
            Some("a"),
            Some("b"),
            Some("c"),
            None,
            None,
            Some("f"),
            Some("e")
        ]
    );
    let name = p.display().to_string();
    assert_eq!(faults[0], None);
    assert_eq!(
        faults[1].as_deref(),
        Some(format!("{name}: line 4, column 'text': invalid UTF-8").as_str())
    );
    assert_eq!(
        faults[2].as_deref(),
        Some(format!("{name}: line 5, column 'text': NUL byte").as_str())
    );
    let f3 = faults[3].as_deref().unwrap();
    assert!(f3.starts_with(&format!("{name}: line 6, column ")), "{f3}");
    assert!(f3.contains("invalid JSON"), "{f3}");
    assert_eq!(
        faults[4].as_deref(),
        Some(format!("{name}: line 7: not a JSON object").as_str())
    );
    assert_eq!(
        faults[5].as_deref(),
        Some(format!("{name}: line 8, column 'text': control character").as_str())
    );
    assert_eq!(faults[6], None);
}

#[test]
fn empty_inputs_keep_their_columns() {
    let dir = tempfile::tempdir().unwrap();
    let h = write(dir.path(), "h.csv", "id,text,region\n\n\n");
    let r = ChunkReader::open(&h, 10).unwrap();
    let names: Vec<String> = r
        .empty_frame()
        .unwrap()
        .get_column_names()
        .iter()
        .map(|n| n.to_string())
        .collect();
    assert_eq!(names, ["id", "text", "region"]);
    let dup = write(dir.path(), "dup.csv", "id,text,id\n1,a,2\n");
    let m = ChunkReader::open(&dup, 10).unwrap_err().to_string();
    assert_eq!(
        m,
        format!(
            "{}: column 'id': appears twice in the header (columns 1 and 3)",
            dup.display()
        )
    );
    // The whole-table readers refuse it too.
    let m = read_table(&dup).unwrap_err().to_string();
    assert!(m.contains("appears twice"), "{m}");
}

#[test]
fn reading_resumes_at_a_chunk_end() {
    let dir = tempfile::tempdir().unwrap();
    let mut csv = String::from("id,text\n");
    let mut jsonl = String::new();
    for i in 0..57 {
        csv.push_str(&format!("r{i},\"case {i}\nsecond line\"\n"));
        if i % 5 == 0 {
            csv.push('\n');
            jsonl.push('\n');
        }
        jsonl.push_str(&format!("{{\"id\":\"r{i}\",\"text\":\"case {i}\"}}\n"));
    }
    let mut parquet = df!("id" => (0..57).map(|i| format!("r{i}")).collect::<Vec<_>>(),
        "text" => (0..57).map(|i| format!("case {i}")).collect::<Vec<_>>())
    .unwrap();
    let pq = dir.path().join("t.parquet");
    write_table(&mut parquet, &pq).unwrap();
    for p in [
        write(dir.path(), "t.csv", &csv),
        write(dir.path(), "t.jsonl", &jsonl),
        pq,
    ] {
        let (all, _) = stream_all(&p, 10);
        let mut r = ChunkReader::open(&p, 10).unwrap();
        r.next_chunk().unwrap();
        let at = r.next_chunk().unwrap().unwrap().end;
        let mut again = ChunkReader::open(&p, 10).unwrap();
        again.seek(at).unwrap();
        let mut rest = Vec::new();
        let mut faults = Vec::new();
        while let Some(c) = again.next_chunk().unwrap() {
            rest.extend(strs(&c.df, "id"));
            faults.extend(c.faults);
        }
        assert_eq!(rest, all[20..], "{}", p.display());
        assert!(faults.iter().all(Option::is_none));
    }
}

/// A random case table with faults injected at random rows, and what a
/// reader must make of each row.
struct Faulty {
    bytes: Vec<u8>,
    /// Per data row: its id, when the reader can still know it, and the
    /// line its fault must name (`None`: a clean row).
    rows: Vec<(Option<String>, Option<u64>)>,
}

fn random_text(rng: &mut rand::rngs::StdRng, multiline: bool) -> String {
    use rand::Rng;
    const WORDS: &[&str] = &[
        "refund",
        "parcel",
        "late",
        "broken,",
        "\"quoted\"",
        "order 12345",
        "où",
        "退款",
        "ok.",
        "seller said",
        "it's",
    ];
    let n = rng.random_range(1..8);
    let mut t = String::new();
    for k in 0..n {
        if k > 0 {
            t.push(if multiline && rng.random_bool(0.15) {
                '\n'
            } else {
                ' '
            });
        }
        t.push_str(WORDS[rng.random_range(0..WORDS.len())]);
    }
    // A field that starts with a quote character is left out: a stray
    // quote that meets it reads as valid CSV (see `stray quote` below).
    t.trim_start_matches('"').to_string()
}

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

fn faulty_csv(seed: u64, n: usize) -> Faulty {
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut bytes = b"id,text,region\n".to_vec();
    let mut line = 2u64;
    let mut rows = Vec::new();
    for i in 0..n {
        while rng.random_bool(0.1) {
            bytes.extend_from_slice([&b"\n"[..], b"  \r\n", b"\t\n"][rng.random_range(0..3)]);
            line += 1;
        }
        let id = format!("r{seed}-{i}");
        let kind = if rng.random_bool(0.3) {
            rng.random_range(0..6)
        } else {
            usize::MAX
        };
        // Ragged rows and text after a quote keep to one line: a record
        // spanning lines with either fault is read as a stray quote.
        let text = random_text(&mut rng, !matches!(kind, 0..=2));
        let region = ["EU", "US", "APAC"][i % 3];
        let mut rec = format!("{id},").into_bytes();
        match kind {
            // Too many fields.
            0 => rec.extend_from_slice(format!("{},{region},extra", csv_field(&text)).as_bytes()),
            // Too few.
            1 => rec.extend_from_slice(csv_field(&text).as_bytes()),
            // Text after a closing quote.
            2 => rec.extend_from_slice(
                format!("\"{}\"x,{region}", text.replace('"', "\"\"")).as_bytes(),
            ),
            // Invalid UTF-8.
            3 => {
                rec.extend_from_slice(b"\"\xC3\x28");
                rec.extend_from_slice(text.replace('"', "\"\"").as_bytes());
                rec.extend_from_slice(format!("\",{region}").as_bytes());
            }
            // A NUL byte.
            4 => rec.extend_from_slice(
                format!("\"{}\0\",{region}", text.replace('"', "\"\"")).as_bytes(),
            ),
            // A stray quote that never closes on its line.
            5 => rec.extend_from_slice(format!("\"{}", text.replace(['"', '\n'], " ")).as_bytes()),
            _ => rec.extend_from_slice(format!("{},{region}", csv_field(&text)).as_bytes()),
        }
        let last = i + 1 == n;
        if !(last && rng.random_bool(0.5)) {
            rec.extend_from_slice(if rng.random_bool(0.2) { b"\r\n" } else { b"\n" });
        }
        let breaks = rec.iter().filter(|&&b| b == b'\n').count() as u64;
        rows.push((Some(id), (kind != usize::MAX).then_some(line)));
        line += breaks;
        bytes.extend_from_slice(&rec);
    }
    Faulty { bytes, rows }
}

fn faulty_jsonl(seed: u64, n: usize) -> Faulty {
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut bytes = Vec::new();
    let mut line = 1u64;
    let mut rows = Vec::new();
    for i in 0..n {
        while rng.random_bool(0.1) {
            bytes.extend_from_slice(b"  \n");
            line += 1;
        }
        let id = format!("r{seed}-{i}");
        let text = random_text(&mut rng, true);
        let good = serde_json::json!({"id": id, "text": text, "region": "EU"}).to_string();
        let (rec, known) = match if i > 0 && rng.random_bool(0.3) {
            rng.random_range(0..5)
        } else {
            usize::MAX
        } {
            // Invalid UTF-8, a raw NUL or ESC inside the text: the row survives.
            k @ (0 | 1 | 4) => {
                let mut b = good.clone().into_bytes();
                let at = good.find("\"text\":\"").unwrap() + 8;
                b.insert(at, [0xFF, 0, 0, 0, 0x1B][k]);
                (b, Some(true))
            }
            // Cut short, and not an object: only the line is known.
            2 => (good.as_bytes()[..good.len() / 2].to_vec(), Some(false)),
            3 => (b"[\"not\", \"an object\"]".to_vec(), Some(false)),
            _ => (good.into_bytes(), None),
        };
        bytes.extend_from_slice(&rec);
        bytes.push(b'\n');
        rows.push(((known != Some(false)).then_some(id), known.map(|_| line)));
        line += 1;
    }
    Faulty { bytes, rows }
}

/// Property: whatever faults a table holds, every row comes out exactly
/// once, in order, and exactly the damaged rows carry a fault that names
/// their line. 200 seeded tables per format, read in chunks of 1 to 9 rows.
#[test]
fn every_row_comes_out_once_whatever_the_faults() {
    let dir = tempfile::tempdir().unwrap();
    for seed in 0..200u64 {
        for (ext, t) in [
            ("csv", faulty_csv(seed, 30)),
            ("jsonl", faulty_jsonl(seed, 30)),
        ] {
            let p = dir.path().join(format!("t{seed}.{ext}"));
            std::fs::write(&p, &t.bytes).unwrap();
            let chunk = 1 + (seed as usize % 9);
            let (ids, faults) = stream_all(&p, chunk);
            let ctx = format!("seed {seed}, {ext}, chunk {chunk}");
            let want: Vec<Option<String>> = t.rows.iter().map(|r| r.0.clone()).collect();
            assert_eq!(ids, want, "{ctx}: {:?}", String::from_utf8_lossy(&t.bytes));
            for (k, ((want_id, want_line), (id, fault))) in
                t.rows.iter().zip(ids.iter().zip(&faults)).enumerate()
            {
                assert_eq!(id, want_id, "{ctx}, row {k}");
                match (want_line, fault) {
                    (None, None) => {}
                    (Some(l), Some(f)) => assert!(
                        f.starts_with(&format!("{}: line {l}", p.display())),
                        "{ctx}, row {k}: {f}"
                    ),
                    _ => panic!("{ctx}, row {k}: expected fault at {want_line:?}, got {fault:?}"),
                }
            }
        }
    }
}

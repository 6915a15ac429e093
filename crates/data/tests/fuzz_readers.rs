//! Fuzz properties of the table readers: `read_table`, `load_cases` and the
//! streaming `ChunkReader`, for CSV, JSONL and Parquet (see
//! `docs/fuzzing.md`; corpus in `fuzz/corpus/{csv,jsonl,parquet}`).
//!
//! On any bytes: no panic; every error is an input error with a one-line
//! message naming the file; a table never has more rows than the input has
//! lines; the streaming reader hands out non-empty chunks of the header's
//! width, a fault (or none) per row whose message is one line naming the
//! file and the line, counts the rows in `rows_read`, and ends.
//!
//! On generated well-formed tables (any text: quotes, commas, newlines,
//! control characters, multi-byte characters): the whole-table and the
//! streaming reader return exactly the rows written, at every chunk size.

mod common;
#[path = "../../../fuzz/support.rs"]
mod support;

use std::path::{Path, PathBuf};

use casetag_data::{load_cases, read_table, write_table, ChunkReader, DataError};
use polars::prelude::{Column, DataFrame};
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;
use support::{ensure, line_count, one_line_message, Input};

/// Default number of mutated cases per target (CI); see `docs/fuzzing.md`.
const CASES: u32 = 300;
/// Generated tables per format.
const TABLE_CASES: u32 = 150;
const MAX_LEN: usize = 16 * 1024;

const CSV_TOKENS: &[&[u8]] = &[
    b",",
    b",,",
    b"\"",
    b"\"\"",
    b"\",\"",
    b"\n",
    b"\n\n",
    b"\r\n",
    b"\n\n\n\n\n\n\n\n",
    b"\"a\nb\"",
    b";",
    b"id,",
    b"text,",
    b"case_id,turn,speaker,text\n",
    b"l1,l2,l3",
    b"\xef\xbb\xbf",
    b"1,2,3,4,5,6,7,8,9\n",
];

const JSONL_TOKENS: &[&[u8]] = &[
    b"{",
    b"}",
    b"[",
    b"]",
    b"{}\n",
    b"[]\n",
    b"null\n",
    b"\n",
    b"\n\n\n",
    b",",
    b":",
    b"\"text\": ",
    b"\"id\": 1",
    b"\"\\u0000\"",
    b"\"\\ud800\"",
    b"\"\\n\"",
    b"{\"a\": {\"b\": [1, {\"c\": null}]}}",
    b"[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[",
    b"true",
    b"1.5e308",
    b"18446744073709551616",
];

const PARQUET_TOKENS: &[&[u8]] = &[
    b"PAR1",
    b"\x00\x00\x00\x00",
    b"\xff\xff\xff\x7f",
    b"\x15\x00",
    b"\x19\x1c",
    b"\x16\x00",
];

fn path_of(dir: &Path, ext: &str) -> PathBuf {
    dir.join(format!("input.{ext}"))
}

/// The checks every reader error must pass.
fn reader_error(e: &DataError, path: &Path) -> Result<(), TestCaseError> {
    let m = e.to_string();
    one_line_message(&m)?;
    ensure(e.is_input(), || {
        format!("reading a file gave an internal error: {m}")
    })?;
    ensure(m.contains(&path.display().to_string()), || {
        format!("error does not name the file: {m}")
    })
}

/// Read `bytes` as a table of extension `ext` with every reader.
/// `max_rows` bounds the rows a reader may return (None: no bound).
fn read_all_ways(
    bytes: &[u8],
    ext: &str,
    chunk_rows: usize,
    max_rows: Option<usize>,
) -> Result<(), TestCaseError> {
    let dir = tempfile::tempdir().unwrap();
    let path = path_of(dir.path(), ext);
    std::fs::write(&path, bytes).unwrap();
    let within = |what: &str, n: usize| {
        ensure(max_rows.is_none_or(|m| n <= m), || {
            format!("{what} returned {n} rows from an input of {max_rows:?} data lines")
        })
    };

    match read_table(&path) {
        Ok(df) => within("read_table", df.height())?,
        Err(e) => reader_error(&e, &path)?,
    }

    match load_cases(&path, &[]) {
        Ok((cases, extra)) => {
            within("load_cases", cases.len())?;
            ensure(extra.height() == cases.len(), || {
                format!(
                    "{} pass-through rows for {} cases",
                    extra.height(),
                    cases.len()
                )
            })?;
            for (i, c) in cases.iter().enumerate() {
                ensure(c.row == i + 1, || format!("case {i} has row {}", c.row))?;
            }
        }
        Err(e) => reader_error(&e, &path)?,
    }

    let mut r = match ChunkReader::open(&path, chunk_rows) {
        Ok(r) => r,
        Err(e) => return reader_error(&e, &path),
    };
    let mut total = 0usize;
    let mut width = None;
    // Every chunk has a row, so a reader that does not end is caught here.
    let max_chunks = max_rows.unwrap_or(1 << 20) + 2;
    for _ in 0..max_chunks {
        match r.next_chunk() {
            Ok(None) => {
                ensure(r.rows_read() == total, || {
                    format!("rows_read {} after {total} rows", r.rows_read())
                })?;
                within("ChunkReader", total)?;
                if let Some(hint) = r.total_rows_hint() {
                    ensure(total <= hint, || {
                        format!("{total} rows of {hint} announced")
                    })?;
                }
                return Ok(());
            }
            Ok(Some(chunk)) => {
                let df = &chunk.df;
                ensure(chunk.faults.len() == df.height(), || {
                    format!("{} faults for {} rows", chunk.faults.len(), df.height())
                })?;
                for f in chunk.faults.iter().flatten() {
                    one_line_message(f)?;
                    // Damaged input names its line; a turn that cannot be
                    // joined into its case names its data row.
                    ensure(
                        f.contains(&path.display().to_string())
                            && (f.contains("line ") || f.contains("row ")),
                        || format!("a row fault that does not name the file and line: {f}"),
                    )?;
                }
                ensure(df.height() >= 1, || "an empty chunk before the end".into())?;
                ensure(df.height() <= chunk_rows, || {
                    format!(
                        "a chunk of {} rows at --chunk-rows {chunk_rows}",
                        df.height()
                    )
                })?;
                let w = *width.get_or_insert(df.width());
                ensure(df.width() == w, || {
                    format!("chunk width {} after {w}", df.width())
                })?;
                total += df.height();
            }
            Err(e) => return reader_error(&e, &path),
        }
    }
    Err(TestCaseError::fail(format!(
        "ChunkReader did not end after {max_chunks} chunks ({total} rows)"
    )))
}

fn chunk_rows() -> impl Strategy<Value = usize> {
    prop_oneof![Just(1usize), Just(2), Just(3), Just(7), Just(10_000)]
}

/// Data lines of a CSV: lines after the header.
fn csv_data_lines(b: &[u8]) -> usize {
    line_count(b).saturating_sub(1)
}

/// Non-blank lines of a JSONL file.
fn jsonl_lines(b: &[u8]) -> usize {
    b.split(|&c| c == b'\n')
        .filter(|l| !l.iter().all(u8::is_ascii_whitespace))
        .count()
}

fn fuzz_format(
    target: &str,
    ext: &'static str,
    dict: &'static [&'static [u8]],
    max_rows: fn(&[u8]) -> Option<usize>,
) {
    support::replay(target, |i| {
        for c in [1, 3, 10_000] {
            read_all_ways(&i.bytes, ext, c, max_rows(&i.bytes))?;
        }
        Ok(())
    });
    let strategy = (
        support::mutated(support::corpus(target), dict, 6, MAX_LEN),
        chunk_rows(),
    );
    support::check(target, CASES, strategy, |(i, c): (Input, usize)| {
        read_all_ways(&i.bytes, ext, c, max_rows(&i.bytes))
    });
}

#[test]
fn fuzz_csv_reader() {
    fuzz_format("csv", "csv", CSV_TOKENS, |b| Some(csv_data_lines(b)));
}

#[test]
fn fuzz_jsonl_reader() {
    fuzz_format("jsonl", "jsonl", JSONL_TOKENS, |b| Some(jsonl_lines(b)));
}

#[test]
fn fuzz_parquet_reader() {
    fuzz_format("parquet", "parquet", PARQUET_TOKENS, |_| None);
}

// ------------------------------------------------------ generated tables

/// A table of text cells (`None`: missing), all columns the same length.
#[derive(Clone, Debug)]
struct Table {
    columns: Vec<String>,
    rows: Vec<Vec<Option<String>>>,
}

fn cell() -> impl Strategy<Value = Option<String>> {
    let text = proptest::collection::vec(
        prop_oneof![
            6 => proptest::char::range('a', 'z'),
            1 => Just(' '),
            1 => Just(','),
            1 => Just('"'),
            1 => Just('\n'),
            1 => Just('\r'),
            1 => Just('\t'),
            1 => Just('\u{1}'),
            1 => Just('0'),
            1 => Just('退'),
            1 => Just('📦'),
            1 => Just('\u{feff}'),
        ],
        0..12,
    )
    .prop_map(|cs| cs.into_iter().collect::<String>());
    prop_oneof![6 => text.prop_map(Some), 1 => Just(None)]
}

fn table() -> impl Strategy<Value = Table> {
    (1usize..5, 0usize..40).prop_flat_map(|(k, n)| {
        proptest::collection::vec(proptest::collection::vec(cell(), k), n).prop_map(move |rows| {
            Table {
                columns: (0..k).map(|j| format!("c{j}")).collect(),
                rows,
            }
        })
    })
}

fn csv_field(s: &str) -> String {
    if s.is_empty() || s.contains([',', '"', '\n', '\r']) || s.starts_with([' ', '\t']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

/// RFC 4180 text; a missing cell is an empty unquoted field, an empty
/// string a quoted one (so no data line is blank).
fn to_csv(t: &Table) -> Vec<u8> {
    let mut out = t.columns.join(",");
    out.push('\n');
    for r in &t.rows {
        let line: Vec<String> = r
            .iter()
            .map(|c| c.as_deref().map(csv_field).unwrap_or_default())
            .collect();
        let mut line = line.join(",");
        if line.is_empty() {
            line = "\"\"".into();
        }
        out.push_str(&line);
        out.push('\n');
    }
    out.into_bytes()
}

fn to_jsonl(t: &Table) -> Vec<u8> {
    let mut out = Vec::new();
    for r in &t.rows {
        let obj: serde_json::Map<String, serde_json::Value> = t
            .columns
            .iter()
            .zip(r)
            .map(|(k, v)| {
                (
                    k.clone(),
                    v.clone().map_or(serde_json::Value::Null, Into::into),
                )
            })
            .collect();
        serde_json::to_writer(&mut out, &obj).unwrap();
        out.push(b'\n');
    }
    out
}

fn to_frame(t: &Table) -> DataFrame {
    let cols: Vec<Column> = t
        .columns
        .iter()
        .enumerate()
        .map(|(j, name)| {
            let v: Vec<Option<String>> = t.rows.iter().map(|r| r[j].clone()).collect();
            Column::new(name.as_str().into(), v)
        })
        .collect();
    DataFrame::new(t.rows.len(), cols).unwrap()
}

/// Text cells of a frame, missing and empty told apart only where the
/// format does (`empty_is_missing`).
fn cells(df: &DataFrame, columns: &[String], empty_is_missing: bool) -> Vec<Vec<Option<String>>> {
    let cols: Vec<Vec<Option<String>>> = columns.iter().map(|c| common::strs(df, c)).collect();
    (0..df.height())
        .map(|i| {
            cols.iter()
                .map(|c| {
                    let v = c[i].clone();
                    if empty_is_missing {
                        v.filter(|s| !s.is_empty())
                    } else {
                        v
                    }
                })
                .collect()
        })
        .collect()
}

fn expected(t: &Table, empty_is_missing: bool) -> Vec<Vec<Option<String>>> {
    t.rows
        .iter()
        .map(|r| {
            r.iter()
                .map(|c| c.clone().filter(|s| !(empty_is_missing && s.is_empty())))
                .collect()
        })
        .collect()
}

/// Stream `path` at `chunk_rows` and return every row, checking that the
/// end stays the end.
fn stream(
    path: &Path,
    chunk_rows: usize,
    t: &Table,
    empty_is_missing: bool,
) -> Result<Vec<Vec<Option<String>>>, TestCaseError> {
    let mut r = ChunkReader::open(path, chunk_rows)
        .map_err(|e| TestCaseError::fail(format!("open: {e}")))?;
    let mut rows = Vec::new();
    for _ in 0..t.rows.len() + 2 {
        match r
            .next_chunk()
            .map_err(|e| TestCaseError::fail(format!("next_chunk: {e}")))?
        {
            Some(chunk) => {
                let faults: Vec<&String> = chunk.faults.iter().flatten().collect();
                ensure(faults.is_empty(), || {
                    format!("faults in a well-formed table: {faults:?}")
                })?;
                rows.extend(cells(&chunk.df, &t.columns, empty_is_missing))
            }
            None => {
                let again = r
                    .next_chunk()
                    .map_err(|e| TestCaseError::fail(format!("next_chunk after the end: {e}")))?;
                ensure(again.is_none(), || "rows after the end of the table".into())?;
                ensure(r.rows_read() == rows.len(), || {
                    format!("rows_read {} for {} rows", r.rows_read(), rows.len())
                })?;
                return Ok(rows);
            }
        }
    }
    Err(TestCaseError::fail("the stream does not end"))
}

/// Write `t` in `ext`, then read it whole and streamed at `chunk_rows`.
fn round_trip(t: &Table, ext: &str, chunk_rows: usize) -> Result<(), TestCaseError> {
    let dir = tempfile::tempdir().unwrap();
    let path = path_of(dir.path(), ext);
    // CSV cannot tell a missing cell from an empty one.
    let empty_is_missing = ext == "csv";
    match ext {
        "csv" => std::fs::write(&path, to_csv(t)).unwrap(),
        "jsonl" => std::fs::write(&path, to_jsonl(t)).unwrap(),
        _ => write_table(&mut to_frame(t), &path).unwrap(),
    }
    let want = expected(t, empty_is_missing);
    if !(ext == "jsonl" && t.rows.is_empty()) {
        let df = read_table(&path).map_err(|e| TestCaseError::fail(format!("read_table: {e}")))?;
        ensure(df.height() == t.rows.len(), || {
            format!("read_table: {} rows of {}", df.height(), t.rows.len())
        })?;
        ensure(df.width() == t.columns.len(), || {
            format!("read_table: {} columns of {}", df.width(), t.columns.len())
        })?;
        // Type inference may turn digit-only CSV/JSON columns into numbers;
        // Parquet keeps the written types exactly.
        if ext == "parquet" {
            let got = cells(&df, &t.columns, false);
            ensure(got == want, || format!("read_table cells {got:?}"))?;
        }
    }
    let got = stream(&path, chunk_rows, t, empty_is_missing)?;
    ensure(got == want, || format!("streamed cells {got:?}"))
}

fn fuzz_generated(target: &str, ext: &'static str) {
    let strategy = (table(), prop_oneof![Just(1usize), 1usize..8, Just(10_000)]);
    support::check(target, TABLE_CASES, strategy, |(t, c)| {
        round_trip(&t, ext, c)
    });
}

#[test]
fn fuzz_generated_csv_reads_back_exactly() {
    fuzz_generated("generated_csv", "csv");
}

#[test]
fn fuzz_generated_jsonl_reads_back_exactly() {
    fuzz_generated("generated_jsonl", "jsonl");
}

#[test]
fn fuzz_generated_parquet_reads_back_exactly() {
    fuzz_generated("generated_parquet", "parquet");
}

/// Blank lines between CSV records are not rows, and not the end either:
/// the streaming reader returns every record at every chunk size.
#[test]
fn fuzz_generated_csv_with_blank_lines_streams_every_row() {
    let strategy = (
        table(),
        proptest::collection::vec((any::<proptest::sample::Index>(), 1usize..6), 1..4),
        prop_oneof![Just(1usize), 1usize..4],
    );
    support::check(
        "generated_csv_blank",
        TABLE_CASES,
        strategy,
        |(t, blanks, c)| {
            let csv = to_csv(&t);
            // Record boundaries: after the header and after each row.
            let ends: Vec<usize> = {
                let mut v = Vec::new();
                let mut in_quote = false;
                for (i, &b) in csv.iter().enumerate() {
                    match b {
                        b'"' => in_quote = !in_quote,
                        b'\n' if !in_quote => v.push(i + 1),
                        _ => {}
                    }
                }
                v
            };
            let mut with_blanks = csv.clone();
            let mut at: Vec<(usize, usize)> = blanks
                .iter()
                .map(|(i, n)| (ends[i.index(ends.len())], *n))
                .collect();
            at.sort_unstable_by_key(|a| std::cmp::Reverse(a.0));
            for (pos, n) in at {
                with_blanks.splice(pos..pos, std::iter::repeat_n(b'\n', n));
            }
            let dir = tempfile::tempdir().unwrap();
            let path = path_of(dir.path(), "csv");
            std::fs::write(&path, &with_blanks).unwrap();
            let got = stream(&path, c, &t, true)?;
            ensure(got == expected(&t, true), || {
                format!("streamed {} of {} rows: {got:?}", got.len(), t.rows.len())
            })
        },
    );
}

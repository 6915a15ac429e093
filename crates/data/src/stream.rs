//! Streaming table I/O for `casetag tag` over millions of rows: the file is
//! read and written chunk by chunk, never held in memory whole.
//!
//! Reading keeps every row. A row whose input is damaged (ragged, a stray or
//! unclosed quote, invalid UTF-8, a NUL byte, a JSONL line that is not a JSON
//! object) is still handed out, with the values that could be recovered and a
//! one-line fault naming the file, the line and the column; only a file that
//! cannot be opened or has no header fails the whole table. A blank line
//! (nothing but spaces, tabs and line breaks) is not a row: it is skipped and
//! reading goes on after it.
//!
//! CSV records are cut and split into fields here, quote-aware, so a newline
//! inside a quoted field is kept and each record's faults are known; every
//! CSV column is read as text (a type inferred from the first chunk could
//! fail on row three million, and the output is text anyway). Parquet is read
//! by row range (polars skips row groups outside the range, and the footer is
//! parsed once). JSONL is read N lines at a time, each line checked with
//! serde_json, and parsed with polars' JSON-lines reader using the first
//! chunk's schema.
//!
//! Writing goes through a job directory next to the output: each chunk is a
//! committed part file, recorded in a manifest, so a killed job can resume
//! after its last committed chunk; the parts are joined into the output and
//! the directory removed when the job finishes.

use std::borrow::Cow;
use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Cursor, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use polars::prelude::*;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::cases::InputKind;
use crate::error::{printable, tidy_polars, DataError, Result};
use crate::io::{create_parent, temp_sibling, Format};
use casetag_core::text::normalize_text;

const READ_BLOCK: usize = 1 << 20;

/// A quoted CSV field still open after this many bytes is taken for a stray
/// quote: its record ends at its first line break, so one bad quote cannot
/// swallow the rest of a file.
const MAX_QUOTED_SPAN: usize = 16 << 20;

/// Where reading stands: after a chunk, where the next one starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Position {
    /// Byte offset of the next record (CSV, JSONL; 0 for Parquet).
    pub byte: u64,
    /// Lines before that offset.
    pub line: u64,
    /// Data rows before it.
    pub rows: u64,
}

/// One chunk of rows.
#[derive(Debug)]
pub struct Chunk {
    pub df: DataFrame,
    /// Row-aligned: `Some(message)` where the row's input was damaged. The
    /// row holds what could be recovered (missing fields are null, invalid
    /// UTF-8 is replaced by U+FFFD); the message names the file, the line
    /// and, where known, the column.
    pub faults: Vec<Option<String>>,
    /// Where the next chunk starts.
    pub end: Position,
}

/// Reads a table in chunks of at most `chunk_rows` rows.
pub struct ChunkReader {
    path: PathBuf,
    chunk_rows: usize,
    /// Data rows handed out so far.
    rows_read: usize,
    inner: Inner,
    /// A turn-level table not joined yet: the joined table's columns.
    turns_pending: Option<DataFrame>,
}

impl std::fmt::Debug for ChunkReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChunkReader")
            .field("path", &self.path)
            .field("chunk_rows", &self.chunk_rows)
            .field("rows_read", &self.rows_read)
            .finish_non_exhaustive()
    }
}

enum Inner {
    Csv(CsvChunks),
    Parquet {
        metadata: FileMetadataRef,
        total: usize,
        /// No rows, the file's columns.
        empty: DataFrame,
    },
    Jsonl(JsonlChunks),
    /// A turn-level table, read whole and joined to one row per case
    /// (turns of one case may lie anywhere in the file); handed out in
    /// slices.
    Joined {
        df: DataFrame,
        faults: Vec<Option<String>>,
    },
}

impl ChunkReader {
    /// Open a table for chunked reading (format by extension). A missing or
    /// unreadable file, a CSV without a header and a CSV header with a
    /// repeated column name fail here.
    ///
    /// A turn-level table is handed out one row per case (see
    /// [`ChunkReader::join_pending`]); [`ChunkReader::open_rows`] reads its
    /// rows as they are.
    pub fn open(path: &Path, chunk_rows: usize) -> Result<Self> {
        let mut reader = Self::open_rows(path, chunk_rows)?;
        if let Some(raw) = reader
            .empty_frame()
            .filter(|df| InputKind::detect(df.schema()) == InputKind::Turn)
        {
            let (joined, _) = crate::cases::join_turns_keeping(raw, Vec::new(), path)?;
            reader.turns_pending = Some(joined);
        }
        Ok(reader)
    }

    /// Open a table for chunked reading of its rows as they are, turns
    /// included.
    pub fn open_rows(path: &Path, chunk_rows: usize) -> Result<Self> {
        let fmt = Format::from_path(path)?;
        if chunk_rows == 0 {
            return Err(DataError::Usage("chunk size must be at least 1 row".into()));
        }
        let file = File::open(path).map_err(|e| DataError::read(path, e))?;
        if file.metadata().is_ok_and(|m| m.is_dir()) {
            return Err(DataError::read(path, "is a directory"));
        }
        let inner = match fmt {
            Format::Csv => Inner::Csv(CsvChunks::open(file, path)?),
            Format::Parquet => {
                let mut r = ParquetReader::new(file);
                let metadata = r
                    .get_metadata()
                    .map_err(|e| DataError::parse(path, "Parquet", e))?
                    .clone();
                let total = metadata.num_rows;
                let mut r =
                    ParquetReader::new(File::open(path).map_err(|e| DataError::read(path, e))?)
                        .with_slice(Some((0, 0)));
                r.set_metadata(metadata.clone());
                let empty = r
                    .finish()
                    .map_err(|e| DataError::parse(path, "Parquet", e))?;
                Inner::Parquet {
                    metadata,
                    total,
                    empty,
                }
            }
            Format::Jsonl => Inner::Jsonl(JsonlChunks {
                reader: BufReader::with_capacity(READ_BLOCK, file),
                schema: infer_jsonl_schema(path)?,
                byte: 0,
                line: 0,
            }),
        };
        Ok(Self {
            path: path.to_path_buf(),
            chunk_rows,
            rows_read: 0,
            inner,
            turns_pending: None,
        })
    }

    /// A turn-level table (columns `case_id`, `turn`, `speaker`, `text`) is
    /// handed out one row per case, its turns joined as `prepare` joins
    /// them; since a case's turns may lie anywhere in the file, the table
    /// is read whole and joined on the first read (or here), in memory.
    /// Rows that cannot be joined (damaged, empty `case_id`, a `turn` that
    /// is not an integer) come after the cases, each with its fault. A
    /// no-op for case-level tables and once joined.
    pub fn join_pending(&mut self) -> Result<()> {
        if self.turns_pending.take().is_none() {
            return Ok(());
        }
        let mut frames = Vec::new();
        let mut faults = Vec::new();
        while let Some(c) = self.next_chunk()? {
            faults.extend(c.faults);
            frames.push(c.df);
        }
        let mut df = match frames.first() {
            Some(f) => f.clear(),
            None => self.empty_frame().unwrap_or_default(),
        };
        for f in &frames {
            df.vstack_mut(f).map_err(DataError::internal)?;
        }
        let (df, faults) = crate::cases::join_turns_keeping(df, faults, &self.path)?;
        self.inner = Inner::Joined { df, faults };
        self.rows_read = 0;
        Ok(())
    }

    /// Total number of data rows when the format records it (Parquet) or
    /// the turns are joined (one row per case), else `None`.
    pub fn total_rows_hint(&self) -> Option<usize> {
        match &self.inner {
            Inner::Parquet { total, .. } => Some(*total),
            Inner::Joined { df, .. } => Some(df.height()),
            _ => None,
        }
    }

    /// Data rows returned so far.
    pub fn rows_read(&self) -> usize {
        self.rows_read
    }

    /// A frame with the table's columns and no rows, when they are known
    /// without reading rows (CSV header, Parquet schema) or from the first
    /// chunk read (JSONL).
    pub fn empty_frame(&self) -> Option<DataFrame> {
        if let Some(df) = &self.turns_pending {
            return Some(df.clone());
        }
        match &self.inner {
            Inner::Csv(c) => {
                let cols = c
                    .names
                    .iter()
                    .map(|n| Column::full_null(n.as_str().into(), 0, &DataType::String))
                    .collect();
                DataFrame::new(0, cols).ok()
            }
            Inner::Parquet { empty, .. } => Some(empty.clone()),
            Inner::Joined { df, .. } => Some(df.clear()),
            Inner::Jsonl(j) => j
                .schema
                .as_ref()
                .map(|s| DataFrame::empty_with_schema(s.as_ref())),
        }
    }

    /// Where the next chunk starts.
    pub fn position(&self) -> Position {
        let rows = self.rows_read as u64;
        match &self.inner {
            Inner::Csv(c) => Position {
                byte: c.offset + c.start as u64,
                line: c.line,
                rows,
            },
            Inner::Parquet { .. } | Inner::Joined { .. } => Position {
                byte: 0,
                line: 0,
                rows,
            },
            Inner::Jsonl(j) => Position {
                byte: j.byte,
                line: j.line,
                rows,
            },
        }
    }

    /// Continue reading at `pos`, a [`Chunk::end`] of an earlier read of
    /// the same file with the same chunk size.
    pub fn seek(&mut self, pos: Position) -> Result<()> {
        self.join_pending()?;
        let path = self.path.clone();
        if let Inner::Jsonl(j) = &self.inner {
            // The column types come from the first chunk.
            if j.schema.is_none() && pos.rows > 0 {
                self.next_chunk()?;
            }
        }
        match &mut self.inner {
            Inner::Csv(c) => c
                .seek(pos.byte, pos.line)
                .map_err(|e| DataError::read(&path, e))?,
            Inner::Joined { df, .. } => {
                if pos.rows as usize > df.height() {
                    return Err(DataError::read(
                        &path,
                        "resume point is past the end of the joined cases",
                    ));
                }
            }
            Inner::Parquet { total, .. } => {
                if pos.rows as usize > *total {
                    return Err(DataError::read(
                        &path,
                        "resume point is past the end of the file",
                    ));
                }
            }
            Inner::Jsonl(j) => {
                j.reader
                    .seek(SeekFrom::Start(pos.byte))
                    .map_err(|e| DataError::read(&path, e))?;
                j.byte = pos.byte;
                j.line = pos.line;
            }
        }
        self.rows_read = pos.rows as usize;
        Ok(())
    }

    /// The next chunk, or `None` at the end of the table.
    pub fn next_chunk(&mut self) -> Result<Option<Chunk>> {
        self.join_pending()?;
        let path = &self.path;
        let first_row = self.rows_read + 1;
        let (df, faults) = match &mut self.inner {
            Inner::Csv(c) => match c.next_chunk(self.chunk_rows, path)? {
                Some(x) => x,
                None => return Ok(None),
            },
            Inner::Parquet {
                metadata, total, ..
            } => {
                if self.rows_read >= *total {
                    return Ok(None);
                }
                let file = File::open(path).map_err(|e| DataError::read(path, e))?;
                let mut r =
                    ParquetReader::new(file).with_slice(Some((self.rows_read, self.chunk_rows)));
                r.set_metadata(metadata.clone());
                let df = r.finish().map_err(|e| {
                    DataError::parse(path, "Parquet", format!("rows from {first_row}: {e}"))
                })?;
                let n = df.height();
                (df, vec![None; n])
            }
            Inner::Jsonl(j) => match j.next_chunk(self.chunk_rows, path)? {
                Some(x) => x,
                None => return Ok(None),
            },
            Inner::Joined { df, faults } => {
                let from = self.rows_read;
                if from >= df.height() {
                    return Ok(None);
                }
                let to = (from + self.chunk_rows).min(df.height());
                (df.slice(from as i64, to - from), faults[from..to].to_vec())
            }
        };
        self.rows_read += df.height();
        Ok(Some(Chunk {
            df,
            faults,
            end: self.position(),
        }))
    }
}

/// Refuse a table without the column `tag` reads the text from, naming the
/// file and the columns it has. `names` are a [`ChunkReader`]'s columns
/// (a turn-level table's are those of its joined cases: `id`, `text`, ...).
pub fn check_case_columns(path: &Path, names: &[&str], text_column: &str) -> Result<()> {
    if !names.contains(&text_column) {
        return Err(DataError::column(
            path,
            text_column,
            format!("missing (found: {})", names.join(", ")),
        ));
    }
    Ok(())
}

/// The header of a CSV file, with the same checks as the streaming reader
/// (no repeated names, valid UTF-8).
pub(crate) fn csv_header(path: &Path) -> Result<Vec<String>> {
    let file = File::open(path).map_err(|e| DataError::read(path, e))?;
    Ok(CsvChunks::open(file, path)?.names)
}

/// One field of a scanned CSV record: its byte range in the record (quotes
/// included) and what was wrong with it.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Span {
    start: usize,
    end: usize,
    quoted: bool,
    /// Text after the closing quote (`"abc"def`).
    trailing: bool,
    /// The quote never closed on the record's line.
    unclosed: bool,
}

#[derive(Debug, PartialEq)]
enum Scan {
    /// More bytes are needed to finish the record.
    More,
    /// A record of `end` bytes holding `breaks` line breaks (its own included).
    Record { end: usize, breaks: u64 },
    /// A quoted field stays open to the end of the file or past
    /// [`MAX_QUOTED_SPAN`]; rescan with `first_line_only`.
    Unclosed,
}

/// Scan one CSV record at the start of `b`, filling `fields`. With
/// `first_line_only`, the record ends at its first line break whatever the
/// quotes say (an open quote marks its field `unclosed`).
fn scan_record(b: &[u8], eof: bool, first_line_only: bool, fields: &mut Vec<Span>) -> Scan {
    fields.clear();
    let (mut i, mut start) = (0, 0);
    let (mut quoted, mut in_quote, mut closed, mut trailing) = (false, false, false, false);
    let mut breaks = 0;
    let field = |start, end: usize, quoted, trailing, unclosed| Span {
        start,
        end,
        quoted,
        trailing,
        unclosed,
    };
    // End of an unquoted-tail field before a line break: without its `\r`.
    let cut_cr = |b: &[u8], start: usize, i: usize| {
        if i > start && b[i - 1] == b'\r' {
            i - 1
        } else {
            i
        }
    };
    loop {
        if i >= b.len() {
            if !eof {
                return Scan::More;
            }
            if in_quote && !first_line_only {
                return Scan::Unclosed;
            }
            fields.push(field(start, b.len(), quoted, trailing, in_quote));
            return Scan::Record {
                end: b.len(),
                breaks,
            };
        }
        let c = b[i];
        if in_quote {
            if c == b'"' {
                if i + 1 < b.len() {
                    if b[i + 1] == b'"' {
                        i += 2;
                        continue;
                    }
                } else if !eof {
                    // Need the next byte to tell `""` from a closing quote.
                    return Scan::More;
                }
                in_quote = false;
                closed = true;
            } else if c == b'\n' {
                if first_line_only {
                    fields.push(field(start, cut_cr(b, start, i), quoted, trailing, true));
                    return Scan::Record {
                        end: i + 1,
                        breaks: breaks + 1,
                    };
                }
                breaks += 1;
            }
            if in_quote && i > MAX_QUOTED_SPAN && !first_line_only {
                return Scan::Unclosed;
            }
            i += 1;
            continue;
        }
        match c {
            b'"' if i == start => {
                in_quote = true;
                quoted = true;
            }
            b',' => {
                fields.push(field(start, i, quoted, trailing, false));
                start = i + 1;
                (quoted, closed, trailing) = (false, false, false);
            }
            b'\n' => {
                fields.push(field(start, cut_cr(b, start, i), quoted, trailing, false));
                return Scan::Record {
                    end: i + 1,
                    breaks: breaks + 1,
                };
            }
            b'\r' => {}
            _ if closed => trailing = true,
            _ => {}
        }
        i += 1;
    }
}

/// The value of a field: `None` for an empty unquoted field, quotes
/// removed and `""` unescaped; text after a closing quote is kept as is.
fn field_bytes<'a>(rec: &'a [u8], f: &Span) -> Option<Cow<'a, [u8]>> {
    let raw = &rec[f.start..f.end];
    if !f.quoted {
        return (!raw.is_empty()).then_some(Cow::Borrowed(raw));
    }
    let inner = &raw[1..];
    // Fast path: `"..."` with no quote inside.
    if let Some((&b'"', body)) = inner.split_last() {
        if !body.contains(&b'"') && !f.trailing {
            return Some(Cow::Borrowed(body));
        }
    }
    let mut out = Vec::with_capacity(inner.len());
    let mut j = 0;
    while j < inner.len() {
        if inner[j] == b'"' {
            if inner.get(j + 1) == Some(&b'"') {
                out.push(b'"');
                j += 2;
                continue;
            }
            out.extend_from_slice(&inner[j + 1..]);
            break;
        }
        out.push(inner[j]);
        j += 1;
    }
    Some(Cow::Owned(out))
}

/// Text of a field and, when the bytes were not clean text, what was wrong:
/// invalid UTF-8 becomes U+FFFD, a NUL byte too.
fn field_text(bytes: Cow<'_, [u8]>) -> (Cow<'_, str>, Option<&'static str>) {
    let (text, fault) = match bytes {
        Cow::Borrowed(b) => match std::str::from_utf8(b) {
            Ok(s) => (Cow::Borrowed(s), None),
            Err(_) => (String::from_utf8_lossy(b), Some("invalid UTF-8")),
        },
        Cow::Owned(b) => match String::from_utf8(b) {
            Ok(s) => (Cow::Owned(s), None),
            Err(e) => (
                Cow::Owned(String::from_utf8_lossy(e.as_bytes()).into_owned()),
                Some("invalid UTF-8"),
            ),
        },
    };
    if text.contains('\0') {
        return (
            Cow::Owned(text.replace('\0', "\u{FFFD}")),
            fault.or(Some("NUL byte")),
        );
    }
    (text, fault)
}

/// Quote-aware CSV reader over a byte stream.
struct CsvChunks {
    file: File,
    buf: Vec<u8>,
    /// First unconsumed byte of `buf`.
    start: usize,
    /// File offset of `buf[0]`.
    offset: u64,
    /// Lines consumed before `buf[start]`.
    line: u64,
    eof: bool,
    names: Vec<String>,
    fields: Vec<Span>,
}

impl CsvChunks {
    fn open(file: File, path: &Path) -> Result<Self> {
        let mut c = Self {
            file,
            buf: Vec::new(),
            start: 0,
            offset: 0,
            line: 0,
            eof: false,
            names: Vec::new(),
            fields: Vec::new(),
        };
        let read = |e: std::io::Error| DataError::read(path, e);
        // The BOM is not part of the first column's name.
        c.fill().map_err(read)?;
        if c.buf.starts_with(b"\xEF\xBB\xBF") {
            c.start = 3;
        }
        let Some((range, line)) = c.next_record(None).map_err(read)? else {
            return Err(DataError::parse(
                path,
                "CSV",
                "the file is empty (no header row)",
            ));
        };
        let rec = &c.buf[range];
        let mut names = Vec::with_capacity(c.fields.len());
        for (i, f) in c.fields.iter().enumerate() {
            let at = |m: &str| DataError::parse(path, "CSV", format!("line {line}: header: {m}"));
            if f.unclosed || f.trailing {
                return Err(at("bad quote"));
            }
            let (name, fault) = field_text(field_bytes(rec, f).unwrap_or_default());
            if let Some(m) = fault {
                return Err(at(m));
            }
            let name = name.trim();
            names.push(if name.is_empty() {
                format!("column_{}", i + 1)
            } else {
                name.to_string()
            });
        }
        for (i, n) in names.iter().enumerate() {
            if let Some(j) = names[..i].iter().position(|m| m == n) {
                return Err(DataError::column(
                    path,
                    n,
                    format!(
                        "appears twice in the header (columns {} and {})",
                        j + 1,
                        i + 1
                    ),
                ));
            }
        }
        c.names = names;
        Ok(c)
    }

    /// Read more of the file, dropping consumed bytes first. Reads at least
    /// as much as is buffered, so a long record is scanned a bounded number
    /// of times.
    fn fill(&mut self) -> std::io::Result<()> {
        if self.start > 0 {
            self.buf.drain(..self.start);
            self.offset += self.start as u64;
            self.start = 0;
        }
        let old = self.buf.len();
        self.buf.resize(old + READ_BLOCK.max(old), 0);
        let n = loop {
            match self.file.read(&mut self.buf[old..]) {
                Ok(n) => break n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    self.buf.truncate(old);
                    return Err(e);
                }
            }
        };
        self.buf.truncate(old + n);
        if n == 0 {
            self.eof = true;
        }
        Ok(())
    }

    fn seek(&mut self, byte: u64, line: u64) -> std::io::Result<()> {
        self.file.seek(SeekFrom::Start(byte))?;
        self.buf.clear();
        self.start = 0;
        self.offset = byte;
        self.line = line;
        self.eof = false;
        Ok(())
    }

    /// The next non-blank record: its byte range in `buf` and its first
    /// line's number; its fields are in `self.fields`. `n_fields` is the
    /// header's width: a record spanning lines with another width, or with
    /// text after a closing quote, is taken for a stray quote and ends at
    /// its first line break. (A stray quote that happens to pair with a
    /// later quote into valid CSV of the right width cannot be told from a
    /// quoted field, by this reader or any other.)
    fn next_record(
        &mut self,
        n_fields: Option<usize>,
    ) -> std::io::Result<Option<(std::ops::Range<usize>, u64)>> {
        loop {
            let b = &self.buf[self.start..];
            if b.is_empty() && self.eof {
                return Ok(None);
            }
            let (end, breaks) = match scan_record(b, self.eof, false, &mut self.fields) {
                Scan::More => {
                    self.fill()?;
                    continue;
                }
                Scan::Record { end, breaks }
                    if breaks <= 1
                        || (n_fields.is_none_or(|n| n == self.fields.len())
                            && !self.fields.iter().any(|f| f.trailing)) =>
                {
                    (end, breaks)
                }
                Scan::Record { .. } | Scan::Unclosed => {
                    match scan_record(b, self.eof, true, &mut self.fields) {
                        Scan::Record { end, breaks } => (end, breaks),
                        // The first line is not complete in the buffer yet.
                        _ => {
                            self.fill()?;
                            continue;
                        }
                    }
                }
            };
            let range = self.start..self.start + end;
            let line = self.line + 1;
            self.start += end;
            self.line += breaks;
            if self.buf[range.clone()]
                .iter()
                .all(|&c| matches!(c, b' ' | b'\t' | b'\r' | b'\n'))
            {
                continue;
            }
            return Ok(Some((range, line)));
        }
    }

    /// The next `n` rows as text columns, with each row's fault.
    fn next_chunk(
        &mut self,
        n: usize,
        path: &Path,
    ) -> Result<Option<(DataFrame, Vec<Option<String>>)>> {
        let width = self.names.len();
        let mut cols: Vec<StringChunkedBuilder> = self
            .names
            .iter()
            .map(|name| StringChunkedBuilder::new(name.as_str().into(), n.min(1 << 16)))
            .collect();
        let mut faults = Vec::with_capacity(n.min(1 << 16));
        while faults.len() < n {
            let Some((range, line)) = self
                .next_record(Some(width))
                .map_err(|e| DataError::read(path, e))?
            else {
                break;
            };
            let rec = &self.buf[range];
            let mut fault: Option<String> = None;
            let mut note = |col: Option<usize>, what: &str| {
                if fault.is_none() {
                    fault = Some(match col {
                        Some(i) => format!(
                            "{}: line {line}, column '{}': {what}",
                            path.display(),
                            self.names
                                .get(i)
                                .map_or_else(|| format!("{}", i + 1), |n| n.clone())
                        ),
                        None => format!("{}: line {line}: {what}", path.display()),
                    })
                }
            };
            for (i, f) in self.fields.iter().enumerate() {
                if f.unclosed {
                    note(Some(i), "quoted field is never closed");
                } else if f.trailing {
                    note(Some(i), "text after a closing quote");
                }
            }
            if self.fields.len() != width {
                note(
                    None,
                    &format!("expected {width} fields, found {}", self.fields.len()),
                );
            }
            for (i, col) in cols.iter_mut().enumerate() {
                match self.fields.get(i).and_then(|f| field_bytes(rec, f)) {
                    None => col.append_null(),
                    Some(bytes) => {
                        let (text, bad) = field_text(bytes);
                        if let Some(m) = bad {
                            note(Some(i), m);
                        }
                        col.append_value(text.as_ref());
                    }
                }
            }
            faults.push(fault.map(|m| printable(&m).into_owned()));
        }
        if faults.is_empty() {
            return Ok(None);
        }
        let cols = cols
            .into_iter()
            .map(|c| c.finish().into_series().into_column())
            .collect();
        let df = DataFrame::new(faults.len(), cols).map_err(DataError::internal)?;
        Ok(Some((df, faults)))
    }
}

/// JSON-lines reader.
struct JsonlChunks {
    reader: BufReader<File>,
    schema: Option<SchemaRef>,
    /// Bytes and lines consumed.
    byte: u64,
    line: u64,
}

/// Stand-in for a line that is not a JSON object: a row of nulls.
const EMPTY_OBJECT: &[u8] = b"{}";

impl JsonlChunks {
    fn next_chunk(
        &mut self,
        n: usize,
        path: &Path,
    ) -> Result<Option<(DataFrame, Vec<Option<String>>)>> {
        let mut lines: Vec<Vec<u8>> = Vec::new();
        let mut numbers: Vec<u64> = Vec::new();
        let mut faults: Vec<Option<String>> = Vec::new();
        let mut raw = Vec::new();
        while lines.len() < n {
            raw.clear();
            let got = self
                .reader
                .read_until(b'\n', &mut raw)
                .map_err(|e| DataError::read(path, e))?;
            if got == 0 {
                break;
            }
            self.byte += got as u64;
            self.line += 1;
            if raw.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            let (line, fault) = check_json_line(&raw);
            faults.push(fault.map(|m| located(path, self.line, &m)));
            lines.push(line);
            numbers.push(self.line);
        }
        if lines.is_empty() {
            return Ok(None);
        }
        // Lines that polars refuses (a value of another type than the
        // column's in the first chunk) are found by halving and kept as rows
        // of nulls with their fault.
        let schema = self.schema.clone();
        if parse_json_lines(&lines, schema.as_ref()).is_err() {
            let mut bad = Vec::new();
            find_bad_lines(&lines, 0, schema.as_ref(), &mut bad);
            for i in bad {
                let why = parse_json_lines(&lines[i..=i], schema.as_ref())
                    .err()
                    .map(|e| tidy_polars(&e.to_string()))
                    .unwrap_or_default();
                faults[i].get_or_insert_with(|| {
                    located(
                        path,
                        numbers[i],
                        &format!(": values do not fit the table's columns ({why})"),
                    )
                });
                lines[i] = EMPTY_OBJECT.to_vec();
            }
        }
        let mut df = parse_json_lines(&lines, schema.as_ref()).map_err(|e| {
            DataError::parse(path, "JSONL", format!("lines up to {}: {e}", self.line))
        })?;
        if df.width() == 0 {
            // Every line stood in by `{}`: polars gives no columns and no
            // rows, but each line is a row (of nulls, with its fault).
            df = match &self.schema {
                Some(s) => DataFrame::full_null(s, lines.len()),
                None => DataFrame::empty_with_height(lines.len()),
            };
            return Ok(Some((df, faults)));
        }
        if self.schema.is_none() {
            self.schema = Some(nulls_as_text(df.schema()));
        }
        Ok(Some((df, faults)))
    }
}

/// A schema with columns typed Null (all-null where inferred) typed String:
/// later rows may hold text there.
fn nulls_as_text(schema: &Schema) -> SchemaRef {
    let s: Schema = schema
        .iter()
        .map(|(name, dt)| {
            let dt = if dt.is_null() {
                DataType::String
            } else {
                dt.clone()
            };
            Field::new(name.clone(), dt)
        })
        .collect();
    Arc::new(s)
}

/// The columns of a JSONL file, inferred from its first [`crate::io::INFER_ROWS`]
/// object lines (read ahead, within the first 64 MiB), so every
/// chunk has them, a chunk of damaged lines only and a resumed run alike.
/// `None` when no such line is found.
fn infer_jsonl_schema(path: &Path) -> Result<Option<SchemaRef>> {
    const MAX_BYTES: u64 = 64 << 20;
    let file = File::open(path).map_err(|e| DataError::read(path, e))?;
    let mut reader = BufReader::with_capacity(READ_BLOCK, file);
    let (mut lines, mut raw, mut read) = (Vec::new(), Vec::new(), 0u64);
    while lines.len() < crate::io::INFER_ROWS && read < MAX_BYTES {
        raw.clear();
        let got = reader
            .read_until(b'\n', &mut raw)
            .map_err(|e| DataError::read(path, e))?;
        if got == 0 {
            break;
        }
        read += got as u64;
        if raw.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        // Damaged lines count once repaired (invalid UTF-8 replaced, ...);
        // lines that are not JSON objects do not.
        let (line, _) = check_json_line(&raw);
        if line != EMPTY_OBJECT {
            lines.push(line);
        }
    }
    if lines.is_empty() {
        return Ok(None);
    }
    // Lines that do not agree with each other on a column's type are left
    // to the chunks, which find and report them.
    Ok(parse_json_lines(&lines, None)
        .ok()
        .filter(|df| df.width() > 0)
        .map(|df| nulls_as_text(df.schema())))
}

/// `{path}: line {line}{rest}`, escaped for printing.
fn located(path: &Path, line: u64, what: &str) -> String {
    printable(&format!("{}: line {line}{what}", path.display())).into_owned()
}

/// A JSONL line as polars should read it, and what was wrong with it
/// (`", column ..."` or `": ..."`, to follow the line number). Invalid UTF-8
/// and NUL bytes are replaced by U+FFFD and the rest of the line kept; a
/// line that is still not a JSON object becomes `{}`.
fn check_json_line(raw: &[u8]) -> (Vec<u8>, Option<String>) {
    let body = raw.strip_suffix(b"\n").unwrap_or(raw);
    let body = body.strip_suffix(b"\r").unwrap_or(body);
    let (mut text, mut damage) = field_text(Cow::Borrowed(body));
    // A raw control character (NUL, ESC, ...) is never valid JSON; replaced
    // like the NUL bytes above, the rest of the row survives. Tabs and
    // carriage returns are left: they are valid between values.
    let raw_control = |c: char| c.is_ascii_control() && c != '\t' && c != '\r';
    if text.contains(raw_control) {
        text = Cow::Owned(text.replace(raw_control, "\u{FFFD}"));
        damage = damage.or(Some("control character"));
    }
    let object = text.trim_start().starts_with('{');
    match serde_json::from_str::<serde::de::IgnoredAny>(&text) {
        Ok(_) if object => {
            let fault = damage.map(|m| match damaged_key(&text) {
                Some(k) => format!(", column '{k}': {m}"),
                None => format!(": {m}"),
            });
            // Valid JSON, so not a fault: the value is kept as a float.
            match widen_big_integers(&text) {
                Some(widened) => (widened.into_bytes(), fault),
                None => (text.into_owned().into_bytes(), fault),
            }
        }
        Ok(_) => (EMPTY_OBJECT.to_vec(), Some(": not a JSON object".into())),
        Err(e) => {
            let msg = e.to_string();
            let msg = msg
                .rsplit_once(" at line ")
                .map_or(msg.as_str(), |(m, _)| m);
            let why = match damage {
                Some(d) => format!("{d}; invalid JSON ({msg})"),
                None => format!("invalid JSON ({msg})"),
            };
            (
                EMPTY_OBJECT.to_vec(),
                Some(format!(", column {}: {why}", e.column())),
            )
        }
    }
}

/// `text` (valid JSON) with every integer literal outside the signed 64-bit
/// range written as a float (`.0` appended), or `None` when there is none.
/// polars would infer a 128-bit integer column for them, which it cannot
/// hold, and panic.
fn widen_big_integers(text: &str) -> Option<String> {
    let b = text.as_bytes();
    let mut out: Option<String> = None;
    let mut copied = 0;
    let (mut i, mut in_string) = (0, false);
    while i < b.len() {
        let c = b[i];
        if in_string {
            match c {
                b'\\' => i += 1,
                b'"' => in_string = false,
                _ => {}
            }
            i += 1;
            continue;
        }
        if c == b'"' {
            in_string = true;
            i += 1;
            continue;
        }
        if c == b'-' || c.is_ascii_digit() {
            let start = i;
            i += 1;
            while i < b.len() && b[i].is_ascii_digit() {
                i += 1;
            }
            let fraction = i < b.len() && matches!(b[i], b'.' | b'e' | b'E');
            while i < b.len()
                && (b[i].is_ascii_digit() || matches!(b[i], b'.' | b'e' | b'E' | b'+' | b'-'))
            {
                i += 1;
            }
            if !fraction && text[start..i].parse::<i64>().is_err() {
                let o = out.get_or_insert_with(String::new);
                o.push_str(&text[copied..i]);
                o.push_str(".0");
                copied = i;
            }
            continue;
        }
        i += 1;
    }
    out.map(|mut o| {
        o.push_str(&text[copied..]);
        o
    })
}

/// The first key whose string value holds a replacement character.
fn damaged_key(text: &str) -> Option<String> {
    let map: serde_json::Map<String, serde_json::Value> = serde_json::from_str(text).ok()?;
    map.into_iter()
        .find(|(_, v)| v.as_str().is_some_and(|s| s.contains('\u{FFFD}')))
        .map(|(k, _)| k)
}

fn parse_json_lines(lines: &[Vec<u8>], schema: Option<&SchemaRef>) -> PolarsResult<DataFrame> {
    let mut bytes = Vec::with_capacity(lines.iter().map(|l| l.len() + 1).sum());
    for l in lines {
        bytes.extend_from_slice(l);
        bytes.push(b'\n');
    }
    let mut jr = JsonReader::new(Cursor::new(bytes))
        .with_json_format(JsonFormat::JsonLines)
        .infer_schema_len(None);
    if let Some(s) = schema {
        jr = jr.with_schema(s.clone());
    }
    jr.finish()
}

/// Indices (offset by `base`) of the lines polars refuses on their own.
fn find_bad_lines(
    lines: &[Vec<u8>],
    base: usize,
    schema: Option<&SchemaRef>,
    out: &mut Vec<usize>,
) {
    if parse_json_lines(lines, schema).is_ok() {
        return;
    }
    if lines.len() == 1 {
        out.push(base);
        return;
    }
    let mid = lines.len() / 2;
    find_bad_lines(&lines[..mid], base, schema, out);
    find_bad_lines(&lines[mid..], base + mid, schema, out);
}

/// What a job directory's manifest records.
#[derive(Debug, Serialize, Deserialize)]
struct JobManifest {
    format: String,
    /// Committed chunks: part files `0..chunks`.
    chunks: usize,
    /// The first chunk's columns.
    columns: Option<Vec<String>>,
    /// The caller's state after the last committed chunk.
    state: serde_json::Value,
}

const JOB_MANIFEST: &str = "job.json";

/// The file carried with the job's `chunks`-th commit.
fn carry_name(chunks: usize) -> String {
    format!("carry-{chunks:08}.bin")
}

/// The job directory of an output file: `.NAME.casetag-job` beside it.
pub fn job_dir(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_else(|| "out".into());
    path.with_file_name(format!(".{name}.casetag-job"))
}

/// What an interrupted job had committed.
#[derive(Debug)]
pub struct Committed {
    pub chunks: usize,
    /// The state given with the last committed chunk.
    pub state: serde_json::Value,
    /// The bytes carried with the last committed chunk
    /// ([`ChunkWriter::commit_carrying`]), if it carried any.
    pub carry: Option<Vec<u8>>,
}

/// Writes a table chunk by chunk, crash-safe: each chunk becomes a part
/// file in the job directory ([`job_dir`]), committed (written, synced,
/// renamed, then recorded in the directory's manifest) before the next;
/// [`ChunkWriter::finish`] joins the parts into a temporary sibling of the
/// output, renames it into place and removes the directory. A killed job
/// leaves its committed parts for [`ChunkWriter::resume`]; the output
/// path only ever holds a complete table.
pub struct ChunkWriter {
    path: PathBuf,
    dir: PathBuf,
    format: Format,
    columns: Option<Vec<PlSmallStr>>,
    /// Committed chunks.
    chunks: usize,
    /// A part written but not yet committed.
    pending: bool,
    rows: usize,
    finished: bool,
}

impl std::fmt::Debug for ChunkWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChunkWriter")
            .field("path", &self.path)
            .field("chunks", &self.chunks)
            .finish_non_exhaustive()
    }
}

/// An output path the user cannot write to (exit 2, not an internal failure).
fn bad_output(path: &Path, e: impl std::fmt::Display) -> DataError {
    DataError::Output {
        path: path.display().to_string(),
        msg: crate::error::one_line(&e.to_string()),
    }
}

impl ChunkWriter {
    /// Start a fresh job writing `path`: the state of an earlier job on the
    /// same output and temporary files left by killed runs are removed.
    pub fn create(path: &Path, format: Format) -> Result<Self> {
        check_output(path)?;
        let dir = job_dir(path);
        if dir.exists() {
            std::fs::remove_dir_all(&dir).map_err(|e| bad_output(&dir, e))?;
        }
        std::fs::create_dir(&dir).map_err(|e| bad_output(path, e))?;
        let mut w = Self::at(path, dir, format);
        w.save_manifest(&serde_json::Value::Null)?;
        Ok(w)
    }

    /// Continue the interrupted job writing `path`: `None` when there is
    /// none (or its manifest is unreadable); parts past the last committed
    /// chunk are removed.
    pub fn resume(path: &Path, format: Format) -> Result<Option<(Self, Committed)>> {
        check_output(path)?;
        let dir = job_dir(path);
        let Ok(text) = std::fs::read_to_string(dir.join(JOB_MANIFEST)) else {
            return Ok(None);
        };
        let Ok(m) = serde_json::from_str::<JobManifest>(&text) else {
            return Ok(None);
        };
        if m.format != format.name() {
            return Ok(None);
        }
        let mut w = Self::at(path, dir.clone(), format);
        w.chunks = m.chunks;
        w.columns = m
            .columns
            .map(|c| c.into_iter().map(PlSmallStr::from).collect());
        for e in std::fs::read_dir(&dir).map_err(|e| bad_output(&dir, e))? {
            let e = e.map_err(|e| bad_output(&dir, e))?;
            let name = e.file_name().to_string_lossy().to_string();
            let keep = name == JOB_MANIFEST
                || name == carry_name(m.chunks)
                || part_index(&name).is_some_and(|k| k < m.chunks && !name.ends_with(".tmp"));
            if !keep {
                let _ = std::fs::remove_file(e.path());
            }
        }
        for k in 0..m.chunks {
            if !w.part(k).is_file() {
                return Ok(None);
            }
        }
        let carry = std::fs::read(dir.join(carry_name(m.chunks))).ok();
        Ok(Some((
            w,
            Committed {
                chunks: m.chunks,
                state: m.state,
                carry,
            },
        )))
    }

    fn at(path: &Path, dir: PathBuf, format: Format) -> Self {
        Self {
            path: path.to_path_buf(),
            dir,
            format,
            columns: None,
            chunks: 0,
            pending: false,
            rows: 0,
            finished: false,
        }
    }

    fn part(&self, k: usize) -> PathBuf {
        let ext = match self.format {
            Format::Csv => "csv",
            Format::Parquet => "parquet",
            Format::Jsonl => "jsonl",
        };
        self.dir.join(format!("part-{k:08}.{ext}"))
    }

    fn save_manifest(&mut self, state: &serde_json::Value) -> Result<()> {
        let m = JobManifest {
            format: self.format.name().into(),
            chunks: self.chunks,
            columns: self
                .columns
                .as_ref()
                .map(|c| c.iter().map(|s| s.to_string()).collect()),
            state: state.clone(),
        };
        let text = serde_json::to_vec(&m).map_err(DataError::internal)?;
        self.replace_synced(JOB_MANIFEST, &text)
    }

    /// Put `bytes` in the job directory as `name`, whole or not at all:
    /// written and synced as `name.tmp`, then renamed over it.
    fn replace_synced(&self, name: &str, bytes: &[u8]) -> Result<()> {
        let tmp = self.dir.join(format!("{name}.tmp"));
        write_synced(&tmp, bytes).map_err(|e| DataError::write(&tmp, e))?;
        std::fs::rename(&tmp, self.dir.join(name)).map_err(|e| DataError::write(&self.path, e))
    }

    /// Committed chunks.
    pub fn chunks(&self) -> usize {
        self.chunks
    }

    /// Rows written by this writer (not counting a resumed job's earlier rows).
    pub fn rows_written(&self) -> usize {
        self.rows
    }

    /// Write and commit a chunk ([`Self::write_part`] then [`Self::commit`]).
    pub fn write(&mut self, df: &mut DataFrame, state: &serde_json::Value) -> Result<()> {
        self.write_part(df)?;
        self.commit(state)
    }

    /// Write the next part file (synced, under a temporary name); every
    /// chunk must have the same columns as the first.
    pub fn write_part(&mut self, df: &mut DataFrame) -> Result<()> {
        let path = &self.path;
        let names = df.get_column_names_owned();
        match &self.columns {
            Some(c) if *c != names => {
                return Err(DataError::Internal(format!(
                    "{}: chunk columns [{}] differ from the first chunk's [{}]",
                    path.display(),
                    names.join(", "),
                    c.join(", ")
                )))
            }
            Some(_) => {}
            None => self.columns = Some(names),
        }
        let tmp = self.part(self.chunks).with_extension("tmp");
        let werr = |e: &dyn std::fmt::Display| DataError::write(path, e);
        let file = File::create(&tmp).map_err(|e| werr(&e))?;
        let mut w = BufWriter::with_capacity(READ_BLOCK, file);
        match self.format {
            Format::Csv => CsvWriter::new(&mut w)
                .include_header(self.chunks == 0)
                .finish(df)
                .map_err(|e| werr(&e))?,
            Format::Parquet => {
                df.align_chunks_par();
                ParquetWriter::new(&mut w)
                    .finish(df)
                    .map_err(|e| werr(&e))?;
            }
            Format::Jsonl => JsonWriter::new(&mut w)
                .with_json_format(JsonFormat::JsonLines)
                .finish(df)
                .map_err(|e| werr(&e))?,
        }
        let f = w.into_inner().map_err(|e| werr(e.error()))?;
        f.sync_all().map_err(|e| werr(&e))?;
        self.pending = true;
        self.rows += df.height();
        Ok(())
    }

    /// Commit the part written last, recording `state` with it.
    pub fn commit(&mut self, state: &serde_json::Value) -> Result<()> {
        if !self.pending {
            return Err(DataError::Internal("commit without a written part".into()));
        }
        let part = self.part(self.chunks);
        std::fs::rename(part.with_extension("tmp"), &part)
            .map_err(|e| DataError::write(&self.path, e))?;
        self.pending = false;
        self.chunks += 1;
        self.save_manifest(state)
    }

    /// [`Self::commit`], with `carry` kept beside the chunk (synced before
    /// the commit is recorded): what the job needs to go on from this chunk
    /// that its `state` cannot hold, handed back by [`Self::resume`]. Only
    /// the last committed chunk's is kept.
    pub fn commit_carrying(&mut self, state: &serde_json::Value, carry: &[u8]) -> Result<()> {
        self.replace_synced(&carry_name(self.chunks + 1), carry)?;
        self.commit(state)?;
        if self.chunks > 1 {
            let _ = std::fs::remove_file(self.dir.join(carry_name(self.chunks - 1)));
        }
        Ok(())
    }

    /// Join the committed parts into the output (atomically) and remove the
    /// job directory.
    pub fn finish(mut self) -> Result<()> {
        let path = self.path.clone();
        let werr = |e: &dyn std::fmt::Display| DataError::write(&path, e);
        let tmp = temp_sibling(&path);
        let res = (|| -> Result<()> {
            let file = File::create(&tmp).map_err(|e| werr(&e))?;
            let mut w = BufWriter::with_capacity(READ_BLOCK, file);
            match self.format {
                Format::Csv | Format::Jsonl => {
                    for k in 0..self.chunks {
                        let mut part = File::open(self.part(k)).map_err(|e| werr(&e))?;
                        std::io::copy(&mut part, &mut w).map_err(|e| werr(&e))?;
                    }
                }
                Format::Parquet => {
                    let mut batched = None;
                    for k in 0..self.chunks {
                        let part = File::open(self.part(k)).map_err(|e| werr(&e))?;
                        let mut df = ParquetReader::new(part).finish().map_err(|e| werr(&e))?;
                        if batched.is_none() {
                            batched = Some(
                                ParquetWriter::new(&mut w)
                                    .batched(df.schema())
                                    .map_err(|e| werr(&e))?,
                            );
                        }
                        df.align_chunks_par();
                        batched
                            .as_mut()
                            .unwrap()
                            .write_batch(&df)
                            .map_err(|e| werr(&e))?;
                    }
                    match batched {
                        Some(b) => {
                            b.finish().map_err(|e| werr(&e))?;
                        }
                        None => {
                            // No chunk at all: still a valid, empty file.
                            ParquetWriter::new(&mut w)
                                .finish(&mut DataFrame::empty())
                                .map_err(|e| werr(&e))?;
                        }
                    }
                }
            }
            let f = w.into_inner().map_err(|e| werr(e.error()))?;
            f.sync_all().map_err(|e| werr(&e))?;
            std::fs::rename(&tmp, &path).map_err(|e| werr(&e))
        })();
        if res.is_err() {
            let _ = std::fs::remove_file(&tmp);
            return res;
        }
        self.finished = true;
        let _ = std::fs::remove_dir_all(&self.dir);
        Ok(())
    }
}

impl Drop for ChunkWriter {
    /// A job that committed nothing leaves nothing behind; one that did
    /// keeps its directory for `--resume`.
    fn drop(&mut self) {
        if !self.finished && self.chunks == 0 {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

fn part_index(name: &str) -> Option<usize> {
    let rest = name.strip_prefix("part-")?;
    rest.split('.').next()?.parse().ok()
}

fn write_synced(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut f = File::create(path)?;
    f.write_all(bytes)?;
    f.sync_all()
}

/// Refuse an output path that cannot be written (exit 2), before any
/// work: its folder is created; a directory in its place is refused.
/// Temporary files that killed runs left beside it are removed.
fn check_output(path: &Path) -> Result<()> {
    if path.is_dir() {
        return Err(bad_output(path, "is a directory"));
    }
    create_parent(path).map_err(|e| match e {
        DataError::Write { path, msg } => DataError::Output { path, msg },
        e => e,
    })?;
    remove_stale_temps(path);
    Ok(())
}

/// Remove `.NAME.tmp-PID` files beside `path` whose process is gone (on
/// systems with /proc; elsewhere they are left).
fn remove_stale_temps(path: &Path) {
    let Some(name) = path.file_name().map(|n| n.to_string_lossy().to_string()) else {
        return;
    };
    let prefix = format!(".{name}.tmp-");
    let dir = match path.parent().filter(|p| !p.as_os_str().is_empty()) {
        Some(p) => p.to_path_buf(),
        None => PathBuf::from("."),
    };
    if !Path::new("/proc/self").exists() {
        return;
    }
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return;
    };
    for e in entries.flatten() {
        let n = e.file_name().to_string_lossy().to_string();
        let Some(pid) = n.strip_prefix(&prefix).and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if pid != std::process::id() && !Path::new("/proc").join(pid.to_string()).exists() {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

/// The raw texts of a chunk's `text_column`, `None` where the text is
/// missing or has nothing left after normalisation. They go to the engine
/// as they are: it prepares every text with the bundle's recorded pipeline
/// (`casetag_core::text`), exactly as for `serve`. (A turn-level table's
/// chunks are already one row per case: [`ChunkReader`] joins them.)
pub fn chunk_texts(df: &DataFrame, text_column: &str) -> Result<Vec<Option<String>>> {
    if df.width() == 0 {
        // A chunk of damaged rows only (no column could be read): each row
        // carries its fault and has no text.
        return Ok(vec![None; df.height()]);
    }
    let col = df.column(text_column).map_err(|_| {
        let found: Vec<&str> = df.get_column_names().iter().map(|n| n.as_str()).collect();
        missing_column(text_column, &found)
    })?;
    column_texts(col)
}

/// The error for a table without column `name`, listing the columns it has.
pub fn missing_column(name: &str, found: &[&str]) -> DataError {
    DataError::Usage(format!(
        "column '{}': missing (found: {})",
        printable(name),
        printable(&found.join(", "))
    ))
}

/// The model text per row of a text column, as [`chunk_texts`] gives it:
/// `None` where the text is missing or empty after normalisation. A column
/// of another type is read as text (numbers as digits) or refused.
pub fn column_texts(col: &Column) -> Result<Vec<Option<String>>> {
    let col = col.cast(&DataType::String).map_err(|e| {
        DataError::Usage(format!(
            "column '{}': cannot read as text: {e}",
            printable(col.name())
        ))
    })?;
    let texts: Vec<Option<&str>> = col.str().map_err(DataError::internal)?.iter().collect();
    Ok(texts
        .par_iter()
        .with_min_len(256)
        .map(|t| {
            t.filter(|t| !normalize_text(t).is_empty())
                .map(str::to_string)
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The bytes carried with a commit come back with the last committed
    /// chunk on resume; earlier ones and uncommitted ones are dropped.
    #[test]
    fn the_last_commits_carry_comes_back_on_resume() {
        let tmp = tempfile::tempdir().unwrap();
        let out = tmp.path().join("o.csv");
        let mut w = ChunkWriter::create(&out, Format::Csv).unwrap();
        let mut df = df!("a" => [1i64, 2]).unwrap();
        for k in 1..=3u8 {
            w.write_part(&mut df).unwrap();
            w.commit_carrying(&serde_json::json!(k), &[k; 5]).unwrap();
        }
        // A fourth part written and carried, never committed.
        w.write_part(&mut df).unwrap();
        std::fs::write(job_dir(&out).join(carry_name(4)), [4u8; 5]).unwrap();
        drop(w);
        let (w, done) = ChunkWriter::resume(&out, Format::Csv).unwrap().unwrap();
        assert_eq!((done.chunks, done.state.clone()), (3, serde_json::json!(3)));
        assert_eq!(done.carry, Some(vec![3u8; 5]));
        let mut carried: Vec<String> = std::fs::read_dir(job_dir(&out))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
            .filter(|n| n.starts_with("carry-"))
            .collect();
        carried.sort();
        assert_eq!(carried, [carry_name(3)]);
        w.finish().unwrap();
        assert_eq!(std::fs::read_to_string(&out).unwrap().lines().count(), 7);
    }

    #[test]
    fn big_integers_are_widened_outside_strings_only() {
        assert_eq!(
            widen_big_integers(r#"{"a": 1, "b": -5, "c": 1.5e300}"#),
            None
        );
        assert_eq!(
            widen_big_integers(r#"{"a": 18446744073709551616, "t": "99999999999999999999"}"#)
                .as_deref(),
            Some(r#"{"a": 18446744073709551616.0, "t": "99999999999999999999"}"#)
        );
        assert_eq!(
            widen_big_integers(
                r#"{"a": [-9223372036854775809, 9223372036854775807], "s": "\"1\""}"#
            )
            .as_deref(),
            Some(r#"{"a": [-9223372036854775809.0, 9223372036854775807], "s": "\"1\""}"#)
        );
    }

    fn scan(s: &str, eof: bool, first: bool) -> (Scan, Vec<Span>) {
        let mut f = Vec::new();
        let r = scan_record(s.as_bytes(), eof, first, &mut f);
        (r, f)
    }

    fn values(s: &str) -> Vec<Option<String>> {
        let (r, f) = scan(s, true, false);
        assert!(matches!(r, Scan::Record { .. }), "{r:?}");
        f.iter()
            .map(|f| {
                field_bytes(s.as_bytes(), f).map(|b| String::from_utf8(b.into_owned()).unwrap())
            })
            .collect()
    }

    #[test]
    fn fields_are_split_and_unquoted() {
        assert_eq!(
            values("a,\"b,\"\"c\"\"\",,\"\"\r\n"),
            [
                Some("a".into()),
                Some("b,\"c\"".into()),
                None,
                Some(String::new())
            ]
        );
        assert_eq!(
            values("x,\"multi\nline\"\n"),
            [Some("x".into()), Some("multi\nline".into())]
        );
        // A quote inside an unquoted field is literal.
        assert_eq!(values("ab\"c,d"), [Some("ab\"c".into()), Some("d".into())]);
        // Text after a closing quote is kept and flagged.
        let (_, f) = scan("\"ab\"cd,e\n", true, false);
        assert!(f[0].trailing && !f[1].trailing);
        assert_eq!(values("\"ab\"cd,e\n")[0].as_deref(), Some("abcd"));
    }

    #[test]
    fn records_wait_for_their_end() {
        assert_eq!(scan("a,b", false, false).0, Scan::More);
        assert_eq!(scan("a,\"b\n", false, false).0, Scan::More);
        assert_eq!(scan("a,\"b\"", false, false).0, Scan::More);
        assert_eq!(scan("a,\"b\n", true, false).0, Scan::Unclosed);
        let (r, f) = scan("a,\"b\nc,d\n", true, true);
        assert_eq!(r, Scan::Record { end: 5, breaks: 1 });
        assert!(f[1].unclosed);
    }
}

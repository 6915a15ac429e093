//! Streaming table I/O for `casetag tag` over millions of rows: the file is
//! read and written chunk by chunk, never held in memory whole.
//!
//! polars 0.55 has no public batched CSV reader any more, so CSV records are
//! cut from the byte stream here (quote-aware, so newlines inside quoted
//! fields are kept) and each chunk is parsed by polars' CSV reader. Every CSV
//! column is read as text: a type inferred from the first chunk could fail on
//! row three million, and the output is text anyway. Parquet is read by row
//! range (polars skips row groups outside the range, and the footer is parsed
//! once); JSONL is read N lines at a time and parsed with polars' JSON-lines
//! reader using the first chunk's schema.

use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Cursor, Read};
use std::path::{Path, PathBuf};

use polars::prelude::*;
use rayon::prelude::*;

use crate::cases::{InputKind, TEXT};
use crate::error::{DataError, Result};
use crate::io::{create_parent, temp_sibling, Format};
use casetag_core::text::normalize_text;

const READ_BLOCK: usize = 1 << 20;

/// Reads a table in chunks of at most `chunk_rows` rows.
pub struct ChunkReader {
    path: PathBuf,
    chunk_rows: usize,
    /// Data rows handed out so far.
    rows_read: usize,
    inner: Inner,
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
    },
    Jsonl {
        reader: BufReader<File>,
        schema: Option<SchemaRef>,
        line_no: usize,
    },
}

impl ChunkReader {
    /// Open a table for chunked reading (format by extension).
    pub fn open(path: &Path, chunk_rows: usize) -> Result<Self> {
        let fmt = Format::from_path(path)?;
        if chunk_rows == 0 {
            return Err(DataError::Usage("chunk size must be at least 1 row".into()));
        }
        let file = File::open(path).map_err(|e| DataError::read(path, e))?;
        let inner = match fmt {
            Format::Csv => {
                Inner::Csv(CsvChunks::new(file).map_err(|m| DataError::parse(path, "CSV", m))?)
            }
            Format::Parquet => {
                let mut r = ParquetReader::new(file);
                let metadata = r
                    .get_metadata()
                    .map_err(|e| DataError::parse(path, "Parquet", e))?
                    .clone();
                let total = metadata.num_rows;
                Inner::Parquet { metadata, total }
            }
            Format::Jsonl => Inner::Jsonl {
                reader: BufReader::with_capacity(READ_BLOCK, file),
                schema: None,
                line_no: 0,
            },
        };
        Ok(Self {
            path: path.to_path_buf(),
            chunk_rows,
            rows_read: 0,
            inner,
        })
    }

    /// Total number of data rows when the format records it (Parquet), else `None`.
    pub fn total_rows_hint(&self) -> Option<usize> {
        match &self.inner {
            Inner::Parquet { total, .. } => Some(*total),
            _ => None,
        }
    }

    /// Data rows returned so far.
    pub fn rows_read(&self) -> usize {
        self.rows_read
    }

    /// The next chunk, or `None` at the end of the table.
    pub fn next_chunk(&mut self) -> Result<Option<DataFrame>> {
        let path = &self.path;
        let first_row = self.rows_read + 1;
        let df = match &mut self.inner {
            Inner::Csv(c) => {
                let Some(bytes) = c.next_records(self.chunk_rows).map_err(|m| {
                    DataError::parse(path, "CSV", format!("after row {}: {m}", first_row - 1))
                })?
                else {
                    return Ok(None);
                };
                let df = CsvReadOptions::default()
                    .with_has_header(true)
                    .with_infer_schema_length(Some(0))
                    .with_raise_if_empty(false)
                    .into_reader_with_file_handle(Cursor::new(bytes))
                    .finish()
                    .map_err(|e| {
                        DataError::parse(
                            path,
                            "CSV",
                            format!("rows {first_row}-{}: {e}", first_row + self.chunk_rows - 1),
                        )
                    })?;
                if df.width() != c.n_fields {
                    return Err(DataError::parse(
                        path,
                        "CSV",
                        format!(
                            "rows {first_row}-{}: expected {} columns, found {}",
                            first_row + self.chunk_rows - 1,
                            c.n_fields,
                            df.width()
                        ),
                    ));
                }
                df
            }
            Inner::Parquet { metadata, total } => {
                if self.rows_read >= *total {
                    return Ok(None);
                }
                let file = File::open(path).map_err(|e| DataError::read(path, e))?;
                let mut r =
                    ParquetReader::new(file).with_slice(Some((self.rows_read, self.chunk_rows)));
                r.set_metadata(metadata.clone());
                r.finish().map_err(|e| {
                    DataError::parse(path, "Parquet", format!("rows from {first_row}: {e}"))
                })?
            }
            Inner::Jsonl {
                reader,
                schema,
                line_no,
            } => {
                let mut bytes = Vec::new();
                let mut n = 0;
                let mut line = Vec::new();
                while n < self.chunk_rows {
                    line.clear();
                    let got = reader
                        .read_until(b'\n', &mut line)
                        .map_err(|e| DataError::read(path, e))?;
                    if got == 0 {
                        break;
                    }
                    *line_no += 1;
                    if line.iter().all(u8::is_ascii_whitespace) {
                        continue;
                    }
                    bytes.extend_from_slice(&line);
                    if !line.ends_with(b"\n") {
                        bytes.push(b'\n');
                    }
                    n += 1;
                }
                if n == 0 {
                    return Ok(None);
                }
                let mut jr = JsonReader::new(Cursor::new(bytes))
                    .with_json_format(JsonFormat::JsonLines)
                    .infer_schema_len(None);
                if let Some(s) = schema.as_ref() {
                    jr = jr.with_schema(s.clone());
                }
                let df = jr.finish().map_err(|e| {
                    DataError::parse(path, "JSONL", format!("lines up to {}: {e}", *line_no))
                })?;
                if schema.is_none() {
                    // Columns that are all-null in the first chunk are typed
                    // Null; later chunks may hold text there.
                    let s: Schema = df
                        .schema()
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
                    *schema = Some(Arc::new(s));
                }
                df
            }
        };
        self.rows_read += df.height();
        Ok(Some(df))
    }
}

/// Quote-aware CSV record cutter over a byte stream.
struct CsvChunks {
    reader: File,
    header: Vec<u8>,
    n_fields: usize,
    buf: Vec<u8>,
    eof: bool,
}

/// Scan state while looking for record ends.
#[derive(Clone, Copy)]
struct Scan {
    in_quote: bool,
    field_start: bool,
}

impl CsvChunks {
    fn new(reader: File) -> std::result::Result<Self, String> {
        let mut c = Self {
            reader,
            header: Vec::new(),
            n_fields: 0,
            buf: Vec::new(),
            eof: false,
        };
        let mut header = c.next_records(1)?.unwrap_or_default();
        if header.starts_with(b"\xEF\xBB\xBF") {
            header.drain(..3);
        }
        if header.iter().all(u8::is_ascii_whitespace) {
            return Err("the file is empty (no header row)".into());
        }
        if !header.ends_with(b"\n") {
            header.push(b'\n');
        }
        // Count header fields (quote-aware) to catch ragged chunks later.
        let mut n = 1;
        let mut q = false;
        for &b in &header {
            match b {
                b'"' => q = !q,
                b',' if !q => n += 1,
                _ => {}
            }
        }
        c.n_fields = n;
        c.header = header;
        Ok(c)
    }

    fn fill(&mut self) -> std::result::Result<(), String> {
        let old = self.buf.len();
        self.buf.resize(old + READ_BLOCK, 0);
        let n = loop {
            match self.reader.read(&mut self.buf[old..]) {
                Ok(n) => break n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e.to_string()),
            }
        };
        self.buf.truncate(old + n);
        if n == 0 {
            self.eof = true;
        }
        Ok(())
    }

    /// The next `n` records as bytes, with the header prepended (except when
    /// reading the header itself), or `None` at the end.
    fn next_records(&mut self, n: usize) -> std::result::Result<Option<Vec<u8>>, String> {
        let mut pos = 0;
        let mut st = Scan {
            in_quote: false,
            field_start: true,
        };
        let mut found = 0;
        let cut = 'outer: loop {
            while pos < self.buf.len() {
                let b = self.buf[pos];
                if st.in_quote {
                    if b == b'"' {
                        if pos + 1 < self.buf.len() {
                            if self.buf[pos + 1] == b'"' {
                                pos += 2;
                                continue;
                            }
                            st.in_quote = false;
                        } else if !self.eof {
                            // Need the next byte to tell `""` from a closing quote.
                            break;
                        } else {
                            st.in_quote = false;
                        }
                    }
                    pos += 1;
                    continue;
                }
                match b {
                    b'"' if st.field_start => {
                        st.in_quote = true;
                        st.field_start = false;
                    }
                    b',' => st.field_start = true,
                    b'\n' => {
                        st.field_start = true;
                        found += 1;
                        if found == n {
                            break 'outer pos + 1;
                        }
                    }
                    b'\r' => {}
                    _ => st.field_start = false,
                }
                pos += 1;
            }
            if self.eof {
                if st.in_quote {
                    return Err("unbalanced quote: a quoted field is never closed".into());
                }
                break self.buf.len();
            }
            self.fill()?;
        };
        let rest = self.buf.split_off(cut);
        let chunk = std::mem::replace(&mut self.buf, rest);
        if chunk.iter().all(u8::is_ascii_whitespace) {
            return Ok(None);
        }
        if self.header.is_empty() {
            return Ok(Some(chunk));
        }
        let mut out = Vec::with_capacity(self.header.len() + chunk.len() + 1);
        out.extend_from_slice(&self.header);
        out.extend_from_slice(&chunk);
        if !out.ends_with(b"\n") {
            out.push(b'\n');
        }
        Ok(Some(out))
    }
}

/// Writes a table chunk by chunk into a temporary sibling file that is
/// renamed into place by [`ChunkWriter::finish`]; dropping the writer without
/// finishing removes the temporary file.
pub struct ChunkWriter {
    path: PathBuf,
    tmp: PathBuf,
    inner: Option<WriterInner>,
    columns: Option<Vec<PlSmallStr>>,
    rows: usize,
}

impl std::fmt::Debug for ChunkWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChunkWriter")
            .field("path", &self.path)
            .field("rows", &self.rows)
            .finish_non_exhaustive()
    }
}

enum WriterInner {
    Csv(BufWriter<File>),
    /// The batched Parquet writer needs the schema, known at the first chunk.
    Parquet(
        Option<File>,
        Option<Box<polars::io::parquet::write::BatchedWriter<File>>>,
    ),
    Jsonl(BufWriter<File>),
}

impl ChunkWriter {
    pub fn create(path: &Path, format: Format) -> Result<Self> {
        create_parent(path)?;
        let tmp = temp_sibling(path);
        let file = File::create(&tmp).map_err(|e| DataError::write(path, e))?;
        let inner = match format {
            Format::Csv => WriterInner::Csv(BufWriter::with_capacity(READ_BLOCK, file)),
            Format::Parquet => WriterInner::Parquet(Some(file), None),
            Format::Jsonl => WriterInner::Jsonl(BufWriter::with_capacity(READ_BLOCK, file)),
        };
        Ok(Self {
            path: path.to_path_buf(),
            tmp,
            inner: Some(inner),
            columns: None,
            rows: 0,
        })
    }

    /// Rows written so far.
    pub fn rows_written(&self) -> usize {
        self.rows
    }

    /// Append a chunk; every chunk must have the same columns as the first.
    pub fn write(&mut self, df: &mut DataFrame) -> Result<()> {
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
        let first = self.rows == 0;
        let werr = |e: PolarsError| DataError::write(path, e);
        match self.inner.as_mut().expect("writer used after finish") {
            WriterInner::Csv(w) => CsvWriter::new(w)
                .include_header(first)
                .finish(df)
                .map_err(werr)?,
            WriterInner::Parquet(file, batched) => {
                if batched.is_none() {
                    let f = file.take().expect("parquet file");
                    *batched = Some(Box::new(
                        ParquetWriter::new(f).batched(df.schema()).map_err(werr)?,
                    ));
                }
                df.align_chunks_par();
                batched.as_mut().unwrap().write_batch(df).map_err(werr)?;
            }
            WriterInner::Jsonl(w) => JsonWriter::new(w)
                .with_json_format(JsonFormat::JsonLines)
                .finish(df)
                .map_err(werr)?,
        }
        self.rows += df.height();
        Ok(())
    }

    /// Flush, close and move the file into place.
    pub fn finish(mut self) -> Result<()> {
        let path = self.path.clone();
        let werr = |e: &dyn std::fmt::Display| DataError::write(&path, e);
        match self.inner.take().expect("writer finished twice") {
            WriterInner::Csv(w) | WriterInner::Jsonl(w) => {
                let f = w.into_inner().map_err(|e| werr(e.error()))?;
                f.sync_all().map_err(|e| werr(&e))?;
            }
            WriterInner::Parquet(file, batched) => match batched {
                Some(b) => {
                    b.finish().map_err(|e| werr(&e))?;
                }
                None => {
                    // No chunk at all: still write a valid, empty file.
                    let f = file.expect("parquet file");
                    ParquetWriter::new(f)
                        .finish(&mut DataFrame::empty())
                        .map_err(|e| werr(&e))?;
                }
            },
        }
        std::fs::rename(&self.tmp, &self.path).map_err(|e| werr(&e))
    }
}

impl Drop for ChunkWriter {
    fn drop(&mut self) {
        if self.inner.is_some() {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

/// The raw texts of a case-level chunk, `None` where the text is missing or
/// has nothing left after normalisation. They go to the engine as they are:
/// it prepares every text with the bundle's recorded pipeline
/// (`casetag_core::text`), exactly as for `serve`.
/// Turn-level chunks are rejected: streaming cannot join turns that may span
/// chunks, so `tag` needs a case-level table (run `prepare` first).
pub fn chunk_texts(df: &DataFrame) -> Result<Vec<Option<String>>> {
    if InputKind::detect(df.schema()) == InputKind::Turn {
        return Err(DataError::Usage(
            "turn-level input (columns case_id, turn, speaker, text) cannot be tagged as a stream; \
             join turns first with `casetag prepare` or pass a case-level table"
                .into(),
        ));
    }
    let col = df.column(TEXT).map_err(|_| {
        DataError::Usage(format!(
            "column 'text': missing (found: {})",
            df.get_column_names()
                .iter()
                .map(|n| n.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ))
    })?;
    let col = col
        .cast(&DataType::String)
        .map_err(|e| DataError::Usage(format!("column 'text': cannot read as text: {e}")))?;
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

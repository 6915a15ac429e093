//! Whole-table I/O by file extension. Reading goes through polars' lazy scans
//! so projections and casts are pushed into the reader; the streaming
//! counterparts for `casetag tag` live in `stream.rs`.

use std::fs::File;
use std::io::BufWriter;
use std::path::{Path, PathBuf};

use polars::prelude::*;

use crate::error::{DataError, Result};

/// Table formats, chosen by file extension.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "cli", derive(clap::ValueEnum))]
pub enum Format {
    Csv,
    #[cfg_attr(feature = "cli", value(alias = "pq"))]
    Parquet,
    #[cfg_attr(feature = "cli", value(alias = "ndjson"))]
    Jsonl,
}

impl Format {
    /// `.csv`, `.parquet` (or `.pq`), `.jsonl` / `.ndjson`; case-insensitive.
    pub fn from_path(path: &Path) -> Result<Format> {
        let ext = path
            .extension()
            .map(|e| e.to_string_lossy().to_ascii_lowercase())
            .unwrap_or_default();
        match ext.as_str() {
            "csv" => Ok(Format::Csv),
            "parquet" | "pq" => Ok(Format::Parquet),
            "jsonl" | "ndjson" => Ok(Format::Jsonl),
            _ => Err(DataError::Usage(format!(
                "{}: unsupported table format '{}' (use .csv, .parquet, .jsonl or .ndjson)",
                path.display(),
                if ext.is_empty() {
                    "<no extension>"
                } else {
                    &ext
                }
            ))),
        }
    }

    /// The file extension this format is written with.
    pub fn extension(self) -> &'static str {
        match self {
            Format::Csv => "csv",
            Format::Parquet => "parquet",
            Format::Jsonl => "jsonl",
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Format::Csv => "CSV",
            Format::Parquet => "Parquet",
            Format::Jsonl => "JSONL",
        }
    }
}

/// Rows used to infer CSV/JSONL column types. Large enough that a column which
/// looks numeric only in its first rows is rarely mistyped; prepare is an
/// offline step, so the extra scan is cheap next to training.
pub(crate) const INFER_ROWS: usize = 10_000;

fn pl_path(path: &Path) -> Result<PlRefPath> {
    PlRefPath::try_from_path(path).map_err(|e| DataError::read(path, e))
}

fn check_readable(path: &Path) -> Result<Format> {
    let fmt = Format::from_path(path)?;
    match std::fs::metadata(path) {
        Ok(m) if m.is_file() => Ok(fmt),
        Ok(_) => Err(DataError::read(path, "not a file")),
        Err(e) => Err(DataError::read(path, e)),
    }
}

/// A lazy scan of a table; nothing is read until `collect`.
pub(crate) fn scan(path: &Path) -> Result<(LazyFrame, Format)> {
    let fmt = check_readable(path)?;
    if fmt == Format::Csv {
        // polars renames a repeated header name (`x_duplicated_0`); refuse
        // it instead, with the streaming reader's header check.
        crate::stream::csv_header(path)?;
    }
    let p = pl_path(path)?;
    let lf = match fmt {
        Format::Csv => LazyCsvReader::new(p)
            .with_has_header(true)
            .with_glob(false)
            .with_infer_schema_length(Some(INFER_ROWS))
            .finish(),
        Format::Parquet => LazyFrame::scan_parquet(
            p,
            ScanArgsParquet {
                glob: false,
                ..Default::default()
            },
        ),
        // Through the streaming reader, which checks every line first
        // (polars' own JSON reader panics on some valid input, e.g. an
        // integer beyond 64 bits); for a whole-table read a damaged line is
        // an error naming it.
        Format::Jsonl => return Ok((read_jsonl(path)?.lazy(), fmt)),
    }
    .map_err(|e| DataError::parse(path, fmt.name(), e))?;
    Ok((lf, fmt))
}

/// A whole JSONL file, read through [`crate::ChunkReader`]; the first
/// damaged line is an error.
fn read_jsonl(path: &Path) -> Result<DataFrame> {
    let mut r = crate::ChunkReader::open_rows(path, 1 << 16)?;
    let mut df: Option<DataFrame> = None;
    while let Some(chunk) = r.next_chunk()? {
        if let Some(f) = chunk.faults.iter().flatten().next() {
            return Err(DataError::Usage(f.clone()));
        }
        match &mut df {
            Some(d) => {
                d.vstack_mut(&chunk.df)
                    .map_err(|e| DataError::parse(path, "JSONL", e))?;
            }
            None => df = Some(chunk.df),
        }
    }
    Ok(df.or_else(|| r.empty_frame()).unwrap_or_default())
}

/// Collect a lazy frame read from `path`, mapping polars errors to a one-line
/// parse error naming the file.
pub(crate) fn collect(lf: LazyFrame, path: &Path, fmt: Format) -> Result<DataFrame> {
    lf.collect()
        .map_err(|e| DataError::parse(path, fmt.name(), e))
}

/// The column names of a table, from its header or schema; no rows are read.
pub fn table_columns(path: &Path) -> Result<Vec<String>> {
    let (mut lf, fmt) = scan(path)?;
    let schema = lf
        .collect_schema()
        .map_err(|e| DataError::parse(path, fmt.name(), e))?;
    Ok(schema.iter_names().map(|n| n.to_string()).collect())
}

/// Read a whole table (format by extension).
pub fn read_table(path: &Path) -> Result<DataFrame> {
    let (lf, fmt) = scan(path)?;
    collect(lf, path, fmt)
}

/// A sibling temporary path; output is written there and renamed into place
/// so a reader never sees a half-written table.
pub(crate) fn temp_sibling(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_else(|| "out".into());
    path.with_file_name(format!(".{name}.tmp-{}", std::process::id()))
}

pub(crate) fn create_parent(path: &Path) -> Result<()> {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(|e| DataError::write(parent, e))?;
    }
    Ok(())
}

/// Write a whole table (format by extension), atomically.
pub fn write_table(df: &mut DataFrame, path: &Path) -> Result<()> {
    let fmt = Format::from_path(path)?;
    create_parent(path)?;
    let tmp = temp_sibling(path);
    let res = (|| -> Result<()> {
        let file = File::create(&tmp).map_err(|e| DataError::write(path, e))?;
        let mut w = BufWriter::new(file);
        match fmt {
            Format::Csv => CsvWriter::new(&mut w)
                .include_header(true)
                .finish(df)
                .map_err(|e| DataError::write(path, e))?,
            Format::Parquet => {
                ParquetWriter::new(&mut w)
                    .finish(df)
                    .map_err(|e| DataError::write(path, e))?;
            }
            Format::Jsonl => JsonWriter::new(&mut w)
                .with_json_format(JsonFormat::JsonLines)
                .finish(df)
                .map_err(|e| DataError::write(path, e))?,
        }
        let file = w
            .into_inner()
            .map_err(|e| DataError::write(path, e.error()))?;
        file.sync_all().map_err(|e| DataError::write(path, e))?;
        std::fs::rename(&tmp, path).map_err(|e| DataError::write(path, e))
    })();
    if res.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    res
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn format_by_extension() {
        assert_eq!(Format::from_path(Path::new("a.CSV")).unwrap(), Format::Csv);
        assert_eq!(
            Format::from_path(Path::new("x/a.parquet")).unwrap(),
            Format::Parquet
        );
        assert_eq!(
            Format::from_path(Path::new("a.ndjson")).unwrap(),
            Format::Jsonl
        );
        let e = Format::from_path(Path::new("data/cases.xlsx")).unwrap_err();
        assert!(e.is_input());
        let m = e.to_string();
        assert!(m.contains("data/cases.xlsx") && m.contains("'xlsx'"), "{m}");
    }

    #[test]
    fn missing_file_is_named() {
        let e = read_table(Path::new("/nonexistent/cases.csv")).unwrap_err();
        assert!(e.is_input());
        assert!(e.to_string().starts_with("/nonexistent/cases.csv: "), "{e}");
    }
}

#![forbid(unsafe_code)]
//! casetag-data: everything between a raw case table and the models.
//!
//! Place in the pipeline: `casetag prepare` reads a case table (CSV, Parquet or
//! JSONL; one row per case or one row per turn), joins turns into transcripts,
//! normalizes and masks the text, drops empty and duplicate cases, validates the
//! labels against a taxonomy and writes a stratified train/val/test split.
//! `train` and `eval` load prepared tables with [`load_cases`]; `tag` streams
//! millions of rows through [`ChunkReader`] / [`ChunkWriter`] without holding the
//! file in memory.
//!
//! polars lives only in this crate (and the binary that calls it), so the HTTP
//! server build never pulls it in. Errors are one line and name the file, row
//! and column at fault; [`DataError::is_input`] tells the CLI whether to exit 2
//! (bad input or usage) or 1 (internal failure).

mod cases;
mod error;
mod io;
mod prepare;
mod stream;

pub use cases::{join_turns, load_cases, InputKind, LabeledCase};
pub use casetag_core::text::{mask_pii, normalize_text, TextPipeline};
pub use error::{printable, DataError, Result};
pub use io::{read_table, table_columns, write_table, Format};
pub use prepare::{
    prepare, split_indices, PrepareConfig, PrepareStats, SplitCounts, TextLenQuantiles,
};
pub use stream::{
    check_case_columns, chunk_texts, column_texts, job_dir, missing_column, Chunk, ChunkReader,
    ChunkWriter, Committed, Position,
};

/// Re-exported so callers can name frame types without their own polars import.
pub use polars::prelude::DataFrame;

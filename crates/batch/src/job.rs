//! A batch job: one input table tagged into one output table, streamed in
//! chunks, crash-safe and resumable. `casetag tag` runs one per input file
//! (a shard's files one after the other) and adds the flags, the progress
//! bar and the summary; everything between opening the input and moving the
//! finished output into place is here.
//!
//! Three threads overlap: one reads the next chunk while the caller's
//! thread tags this one, and one builds the output columns and writes.
//! At most one chunk waits in each hand-off. Each chunk is committed to a
//! job directory beside the output with the [`JobState`] a resumed run
//! continues from; the output appears only when every row is written.

use std::path::{Path, PathBuf};
use std::time::Instant;

use casetag_data::{
    check_case_columns, chunk_texts, Chunk, ChunkReader, ChunkWriter, DataError, Format, Position,
};
use casetag_engine::decide::Judging;
use casetag_engine::{EngineError, LoadedModel, Tagger};
use polars::prelude::DataFrame;
use serde::{Deserialize, Serialize};

use crate::{tag_chunk, Counts, RowIssue, Shape, TaggedChunk};

/// Why a job stopped: the input, the model or the output, or an internal
/// failure (the CLI's exit codes 2 and 1).
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    #[error(transparent)]
    Data(#[from] DataError),
    #[error(transparent)]
    Engine(#[from] EngineError),
    /// Bad input or usage that neither lower layer names (e.g. a resume
    /// against another job).
    #[error("{0}")]
    Input(String),
    #[error("{0}")]
    Internal(String),
}

impl JobError {
    /// Bad input or usage, as opposed to an internal failure.
    pub fn is_input(&self) -> bool {
        match self {
            JobError::Data(e) => e.is_input(),
            JobError::Engine(e) => e.is_input(),
            JobError::Input(_) => true,
            JobError::Internal(_) => false,
        }
    }
}

type Result<T> = std::result::Result<T, JobError>;

/// How a job reads and tags; a resumed run must have the same.
#[derive(Debug, Clone)]
pub struct JobOptions {
    /// Rows per chunk (at least 1).
    pub chunk_rows: usize,
    /// The column holding each case's text.
    pub text_column: String,
    /// Judge out of scope over each chunk as a whole.
    pub batch_novelty: bool,
    /// Judge out of scope for each row against this many rows before it
    /// (the window is committed with each chunk, so `resume` goes on with
    /// it).
    pub stream_window: Option<usize>,
    /// Per-level alternatives to write (`top_l1..top_l3`; 0 for none).
    pub top_k: usize,
    /// Continue an interrupted job on the same output.
    pub resume: bool,
}

/// What a job tells its caller as it goes, on the caller's thread.
pub enum JobEvent<'a> {
    /// Tagging starts: the rows to tag when the input records them
    /// (Parquet), else the input's size in bytes (CSV, JSONL), which
    /// [`JobEvent::Progress`] then counts in.
    Started {
        total_rows: Option<usize>,
        total_bytes: u64,
    },
    /// Rows tagged so far (resumed ones included) and the input byte
    /// reached.
    Progress { rows: usize, byte: u64 },
    /// An interrupted job continues after `chunks` committed chunks.
    Resumed { chunks: usize, rows: usize },
    /// `resume` was asked for but there is no interrupted job.
    NothingToResume,
    /// A row kept untagged: `row` is its 1-based number among the input's
    /// rows (cases, for a turn-level table).
    RowKept { row: usize, issue: RowIssue<'a> },
}

/// What tagging one file did (or, added up, a shard's files).
#[derive(Debug, Default, Clone)]
pub struct FileDone {
    pub counts: Counts,
    /// Rows an interrupted run had already written.
    pub resumed_rows: usize,
    pub secs: f64,
}

impl FileDone {
    pub fn add(&mut self, o: &FileDone) {
        self.counts.add(&o.counts);
        self.resumed_rows += o.resumed_rows;
    }

    /// The job's result line (`casetag tag` prints it; the Python package
    /// returns it per file): rows by outcome and by model, speed, output.
    pub fn summary(&self, tagger: &Tagger, output: &Path) -> serde_json::Value {
        let counts = &self.counts;
        let judging = tagger.primary.as_ref().map(|p| p.judging);
        let untagged = counts.untagged();
        serde_json::json!({
            "rows": counts.rows,
            "tagged_rows": counts.rows - untagged,
            "untagged_rows": untagged,
            "bad_input_rows": counts.bad_input,
            "empty_text_rows": counts.empty_text,
            "rows_by_model": counts.by_model,
            "fallback_rows": counts.fallback,
            "model": tagger.active().id(),
            "primary_loaded": tagger.primary.is_some(),
            "resumed_rows": self.resumed_rows,
            "batch_novelty": judging == Some(Judging::Batch),
            "stream_novelty": judging == Some(Judging::Stream),
            "seconds": self.secs,
            "cases_per_s": (counts.rows - self.resumed_rows) as f64 / self.secs.max(1e-9),
            "output": output,
        })
    }
}

/// What is committed with each chunk: the job it belongs to, where the
/// input continues, and the counts so far.
#[derive(Debug, Serialize, Deserialize)]
struct JobState {
    job: serde_json::Value,
    position: Position,
    counts: Counts,
}

/// What a resumed run must share with the interrupted one for the output
/// to be the same as an uninterrupted run's.
fn job_identity(o: &JobOptions, input_path: &Path, tagger: &Tagger) -> Result<serde_json::Value> {
    let meta = std::fs::metadata(input_path)
        .map_err(|e| JobError::Input(format!("{}: {e}", input_path.display())))?;
    let modified = meta
        .modified()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map(|d| d.as_nanos().to_string());
    let input = std::fs::canonicalize(input_path).unwrap_or_else(|_| input_path.to_path_buf());
    let model = |m: Option<&LoadedModel>| {
        m.map(|m| serde_json::json!({"id": m.id(), "kind": m.kind(), "created": m.bundle.manifest.created}))
    };
    Ok(serde_json::json!({
        "input": input,
        "input_bytes": meta.len(),
        "input_modified": modified,
        "model": model(tagger.primary.as_ref()),
        "fallback": model(tagger.fallback.as_ref()),
        "chunk_rows": o.chunk_rows,
        "text_column": o.text_column,
        "batch_novelty": o.batch_novelty,
        "stream_window": o.stream_window,
        "top_k": o.top_k,
    }))
}

/// A crash-test hook: with `CASETAG_TAG_FAILPOINT=K:part` (or `K:commit`)
/// the job stops for good once chunk K's part file is written (or
/// committed) and says so on stderr, so a test can kill it at a known
/// point of the commit protocol.
fn failpoint(chunk: usize, phase: &str) {
    let Ok(v) = std::env::var("CASETAG_TAG_FAILPOINT") else {
        return;
    };
    if v == format!("{chunk}:{phase}") {
        eprintln!("failpoint {v} reached");
        loop {
            std::thread::park();
        }
    }
}

/// An input opened and its columns checked: the reader, the first chunk
/// when it had to be read to learn the columns (JSONL), and an empty frame
/// with the input's columns.
pub struct Opened {
    path: PathBuf,
    reader: ChunkReader,
    first: Option<Chunk>,
    empty: DataFrame,
}

/// Open `input` and check that it has the text column, before any model
/// is loaded.
pub fn open_input(input: &Path, o: &JobOptions) -> Result<Opened> {
    let mut reader = ChunkReader::open(input, o.chunk_rows)?;
    let mut first = None;
    if reader.empty_frame().is_none() {
        // JSONL: the columns are those of the first chunk.
        first = reader.next_chunk()?;
    }
    let empty = first
        .as_ref()
        .map(|c| c.df.clear())
        .or_else(|| reader.empty_frame());
    if let Some(df) = &empty {
        let names: Vec<&str> = df.get_column_names().iter().map(|n| n.as_str()).collect();
        check_case_columns(input, &names, &o.text_column)?;
    }
    Ok(Opened {
        path: input.to_path_buf(),
        reader,
        first,
        empty: empty.unwrap_or_default(),
    })
}

/// Tag an opened input into `output` (its extension picks the format).
/// Rows in = rows out; a row that cannot be tagged keeps its place with
/// `error` set, and `on_event` hears of it.
pub fn tag_file(
    o: &JobOptions,
    tagger: &Tagger,
    opened: Opened,
    output: &Path,
    on_event: &mut dyn FnMut(JobEvent),
) -> Result<FileDone> {
    let Opened {
        path: input_path,
        mut reader,
        mut first,
        empty,
    } = opened;
    let out_format = Format::from_path(output)?;
    let shape = Shape::of_format(out_format);
    let top_k = o.top_k;
    let job = job_identity(o, &input_path, tagger)?;
    // A turn-level table is joined now, so its progress counts cases.
    reader.join_pending()?;

    // Each file is a stream of its own (so shards split a directory as one
    // process would); a resumed job puts its window back below.
    if let Some(p) = &tagger.primary {
        p.reset_stream();
    }
    let mut counts = Counts::default();
    let mut writer = None;
    if o.resume {
        match ChunkWriter::resume(output, out_format)? {
            Some((w, done)) if done.chunks > 0 => {
                let dir = casetag_data::job_dir(output);
                let state: JobState = serde_json::from_value(done.state).map_err(|_| {
                    JobError::Input(format!(
                        "--resume: {}: the interrupted job's state is unreadable; \
                         run without --resume to start over",
                        dir.display()
                    ))
                })?;
                if state.job != job {
                    return Err(JobError::Input(format!(
                        "--resume: {}: the interrupted job had another input, model or options; \
                         run without --resume to start over",
                        dir.display()
                    )));
                }
                if o.stream_window.is_some() {
                    let restored = done.carry.as_deref().map(|b| {
                        tagger
                            .primary
                            .as_ref()
                            .map_or(Ok(()), |p| p.restore_stream_state(b))
                    });
                    if !matches!(restored, Some(Ok(()))) {
                        return Err(JobError::Input(format!(
                            "--resume: {}: the interrupted job's stream window is missing or \
                             unreadable; run without --resume to start over",
                            dir.display()
                        )));
                    }
                }
                reader.seek(state.position)?;
                first = None;
                counts = state.counts;
                on_event(JobEvent::Resumed {
                    chunks: done.chunks,
                    rows: counts.rows,
                });
                writer = Some(w);
            }
            _ => on_event(JobEvent::NothingToResume),
        }
    }
    let writer = match writer {
        Some(w) => w,
        None => ChunkWriter::create(output, out_format)?,
    };
    let committed_before = writer.chunks();
    let resumed_rows = counts.rows;
    on_event(JobEvent::Started {
        total_rows: reader.total_rows_hint(),
        total_bytes: std::fs::metadata(&input_path).map_or(0, |m| m.len()),
    });
    on_event(JobEvent::Progress {
        rows: counts.rows,
        byte: reader.position().byte,
    });
    let t0 = Instant::now();

    // Read the next chunk on another thread while this one is tagged.
    let (tx, rx) = std::sync::mpsc::sync_channel::<Result<Chunk>>(1);
    let reader_thread = std::thread::spawn(move || {
        if let Some(c) = first {
            if tx.send(Ok(c)).is_err() {
                return;
            }
        }
        loop {
            match reader.next_chunk() {
                Ok(Some(c)) => {
                    if tx.send(Ok(c)).is_err() {
                        return;
                    }
                }
                Ok(None) => return,
                Err(e) => {
                    let _ = tx.send(Err(e.into()));
                    return;
                }
            }
        }
    });

    // Build the output columns and write on a third thread: reading, tagging
    // and writing overlap, the tagging thread goes straight on to the next
    // chunk, and at most two chunks wait in each hand-off.
    struct Done {
        df: DataFrame,
        tags: Option<TaggedChunk>,
        state: serde_json::Value,
        /// The stream window after this chunk, under `stream_window`.
        carry: Option<Vec<u8>>,
    }
    let (wtx, wrx) = std::sync::mpsc::sync_channel::<Done>(1);
    let writer_thread = std::thread::spawn(move || -> Result<ChunkWriter> {
        let mut writer = writer;
        for mut d in wrx {
            // An empty input's frame gets the columns of an empty chunk.
            let tags = d.tags.unwrap_or_else(|| TaggedChunk::empty(top_k));
            tags.attach(&mut d.df, shape)?;
            writer.write_part(&mut d.df)?;
            failpoint(writer.chunks() + 1, "part");
            match &d.carry {
                Some(c) => writer.commit_carrying(&d.state, c)?,
                None => writer.commit(&d.state)?,
            }
            failpoint(writer.chunks(), "commit");
        }
        Ok(writer)
    });

    let state = |position: Position, counts: &Counts| {
        serde_json::to_value(JobState {
            job: job.clone(),
            position,
            counts: counts.clone(),
        })
        .map_err(|e| JobError::Internal(e.to_string()))
    };
    let mut sent = 0usize;
    let tagged_all = (|| -> Result<()> {
        for chunk in rx {
            let Chunk { df, faults, end } = chunk?;
            let texts = chunk_texts(&df, &o.text_column)?;
            let first_row = counts.rows + 1;
            let tags = tag_chunk(tagger, texts, faults, &mut counts, top_k, |i, issue| {
                on_event(JobEvent::RowKept {
                    row: first_row + i,
                    issue,
                })
            })?;
            let end_byte = end.byte;
            let done = Done {
                df,
                tags: Some(tags),
                state: state(end, &counts)?,
                carry: tagger.primary.as_ref().and_then(|p| p.stream_state()),
            };
            if wtx.send(done).is_err() {
                // The writer stopped on an error; it is reported below.
                break;
            }
            sent += 1;
            on_event(JobEvent::Progress {
                rows: counts.rows,
                byte: end_byte,
            });
        }
        Ok(())
    })();
    // An empty input still gets an output with its columns.
    if tagged_all.is_ok() && sent == 0 && committed_before == 0 {
        let _ = wtx.send(Done {
            df: empty,
            tags: None,
            state: state(Position::default(), &counts)?,
            carry: tagger.primary.as_ref().and_then(|p| p.stream_state()),
        });
    }
    drop(wtx);
    let written = writer_thread
        .join()
        .map_err(|_| JobError::Internal("writer thread panicked".into()))?;
    let _ = reader_thread.join();
    tagged_all?;
    // Only a complete run is moved into place; a failed one leaves no
    // output (and its committed chunks for --resume).
    written?.finish()?;
    Ok(FileDone {
        counts,
        resumed_rows,
        secs: t0.elapsed().as_secs_f64(),
    })
}

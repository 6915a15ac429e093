use std::path::{Path, PathBuf};
use std::time::Instant;

use casetag_batch::{load_tagger, tag_chunk, Counts, RowIssue, Shape, TaggedChunk, EMPTY_TEXT};
use casetag_data::{
    check_case_columns, chunk_texts, printable, Chunk, ChunkReader, ChunkWriter, Format, Position,
};
use casetag_engine::Tagger;
use clap::Parser;
use polars::prelude::DataFrame;
use serde::{Deserialize, Serialize};

use crate::{progress, CmdResult, Failure};

/// Rows per chunk by default; also the batch `eval --batch-novelty` judges
/// as a whole, so a batch job can be evaluated the way it runs.
pub const CHUNK_ROWS: usize = 50_000;

/// Warnings printed per kind of bad row; the summary counts them all.
const WARN_ROWS: usize = 10;

/// Tag a table of cases in batch. The input is streamed in chunks (never
/// whole in memory); each chunk is tagged in parallel; the output has the
/// input's format and columns plus l1, l2, l3, depth, conf_l1..conf_l3,
/// out_of_scope, oos_score, actions, served_by, model_id, lang, note and
/// error.
/// A turn-level table (case_id, turn, speaker, text) is read whole, and
/// tagged one row per case with its turns joined, as `prepare` does.
///
/// Rows in = rows out (cases out, for turns): a row that cannot be tagged
/// (empty text, or damaged input: a ragged row, a bad quote, invalid UTF-8,
/// a NUL byte, a JSONL line that is not a JSON object; a turn without a
/// case id or an integer turn number) keeps its place with `error` set,
/// naming the file, line and column; blank lines are not rows and are
/// skipped. Only an unreadable input, a missing text column or a bad
/// output path stop the job, before any tagging.
///
/// The job is crash-safe: each chunk is committed to a job directory beside
/// the output (`.NAME.casetag-job`), and the output appears only when every
/// row is written. A killed job continues with `--resume`.
#[derive(Parser)]
pub struct Args {
    /// Model bundle directory, or NAME / NAME/VERSION in the registry.
    #[arg(long)]
    model: String,
    /// Fallback bundle (or registry name), a baseline, used when the model
    /// fails to load or errors.
    #[arg(long)]
    fallback: Option<String>,
    #[command(flatten)]
    registry: super::models::Registry,
    /// Input table (.csv, .parquet, .jsonl/.ndjson) with a `text` column;
    /// or a directory or glob (`'DIR/*.parquet'`) of them, each tagged into
    /// its own file in the --output directory.
    #[arg(long)]
    input: PathBuf,
    /// Output table; its extension picks the format. With a directory or
    /// glob --input: the output directory (`STEM.EXT` per input file).
    #[arg(long)]
    output: PathBuf,
    /// With a directory or glob --input: tag only shard I of --shards N
    /// (0-based; every N-th file of the sorted list, starting at I), e.g.
    /// `--shard $JOB_COMPLETION_INDEX` in a Kubernetes Indexed Job.
    #[arg(long, default_value_t = 0, value_name = "I")]
    shard: usize,
    /// Number of shards the input files are split into.
    #[arg(long, default_value_t = 1, value_name = "N")]
    shards: usize,
    /// With a directory or glob --input: format of every output file;
    /// by default each input's own.
    #[arg(long, value_enum)]
    output_format: Option<Format>,
    /// The column holding each case's text. A turn-level table (columns
    /// case_id, turn, speaker, text) is tagged one row per case, its turns
    /// joined as `prepare` joins them; it is read whole into memory.
    #[arg(long, default_value = "text", value_name = "NAME")]
    text_column: String,
    /// Rows per chunk.
    #[arg(long, default_value_t = CHUNK_ROWS)]
    chunk_rows: usize,
    /// Continue an interrupted job on the same output from its last
    /// committed chunk; the output is the same as an uninterrupted run's.
    /// The input, models and options must be those of the interrupted run
    /// (refused otherwise). Without an interrupted job, starts from the
    /// beginning. Without --resume, an interrupted job's state is discarded.
    #[arg(long)]
    resume: bool,
    /// Judge out of scope over each chunk as a whole: a kind of case that
    /// recurs in the chunk but resembles no training case of its predicted
    /// class is declared out of scope far more often, and a case's nearest
    /// cases in the chunk weigh in on its own score. Needs a transformer
    /// trained without out-of-scope rows (learned detector); answers then
    /// depend on the other rows of the chunk.
    #[arg(long)]
    batch_novelty: bool,
    /// Also write, per level, the K most likely nodes of that level with
    /// their probabilities (columns top_l1, top_l2, top_l3), for reviewers
    /// and routing: lists of {node, probability} in Parquet and JSONL,
    /// `node:0.9731;node:0.0142` in CSV. 0 (the default) writes none.
    #[arg(long, default_value_t = 0, value_name = "K", value_parser = clap::value_parser!(u16).range(0..=50))]
    top_k: u16,
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
fn job_identity(
    a: &Args,
    input_path: &Path,
    tagger: &Tagger,
) -> Result<serde_json::Value, Failure> {
    let meta = std::fs::metadata(input_path)
        .map_err(|e| Failure::input(format!("{}: {e}", input_path.display())))?;
    let modified = meta
        .modified()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map(|d| d.as_nanos().to_string());
    let input = std::fs::canonicalize(input_path).unwrap_or_else(|_| input_path.to_path_buf());
    let model = |m: Option<&casetag_engine::LoadedModel>| {
        m.map(|m| serde_json::json!({"id": m.id(), "kind": m.kind(), "created": m.bundle.manifest.created}))
    };
    Ok(serde_json::json!({
        "input": input,
        "input_bytes": meta.len(),
        "input_modified": modified,
        "model": model(tagger.primary.as_ref()),
        "fallback": model(tagger.fallback.as_ref()),
        "chunk_rows": a.chunk_rows,
        "text_column": a.text_column,
        "batch_novelty": a.batch_novelty,
        "top_k": a.top_k,
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
struct Opened {
    reader: ChunkReader,
    first: Option<Chunk>,
    empty: DataFrame,
}

fn open_input(input: &Path, a: &Args) -> Result<Opened, Failure> {
    let mut reader = ChunkReader::open(input, a.chunk_rows)?;
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
        check_case_columns(input, &names, &a.text_column)?;
    }
    Ok(Opened {
        reader,
        first,
        empty: empty.unwrap_or_default(),
    })
}

/// The (input, output) pairs of this job: the one file, or this shard's
/// files of a directory or glob with their outputs in the --output
/// directory.
fn plan(a: &Args) -> Result<Vec<(PathBuf, PathBuf)>, Failure> {
    if a.shards == 0 || a.shard >= a.shards {
        return Err(Failure::input(format!(
            "--shard {} --shards {}: the shard index must be below the number of shards (0..{})",
            a.shard,
            a.shards,
            a.shards.saturating_sub(1)
        )));
    }
    let format = a.output_format;
    let Some(files) = super::shards::list_inputs(&a.input)? else {
        if a.shards > 1 || format.is_some() {
            return Err(Failure::input(
                "--shards and --output-format need a directory or glob --input",
            ));
        }
        Format::from_path(&a.output)?;
        return Ok(vec![(a.input.clone(), a.output.clone())]);
    };
    if a.output.is_file() {
        return Err(Failure::input(format!(
            "--output {}: with a directory or glob --input the output is a directory, and this is a file",
            a.output.display()
        )));
    }
    let outs = super::shards::outputs(&files, &a.output, format)?;
    let pairs: Vec<(PathBuf, PathBuf)> = files.into_iter().zip(outs).collect();
    std::fs::create_dir_all(&a.output)
        .map_err(|e| Failure::input(format!("--output {}: {e}", a.output.display())))?;
    Ok(super::shards::assign(&pairs, a.shard, a.shards))
}

pub fn run(a: Args) -> CmdResult {
    if a.chunk_rows == 0 {
        return Err(Failure::input("--chunk-rows must be at least 1"));
    }
    let jobs = plan(&a)?;
    let single = jobs.len() == 1 && jobs[0].0 == a.input;
    // Every input and its columns are checked before any model is loaded;
    // a single input stays open for tagging.
    let mut opened = Vec::new();
    for (input, _) in &jobs {
        let o = open_input(input, &a)?;
        if single {
            opened.push(o);
        }
    }

    let model = a.registry.resolve(&a.model)?;
    let fallback = a
        .fallback
        .as_deref()
        .map(|f| a.registry.resolve(f))
        .transpose()?;
    let tagger = load_tagger(&model, fallback.as_deref(), a.batch_novelty)?;
    if tagger.primary.is_none() {
        progress::warn(&format!(
            "{}: the model did not load; every row is tagged by the fallback",
            model.display()
        ));
    }
    if single {
        let (input, output) = &jobs[0];
        let done = tag_file(&a, &tagger, input, output, opened.pop().unwrap())?;
        // On stdout, like every other command's result; progress and
        // warnings stay on stderr.
        super::say(printable(
            &serde_json::to_string(&done.summary(&a, &tagger, output)).unwrap_or_default(),
        ));
        return Ok(());
    }
    if jobs.is_empty() {
        progress::note(&format!(
            "shard {} of {}: no input files fall to this shard",
            a.shard, a.shards
        ));
    }
    let t0 = Instant::now();
    let mut total = FileDone::default();
    let mut files = Vec::new();
    for (k, (input, output)) in jobs.iter().enumerate() {
        progress::note(&format!(
            "file {}/{}: {} -> {}",
            k + 1,
            jobs.len(),
            input.display(),
            output.display()
        ));
        let done = tag_file(&a, &tagger, input, output, open_input(input, &a)?)?;
        files.push(serde_json::json!({
            "input": input, "output": output, "rows": done.counts.rows,
            "untagged_rows": done.counts.untagged(),
        }));
        total.add(&done);
    }
    total.secs = t0.elapsed().as_secs_f64();
    let mut summary = total.summary(&a, &tagger, &a.output);
    summary["shard"] = serde_json::json!(a.shard);
    summary["shards"] = serde_json::json!(a.shards);
    summary["files"] = serde_json::json!(files);
    super::say(printable(
        &serde_json::to_string(&summary).unwrap_or_default(),
    ));
    Ok(())
}

/// What tagging one file (or, added up, a shard's files) did.
#[derive(Default)]
struct FileDone {
    counts: Counts,
    resumed_rows: usize,
    secs: f64,
}

impl FileDone {
    fn add(&mut self, o: &FileDone) {
        self.counts.add(&o.counts);
        self.resumed_rows += o.resumed_rows;
    }

    fn summary(&self, a: &Args, tagger: &Tagger, output: &Path) -> serde_json::Value {
        let counts = &self.counts;
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
            "batch_novelty": a.batch_novelty,
            "seconds": self.secs,
            "cases_per_s": (counts.rows - self.resumed_rows) as f64 / self.secs.max(1e-9),
            "output": output,
        })
    }
}

/// Tag one input file into one output file (crash-safe, resumable).
fn tag_file(
    a: &Args,
    tagger: &Tagger,
    input_path: &Path,
    output: &Path,
    opened: Opened,
) -> Result<FileDone, Failure> {
    let Opened {
        mut reader,
        mut first,
        empty,
    } = opened;
    let out_format = Format::from_path(output)?;
    let shape = Shape::of_format(out_format);
    let top_k = usize::from(a.top_k);
    let job = job_identity(a, input_path, tagger)?;
    // A turn-level table is joined now, so its progress counts cases.
    reader.join_pending()?;

    let mut counts = Counts::default();
    let mut writer = None;
    if a.resume {
        match ChunkWriter::resume(output, out_format)? {
            Some((w, done)) if done.chunks > 0 => {
                let dir = casetag_data::job_dir(output);
                let state: JobState = serde_json::from_value(done.state).map_err(|_| {
                    Failure::input(format!(
                        "--resume: {}: the interrupted job's state is unreadable; \
                         run without --resume to start over",
                        dir.display()
                    ))
                })?;
                if state.job != job {
                    return Err(Failure::input(format!(
                        "--resume: {}: the interrupted job had another input, model or options; \
                         run without --resume to start over",
                        dir.display()
                    )));
                }
                reader.seek(state.position)?;
                first = None;
                counts = state.counts;
                progress::note(&format!(
                    "resuming after {} committed chunk(s), {} rows",
                    done.chunks, counts.rows
                ));
                writer = Some(w);
            }
            _ => progress::note(
                "--resume: no interrupted job for this output; starting from the beginning",
            ),
        }
    }
    let writer = match writer {
        Some(w) => w,
        None => ChunkWriter::create(output, out_format)?,
    };
    let committed_before = writer.chunks();
    let resumed_rows = counts.rows;
    // Parquet records its row count; CSV and JSONL progress by the bytes
    // read, which gives them a total and an ETA too.
    let total = reader.total_rows_hint();
    let by_bytes = total.is_none();
    let pb = match total {
        Some(t) => progress::bar(Some(t as u64), "tagging"),
        None => progress::bytes_bar(
            std::fs::metadata(input_path).map_or(0, |m| m.len()),
            "tagging",
        ),
    };
    let show = |rows: usize, byte: u64| {
        if by_bytes {
            pb.set_position(byte);
            pb.set_message(format!("{rows} rows"));
        } else {
            pb.set_position(rows as u64);
        }
    };
    show(counts.rows, reader.position().byte);
    let t0 = Instant::now();

    // Read the next chunk on another thread while this one is tagged.
    let (tx, rx) = std::sync::mpsc::sync_channel::<Result<Chunk, Failure>>(1);
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
                    let _ = tx.send(Err(Failure::from(e)));
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
    }
    let (wtx, wrx) = std::sync::mpsc::sync_channel::<Done>(1);
    let writer_thread = std::thread::spawn(move || -> Result<ChunkWriter, Failure> {
        let mut writer = writer;
        for mut d in wrx {
            // An empty input's frame gets the columns of an empty chunk.
            let tags = d.tags.unwrap_or_else(|| TaggedChunk::empty(top_k));
            tags.attach(&mut d.df, shape)?;
            writer.write_part(&mut d.df)?;
            failpoint(writer.chunks() + 1, "part");
            writer.commit(&d.state)?;
            failpoint(writer.chunks(), "commit");
        }
        Ok(writer)
    });

    let input = input_path.to_path_buf();
    let text_column = a.text_column.as_str();
    let mut warned = (0usize, 0usize);
    let mut sent = 0usize;
    let tagged_all = (|| -> Result<(), Failure> {
        for chunk in rx {
            let Chunk { df, faults, end } = chunk?;
            let texts = chunk_texts(&df, text_column)?;
            let first_row = counts.rows + 1;
            let tags = tag_chunk(
                tagger,
                texts,
                faults,
                &mut counts,
                top_k,
                |i, issue| match issue {
                    RowIssue::Damaged(f) => {
                        warned.0 += 1;
                        if warned.0 <= WARN_ROWS {
                            progress::warn(&format!("{f}; kept untagged"));
                        }
                    }
                    RowIssue::Empty => {
                        warned.1 += 1;
                        if warned.1 <= WARN_ROWS {
                            progress::warn(&format!(
                                "{}: row {}: {EMPTY_TEXT}; kept untagged",
                                input.display(),
                                first_row + i
                            ));
                        }
                    }
                },
            )?;
            let end_byte = end.byte;
            let state = serde_json::to_value(JobState {
                job: job.clone(),
                position: end,
                counts: counts.clone(),
            })
            .map_err(Failure::internal)?;
            let done = Done {
                df,
                tags: Some(tags),
                state,
            };
            if wtx.send(done).is_err() {
                // The writer stopped on an error; it is reported below.
                break;
            }
            sent += 1;
            show(counts.rows, end_byte);
        }
        Ok(())
    })();
    // An empty input still gets an output with its columns.
    if tagged_all.is_ok() && sent == 0 && committed_before == 0 {
        let state = serde_json::to_value(JobState {
            job: job.clone(),
            position: Position::default(),
            counts: counts.clone(),
        })
        .map_err(Failure::internal)?;
        let _ = wtx.send(Done {
            df: empty,
            tags: None,
            state,
        });
    }
    drop(wtx);
    let written = writer_thread
        .join()
        .map_err(|_| Failure::internal("writer thread panicked"))?;
    let _ = reader_thread.join();
    tagged_all?;
    // Only a complete run is moved into place; a failed one leaves no
    // output (and its committed chunks for --resume).
    written?.finish()?;
    pb.finish_and_clear();
    for (n, what) in [
        (warned.0, "damaged input"),
        (warned.1, "empty or missing text"),
    ] {
        if n > WARN_ROWS {
            progress::warn(&format!(
                "{}: {} more row(s) with {what}, kept untagged (see the `error` column)",
                input.display(),
                n - WARN_ROWS
            ));
        }
    }
    Ok(FileDone {
        counts,
        resumed_rows,
        secs: t0.elapsed().as_secs_f64(),
    })
}

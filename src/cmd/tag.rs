use std::path::{Path, PathBuf};
use std::time::Instant;

use casetag_batch::job::{open_input, tag_file, FileDone, JobEvent, JobOptions, Opened};
use casetag_batch::{load_tagger, RowIssue, EMPTY_TEXT};
use casetag_data::{printable, Format};
use casetag_engine::tagger::CHUNK_ROWS;
use casetag_engine::Tagger;
use clap::Parser;

use crate::{progress, CmdResult, Failure};

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
    /// Judge out of scope for each row against the rows before it in the
    /// input (the last `--stream-window`), as `serve --stream-novelty`
    /// judges each request against the traffic before it: the row order is
    /// the arrival order, no row's answer depends on later rows, and a
    /// kind of case that recurs is declared out of scope far more often.
    /// Each input file is a stream of its own. The window is committed
    /// with each chunk, so `--resume` gives the same output. Needs a
    /// transformer trained without out-of-scope rows.
    #[arg(long, conflicts_with = "batch_novelty")]
    stream_novelty: bool,
    #[command(flatten)]
    window: super::serve::StreamWindowArg,
    /// Also write, per level, the K most likely nodes of that level with
    /// their probabilities (columns top_l1, top_l2, top_l3), for reviewers
    /// and routing: lists of {node, probability} in Parquet and JSONL,
    /// `node:0.9731;node:0.0142` in CSV. 0 (the default) writes none.
    #[arg(long, default_value_t = 0, value_name = "K", value_parser = clap::value_parser!(u16).range(0..=50))]
    top_k: u16,
}

pub fn run(a: Args) -> CmdResult {
    if a.chunk_rows == 0 {
        return Err(Failure::input("--chunk-rows must be at least 1"));
    }
    let jobs = casetag_batch::files::plan(&a.input, &a.output, a.output_format, a.shard, a.shards)?;
    let single = jobs.len() == 1 && jobs[0].0 == a.input;
    let options = JobOptions {
        chunk_rows: a.chunk_rows,
        text_column: a.text_column.clone(),
        batch_novelty: a.batch_novelty,
        stream_window: a.stream_novelty.then_some(a.window.stream_window as usize),
        top_k: usize::from(a.top_k),
        resume: a.resume,
    };
    // Every input and its columns are checked before any model is loaded;
    // a single input stays open for tagging.
    let mut opened = Vec::new();
    for (input, _) in &jobs {
        let o = open_input(input, &options)?;
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
    let tagger = load_tagger(
        &model,
        fallback.as_deref(),
        options.batch_novelty,
        options.stream_window,
    )?;
    if tagger.primary.is_none() {
        progress::warn(&format!(
            "{}: the model did not load; every row is tagged by the fallback",
            model.display()
        ));
    }
    if single {
        let (input, output) = &jobs[0];
        let done = tag_one(&options, &tagger, input, output, opened.pop().unwrap())?;
        // On stdout, like every other command's result; progress and
        // warnings stay on stderr.
        super::say(printable(
            &serde_json::to_string(&done.summary(&tagger, output)).unwrap_or_default(),
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
        let done = tag_one(
            &options,
            &tagger,
            input,
            output,
            open_input(input, &options)?,
        )?;
        files.push(serde_json::json!({
            "input": input, "output": output, "rows": done.counts.rows,
            "untagged_rows": done.counts.untagged(),
        }));
        total.add(&done);
    }
    total.secs = t0.elapsed().as_secs_f64();
    let mut summary = total.summary(&tagger, &a.output);
    summary["shard"] = serde_json::json!(a.shard);
    summary["shards"] = serde_json::json!(a.shards);
    summary["files"] = serde_json::json!(files);
    super::say(printable(
        &serde_json::to_string(&summary).unwrap_or_default(),
    ));
    Ok(())
}

/// Tag one input file into one output file with a progress bar, warning
/// about the first [`WARN_ROWS`] rows of each kind kept untagged.
fn tag_one(
    options: &JobOptions,
    tagger: &Tagger,
    input: &Path,
    output: &Path,
    opened: Opened,
) -> Result<FileDone, Failure> {
    let mut bar = None;
    let mut by_bytes = false;
    let mut warned = (0usize, 0usize);
    let done = tag_file(options, tagger, opened, output, &mut |e| match e {
        JobEvent::Started {
            total_rows,
            total_bytes,
        } => {
            // Parquet records its row count; CSV and JSONL progress by the
            // bytes read, which gives them a total and an ETA too.
            by_bytes = total_rows.is_none();
            bar = Some(match total_rows {
                Some(t) => progress::bar(Some(t as u64), "tagging"),
                None => progress::bytes_bar(total_bytes, "tagging"),
            });
        }
        JobEvent::Progress { rows, byte } => {
            if let Some(pb) = &bar {
                if by_bytes {
                    pb.set_position(byte);
                    pb.set_message(format!("{rows} rows"));
                } else {
                    pb.set_position(rows as u64);
                }
            }
        }
        JobEvent::Resumed { chunks, rows } => progress::note(&format!(
            "resuming after {chunks} committed chunk(s), {rows} rows"
        )),
        JobEvent::NothingToResume => progress::note(
            "--resume: no interrupted job for this output; starting from the beginning",
        ),
        JobEvent::RowKept { row, issue } => match issue {
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
                        "{}: row {row}: {EMPTY_TEXT}; kept untagged",
                        input.display(),
                    ));
                }
            }
        },
    })?;
    if let Some(pb) = bar {
        pb.finish_and_clear();
    }
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
    Ok(done)
}

use std::path::PathBuf;
use std::time::Instant;

use casetag_core::Transcript;
use casetag_data::{chunk_texts, ChunkReader, ChunkWriter, Format};
use casetag_engine::{Tagged, Tagger};
use clap::Parser;
use polars::prelude::{Column, DataFrame};

use crate::{progress, CmdResult, Failure};

/// Rows per chunk by default; also the batch `eval --batch-novelty` judges
/// as a whole, so a batch job can be evaluated the way it runs.
pub const CHUNK_ROWS: usize = 50_000;

/// Tag a case-level table in batch. The input is streamed in chunks (never
/// whole in memory); each chunk is tagged in parallel; the output has the
/// input's format and columns plus l1, l2, l3, depth, conf_l1..conf_l3,
/// out_of_scope, oos_score, actions, served_by, model_id and error. Rows in = rows out:
/// a row that cannot be tagged keeps its place with `error` set.
#[derive(Parser)]
pub struct Args {
    /// Model bundle directory.
    #[arg(long)]
    model: PathBuf,
    /// Fallback bundle (the baseline) used when the model fails to load or errors.
    #[arg(long)]
    fallback: Option<PathBuf>,
    /// Input table (.csv, .parquet, .jsonl/.ndjson) with a `text` column.
    #[arg(long)]
    input: PathBuf,
    /// Output table; its extension picks the format.
    #[arg(long)]
    output: PathBuf,
    /// Rows per chunk.
    #[arg(long, default_value_t = CHUNK_ROWS)]
    chunk_rows: usize,
    /// Judge out of scope over each chunk as a whole: a kind of case that
    /// recurs in the chunk but resembles no training case of its predicted
    /// class is declared out of scope far more often, and a case's nearest
    /// cases in the chunk weigh in on its own score. Needs a transformer
    /// trained without out-of-scope rows (learned detector); answers then
    /// depend on the other rows of the chunk.
    #[arg(long)]
    batch_novelty: bool,
}

/// Output columns for one chunk, borrowing the chunk's decisions.
struct Cols<'a> {
    l: [Vec<Option<&'a str>>; 3],
    conf: [Vec<Option<f32>>; 3],
    depth: Vec<Option<u32>>,
    oos: Vec<Option<bool>>,
    oos_score: Vec<Option<f32>>,
    actions: Vec<Option<String>>,
    served_by: Vec<Option<&'a str>>,
    model_id: Vec<Option<&'a str>>,
    error: Vec<Option<&'static str>>,
}

impl<'a> Cols<'a> {
    fn with_capacity(n: usize) -> Self {
        Self {
            l: std::array::from_fn(|_| Vec::with_capacity(n)),
            conf: std::array::from_fn(|_| Vec::with_capacity(n)),
            depth: Vec::with_capacity(n),
            oos: Vec::with_capacity(n),
            oos_score: Vec::with_capacity(n),
            actions: Vec::with_capacity(n),
            served_by: Vec::with_capacity(n),
            model_id: Vec::with_capacity(n),
            error: Vec::with_capacity(n),
        }
    }

    fn push(&mut self, t: Option<&'a Tagged>, error: Option<&'static str>) {
        match t {
            Some(t) => {
                let d = &t.decision;
                for k in 0..3 {
                    self.l[k].push(d.tag.as_ref().and_then(|p| p.level(k + 1)));
                    self.conf[k].push(d.confidence.get(k).copied());
                }
                self.depth.push(Some(d.depth as u32));
                self.oos.push(Some(d.out_of_scope));
                self.oos_score.push(Some(d.oos_score));
                let mut acts = String::new();
                for a in &d.actions {
                    if !acts.is_empty() {
                        acts.push(';');
                    }
                    acts.push_str(&a.id);
                    acts.push_str(if a.mode == casetag_core::ActionMode::Auto {
                        ":auto"
                    } else {
                        ":suggest"
                    });
                }
                self.actions.push(Some(acts));
                self.served_by.push(Some(&t.served_by));
                self.model_id.push(Some(&t.model_id));
            }
            None => {
                for k in 0..3 {
                    self.l[k].push(None);
                    self.conf[k].push(None);
                }
                self.depth.push(None);
                self.oos.push(None);
                self.oos_score.push(None);
                self.actions.push(None);
                self.served_by.push(None);
                self.model_id.push(None);
            }
        }
        self.error.push(error);
    }

    fn attach(self, df: &mut DataFrame) -> Result<(), Failure> {
        let Cols {
            l,
            conf,
            depth,
            oos,
            oos_score,
            actions,
            served_by,
            model_id,
            error,
        } = self;
        let [l1, l2, l3] = l;
        let [c1, c2, c3] = conf;
        // Input label columns, if any, are kept under their own names: the
        // predictions replace nothing the user gave.
        let name = |df: &DataFrame, n: &str| {
            if df.column(n).is_ok() {
                format!("pred_{n}")
            } else {
                n.to_string()
            }
        };
        let cols = vec![
            Column::new(name(df, "l1").into(), l1),
            Column::new(name(df, "l2").into(), l2),
            Column::new(name(df, "l3").into(), l3),
            Column::new(name(df, "depth").into(), depth),
            Column::new(name(df, "conf_l1").into(), c1),
            Column::new(name(df, "conf_l2").into(), c2),
            Column::new(name(df, "conf_l3").into(), c3),
            Column::new(name(df, "out_of_scope").into(), oos),
            Column::new(name(df, "oos_score").into(), oos_score),
            Column::new(name(df, "actions").into(), actions),
            Column::new(name(df, "served_by").into(), served_by),
            Column::new(name(df, "model_id").into(), model_id),
            Column::new(name(df, "error").into(), error),
        ];
        for c in cols {
            df.with_column(c).map_err(Failure::internal)?;
        }
        Ok(())
    }
}

pub fn run(a: Args) -> CmdResult {
    if a.chunk_rows == 0 {
        return Err(Failure::input("--chunk-rows must be at least 1"));
    }
    let out_format = Format::from_path(&a.output)?;
    let mut tagger = Tagger::load(&a.model, a.fallback.as_deref())?;
    if a.batch_novelty {
        tagger.enable_batch_novelty()?;
    }
    let mut reader = ChunkReader::open(&a.input, a.chunk_rows)?;
    let total = reader.total_rows_hint();
    let mut writer = ChunkWriter::create(&a.output, out_format)?;
    let pb = progress::bar(total.map(|t| t as u64), "tagging");
    let t0 = Instant::now();

    // Read the next chunk on another thread while this one is tagged.
    let (tx, rx) = std::sync::mpsc::sync_channel::<Result<DataFrame, Failure>>(1);
    let input = a.input.clone();
    let reader_thread = std::thread::spawn(move || loop {
        match reader.next_chunk() {
            Ok(Some(df)) => {
                if tx.send(Ok(df)).is_err() {
                    return;
                }
            }
            Ok(None) => return,
            Err(e) => {
                let _ = tx.send(Err(Failure::from(e)));
                return;
            }
        }
    });

    // Build the output columns and write on a third thread: reading, tagging
    // and writing overlap, the tagging thread goes straight on to the next
    // chunk, and at most two chunks wait in each hand-off.
    let (wtx, wrx) = std::sync::mpsc::sync_channel::<(DataFrame, Vec<bool>, Vec<Tagged>)>(1);
    let writer_thread = std::thread::spawn(move || -> Result<ChunkWriter, Failure> {
        for (mut df, present, tagged) in wrx {
            let mut cols = Cols::with_capacity(present.len());
            let mut answers = tagged.iter();
            for ok in present {
                if ok {
                    cols.push(answers.next(), None);
                } else {
                    cols.push(None, Some("empty or missing text"));
                }
            }
            cols.attach(&mut df)?;
            writer.write(&mut df)?;
        }
        Ok(writer)
    });

    let (mut rows, mut bad, mut fallbacks) = (0usize, 0usize, 0usize);
    let tagged_all = (|| -> Result<(), Failure> {
        for chunk in rx {
            let df = chunk?;
            let texts = chunk_texts(&df)?;
            let present: Vec<bool> = texts.iter().map(Option::is_some).collect();
            let cases: Vec<Transcript> = texts.into_iter().flatten().map(Transcript::new).collect();
            let tagged = tagger.tag(&cases, 0)?;
            drop(cases);
            fallbacks += tagged
                .iter()
                .filter(|t| t.served_by == "baseline" && tagger.active().kind() != "baseline")
                .count();
            for (i, &ok) in present.iter().enumerate() {
                if !ok {
                    bad += 1;
                    if bad <= 10 {
                        eprintln!(
                            "warning: {}: row {}: empty or missing text; kept untagged",
                            input.display(),
                            rows + i + 1
                        );
                    }
                }
            }
            rows += present.len();
            if wtx.send((df, present, tagged)).is_err() {
                // The writer stopped on an error; it is reported below.
                break;
            }
            pb.set_position(rows as u64);
        }
        Ok(())
    })();
    drop(wtx);
    let written = writer_thread
        .join()
        .map_err(|_| Failure::internal("writer thread panicked"))?;
    let _ = reader_thread.join();
    tagged_all?;
    // Only a complete run is moved into place; a failed one leaves nothing.
    written?.finish()?;
    pb.finish_and_clear();
    let secs = t0.elapsed().as_secs_f64();
    let summary = serde_json::json!({
        "rows": rows,
        "untagged_rows": bad,
        "fallback_rows": fallbacks,
        "model": tagger.active().id(),
        "batch_novelty": a.batch_novelty,
        "seconds": secs,
        "cases_per_s": rows as f64 / secs.max(1e-9),
        "output": a.output,
    });
    eprintln!("{}", serde_json::to_string(&summary).unwrap_or_default());
    Ok(())
}

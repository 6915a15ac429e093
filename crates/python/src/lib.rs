//! The native half of the `casetag` Python package (`casetag._casetag`).
//!
//! A [`Model`] holds the model chain `casetag tag` builds ([`load_tagger`]).
//! [`Model::tag_arrow_column`] takes the text column of an Arrow batch
//! through the Arrow C data interface (no copy of the caller's buffers),
//! tags it with the GIL released, and hands back the output columns `casetag
//! tag` writes ([`TaggedChunk::columns`]) as Arrow arrays, again through the
//! C data interface. The Python side (`python/casetag/__init__.py`) appends
//! them to the caller's untouched input columns.

use std::ffi::CString;
use std::path::PathBuf;

use casetag_batch::job::{open_input, tag_file, JobError, JobOptions};
use casetag_batch::{load_tagger, tag_chunk, Counts, Shape};
use casetag_engine::Tagger;
use polars::prelude::{Column, CompatLevel, PlSmallStr, Series};
use polars_arrow::ffi::{self, ArrowArray, ArrowSchema};
use pyo3::exceptions::{PyRuntimeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyCapsule, PyTuple};

/// The model's error as Python sees it: bad input (a bad bundle, a missing
/// column) is a `ValueError` with the CLI's one-line message; anything else
/// a `RuntimeError`.
fn py_err(is_input: bool, msg: &str) -> PyErr {
    // One line with control characters escaped, as the CLI prints errors.
    let msg = casetag_data::printable(&msg.replace(['\n', '\r'], " ")).into_owned();
    if is_input {
        PyValueError::new_err(msg)
    } else {
        PyRuntimeError::new_err(msg)
    }
}

fn engine_err(e: casetag_engine::EngineError) -> PyErr {
    py_err(e.is_input(), &e.to_string())
}

fn data_err(e: casetag_data::DataError) -> PyErr {
    py_err(e.is_input(), &e.to_string())
}

fn job_err(e: JobError) -> PyErr {
    py_err(e.is_input(), &e.to_string())
}

/// The (input, output) pairs `casetag tag --input INPUT --output OUTPUT
/// [--output-format F]` tags: a single table, or every table of a
/// directory or glob with its output `OUTPUT/STEM.EXT` (the directory is
/// created). With `text_column`, every input is opened and its columns
/// checked first, as the CLI checks them before loading a model.
#[pyfunction]
#[pyo3(signature = (input, output, output_format=None, text_column=None))]
fn plan_files(
    py: Python<'_>,
    input: PathBuf,
    output: PathBuf,
    output_format: Option<&str>,
    text_column: Option<&str>,
) -> PyResult<Vec<(PathBuf, PathBuf)>> {
    let format = output_format
        .map(|f| casetag_data::Format::from_path(std::path::Path::new(&format!("output.{f}"))))
        .transpose()
        .map_err(data_err)?;
    let pairs = casetag_batch::files::plan(&input, &output, format, 0, 1).map_err(job_err)?;
    if let Some(text_column) = text_column {
        let options = JobOptions {
            chunk_rows: casetag_engine::tagger::CHUNK_ROWS,
            text_column: text_column.to_string(),
            batch_novelty: false,
            stream_window: None,
            top_k: 0,
            resume: false,
        };
        py.detach(|| {
            pairs
                .iter()
                .try_for_each(|(i, _)| open_input(i, &options).map(drop))
        })
        .map_err(job_err)?;
    }
    Ok(pairs)
}

/// A loaded model chain: a bundle, its optional baseline fallback, checked
/// exactly as `casetag tag --model M --fallback F` checks them.
#[pyclass(frozen, module = "casetag._casetag")]
struct Model {
    tagger: Tagger,
    batch_novelty: bool,
    /// With `stream_novelty`: the window each row is judged against.
    stream_window: Option<usize>,
    /// One file at a time through the stream's window.
    stream_file: std::sync::Mutex<()>,
}

/// A C data interface struct that may travel inside a capsule. The structs
/// own their buffers through the producer's release callback, which the
/// interface allows to run on any thread.
struct Exported<T>(T);
// SAFETY: `ArrowArray`/`ArrowSchema` hold raw pointers only to data they
// own (released exactly once by their `Drop`); the C data interface lets a
// consumer move and release them from any thread.
unsafe impl<T> Send for Exported<T> {}

/// One output column, exported through the Arrow PyCapsule interface
/// (`__arrow_c_array__`), so `pyarrow.array(obj)` takes it without a copy.
#[pyclass(module = "casetag._casetag")]
struct ArrowColumn {
    name: String,
    array: Option<(ArrowSchema, ArrowArray)>,
}

// SAFETY: as for `Exported`: the structs own their data and may be released
// from any thread; Python reaches them only under the GIL.
unsafe impl Send for ArrowColumn {}
unsafe impl Sync for ArrowColumn {}

#[pymethods]
impl ArrowColumn {
    #[getter]
    fn name(&self) -> &str {
        &self.name
    }

    /// The Arrow PyCapsule protocol: `(schema capsule, array capsule)`.
    /// The array can be taken once.
    #[pyo3(signature = (requested_schema=None))]
    fn __arrow_c_array__<'py>(
        &mut self,
        py: Python<'py>,
        requested_schema: Option<Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyTuple>> {
        let _ = requested_schema;
        let (schema, array) = self
            .array
            .take()
            .ok_or_else(|| PyValueError::new_err("this Arrow column was already taken"))?;
        let schema = capsule(py, schema, c"arrow_schema")?;
        let array = capsule(py, array, c"arrow_array")?;
        PyTuple::new(py, [schema.into_any(), array.into_any()])
    }
}

/// A named capsule owning `value`, released when Python drops it (unless a
/// consumer moved the struct out first, leaving it released).
fn capsule<'py, T: 'static>(
    py: Python<'py>,
    value: T,
    name: &'static std::ffi::CStr,
) -> PyResult<Bound<'py, PyCapsule>> {
    PyCapsule::new_with_destructor(py, Exported(value), Some(CString::from(name)), |v, _| {
        drop(v)
    })
}

/// Import one Arrow array (an object with `__arrow_c_array__`, e.g. a
/// `pyarrow.Array`) as a polars series, without copying its buffers.
fn import_array(obj: &Bound<'_, PyAny>, name: &str) -> PyResult<Series> {
    let pair = obj.call_method0("__arrow_c_array__")?;
    let pair = pair.cast::<PyTuple>()?;
    let schema = pair.get_item(0)?;
    let schema = schema.cast::<PyCapsule>()?;
    let array = pair.get_item(1)?;
    let array = array.cast::<PyCapsule>()?;
    let schema_ptr = schema.pointer_checked(Some(c"arrow_schema"))?;
    let array_ptr = array.pointer_checked(Some(c"arrow_array"))?;
    // SAFETY: the capsules are named per the Arrow PyCapsule interface, so
    // they point at a valid `ArrowSchema` and `ArrowArray`. The schema is
    // only read; the array is moved out (its release callback now ours) and
    // an empty, released struct left behind, as the interface prescribes.
    let imported = unsafe {
        let field = ffi::import_field_from_c(&*schema_ptr.cast::<ArrowSchema>().as_ptr())
            .map_err(|e| PyValueError::new_err(format!("Arrow column '{name}': {e}")))?;
        let raw = std::ptr::replace(array_ptr.cast::<ArrowArray>().as_ptr(), ArrowArray::empty());
        ffi::import_array_from_c(raw, field.dtype)
            .map_err(|e| PyValueError::new_err(format!("Arrow column '{name}': {e}")))?
    };
    Series::from_arrow(PlSmallStr::from_str(name), imported)
        .map_err(|e| PyValueError::new_err(format!("Arrow column '{name}': {e}")))
}

fn export_column(c: Column) -> ArrowColumn {
    let name = c.name().to_string();
    // Strings as Arrow `string_view`, the type `casetag tag`'s Parquet
    // files read back with.
    let array = c.rechunk_to_arrow(CompatLevel::newest());
    let field = polars_arrow::datatypes::Field::new(
        PlSmallStr::from_str(&name),
        array.dtype().clone(),
        true,
    );
    ArrowColumn {
        name,
        array: Some((
            ffi::export_field_to_c(&field),
            ffi::export_array_to_c(array),
        )),
    }
}

#[pymethods]
impl Model {
    #[new]
    #[pyo3(signature = (path, fallback=None, batch_novelty=false, stream_window=None))]
    fn new(
        py: Python<'_>,
        path: PathBuf,
        fallback: Option<PathBuf>,
        batch_novelty: bool,
        stream_window: Option<usize>,
    ) -> PyResult<Self> {
        // Registry names resolve as the CLI's do (root: CASETAG_MODELS,
        // else `models`).
        let root = casetag_core::bundle::registry_root();
        let resolve = |p: &PathBuf| {
            casetag_core::bundle::resolve_spec(&root, &p.to_string_lossy())
                .map_err(|e| PyValueError::new_err(e.message().to_string()))
        };
        let path = resolve(&path)?;
        let fallback = fallback.as_ref().map(resolve).transpose()?;
        let tagger = py
            .detach(|| load_tagger(&path, fallback.as_deref(), batch_novelty, stream_window))
            .map_err(engine_err)?;
        Ok(Self {
            tagger,
            batch_novelty,
            stream_window,
            stream_file: std::sync::Mutex::new(()),
        })
    }

    /// The answering bundle's manifest (checksums verified at load), as JSON.
    fn manifest_json(&self) -> PyResult<String> {
        let m = &self.tagger.active().bundle.manifest;
        serde_json::to_string(m).map_err(|e| PyRuntimeError::new_err(e.to_string()))
    }

    /// Whether the primary bundle loaded (else the fallback answers).
    fn primary_loaded(&self) -> bool {
        self.tagger.primary.is_some()
    }

    /// The taxonomy the answering bundle was trained with, as JSON: the
    /// document `GET /v1/taxonomy` serves.
    fn taxonomy_json(&self) -> String {
        casetag_server::taxonomy_json(self.tagger.active()).to_string()
    }

    /// Tag the table `input` into `output` as `casetag tag --input INPUT
    /// --output OUTPUT` does (the same reader, chunks, columns and atomic
    /// write), with the GIL released; returns its result line as JSON.
    #[pyo3(signature = (input, output, text_column="text", chunk_rows=casetag_engine::tagger::CHUNK_ROWS, top_k=0))]
    fn tag_file(
        &self,
        py: Python<'_>,
        input: PathBuf,
        output: PathBuf,
        text_column: &str,
        chunk_rows: usize,
        top_k: usize,
    ) -> PyResult<String> {
        if chunk_rows == 0 || top_k > 50 {
            return Err(PyValueError::new_err(format!(
                "chunk_rows must be at least 1 and top_k at most 50 (got {chunk_rows} and {top_k})"
            )));
        }
        let options = JobOptions {
            chunk_rows,
            text_column: text_column.to_string(),
            batch_novelty: self.batch_novelty,
            stream_window: self.stream_window,
            top_k,
            resume: false,
        };
        py.detach(|| {
            // Each file is a stream of its own: two at once would share
            // the window.
            let _one_file = self
                .stream_window
                .map(|_| self.stream_file.lock().unwrap_or_else(|p| p.into_inner()));
            let opened = open_input(&input, &options)?;
            let done = tag_file(&options, &self.tagger, opened, &output, &mut |_| {})?;
            Ok(done.summary(&self.tagger, &output).to_string())
        })
        .map_err(job_err)
    }

    /// Tag `text`, the Arrow array of column `text_column` of a batch whose
    /// columns are named `input_names` (`None` when it has no such column);
    /// `id_column`, when given, must be among them. Returns the output
    /// columns (with `top_l1..top_l3` for `top_k` > 0). Rows without text keep their place with `error` set; only a
    /// missing column or a column that is not text raises.
    #[pyo3(signature = (text_column, text, input_names, id_column=None, top_k=0))]
    fn tag_arrow_column(
        &self,
        py: Python<'_>,
        text_column: &str,
        text: Option<Bound<'_, PyAny>>,
        input_names: Vec<String>,
        id_column: Option<&str>,
        top_k: usize,
    ) -> PyResult<Vec<ArrowColumn>> {
        if top_k > 50 {
            return Err(PyValueError::new_err(format!(
                "top_k: {top_k} is more than 50"
            )));
        }
        if self.stream_window.is_some() {
            return Err(PyValueError::new_err(
                "stream_novelty judges a file's rows in order: tag files with tag_file \
                 (or casetag.ray.tag_files), not batches",
            ));
        }
        let names: Vec<&str> = input_names.iter().map(String::as_str).collect();
        for c in std::iter::once(text_column).chain(id_column) {
            if !names.contains(&c) {
                return Err(data_err(casetag_data::missing_column(c, &names)));
            }
        }
        if text_column == "text"
            && casetag_data::InputKind::of_columns(&names) == casetag_data::InputKind::Turn
        {
            return Err(PyValueError::new_err(
                "turn-level batch (columns case_id, turn, speaker, text): tag_arrow tags one row \
                 per case and cannot join turns that may span batches; join them first, or tag \
                 the file with `casetag tag`, which joins them",
            ));
        }
        let text =
            text.ok_or_else(|| data_err(casetag_data::missing_column(text_column, &names)))?;
        let col = Column::from(import_array(&text, text_column)?);
        let columns = py.detach(|| {
            let texts = casetag_data::column_texts(&col).map_err(data_err)?;
            let faults = vec![None; texts.len()];
            let mut counts = Counts::default();
            let tags = tag_chunk(&self.tagger, texts, faults, &mut counts, top_k, |_, _| {})
                .map_err(engine_err)?;
            tags.columns(&names, Shape::Nested).map_err(engine_err)
        })?;
        Ok(columns.into_iter().map(export_column).collect())
    }
}

/// Size the process's compute pool to `threads` (at least 1) if no tagging
/// has started it yet; returns the number of threads it runs.
#[pyfunction]
fn set_threads(threads: usize) -> usize {
    let _ = rayon::ThreadPoolBuilder::new()
        .num_threads(threads.max(1))
        .build_global();
    rayon::current_num_threads()
}

#[pymodule]
fn _casetag(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<Model>()?;
    m.add_class::<ArrowColumn>()?;
    m.add_function(wrap_pyfunction!(plan_files, m)?)?;
    m.add_function(wrap_pyfunction!(set_threads, m)?)?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add("OUTPUT_COLUMNS", casetag_batch::OUTPUT_COLUMNS.to_vec())?;
    Ok(())
}

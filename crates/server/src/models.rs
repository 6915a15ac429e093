//! The live model: resolving `--model` specs, loading bundles off the async
//! runtime, and the atomically swapped slot every batch reads from.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use casetag_core::bundle::Bundle;
use casetag_engine::{load_model, EngineError, LoadedModel, Tagger};
use serde::Serialize;
use serde_json::{json, Value};

use crate::ServerError;

/// Holds the current [`Tagger`]. A batch clones the `Arc` once and runs on
/// it, so a reload never disturbs a batch in flight: the old model is freed
/// when its last batch ends. The lock is held only to clone or swap a
/// pointer, never across inference.
#[derive(Default)]
pub(crate) struct ModelSlot {
    current: RwLock<Option<Arc<Tagger>>>,
    generation: AtomicU64,
}

impl ModelSlot {
    pub fn get(&self) -> Option<Arc<Tagger>> {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Install a new model; returns the one it replaced.
    pub fn install(&self, t: Arc<Tagger>) -> Option<Arc<Tagger>> {
        let prev = self
            .current
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .replace(t);
        self.generation.fetch_add(1, Ordering::Relaxed);
        prev
    }

    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Relaxed)
    }
}

/// Resolve a `--model` spec the way `casetag serve` does at startup: a bundle
/// directory, `ROOT/NAME/VERSION`, or `ROOT/NAME` whose `champion` file names
/// the live version (see [`casetag_core::bundle::resolve_spec`]; registry
/// names never leave `root`). Re-run on every reload, so a promoted champion
/// is picked up without a restart.
pub fn resolve_model(root: &Path, spec: &str) -> Result<PathBuf, ServerError> {
    // The message names the spec already.
    casetag_core::bundle::resolve_spec(root, spec)
        .map_err(|e| ServerError::Config(e.message().to_string()))
}

/// Run a loader, turning a panic into an error: a corrupt bundle must not
/// take the server down.
fn guarded<T>(what: &str, f: impl FnOnce() -> Result<T, EngineError>) -> Result<T, ServerError> {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(r) => r.map_err(ServerError::Model),
        Err(p) => Err(ServerError::Internal(format!(
            "{what}: loader panicked: {}",
            panic_message(&*p)
        ))),
    }
}

/// Load the `--fallback` bundle, which must be a baseline: it answers when
/// the primary cannot, so it must be quick and must not share the primary's
/// failure modes.
fn load_fallback(what: &str, dir: &Path) -> Result<LoadedModel, ServerError> {
    // The verified manifest says the kind before any weights are read.
    let b = Bundle::open(dir).map_err(|e| ServerError::Model(e.into()))?;
    casetag_engine::backend::check_fallback(dir, &b.manifest.id, &b.manifest.kind)
        .map_err(|e| ServerError::Config(e.to_string()))?;
    guarded(what, || load_model(dir))
}

/// Startup load. A primary that fails to load is tolerated when a fallback
/// is given: the fallback then serves alone, the server reports itself
/// degraded (`/readyz`, `casetag_degraded`), and the primary's error is
/// returned beside the tagger for the log.
pub fn load_initial(
    primary: &Path,
    fallback: Option<&Path>,
    stream_window: Option<usize>,
) -> Result<(Tagger, Option<ServerError>), ServerError> {
    let Some(fb) = fallback else {
        let p = load_primary("startup load", primary, stream_window)?;
        return Ok((
            Tagger {
                primary: Some(p),
                fallback: None,
            },
            None,
        ));
    };
    let f = load_fallback("startup load", fb)?;
    // A primary that fails to load leaves the fallback serving; one that
    // loads but cannot do what the flags ask is a configuration error.
    let (p, failed) = match guarded("startup load", || load_model(primary)) {
        Ok(p) => (Some(with_stream(p, stream_window)?), None),
        Err(e) => (None, Some(e)),
    };
    Ok((
        Tagger {
            primary: p,
            fallback: Some(f),
        },
        failed,
    ))
}

/// Reload: strict. A bad primary is refused (the running model stays), not
/// silently replaced by the fallback alone. The stream's window starts
/// empty ([`crate::AppState::reload`] carries it over to the same bundle).
pub fn load_strict(
    primary: &Path,
    fallback: Option<&Path>,
    stream_window: Option<usize>,
) -> Result<Tagger, ServerError> {
    let p = load_primary("reload", primary, stream_window)?;
    let f = match fallback {
        Some(fb) => Some(load_fallback("reload", fb)?),
        None => None,
    };
    Ok(Tagger {
        primary: Some(p),
        fallback: f,
    })
}

/// Load the primary ([`with_stream`]).
fn load_primary(
    what: &str,
    dir: &Path,
    stream_window: Option<usize>,
) -> Result<LoadedModel, ServerError> {
    with_stream(guarded(what, || load_model(dir))?, stream_window)
}

/// With `stream_window`, the primary judges each case against that many
/// recent ones; a model that cannot is refused.
fn with_stream(
    mut p: LoadedModel,
    stream_window: Option<usize>,
) -> Result<LoadedModel, ServerError> {
    if let Some(w) = stream_window {
        p.enable_stream_novelty(w)
            .map_err(|e| ServerError::Config(e.to_string()))?;
    }
    Ok(p)
}

/// A panic payload as text, with quoted values masked (they may be case
/// text; see [`crate::error::mask_quoted`]).
pub(crate) fn panic_message(p: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = p.downcast_ref::<&str>() {
        crate::error::mask_quoted(s)
    } else if let Some(s) = p.downcast_ref::<String>() {
        crate::error::mask_quoted(s)
    } else {
        "non-string panic payload".into()
    }
}

/// `{"id","kind","created"}` of the model that answered.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ModelInfo {
    pub id: String,
    pub kind: String,
    pub created: String,
}

impl ModelInfo {
    pub fn of(m: &LoadedModel) -> Self {
        let man = &m.bundle.manifest;
        Self {
            id: man.id.clone(),
            kind: man.kind.clone(),
            created: man.created.clone(),
        }
    }
}

/// Which loaded model of a tagger has this id (primary first).
pub(crate) fn model_by_id<'a>(t: &'a Tagger, id: &str) -> Option<&'a LoadedModel> {
    t.primary
        .iter()
        .chain(t.fallback.iter())
        .find(|m| m.id() == id)
}

/// The manifest summary `GET /v1/model` shows (everything but checksums;
/// the bundle's directory only `with_paths`).
pub fn manifest_summary(m: &LoadedModel, with_paths: bool) -> Value {
    let man = &m.bundle.manifest;
    let tax = &m.bundle.taxonomy;
    let mut v = json!({
        "id": man.id,
        "kind": man.kind,
        "created": man.created,
        "build": man.build,
        "format": man.format,
        "training_data_hash": man.training_data_hash,
        "label_space": man.label_space,
        "taxonomy": {"name": tax.name, "depth": tax.depth(), "n_paths": tax.n_paths()},
        "calibration": man.calibration,
        "thresholds": man.thresholds,
        "validation_metrics": man.validation_metrics,
        "hyper_parameters": man.hyper_parameters,
        "oos_judging": m.judging,
    });
    if with_paths {
        v["dir"] = json!(m.bundle.dir.display().to_string());
    } else if let Some(enc) = v["hyper_parameters"]["encoder"].as_str() {
        // A local encoder directory shows by its name only.
        if !enc.starts_with("hf:") {
            let name = Path::new(enc)
                .file_name()
                .map_or_else(String::new, |n| n.to_string_lossy().into_owned());
            v["hyper_parameters"]["encoder"] = json!(name);
        }
    }
    v
}

/// The taxonomy tree as nested JSON nodes.
pub fn taxonomy_json(m: &LoadedModel) -> Value {
    let tax = &m.bundle.taxonomy;
    fn node(tax: &casetag_core::Taxonomy, i: usize) -> Value {
        let n = tax.node(i);
        json!({
            "id": n.id,
            "name": n.name,
            "description": n.description,
            "level": n.level,
            "actions": n.actions,
            "children": n.children.iter().map(|&c| node(tax, c)).collect::<Vec<_>>(),
        })
    }
    json!({
        "name": tax.name,
        "model": ModelInfo::of(m),
        "depth": tax.depth(),
        "n_paths": tax.n_paths(),
        "actions": tax.action_library(),
        "nodes": tax.level_nodes(1).iter().map(|&i| node(tax, i)).collect::<Vec<_>>(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use casetag_core::bundle::MANIFEST;

    #[test]
    fn resolves_champion_and_reports_unknown_specs() {
        let root = tempfile::tempdir().unwrap();
        let v2 = root.path().join("tagger").join("v2");
        std::fs::create_dir_all(&v2).unwrap();
        std::fs::write(v2.join(MANIFEST), "{}").unwrap();
        std::fs::write(root.path().join("tagger").join("champion"), "v2\n").unwrap();
        assert_eq!(resolve_model(root.path(), "tagger").unwrap(), v2);
        assert_eq!(resolve_model(root.path(), "tagger/v2").unwrap(), v2);
        let e = resolve_model(root.path(), "nope").unwrap_err();
        assert!(e.is_input() && e.to_string().contains("nope"), "{e}");
    }
}

#![forbid(unsafe_code)]
//! casetag-engine: everything between a model's raw scores and an answer
//! automation can act on.
//!
//! Place in the pipeline: `data` (polars, CLI only) produces cases; the
//! backends (`baseline`, `transformer`) produce logits over leaf paths; this
//! crate trains and writes bundles, loads them, calibrates, decides (back-off,
//! out-of-scope, actions), runs the fallback chain and evaluates. The server
//! and the CLI are thin layers over it.

pub mod add;
pub mod backend;
pub mod calibrate;
pub mod decide;
pub mod drift;
pub mod eval;
pub mod few_shot;
pub mod fusion;
pub mod gate;
pub mod oos_meta;
pub mod record;
pub mod report_html;
pub mod review;
pub mod tagger;
pub mod train;

pub use calibrate::DecisionParams;
pub use decide::{Decider, Decision, Thresholds};
pub use tagger::{load_model, LoadedModel, Tagged, Tagger};
pub use train::{train, Example, TrainConfig};

/// Errors of the engine. `Input` is the caller's fault (exit code 2, HTTP
/// 4xx); the rest are internal.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("{0}")]
    Input(String),
    #[error("{0}")]
    Core(#[from] casetag_core::Error),
    #[error("baseline: {0}")]
    Baseline(String),
    #[error("transformer: {0}")]
    Transformer(String),
    #[error("{0}")]
    Internal(String),
}

impl EngineError {
    /// Bad input or usage (as opposed to an internal failure).
    pub fn is_input(&self) -> bool {
        matches!(
            self,
            EngineError::Input(_)
                | EngineError::Core(casetag_core::Error::Bundle(_))
                | EngineError::Core(casetag_core::Error::Taxonomy(_))
                | EngineError::Core(casetag_core::Error::Invalid(_))
        )
    }
}

pub type Result<T> = std::result::Result<T, EngineError>;

/// Fisher–Yates shuffle driven by an xorshift64 generator whose state the
/// caller owns (nonzero): the same state gives the same order, and one
/// state can run through several shuffles.
pub(crate) fn shuffle<T>(v: &mut [T], state: &mut u64) {
    for i in (1..v.len()).rev() {
        let r = casetag_core::xorshift64(state);
        v.swap(i, (r % (i as u64 + 1)) as usize);
    }
}

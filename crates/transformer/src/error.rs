//! The crate's single error type. Every message is one line and names what
//! is at fault (a file, a field, a parameter), so the binary can print it as is.

/// Errors of the transformer backend.
#[derive(Debug, thiserror::Error)]
pub enum TransformerError {
    /// The encoder directory or one of its files is missing or malformed.
    #[error("encoder: {0}")]
    Encoder(String),
    /// The tokenizer could not be loaded or failed on an input.
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    /// Hyper-parameters that cannot work.
    #[error("invalid parameter: {0}")]
    Params(String),
    /// Training data that cannot be used (empty, targets out of range, ...).
    #[error("invalid training input: {0}")]
    Input(String),
    /// A saved model directory that is missing files or is inconsistent.
    #[error("model: {0}")]
    Model(String),
    /// A tensor operation failed (shape mismatch, out of memory, ...).
    #[error("tensor: {0}")]
    Tensor(String),
    #[error("io: {0}")]
    Io(String),
}

impl TransformerError {
    pub(crate) fn io(path: &std::path::Path, e: impl std::fmt::Display) -> Self {
        Self::Io(format!("{}: {}", path.display(), one_line(&e.to_string())))
    }
}

/// Keeps the first line: candle errors may carry a backtrace.
pub(crate) fn one_line(s: &str) -> String {
    s.lines().next().unwrap_or("").trim().to_string()
}

impl From<candle_core::Error> for TransformerError {
    fn from(e: candle_core::Error) -> Self {
        Self::Tensor(one_line(&e.to_string()))
    }
}

pub type Result<T> = std::result::Result<T, TransformerError>;

/// Write tensors as a safetensors file created like any other file of a
/// bundle: its mode follows the umask (`safetensors`' own writer creates
/// files readable by their owner only, which other accounts serving or
/// tagging with the bundle cannot read).
pub(crate) fn save_safetensors(
    tensors: &std::collections::HashMap<String, candle_core::Tensor>,
    path: &std::path::Path,
) -> Result<()> {
    let bytes = safetensors::serialize(tensors, None).map_err(|e| TransformerError::io(path, e))?;
    std::fs::write(path, bytes).map_err(|e| TransformerError::io(path, e))
}

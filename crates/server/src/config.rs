//! Server configuration: the resolved [`ServerConfig`] the CLI builds, and the
//! [`Limits`] flags (flattened into `casetag serve --help`).

use std::path::PathBuf;

use crate::ServerError;

/// Request limits, dynamic batching and deadlines. Every field is a
/// `casetag serve` flag; the doc comments are its `--help` text.
#[derive(clap::Args, Clone, Debug)]
pub struct Limits {
    /// Largest request body accepted, in bytes (larger: 413).
    #[arg(long, default_value_t = 1 << 20)]
    pub max_body_bytes: usize,
    /// Most cases in one request (more: 422).
    #[arg(long, default_value_t = 64)]
    pub max_cases: usize,
    /// Dynamic batching: most cases the model sees in one batch.
    #[arg(long, default_value_t = 32)]
    pub max_batch_cases: usize,
    /// Dynamic batching: most text characters in one batch (a single larger
    /// request still runs, alone).
    #[arg(long, default_value_t = 32_768)]
    pub max_batch_chars: usize,
    /// Dynamic batching: most encoder tokens in one batch, every window of
    /// a long transcript counted (models that tokenize; a single larger
    /// request still runs, alone). Bounds a batch's compute whatever the
    /// language's characters per token.
    #[arg(long, default_value_t = 512)]
    pub max_batch_tokens: usize,
    /// Dynamic batching: longest time the first request of a batch waits for
    /// company, in milliseconds.
    #[arg(long, default_value_t = 2)]
    pub max_wait_ms: u64,
    /// Cases that may wait for or be in the model at once; beyond it requests
    /// are refused at once with 429 (the queue never grows without bound).
    #[arg(long, default_value_t = 256)]
    pub queue_capacity: usize,
    /// A request whose primary-model answer is not ready after this many
    /// milliseconds is answered by the fallback (`served_by: "baseline"`), or
    /// fails with 503 `deadline_exceeded` without one. 0 waits indefinitely.
    #[arg(long, default_value_t = 200)]
    pub deadline_ms: u64,
    /// Turn dynamic batching off: every request runs through the model alone
    /// (for load-test comparisons).
    #[arg(long)]
    pub no_batching: bool,
    /// On SIGTERM/Ctrl-C, how long in-flight requests may take to drain, in
    /// seconds, before the server exits anyway.
    #[arg(long, default_value_t = 30)]
    pub drain_timeout_s: u64,
    /// A connection must send a complete request head within this many
    /// milliseconds of connecting, or of its previous response: so this is
    /// also the idle keep-alive timeout. Slow or stalled clients
    /// (slowloris) are disconnected.
    #[arg(long, default_value_t = 10_000)]
    pub header_timeout_ms: u64,
    /// A request body must arrive in full within this many milliseconds of
    /// its head (slower: 408, connection closed).
    #[arg(long, default_value_t = 30_000)]
    pub body_timeout_ms: u64,
    /// Most connections open at once; one more is answered 503
    /// `too_many_connections` and closed.
    #[arg(long, default_value_t = 1024)]
    pub max_connections: usize,
    /// Recent answers of the primary model the drift gauges on /metrics
    /// compare with its validation answers (0 turns them off).
    #[arg(long, default_value_t = 1000)]
    pub drift_window: usize,
}

/// The flags' defaults, declared once (on the flags).
impl Default for Limits {
    fn default() -> Self {
        use clap::{Args, FromArgMatches};
        let cmd = Limits::augment_args(clap::Command::new("limits"));
        Limits::from_arg_matches(&cmd.get_matches_from(["limits"]))
            .expect("every limit has a default")
    }
}

impl Limits {
    /// Reject combinations that could never serve a request.
    pub fn check(&self) -> Result<(), ServerError> {
        let bad = |m: String| Err(ServerError::Config(m));
        if self.max_body_bytes == 0 {
            return bad("--max-body-bytes must be at least 1".into());
        }
        if self.max_cases == 0 {
            return bad("--max-cases must be at least 1".into());
        }
        if self.header_timeout_ms == 0 || self.body_timeout_ms == 0 {
            return bad("--header-timeout-ms and --body-timeout-ms must be at least 1".into());
        }
        if self.max_connections == 0 {
            return bad("--max-connections must be at least 1".into());
        }
        if self.max_batch_cases == 0 || self.max_batch_chars == 0 || self.max_batch_tokens == 0 {
            return bad(
                "--max-batch-cases, --max-batch-chars and --max-batch-tokens must be at least 1"
                    .into(),
            );
        }
        // A request larger than the whole queue could never be admitted and
        // would get 429 forever, which reads as "retry later" but is not.
        if self.queue_capacity < self.max_cases {
            return bad(format!(
                "--queue-capacity ({}) must be at least --max-cases ({})",
                self.queue_capacity, self.max_cases
            ));
        }
        Ok(())
    }
}

/// Everything `casetag serve` resolved from its flags.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// `HOST:PORT` to listen on.
    pub addr: String,
    /// The primary bundle directory, resolved at startup.
    pub model: PathBuf,
    /// What the user passed as `--model`: a directory, `NAME/VERSION` or a
    /// registry `NAME`, re-resolved on every reload (a `NAME` follows its
    /// champion).
    pub model_spec: String,
    /// The fallback bundle (the baseline).
    pub fallback: Option<PathBuf>,
    /// Registry root for `NAME`-style specs.
    pub models_root: PathBuf,
    pub limits: Limits,
    /// Judge each request's cases against this many recent cases
    /// (`--stream-novelty`; see [`casetag_engine::LoadedModel::enable_stream_novelty`]).
    pub stream_window: Option<usize>,
}

impl ServerConfig {
    /// A config serving `model` with default limits (tests and embedding).
    pub fn for_model(model: impl Into<PathBuf>) -> Self {
        let model = model.into();
        Self {
            addr: "127.0.0.1:0".into(),
            model_spec: model.to_string_lossy().into_owned(),
            model,
            fallback: None,
            models_root: PathBuf::from(casetag_core::bundle::DEFAULT_REGISTRY),
            limits: Limits::default(),
            stream_window: None,
        }
    }
}

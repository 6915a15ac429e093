use clap::Parser;

use crate::{CmdResult, Failure};

/// Serve real-time tag lookups over HTTP (POST /v1/tag and friends; see the
/// README for the API, limits and error statuses).
#[derive(Parser)]
pub struct Args {
    /// Model bundle directory (or NAME / NAME/VERSION in the registry).
    #[arg(long)]
    model: String,
    /// Fallback bundle, which must be a baseline (anything else is refused): it
    /// answers when the primary fails to load (the server then reports itself
    /// degraded), fails on a batch, or misses its deadline.
    #[arg(long)]
    fallback: Option<String>,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8080")]
    addr: String,
    #[command(flatten)]
    registry: super::models::Registry,
    #[command(flatten)]
    limits: casetag_server::Limits,
    /// Judge out of scope for each case against the recent cases before it
    /// (the last `--stream-window` this server answered, embeddings only,
    /// never texts): a new kind of case that recurs in the traffic is then
    /// declared out of scope far more often, one request at a time. Needs a
    /// transformer trained without out-of-scope rows (learned detector); an
    /// answer then depends on the traffic before it. The window starts empty
    /// at startup and at each reload that brings another bundle.
    #[arg(long)]
    stream_novelty: bool,
    #[command(flatten)]
    window: StreamWindowArg,
}

/// The window of `serve`, `tag` and `eval --stream-novelty`.
#[derive(clap::Args, Debug, Clone)]
pub struct StreamWindowArg {
    /// Recent cases each case is judged against under `--stream-novelty`.
    #[arg(long, default_value_t = casetag_engine::oos_meta::STREAM_WINDOW, value_name = "N",
          value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub stream_window: u32,
}

pub fn run(a: Args) -> CmdResult {
    let model = a.registry.resolve(&a.model)?;
    let fallback = match &a.fallback {
        Some(f) => Some(a.registry.resolve(f)?),
        None => None,
    };
    let cfg = casetag_server::ServerConfig {
        addr: a.addr,
        model,
        model_spec: a.model,
        fallback,
        models_root: a.registry.models_root,
        limits: a.limits,
        stream_window: a.stream_novelty.then_some(a.window.stream_window as usize),
    };
    casetag_server::serve_blocking(cfg).map_err(|e| {
        if e.is_input() {
            Failure::input(e)
        } else {
            Failure::internal(e)
        }
    })
}

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
    };
    casetag_server::serve_blocking(cfg).map_err(|e| {
        if e.is_input() {
            Failure::input(e)
        } else {
            Failure::internal(e)
        }
    })
}

//! Sets `cfg(has_encoder)` when the real all-MiniLM-L6-v2 has been fetched
//! (`bash scripts/fetch_encoder.sh`) and `CASETAG_SKIP_REAL_ENCODER` is not
//! `1`. Tests that need the encoder carry
//! `#[cfg_attr(not(has_encoder), ignore = "…")]`, so without it they are
//! reported as skipped (ignored), never as passed.

use std::path::{Path, PathBuf};

const WEIGHTS: &str = "models/encoders/all-MiniLM-L6-v2/model.safetensors";

fn main() {
    println!("cargo::rustc-check-cfg=cfg(has_encoder)");
    println!("cargo:rerun-if-env-changed=CASETAG_SKIP_REAL_ENCODER");
    let root =
        PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("set by cargo")).join("../..");
    let weights = root.join(WEIGHTS);
    // Cargo reruns a build script on every build while a watched path is
    // missing, so until the weights exist, watch the deepest folder on their
    // way that does exist, up to `models/` (fetching the encoder changes it).
    let models = root.join("models");
    let watched = weights
        .ancestors()
        .take_while(|p| p.starts_with(&models))
        .find(|p| p.exists())
        .unwrap_or(Path::new("build.rs"));
    println!("cargo:rerun-if-changed={}", watched.display());
    let skip = std::env::var("CASETAG_SKIP_REAL_ENCODER").as_deref() == Ok("1");
    if weights.is_file() && !skip {
        println!("cargo:rustc-cfg=has_encoder");
    }
}

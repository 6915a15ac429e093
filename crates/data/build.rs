//! Sets `cfg(has_banking77)` when BANKING77 is present (by default in
//! `../shared/data/banking77` beside the repository; `CASETAG_SHARED_DATA`
//! names another data folder) and passes its training file to the tests as
//! `CASETAG_BANKING77_TRAIN`. The test that reads it is reported as skipped
//! (ignored) without it, never as passed.

use std::path::{Path, PathBuf};

fn main() {
    println!("cargo::rustc-check-cfg=cfg(has_banking77)");
    println!("cargo:rerun-if-env-changed=CASETAG_SHARED_DATA");
    let root =
        PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("set by cargo")).join("../..");
    let data = std::env::var_os("CASETAG_SHARED_DATA")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("../shared/data"));
    let train = data.join("banking77/train.csv");
    // Cargo reruns a build script on every build while a watched path is
    // missing: until the file exists, watch the deepest folder on its way
    // that does, up to the data folder. Without even that folder, only a
    // change of CASETAG_SHARED_DATA (or of this script) looks again.
    let watched = train
        .ancestors()
        .take_while(|p| p.starts_with(&data))
        .find(|p| p.exists())
        .unwrap_or(Path::new("build.rs"));
    println!("cargo:rerun-if-changed={}", watched.display());
    if train.is_file() {
        println!("cargo:rustc-cfg=has_banking77");
        println!(
            "cargo:rustc-env=CASETAG_BANKING77_TRAIN={}",
            train.display()
        );
    }
}

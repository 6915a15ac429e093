//! Passes the build's identity to the engine as `CASETAG_BUILD`: the crate
//! version and the git commit the sources were checked out at
//! (`0.1.0+3f2c1d9a0b7e`), or `CASETAG_BUILD_ID` when set (a build from a
//! source archive without git history), else the version alone. Bundles
//! record it, and the default model id digests it, so bundles trained by
//! different code get different ids. Uncommitted changes are not seen.

use std::path::{Path, PathBuf};
use std::process::Command;

fn git(dir: &Path, args: &[&str]) -> Option<String> {
    let out = Command::new("git")
        .args(args)
        .current_dir(dir)
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
        .filter(|s| !s.is_empty())
}

fn main() {
    println!("cargo:rerun-if-env-changed=CASETAG_BUILD_ID");
    println!("cargo:rerun-if-changed=build.rs");
    let version = std::env::var("CARGO_PKG_VERSION").expect("set by cargo");
    let dir = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let id = match std::env::var("CASETAG_BUILD_ID") {
        Ok(id) if !id.trim().is_empty() => Some(id.trim().to_string()),
        _ => {
            // Rebuild when HEAD moves: HEAD itself (a checkout) and the
            // branch it names, loose or packed (a commit).
            if let Some(git_dir) = git(&dir, &["rev-parse", "--absolute-git-dir"]) {
                let git_dir = PathBuf::from(git_dir);
                println!("cargo:rerun-if-changed={}", git_dir.join("HEAD").display());
                if let Some(r) = git(&dir, &["symbolic-ref", "-q", "HEAD"]) {
                    let loose = git_dir.join(&r);
                    if loose.exists() {
                        println!("cargo:rerun-if-changed={}", loose.display());
                    }
                }
                let packed = git_dir.join("packed-refs");
                if packed.exists() {
                    println!("cargo:rerun-if-changed={}", packed.display());
                }
            }
            git(&dir, &["rev-parse", "--short=12", "HEAD"])
        }
    };
    let build = match id {
        Some(id) => format!("{version}+{id}"),
        None => version,
    };
    println!("cargo:rustc-env=CASETAG_BUILD={build}");
}

use std::path::{Path, PathBuf};

use casetag_core::bundle::{check_registry_name, Bundle, DEFAULT_REGISTRY, REGISTRY_ENV};
use clap::{Parser, Subcommand};

use crate::{CmdResult, Failure};

/// The model registry: bundles live at ROOT/NAME/VERSION (write them there
/// with `casetag train --out ROOT/NAME/VERSION`; bundles are immutable) and
/// ROOT/NAME/champion names the live version.
#[derive(Parser)]
pub struct Args {
    /// Registry root.
    #[arg(long, env = REGISTRY_ENV, default_value = DEFAULT_REGISTRY, global = true)]
    root: PathBuf,
    #[command(subcommand)]
    action: Action,
}

#[derive(Subcommand)]
enum Action {
    /// List every NAME/VERSION with kind, created time and champion flag.
    List,
    /// Show a bundle's manifest (NAME, NAME/VERSION or a directory), verifying checksums.
    Show { model: String },
    /// Make NAME/VERSION the champion of NAME (after verifying it).
    Promote { model: String },
    /// Verify a bundle written before manifests carried a checksum (format 1)
    /// and upgrade it to the current format, so it loads again. Only for
    /// bundles whose origin you trust: format 1 cannot prove its manifest
    /// was not edited.
    Seal { model: String },
}

/// Resolve `NAME` (its champion), `NAME/VERSION` or a bundle directory.
pub fn resolve(root: &Path, spec: &str) -> Result<PathBuf, Failure> {
    casetag_core::bundle::resolve_spec(root, spec).map_err(|e| Failure::input(e.message()))
}

/// Where the model flags of `tag`, `eval`, `serve` and `monitor` look up
/// registry names (`NAME` for its champion, `NAME/VERSION`); a bundle
/// directory is taken as it is.
#[derive(clap::Args, Debug, Clone)]
pub struct Registry {
    /// Registry root for NAME-style models (a bundle directory is taken as it is).
    #[arg(long = "models-root", env = REGISTRY_ENV, default_value = DEFAULT_REGISTRY)]
    pub models_root: PathBuf,
}

impl Registry {
    pub fn resolve(&self, spec: &str) -> Result<PathBuf, Failure> {
        resolve(&self.models_root, spec)
    }
}

fn champion(root: &Path, name: &str) -> Option<String> {
    std::fs::read_to_string(root.join(name).join("champion"))
        .ok()
        .map(|s| s.trim().to_string())
}

pub fn run(a: Args) -> CmdResult {
    match a.action {
        Action::List => {
            let mut rows = Vec::new();
            let names = std::fs::read_dir(&a.root)
                .map_err(|e| Failure::input(format!("{}: {e}", a.root.display())))?;
            for n in names.flatten() {
                if !n.path().is_dir() {
                    continue;
                }
                let name = n.file_name().to_string_lossy().to_string();
                let champ = champion(&a.root, &name);
                for v in std::fs::read_dir(n.path()).into_iter().flatten().flatten() {
                    let mp = v.path().join(casetag_core::bundle::MANIFEST);
                    let Ok(text) = std::fs::read_to_string(&mp) else {
                        continue;
                    };
                    let Ok(m) = serde_json::from_str::<serde_json::Value>(&text) else {
                        continue;
                    };
                    let version = v.file_name().to_string_lossy().to_string();
                    rows.push(format!(
                        "{}/{}\t{}\t{}\t{}{}",
                        name,
                        version,
                        m["kind"].as_str().unwrap_or("?"),
                        m["created"].as_str().unwrap_or("?"),
                        m["id"].as_str().unwrap_or("?"),
                        if champ.as_deref() == Some(version.as_str()) {
                            "\tchampion"
                        } else {
                            ""
                        }
                    ));
                }
            }
            rows.sort();
            if rows.is_empty() {
                crate::progress::warn(&format!(
                    "no bundles under {} (expected {}/NAME/VERSION/manifest.json)",
                    a.root.display(),
                    a.root.display()
                ));
            }
            super::say("MODEL\tKIND\tCREATED\tID");
            for r in rows {
                super::say(r);
            }
            Ok(())
        }
        Action::Show { model } => {
            let dir = resolve(&a.root, &model)?;
            let b = Bundle::open(&dir).map_err(Failure::input)?;
            super::say(serde_json::to_string_pretty(&b.manifest).unwrap_or_default());
            Ok(())
        }
        Action::Seal { model } => {
            let dir = resolve(&a.root, &model)?;
            let b = Bundle::seal(&dir).map_err(Failure::input)?;
            super::say(format!(
                "{}: verified and sealed as bundle format {} ({})",
                dir.display(),
                b.manifest.format,
                b.manifest.id
            ));
            Ok(())
        }
        Action::Promote { model } => {
            let (name, version) = model.split_once('/').ok_or_else(|| {
                Failure::input(format!("promote '{model}': expected NAME/VERSION"))
            })?;
            check_registry_name(&model).map_err(|e| Failure::input(e.message()))?;
            let dir = a.root.join(name).join(version);
            Bundle::open(&dir).map_err(Failure::input)?;
            // Write then rename: readers see the old or the new champion, never half.
            let tmp = a
                .root
                .join(name)
                .join(format!(".champion.tmp-{}", std::process::id()));
            std::fs::write(&tmp, format!("{version}\n"))
                .map_err(|e| Failure::internal(format!("{}: {e}", tmp.display())))?;
            std::fs::rename(&tmp, a.root.join(name).join("champion"))
                .map_err(|e| Failure::internal(format!("{}: {e}", dir.display())))?;
            super::say(format!("{name}: champion is now {version}"));
            Ok(())
        }
    }
}

//! Model bundles: a self-contained directory with `manifest.json` (id, kind,
//! taxonomy, data hash, hyper-parameters, metrics, calibration, thresholds,
//! file checksums) beside the weights. Bundles are written to a temporary
//! sibling directory and renamed into place, so a reader never sees half a
//! bundle; loading verifies every checksum. The manifest itself (thresholds,
//! calibration) is covered by `manifest.sha256` beside it.
//!
//! What [`Bundle::open`] accepts: the directory holds exactly the files the
//! manifest lists (a missing or an unlisted file is refused, so nothing a
//! loader reads escapes verification) plus the manifest and its digest.
//! The digest is required: deleting it does not turn the check off, and
//! neither does declaring the bundle format 1 (written before digests
//! existed): such bundles load only after an operator who trusts their
//! origin runs `casetag models seal` ([`Bundle::seal`]). The digest guards
//! against corruption and edits by tools unaware of it; it is not a
//! signature (whoever can write the bundle can recompute it).

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::text::TextPipeline;
use crate::{Error, LabelSpace, Result, Taxonomy};

pub const MANIFEST: &str = "manifest.json";
pub const TAXONOMY: &str = "taxonomy.yaml";
/// sha256 of `manifest.json`'s bytes: required by [`Bundle::open`]; format 1
/// bundles, written before it existed, get it from [`Bundle::seal`].
pub const MANIFEST_DIGEST: &str = "manifest.sha256";
/// The format [`BundleWriter`] writes.
pub const FORMAT_VERSION: u32 = 2;
/// The oldest format whose manifest [`Bundle::seal`] upgrades.
pub const OLDEST_FORMAT_VERSION: u32 = 1;

/// Temperature scaling fitted on validation data.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Calibration {
    pub temperature: f32,
    #[serde(default)]
    pub ece_before: Option<f64>,
    #[serde(default)]
    pub ece_after: Option<f64>,
    /// Per level (L1 first), the temperature of the confidences reported
    /// for that level; empty (bundles from before) means `temperature`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub level_temperatures: Vec<f32>,
}

impl Default for Calibration {
    fn default() -> Self {
        Self {
            temperature: 1.0,
            ece_before: None,
            ece_after: None,
            level_temperatures: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub format: u32,
    pub id: String,
    /// `baseline` or `transformer`.
    pub kind: String,
    /// RFC 3339, UTC.
    pub created: String,
    pub taxonomy: String,
    /// sha256 of the training table's rows (text and labels).
    pub training_data_hash: String,
    pub label_space: LabelSpace,
    pub hyper_parameters: serde_json::Value,
    pub validation_metrics: serde_json::Value,
    pub calibration: Calibration,
    /// Decision thresholds (owned by the engine; opaque here).
    pub thresholds: serde_json::Value,
    /// File name -> sha256 hex, for every file but the manifest.
    pub files: BTreeMap<String, String>,
    /// How raw text becomes model input (normalisation rules, masking,
    /// length cap); the engine applies it to every text it is given.
    /// Bundles written before it was recorded were trained with the
    /// default pipeline of version 1 ([`TextPipeline::first`]).
    #[serde(default = "TextPipeline::first")]
    pub text: TextPipeline,
    /// The casetag build that trained the bundle: version and git commit
    /// (`0.1.0+3f2c1d9a0b7e`). Absent in bundles written before it was
    /// recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub build: Option<String>,
    /// The taxonomy's own `version` and the sha256 of its file, recorded
    /// when the bundle is written: data labelled with another taxonomy
    /// version goes through `--label-map` in `eval` and `monitor`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub taxonomy_version: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub taxonomy_sha256: Option<String>,
    /// Languages of the training cases as [`crate::lang::detect`] tells
    /// them, with their counts; [`crate::lang::Coverage`] reads which ones
    /// the model knows. Empty in bundles written before it was recorded.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub languages: BTreeMap<String, usize>,
    /// For a bundle made by adding tags to another (`train --from --add`):
    /// that bundle and the taxonomy diff.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<Parent>,
}

/// The bundle another was made from by adding tags, and what was added.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Parent {
    pub id: String,
    /// sha256 of the parent's manifest file: which bundle exactly.
    pub manifest_sha256: String,
    /// The nodes added to the parent's taxonomy (paths, root first).
    pub added: Vec<String>,
    /// Training examples per added leaf tag.
    pub examples: BTreeMap<String, usize>,
    /// Per added leaf tag: how it sits among the parent's tags. Empty in
    /// bundles written before it was recorded.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub overlap: BTreeMap<String, TagOverlap>,
    /// Leaf tags the parent's own adds (and theirs, back to a full
    /// training) brought in from a few examples. Empty where the parent
    /// was trained in full, and in bundles written before it was recorded.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub earlier: Vec<String>,
    /// How much nearer (cosine) the best old tag's nearest memory row must
    /// be than an added tag's nearest example for the added tag to give way
    /// (`train --from --add --guard-margin`). `None`: answers are not
    /// checked (`off`, or bundles written before the check existed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guard_margin: Option<f32>,
}

impl Parent {
    /// Every leaf tag of this bundle's lineage added from a few examples:
    /// this add's and [`Self::earlier`].
    pub fn few_shot_tags(&self) -> impl Iterator<Item = &str> {
        self.examples
            .keys()
            .map(String::as_str)
            .chain(self.earlier.iter().map(String::as_str))
    }
}

/// The name [`TagOverlap`] gives the parent's out-of-scope output.
pub const OUT_OF_SCOPE: &str = "out_of_scope";

/// Where an added tag meets the parent's tags: a tag the parent already
/// answers its examples with is one its cases will be confused with.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TagOverlap {
    /// The parent's answers on the tag's examples (tag, or [`OUT_OF_SCOPE`],
    /// to number of examples).
    pub parent_answers: BTreeMap<String, usize>,
    /// Training rows of the parent's tags (those its memory keeps) that the
    /// new model answers with this tag. The model knows its training rows
    /// better than unseen cases, so unseen cases of those tags go to the
    /// new one more often than this says.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub memory_taken: BTreeMap<String, usize>,
}

impl TagOverlap {
    /// The parent's most frequent answer on the examples and its count
    /// (the first in name order among equals).
    pub fn nearest(&self) -> Option<(&str, usize)> {
        self.parent_answers
            .iter()
            .fold(None, |best: Option<(&str, usize)>, (t, &n)| match best {
                Some((_, m)) if m >= n => best,
                _ => Some((t.as_str(), n)),
            })
    }
}

/// sha256 of a file, streamed.
pub fn sha256_file(path: &Path) -> Result<String> {
    let mut f =
        std::fs::File::open(path).map_err(|e| Error::Bundle(format!("{}: {e}", path.display())))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = f
            .read(&mut buf)
            .map_err(|e| Error::Bundle(format!("{}: {e}", path.display())))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex::encode(h.finalize()))
}

/// An incremental hasher for training data fingerprints.
#[derive(Default)]
pub struct DataHasher(Sha256);

impl DataHasher {
    pub fn update(&mut self, s: &str) {
        self.0.update((s.len() as u64).to_le_bytes());
        self.0.update(s.as_bytes());
    }
    pub fn finish(self) -> String {
        hex::encode(self.0.finalize())
    }
}

/// Current UTC time as RFC 3339 (no external time crate needed).
pub fn now_rfc3339() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0) as i64;
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Civil-from-days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        (rem / 60) % 60,
        rem % 60
    )
}

/// Writes a bundle into a temporary directory, then renames it into place.
pub struct BundleWriter {
    tmp: PathBuf,
    dest: PathBuf,
}

impl BundleWriter {
    pub fn new(dest: &Path) -> Result<Self> {
        let parent = dest
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        std::fs::create_dir_all(parent)
            .map_err(|e| Error::Bundle(format!("{}: {e}", parent.display())))?;
        let name = dest
            .file_name()
            .ok_or_else(|| Error::Bundle(format!("{}: not a directory name", dest.display())))?
            .to_string_lossy()
            .to_string();
        let tmp = parent.join(format!(".{name}.tmp-{}", std::process::id()));
        if tmp.exists() {
            let _ = std::fs::remove_dir_all(&tmp);
        }
        std::fs::create_dir_all(&tmp)
            .map_err(|e| Error::Bundle(format!("{}: {e}", tmp.display())))?;
        Ok(Self {
            tmp,
            dest: dest.to_path_buf(),
        })
    }

    /// Where the backend writes its files.
    pub fn dir(&self) -> &Path {
        &self.tmp
    }

    /// Where the bundle will be.
    pub fn dest(&self) -> &Path {
        &self.dest
    }

    /// Checksum every file, write the manifest and move the bundle into place.
    /// An existing destination is replaced only when `overwrite` is set.
    pub fn finish(
        self,
        mut manifest: Manifest,
        taxonomy: &Taxonomy,
        overwrite: bool,
    ) -> Result<Manifest> {
        let io = |p: &Path, e: std::io::Error| Error::Bundle(format!("{}: {e}", p.display()));
        let tax_path = self.tmp.join(TAXONOMY);
        let yaml = taxonomy.to_yaml();
        std::fs::write(&tax_path, &yaml).map_err(|e| io(&tax_path, e))?;
        manifest.taxonomy = TAXONOMY.into();
        manifest.taxonomy_version = taxonomy.raw().version;
        manifest.taxonomy_sha256 = Some(hex::encode(Sha256::digest(yaml.as_bytes())));
        manifest.format = FORMAT_VERSION;
        manifest.files.clear();
        for entry in std::fs::read_dir(&self.tmp).map_err(|e| io(&self.tmp, e))? {
            let entry = entry.map_err(|e| io(&self.tmp, e))?;
            let name = entry.file_name().to_string_lossy().to_string();
            if name == MANIFEST || name == MANIFEST_DIGEST || !entry.path().is_file() {
                continue;
            }
            manifest.files.insert(name, sha256_file(&entry.path())?);
        }
        let mp = self.tmp.join(MANIFEST);
        let json = serde_json::to_string_pretty(&manifest).expect("manifest serializes");
        std::fs::write(&mp, &json).map_err(|e| io(&mp, e))?;
        let dp = self.tmp.join(MANIFEST_DIGEST);
        let digest = hex::encode(Sha256::digest(json.as_bytes()));
        std::fs::write(&dp, format!("{digest}\n")).map_err(|e| io(&dp, e))?;
        if self.dest.exists() {
            if !overwrite {
                let _ = std::fs::remove_dir_all(&self.tmp);
                return Err(Error::Bundle(format!(
                    "{}: already exists (bundles are immutable; choose a new directory)",
                    self.dest.display()
                )));
            }
            std::fs::remove_dir_all(&self.dest).map_err(|e| io(&self.dest, e))?;
        }
        std::fs::rename(&self.tmp, &self.dest).map_err(|e| io(&self.dest, e))?;
        Ok(manifest)
    }
}

impl Drop for BundleWriter {
    fn drop(&mut self) {
        // Only still present when `finish` was not reached.
        if self.tmp.exists() {
            let _ = std::fs::remove_dir_all(&self.tmp);
        }
    }
}

/// The manifest's text and parsed form, of a format this build reads.
fn read_manifest(dir: &Path) -> Result<(String, Manifest)> {
    let bad = |m: String| Error::Bundle(format!("{}: {m}", dir.display()));
    if !dir.is_dir() {
        return Err(bad("not a model bundle directory".into()));
    }
    let mp = dir.join(MANIFEST);
    let text =
        std::fs::read_to_string(&mp).map_err(|e| bad(format!("cannot read {MANIFEST}: {e}")))?;
    let manifest: Manifest =
        serde_json::from_str(&text).map_err(|e| bad(format!("{MANIFEST} is corrupt: {e}")))?;
    if !(OLDEST_FORMAT_VERSION..=FORMAT_VERSION).contains(&manifest.format) {
        return Err(bad(format!(
            "bundle format {} is not supported (expected {OLDEST_FORMAT_VERSION} to {FORMAT_VERSION})",
            manifest.format
        )));
    }
    manifest.text.check().map_err(bad)?;
    Ok((text, manifest))
}

/// The directory holds exactly the listed files (plus the manifest and its
/// digest), each with its recorded checksum.
fn verify_files(dir: &Path, manifest: &Manifest) -> Result<()> {
    let bad = |m: String| Error::Bundle(format!("{}: {m}", dir.display()));
    for name in manifest.files.keys() {
        if !is_plain_file_name(name) {
            return Err(bad(format!(
                "the manifest lists '{}', which is not a file name inside the bundle",
                name.escape_debug()
            )));
        }
    }
    // Nothing unlisted: whatever a loader reads has been verified.
    let entries = std::fs::read_dir(dir).map_err(|e| bad(e.to_string()))?;
    for entry in entries {
        let entry = entry.map_err(|e| bad(e.to_string()))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name != MANIFEST && name != MANIFEST_DIGEST && !manifest.files.contains_key(&name) {
            return Err(bad(format!(
                "'{}' is not listed in the manifest (an unverified file; remove it or rebuild the bundle)",
                name.escape_debug()
            )));
        }
    }
    let mut paths = Vec::with_capacity(manifest.files.len());
    let mut sizes = Vec::with_capacity(manifest.files.len());
    for name in manifest.files.keys() {
        let p = dir.join(name);
        match std::fs::metadata(&p) {
            Ok(m) if m.is_file() => sizes.push(m.len()),
            _ => {
                return Err(bad(format!(
                    "file '{name}' listed in the manifest is missing"
                )))
            }
        }
        paths.push(p);
    }
    let threads = std::thread::available_parallelism().map_or(1, usize::from);
    let digests = sha256_files(&paths, &sizes, threads);
    // Reported in the manifest's order, whichever thread finished first.
    for ((name, want), got) in manifest.files.iter().zip(digests) {
        if &got? != want {
            return Err(bad(format!(
                "checksum mismatch for '{name}' (file is corrupt or was modified)"
            )));
        }
    }
    Ok(())
}

/// [`sha256_file`] of every path, on up to `threads` threads: the files,
/// largest first, each go to the least loaded thread (SHA-256 is
/// sequential within a file, so the largest file bounds the time). A
/// thread the system refuses leaves its files to the calling one. In the
/// paths' order.
fn sha256_files(paths: &[PathBuf], sizes: &[u64], threads: usize) -> Vec<Result<String>> {
    let threads = threads.clamp(1, paths.len().max(1));
    let mut order: Vec<usize> = (0..paths.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(sizes[i]));
    let mut bins: Vec<(u64, Vec<usize>)> = vec![(0, Vec::new()); threads];
    for i in order {
        let bin = bins
            .iter_mut()
            .min_by_key(|(load, _)| *load)
            .expect("at least one thread");
        bin.0 += sizes[i];
        bin.1.push(i);
    }
    let hash = |files: &[usize]| -> Vec<(usize, Result<String>)> {
        files.iter().map(|&i| (i, sha256_file(&paths[i]))).collect()
    };
    let mut out: Vec<Option<Result<String>>> = paths.iter().map(|_| None).collect();
    std::thread::scope(|s| {
        let mut handles = Vec::new();
        let mut mine: Vec<usize> = bins[0].1.clone();
        for (_, files) in &bins[1..] {
            match std::thread::Builder::new().spawn_scoped(s, move || hash(files)) {
                Ok(h) => handles.push(h),
                Err(_) => mine.extend(files),
            }
        }
        let theirs = handles
            .into_iter()
            .flat_map(|h| h.join().expect("a hashing thread panicked"));
        for (i, r) in hash(&mine).into_iter().chain(theirs) {
            out[i] = Some(r);
        }
    });
    out.into_iter()
        .map(|r| r.expect("every file hashed"))
        .collect()
}

/// A verified bundle on disk.
#[derive(Debug, Clone)]
pub struct Bundle {
    pub dir: PathBuf,
    pub manifest: Manifest,
    pub taxonomy: Taxonomy,
}

impl Bundle {
    /// Read the manifest, verify every file's checksum and load the taxonomy.
    pub fn open(dir: &Path) -> Result<Self> {
        let bad = |m: String| Error::Bundle(format!("{}: {m}", dir.display()));
        let (text, manifest) = read_manifest(dir)?;
        let dp = dir.join(MANIFEST_DIGEST);
        if !dp.is_file() {
            return Err(bad(if manifest.format < FORMAT_VERSION {
                format!(
                    "bundle format {} has no {MANIFEST_DIGEST} and is not loaded (a newer bundle stripped of its digest looks the same); \
                     if you trust where it came from, `casetag models seal {}` verifies and upgrades it",
                    manifest.format,
                    dir.display()
                )
            } else {
                format!(
                    "{MANIFEST_DIGEST} is missing (required for bundle format {}; the manifest cannot be verified)",
                    manifest.format
                )
            }));
        }
        let want = std::fs::read_to_string(&dp)
            .map_err(|e| bad(format!("cannot read {MANIFEST_DIGEST}: {e}")))?;
        if hex::encode(Sha256::digest(text.as_bytes())) != want.trim() {
            return Err(bad(format!(
                "checksum mismatch for '{MANIFEST}' against {MANIFEST_DIGEST} (file is corrupt or was modified)"
            )));
        }
        verify_files(dir, &manifest)?;
        if !manifest.files.contains_key(&manifest.taxonomy) {
            return Err(bad(format!(
                "taxonomy file '{}' is not covered by a checksum",
                manifest.taxonomy
            )));
        }
        let taxonomy = Taxonomy::load(&dir.join(&manifest.taxonomy))?;
        if taxonomy.n_paths() != manifest.label_space.n_paths {
            return Err(bad(format!(
                "taxonomy has {} leaf paths but the model was trained on {}",
                taxonomy.n_paths(),
                manifest.label_space.n_paths
            )));
        }
        Ok(Self {
            dir: dir.to_path_buf(),
            manifest,
            taxonomy,
        })
    }

    /// Upgrade a format 1 bundle (written before manifests carried a
    /// digest) to the current format: every listed file is verified, then
    /// the manifest is rewritten with the current format and its digest.
    /// Only for bundles whose origin the operator trusts: format 1 cannot
    /// prove its manifest was not edited.
    pub fn seal(dir: &Path) -> Result<Self> {
        let bad = |m: String| Error::Bundle(format!("{}: {m}", dir.display()));
        let (_, mut manifest) = read_manifest(dir)?;
        if manifest.format == FORMAT_VERSION && dir.join(MANIFEST_DIGEST).is_file() {
            return Err(bad(format!(
                "already sealed (bundle format {FORMAT_VERSION} with {MANIFEST_DIGEST})"
            )));
        }
        verify_files(dir, &manifest)?;
        manifest.format = FORMAT_VERSION;
        let json = serde_json::to_string_pretty(&manifest).expect("manifest serializes");
        let io = |p: &Path, e: std::io::Error| Error::Bundle(format!("{}: {e}", p.display()));
        // Digest first, then the manifest by rename: an interruption leaves
        // a bundle that fails to verify, never one that loads unverified.
        let dp = dir.join(MANIFEST_DIGEST);
        let digest = hex::encode(Sha256::digest(json.as_bytes()));
        std::fs::write(&dp, format!("{digest}\n")).map_err(|e| io(&dp, e))?;
        let tmp = dir.join(format!(".{MANIFEST}.tmp-{}", std::process::id()));
        std::fs::write(&tmp, &json).map_err(|e| io(&tmp, e))?;
        std::fs::rename(&tmp, dir.join(MANIFEST)).map_err(|e| io(&tmp, e))?;
        Self::open(dir)
    }

    pub fn file(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }
}

/// One plain file name: no separators, not `.`/`..`, no NUL.
fn is_plain_file_name(name: &str) -> bool {
    !name.is_empty() && name != "." && name != ".." && !name.contains(['/', '\\', '\0'])
}

/// Check a registry name, `NAME` or `NAME/VERSION`: one or two components
/// of ASCII letters, digits, `.`, `_` and `-`, each starting with a letter
/// or digit. So a name never climbs out of the registry root (`..`), never
/// replaces it (an absolute path) and never names a hidden file.
pub fn check_registry_name(spec: &str) -> Result<()> {
    let ok_part = |p: &str| {
        p.len() <= 128
            && p.chars().next().is_some_and(|c| c.is_ascii_alphanumeric())
            && p.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
    };
    let parts: Vec<&str> = spec.split('/').collect();
    if parts.len() <= 2 && parts.iter().all(|p| ok_part(p)) {
        Ok(())
    } else {
        Err(Error::Invalid(format!(
            "model '{}': not a registry name (NAME or NAME/VERSION of letters, digits, '.', '_' and '-', each starting with a letter or digit)",
            spec.escape_debug()
        )))
    }
}

/// The environment variable naming the model registry's root.
pub const REGISTRY_ENV: &str = "CASETAG_MODELS";
/// The registry's root when neither a flag nor [`REGISTRY_ENV`] names one.
pub const DEFAULT_REGISTRY: &str = "models";

/// The registry root from the environment: `$CASETAG_MODELS`, else `models`
/// (the CLI's `--models-root` default).
pub fn registry_root() -> PathBuf {
    std::env::var_os(REGISTRY_ENV).map_or_else(|| PathBuf::from(DEFAULT_REGISTRY), PathBuf::from)
}

/// Resolve a `--model` spec: a bundle directory; else a registry name under
/// `root`, `NAME/VERSION` or `NAME` (whose `champion` file names the live
/// version); else a directory without a manifest (so that the loader
/// reports the broken bundle by its path rather than "not found").
/// Registry names are checked with [`check_registry_name`], and so is the
/// version a `champion` file names.
pub fn resolve_spec(root: &Path, spec: &str) -> Result<PathBuf> {
    let p = Path::new(spec);
    if p.join(MANIFEST).is_file() {
        return Ok(p.to_path_buf());
    }
    let named = check_registry_name(spec);
    if named.is_ok() {
        let direct = root.join(spec);
        if direct.join(MANIFEST).is_file() {
            return Ok(direct);
        }
        let champ = direct.join("champion");
        if champ.is_file() {
            let v = std::fs::read_to_string(&champ)
                .map_err(|e| Error::Io(format!("{}: {e}", champ.display())))?;
            let v = v.trim();
            if v.contains('/') || check_registry_name(v).is_err() {
                return Err(Error::Invalid(format!(
                    "{}: '{}' is not a version name",
                    champ.display(),
                    v.escape_debug()
                )));
            }
            return Ok(direct.join(v));
        }
    }
    if p.is_dir() {
        return Ok(p.to_path_buf());
    }
    if let Err(e) = named {
        return Err(Error::Invalid(format!(
            "{}; nor is it a bundle directory",
            e.message()
        )));
    }
    Err(Error::Invalid(format!(
        "model '{spec}': not a bundle directory, nor NAME/VERSION or a NAME with a champion under {}",
        root.display()
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Files hashed on several threads come back in the paths' order, as
    /// one thread hashes them; a file that cannot be read is an error at
    /// its own place.
    #[test]
    fn files_hash_in_order_on_any_number_of_threads() {
        let dir = tempfile::tempdir().unwrap();
        let mut paths = Vec::new();
        let mut sizes = Vec::new();
        for (i, n) in [3usize, 70_000, 0, 1, 200_000, 5].into_iter().enumerate() {
            let p = dir.path().join(format!("f{i}"));
            std::fs::write(&p, vec![i as u8 + 1; n]).unwrap();
            paths.push(p);
            sizes.push(n as u64);
        }
        paths.push(dir.path().join("gone"));
        sizes.push(10);
        let want: Vec<String> = paths[..6]
            .iter()
            .map(|p| hex::encode(Sha256::digest(std::fs::read(p).unwrap())))
            .collect();
        for threads in [1, 2, 3, 16] {
            let got = sha256_files(&paths, &sizes, threads);
            assert_eq!(got.len(), 7);
            for (g, w) in got.iter().zip(&want) {
                assert_eq!(g.as_ref().unwrap(), w, "{threads} threads");
            }
            let e = got[6].as_ref().unwrap_err().to_string();
            assert!(e.contains("gone"), "{e}");
        }
        assert!(sha256_files(&[], &[], 2).is_empty());
    }

    fn manifest() -> Manifest {
        Manifest {
            format: 0,
            id: "m1".into(),
            kind: "baseline".into(),
            created: now_rfc3339(),
            taxonomy: String::new(),
            training_data_hash: "x".into(),
            label_space: LabelSpace {
                n_paths: 2,
                oos_class: false,
            },
            hyper_parameters: serde_json::json!({}),
            validation_metrics: serde_json::json!({}),
            calibration: Calibration::default(),
            thresholds: serde_json::json!({}),
            files: BTreeMap::new(),
            text: TextPipeline::default(),
            build: None,
            taxonomy_version: None,
            taxonomy_sha256: None,
            languages: BTreeMap::new(),
            parent: None,
        }
    }

    /// A parent recorded before `overlap` existed still reads; the
    /// nearest old tag is the most frequent answer, the first by name
    /// among equals.
    #[test]
    fn parent_overlap_reads_old_manifests_and_names_the_nearest_tag() {
        let p: Parent = serde_json::from_str(
            r#"{"id": "p", "manifest_sha256": "x", "added": ["a/n"], "examples": {"a/n": 5}}"#,
        )
        .unwrap();
        assert!(p.overlap.is_empty());
        assert!(!serde_json::to_string(&p).unwrap().contains("overlap"));
        let o = |pairs: &[(&str, usize)]| TagOverlap {
            parent_answers: pairs.iter().map(|&(t, n)| (t.to_string(), n)).collect(),
            memory_taken: BTreeMap::new(),
        };
        assert_eq!(o(&[]).nearest(), None);
        assert_eq!(
            o(&[("a/x", 1), ("b/y", 3), ("c/z", 1)]).nearest(),
            Some(("b/y", 3))
        );
        assert_eq!(o(&[("b/y", 2), ("a/x", 2)]).nearest(), Some(("a/x", 2)));
    }

    #[test]
    fn write_verify_and_reject_corruption() {
        let tax = Taxonomy::from_yaml_str("nodes: [{id: a}, {id: b}]").unwrap();
        let root = tempfile::tempdir().unwrap();
        let dest = root.path().join("m");
        let w = BundleWriter::new(&dest).unwrap();
        std::fs::write(w.dir().join("weights.bin"), b"0123456789").unwrap();
        w.finish(manifest(), &tax, false).unwrap();
        let b = Bundle::open(&dest).unwrap();
        assert_eq!(b.manifest.files.len(), 2);
        assert_eq!(b.taxonomy.n_paths(), 2);
        // No temporary directory left behind.
        assert_eq!(std::fs::read_dir(root.path()).unwrap().count(), 1);
        // Immutable unless asked.
        let w = BundleWriter::new(&dest).unwrap();
        assert!(w.finish(manifest(), &tax, false).is_err());
        // Truncated weights.
        std::fs::write(dest.join("weights.bin"), b"01234").unwrap();
        let e = Bundle::open(&dest).unwrap_err().to_string();
        assert!(e.contains("checksum mismatch for 'weights.bin'"), "{e}");
        // Missing file.
        std::fs::remove_file(dest.join("weights.bin")).unwrap();
        let e = Bundle::open(&dest).unwrap_err().to_string();
        assert!(
            e.contains("'weights.bin' listed in the manifest is missing"),
            "{e}"
        );
        // A manifest that still parses but whose thresholds changed.
        std::fs::write(dest.join("weights.bin"), b"0123456789").unwrap();
        Bundle::open(&dest).unwrap();
        let text = std::fs::read_to_string(dest.join(MANIFEST)).unwrap();
        let edited = text.replace("\"thresholds\": {}", "\"thresholds\": {\"oos\": 0.5}");
        assert_ne!(edited, text);
        std::fs::write(dest.join(MANIFEST), &edited).unwrap();
        let e = Bundle::open(&dest).unwrap_err().to_string();
        assert!(e.contains("checksum mismatch for 'manifest.json'"), "{e}");
        // Deleting the digest does not turn the check off.
        std::fs::remove_file(dest.join(MANIFEST_DIGEST)).unwrap();
        let e = Bundle::open(&dest).unwrap_err().to_string();
        assert!(e.contains("manifest.sha256 is missing"), "{e}");
        // Nor does declaring the bundle format 1 (written before digests
        // existed): such a bundle loads only once an operator seals it.
        let legacy = text.replace("\"format\": 2", "\"format\": 1");
        assert_ne!(legacy, text);
        std::fs::write(dest.join(MANIFEST), &legacy).unwrap();
        let e = Bundle::open(&dest).unwrap_err().to_string();
        assert!(
            e.contains("format 1 has no manifest.sha256") && e.contains("models seal"),
            "{e}"
        );
        // Sealing verifies the files first.
        std::fs::write(dest.join("weights.bin"), b"tampered!!").unwrap();
        let e = Bundle::seal(&dest).unwrap_err().to_string();
        assert!(e.contains("checksum mismatch for 'weights.bin'"), "{e}");
        std::fs::write(dest.join("weights.bin"), b"0123456789").unwrap();
        let sealed = Bundle::seal(&dest).unwrap();
        assert_eq!(sealed.manifest.format, FORMAT_VERSION);
        Bundle::open(&dest).unwrap();
        let e = Bundle::seal(&dest).unwrap_err().to_string();
        assert!(e.contains("already sealed"), "{e}");
        // Corrupt manifest.
        std::fs::write(dest.join(MANIFEST), b"{not json").unwrap();
        let e = Bundle::open(&dest).unwrap_err().to_string();
        assert!(e.contains("manifest.json is corrupt"), "{e}");
    }

    /// A written bundle and the text of its manifest.
    fn written(root: &Path) -> (PathBuf, String) {
        let tax = Taxonomy::from_yaml_str("nodes: [{id: a}, {id: b}]").unwrap();
        let dest = root.join("m");
        let w = BundleWriter::new(&dest).unwrap();
        std::fs::write(w.dir().join("weights.bin"), b"0123456789").unwrap();
        w.finish(manifest(), &tax, false).unwrap();
        let text = std::fs::read_to_string(dest.join(MANIFEST)).unwrap();
        (dest, text)
    }

    /// Rewrite the manifest and its digest, as a tool that knows the format would.
    fn reseal(dest: &Path, text: &str) {
        std::fs::write(dest.join(MANIFEST), text).unwrap();
        let digest = hex::encode(Sha256::digest(text.as_bytes()));
        std::fs::write(dest.join(MANIFEST_DIGEST), format!("{digest}\n")).unwrap();
    }

    #[test]
    fn bundles_record_their_taxonomy_version_and_digest() {
        let root = tempfile::tempdir().unwrap();
        let tax = Taxonomy::from_yaml_str("version: 3\nnodes: [{id: a}, {id: b}]").unwrap();
        let dest = root.path().join("m");
        BundleWriter::new(&dest)
            .unwrap()
            .finish(manifest(), &tax, false)
            .unwrap();
        let b = Bundle::open(&dest).unwrap();
        assert_eq!(b.manifest.taxonomy_version, Some(3));
        let sha = b.manifest.taxonomy_sha256.as_deref().unwrap();
        assert_eq!(sha, b.manifest.files[TAXONOMY]);
        assert_eq!(sha, sha256_file(&dest.join(TAXONOMY)).unwrap());
    }

    #[test]
    fn unlisted_files_are_refused() {
        let root = tempfile::tempdir().unwrap();
        let (dest, text) = written(root.path());
        // A file the manifest does not cover, e.g. a detector dropped in.
        std::fs::write(dest.join("oos_detector.bin"), b"anything").unwrap();
        let e = Bundle::open(&dest).unwrap_err().to_string();
        assert!(e.contains("'oos_detector.bin' is not listed"), "{e}");
        std::fs::remove_file(dest.join("oos_detector.bin")).unwrap();
        // A file dropped from the manifest's list (digest recomputed).
        let mut m: Manifest = serde_json::from_str(&text).unwrap();
        m.files.remove("weights.bin");
        reseal(&dest, &serde_json::to_string_pretty(&m).unwrap());
        let e = Bundle::open(&dest).unwrap_err().to_string();
        assert!(e.contains("'weights.bin' is not listed"), "{e}");
        // A listed name that points outside the bundle.
        let mut m: Manifest = serde_json::from_str(&text).unwrap();
        m.files.insert("../weights.bin".into(), "00".into());
        reseal(&dest, &serde_json::to_string_pretty(&m).unwrap());
        let e = Bundle::open(&dest).unwrap_err().to_string();
        assert!(e.contains("not a file name inside the bundle"), "{e}");
        // Back as written: loads.
        reseal(&dest, &text);
        Bundle::open(&dest).unwrap();
        // A newer format than this build knows is refused.
        reseal(&dest, &text.replace("\"format\": 2", "\"format\": 3"));
        let e = Bundle::open(&dest).unwrap_err().to_string();
        assert!(e.contains("bundle format 3 is not supported"), "{e}");
    }

    #[test]
    fn registry_names_stay_under_the_root() {
        for ok in ["tagger", "tagger/v2", "t-1.0_x/V9"] {
            check_registry_name(ok).unwrap();
        }
        for bad in [
            "..",
            "../x",
            "tagger/..",
            "/etc",
            "/abs/path",
            "a/b/c",
            "",
            "tagger/",
            ".hidden",
            "a\\b",
            "x/.v1",
        ] {
            assert!(check_registry_name(bad).is_err(), "{bad}");
        }
        let root = tempfile::tempdir().unwrap();
        let reg = root.path().join("reg");
        let (bundle, _) = written(root.path());
        // Bundle directories given as paths still resolve, wherever they are.
        assert_eq!(
            resolve_spec(&reg, bundle.to_str().unwrap()).unwrap(),
            bundle
        );
        // A name that climbs out of the root does not.
        std::fs::create_dir_all(reg.join("tagger")).unwrap();
        for spec in ["../no-such-bundle", "/no/such/bundle"] {
            let e = resolve_spec(&reg, spec).unwrap_err().to_string();
            assert!(e.contains("not a registry name"), "{e}");
        }
        // Nor does a champion naming a path.
        std::fs::write(reg.join("tagger").join("champion"), "../../m\n").unwrap();
        let e = resolve_spec(&reg, "tagger").unwrap_err().to_string();
        assert!(e.contains("is not a version name"), "{e}");
        std::fs::write(reg.join("tagger").join("champion"), "/tmp\n").unwrap();
        assert!(resolve_spec(&reg, "tagger").is_err());
        // A champion naming a version resolves to it.
        std::fs::write(reg.join("tagger").join("champion"), "v2\n").unwrap();
        assert_eq!(
            resolve_spec(&reg, "tagger").unwrap(),
            reg.join("tagger").join("v2")
        );
    }

    #[test]
    fn rfc3339_shape() {
        let s = now_rfc3339();
        assert_eq!(s.len(), 20);
        assert!(s.starts_with("20") && s.ends_with('Z'));
    }
}

//! Many input files for one job: a directory or a glob, each file tagged
//! into its own output, split deterministically between shards (`casetag
//! tag --shard I --shards N`, or the Python package's Ray file jobs).

use std::path::{Path, PathBuf};

use casetag_data::{printable, Format};

use crate::job::JobError;

type Result<T> = std::result::Result<T, JobError>;

/// Whether `name` matches `pattern`, where `*` stands for any run of
/// characters and `?` for one.
pub fn wildcard_match(pattern: &str, name: &str) -> bool {
    let (p, n): (Vec<char>, Vec<char>) = (pattern.chars().collect(), name.chars().collect());
    // Iterative matcher with one backtrack point (the last `*`).
    let (mut i, mut j, mut star, mut mark) = (0, 0, None, 0);
    while j < n.len() {
        if i < p.len() && (p[i] == '?' || p[i] == n[j]) {
            i += 1;
            j += 1;
        } else if i < p.len() && p[i] == '*' {
            star = Some(i);
            mark = j;
            i += 1;
        } else if let Some(s) = star {
            i = s + 1;
            mark += 1;
            j = mark;
        } else {
            return false;
        }
    }
    p[i..].iter().all(|&c| c == '*')
}

fn is_table(p: &Path) -> bool {
    p.is_file() && Format::from_path(p).is_ok()
}

/// The input files of `spec`, sorted by path: `None` for a single file;
/// for a directory, every table in it (`.csv`, `.parquet`, `.pq`,
/// `.jsonl`, `.ndjson`; not recursive; hidden files skipped); for a path
/// whose last part has `*` or `?`, the tables whose names match it.
pub fn list_inputs(spec: &Path) -> Result<Option<Vec<PathBuf>>> {
    let name = spec
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let (dir, pattern) = if name.contains(['*', '?']) {
        let dir = match spec.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
            _ => PathBuf::from("."),
        };
        (dir, Some(name))
    } else if spec.is_dir() {
        (spec.to_path_buf(), None)
    } else {
        return Ok(None);
    };
    let entries = std::fs::read_dir(&dir).map_err(|e| {
        JobError::Input(format!(
            "--input {}: {e}",
            printable(&spec.display().to_string())
        ))
    })?;
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            let n = p
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            !n.starts_with('.')
                && pattern.as_deref().is_none_or(|pat| wildcard_match(pat, &n))
                && is_table(p)
        })
        .collect();
    files.sort();
    if files.is_empty() {
        return Err(JobError::Input(format!(
            "--input {}: no .csv, .parquet, .jsonl or .ndjson files there",
            printable(&spec.display().to_string())
        )));
    }
    Ok(Some(files))
}

/// The files (or input/output pairs) shard `shard` of `shards` tags: every
/// `shards`-th entry of the sorted list, starting at `shard`. The same list always splits the same
/// way, so a re-run of one index redoes exactly its own files.
pub fn assign<T: Clone>(files: &[T], shard: usize, shards: usize) -> Vec<T> {
    files
        .iter()
        .skip(shard)
        .step_by(shards.max(1))
        .cloned()
        .collect()
}

/// Where each input's output goes: `out_dir/STEM.EXT`, with the input's
/// format unless `format` is given. Refuses two inputs that would share an
/// output name.
pub fn outputs(inputs: &[PathBuf], out_dir: &Path, format: Option<Format>) -> Result<Vec<PathBuf>> {
    let mut seen = std::collections::BTreeMap::new();
    let mut out = Vec::with_capacity(inputs.len());
    for i in inputs {
        let f = match format {
            Some(f) => f,
            None => Format::from_path(i)?,
        };
        let stem = i
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        let o = out_dir.join(format!("{stem}.{}", f.extension()));
        if let Some(prev) = seen.insert(o.clone(), i.clone()) {
            return Err(JobError::Input(format!(
                "--input: {} and {} would both be written to {}; use --output-format or rename one",
                printable(&prev.display().to_string()),
                printable(&i.display().to_string()),
                printable(&o.display().to_string())
            )));
        }
        out.push(o);
    }
    Ok(out)
}

/// The (input, output) pairs of a job: `input` a single table (then
/// `output` is its output file), or a directory or glob whose tables are
/// each written to `output` (a directory, created) as `STEM.EXT`; only
/// shard `shard` of `shards` of them.
pub fn plan(
    input: &Path,
    output: &Path,
    format: Option<Format>,
    shard: usize,
    shards: usize,
) -> Result<Vec<(PathBuf, PathBuf)>> {
    if shards == 0 || shard >= shards {
        return Err(JobError::Input(format!(
            "--shard {shard} --shards {shards}: the shard index must be below the number of shards (0..{})",
            shards.saturating_sub(1)
        )));
    }
    let Some(files) = list_inputs(input)? else {
        if shards > 1 || format.is_some() {
            return Err(JobError::Input(
                "--shards and --output-format need a directory or glob --input".into(),
            ));
        }
        Format::from_path(output)?;
        return Ok(vec![(input.to_path_buf(), output.to_path_buf())]);
    };
    if output.is_file() {
        return Err(JobError::Input(format!(
            "--output {}: with a directory or glob --input the output is a directory, and this is a file",
            output.display()
        )));
    }
    let outs = outputs(&files, output, format)?;
    let pairs: Vec<(PathBuf, PathBuf)> = files.into_iter().zip(outs).collect();
    std::fs::create_dir_all(output)
        .map_err(|e| JobError::Input(format!("--output {}: {e}", output.display())))?;
    Ok(assign(&pairs, shard, shards))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcards() {
        assert!(wildcard_match("*.parquet", "part-0001.parquet"));
        assert!(wildcard_match("part-*.pq", "part-7.pq"));
        assert!(wildcard_match("a?c*", "abcdef"));
        assert!(wildcard_match("*", ""));
        assert!(!wildcard_match("*.parquet", "x.csv"));
        assert!(!wildcard_match("a?c", "ac"));
        assert!(wildcard_match("*a*b", "xxaxxb"));
        assert!(!wildcard_match("*a*b", "xxaxxbc"));
    }

    #[test]
    fn shards_cover_every_file_once() {
        let files: Vec<PathBuf> = (0..10).map(|i| PathBuf::from(format!("f{i}"))).collect();
        for n in 1..13 {
            let mut all: Vec<PathBuf> = (0..n).flat_map(|s| assign(&files, s, n)).collect();
            all.sort();
            assert_eq!(all, files, "{n} shards");
            let sizes: Vec<usize> = (0..n).map(|s| assign(&files, s, n).len()).collect();
            assert!(sizes.iter().max().unwrap() - sizes.iter().min().unwrap() <= 1);
        }
    }

    #[test]
    fn listing_sorts_filters_and_names_outputs() {
        let tmp = tempfile::tempdir().unwrap();
        for n in ["b.csv", "a.parquet", "c.jsonl", "notes.txt", ".hidden.csv"] {
            std::fs::write(tmp.path().join(n), "text\nx\n").unwrap();
        }
        let all = list_inputs(tmp.path()).unwrap().unwrap();
        let names: Vec<_> = all
            .iter()
            .map(|p| p.file_name().unwrap().to_owned())
            .collect();
        assert_eq!(names, ["a.parquet", "b.csv", "c.jsonl"]);
        let glob = list_inputs(&tmp.path().join("*.csv")).unwrap().unwrap();
        assert_eq!(glob.len(), 1);
        assert!(list_inputs(&tmp.path().join("b.csv")).unwrap().is_none());
        let e = list_inputs(&tmp.path().join("*.pq"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("no .csv"), "{e}");
        let outs = outputs(&all, Path::new("o"), None).unwrap();
        assert_eq!(outs[0], Path::new("o/a.parquet"));
        let outs = outputs(&all, Path::new("o"), Some(Format::Csv)).unwrap();
        assert_eq!(outs[2], Path::new("o/c.csv"));
        std::fs::write(tmp.path().join("a.csv"), "text\nx\n").unwrap();
        let all = list_inputs(tmp.path()).unwrap().unwrap();
        let e = outputs(&all, Path::new("o"), Some(Format::Csv))
            .unwrap_err()
            .to_string();
        assert!(e.contains("both be written"), "{e}");
    }
}

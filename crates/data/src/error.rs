//! The crate's error type. Every message is one line that names the file and,
//! where known, the row and column at fault.

use std::path::Path;

/// Errors of the data layer.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// A file that cannot be opened or read (missing, unreadable).
    #[error("{path}: {msg}")]
    Read { path: String, msg: String },
    /// A file whose content cannot be parsed (malformed CSV/JSON/Parquet).
    #[error("{path}: cannot parse {what}: {msg}")]
    Parse {
        path: String,
        what: &'static str,
        msg: String,
    },
    /// A required column is missing or has the wrong type.
    #[error("{path}: column '{column}': {msg}")]
    Column {
        path: String,
        column: String,
        msg: String,
    },
    /// A value in one row is invalid.
    #[error("{path}: row {row}: {msg}")]
    Row {
        path: String,
        row: usize,
        msg: String,
    },
    /// Labels that do not fit the taxonomy (the message lists offending rows).
    #[error("{path}: {msg}")]
    Labels { path: String, msg: String },
    /// A bad taxonomy file, or one that cannot be inferred from the labels.
    #[error("{0}")]
    Taxonomy(String),
    /// Bad usage: unknown extension, bad split ratios, bad option values.
    #[error("{0}")]
    Usage(String),
    /// Writing output failed.
    #[error("{path}: cannot write: {msg}")]
    Write { path: String, msg: String },
    /// An output path that cannot be written at all (its folder cannot be
    /// created, a directory stands in its place): the user's to fix.
    #[error("{path}: cannot write: {msg}")]
    Output { path: String, msg: String },
    /// A failure that is not the input's fault.
    #[error("internal error: {0}")]
    Internal(String),
}

impl DataError {
    /// True for bad input or usage (CLI exit code 2), false for internal
    /// failures (exit code 1).
    pub fn is_input(&self) -> bool {
        !matches!(self, DataError::Write { .. } | DataError::Internal(_))
    }

    pub(crate) fn read(path: &Path, e: impl std::fmt::Display) -> Self {
        DataError::Read {
            path: path.display().to_string(),
            msg: one_line(&e.to_string()),
        }
    }

    pub(crate) fn parse(path: &Path, what: &'static str, e: impl std::fmt::Display) -> Self {
        DataError::Parse {
            path: path.display().to_string(),
            what,
            msg: tidy_polars(&e.to_string()),
        }
    }

    pub(crate) fn column(path: &Path, column: &str, msg: impl Into<String>) -> Self {
        DataError::Column {
            path: path.display().to_string(),
            column: column.to_string(),
            msg: one_line(&msg.into()),
        }
    }

    pub(crate) fn row(path: &Path, row: usize, msg: impl Into<String>) -> Self {
        DataError::Row {
            path: path.display().to_string(),
            row,
            msg: one_line(&msg.into()),
        }
    }

    pub(crate) fn write(path: &Path, e: impl std::fmt::Display) -> Self {
        DataError::Write {
            path: path.display().to_string(),
            msg: one_line(&e.to_string()),
        }
    }

    pub(crate) fn internal(e: impl std::fmt::Display) -> Self {
        DataError::Internal(one_line(&e.to_string()))
    }
}

pub type Result<T> = std::result::Result<T, DataError>;

pub use casetag_core::printable;

/// Collapse a (possibly multi-line) library message into one line.
pub(crate) fn one_line(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for part in s
        .split(['\n', '\r'])
        .map(str::trim)
        .filter(|p| !p.is_empty())
    {
        if !out.is_empty() {
            out.push_str("; ");
        }
        out.push_str(&printable(part));
    }
    out
}

/// polars parse errors carry multi-line hints meant for Python users and
/// quote whole runs of the file; keep the first line and the original error,
/// with quoted snippets of the file elided.
pub(crate) fn tidy_polars(s: &str) -> String {
    let original = s
        .split_once("Original error: ```")
        .and_then(|(_, r)| r.split_once("```"))
        .map(|(o, _)| elide_snippets(&one_line(o)));
    // Quoted snippets may span lines, so cut at the hint markers, not at lines.
    let head = s
        .split("You might want to try")
        .next()
        .and_then(|h| h.split("The current offset").next())
        .unwrap_or(s);
    let head = elide_snippets(one_line(head).trim_end_matches([';', ' ', '.']));
    match original {
        Some(o) if !head.is_empty() => format!("{head}: {o}"),
        Some(o) => o,
        None => elide_snippets(&one_line(s)),
    }
}

/// Elide every backtick-quoted snippet: polars quotes the file's content
/// there, which may be case text (names, addresses, order numbers). Type
/// names (`str`, `i64`, ...) are kept; other snippets become their length.
fn elide_snippets(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for (i, part) in s.split('`').enumerate() {
        if i > 0 {
            out.push('`');
        }
        if i % 2 == 1 && !is_type_name(part) {
            out.push_str(&format!("<{} chars>", part.chars().count()));
        } else {
            out.push_str(part);
        }
    }
    out
}

/// polars dtype names as they appear in its messages.
fn is_type_name(s: &str) -> bool {
    const NAMES: &[&str] = &[
        "str", "String", "bool", "Boolean", "null", "Null", "binary", "date", "datetime", "time",
        "duration", "cat", "list", "struct", "object",
    ];
    let base = s.split(['[', '(']).next().unwrap_or(s);
    NAMES.contains(&base)
        || (base.len() <= 4
            && matches!(base.as_bytes().first(), Some(b'i' | b'u' | b'f'))
            && base[1..].bytes().all(|b| b.is_ascii_digit())
            && base.len() > 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_one_line() {
        let e = DataError::parse(Path::new("a.csv"), "CSV", "line one\n\n  line two\r\n");
        assert_eq!(e.to_string(), "a.csv: cannot parse CSV: line one; line two");
        assert!(e.is_input());
        assert!(!DataError::internal("x").is_input());
    }

    #[test]
    fn polars_hints_are_trimmed() {
        let raw = "could not parse `aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa` as dtype `str`\n\n\
                   You might want to try:\n- increasing `infer_schema_length`\n\n\
                   Original error: ```invalid csv file\n\nField `x` is not properly escaped.```";
        assert_eq!(
            tidy_polars(raw),
            "could not parse `<51 chars>` as dtype `str`: \
             invalid csv file; Field `<1 chars>` is not properly escaped."
        );
    }

    #[test]
    fn control_characters_are_escaped() {
        assert_eq!(printable("plain, ok"), "plain, ok");
        assert_eq!(
            printable("a\u{1b}[31mred\nb\0c\u{202E}d"),
            "a\\u{1b}[31mred\\u{a}b\\u{0}c\\u{202e}d"
        );
    }
}

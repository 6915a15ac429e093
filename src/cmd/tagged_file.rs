//! Reading a file `casetag tag` wrote (any format), for the commands that
//! work on tagged cases (`monitor`, `review`): its columns by their output
//! names, read from `pred_X` where `tag` had to rename them (the input had a
//! column `X`), and which rows carry an answer (no `error`).

use std::path::{Path, PathBuf};

use casetag_data::{printable, read_table};
use polars::prelude::{Column, DataFrame, DataType};

use crate::Failure;

pub struct TaggedFile {
    pub path: PathBuf,
    pub df: DataFrame,
    names: Vec<String>,
}

impl TaggedFile {
    pub fn read(path: &Path) -> Result<Self, Failure> {
        let df = read_table(path)?;
        let names = df
            .get_column_names()
            .iter()
            .map(|n| n.to_string())
            .collect();
        Ok(Self {
            path: path.to_path_buf(),
            df,
            names,
        })
    }

    pub fn rows(&self) -> usize {
        self.df.height()
    }

    /// A column the file has under its own name (an input column).
    pub fn input(&self, name: &str, flag: &str) -> Result<&Column, Failure> {
        self.df.column(name).map_err(|_| {
            Failure::input(format!(
                "{}: {flag}column '{}': missing (found: {})",
                self.path.display(),
                printable(name),
                printable(&self.names.join(", "))
            ))
        })
    }

    /// An output column of `tag` (`pred_NAME` where it was renamed).
    pub fn output(&self, name: &str) -> Result<&Column, Failure> {
        let pred = format!("pred_{name}");
        let has = |n: &str| self.names.iter().any(|c| c == n);
        let col = if has(&pred) { pred.as_str() } else { name };
        self.df.column(col).map_err(|_| {
            Failure::input(format!(
                "{}: column '{name}': missing; is this a file written by `casetag tag`? (found: {})",
                self.path.display(),
                printable(&self.names.join(", "))
            ))
        })
    }

    /// Whether the file has output column `name`.
    pub fn has_output(&self, name: &str) -> bool {
        self.output(name).is_ok()
    }

    /// Per row, whether `tag` answered it (rows it could not tag carry an
    /// `error` and no answer).
    pub fn answered(&self) -> Result<Vec<bool>, Failure> {
        Ok(match self.output("error") {
            Ok(c) => self.strings(c)?.iter().map(Option::is_none).collect(),
            Err(_) => vec![true; self.rows()],
        })
    }

    pub fn strings(&self, c: &Column) -> Result<Vec<Option<String>>, Failure> {
        let c = self.cast(c, &DataType::String)?;
        Ok(c.str()
            .map_err(Failure::internal)?
            .iter()
            .map(|v| v.map(str::to_string))
            .collect())
    }

    pub fn floats(&self, c: &Column) -> Result<Vec<Option<f64>>, Failure> {
        let c = self.cast(c, &DataType::Float64)?;
        Ok(c.f64().map_err(Failure::internal)?.iter().collect())
    }

    pub fn ints(&self, c: &Column) -> Result<Vec<Option<i64>>, Failure> {
        let c = self.cast(c, &DataType::Int64)?;
        Ok(c.i64().map_err(Failure::internal)?.iter().collect())
    }

    /// Booleans, also from CSV, which has no boolean type (`true`/`false`
    /// read as text).
    pub fn bools(&self, c: &Column) -> Result<Vec<Option<bool>>, Failure> {
        Ok(self
            .strings(c)?
            .into_iter()
            .map(|v| match v.as_deref() {
                Some("true") => Some(true),
                Some("false") => Some(false),
                _ => None,
            })
            .collect())
    }

    fn cast(&self, c: &Column, to: &DataType) -> Result<Column, Failure> {
        c.cast(to).map_err(|e| {
            Failure::input(format!(
                "{}: column '{}': cannot read as {to}: {e}",
                self.path.display(),
                printable(c.name())
            ))
        })
    }
}

/// The rows of `v` whose `keep` is set.
pub fn filter<T>(v: Vec<T>, keep: &[bool]) -> Vec<T> {
    v.into_iter()
        .zip(keep)
        .filter_map(|(x, k)| k.then_some(x))
        .collect()
}

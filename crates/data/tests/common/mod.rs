//! Helpers shared by the data crate's test files.

use polars::prelude::{DataFrame, DataType};

/// A column's values as text (`None` where missing).
pub fn strs(df: &DataFrame, name: &str) -> Vec<Option<String>> {
    df.column(name)
        .unwrap_or_else(|_| panic!("column {name} missing"))
        .cast(&DataType::String)
        .unwrap()
        .str()
        .unwrap()
        .iter()
        .map(|v| v.map(str::to_string))
        .collect()
}

//! Progress on a terminal, silence otherwise.

use std::io::IsTerminal;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// True when progress should be drawn (stderr is a terminal).
pub fn interactive() -> bool {
    std::io::stderr().is_terminal()
}

/// Items per second as a whole number with thousands separators.
fn rate(per_sec: f64) -> String {
    let n = per_sec.max(0.0).round() as u64;
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    format!("{out}/s")
}

/// A bar with rate and ETA for `total` items (a spinner when unknown).
pub fn bar(total: Option<u64>, what: &str) -> ProgressBar {
    let template = match total {
        Some(_) => {
            "{prefix} [{elapsed_precise}] {wide_bar} {human_pos}/{human_len} ({rate}, ETA {eta})"
        }
        None => "{prefix} [{elapsed_precise}] {spinner} {human_pos} ({rate})",
    };
    let style = ProgressStyle::with_template(template)
        .expect("template")
        .with_key(
            "rate",
            |s: &indicatif::ProgressState, w: &mut dyn std::fmt::Write| {
                let _ = w.write_str(&rate(s.per_sec()));
            },
        );
    let pb = match total {
        Some(n) => ProgressBar::new(n),
        None => ProgressBar::new_spinner(),
    }
    .with_style(style);
    pb.set_prefix(what.to_string());
    if !interactive() {
        pb.set_draw_target(ProgressDrawTarget::hidden());
    }
    pb
}

/// A bar over the `total` bytes of an input whose row count is unknown
/// until it is read (CSV, JSONL): bytes done, rows so far (the message),
/// throughput and ETA.
pub fn bytes_bar(total: u64, what: &str) -> ProgressBar {
    let style = ProgressStyle::with_template(
        "{prefix} [{elapsed_precise}] {wide_bar} {binary_bytes}/{binary_total_bytes} ({msg}, {binary_bytes_per_sec}, ETA {eta})",
    )
    .expect("template");
    let pb = ProgressBar::new(total).with_style(style);
    pb.set_prefix(what.to_string());
    if !interactive() {
        pb.set_draw_target(ProgressDrawTarget::hidden());
    }
    pb
}

/// A progress message: printed on a terminal, logged at info otherwise.
pub fn note(msg: &str) {
    if interactive() {
        eprintln!("{msg}");
    } else {
        tracing::info!("{msg}");
    }
}

/// A warning on stderr, one line, control characters escaped.
pub fn warn(msg: &str) {
    eprintln!(
        "warning: {}",
        casetag_data::printable(&msg.replace(['\n', '\r'], " "))
    );
}

#[cfg(test)]
mod tests {
    #[test]
    fn rates_are_whole_numbers_with_separators() {
        assert_eq!(super::rate(11_532.843_5), "11,533/s");
        assert_eq!(super::rate(999.4), "999/s");
        assert_eq!(super::rate(1_234_567.0), "1,234,567/s");
        assert_eq!(super::rate(0.2), "0/s");
    }
}

//! Progress on a terminal, silence otherwise.

use std::io::IsTerminal;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// True when progress should be drawn (stderr is a terminal).
pub fn interactive() -> bool {
    std::io::stderr().is_terminal()
}

/// A bar with rate and ETA for `total` items (a spinner when unknown).
pub fn bar(total: Option<u64>, what: &str) -> ProgressBar {
    let pb = match total {
        Some(n) => ProgressBar::new(n).with_style(
            ProgressStyle::with_template(
                "{prefix} [{elapsed_precise}] {wide_bar} {pos}/{len} ({per_sec}, ETA {eta})",
            )
            .expect("template"),
        ),
        None => ProgressBar::new_spinner().with_style(
            ProgressStyle::with_template(
                "{prefix} [{elapsed_precise}] {spinner} {pos} ({per_sec})",
            )
            .expect("template"),
        ),
    };
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

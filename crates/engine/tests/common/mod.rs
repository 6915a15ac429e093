//! What the engine's integration tests share.

/// Endings that make one template into several distinct training texts.
pub const FILLERS: [&str; 8] = [
    "",
    " please",
    " hello",
    " thanks",
    " order 12",
    " now",
    " today",
    " help",
];

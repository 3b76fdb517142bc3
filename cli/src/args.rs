//! Argument parsers shared by several commands.

use std::time::Duration;

/// A duration like `90s` or `30m`.
pub fn humantime_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s)
        .map_err(|e| format!("`{s}` is not a duration like 90s or 30m: {e}"))
}

/// `TIER=MODEL`.
pub fn parse_pair(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(a, b)| (a.trim().to_owned(), b.trim().to_owned()))
        .ok_or_else(|| format!("`{s}`: expected TIER=MODEL"))
}

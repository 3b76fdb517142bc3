//! Argument parsers shared by several commands.

use std::time::Duration;

/// A duration like `90s` or `30m`.
pub fn humantime_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s)
        .map_err(|e| format!("`{s}` is not a duration like 90s or 30m: {e}"))
}

//! Wall-clock helpers shared by every layer.

use std::time::{SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch (0 if the clock is before 1970).
pub fn now_millis() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// A moment in milliseconds since the epoch as ISO 8601 in UTC, to the second
/// (`2026-12-06T10:52:02Z`), for what operators read.
pub fn iso8601(millis: u64) -> String {
    let format = time::macros::format_description!("[year]-[month]-[day]T[hour]:[minute]:[second]Z");
    i64::try_from(millis / 1000)
        .ok()
        .and_then(|secs| time::OffsetDateTime::from_unix_timestamp(secs).ok())
        .and_then(|t| t.format(&format).ok())
        .unwrap_or_else(|| format!("{millis} ms after 1970"))
}

#[cfg(test)]
mod tests {
    #[test]
    fn iso8601_is_utc_to_the_second() {
        assert_eq!(super::iso8601(0), "1970-01-01T00:00:00Z");
        assert_eq!(super::iso8601(1_796_554_322_999), "2026-12-06T10:52:02Z");
    }
}

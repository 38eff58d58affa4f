//! How deeply a JSON text nests, measured without parsing it.
//!
//! serde_json, and everything built on it (ruma's push-rule evaluator among them, which
//! unwraps its own parse), refuses documents nested deeper than 128 levels. A request body
//! at 127 levels parses, but once stored and wrapped (an event's content in a PDU, account
//! data in a sync response) it no longer does, and every later read of it fails: one
//! client could break a room's or another user's sync. Bodies deeper than [`SAFE_DEPTH`] are
//! therefore refused at the door, and readers of stored JSON check before handing it on.

/// Nesting every parser in Hearth reads back safely: serde_json (and so ruma) stops at
/// 128 levels, and a stored document gains a level or two when it is wrapped into an
/// event or a sync response.
pub const SAFE_DEPTH: usize = 100;

/// Nesting a reader of stored JSON may hand to serde_json with room to spare.
pub const READ_DEPTH: usize = 120;

/// Whether JSON text nests objects and arrays deeper than `limit`: a scan of the bytes,
/// brackets inside strings (and escaped quotes) skipped.
pub fn nested_deeper_than(json: &str, limit: usize) -> bool {
    let (mut depth, mut in_string, mut escaped) = (0usize, false, false);
    for b in json.bytes() {
        if in_string {
            match b {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'{' | b'[' => {
                depth += 1;
                if depth > limit {
                    return true;
                }
            }
            b'}' | b']' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::{nested_deeper_than, SAFE_DEPTH};

    #[test]
    fn nesting_is_measured_outside_strings() {
        assert!(!nested_deeper_than(r#"{"a":[{"b":"{{{[[["}]}"#, 3));
        assert!(nested_deeper_than(r#"{"a":[{"b":{}}]}"#, 3));
        assert!(!nested_deeper_than(r#"{"a":"\"{{{{"}"#, 1));
        let deep = format!("{}{}", "[".repeat(130), "]".repeat(130));
        assert!(nested_deeper_than(&deep, SAFE_DEPTH));
        assert!(serde_json::from_str::<serde_json::Value>(&deep).is_err(), "serde_json's limit moved");
    }
}

//! The controller's one reading of the wall clock, so every layer stamps events, reports' `seq`
//! checks and stage starts from the same source.

use std::time::{SystemTime, UNIX_EPOCH};

/// Milliseconds since the epoch; 0 if the clock is before it.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

//! The log of refused requests, bounded in rate. Every refusal is counted in
//! `inputbot_webhook_rejected_total`; the log gets the first refusal of each reason per source
//! and then at most one line per [`INTERVAL`], saying how many it left out — a flood of forged
//! or malformed requests cannot fill the disk with log lines or slow intake down writing them.
//! The others are logged at `debug`.

use std::{
    collections::HashMap,
    sync::Mutex,
    time::{Duration, Instant},
};

/// At most one `info` line per source and reason in this time.
pub const INTERVAL: Duration = Duration::from_secs(10);

/// Per reason: when a line was last written, and how many refusals were left out since.
#[derive(Debug, Default)]
pub struct RejectionLog {
    reasons: Mutex<HashMap<&'static str, (Instant, u64)>>,
}

impl RejectionLog {
    /// Whether this refusal gets an `info` line, and if so how many were left out before it.
    pub fn admit(&self, reason: &'static str, now: Instant) -> Option<u64> {
        // A poisoned lock only means a panic elsewhere while holding it: the map is still valid.
        let mut reasons = self.reasons.lock().unwrap_or_else(|e| e.into_inner());
        match reasons.get_mut(reason) {
            None => {
                reasons.insert(reason, (now, 0));
                Some(0)
            }
            Some((last, left_out)) if now.duration_since(*last) >= INTERVAL => {
                let n = *left_out;
                *last = now;
                *left_out = 0;
                Some(n)
            }
            Some((_, left_out)) => {
                *left_out += 1;
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_reason_per_interval_and_the_count_of_those_left_out() {
        let log = RejectionLog::default();
        let t0 = Instant::now();
        assert_eq!(log.admit("bad_signature", t0), Some(0));
        for i in 1..=1000 {
            assert_eq!(
                log.admit("bad_signature", t0 + Duration::from_millis(i)),
                None
            );
        }
        // Another reason has its own allowance.
        assert_eq!(
            log.admit("payload_too_large", t0 + Duration::from_secs(1)),
            Some(0)
        );
        assert_eq!(log.admit("bad_signature", t0 + INTERVAL), Some(1000));
        assert_eq!(
            log.admit("bad_signature", t0 + INTERVAL + Duration::from_secs(1)),
            None
        );
    }
}

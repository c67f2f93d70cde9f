//! Fields from peers that did not parse, counted for the log.
//!
//! A node's actors drop a message whose [`Wire`](cloister_ractor::Wire)
//! fields do not decode. Anyone holding the cookie can send thousands a
//! second, so the log says so once, then at most once per
//! [`REPORT_EVERY`] with a count, as cloister does for heartbeats that do
//! not parse.

use std::time::Instant;

use cloister_core::tally::{Tally, REPORT_EVERY};
use cloister_ractor::WireError;

/// Dropped messages of one actor, counted.
pub struct Garbled {
    /// What the actor is, for the log line.
    actor: &'static str,
    tally: Tally,
    epoch: Instant,
}

impl Garbled {
    /// No drops yet, for the actor named `actor` in the log.
    pub fn new(actor: &'static str) -> Garbled {
        Garbled {
            actor,
            tally: Tally::new(),
            epoch: Instant::now(),
        }
    }

    /// Counts one dropped message, and logs the count when it is due.
    pub fn note(&mut self, error: &WireError) {
        if let Some(count) = self.tally.note(self.epoch.elapsed()) {
            tracing::warn!(
                %error, count,
                "the {} dropped {count} message(s) from peers whose fields do not parse; \
                 counted, logged at most every {REPORT_EVERY:?}: check that every node runs \
                 the same version",
                self.actor
            );
        }
    }
}

//! The rules of the timer fields: which must be above zero, the most any may
//! be, and how they must relate to each other.
//!
//! The maxima are there so that no configured duration can overflow the
//! clock arithmetic of the state machine (`now + heartbeat_timeout`) or of
//! the runtime (`Instant::now() + startup_deadline`, which panics past about
//! 292 billion years on Linux): every value that validates is far from any
//! overflow, so the arithmetic needs no checks of its own.

use std::time::Duration;

use super::{duration, invalid, Config, ConfigError};

impl Config {
    /// The longest any timer may be: one day (`"1day"`), for `discovery_tick`,
    /// the dial backoffs, `dial_timeout`, `session_grace`, `drain_timeout`,
    /// `tls_reload_interval` and the heartbeat fields. A timer that long already means "practically never".
    pub const MAX_TIMER: Duration = Duration::from_secs(24 * 60 * 60);

    /// The longest `startup_deadline` may be: one year (`"1y"`, 365.25 days,
    /// as humantime counts it), for a node that should wait practically
    /// forever for its consensus.
    pub const MAX_STARTUP_DEADLINE: Duration = Duration::from_secs(31_557_600);

    /// The timer rules of [`Config::validate`], first broken one first.
    pub(super) fn check_timers(&self) -> Result<(), ConfigError> {
        let positive = [
            ("discovery_tick", self.discovery_tick),
            ("dial_backoff_min", self.dial_backoff_min),
            ("dial_timeout", self.dial_timeout),
            ("heartbeat_interval", self.heartbeat_interval),
            ("startup_deadline", self.startup_deadline),
        ];
        if let Some((field, _)) = positive.iter().find(|(_, value)| value.is_zero()) {
            return Err(invalid(field, "0s", "must be longer than zero"));
        }
        let bounded = [
            ("discovery_tick", self.discovery_tick, Config::MAX_TIMER),
            ("dial_backoff_min", self.dial_backoff_min, Config::MAX_TIMER),
            ("dial_backoff_max", self.dial_backoff_max, Config::MAX_TIMER),
            ("dial_timeout", self.dial_timeout, Config::MAX_TIMER),
            ("session_grace", self.session_grace, Config::MAX_TIMER),
            (
                "heartbeat_interval",
                self.heartbeat_interval,
                Config::MAX_TIMER,
            ),
            (
                "heartbeat_timeout",
                self.heartbeat_timeout,
                Config::MAX_TIMER,
            ),
            ("stable_after", self.stable_after, Config::MAX_TIMER),
            ("drain_timeout", self.drain_timeout, Config::MAX_TIMER),
            (
                "tls_reload_interval",
                self.tls_reload_interval,
                Config::MAX_TIMER,
            ),
            (
                "startup_deadline",
                self.startup_deadline,
                Config::MAX_STARTUP_DEADLINE,
            ),
        ];
        if let Some((field, value, most)) = bounded.iter().find(|(_, value, most)| value > most) {
            let why = format!("must be at most {}", duration(*most));
            return Err(invalid(field, duration(*value), why));
        }
        let (min, max) = (self.dial_backoff_min, self.dial_backoff_max);
        if max < min {
            let why = format!("must be at least `dial_backoff_min` ({})", duration(min));
            return Err(invalid("dial_backoff_max", duration(max), why));
        }
        let jitter = self.dial_backoff_jitter;
        if !(0.0..=1.0).contains(&jitter) {
            let why = "must be from 0.0 to 1.0";
            return Err(invalid("dial_backoff_jitter", jitter.to_string(), why));
        }
        let (interval, timeout) = (self.heartbeat_interval, self.heartbeat_timeout);
        if timeout <= interval {
            let interval = duration(interval);
            let why = format!("must be longer than `heartbeat_interval` ({interval})");
            return Err(invalid("heartbeat_timeout", duration(timeout), why));
        }
        // It only counts with a quorum: see `membership::reachability`.
        if self.quorum != super::Quorum::Off && self.stable_after <= timeout {
            let why = format!(
                "must be longer than `heartbeat_timeout` ({})",
                duration(timeout)
            );
            return Err(invalid("stable_after", duration(self.stable_after), why));
        }
        if self.session_grace >= timeout {
            let why = format!(
                "must be shorter than `heartbeat_timeout` ({})",
                duration(timeout)
            );
            return Err(invalid("session_grace", duration(self.session_grace), why));
        }
        Ok(())
    }
}

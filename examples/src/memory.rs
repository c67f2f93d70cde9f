//! Free memory given back to the system, for a node that runs for months
//! with a few MiB of live data (issue 11: at most 10 MiB resident per node
//! at 100 nodes).
//!
//! What one node of 100 held, measured with `malloc_stats` (BENCHMARKS.md,
//! "Memory of a node"): 4.2 MB in use, 8.6 MB taken from the system. The
//! difference is what the cluster's formation freed: the ring alone (1 MB
//! at 100 members of 256 virtual nodes) is rebuilt many times while a
//! cluster forms, and glibc gives back only the top of each arena, keeping
//! the rest resident. [`Trim`] gives back every free page (`malloc_trim`)
//! [`Trim::AFTER`] after the ring changes (once for a burst of changes),
//! so what a formation, or a burst of joins, left behind is returned.
//!
//! Fixing glibc's mmap threshold (`M_MMAP_THRESHOLD`), so that every ring
//! is its own mapping, given back on free, kept another 0.4 MiB off a
//! node, but every rebuild then faults in and zeroes a fresh megabyte:
//! formation at 100 nodes took a few hundred milliseconds longer. Not done.
//!
//! Elsewhere (another libc, another global allocator) a trim does nothing.
//! An application with its own binary can call it the same way.

// The workspace denies unsafe code; this call into libc needs it.
#![allow(unsafe_code)]

use std::time::Duration;

/// When to give free memory back: [`Trim::AFTER`] after a change of the
/// ring, once for all the changes meanwhile.
#[derive(Debug, Default)]
pub struct Trim {
    pending: bool,
}

impl Trim {
    /// How long after a change of the ring: a forming cluster changes it
    /// many times a second, and is formed well within this.
    pub const AFTER: Duration = Duration::from_secs(5);

    /// The ring changed: whether to schedule a trim in [`Trim::AFTER`]
    /// (none is scheduled yet).
    pub fn changed(&mut self) -> bool {
        !std::mem::replace(&mut self.pending, true)
    }

    /// The scheduled trim is due: gives free memory back.
    pub fn run(&mut self) {
        self.pending = false;
        #[cfg(all(target_os = "linux", target_env = "gnu"))]
        // SAFETY: malloc_trim is thread-safe (it locks each arena in turn).
        unsafe {
            libc::malloc_trim(0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_of_changes_schedules_one_trim_and_the_next_change_another() {
        let mut trim = Trim::default();
        assert!(trim.changed(), "the first change schedules a trim");
        assert!(!trim.changed(), "changes before it runs schedule no other");
        trim.run();
        assert!(trim.changed(), "a change after it ran schedules the next");
    }
}

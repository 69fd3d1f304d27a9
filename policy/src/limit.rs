//! Token buckets as one number: the generic cell rate algorithm. A bucket of `burst` tokens refilled one
//! token per `interval` is the same as a theoretical arrival time `tat`: a packet at `now` conforms when
//! `tat <= now + (burst - 1) * interval`, and then `tat` moves to `max(tat, now) + interval`. A fresh
//! bucket (`tat` 0) is full, as the kernel's `limit` match and its ICMP rate limits start.
//!
//! One number means one atomic word where buckets are shared between workers, and the reference evaluator
//! and the dataplane decide with the same function.

/// A bucket's shape: one token per `interval` nanoseconds, at most `burst` at once.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Rate {
    pub interval: u64,
    pub burst: u64,
}

impl Rate {
    /// The bucket's next state if a packet at `now` conforms, `None` if it does not.
    #[inline]
    pub fn admit(self, tat: u64, now: u64) -> Option<u64> {
        let tolerance = self.interval.saturating_mul(self.burst.max(1) - 1);
        if tat <= now.saturating_add(tolerance) {
            Some(tat.max(now).saturating_add(self.interval))
        } else {
            None
        }
    }

    /// Whether a packet at `now` would conform, leaving the bucket as it is.
    #[inline]
    pub fn would_admit(self, tat: u64, now: u64) -> bool {
        self.admit(tat, now).is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_burst_then_the_rate() {
        let r = Rate { interval: 500, burst: 3 };
        let mut tat = 0;
        let mut admitted = 0;
        for _ in 0..10 {
            if let Some(t) = r.admit(tat, 0) {
                tat = t;
                admitted += 1;
            }
        }
        assert_eq!(admitted, 3);
        assert!(r.admit(tat, 499).is_none());
        tat = r.admit(tat, 500).expect("one token after one interval");
        assert!(r.admit(tat, 500).is_none());
        // Long idle: full again, never more.
        let admitted = (0..10).scan(tat, |t, _| Some(r.admit(*t, 1_000_000).inspect(|n| *t = *n))).flatten().count();
        assert_eq!(admitted, 3);
    }
}

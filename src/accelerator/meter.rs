//! The meter: a token bucket in accelerator-seconds that paces an accelerator's ops at its tier's
//! rate.
//!
//! An op's cost is its exact FLOP count divided by the tier's rate for its precision, in
//! seconds. The bucket refills at one accelerator-second per second and holds at most `burst`
//! seconds. A new bucket starts *empty* at a given instant — now, or later when its owner still
//! owes debt from an accelerator it detached (see [`super::Device`]) — so attaching afresh never
//! buys a free burst and detaching never forgives debt. An op of cost `c` starts once the
//! bucket holds `min(c, burst)` seconds and is then charged `c` — so an op larger than the
//! burst waits for a full bucket and leaves it in debt, which the following ops wait out (no op
//! ever waits forever).
//!
//! Bound (the documented burst): over any window of `W` seconds, the ops started in it cost at
//! most `W + max(burst, largest op cost)` accelerator-seconds; a client that keeps the meter busy
//! gets exactly `W` (its tier's rate). Because tokens are seconds, not FLOPs, a resize changes
//! the rate without touching the balance.
//!
//! Waiting sleeps the calling thread (it never spins), and sleeping too long costs nothing: the
//! bucket keeps refilling while the thread oversleeps, up to `burst`.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::sync::lock;

/// The default burst: 20 ms of accelerator time (2% of a one-second window).
pub const DEFAULT_BURST: Duration = Duration::from_millis(20);

/// Paces ops by cost; shared by every thread using one accelerator.
#[derive(Debug)]
pub struct Meter {
    epoch: Instant,
    burst: f64,
    /// Seconds since `epoch` at which the balance was (or will be) zero: the balance at time
    /// `t` is `min(burst, t - empty_at)`.
    empty_at: Mutex<f64>,
}

impl Meter {
    /// A meter with the given burst whose bucket is empty at `empty_at` (if that is later than
    /// now, the meter starts in debt until then) and refills from there.
    pub fn new(burst: Duration, empty_at: Instant) -> Meter {
        let epoch = Instant::now();
        Meter {
            epoch,
            burst: burst.as_secs_f64(),
            empty_at: Mutex::new(empty_at.saturating_duration_since(epoch).as_secs_f64()),
        }
    }

    /// The instant at which the bucket is (or was, or will be once its debt is waited out)
    /// empty; never earlier than the meter's creation.
    pub fn empty_at(&self) -> Instant {
        self.epoch + Duration::from_secs_f64(lock(&self.empty_at).max(0.0))
    }

    /// The burst in seconds.
    pub fn burst(&self) -> Duration {
        Duration::from_secs_f64(self.burst)
    }

    /// Charges an op of `cost` accelerator-seconds and returns when it may start; the caller
    /// waits until then (see [`Meter::wait`]).
    pub fn reserve(&self, cost: f64) -> Instant {
        let now = self.epoch.elapsed().as_secs_f64();
        let start = self.reserve_at(cost, now);
        self.epoch + Duration::from_secs_f64(start.max(0.0))
    }

    /// Charges an op of `cost` and sleeps until it may start; returns the time slept (as
    /// measured, oversleep included).
    pub fn wait(&self, cost: f64) -> Duration {
        let start = self.reserve(cost);
        let now = Instant::now();
        if start > now {
            std::thread::sleep(start - now);
            now.elapsed()
        } else {
            Duration::ZERO
        }
    }

    /// Whether an op of `cost` would have to wait if it were charged now (nothing is charged).
    pub fn would_wait(&self, cost: f64) -> bool {
        let now = self.epoch.elapsed().as_secs_f64();
        self.step(*lock(&self.empty_at), cost, now).0 > now
    }

    /// Charges an op of `cost` if it may start now, and says whether it did: where it would
    /// have to wait, nothing is charged.
    pub fn try_charge(&self, cost: f64) -> bool {
        let now = self.epoch.elapsed().as_secs_f64();
        let mut empty_at = lock(&self.empty_at);
        let (start, after) = self.step(*empty_at, cost, now);
        if start > now {
            return false;
        }
        *empty_at = after;
        true
    }

    /// The balance now in accelerator-seconds (negative: debt still to wait out).
    pub fn balance(&self) -> f64 {
        let now = self.epoch.elapsed().as_secs_f64();
        let empty_at = *lock(&self.empty_at);
        (now - empty_at).min(self.burst)
    }

    /// Charges an op of `cost` at time `now` (seconds since the epoch): returns its start time.
    fn reserve_at(&self, cost: f64, now: f64) -> f64 {
        let mut empty_at = lock(&self.empty_at);
        let (start, after) = self.step(*empty_at, cost, now);
        *empty_at = after;
        start
    }

    /// The pure bucket step: an op of `cost` asked for at `now`, the bucket empty at
    /// `empty_at`, starts at the first return value; the bucket is then empty at the second.
    fn step(&self, empty_at: f64, cost: f64, now: f64) -> (f64, f64) {
        let start = now.max(empty_at + cost.min(self.burst));
        (start, empty_at.max(start - self.burst) + cost)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A meter whose bucket is full at t = 0 (the pure steps below start from there).
    fn meter(burst: f64) -> Meter {
        let m = Meter::new(Duration::from_secs_f64(burst), Instant::now());
        *lock(&m.empty_at) = -burst;
        m
    }

    #[test]
    fn a_new_meter_starts_empty_or_in_debt() {
        let m = Meter::new(Duration::from_millis(20), Instant::now());
        assert!(m.balance().abs() < 0.005, "{}", m.balance());
        let owed = Meter::new(
            Duration::from_millis(20),
            Instant::now() + Duration::from_secs(2),
        );
        assert!((owed.balance() + 2.0).abs() < 0.01, "{}", owed.balance());
        // The first op waits for min(cost, burst) of refill: no free burst on attach.
        assert!((m.reserve_at(0.005, 0.0) - 0.005).abs() < 1e-3);
    }

    #[test]
    fn would_wait_and_try_charge_never_wait() {
        // A full bucket of 100 s: ops up to it start at once, until it is spent.
        let m = meter(100.0);
        assert!(!m.would_wait(60.0));
        assert!(
            !m.would_wait(1000.0),
            "an op over the burst needs a full bucket only"
        );
        assert!(m.balance() > 99.0, "asking charged {}", 100.0 - m.balance());
        m.reserve(60.0);
        assert!(!m.would_wait(30.0));
        assert!(m.would_wait(50.0));
        m.reserve(40.0);
        assert!(m.would_wait(1.0));
        // try_charge: refused and nothing charged where it would wait, else charged.
        assert!(!m.try_charge(1.0));
        assert!(m.balance() > -0.5, "a refused charge cost {}", -m.balance());
        let m = meter(100.0);
        assert!(m.try_charge(60.0) && m.try_charge(30.0));
        assert!(!m.try_charge(50.0));
        assert!((m.balance() - 10.0).abs() < 0.5, "{}", m.balance());
    }

    #[test]
    fn full_bucket_runs_a_burst_then_paces_at_the_rate() {
        let m = meter(0.02);
        // 0.005 s ops requested back to back at t = 0: four fit in the burst.
        let starts: Vec<f64> = (0..8).map(|_| m.reserve_at(0.005, 0.0)).collect();
        for s in &starts[..4] {
            assert!(s.abs() < 1e-12, "{starts:?}");
        }
        for (i, s) in starts[4..].iter().enumerate() {
            assert!((s - 0.005 * (i + 1) as f64).abs() < 1e-12, "{starts:?}");
        }
    }

    #[test]
    fn saturating_client_gets_exactly_the_rate() {
        // A client whose ops take no time: over 10 s it starts ops worth 10 s + the burst.
        let (m, cost) = (meter(0.02), 0.003);
        let mut now = 0.0;
        let mut charged = 0.0;
        while now < 10.0 {
            now = m.reserve_at(cost, now);
            if now < 10.0 {
                charged += cost;
            }
        }
        assert!((charged - 10.02).abs() <= cost, "{charged}");
    }

    #[test]
    fn ops_larger_than_the_burst_go_into_debt() {
        let m = meter(0.02);
        assert_eq!(m.reserve_at(0.5, 0.0), 0.0); // a full bucket admits it at once
        assert_eq!(m.reserve_at(0.001, 0.0), 0.5 - 0.02 + 0.001); // waits out the debt
                                                                  // The next big op waits for a full bucket again: one every 0.5 s on average.
        let s = m.reserve_at(0.5, 0.0);
        assert!((s - (0.481 + 0.02)).abs() < 1e-12, "{s}");
    }

    #[test]
    fn any_window_is_bounded_by_its_length_plus_the_burst() {
        // Ops of mixed sizes from an idle start, with idle gaps: check every window.
        let (m, burst) = (meter(0.02), 0.02f64);
        let costs = [0.001, 0.03, 0.002, 0.0005, 0.05, 0.004, 0.001, 0.02, 0.007];
        let mut now = 0.0;
        let mut ops = Vec::new();
        for i in 0..2000 {
            let cost = costs[i % costs.len()];
            let start = m.reserve_at(cost, now);
            ops.push((start, cost));
            now = start + if i % 97 == 0 { 0.3 } else { 0.0001 };
        }
        let largest = costs.iter().cloned().fold(0.0, f64::max);
        for (i, &(t0, _)) in ops.iter().enumerate().step_by(7) {
            for w in [0.01, 0.1, 1.0] {
                let charged: f64 = ops[i..]
                    .iter()
                    .take_while(|(s, _)| *s < t0 + w)
                    .map(|(_, c)| c)
                    .sum();
                assert!(
                    charged <= w + burst.max(largest) + 1e-9,
                    "{t0} {w} {charged}"
                );
            }
        }
    }

    #[test]
    fn idle_time_refills_only_up_to_the_burst() {
        let m = meter(0.02);
        m.reserve_at(0.02, 0.0);
        // After 100 s idle the bucket holds 0.02 s, not 100 s.
        assert_eq!(m.reserve_at(0.02, 100.0), 100.0);
        assert_eq!(m.reserve_at(0.01, 100.0), 100.01);
    }

    #[test]
    fn wait_sleeps_instead_of_spinning() {
        let m = meter(0.0);
        let cpu = cpu_time();
        let t = Instant::now();
        let slept: Duration = (0..5).map(|_| m.wait(0.02)).sum();
        let wall = t.elapsed();
        assert!(wall >= Duration::from_millis(80), "{wall:?}");
        assert!(slept >= Duration::from_millis(75), "{slept:?}");
        // A spinning wait would burn ~100 ms of CPU; sleeping burns almost none.
        if let (Some(before), Some(after)) = (cpu, cpu_time()) {
            assert!(
                after - before < Duration::from_millis(30),
                "{:?}",
                after - before
            );
        }
    }

    /// This thread's CPU time (Linux), if available.
    fn cpu_time() -> Option<Duration> {
        let stat = std::fs::read_to_string("/proc/thread-self/stat").ok()?;
        let fields: Vec<&str> = stat.rsplit(')').next()?.split_whitespace().collect();
        let ticks: u64 =
            fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
        Some(Duration::from_millis(ticks * 10))
    }
}

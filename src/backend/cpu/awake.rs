//! Keeps the pool's other threads awake while a sequence of ops runs ([`CpuBackend::run_ops`]).
//!
//! A rayon thread that finds no work yields a few dozen times, then sleeps on a futex; the next
//! op's parallel work must wake it (a system call, and on a virtual machine a halted vCPU to
//! start again). Between the small ops of a model that happens at nearly every op. So for the
//! length of the sequence every other thread of the pool runs a *looker*: it takes work as
//! rayon would ([`rayon::yield_now`]) and otherwise spins, without sleeping.
//!
//! A looker stops when the sequence ends, and also after [`IDLE_LIMIT`] without finding work:
//! rayon may start it on a thread that is in the middle of a job of the sequence itself (waiting
//! inside that job for stolen work), and the sequence cannot end until that job returns, so the
//! looker must give its thread back by itself. It also bounds the spinning when an op leaves a
//! thread idle for long (one large GEMM split unevenly).
//!
//! [`CpuBackend::run_ops`]: super::CpuBackend

use std::cell::Cell;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rayon::Yield;

/// How long a looker spins without finding work before it returns its thread to rayon.
const IDLE_LIMIT: Duration = Duration::from_micros(500);

/// Runs `f` (on a thread of the current pool) with every other thread of the pool looking for
/// work until `f` returns or unwinds.
pub(super) fn with_lookers<R>(f: impl FnOnce() -> R) -> R {
    let _lookers = Lookers::start(IDLE_LIMIT);
    f()
}

thread_local! {
    /// Whether this thread is running a sequence that started lookers.
    static IN_SEQUENCE: Cell<bool> = const { Cell::new(false) };
}

/// The lookers of one sequence, started on every other thread of the current pool (none off a
/// pool thread, on a pool of one, or inside a sequence this thread already runs: a model's
/// profile runs each step's own sequence inside the program's); dropping it ends them.
struct Lookers(Option<Arc<AtomicBool>>);

impl Lookers {
    /// Each looker gives up after `idle_limit` without work.
    fn start(idle_limit: Duration) -> Lookers {
        let Some(me) = rayon::current_thread_index() else {
            return Lookers(None);
        };
        if rayon::current_num_threads() < 2 || IN_SEQUENCE.get() {
            return Lookers(None);
        }
        IN_SEQUENCE.set(true);
        let done = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&done);
        rayon::spawn_broadcast(move |ctx| {
            if ctx.index() != me {
                look(&flag, idle_limit);
            }
        });
        Lookers(Some(done))
    }
}

impl Drop for Lookers {
    fn drop(&mut self) {
        if let Some(done) = &self.0 {
            done.store(true, Ordering::Release);
            IN_SEQUENCE.set(false);
        }
    }
}

/// Takes work until `done`, or until `idle_limit` passes without any. Returns how many jobs it
/// ran.
fn look(done: &AtomicBool, idle_limit: Duration) -> usize {
    let mut ran = 0;
    let mut idle_since: Option<Instant> = None;
    while !done.load(Ordering::Acquire) {
        match rayon::yield_now() {
            Some(Yield::Executed) => {
                ran += 1;
                idle_since = None;
            }
            _ => {
                let now = Instant::now();
                if now.duration_since(*idle_since.get_or_insert(now)) >= idle_limit {
                    break;
                }
                std::hint::spin_loop();
            }
        }
    }
    ran
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;
    use std::sync::{mpsc, Weak};

    use super::*;

    /// An hour: long enough that only the end of the sequence stops a looker.
    const HOUR: Duration = Duration::from_secs(3600);

    fn pool(threads: usize) -> Arc<rayon::ThreadPool> {
        let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build();
        Arc::new(pool.unwrap())
    }

    /// Runs `f` on a pool thread and waits for it at most a minute: a looker that never gave
    /// its thread back fails the test instead of hanging it.
    fn bounded<R: Send + 'static>(
        pool: Arc<rayon::ThreadPool>,
        f: impl FnOnce() -> R + Send + 'static,
    ) -> R {
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || tx.send(pool.install(f)).unwrap());
        rx.recv_timeout(Duration::from_secs(60))
            .expect("the pool did not come back")
    }

    /// Whether every looker holding `flag` has returned within a minute.
    fn lookers_returned(flag: &Weak<AtomicBool>) -> bool {
        let start = Instant::now();
        while flag.strong_count() > 0 {
            if start.elapsed() > Duration::from_secs(60) {
                return false;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        true
    }

    #[test]
    fn a_looker_gives_its_thread_back_when_no_work_comes() {
        // The flag is never set, as for a looker started inside a job its sequence waits on.
        let ran = bounded(pool(2), || {
            look(&AtomicBool::new(false), Duration::from_millis(20))
        });
        assert_eq!(ran, 0);
    }

    #[test]
    fn a_looker_runs_pending_work_until_done() {
        let (count, ran) = bounded(pool(1), || {
            let count = Arc::new(AtomicUsize::new(0));
            let done = Arc::new(AtomicBool::new(false));
            for _ in 0..10 {
                let (count, done) = (Arc::clone(&count), Arc::clone(&done));
                rayon::spawn(move || {
                    if count.fetch_add(1, Ordering::Relaxed) == 9 {
                        done.store(true, Ordering::Release);
                    }
                });
            }
            let ran = look(&done, HOUR);
            (count.load(Ordering::Relaxed), ran)
        });
        assert_eq!((count, ran), (10, 10));
    }

    #[test]
    fn dropping_the_lookers_ends_them() {
        // Nothing else runs on the pool, so the other thread's looker cannot be started inside a
        // job of the sequence: only the end of the sequence can stop it within the hour.
        let flag = bounded(pool(2), || {
            let lookers = Lookers::start(HOUR);
            Arc::downgrade(lookers.0.as_ref().unwrap())
        });
        assert!(lookers_returned(&flag), "a dropped looker kept running");
    }

    #[test]
    fn sequences_return_their_values_and_end_their_lookers() {
        // Parallel work inside the sequence: a thread may steal one of its jobs before it takes
        // its looker, then start the looker while waiting inside that job, which the sequence
        // waits on. That looker ends by its idle limit (an hour here would hang the pool), so
        // this limit is short; the test above holds that dropping ends the others.
        let runs = bounded(pool(3), || {
            use rayon::prelude::*;
            (0..200u64)
                .map(|n| {
                    let lookers = Lookers::start(Duration::from_millis(50));
                    let flag = Arc::downgrade(lookers.0.as_ref().unwrap());
                    ((0..=n).into_par_iter().sum::<u64>(), flag)
                })
                .collect::<Vec<_>>()
        });
        for (n, (sum, flag)) in (0u64..).zip(&runs) {
            assert_eq!(*sum, n * (n + 1) / 2);
            assert!(lookers_returned(flag), "sequence {n} left a looker running");
        }
    }

    #[test]
    fn a_sequence_inside_a_sequence_starts_no_second_lookers() {
        let (inner, after) = bounded(pool(2), || {
            let inner = with_lookers(|| Lookers::start(HOUR).0.is_none());
            (inner, Lookers::start(Duration::ZERO).0.is_some())
        });
        assert!(inner, "the inner sequence started lookers of its own");
        assert!(after, "a sequence after the outer one ended started none");
    }

    #[test]
    fn off_the_pool_or_alone_there_are_no_lookers() {
        assert!(Lookers::start(HOUR).0.is_none());
        assert!(bounded(pool(1), || Lookers::start(HOUR).0.is_none()));
        assert_eq!(bounded(pool(2), || with_lookers(|| 7)), 7);
    }
}

//! The device's fair queue: when accelerators contend for one device, each gets a share in
//! proportion to its tier's rate, not one op each in turn.
//!
//! Start-time fair queueing with the meter's cost as the virtual length: an op of cost `c`
//! accelerator-seconds (its FLOPs over the tier's rate) gets the start tag
//! `S = max(V, F_prev)`, where `F_prev` is the finish tag of its accelerator's previous op and
//! `V` the tag of the op last given the device; its finish tag is `S + c`. The device runs one
//! op at a time, the waiting op with the smallest tag first. Because cost is FLOPs divided by
//! the tier's rate, two saturating accelerators receive FLOPs in the ratio of their rates
//! whatever their op sizes, while an idle one falls back to `V` and cannot bank credit.
//!
//! A device that falls idle between two ops of a backlogged client (a network round trip) is
//! held for that client for at most [`GRACE`] if it is behind in virtual time, so closed-loop
//! clients — one op in flight each, as a remote program is — share by rate too.
//!
//! A thread of the CPU backend's pool (an op issued inside [`crate::Backend::run_ops`]) does
//! not wait here: a pool thread that blocked could be the one another op's parallel work waits
//! on. Ops issued that way are run at once and still move the virtual time — or, asking with
//! [`FairQueue::try_turn`] (the server's programs), get a turn only where it is free at once.

use std::collections::HashMap;
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

use crate::sync::{lock, wait, wait_timeout};

/// How long the device is held for an accelerator that just finished an op and is behind in
/// virtual time: a client's next op arrives a round trip after its last one ended, and without
/// this grace every such gap would hand the device to whoever else waits — one op each in
/// turn, whatever the tiers. A client that does not come back within it loses nothing but
/// this wait.
pub const GRACE: Duration = Duration::from_millis(2);

/// Orders ops of different accelerators on one device (see the module doc).
#[derive(Default)]
pub struct FairQueue {
    state: Mutex<State>,
    turn_ended: Condvar,
}

#[derive(Default)]
struct State {
    /// The start tag of the op given the device last.
    virtual_time: f64,
    /// Each accelerator's last finish tag, and when its last turn ended.
    flows: HashMap<u64, Flow>,
    /// Ops waiting for the device: (start tag, arrival number, accelerator).
    waiting: Vec<(f64, u64, u64)>,
    arrivals: u64,
    running: bool,
}

#[derive(Clone, Copy, Default)]
struct Flow {
    finish: f64,
    ended: Option<Instant>,
}

/// The device, held by one op until dropped.
pub struct Turn<'a> {
    queue: Option<(&'a FairQueue, u64)>,
}

impl FairQueue {
    /// Waits until an op of `cost` accelerator-seconds from `accelerator` may use the device.
    pub fn turn(&self, accelerator: u64, cost: f64) -> Turn<'_> {
        let mut s = lock(&self.state);
        let virtual_time = s.virtual_time;
        let flow = s.flows.entry(accelerator).or_default();
        let start = flow.finish.max(virtual_time);
        flow.finish = start + cost.max(0.0);
        if rayon::current_thread_index().is_some() {
            s.virtual_time = s.virtual_time.max(start);
            return Turn { queue: None };
        }
        let me = (start, s.arrivals, accelerator);
        s.arrivals += 1;
        s.waiting.push(me);
        loop {
            if !s.running && first(&s.waiting) == Some(me) {
                match s.coming_back(me) {
                    None => break,
                    Some(left) => s = wait_timeout(&self.turn_ended, s, left),
                }
            } else {
                s = wait(&self.turn_ended, s);
            }
        }
        s.waiting.retain(|w| *w != me);
        s.running = true;
        s.virtual_time = s.virtual_time.max(start);
        Turn {
            queue: Some((self, accelerator)),
        }
    }

    /// The device for an op of `cost` from `accelerator` if it may have it at once — no op
    /// holds it, none waits for it, and no accelerator ahead in virtual time is within its
    /// [`GRACE`] — as [`FairQueue::turn`] would give it; otherwise `None`, and nothing changes.
    /// It never waits, so a thread of the CPU backend's pool may ask (ops that get `None` wait
    /// for their turn off the pool); a turn it gives holds the device like any other.
    pub fn try_turn(&self, accelerator: u64, cost: f64) -> Option<Turn<'_>> {
        let mut s = lock(&self.state);
        if s.running || !s.waiting.is_empty() {
            return None;
        }
        let flow = s.flows.get(&accelerator).copied().unwrap_or_default();
        let start = flow.finish.max(s.virtual_time);
        if s.coming_back((start, s.arrivals, accelerator)).is_some() {
            return None;
        }
        s.flows.entry(accelerator).or_default().finish = start + cost.max(0.0);
        s.running = true;
        s.virtual_time = s.virtual_time.max(start);
        Some(Turn {
            queue: Some((self, accelerator)),
        })
    }

    /// Forgets a detached accelerator.
    pub fn forget(&self, accelerator: u64) {
        lock(&self.state).flows.remove(&accelerator);
    }
}

impl State {
    /// If an accelerator ahead of `me` in virtual time ended its last op less than [`GRACE`]
    /// ago (and is not waiting already), how much of its grace is left.
    fn coming_back(&self, me: (f64, u64, u64)) -> Option<Duration> {
        let now = Instant::now();
        self.flows
            .iter()
            .filter(|(id, f)| {
                **id != me.2 && f.finish < me.0 && !self.waiting.iter().any(|w| w.2 == **id)
            })
            .filter_map(|(_, f)| GRACE.checked_sub(now.duration_since(f.ended?)))
            .filter(|left| !left.is_zero())
            .max()
    }
}

fn first(waiting: &[(f64, u64, u64)]) -> Option<(f64, u64, u64)> {
    waiting
        .iter()
        .copied()
        .min_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)))
}

impl Drop for Turn<'_> {
    fn drop(&mut self) {
        if let Some((queue, accelerator)) = self.queue {
            let mut s = lock(&queue.state);
            s.running = false;
            if let Some(flow) = s.flows.get_mut(&accelerator) {
                flow.ended = Some(Instant::now());
            }
            drop(s);
            queue.turn_ended.notify_all();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    #[test]
    fn contending_accelerators_share_in_proportion_to_their_rates() {
        // Two saturating accelerators with the same op, one tier 10x the other's rate: the op
        // costs 10x more on the slow tier, so the fast tier should get ~10/11 of the turns.
        let queue = Arc::new(FairQueue::default());
        let counts: Vec<Arc<Mutex<u64>>> = (0..2).map(|_| Arc::default()).collect();
        let until = Instant::now() + Duration::from_millis(400);
        let threads: Vec<_> = [(1u64, 0.010), (2u64, 0.001)]
            .into_iter()
            .zip(counts.iter().cloned())
            .map(|((id, cost), count)| {
                let queue = Arc::clone(&queue);
                std::thread::spawn(move || {
                    while Instant::now() < until {
                        let _turn = queue.turn(id, cost);
                        std::thread::sleep(Duration::from_micros(200));
                        *lock(&count) += 1;
                    }
                })
            })
            .collect();
        threads.into_iter().for_each(|t| t.join().unwrap());
        let (slow, fast) = (*lock(&counts[0]), *lock(&counts[1]));
        let share = fast as f64 / (slow + fast) as f64;
        assert!(
            (share - 10.0 / 11.0).abs() < 0.05,
            "fast {fast}, slow {slow}: share {share:.3}, expected 0.909"
        );
    }

    #[test]
    fn try_turn_gives_only_a_free_device() {
        let queue = FairQueue::default();
        let held = queue.try_turn(1, 1.0).expect("an idle device is free");
        // Held: no second turn, and nothing charged for asking.
        assert!(queue.try_turn(2, 1.0).is_none());
        assert!(!lock(&queue.state).flows.contains_key(&2));
        drop(held);
        // An op waiting for the device comes first.
        lock(&queue.state).waiting.push((0.0, 0, 3));
        assert!(queue.try_turn(2, 1.0).is_none());
        lock(&queue.state).waiting.clear();
        // Accelerator 1 (finish 1.0) ended its turn just now, behind 2 (finish 5.0) in virtual
        // time: 2 may not overtake it within its grace; 1 may go at once.
        lock(&queue.state).flows.entry(2).or_default().finish = 5.0;
        assert!(queue.try_turn(2, 1.0).is_none());
        assert_eq!(lock(&queue.state).flows[&2].finish, 5.0);
        drop(
            queue
                .try_turn(1, 1.0)
                .expect("the flow behind in virtual time"),
        );
        let s = lock(&queue.state);
        assert_eq!((s.flows[&1].finish, s.running), (2.0, false));
    }

    #[test]
    fn an_idle_accelerator_does_not_bank_credit() {
        let queue = FairQueue::default();
        for _ in 0..100 {
            drop(queue.turn(1, 1.0));
        }
        // Accelerator 2 arrives late: it starts at the virtual time, not at 0.
        drop(queue.turn(2, 1.0));
        let s = lock(&queue.state);
        assert_eq!(s.flows[&2].finish, 100.0);
    }
}

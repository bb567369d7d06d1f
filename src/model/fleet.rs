//! A model session on a [`Fleet`] that survives its host: [`FleetSession::run`] runs on an
//! accelerator of the session's tier somewhere in the fleet, and when that host dies, drains or
//! loses the accelerator (lease expired), the session attaches another of the same tier where
//! it fits best and uploads its weights again, by itself.
//!
//! An inference in flight when the host fails returns [`Error::Unavailable`] naming the host
//! (retryable) once; the next one runs elsewhere. A host that announces a drain (its health
//! stream) is left before the next inference, which then does not fail at all. Leaving a host
//! detaches explicitly, waiting at most 2 s: a draining host frees the memory at once; a dead
//! one cannot answer, and its lease frees it.

use std::sync::{Arc, Mutex};

use super::Model;
use crate::error::{Error, Result};
use crate::rpc::{Fleet, RemoteAccelerator, RemoteBuffer};
use crate::sync::lock;
use crate::tensor::{HostTensor, Tensor};

/// A [`Model`]'s weights and buffers on an accelerator of a fleet, moved to another host when
/// its host fails. Runs inferences one at a time.
pub struct FleetSession<'a> {
    model: &'a Model,
    fleet: Arc<Fleet>,
    tier: String,
    placed: Mutex<Option<Placed>>,
    moves: Mutex<usize>,
}

/// Where a session runs now: its tensors (dropped first) and its accelerator.
struct Placed {
    table: Vec<Option<Tensor<RemoteBuffer>>>,
    accel: RemoteAccelerator,
}

impl Model {
    /// A session on an accelerator of the tier called `tier`, attached where it fits best in
    /// `fleet` ([`Fleet::attach`]), with the weights uploaded.
    pub fn fleet_session(&self, fleet: &Arc<Fleet>, tier: &str) -> Result<FleetSession<'_>> {
        let session = FleetSession {
            model: self,
            fleet: Arc::clone(fleet),
            tier: tier.to_string(),
            placed: Mutex::new(None),
            moves: Mutex::new(0),
        };
        *lock(&session.placed) = Some(session.place()?);
        Ok(session)
    }
}

impl FleetSession<'_> {
    /// The URL of the host it runs on now (none between a failure and the next inference).
    pub fn host(&self) -> Option<String> {
        lock(&self.placed)
            .as_ref()
            .map(|p| p.accel.host().to_string())
    }

    /// How many times it moved to another accelerator after its first.
    pub fn moves(&self) -> usize {
        *lock(&self.moves)
    }

    /// One inference, as [`super::Session::run`]. If the session has no accelerator (its host
    /// failed) or its host is draining, it first attaches one elsewhere and uploads the
    /// weights; if the host fails under the inference, the error is [`Error::Unavailable`]
    /// (or, when no host can take the tier now, [`Error::NoHost`]) and the next call moves.
    pub fn run(&self, inputs: &[HostTensor]) -> Result<Vec<HostTensor>> {
        let mut placed = lock(&self.placed);
        if placed
            .as_ref()
            .is_some_and(|p| !self.fleet.serving(p.accel.host()))
        {
            leave(placed.take());
        }
        let p = match &mut *placed {
            Some(p) => p,
            None => {
                let p = self.place()?;
                *lock(&self.moves) += 1;
                placed.insert(p)
            }
        };
        match self.model.run_on(&p.accel, &mut p.table, inputs) {
            Err(e) if gone(&e) => {
                let host = p.accel.host().to_string();
                leave(placed.take());
                Err(match e {
                    Error::Unavailable { .. } => e,
                    e => Error::Unavailable {
                        host,
                        msg: format!("the accelerator is gone (lease expired or drained): {e}"),
                    },
                })
            }
            r => r,
        }
    }

    /// Attaches an accelerator of the tier and uploads the weights to it.
    fn place(&self) -> Result<Placed> {
        let accel = self.fleet.attach(&self.tier)?;
        match self.model.upload(&accel) {
            Ok(table) => Ok(Placed { table, accel }),
            Err(e) => {
                leave(Some(Placed {
                    table: Vec::new(),
                    accel,
                }));
                Err(e)
            }
        }
    }
}

impl Drop for FleetSession<'_> {
    fn drop(&mut self) {
        leave(lock(&self.placed).take());
    }
}

/// Whether `e` means the session's accelerator is no longer usable: its host could not answer,
/// or the server no longer knows it (every tensor of a session is its own, so NOT_FOUND means
/// the accelerator went).
fn gone(e: &Error) -> bool {
    matches!(e, Error::Unavailable { .. })
        || matches!(e, Error::Remote { code, .. } if code == "NotFound")
}

/// Frees a placement: its tensors' handles, then the accelerator, detached within the
/// connection's timeout (a host that cannot answer frees it when its lease runs out).
fn leave(placed: Option<Placed>) {
    if let Some(Placed { table, accel }) = placed {
        drop(table);
        let _ = accel.detach_within(Some(LEAVE_DEADLINE));
    }
}

/// How long leaving a host waits for its detach.
const LEAVE_DEADLINE: std::time::Duration = std::time::Duration::from_secs(2);

//! The backend contract: how a device allocates, moves and computes tensors.
//!
//! A backend implements a few primitives — allocate, upload, download, synchronise — and one
//! [`Backend::launch`] that executes an already validated [`Plan`] from [`crate::ops`]. Every op
//! runs through one provided entry point, [`Backend::apply_into`] (validate the [`Op`] against
//! its inputs, check the given output, launch), or [`Backend::apply`], which allocates the
//! output the plan names; the typed methods (`gemm`, `conv_into`, …) are one-line conveniences
//! over them. Everything that computes — the CPU
//! backend, the CUDA backend, a metered accelerator wrapping either, a remote client — is a
//! `Backend`, so one test suite and one bench suite run against all of them.

pub mod cpu;
pub mod cuda;
#[cfg(feature = "emu")]
pub mod emu;
pub(crate) mod reuse;

pub use cpu::CpuBackend;
pub use cuda::CudaBackend;
#[cfg(feature = "emu")]
pub use emu::EmuBackend;

use std::sync::Arc;

use crate::error::{Error, Result};
use crate::ops::{BatchNorm, Conv, Gemm, Op, Plan, Softmax};
use crate::tensor::{HostTensor, Tensor, TensorDesc};

/// Where a backend charges the memory it holds beyond its tensors' own data: forms derived from
/// a tensor and cached with it (the CPU backend's widened FP16 weights, see
/// [`cpu::CpuData`]). An accelerator charges them to its memory quota; a bare device to nobody.
pub trait MemoryAccount: Send + Sync {
    /// Charges `bytes` and says so, or refuses them (they would not fit), charging nothing.
    fn try_charge(&self, bytes: u64) -> bool;

    /// Gives back `bytes` an earlier [`MemoryAccount::try_charge`] took.
    fn release(&self, bytes: u64);
}

/// A device that stores tensors and computes the op families on them.
pub trait Backend: Send + Sync {
    /// Where this backend keeps one tensor's data.
    type Storage: Send + Sync;

    /// A short human-readable name ("cpu", "cuda:0", …).
    fn name(&self) -> String;

    /// Allocates a tensor; its contents are unspecified until written.
    fn alloc(&self, desc: &TensorDesc) -> Result<Tensor<Self::Storage>>;

    /// Copies a host tensor onto the device.
    fn upload(&self, host: &HostTensor) -> Result<Tensor<Self::Storage>>;

    /// Puts a host tensor the caller gives up onto the device. The default copies it like
    /// [`Backend::upload`]; a backend whose storage is host memory (the CPU backend) moves it
    /// instead, so a tensor assembled from the network is stored without another copy.
    fn upload_owned(&self, host: HostTensor) -> Result<Tensor<Self::Storage>> {
        self.upload(&host)
    }

    /// Copies host data into an existing tensor of the same dtype and shape.
    fn write(&self, t: &mut Tensor<Self::Storage>, host: &HostTensor) -> Result<()>;

    /// Copies a tensor back to the host (waiting for work that writes it).
    fn download(&self, t: &Tensor<Self::Storage>) -> Result<HostTensor>;

    /// Waits until all launched work has finished.
    fn synchronize(&self) -> Result<()> {
        Ok(())
    }

    /// Runs `f`, which issues a sequence of ops, where this backend issues ops cheapest. The
    /// CPU backend runs it on one of its pool's threads, so each op's parallel parts start on
    /// threads that are already awake instead of being handed to the pool from outside (a
    /// hand-over that costs about 18 µs per op on a 2-core VM), and keeps the pool's other
    /// threads looking for work until `f` returns instead of letting them sleep between ops;
    /// the default just calls `f`.
    fn run_ops<R: Send>(&self, f: impl FnOnce() -> R + Send) -> R
    where
        Self: Sized,
    {
        f()
    }

    /// Whether `bytes` more in `tensors` more tensors fit now: an accelerator checks its memory
    /// quota (`Error::MemoryQuota`) and its limit on live tensors; a bare device, nothing. A
    /// model checks its whole footprint before it uploads anything.
    fn check_room(&self, bytes: u64, tensors: usize) -> Result<()> {
        let _ = (bytes, tensors);
        Ok(())
    }

    /// The device's memory in bytes, where the backend knows it (admission control uses it).
    fn total_memory(&self) -> Option<u64> {
        None
    }

    /// A handle on the same device whose work is queued independently of this one's: each
    /// virtual accelerator takes one (the CUDA backend gives it its own stream; a CPU backend
    /// shares its thread pool).
    fn fork(&self) -> Result<Self>
    where
        Self: Sized + Clone,
    {
        Ok(self.clone())
    }

    /// Charges the memory this backend holds beyond its tensors' own data (see
    /// [`MemoryAccount`]) to `account` from now on: what `account` refuses is not cached. Each
    /// virtual accelerator gives its forked backend its quota. The default ignores it: the
    /// backend caches nothing.
    fn charge_derived_to(&mut self, account: Arc<dyn MemoryAccount>) {
        let _ = account;
    }

    /// Drops the forms derived from `storage` and cached with it, giving their memory back (an
    /// accelerator makes room so for data: a cache yields to tensors). The default has none.
    fn drop_derived(&self, storage: &Self::Storage) {
        let _ = storage;
    }

    /// Executes a validated plan: `inputs` are the storages of the operands `plan` was made
    /// from, in the op's order, and `y` has the plan's output descriptor ([`Backend::apply_into`]
    /// guarantees both). The one method a backend implements to compute.
    fn launch(&self, plan: &Plan, inputs: &[&Self::Storage], y: &mut Self::Storage) -> Result<()>;

    /// Runs `op` on `inputs` (in the op's ONNX order) into `y`, which must have the output's
    /// shape and dtype. Every op goes through here: validation (a typed error for every bad
    /// input, and `y` untouched), then [`Backend::launch`].
    fn apply_into(
        &self,
        op: &Op,
        inputs: &[&Tensor<Self::Storage>],
        y: &mut Tensor<Self::Storage>,
    ) -> Result<()> {
        let plan = plan_into(op, inputs, y.desc())?;
        self.launch(&plan, &storages(inputs), y.storage_mut())
    }

    /// Runs `op` on `inputs` into a new output tensor.
    fn apply(&self, op: &Op, inputs: &[&Tensor<Self::Storage>]) -> Result<Tensor<Self::Storage>> {
        let plan = plan(op, inputs)?;
        let mut y = self.alloc(plan.output())?;
        self.launch(&plan, &storages(inputs), y.storage_mut())?;
        Ok(y)
    }

    /// Runs a sequence over a table of tensors: writes `writes` (host data into tensors), runs
    /// each step (its op over table entries into another entry), then returns `reads`
    /// downloaded, in order. Each step's output must not be one of its inputs. By default one
    /// call at a time, the writes inside [`Backend::run_ops`] with the steps: on the CPU they
    /// land in the cache of the thread that runs the first op, not of the caller's core (a
    /// 144 → 24 pointwise convolution at 56×56 alone in a model, `eia infer`, one thread, Intel
    /// Xeon model 167: p50 0.74–0.77 → 0.51–0.52 ms). A remote accelerator sends the whole
    /// sequence in one round trip.
    fn run_steps(
        &self,
        tensors: &mut [Option<Tensor<Self::Storage>>],
        writes: &[(usize, &HostTensor)],
        steps: &[Step],
        reads: &[usize],
    ) -> Result<Vec<HostTensor>>
    where
        Self: Sized,
    {
        self.run_ops(|| -> Result<()> {
            write_entries(self, tensors, writes)?;
            steps
                .iter()
                .try_for_each(|step| run_step(self, tensors, step))
        })?;
        read_entries(self, tensors, reads)
    }

    /// [`Backend::run_steps`] for a model's whole program, whose caller vouches that every table
    /// entry a step writes, other than `reads`, is scratch: nothing reads it after the call (a
    /// model's intermediates), nor the inputs written by `writes` (their storage is free after
    /// their last read). Where the backend lends storage ([`Backend::lends_storage`]: the CPU
    /// backend, an accelerator on it), storage moves between those entries for the call, so
    /// that each output is written into memory a step just read (still in cache), not into
    /// memory last touched a whole inference ago (see `backend::reuse`); every entry has its
    /// own storage back after the call, failed or not. `observe`, if given, is called after the
    /// writes and after each step, on the thread running the steps (a profile times the steps
    /// with it). A remote accelerator sends the program in one round trip, marked scratch
    /// (step by step where observed).
    fn run_program(
        &self,
        tensors: &mut [Option<Tensor<Self::Storage>>],
        writes: &[(usize, &HostTensor)],
        steps: &[Step],
        reads: &[usize],
        observe: Option<&mut (dyn FnMut() -> Result<()> + Send)>,
    ) -> Result<Vec<HostTensor>>
    where
        Self: Sized,
    {
        run_program_here(self, tensors, writes, steps, reads, observe)
    }

    /// For each of a program's steps ([`Backend::run_program`]), whether the backend may leave
    /// its output in a layout of its own, which only the backend's own ops read (the CPU
    /// backend's blocked convolutions, `cpu::blocked`): its reads of it are steps of the
    /// program, and `descs` gives each table entry's descriptor (none for an empty entry). By
    /// default none.
    fn blocked_outputs(
        &self,
        steps: &[Step],
        descs: &[Option<&TensorDesc>],
        reads: &[usize],
    ) -> Vec<bool> {
        let _ = (descs, reads);
        vec![false; steps.len()]
    }

    /// Lets the next op that writes `y` leave it in the backend's own layout (see
    /// [`Backend::blocked_outputs`]). By default nothing.
    fn want_blocked(&self, y: &mut Self::Storage) {
        let _ = y;
    }

    /// Whether [`Backend::set_len`] works, so that [`Backend::run_program`] moves storage
    /// between a program's scratch entries. By default it does not.
    fn lends_storage(&self) -> bool {
        false
    }

    /// Makes `storage`, allocated for `home` elements of its dtype, hold `len ≤ home` of them
    /// (their values unspecified), without allocating: how [`Backend::run_program`] moves a
    /// storage to an entry of another shape. By default unsupported
    /// ([`Backend::lends_storage`] is false).
    fn set_len(&self, storage: &mut Self::Storage, home: usize, len: usize) -> Result<()> {
        let _ = (storage, home, len);
        Err(Error::Backend {
            backend: "set_len",
            msg: format!("{} cannot move storage between tensors", self.name()),
        })
    }

    /// ONNX Gemm: `clip?(relu?(alpha·A'·B' + beta·C))`.
    fn gemm(
        &self,
        op: &Gemm,
        a: &Tensor<Self::Storage>,
        b: &Tensor<Self::Storage>,
        c: Option<&Tensor<Self::Storage>>,
    ) -> Result<Tensor<Self::Storage>> {
        self.apply(&Op::Gemm(*op), &operands(&[a, b], c))
    }

    /// ONNX Gemm written into `y`, which must have the output's shape and dtype.
    fn gemm_into(
        &self,
        op: &Gemm,
        a: &Tensor<Self::Storage>,
        b: &Tensor<Self::Storage>,
        c: Option<&Tensor<Self::Storage>>,
        y: &mut Tensor<Self::Storage>,
    ) -> Result<()> {
        self.apply_into(&Op::Gemm(*op), &operands(&[a, b], c), y)
    }

    /// ONNX MatMul with batch broadcasting.
    fn matmul(
        &self,
        a: &Tensor<Self::Storage>,
        b: &Tensor<Self::Storage>,
    ) -> Result<Tensor<Self::Storage>> {
        self.apply(&Op::MatMul, &[a, b])
    }

    /// ONNX MatMul written into `y`.
    fn matmul_into(
        &self,
        a: &Tensor<Self::Storage>,
        b: &Tensor<Self::Storage>,
        y: &mut Tensor<Self::Storage>,
    ) -> Result<()> {
        self.apply_into(&Op::MatMul, &[a, b], y)
    }

    /// ONNX Conv (2-D, NCHW/OIHW) with optional bias.
    fn conv(
        &self,
        op: &Conv,
        x: &Tensor<Self::Storage>,
        w: &Tensor<Self::Storage>,
        bias: Option<&Tensor<Self::Storage>>,
    ) -> Result<Tensor<Self::Storage>> {
        self.apply(&Op::Conv(op.clone()), &operands(&[x, w], bias))
    }

    /// ONNX Conv written into `y`.
    fn conv_into(
        &self,
        op: &Conv,
        x: &Tensor<Self::Storage>,
        w: &Tensor<Self::Storage>,
        bias: Option<&Tensor<Self::Storage>>,
        y: &mut Tensor<Self::Storage>,
    ) -> Result<()> {
        self.apply_into(&Op::Conv(op.clone()), &operands(&[x, w], bias), y)
    }

    /// ONNX BatchNormalization (inference); `params` are scale, bias, mean, var.
    fn batch_norm(
        &self,
        op: &BatchNorm,
        x: &Tensor<Self::Storage>,
        params: [&Tensor<Self::Storage>; 4],
    ) -> Result<Tensor<Self::Storage>> {
        let [s, b, m, v] = params;
        self.apply(&Op::BatchNorm(*op), &[x, s, b, m, v])
    }

    /// ONNX BatchNormalization written into `y`.
    fn batch_norm_into(
        &self,
        op: &BatchNorm,
        x: &Tensor<Self::Storage>,
        params: [&Tensor<Self::Storage>; 4],
        y: &mut Tensor<Self::Storage>,
    ) -> Result<()> {
        let [s, b, m, v] = params;
        self.apply_into(&Op::BatchNorm(*op), &[x, s, b, m, v], y)
    }

    /// ONNX Softmax along `op.axis`.
    fn softmax(&self, op: &Softmax, x: &Tensor<Self::Storage>) -> Result<Tensor<Self::Storage>> {
        self.apply(&Op::Softmax(*op), &[x])
    }

    /// ONNX Softmax written into `y`.
    fn softmax_into(
        &self,
        op: &Softmax,
        x: &Tensor<Self::Storage>,
        y: &mut Tensor<Self::Storage>,
    ) -> Result<()> {
        self.apply_into(&Op::Softmax(*op), &[x], y)
    }
}

fn empty_entry() -> Error {
    Error::Backend {
        backend: "run_steps",
        msg: "a step names an empty table entry".into(),
    }
}

/// Writes host data into table entries (see [`Backend::run_steps`]).
pub(crate) fn write_entries<B: Backend>(
    backend: &B,
    tensors: &mut [Option<Tensor<B::Storage>>],
    writes: &[(usize, &HostTensor)],
) -> Result<()> {
    for &(i, host) in writes {
        backend.write(tensors[i].as_mut().ok_or_else(empty_entry)?, host)?;
    }
    Ok(())
}

/// [`Backend::run_program`] on this process's backend: inside one [`Backend::run_ops`], the
/// writes, then each step (given the storage [`reuse::placement`] picks, where the backend
/// lends storage), observed after each; every storage back with its entry; then the reads.
pub(crate) fn run_program_here<B: Backend>(
    backend: &B,
    tensors: &mut [Option<Tensor<B::Storage>>],
    writes: &[(usize, &HostTensor)],
    steps: &[Step],
    reads: &[usize],
    mut observe: Option<&mut (dyn FnMut() -> Result<()> + Send)>,
) -> Result<Vec<HostTensor>> {
    let home: Vec<_> = tensors
        .iter()
        .map(|t| t.as_ref().map(|t| (t.dtype(), t.desc().len())))
        .collect();
    let place = if backend.lends_storage() {
        let inputs: Vec<usize> = writes.iter().map(|&(i, _)| i).collect();
        reuse::placement(steps, &home, reads, &inputs)
    } else {
        steps.iter().map(|s| s.output).collect()
    };
    let blocked = {
        let descs: Vec<_> = tensors
            .iter()
            .map(|t| t.as_ref().map(|t| t.desc()))
            .collect();
        backend.blocked_outputs(steps, &descs, reads)
    };
    backend.run_ops(|| {
        let mut swaps = reuse::Swaps::new(&home);
        let mut observed = || observe.as_mut().map_or(Ok(()), |o| o());
        let mut ran = |tensors: &mut [Option<Tensor<B::Storage>>]| -> Result<()> {
            write_entries(backend, tensors, writes)?;
            observed()?;
            for ((step, &storage), &blocked) in steps.iter().zip(&place).zip(&blocked) {
                let mut table = reuse::Table { backend, tensors };
                swaps.give(&mut table, step.output, storage)?;
                if let Some(y) = tensors[step.output].as_mut().filter(|_| blocked) {
                    backend.want_blocked(y.storage_mut());
                }
                run_step(backend, tensors, step)?;
                observed()?;
            }
            Ok(())
        };
        let ran = ran(tensors);
        let restored = swaps.restore(&mut reuse::Table { backend, tensors });
        ran?;
        restored?;
        read_entries(backend, tensors, reads)
    })
}

/// Runs one step over a table (see [`Backend::run_steps`]).
pub(crate) fn run_step<B: Backend>(
    backend: &B,
    tensors: &mut [Option<Tensor<B::Storage>>],
    step: &Step,
) -> Result<()> {
    let mut y = tensors[step.output].take().ok_or_else(empty_entry)?;
    let done = step
        .inputs
        .iter()
        .map(|&i| tensors[i].as_ref().ok_or_else(empty_entry))
        .collect::<Result<Vec<_>>>()
        .and_then(|x| backend.apply_into(&step.op, &x, &mut y));
    tensors[step.output] = Some(y);
    done
}

/// Downloads table entries, in order (see [`Backend::run_steps`]).
pub(crate) fn read_entries<B: Backend>(
    backend: &B,
    tensors: &[Option<Tensor<B::Storage>>],
    reads: &[usize],
) -> Result<Vec<HostTensor>> {
    reads
        .iter()
        .map(|&i| backend.download(tensors[i].as_ref().ok_or_else(empty_entry)?))
        .collect()
}

/// One op of a [`Backend::run_steps`] sequence: its inputs and output are indices into the
/// sequence's tensor table.
#[derive(Clone, Debug, PartialEq)]
pub struct Step {
    pub op: Op,
    pub inputs: Vec<usize>,
    pub output: usize,
}

/// `op`'s plan for the descriptors of `inputs`.
fn plan<S>(op: &Op, inputs: &[&Tensor<S>]) -> Result<Plan> {
    let descs: Vec<&TensorDesc> = inputs.iter().map(|t| t.desc()).collect();
    op.plan(&descs)
}

/// `op`'s plan for `inputs`, checked against the output `y` it is to be written into.
pub(crate) fn plan_into<S>(op: &Op, inputs: &[&Tensor<S>], y: &TensorDesc) -> Result<Plan> {
    let plan = plan(op, inputs)?;
    check_output(op.name(), plan.output(), y)?;
    Ok(plan)
}

pub(crate) fn storages<'a, S>(inputs: &[&'a Tensor<S>]) -> Vec<&'a S> {
    inputs.iter().map(|t| t.storage()).collect()
}

/// The required operands followed by the optional one, if given.
fn operands<'a, S>(
    required: &[&'a Tensor<S>],
    optional: Option<&'a Tensor<S>>,
) -> Vec<&'a Tensor<S>> {
    required.iter().copied().chain(optional).collect()
}

/// Checks that host data written into a tensor has the tensor's dtype and shape.
pub(crate) fn check_write(t: &TensorDesc, host: &TensorDesc) -> Result<()> {
    check_output("write", t, host)
}

/// Checks that a caller-provided output matches what the op produces.
pub(crate) fn check_output(
    op: &'static str,
    expected: &TensorDesc,
    got: &TensorDesc,
) -> Result<()> {
    if expected != got {
        return Err(Error::Output {
            op,
            expected: expected.shape().to_vec(),
            expected_dtype: expected.dtype(),
            got: got.shape().to_vec(),
            got_dtype: got.dtype(),
        });
    }
    Ok(())
}

//! The backend contract: how a device allocates, moves and computes tensors.
//!
//! A backend implements a few primitives — allocate, upload, download, synchronise — and one
//! `launch_*` method per op family that executes an already validated plan from [`crate::ops`].
//! The user-facing op methods are provided on top: the `_into` forms validate, check the given
//! output and launch; the allocating forms (`gemm`, `conv`, …) allocate the output the plan
//! names and call the `_into` form. Everything that computes — the CPU
//! backend, the CUDA backend, a metered accelerator wrapping either, a remote client — is a
//! `Backend`, so one test suite and one bench suite run against all of them.

pub mod cpu;
pub mod cuda;
#[cfg(feature = "emu")]
pub mod emu;

pub use cpu::CpuBackend;
pub use cuda::CudaBackend;
#[cfg(feature = "emu")]
pub use emu::EmuBackend;

use crate::error::{Error, Result};
use crate::ops::{
    BatchNorm, BatchNormPlan, Conv, ConvPlan, Gemm, GemmPlan, MatMul, Softmax, SoftmaxPlan,
};
use crate::tensor::{HostTensor, Tensor, TensorDesc};

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
    /// hand-over that costs about 18 µs per op on a 2-core VM); the default just calls `f`.
    fn run_ops<R: Send>(&self, f: impl FnOnce() -> R + Send) -> R
    where
        Self: Sized,
    {
        f()
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

    /// Executes a validated GEMM plan. `c` is present iff `plan.c` is.
    fn launch_gemm(
        &self,
        plan: &GemmPlan,
        a: &Self::Storage,
        b: &Self::Storage,
        c: Option<&Self::Storage>,
        y: &mut Self::Storage,
    ) -> Result<()>;

    /// Executes a validated convolution plan. `bias` is present iff `plan.bias`.
    fn launch_conv(
        &self,
        plan: &ConvPlan,
        x: &Self::Storage,
        w: &Self::Storage,
        bias: Option<&Self::Storage>,
        y: &mut Self::Storage,
    ) -> Result<()>;

    /// Executes a validated batch-norm plan; `params` are scale, bias, mean, var.
    fn launch_batch_norm(
        &self,
        plan: &BatchNormPlan,
        x: &Self::Storage,
        params: [&Self::Storage; 4],
        y: &mut Self::Storage,
    ) -> Result<()>;

    /// Executes a validated softmax plan.
    fn launch_softmax(
        &self,
        plan: &SoftmaxPlan,
        x: &Self::Storage,
        y: &mut Self::Storage,
    ) -> Result<()>;

    /// ONNX Gemm: `relu?(alpha·A'·B' + beta·C)`.
    fn gemm(
        &self,
        op: &Gemm,
        a: &Tensor<Self::Storage>,
        b: &Tensor<Self::Storage>,
        c: Option<&Tensor<Self::Storage>>,
    ) -> Result<Tensor<Self::Storage>> {
        let mut y = self.alloc(&op.plan(a.desc(), b.desc(), c.map(Tensor::desc))?.output)?;
        self.gemm_into(op, a, b, c, &mut y)?;
        Ok(y)
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
        let plan = op.plan(a.desc(), b.desc(), c.map(Tensor::desc))?;
        check_output("Gemm", &plan.output, y.desc())?;
        self.launch_gemm(
            &plan,
            a.storage(),
            b.storage(),
            c.map(Tensor::storage),
            y.storage_mut(),
        )
    }

    /// ONNX MatMul with batch broadcasting.
    fn matmul(
        &self,
        a: &Tensor<Self::Storage>,
        b: &Tensor<Self::Storage>,
    ) -> Result<Tensor<Self::Storage>> {
        let mut y = self.alloc(&MatMul.plan(a.desc(), b.desc())?.output)?;
        self.matmul_into(a, b, &mut y)?;
        Ok(y)
    }

    /// ONNX MatMul written into `y`.
    fn matmul_into(
        &self,
        a: &Tensor<Self::Storage>,
        b: &Tensor<Self::Storage>,
        y: &mut Tensor<Self::Storage>,
    ) -> Result<()> {
        let plan = MatMul.plan(a.desc(), b.desc())?;
        check_output("MatMul", &plan.output, y.desc())?;
        self.launch_gemm(&plan, a.storage(), b.storage(), None, y.storage_mut())
    }

    /// ONNX Conv (2-D, NCHW/OIHW) with optional bias.
    fn conv(
        &self,
        op: &Conv,
        x: &Tensor<Self::Storage>,
        w: &Tensor<Self::Storage>,
        bias: Option<&Tensor<Self::Storage>>,
    ) -> Result<Tensor<Self::Storage>> {
        let mut y = self.alloc(&op.plan(x.desc(), w.desc(), bias.map(Tensor::desc))?.output)?;
        self.conv_into(op, x, w, bias, &mut y)?;
        Ok(y)
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
        let plan = op.plan(x.desc(), w.desc(), bias.map(Tensor::desc))?;
        check_output("Conv", &plan.output, y.desc())?;
        self.launch_conv(
            &plan,
            x.storage(),
            w.storage(),
            bias.map(Tensor::storage),
            y.storage_mut(),
        )
    }

    /// ONNX BatchNormalization (inference); `params` are scale, bias, mean, var.
    fn batch_norm(
        &self,
        op: &BatchNorm,
        x: &Tensor<Self::Storage>,
        params: [&Tensor<Self::Storage>; 4],
    ) -> Result<Tensor<Self::Storage>> {
        let mut y = self.alloc(&op.plan(x.desc(), params.map(Tensor::desc))?.output)?;
        self.batch_norm_into(op, x, params, &mut y)?;
        Ok(y)
    }

    /// ONNX BatchNormalization written into `y`.
    fn batch_norm_into(
        &self,
        op: &BatchNorm,
        x: &Tensor<Self::Storage>,
        params: [&Tensor<Self::Storage>; 4],
        y: &mut Tensor<Self::Storage>,
    ) -> Result<()> {
        let plan = op.plan(x.desc(), params.map(Tensor::desc))?;
        check_output("BatchNormalization", &plan.output, y.desc())?;
        self.launch_batch_norm(
            &plan,
            x.storage(),
            params.map(Tensor::storage),
            y.storage_mut(),
        )
    }

    /// ONNX Softmax along `op.axis`.
    fn softmax(&self, op: &Softmax, x: &Tensor<Self::Storage>) -> Result<Tensor<Self::Storage>> {
        let mut y = self.alloc(&op.plan(x.desc())?.output)?;
        self.softmax_into(op, x, &mut y)?;
        Ok(y)
    }

    /// ONNX Softmax written into `y`.
    fn softmax_into(
        &self,
        op: &Softmax,
        x: &Tensor<Self::Storage>,
        y: &mut Tensor<Self::Storage>,
    ) -> Result<()> {
        let plan = op.plan(x.desc())?;
        check_output("Softmax", &plan.output, y.desc())?;
        self.launch_softmax(&plan, x.storage(), y.storage_mut())
    }
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

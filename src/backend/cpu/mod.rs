//! The CPU backend: computes every op where no GPU is present, multi-threaded on a rayon pool.
//! Storage is host memory ([`CpuData`]: the [`HostData`] and the forms derived from it). GEMM
//! and convolution run on FP32 kernels (FP16 operands are widened once, accumulated in FP32 and
//! rounded once on output; FP16 weights — a conv's weights, a GEMM's B — are widened once per
//! tensor and the copy cached with it, or packed once for the direct convolution, see
//! [`derived`] and [`direct`], or transformed once for the Winograd convolution, see
//! [`winograd`]; the direct, Winograd and depthwise convolutions widen FP16 input as they
//! copy or load it, and the depthwise one rounds its FP16 output in registers; the GEMM lowering
//! of an FP16 pointwise convolution widens and rounds one block of columns at a time); batch
//! norm and softmax stream FP16 through FP32 registers chunk by chunk. Inside a program, the
//! convolutions between convolutions keep their activations in a blocked layout (`blocked`).

#[cfg(target_arch = "x86_64")]
mod avx512;
mod awake;
mod batchnorm;
mod binary;
mod blocked;
mod conv;
mod depthwise;
#[cfg(target_arch = "x86_64")]
mod depthwise_blocked;
mod derived;
mod direct;
mod gemm;
mod layout;
mod lrn;
mod pool;
mod scratch;
mod simd;
mod softmax;
mod unary;
mod winograd;

use std::sync::Arc;

use self::blocked::{Blocked, Layouts};
pub use self::derived::{CpuData, Key};
use self::scratch::{as_f32, weights_f32, write_f32};
use super::{Backend, MemoryAccount, Step};
use crate::dtype::{DType, Element};
use crate::error::{Error, Result};
use crate::ops::{ConvPlan, FamilyPlan, GemmPlan, Plan};
use crate::tensor::{HostData, HostTensor, Tensor, TensorDesc};

/// Computes on host threads. Cheap to clone.
#[derive(Clone, Default)]
pub struct CpuBackend {
    /// A private pool, or `None` for rayon's global pool.
    pool: Option<Arc<rayon::ThreadPool>>,
    /// Where the forms derived from tensors are charged (`None`: nowhere, no limit).
    account: Option<Arc<dyn MemoryAccount>>,
    /// Bytes touched from which an op streams its output (`None`: [`simd::stream_bytes`]).
    stream_from: Option<usize>,
}

impl CpuBackend {
    /// A backend on rayon's global pool (one thread per core unless `RAYON_NUM_THREADS` says
    /// otherwise).
    pub fn new() -> Self {
        CpuBackend::default()
    }

    /// A backend with a private pool of `threads` threads.
    pub fn with_threads(threads: usize) -> Result<Self> {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .thread_name(|i| format!("eia-cpu-{i}"))
            .build()
            .map_err(|e| Error::Backend {
                backend: "cpu",
                msg: format!("cannot start {threads} threads: {e}"),
            })?;
        Ok(CpuBackend {
            pool: Some(Arc::new(pool)),
            ..CpuBackend::default()
        })
    }

    /// This backend with every elementwise op (Add, Sub, Mul, Div, BatchNormalization) that
    /// touches at least `bytes` bytes (inputs read and output written) writing its FP32 output
    /// with non-temporal stores, which skip the caches. By default that is 5/4 of the CPU's
    /// last-level cache (where Linux lists it, else of 32 MiB): an output that size would leave
    /// the cache before the next op reads it anyway.
    pub fn streaming_from(mut self, bytes: usize) -> Self {
        self.stream_from = Some(bytes);
        self
    }

    /// Number of threads ops run on.
    pub fn threads(&self) -> usize {
        match &self.pool {
            Some(pool) => pool.current_num_threads(),
            None => rayon::current_num_threads(),
        }
    }

    /// The vector instruction set the kernels use ("avx512", "avx2" or "baseline"), chosen at
    /// run time from the CPU and capped by `EIA_CPU_SIMD`.
    pub fn simd(&self) -> &'static str {
        match simd::level() {
            simd::Level::Avx512 => "avx512",
            simd::Level::Avx2 => "avx2",
            simd::Level::Baseline => "baseline",
        }
    }

    /// Bytes touched from which an op streams its output (see [`CpuBackend::streaming_from`]).
    fn stream_from(&self) -> usize {
        self.stream_from.unwrap_or_else(simd::stream_bytes)
    }

    fn run<R: Send>(&self, f: impl FnOnce() -> R + Send) -> R {
        match &self.pool {
            Some(pool) => pool.install(f),
            None => f(),
        }
    }
}

impl Backend for CpuBackend {
    type Storage = CpuData;

    fn name(&self) -> String {
        "cpu".to_string()
    }

    /// The host's physical memory (`MemTotal` in `/proc/meminfo`), where the OS says.
    fn total_memory(&self) -> Option<u64> {
        let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
        let line = meminfo.lines().find(|l| l.starts_with("MemTotal:"))?;
        let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
        kib.checked_mul(1024)
    }

    /// Runs `f` on a thread of the pool (the calling one if it is already there), the pool's
    /// other threads looking for work until it returns (see `awake.rs`).
    fn run_ops<R: Send>(&self, f: impl FnOnce() -> R + Send) -> R {
        match &self.pool {
            Some(pool) => pool.install(|| awake::with_lookers(f)),
            None => rayon::scope(|_| awake::with_lookers(f)),
        }
    }

    fn alloc(&self, desc: &TensorDesc) -> Result<Tensor<CpuData>> {
        Ok(Tensor::from_parts(
            desc.clone(),
            HostData::filled(desc.dtype(), desc.len(), 0.0).into(),
        ))
    }

    /// Uploaded data builds its derived forms on its first read (see [`CpuData::uploaded`]).
    fn upload(&self, host: &HostTensor) -> Result<Tensor<CpuData>> {
        Ok(Tensor::from_parts(
            host.desc().clone(),
            CpuData::uploaded(host.data().clone()),
        ))
    }

    /// Host memory is the storage: the tensor is moved in, not copied.
    fn upload_owned(&self, host: HostTensor) -> Result<Tensor<CpuData>> {
        let desc = host.desc().clone();
        Ok(Tensor::from_parts(
            desc,
            CpuData::uploaded(host.into_storage()),
        ))
    }

    /// Storage moves within its allocation: its vector shortened, or lengthened back up to
    /// the length it was initialised to.
    fn lends_storage(&self) -> bool {
        true
    }

    fn set_len(&self, storage: &mut CpuData, home: usize, len: usize) -> Result<()> {
        fn fit<T>(v: &mut Vec<T>, len: usize, home: usize) -> Result<()> {
            if len > home || v.capacity() < home {
                return Err(Error::Backend {
                    backend: "cpu",
                    msg: format!(
                        "a storage of {} elements cannot hold {len} (allocated for {home})",
                        v.capacity()
                    ),
                });
            }
            // SAFETY: the first `home` elements were initialised when the vector was allocated
            // for `home` elements (f32 and f16 are plain data: shortening it did not drop
            // them), and `len ≤ home ≤ capacity`.
            unsafe { v.set_len(len) };
            Ok(())
        }
        match storage.data_mut() {
            HostData::F32(v) => fit(v, len, home),
            HostData::F16(v) => fit(v, len, home),
        }
    }

    /// Replaces the data, dropping what was derived from it.
    fn write(&self, t: &mut Tensor<CpuData>, host: &HostTensor) -> Result<()> {
        super::check_write(t.desc(), host.desc())?;
        t.storage_mut()
            .data_mut()
            .as_bytes_mut()
            .copy_from_slice(host.as_bytes());
        Ok(())
    }

    fn download(&self, t: &Tensor<CpuData>) -> Result<HostTensor> {
        Ok(Tensor::from_parts(
            t.desc().clone(),
            t.storage().planar().into_owned(),
        ))
    }

    fn charge_derived_to(&mut self, account: Arc<dyn MemoryAccount>) {
        self.account = Some(account);
    }

    fn drop_derived(&self, storage: &CpuData) {
        storage.drop_derived();
    }

    /// Derives what it can from `x` (cached), then writes `y` (dropping what was derived from
    /// it).
    fn launch(&self, plan: &Plan, inputs: &[&CpuData], y: &mut CpuData) -> Result<()> {
        let layouts = layouts(plan, inputs, y.take_want_blocked());
        let converted = converted(plan, layouts, inputs);
        let held: Vec<&CpuData>;
        let inputs = if converted.is_empty() {
            inputs
        } else {
            held = inputs
                .iter()
                .zip(&converted)
                .map(|(&d, c)| c.as_ref().unwrap_or(d))
                .collect();
            &held[..]
        };
        let x: Vec<&HostData> = inputs.iter().map(|d| d.data()).collect();
        let storage = y;
        let y = storage.data_mut();
        let (account, stream_from) = (self.account.as_ref(), self.stream_from());
        self.run(|| match &plan.family {
            FamilyPlan::Gemm(p) => gemm(p, x[0], inputs[1], x.get(2).copied(), y, account),
            FamilyPlan::Conv(p) => {
                let bias = p.bias_input().map(|i| as_f32(x[i]));
                let sum = p.sum_input().map(|i| x[i]);
                #[cfg(target_arch = "x86_64")]
                if (layouts.x || layouts.y) && blocked::depthwise(p) {
                    let w = weights_f32(inputs[1], account);
                    match (x[0], y) {
                        (HostData::F32(x), HostData::F32(y)) => {
                            depthwise_blocked::depthwise(p, layouts, x, &w, bias.as_deref(), y)
                        }
                        (HostData::F16(x), HostData::F16(y)) => {
                            depthwise_blocked::depthwise(p, layouts, x, &w, bias.as_deref(), y)
                        }
                        _ => unreachable!("plans are validated: input and output share a dtype"),
                    }
                    return;
                }
                if layouts.x || layouts.y || (!winograd::applies(p) && direct::applies(p)) {
                    // The direct kernel takes the residual sum in its storage type.
                    let w = direct::packed_weights(p, layouts, inputs[1], account);
                    let bias = bias.as_deref();
                    match y {
                        HostData::F32(y) => direct::conv(p, layouts, x[0], &w, bias, sum, y),
                        HostData::F16(y) => direct::conv(p, layouts, x[0], &w, bias, sum, y),
                    }
                    return;
                }
                if let (HostData::F16(xh), HostData::F16(yh)) = (x[0], &mut *y) {
                    if conv::is_pointwise(p) && p.c_per_group() > 1 {
                        // FP16 in, FP16 out, the residual sum read as stored.
                        let w = weights_f32(inputs[1], account);
                        let sum = sum.map(values);
                        return conv::pointwise_f16(p, xh, &w, bias.as_deref(), sum, yh);
                    }
                }
                let sum = sum.map(as_f32);
                let add = conv::Addends {
                    bias: bias.as_deref(),
                    sum: sum.as_deref(),
                };
                if winograd::applies(p) {
                    let u = winograd::weights(p, inputs[1], account);
                    match y {
                        HostData::F32(y) => winograd::conv(p, x[0], &u, add, y),
                        HostData::F16(y) => winograd::conv(p, x[0], &u, add, y),
                    }
                } else if p.c_per_group() == 1 {
                    let w = weights_f32(inputs[1], account);
                    match (x[0], y) {
                        (HostData::F32(x), HostData::F32(y)) => {
                            depthwise::depthwise(p, x, &w, add, y)
                        }
                        (HostData::F16(x), HostData::F16(y)) => {
                            depthwise::depthwise(p, x, &w, add, y)
                        }
                        _ => unreachable!("plans are validated: input and output share a dtype"),
                    }
                } else {
                    let w = weights_f32(inputs[1], account);
                    let x = as_f32(x[0]);
                    write_f32(y, |y| conv::conv_f32(p, &x, &w, add, y));
                }
            }
            FamilyPlan::BatchNorm(p) => match (x[0], y) {
                (HostData::F32(x0), HostData::F32(y)) => {
                    let coef = batchnorm::fold(p, [1, 2, 3, 4].map(|i| values::<f32>(x[i])));
                    batchnorm::apply(p, &coef, x0, y, stream_from)
                }
                (HostData::F16(x0), HostData::F16(y)) => {
                    let coef = batchnorm::fold(p, [1, 2, 3, 4].map(|i| values::<half::f16>(x[i])));
                    batchnorm::apply(p, &coef, x0, y, stream_from)
                }
                _ => unreachable!("plans are validated: input and output share a dtype"),
            },
            FamilyPlan::Softmax(p) => match (x[0], y) {
                (HostData::F32(x), HostData::F32(y)) => softmax::softmax(p, x, y),
                (HostData::F16(x), HostData::F16(y)) => softmax::softmax(p, x, y),
                _ => unreachable!("plans are validated: input and output share a dtype"),
            },
            FamilyPlan::Unary(p) => match (x[0], y) {
                (HostData::F32(x), HostData::F32(y)) => unary::unary(p, x, y),
                (HostData::F16(x), HostData::F16(y)) => unary::unary(p, x, y),
                _ => unreachable!("plans are validated: input and output share a dtype"),
            },
            FamilyPlan::Binary(p) => match y {
                HostData::F32(y) => {
                    let x: Vec<&[f32]> = x.iter().map(|x| values(x)).collect();
                    binary::binary(p, &x, y, stream_from)
                }
                HostData::F16(y) => {
                    let x: Vec<&[half::f16]> = x.iter().map(|x| values(x)).collect();
                    binary::binary(p, &x, y, stream_from)
                }
            },
            FamilyPlan::Pool(p) => match (x[0], y) {
                (HostData::F32(x), HostData::F32(y)) if layouts.x => blocked::pool(p, x, y),
                (HostData::F16(x), HostData::F16(y)) if layouts.x => blocked::pool(p, x, y),
                (HostData::F32(x), HostData::F32(y)) => pool::pool(p, x, y),
                (HostData::F16(x), HostData::F16(y)) => pool::pool(p, x, y),
                _ => unreachable!("plans are validated: input and output share a dtype"),
            },
            FamilyPlan::Layout(p) => layout::layout(p, &x, y),
            FamilyPlan::Lrn(p) => lrn::lrn(p, x[0], y),
        });
        if let (FamilyPlan::Conv(p), true) = (&plan.family, layouts.y) {
            storage.set_blocked(Some(conv_output(p)));
        }
        Ok(())
    }

    /// The steps whose outputs `blocked::outputs` lets convolutions leave blocked.
    fn blocked_outputs(
        &self,
        steps: &[Step],
        descs: &[Option<&TensorDesc>],
        reads: &[usize],
    ) -> Vec<bool> {
        blocked::outputs(steps, descs, reads)
    }

    fn want_blocked(&self, y: &mut CpuData) {
        y.want_blocked();
    }
}

/// Which of an op's activations are blocked (see `blocked`): a convolution's input where it is
/// blocked and the kernel reads it so, its output where `want` (the program allows it) and the
/// kernel writes it so; a global pool's or window MaxPool's input where it is blocked.
fn layouts(plan: &Plan, inputs: &[&CpuData], want: bool) -> Layouts {
    let blocked_x = inputs[0].blocked().is_some();
    match &plan.family {
        FamilyPlan::Conv(p) => Layouts {
            x: blocked_x && blocked::reads_conv(p),
            y: want && blocked::writes_conv(p),
        },
        FamilyPlan::Pool(p) => Layouts {
            x: blocked_x && blocked::pools(p),
            y: false,
        },
        _ => Layouts::default(),
    }
}

/// The inputs the op does not read as they are laid out, converted: blocked inputs it reads
/// planar, and a planar residual sum of a blocked output. None (no allocation) where it reads
/// every input as it is.
fn converted(plan: &Plan, layouts: Layouts, inputs: &[&CpuData]) -> Vec<Option<CpuData>> {
    let read_blocked = |i: usize| match &plan.family {
        FamilyPlan::Conv(p) if Some(i) == p.sum_input() => layouts.y,
        FamilyPlan::Conv(_) | FamilyPlan::Pool(_) => i == 0 && layouts.x,
        _ => false,
    };
    let as_read = |(i, d): (usize, &&CpuData)| d.blocked().is_some() == read_blocked(i);
    if inputs.iter().enumerate().all(as_read) {
        return Vec::new();
    }
    inputs
        .iter()
        .enumerate()
        .map(
            |(i, d)| match (d.blocked(), read_blocked(i), &plan.family) {
                (Some(b), false, _) => Some(blocked::to_planar(d.data(), b).into()),
                (None, true, FamilyPlan::Conv(p)) => {
                    Some(blocked::to_blocked(d.data(), conv_output(p)).into())
                }
                _ => None,
            },
        )
        .collect()
}

/// The blocked shape of a convolution's output.
fn conv_output(p: &ConvPlan) -> Blocked {
    Blocked {
        c: p.k,
        hw: p.p * p.q,
    }
}

/// A GEMM (or MatMul) plan on host data. An FP16 B (the weights) is read as it is stored by
/// the few-rows kernel where that applies (see `gemm::reads_columns_once`), widened panel by
/// panel where the plan suits that (measured faster, at 32×1000×2048, than the FP32 kernel on a
/// widened copy), else taken widened from its cache, or widened whole for this call.
fn gemm(
    plan: &GemmPlan,
    a: &HostData,
    b: &CpuData,
    c: Option<&HostData>,
    y: &mut HostData,
    account: Option<&Arc<dyn MemoryAccount>>,
) {
    let (a, c) = (as_f32(a), c.map(as_f32));
    match b.data() {
        HostData::F16(b) if plan.batch() == 1 && gemm::reads_columns_once(plan) => {
            write_f32(y, |y| gemm::few_rows_f16(plan, &a, b, c.as_deref(), y));
        }
        HostData::F16(b) if gemm::widens_b_in_panels(plan) => {
            write_f32(y, |y| gemm::gemm_f16_b(plan, &a, b, c.as_deref(), y));
        }
        _ => {
            let b = weights_f32(b, account);
            write_f32(y, |y| gemm::gemm_f32(plan, &a, &b, c.as_deref(), y));
        }
    }
}

/// An output (of f32 unless said otherwise) shared by parallel work items that each write a
/// disjoint part of it.
#[derive(Clone, Copy)]
struct Disjoint<T = f32>(*mut T);

// SAFETY: a `Disjoint` only hands out the parts its users' contracts make disjoint (see
// `Disjoint::slice`), so sharing the pointer across threads creates no data race.
unsafe impl<T> Send for Disjoint<T> {}
unsafe impl<T> Sync for Disjoint<T> {}

impl<T> Disjoint<T> {
    fn new(y: &mut [T]) -> Self {
        Disjoint(y.as_mut_ptr())
    }

    fn ptr(self) -> *mut T {
        self.0
    }

    /// The `len` values from `offset`.
    ///
    /// # Safety
    /// They must lie inside the slice `self` was made from, and no other reference to them may
    /// exist while the returned one lives.
    #[allow(clippy::mut_from_ref)]
    unsafe fn slice<'a>(self, offset: usize, len: usize) -> &'a mut [T] {
        // SAFETY: the caller's contract.
        unsafe { std::slice::from_raw_parts_mut(self.0.add(offset), len) }
    }
}

/// Widens `x` into `out` (replacing its contents).
fn widen<T: Element>(x: &[T], out: &mut Vec<f32>) {
    out.resize(x.len(), 0.0);
    match T::DTYPE {
        DType::F32 => out.copy_from_slice(bytemuck::cast_slice(x)),
        DType::F16 => simd::f16_to_f32(bytemuck::cast_slice(x), out),
    }
}

/// `x`'s elements as `T`, the dtype every input of a validated plan shares.
pub(super) fn values<T: Element>(x: &HostData) -> &[T] {
    assert_eq!(
        x.dtype(),
        T::DTYPE,
        "plans are validated: inputs share a dtype"
    );
    bytemuck::cast_slice(x.as_bytes())
}

/// Rounds `x` into `out` (same length).
fn narrow<T: Element>(x: &[f32], out: &mut [T]) {
    match T::DTYPE {
        DType::F32 => out.copy_from_slice(bytemuck::cast_slice(x)),
        DType::F16 => simd::f32_to_f16(x, bytemuck::cast_slice_mut(out)),
    }
}

/// Input elements, widened to f32 as a kernel copies them (the direct and depthwise
/// convolutions' framing and padding copies).
pub(super) trait Widen: Element {
    /// `dst = src` as f32 (equal lengths).
    fn widen(src: &[Self], dst: &mut [f32]);
}

impl Widen for f32 {
    fn widen(src: &[f32], dst: &mut [f32]) {
        dst.copy_from_slice(src);
    }
}

impl Widen for half::f16 {
    fn widen(src: &[half::f16], dst: &mut [f32]) {
        simd::f16_to_f32(src, dst);
    }
}

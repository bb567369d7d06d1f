//! The shared harness of the planners' emulator tests (the `emu_tests` module of each
//! `launch/*.rs`, feature `emu`): deterministic inputs, tensors placed off their buffers' 16-byte
//! aligned starts, launches run on the CPU emulator with their grids optionally cut down, and the
//! float64 comparison with the dtype's tolerance. A planner test is then: plan, place the
//! tensors, [`run`] the launches the planner made, compare with its own float64 reference.
//!
//! ```ignore
//! let emu = EmuBackend::new();
//! let x = Placed::upload(&emu, dtype, &values(n, 1, -8.0, 8.0), 1); // 1 element off alignment
//! let y = Placed::poisoned(&emu, dtype, n, 0);                     // NaN until written
//! let kernels = run(&emu, planner(&plan, Arch::SM80, x.addr(), y.addr()), None, &[&x, &y]);
//! check_norm("what", dtype, &y.download(&emu), &reference(&x.download(&emu)));
//! ```

use super::{KernelArgs, Launch, Ptr};
use crate::backend::emu::EmuBuffer;
use crate::backend::{Backend, EmuBackend};
use crate::dtype::DType;
use crate::tensor::{HostTensor, Tensor};

/// `n` deterministic values in `[lo, hi)` (xorshift from `seed`).
pub fn values(n: usize, seed: u64, lo: f32, hi: f32) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            lo + (s >> 40) as f32 / (1u64 << 24) as f32 * (hi - lo)
        })
        .collect()
}

/// A tensor on the emulator whose data starts `shift` elements past its buffer's 16-byte
/// aligned start (the elements before it hold 0), so that kernels meet misaligned addresses.
pub struct Placed {
    pub tensor: Tensor<EmuBuffer>,
    pub shift: usize,
    dtype: DType,
}

impl Placed {
    /// `v` rounded to `dtype`, `shift` elements into a fresh buffer.
    pub fn upload(emu: &EmuBackend, dtype: DType, v: &[f32], shift: usize) -> Placed {
        let data: Vec<f32> = std::iter::repeat_n(0.0, shift)
            .chain(v.iter().copied())
            .collect();
        let tensor = emu
            .upload(&HostTensor::from_f32(dtype, &[data.len()], &data).unwrap())
            .unwrap();
        Placed {
            tensor,
            shift,
            dtype,
        }
    }

    /// `n` NaN elements `shift` into a fresh buffer (an output: unwritten elements stay NaN).
    pub fn poisoned(emu: &EmuBackend, dtype: DType, n: usize, shift: usize) -> Placed {
        Placed::upload(emu, dtype, &vec![f32::NAN; n], shift)
    }

    /// The device address of the first element.
    pub fn addr(&self) -> Ptr {
        self.tensor.storage().addr() + (self.shift * self.dtype.size()) as Ptr
    }

    /// The buffer, for [`run`]'s guard-band checks.
    pub fn buffer(&self) -> &EmuBuffer {
        self.tensor.storage()
    }

    /// The elements (after the shift) as float64.
    pub fn download(&self, emu: &EmuBackend) -> Vec<f64> {
        emu.download(&self.tensor).unwrap().data().to_f64_vec()[self.shift..].to_vec()
    }
}

/// Runs `launches` in order on `emu`, each grid replaced by `grid` when given (a cut-down grid
/// makes grid-stride loops iterate), then checks the guard bands of `buffers`; panics on any
/// emulator error. Returns the kernels' names, in launch order.
pub fn run(
    emu: &EmuBackend,
    launches: Vec<Launch>,
    grid: Option<[u32; 3]>,
    buffers: &[&Placed],
) -> Vec<String> {
    let buffers: Vec<&EmuBuffer> = buffers.iter().map(|p| p.buffer()).collect();
    let mut names = Vec::new();
    for l in launches {
        let grid = grid.unwrap_or(l.grid);
        macro_rules! go {
            ($p:expr) => {
                // SAFETY: the planner made these params for tensors at the addresses it was
                // given, which `buffers` hold (placed tensors hold `shift` more elements).
                unsafe { emu.launch_kernel(&l.kernel, grid, l.block, $p, &buffers) }
            };
        }
        let done = match &l.args {
            KernelArgs::Gemm(p) => go!(p),
            KernelArgs::Conv(p) => go!(p),
            KernelArgs::BatchNorm(p) => go!(p),
            KernelArgs::Softmax(p) => go!(p),
            KernelArgs::Unary(p) => go!(p),
            KernelArgs::Binary(p) => go!(p),
            KernelArgs::Pool(p) => go!(p),
            KernelArgs::Layout(p) => go!(p),
            KernelArgs::Lrn(p) => go!(p),
        };
        if let Err(e) = done {
            panic!("{} (grid {grid:?}): {e}", l.kernel);
        }
        names.push(l.kernel);
    }
    names
}

/// The relative error of `got` against the float64 `want` over all elements (the square root of
/// Σ(g − w)² / Σw²) is at most the dtype's tolerance (F32 1e-5, F16 1e-3); NaN, 0 and ±∞ in
/// `want` must be matched exactly, and no other element may be NaN (unwritten).
pub fn check_norm(what: &str, dtype: DType, got: &[f64], want: &[f64]) {
    assert_eq!(got.len(), want.len(), "{what}: lengths");
    let tol = if dtype == DType::F32 { 1e-5 } else { 1e-3 };
    let (mut diff, mut norm) = (0.0, 0.0);
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        if w.is_nan() {
            assert!(g.is_nan(), "{what}: element {i} is {g}, want NaN");
        } else if w == 0.0 || w.is_infinite() {
            assert_eq!(g, w, "{what}: element {i}");
        } else {
            assert!(!g.is_nan(), "{what}: element {i} is NaN, want {w}");
            diff += (g - w) * (g - w);
            norm += w * w;
        }
    }
    let rel = (diff / f64::max(norm, f64::MIN_POSITIVE)).sqrt();
    assert!(rel <= tol, "{what}: relative error {rel:e}");
}

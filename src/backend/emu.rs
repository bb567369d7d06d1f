//! The CUDA kernels on the CPU (feature `emu`): [`EmuBackend`] runs the very launches the CUDA
//! backend makes — planned by [`cuda::launch`](super::cuda::launch) for `sm_80`, with the same
//! grids, blocks and params structs — through an emulator compiled from the very kernel sources
//! `kernels/*.cu` (`kernels/emu/`, built by `build.rs`). It exists to test those sources with the
//! conformance suite on machines without a GPU (`tests/emu.rs`): every CUDA thread is a fiber,
//! warp operations and barriers are emulated one lane at a time, so it is slow — a testing
//! tool, not a product backend.
//!
//! Besides wrong results, it reports what would go unnoticed or crash on a GPU as
//! `Error::Backend` errors naming the kernel: divergent barriers and warp operations, invalid
//! launch configurations, misaligned `cp.async` (predicated-off copies included), `ldmatrix` and
//! vector addresses, shared-memory races between barriers and reads of shared memory no thread
//! wrote (the sanitizer, `kernels/emu/README.md`), global bytes written by two blocks, writes
//! outside a tensor (each buffer is surrounded by guard bands checked after every launch) and
//! writes into an input. Reads of global memory never written show up as NaN in the results:
//! fresh buffers and their padding hold a NaN pattern.
//!
//! Threads run in an order the [`Schedule`] picks: `EIA_EMU_SCHEDULE` (`forward`, `reverse`,
//! `random:SEED`, `drift`, or `mix`, the default) sets it for a run; every error names the
//! schedule of the failing block, so that `EIA_EMU_SCHEDULE` reproduces it.

use std::alloc::{self, Layout};
use std::ffi::{c_char, c_int, c_void, CStr, CString};
use std::ptr::NonNull;

use super::cuda::launch::{self, Arch, Launch, Ptr};
use super::Backend;
use crate::error::{Error, Result};
use crate::ops::Plan;
use crate::tensor::{HostData, HostTensor, Tensor, TensorDesc};

/// `EiaEmuOptions` in `kernels/emu/runtime.cpp`.
#[repr(C)]
struct Options {
    plant: *const c_char,
    seed: u64,
    schedule: u32,
}

extern "C" {
    /// `kernels/emu/runtime.cpp`: runs one kernel over a grid; 0, or nonzero with a message.
    fn eia_emu_launch(
        kernel: *const c_char,
        grid: *const u32,
        block: *const u32,
        params: *const c_void,
        opts: *const Options,
        err: *mut c_char,
        err_len: usize,
    ) -> c_int;
}

/// The order in which the emulator runs the ready threads of a block until each waits (at a
/// barrier or warp operation) or exits. A correct kernel gives the same results under all.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Schedule {
    /// Threads in index order, each pass.
    Forward,
    /// Threads in reverse index order.
    Reverse,
    /// A fresh pseudo-random permutation every pass, from this seed.
    Random(u64),
    /// Warps from the last, each running ahead through its warp operations to its next
    /// `__syncthreads` (or exit) before the next warp starts.
    Drift,
    /// Each block of a launch one of the four above, from a hash of the kernel name, geometry
    /// and block index: every multi-block launch sees several.
    #[default]
    Mix,
}

impl Schedule {
    /// Parses `forward`, `reverse`, `random:SEED`, `drift` or `mix`.
    pub fn parse(s: &str) -> Option<Schedule> {
        Some(match s {
            "forward" => Schedule::Forward,
            "reverse" => Schedule::Reverse,
            "drift" => Schedule::Drift,
            "mix" => Schedule::Mix,
            _ => Schedule::Random(s.strip_prefix("random:")?.parse().ok()?),
        })
    }

    /// `EIA_EMU_SCHEDULE`, or [`Schedule::Mix`] when it is unset.
    ///
    /// # Panics
    ///
    /// If `EIA_EMU_SCHEDULE` is set to something [`Schedule::parse`] rejects.
    pub fn from_env() -> Schedule {
        match std::env::var("EIA_EMU_SCHEDULE") {
            Ok(s) => Schedule::parse(&s).unwrap_or_else(|| {
                panic!("EIA_EMU_SCHEDULE={s:?}: want forward, reverse, random:SEED, drift or mix")
            }),
            Err(_) => Schedule::Mix,
        }
    }

    /// (schedule, seed) as `eia_emu_launch` takes them.
    fn code(self) -> (u32, u64) {
        match self {
            Schedule::Forward => (0, 0),
            Schedule::Reverse => (1, 0),
            Schedule::Random(seed) => (2, seed),
            Schedule::Drift => (3, 0),
            Schedule::Mix => (4, 0),
        }
    }
}

/// Bytes of guard band on each side of a buffer.
const GUARD: usize = 64;
/// The fill of guard bands, padding and fresh allocations: `0x7ff5` repeated, a NaN both as
/// binary16 and (twice) as binary32, so reading it shows up as NaN in a result.
const CANARY: [u8; 2] = 0x7ff5u16.to_le_bytes();

fn emu_err(msg: String) -> Error {
    Error::Backend {
        backend: "emu",
        msg,
    }
}

/// One tensor's memory, laid out as on the GPU (row-major f32 or binary16 from a 64-byte
/// aligned start), between guard bands.
pub struct EmuBuffer {
    /// The allocation: `GUARD` bytes, the data rounded up to 16 bytes, `GUARD` bytes.
    base: NonNull<u8>,
    /// Bytes of data.
    len: usize,
}

// SAFETY: an EmuBuffer owns its allocation outright, like a Box<[u8]>, so moving it to another
// thread moves the memory with it.
unsafe impl Send for EmuBuffer {}
// SAFETY: through `&EmuBuffer` the memory is only read, except by a kernel in the unsafe
// `EmuBackend::launch_kernel`, whose caller guarantees that nothing else uses the buffer
// meanwhile (and launches are serialised by the emulator).
unsafe impl Sync for EmuBuffer {}

impl EmuBuffer {
    fn layout(len: usize) -> Result<Layout> {
        len.checked_next_multiple_of(16)
            .and_then(|l| l.checked_add(2 * GUARD))
            .and_then(|size| Layout::from_size_align(size, 64).ok())
            .ok_or_else(|| emu_err(format!("cannot allocate {len} bytes")))
    }

    /// A buffer of `len` bytes, all of them (and the guard bands) holding the canary.
    fn new(len: usize) -> Result<Self> {
        let layout = Self::layout(len)?;
        // SAFETY: the layout has a nonzero size (at least the two guard bands).
        let base = NonNull::new(unsafe { alloc::alloc(layout) })
            .ok_or_else(|| emu_err(format!("out of memory allocating {len} bytes")))?;
        // SAFETY: base points to layout.size() bytes just allocated and not yet shared.
        let all = unsafe { std::slice::from_raw_parts_mut(base.as_ptr(), layout.size()) };
        for pair in all.chunks_exact_mut(2) {
            pair.copy_from_slice(&CANARY);
        }
        Ok(EmuBuffer { base, len })
    }

    /// A buffer holding `bytes`.
    fn from_bytes(bytes: &[u8]) -> Result<Self> {
        let mut buf = Self::new(bytes.len())?;
        buf.data_mut().copy_from_slice(bytes);
        Ok(buf)
    }

    /// The address kernels see: of the first data byte, or 0 for an empty buffer (as the CUDA
    /// backend passes, having nothing allocated).
    pub fn addr(&self) -> Ptr {
        if self.len == 0 {
            0
        } else {
            self.base.as_ptr() as Ptr + GUARD as Ptr
        }
    }

    fn data(&self) -> &[u8] {
        // SAFETY: the data lies within the allocation; no launch runs while `self` is borrowed
        // here, so nothing writes it meanwhile.
        unsafe { std::slice::from_raw_parts(self.base.as_ptr().add(GUARD), self.len) }
    }

    fn data_mut(&mut self) -> &mut [u8] {
        // SAFETY: as in `data`, and `&mut self` makes the borrow exclusive.
        unsafe { std::slice::from_raw_parts_mut(self.base.as_ptr().add(GUARD), self.len) }
    }

    /// The first overwritten guard byte, as an offset from the data start, if any.
    fn overwritten(&self) -> Option<isize> {
        let size = Self::layout(self.len).ok()?.size();
        // SAFETY: the whole allocation, read while no launch runs.
        let all = unsafe { std::slice::from_raw_parts(self.base.as_ptr(), size) };
        let bad = |i: usize| all[i] != CANARY[i % 2];
        (0..GUARD)
            .chain(GUARD + self.len..size)
            .find(|&i| bad(i))
            .map(|i| i as isize - GUARD as isize)
    }
}

impl Drop for EmuBuffer {
    fn drop(&mut self) {
        if let Ok(layout) = Self::layout(self.len) {
            // SAFETY: allocated in `new` with this very layout.
            unsafe { alloc::dealloc(self.base.as_ptr(), layout) }
        }
    }
}

/// Runs the CUDA kernel sources on the CPU (see the module docs). For tests; slow.
#[derive(Clone, Copy, Debug, Default)]
pub struct EmuBackend {
    schedule: Schedule,
    plant: Option<&'static CStr>,
}

impl EmuBackend {
    /// The emulator, under the schedule `EIA_EMU_SCHEDULE` names ([`Schedule::from_env`]).
    /// Handles hold only their options: all share the one emulator, which runs one launch at a
    /// time.
    pub fn new() -> Self {
        EmuBackend {
            schedule: Schedule::from_env(),
            plant: None,
        }
    }

    /// This emulator under `schedule`.
    pub fn with_schedule(self, schedule: Schedule) -> Self {
        EmuBackend { schedule, ..self }
    }

    /// This emulator with the test-only bug `bug` planted in the kernels: the code that
    /// `EIA_PLANT(bug)` guards in `kernels/*.cu` runs (only in the emulator; for the GPU
    /// `EIA_PLANT` is false). For tests that prove the sanitizer flags such bugs.
    pub fn with_plant(self, bug: &'static CStr) -> Self {
        EmuBackend {
            plant: Some(bug),
            ..self
        }
    }

    /// Runs one kernel compiled into the emulator by name — an op kernel or one of the
    /// emulator's self-test kernels (`kernels/emu/selftest.cu`) — over `grid` × `block`, then
    /// checks the guard bands of `buffers` (named by their index in errors).
    ///
    /// # Safety
    ///
    /// `params` must be the params struct the kernel takes (`#[repr(C)]`, field for field), and
    /// every address in it must point to live memory — such as an [`EmuBuffer::addr`] — holding
    /// everything the kernel reads or writes there for this grid. The kernel may write into
    /// `buffers` although they are borrowed shared: nothing else reads them meanwhile.
    pub unsafe fn launch_kernel<P: Copy>(
        &self,
        kernel: &str,
        grid: [u32; 3],
        block: [u32; 3],
        params: &P,
        buffers: &[&EmuBuffer],
    ) -> Result<()> {
        // SAFETY: the caller's contract.
        unsafe { self.emulate(kernel, grid, block, params as *const P as *const c_void)? };
        let names: Vec<String> = (0..buffers.len()).map(|i| format!("buffer {i}")).collect();
        let named: Vec<(&str, &EmuBuffer)> = names
            .iter()
            .map(String::as_str)
            .zip(buffers.iter().copied())
            .collect();
        check_guards(kernel, &named)
    }

    /// Runs `kernel` through the emulator with the params struct at `params`.
    ///
    /// # Safety
    ///
    /// As [`EmuBackend::launch_kernel`].
    unsafe fn emulate(
        &self,
        kernel: &str,
        grid: [u32; 3],
        block: [u32; 3],
        params: *const c_void,
    ) -> Result<()> {
        let (schedule, seed) = self.schedule.code();
        let opts = Options {
            plant: self.plant.map_or(std::ptr::null(), CStr::as_ptr),
            seed,
            schedule,
        };
        let name =
            CString::new(kernel).map_err(|_| emu_err(format!("bad kernel name {kernel:?}")))?;
        let mut err = [0 as c_char; 2048];
        // SAFETY: the name (and the plant) are NUL-terminated, grid and block hold three u32 each,
        // opts mirrors EiaEmuOptions and err has the length passed; params and the memory it
        // addresses are the caller's contract.
        let rc = unsafe {
            eia_emu_launch(
                name.as_ptr(),
                grid.as_ptr(),
                block.as_ptr(),
                params,
                &opts,
                err.as_mut_ptr(),
                err.len(),
            )
        };
        if rc == 0 {
            return Ok(());
        }
        // SAFETY: on failure the runtime wrote a NUL-terminated message into err.
        let msg = unsafe { CStr::from_ptr(err.as_ptr()) };
        Err(emu_err(msg.to_string_lossy().into_owned()))
    }

    /// Runs the launches planned for `y` from `inputs`, then checks that no kernel wrote
    /// outside its tensors or into an input. A launch with nothing to write is skipped, as the
    /// CUDA backend skips it.
    fn run(
        &self,
        inputs: &[(&str, &EmuBuffer)],
        y: &mut EmuBuffer,
        plan: impl FnOnce(&[Ptr], Ptr) -> Result<Vec<Launch>>,
    ) -> Result<()> {
        if y.len == 0 {
            return Ok(());
        }
        let ptrs: Vec<Ptr> = inputs.iter().map(|(_, b)| b.addr()).collect();
        let before: Vec<Vec<u8>> = inputs.iter().map(|(_, b)| b.data().to_vec()).collect();
        for l in plan(&ptrs, y.addr())? {
            // SAFETY: the planner built the params of a kernel of its family (kernels/README.md:
            // the Rust struct mirrors the C one) from the addresses above, whose buffers the
            // validated plan sizes and which stay borrowed for the whole launch.
            unsafe { self.emulate(&l.kernel, l.grid, l.block, l.args.as_ptr())? };
            let buffers: Vec<(&str, &EmuBuffer)> = inputs
                .iter()
                .copied()
                .chain([("the output", &*y)])
                .collect();
            check_guards(&l.kernel, &buffers)?;
        }
        for ((name, buf), before) in inputs.iter().zip(before) {
            if buf.data() != before {
                return Err(emu_err(format!("a kernel wrote into its input {name}")));
            }
        }
        Ok(())
    }
}

/// Fails if `kernel` overwrote a guard band of one of `buffers`.
fn check_guards(kernel: &str, buffers: &[(&str, &EmuBuffer)]) -> Result<()> {
    for (name, buf) in buffers {
        if let Some(at) = buf.overwritten() {
            return Err(emu_err(format!(
                "kernel {kernel} wrote outside {name} ({} bytes): at byte offset {at}",
                buf.len
            )));
        }
    }
    Ok(())
}

impl Backend for EmuBackend {
    type Storage = EmuBuffer;

    fn name(&self) -> String {
        "emu (CUDA kernels on the CPU)".to_string()
    }

    /// Fresh memory holds the canary (NaN), not zeros: kernels must write every output.
    fn alloc(&self, desc: &TensorDesc) -> Result<Tensor<EmuBuffer>> {
        Ok(Tensor::from_parts(
            desc.clone(),
            EmuBuffer::new(desc.bytes())?,
        ))
    }

    fn upload(&self, host: &HostTensor) -> Result<Tensor<EmuBuffer>> {
        let buf = EmuBuffer::from_bytes(host.as_bytes())?;
        Ok(Tensor::from_parts(host.desc().clone(), buf))
    }

    fn write(&self, t: &mut Tensor<EmuBuffer>, host: &HostTensor) -> Result<()> {
        super::check_write(t.desc(), host.desc())?;
        t.storage_mut().data_mut().copy_from_slice(host.as_bytes());
        Ok(())
    }

    fn download(&self, t: &Tensor<EmuBuffer>) -> Result<HostTensor> {
        let data = HostData::from_bytes(t.dtype(), t.storage().data());
        Ok(Tensor::from_parts(t.desc().clone(), data))
    }

    fn launch(&self, plan: &Plan, inputs: &[&EmuBuffer], y: &mut EmuBuffer) -> Result<()> {
        // A variadic op's inputs past its named ones go by its last name.
        let names = plan.op.inputs().0;
        let named: Vec<(&str, &EmuBuffer)> = inputs
            .iter()
            .enumerate()
            .map(|(i, &b)| (names[i.min(names.len() - 1)], b))
            .collect();
        self.run(&named, y, |p, y| launch::launches(plan, Arch::SM80, p, y))
    }
}

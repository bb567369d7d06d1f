//! FP16 operands and outputs as f32 for the FP32 kernels, through recycled buffers: widening
//! and rounding run in parallel, and a buffer taken back from an earlier op costs neither the
//! allocator's zeroing nor the page faults of fresh memory. A constant operand (weights) is
//! widened once instead and kept with the tensor ([`weights_f32`], see [`super::derived`]).
//! A parallel task's own scratch (an im2col block, a widened panel, a tile's results) is a
//! [`TaskBuffer`], recycled by the thread that used it.

use std::ops::Deref;
use std::sync::{Arc, Mutex};

use half::f16;
use rayon::prelude::*;

use super::derived::{CpuData, Key};
use super::simd;
use crate::backend::MemoryAccount;
use crate::tensor::HostData;

/// Elements per task when whole tensors are converted in parallel.
const CONVERT_CHUNK: usize = 1 << 15;

/// Most buffers kept for reuse.
const KEPT_BUFFERS: usize = 8;

/// Largest buffer kept for reuse, in elements (256 MiB of f32).
const KEPT_MAX_LEN: usize = 64 << 20;

/// Buffers given back by finished ops, shared by every CPU backend.
static KEPT: Mutex<Kept> = Mutex::new(Kept::new(KEPT_BUFFERS, KEPT_MAX_LEN));

/// A bounded set of f32 buffers kept for reuse: at most `most`, none of over `max_len`
/// elements; when it is full, a buffer given back replaces the smallest kept one if larger.
struct Kept {
    buffers: Vec<Vec<f32>>,
    most: usize,
    max_len: usize,
}

impl Kept {
    const fn new(most: usize, max_len: usize) -> Self {
        Kept {
            buffers: Vec::new(),
            most,
            max_len,
        }
    }

    /// The smallest kept buffer of capacity ≥ `len`, or a new empty one of that capacity.
    fn take(&mut self, len: usize) -> Vec<f32> {
        let kept = &mut self.buffers;
        let best = (0..kept.len())
            .filter(|&i| kept[i].capacity() >= len)
            .min_by_key(|&i| kept[i].capacity());
        best.map_or_else(|| Vec::with_capacity(len), |i| kept.swap_remove(i))
    }

    fn give(&mut self, buffer: Vec<f32>) {
        if buffer.capacity() == 0 || buffer.capacity() > self.max_len {
            return;
        }
        if self.buffers.len() < self.most {
            self.buffers.push(buffer);
        } else if let Some(smallest) = self.buffers.iter_mut().min_by_key(|b| b.capacity()) {
            if smallest.capacity() < buffer.capacity() {
                *smallest = buffer;
            }
        }
    }
}

/// The first `len` values of `buffer`, initialised: zero where never written before, else
/// whatever the last user left (a buffer too small is replaced, its values not copied).
fn values(buffer: &mut Vec<f32>, len: usize) -> &mut [f32] {
    if buffer.capacity() < len {
        *buffer = Vec::new();
    }
    if buffer.len() < len {
        buffer.resize(len, 0.0);
    }
    &mut buffer[..len]
}

/// An f32 buffer that goes back to [`KEPT`] when dropped. Its initialised length is kept;
/// its values are whatever the last user left.
pub(super) struct Scratch(Vec<f32>);

impl Scratch {
    /// The smallest kept buffer of capacity ≥ `len`, or a new empty one.
    pub(super) fn take(len: usize) -> Self {
        Scratch(crate::sync::lock(&KEPT).take(len))
    }

    /// The first `len` values (see [`values`]).
    pub(super) fn values(&mut self, len: usize) -> &mut [f32] {
        values(&mut self.0, len)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let buffer = std::mem::take(&mut self.0);
        crate::sync::lock(&KEPT).give(buffer);
    }
}

/// Most buffers a thread keeps for its next tasks.
const TASK_BUFFERS: usize = 4;

/// Largest buffer a thread keeps, in elements (16 MiB of f32).
const TASK_MAX_LEN: usize = 4 << 20;

thread_local! {
    /// Buffers this thread's finished tasks gave back.
    static TASK_KEPT: std::cell::RefCell<Kept> =
        const { std::cell::RefCell::new(Kept::new(TASK_BUFFERS, TASK_MAX_LEN)) };
}

/// A parallel task's own f32 buffer (`for_each_init`'s state), given back to the thread that
/// used it: the next task there that takes one gets it with its lines still in this core's
/// cache, and neither zeroes nor faults in fresh memory. (Buffers shared by all threads, as
/// [`Scratch`] is, were last written by either core: FP16 pointwise convolutions, whose blocks
/// widen and multiply through two such buffers, ran slower on them than on fresh ones, and
/// faster on these, see `reports/2026-12-05-fp16-direct-outputs-intel.md`.)
pub(super) struct TaskBuffer(Vec<f32>);

impl TaskBuffer {
    /// The smallest of this thread's kept buffers that holds `len` values, or a new one.
    pub(super) fn take(len: usize) -> Self {
        TaskBuffer(TASK_KEPT.with_borrow_mut(|kept| kept.take(len)))
    }

    /// The first `len` values (see [`values`]).
    pub(super) fn values(&mut self, len: usize) -> &mut [f32] {
        values(&mut self.0, len)
    }
}

impl Drop for TaskBuffer {
    fn drop(&mut self) {
        let buffer = std::mem::take(&mut self.0);
        TASK_KEPT.with_borrow_mut(|kept| kept.give(buffer));
    }
}

/// An operand as f32: the FP32 data itself, or FP16 data widened into a scratch buffer.
pub struct F32View<'a>(View<'a>);

enum View<'a> {
    Borrowed(&'a [f32]),
    Widened(Scratch, usize),
    /// Widened once and cached with the tensor.
    Cached(Arc<Vec<f32>>),
}

impl Deref for F32View<'_> {
    type Target = [f32];

    fn deref(&self) -> &[f32] {
        match &self.0 {
            View::Borrowed(v) => v,
            View::Widened(s, len) => &s.0[..*len],
            View::Cached(v) => v,
        }
    }
}

/// The data as f32: borrowed for F32, widened (exactly, in parallel) for F16.
pub fn as_f32(data: &HostData) -> F32View<'_> {
    match data {
        HostData::F32(v) => F32View(View::Borrowed(v)),
        HostData::F16(v) => {
            let mut scratch = Scratch::take(v.len());
            widen(v, &mut scratch.0);
            F32View(View::Widened(scratch, v.len()))
        }
    }
}

/// What [`weights_f32`] caches: the FP16 data widened to f32, whatever the plan.
const WIDENED: &str = "f16 widened to f32";

/// A constant operand as f32, like [`as_f32`], but FP16 data is widened once and the f32 copy
/// kept with the tensor (charged to `account`) while the cache's rules allow.
pub fn weights_f32<'a>(w: &'a CpuData, account: Option<&Arc<dyn MemoryAccount>>) -> F32View<'a> {
    let HostData::F16(_) = w.data() else {
        return as_f32(w);
    };
    let cached = w.derived(&Key::new(WIDENED, &[]), 4 * w.len(), account, |data| {
        let HostData::F16(v) = data else {
            unreachable!("checked above, and the data cannot change while borrowed")
        };
        let mut out = Vec::with_capacity(v.len());
        widen(v, &mut out);
        out
    });
    cached.map_or_else(|| as_f32(w), |v| F32View(View::Cached(v)))
}

/// Widens `v` into the first `v.len()` elements of `out` (capacity ≥ `v.len()`), in parallel.
fn widen(v: &[f16], out: &mut Vec<f32>) {
    if out.len() >= v.len() {
        out[..v.len()]
            .par_chunks_mut(CONVERT_CHUNK)
            .zip(v.par_chunks(CONVERT_CHUNK))
            .for_each(|(d, s)| simd::f16_to_f32(s, d));
    } else {
        // Never-initialised capacity: write it without zeroing it first.
        out.clear();
        out.spare_capacity_mut()[..v.len()]
            .par_chunks_mut(CONVERT_CHUNK)
            .zip(v.par_chunks(CONVERT_CHUNK))
            .for_each(|(d, s)| simd::f16_to_f32_uninit(s, d));
        // SAFETY: the chunks above cover the first `v.len()` elements (the capacity is at least
        // that: the caller's contract, checked by the slice above), and `f16_to_f32_uninit`
        // writes every element it is given.
        unsafe { out.set_len(v.len()) };
    }
}

/// Runs `f` on a recycled buffer of `len` initialised f32 values (whatever an earlier user
/// left in them).
pub fn with_buffer<R>(len: usize, f: impl FnOnce(&mut [f32]) -> R) -> R {
    let mut scratch = Scratch::take(len);
    f(scratch.values(len))
}

/// Runs `f` on an f32 view of `y`, which `f` must write in full: directly for F32, through a
/// scratch buffer rounded once (in parallel) into F16 storage.
pub fn write_f32(y: &mut HostData, f: impl FnOnce(&mut [f32])) {
    match y {
        HostData::F32(y) => f(y),
        HostData::F16(y) => {
            let mut scratch = Scratch::take(y.len());
            let values = scratch.values(y.len());
            f(values);
            values
                .par_chunks(CONVERT_CHUNK)
                .zip(y.par_chunks_mut(CONVERT_CHUNK))
                .for_each(|(s, d)| simd::f32_to_f16(s, d));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{TaskBuffer, TASK_BUFFERS, TASK_MAX_LEN};

    /// This thread's kept task buffers, emptied (tests share threads only one at a time).
    fn emptied() {
        super::TASK_KEPT.with_borrow_mut(|kept| kept.buffers.clear());
    }

    fn kept_capacities() -> Vec<usize> {
        let mut caps: Vec<usize> =
            super::TASK_KEPT.with_borrow(|kept| kept.buffers.iter().map(Vec::capacity).collect());
        caps.sort();
        caps
    }

    #[test]
    fn task_buffers_come_back_to_their_thread_best_fit_first() {
        emptied();
        let (mut small, mut large) = (TaskBuffer::take(100), TaskBuffer::take(1000));
        small.values(100)[7] = 7.0;
        large.values(1000)[9] = 9.0;
        let (small_at, large_at) = (small.0.as_ptr(), large.0.as_ptr());
        drop((small, large));
        assert_eq!(kept_capacities(), [100, 1000]);
        // The smallest that holds the request, its values as the last task left them.
        let mut b = TaskBuffer::take(50);
        assert_eq!(b.0.as_ptr(), small_at);
        assert_eq!(b.values(100)[7], 7.0);
        let mut c = TaskBuffer::take(500);
        assert_eq!(c.0.as_ptr(), large_at);
        assert_eq!(c.values(1000)[9], 9.0);
        // None kept holds 2000: a new one, zeroed.
        let mut d = TaskBuffer::take(2000);
        assert!(d.values(2000).iter().all(|&v| v == 0.0));
        drop((b, c, d));
        // Another thread keeps its own (none yet).
        std::thread::spawn(|| assert!(kept_capacities().is_empty()))
            .join()
            .unwrap();
        assert_eq!(kept_capacities(), [100, 1000, 2000]);
        emptied();
    }

    #[test]
    fn a_buffer_too_small_is_replaced_not_copied() {
        emptied();
        let mut b = TaskBuffer::take(10);
        b.values(10).fill(1.0);
        let grown = b.values(20);
        assert_eq!(grown.len(), 20);
        assert!(
            grown.iter().all(|&v| v == 0.0),
            "the old values are not carried over"
        );
        drop(b);
        emptied();
    }

    #[test]
    fn a_thread_keeps_few_buffers_and_none_huge() {
        emptied();
        let buffers: Vec<TaskBuffer> = (1..=TASK_BUFFERS + 2)
            .map(|i| {
                let mut b = TaskBuffer::take(i * 10);
                b.values(i * 10);
                b
            })
            .collect();
        drop(buffers);
        // The largest ones stay.
        let kept = kept_capacities();
        assert_eq!(kept.len(), TASK_BUFFERS);
        assert_eq!(kept[0], 30);
        emptied();
        let mut huge = TaskBuffer::take(TASK_MAX_LEN + 1);
        huge.values(TASK_MAX_LEN + 1);
        drop(huge);
        assert!(kept_capacities().is_empty());
    }
}

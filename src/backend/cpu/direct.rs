//! Direct CPU convolution with AVX-512 for dense convolutions (one group) whose kernel is larger
//! than 1×1: no im2col matrix, every tap read straight from a padded copy of the input.
//!
//! Each image's input is copied once into a zero-bordered *frame* per channel, split into
//! `stride_h × stride_w` phases (phase `(a, b)` holds padded rows `a, a + sh, …` and columns
//! `b, b + sw, …`), all `wf` columns wide. Output position `(p, q)` is then frame position
//! `p·wf + q`, and kernel tap `(r, s)` reads frame position `p·wf + q + offset(r, s)` of one
//! phase: every tap is the same constant shift for all outputs, whatever the stride.
//!
//! A register tile holds 24 accumulators and sums every (input channel, tap) in registers, in
//! one of two shapes ([`Tile`]), whichever wastes less work on padding for the plan:
//! - `Positions`: `t` vectors of 16 consecutive frame positions × `f` output channels, the
//!   weights broadcast. Consecutive outputs read consecutive inputs, so a row computes all `wf`
//!   frame columns (the last `wf − q` are discarded): best for wide output rows and few output
//!   channels.
//! - `Channels`: `t` output positions × `v` vectors of 16 output channels, the inputs
//!   broadcast: no position is wasted, so small output maps (the deep layers) fill every lane.
//!
//! Weights are packed once per plan as `[k / F][c][r·s][F]` (`F` output channels per block,
//! padded with zeros) and kept with the weight tensor (see [`super::derived`]). Work is cut
//! into (image, block of output rows, block of `F` output channels) items shared by the
//! threads; each computes into a small buffer, then writes its rows of `y` with the
//! convolution's epilogue (bias, residual sum, ReLU or Clip) while they are in cache.

use std::ops::Deref;
use std::sync::Arc;

use half::f16;
use rayon::prelude::*;

use super::conv::Addends;
use super::derived::{CpuData, Key};
use super::scratch::with_buffer;
use super::simd;
use super::Disjoint;
use crate::backend::MemoryAccount;
use crate::dtype::Element;
use crate::ops::ConvPlan;
use crate::tensor::HostData;

/// Output positions one item computes, about: a few output rows.
const ITEM_POSITIONS: usize = 512;

/// Bytes of packed weights per channel chunk: a chunk's weights stay in cache while every tile
/// of an item runs over them.
const CHUNK_WEIGHT_BYTES: usize = 64 << 10;

/// Bytes of frames built at once (images are framed in groups of about this size).
const FRAME_GROUP_BYTES: usize = 8 << 20;

/// Lanes of one AVX-512 vector of f32.
const LANES: usize = 16;

/// What writing one value of a `Channels` tile into `y` (a scalar transpose) costs, in lanes
/// of FMA work.
const TRANSPOSE_LANES: usize = 12;

/// A register tile of 24 accumulators (see the module doc).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Tile {
    /// `t` vectors of 16 consecutive frame positions × `f` output channels.
    Positions { t: usize, f: usize },
    /// `t` output positions × `v` vectors of 16 output channels.
    Channels { t: usize, v: usize },
}

/// The register tiles, in order of preference when they cost the same.
const TILES: [Tile; 6] = [
    Tile::Channels { t: 6, v: 4 },
    Tile::Channels { t: 8, v: 3 },
    Tile::Channels { t: 12, v: 2 },
    Tile::Positions { t: 4, f: 6 },
    Tile::Positions { t: 3, f: 8 },
    Tile::Positions { t: 2, f: 12 },
];

impl Tile {
    /// Output channels per block (`F`).
    fn channels(self) -> usize {
        match self {
            Tile::Positions { f, .. } => f,
            Tile::Channels { v, .. } => v * LANES,
        }
    }

    /// Positions an item of `rows` output rows of `q` computes (frame positions, `wf` per row,
    /// or output positions): whole tiles.
    fn positions(self, rows: usize, wf: usize, q: usize) -> usize {
        match self {
            Tile::Positions { t, .. } => (rows * wf).next_multiple_of(t * LANES),
            Tile::Channels { t, .. } => (rows * q).next_multiple_of(t),
        }
    }
}

/// Whether the direct kernel computes `plan` on this CPU.
pub fn applies(plan: &ConvPlan) -> bool {
    cfg!(target_arch = "x86_64")
        && plan.group == 1
        && plan.r * plan.s > 1
        && [plan.n, plan.c, plan.k, plan.p, plan.q]
            .iter()
            .all(|&d| d > 0)
        && simd::level() >= simd::Level::Avx512
}

/// The frame geometry of a plan and its register tile.
struct Geometry {
    /// Frame rows and columns of one phase.
    hf: usize,
    wf: usize,
    /// Elements of one channel's frame: all its phases.
    chan: usize,
    /// Frame offset of each tap `(r, s)`, in `r·s + s` order, from the channel's frame start.
    taps: Vec<usize>,
    /// Output rows per item.
    rows: usize,
    tile: Tile,
    /// Output channels per block: `tile.channels()`.
    f: usize,
}

impl Geometry {
    fn new(plan: &ConvPlan) -> Self {
        let ([sh, sw], [dh, dw]) = (plan.stride, plan.dilation);
        let hf = plan.p + (plan.r - 1) * dh / sh;
        let wf = plan.q + (plan.s - 1) * dw / sw;
        let plane = hf * wf;
        let taps: Vec<usize> = (0..plan.r * plan.s)
            .map(|rs| {
                let (dy, dx) = (rs / plan.s * dh, rs % plan.s * dw);
                ((dy % sh) * sw + dx % sw) * plane + dy / sh * wf + dx / sw
            })
            .collect();
        let rows = (ITEM_POSITIONS / wf).clamp(1, plan.p);
        // The tile with the least work: every computed value (positions rounded up to whole
        // tiles per item, output channels to whole blocks) costs c·r·s lanes of FMA, plus its
        // copy into `y`: a vector copy for `Positions`, a scalar transpose for `Channels`
        // (which matters where c·r·s is small, as in a network's first convolution).
        let work = |tile: &Tile| {
            let positions: usize = (0..plan.p)
                .step_by(rows)
                .map(|p0| tile.positions((plan.p - p0).min(rows), wf, plan.q))
                .sum();
            let copy = match tile {
                Tile::Positions { .. } => 1,
                Tile::Channels { .. } => TRANSPOSE_LANES,
            };
            positions * plan.k.next_multiple_of(tile.channels()) * (plan.c * taps.len() + copy)
        };
        let tile = TILES
            .into_iter()
            .min_by_key(work)
            .expect("TILES is not empty");
        Geometry {
            hf,
            wf,
            chan: sh * sw * plane,
            taps,
            rows,
            tile,
            f: tile.channels(),
        }
    }

    /// Elements past the last channel's frame that a tile may read: a `Positions` tile's last
    /// position is under `p·wf + 4·16`, and a tap reaches at most `chan − p·wf + wf` further
    /// (a `Channels` tile reads output positions only, inside the frame).
    fn slack(&self) -> usize {
        4 * LANES + self.wf
    }
}

/// The weights packed for the direct kernel, cached with the tensor or packed for this call.
pub enum Packed {
    Cached(Arc<Vec<f32>>),
    Owned(Vec<f32>),
}

impl Deref for Packed {
    type Target = [f32];

    fn deref(&self) -> &[f32] {
        match self {
            Packed::Cached(v) => v,
            Packed::Owned(v) => v,
        }
    }
}

/// `plan`'s weights `[k, c, r, s]` packed for the direct kernel (see the module doc): the form
/// cached with the tensor (charged to `account`) where the cache's rules allow, else packed now.
pub fn packed_weights(
    plan: &ConvPlan,
    w: &CpuData,
    account: Option<&Arc<dyn MemoryAccount>>,
) -> Packed {
    let f = Geometry::new(plan).f;
    let len = plan.k.next_multiple_of(f) * plan.c * plan.r * plan.s;
    let key = Key::new("direct conv weights", &[f, plan.k, plan.c, plan.r, plan.s]);
    match w.derived(&key, 4 * len, account, |data| pack(plan, f, data)) {
        Some(cached) => Packed::Cached(cached),
        None => Packed::Owned(pack(plan, f, w.data())),
    }
}

/// Packs `[k, c, r, s]` weights (FP32 or FP16) as `[k / f][c][r·s][f]` f32, zero-padded.
fn pack(plan: &ConvPlan, f: usize, w: &HostData) -> Vec<f32> {
    fn packed<T: Element>(plan: &ConvPlan, f: usize, w: &[T]) -> Vec<f32> {
        let (c, rs) = (plan.c, plan.r * plan.s);
        let kp = plan.k.next_multiple_of(f);
        let mut out = vec![0.0; kp * c * rs];
        out.par_chunks_mut(c * rs * f)
            .enumerate()
            .for_each(|(kb, block)| {
                for (i, v) in block.iter_mut().enumerate() {
                    let (ci, t, fi) = (i / (rs * f), i / f % rs, i % f);
                    let k = kb * f + fi;
                    if k < plan.k {
                        *v = w[(k * c + ci) * rs + t].to_f32();
                    }
                }
            });
        out
    }
    match w {
        HostData::F32(v) => packed(plan, f, v),
        HostData::F16(v) => packed(plan, f, v),
    }
}

/// Computes `plan` (for which [`applies`] holds) in FP32 from the input `x` (FP32, or FP16
/// widened as it is framed), the weights as [`packed_weights`] returns them, the bias and the
/// residual sum. `y` is fully written.
pub fn conv(plan: &ConvPlan, x: &HostData, w: &[f32], add: Addends, y: &mut [f32]) {
    match x {
        HostData::F32(x) => conv_from(plan, x, w, add, y),
        HostData::F16(x) => conv_from(plan, x, w, add, y),
    }
}

/// Input elements, widened to f32 as the frames copy them.
trait Widen: Element {
    /// `dst = src` as f32 (equal lengths).
    fn widen(src: &[Self], dst: &mut [f32]);
}

impl Widen for f32 {
    fn widen(src: &[f32], dst: &mut [f32]) {
        dst.copy_from_slice(src);
    }
}

impl Widen for f16 {
    fn widen(src: &[f16], dst: &mut [f32]) {
        simd::f16_to_f32(src, dst);
    }
}

/// [`conv`] for input elements `T`.
fn conv_from<T: Widen>(plan: &ConvPlan, x: &[T], w: &[f32], add: Addends, y: &mut [f32]) {
    if y.is_empty() {
        return;
    }
    let g = Geometry::new(plan);
    let image_frame = plan.c * g.chan;
    let group = (FRAME_GROUP_BYTES / (4 * image_frame)).clamp(1, plan.n);
    let pkq = plan.k * plan.p * plan.q;
    with_buffer(group * image_frame + g.slack(), |frames| {
        for n0 in (0..plan.n).step_by(group) {
            let images = group.min(plan.n - n0);
            frame(
                plan,
                &g,
                &x[n0 * plan.c * plan.h * plan.w..],
                images,
                frames,
            );
            let part = n0 * pkq..(n0 + images) * pkq;
            let add = Addends {
                sum: add.sum.map(|s| &s[part.clone()]),
                ..add
            };
            compute(plan, &g, frames, w, add, &mut y[part]);
        }
    });
}

/// Writes the frames of `images` images of `x` into `frames` (`[image][c][phase][hf][wf]`),
/// zero wherever a frame position falls into padding.
fn frame<T: Widen>(plan: &ConvPlan, g: &Geometry, x: &[T], images: usize, frames: &mut [f32]) {
    let ([sh, sw], [pt, pl]) = (plan.stride, plan.pad);
    let hw = plan.h * plan.w;
    frames[..images * plan.c * g.chan]
        .par_chunks_mut(g.chan)
        .enumerate()
        .for_each(|(nc, chan)| {
            let xc = &x[nc * hw..][..hw];
            for (phase, plane) in chan.chunks_exact_mut(g.hf * g.wf).enumerate() {
                let (a, b) = (phase / sw, phase % sw);
                for (i, row) in plane.chunks_exact_mut(g.wf).enumerate() {
                    match (i * sh + a).checked_sub(pt).filter(|&ih| ih < plan.h) {
                        Some(ih) => frame_row(&xc[ih * plan.w..][..plan.w], b, sw, pl, row),
                        None => row.fill(0.0),
                    }
                }
            }
        });
}

/// Frame row `row` from input row `src`: `row[j]` is padded column `j·sw + b`, which is input
/// column `j·sw + b − pl` where that is inside the row, else zero.
fn frame_row<T: Widen>(src: &[T], b: usize, sw: usize, pl: usize, row: &mut [f32]) {
    // Frame columns lo..hi are inside the input: lo·sw + b ≥ pl and hi·sw + b ≤ pl + w − 1.
    let lo = pl.saturating_sub(b).div_ceil(sw).min(row.len());
    let hi = (pl + src.len())
        .saturating_sub(b)
        .div_ceil(sw)
        .clamp(lo, row.len());
    row[..lo].fill(0.0);
    row[hi..].fill(0.0);
    if lo == hi {
        return;
    }
    let first = lo * sw + b - pl;
    if sw == 1 {
        T::widen(&src[first..first + hi - lo], &mut row[lo..hi]);
    } else {
        for (v, &s) in row[lo..hi].iter_mut().zip(src[first..].iter().step_by(sw)) {
            *v = s.to_f32();
        }
    }
}

/// Every (image, row block, output channel block) item of one group of framed images into its
/// part of `y` (`[images, k, p, q]`).
fn compute(plan: &ConvPlan, g: &Geometry, frames: &[f32], w: &[f32], add: Addends, y: &mut [f32]) {
    let (pq, rs) = (plan.p * plan.q, plan.r * plan.s);
    let images = y.len() / (plan.k * pq);
    let blocks = plan.p.div_ceil(g.rows);
    let kbs = plan.k.div_ceil(g.f);
    let chunk = (CHUNK_WEIGHT_BYTES / (4 * rs * g.f)).clamp(1, plan.c);
    assert!(w.len() >= kbs * g.f * plan.c * rs);
    assert!(frames.len() >= images * plan.c * g.chan + g.slack());
    let out = Disjoint::new(y);
    (0..images * blocks * kbs).into_par_iter().for_each_init(
        || (Vec::new(), Vec::new()),
        |(buf, bases): &mut (Vec<f32>, Vec<usize>), item| {
            let (ni, block, kb) = (item / (blocks * kbs), item / kbs % blocks, item % kbs);
            let p0 = block * g.rows;
            let rows = g.rows.min(plan.p - p0);
            let positions = g.tile.positions(rows, g.wf, plan.q);
            buf.resize(g.f * positions, 0.0);
            let x = &frames[ni * plan.c * g.chan..][..plan.c * g.chan + g.slack()];
            let wk = &w[kb * g.f * plan.c * rs..][..g.f * plan.c * rs];
            if let Tile::Channels { .. } = g.tile {
                // Frame offset of each output position, the last repeated to a whole tile.
                let last = rows * plan.q - 1;
                bases.clear();
                bases.extend((0..positions).map(|i| {
                    let i = i.min(last);
                    (p0 + i / plan.q) * g.wf + i % plan.q
                }));
            }
            for c0 in (0..plan.c).step_by(chunk) {
                let (xc, wc) = (&x[c0 * g.chan..], &wk[c0 * rs * g.f..]);
                let cn = chunk.min(plan.c - c0);
                // SAFETY (both): `applies` checked AVX-512F. A `Positions` tile reads the `cn`
                // channel frames of `xc` at j + p0·wf + tap + (0..t·16): at most
                // (cn − 1)·chan + positions + p0·wf + chan + wf − 1 < cn·chan + slack, inside
                // `x` (bounded above); a `Channels` tile reads them at an output position's
                // frame offset + tap, inside each channel's frame. `wc` holds cn·rs·f weights.
                // Each tile writes its t·16 × f (or t × f) values inside `buf`.
                match g.tile {
                    Tile::Positions { t, .. } => {
                        for j in (0..positions).step_by(t * LANES) {
                            unsafe {
                                tile(
                                    g,
                                    xc[p0 * g.wf + j..].as_ptr(),
                                    &[],
                                    wc,
                                    cn,
                                    buf[j..].as_mut_ptr(),
                                    positions,
                                    c0 > 0,
                                );
                            }
                        }
                    }
                    Tile::Channels { t, .. } => {
                        for j in (0..positions).step_by(t) {
                            unsafe {
                                tile(
                                    g,
                                    xc.as_ptr(),
                                    &bases[j..j + t],
                                    wc,
                                    cn,
                                    buf[j * g.f..].as_mut_ptr(),
                                    g.f,
                                    c0 > 0,
                                );
                            }
                        }
                    }
                }
            }
            for fi in 0..g.f {
                let k = kb * g.f + fi;
                if k >= plan.k {
                    break;
                }
                // SAFETY: rows p0..p0 + rows of image ni, channel k: inside y, written by this
                // item only.
                let at = ((ni * plan.k + k) * plan.p + p0) * plan.q;
                let dst = unsafe { out.slice(at, rows * plan.q) };
                for (pr, row) in dst.chunks_exact_mut(plan.q).enumerate() {
                    match g.tile {
                        Tile::Positions { .. } => {
                            row.copy_from_slice(&buf[fi * positions + pr * g.wf..][..plan.q])
                        }
                        Tile::Channels { .. } => {
                            let computed = buf[(pr * plan.q * g.f + fi)..].iter().step_by(g.f);
                            row.iter_mut().zip(computed).for_each(|(v, &c)| *v = c);
                        }
                    }
                    add.apply(plan, k, at + pr * plan.q, row);
                }
            }
        },
    );
}

/// One register tile (`g.tile`), summed over `cn` channel frames of `x` (`chan` apart) and
/// every tap, added to (`accumulate`) or stored into `out`:
/// - `Positions`: `f` output channels × `t·16` frame positions from `x` (at the tile's first
///   position), into `f` rows `ld` apart (`bases` unused);
/// - `Channels`: `t` output positions (frame offsets `bases` into `x`) × `f = 16·v` output
///   channels, into `t` rows of `f` (`ld` unused).
///
/// # Safety
/// The CPU must support AVX-512F; every input the tile reads (`x + c·chan + tap + (0..t·16)`,
/// or `x + c·chan + base + tap`, for c < cn) must be readable, `w` must hold `cn·r·s·f` values
/// and every output it writes (`out + fi·ld + (0..t·16)` for fi < f, or `out + (0..t·f)`) must
/// be writable (and readable when `accumulate`).
#[allow(clippy::too_many_arguments)]
unsafe fn tile(
    g: &Geometry,
    x: *const f32,
    bases: &[usize],
    w: &[f32],
    cn: usize,
    out: *mut f32,
    ld: usize,
    accumulate: bool,
) {
    debug_assert!(w.len() >= cn * g.taps.len() * g.f);
    let (chan, taps, w) = (g.chan, &g.taps[..], w.as_ptr());
    #[cfg(target_arch = "x86_64")]
    // SAFETY: the caller's contract.
    unsafe {
        use avx512::{channels, positions};
        match g.tile {
            Tile::Positions { t: 4, f: 6 } => {
                positions::<4, 6>(x, chan, taps, w, cn, out, ld, accumulate)
            }
            Tile::Positions { t: 3, f: 8 } => {
                positions::<3, 8>(x, chan, taps, w, cn, out, ld, accumulate)
            }
            Tile::Positions { t: 2, f: 12 } => {
                positions::<2, 12>(x, chan, taps, w, cn, out, ld, accumulate)
            }
            Tile::Channels { t: 6, v: 4 } => {
                channels::<6, 4>(x, bases, chan, taps, w, cn, out, accumulate)
            }
            Tile::Channels { t: 8, v: 3 } => {
                channels::<8, 3>(x, bases, chan, taps, w, cn, out, accumulate)
            }
            Tile::Channels { t: 12, v: 2 } => {
                channels::<12, 2>(x, bases, chan, taps, w, cn, out, accumulate)
            }
            _ => unreachable!("the tile is one of TILES"),
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    unreachable!("`applies` is false off x86-64");
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    use super::LANES;

    /// [`super::tile`] for a `T × F` tile, with the taps' offsets given.
    ///
    /// # Safety
    /// As [`super::tile`].
    #[target_feature(enable = "avx512f")]
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn positions<const T: usize, const F: usize>(
        x: *const f32,
        chan: usize,
        taps: &[usize],
        w: *const f32,
        cn: usize,
        out: *mut f32,
        ld: usize,
        accumulate: bool,
    ) {
        // SAFETY (whole body): every pointer offset stays inside the extents of the contract.
        unsafe {
            let mut acc = [[_mm512_setzero_ps(); T]; F];
            if accumulate {
                for (fi, row) in acc.iter_mut().enumerate() {
                    for (i, a) in row.iter_mut().enumerate() {
                        *a = _mm512_loadu_ps(out.add(fi * ld + i * LANES));
                    }
                }
            }
            let mut wp = w;
            for c in 0..cn {
                let xc = x.add(c * chan);
                for &off in taps {
                    let xp = xc.add(off);
                    let mut xv = [_mm512_setzero_ps(); T];
                    for (i, v) in xv.iter_mut().enumerate() {
                        *v = _mm512_loadu_ps(xp.add(i * LANES));
                    }
                    for (fi, row) in acc.iter_mut().enumerate() {
                        let b = _mm512_set1_ps(*wp.add(fi));
                        for (a, &v) in row.iter_mut().zip(&xv) {
                            *a = _mm512_fmadd_ps(v, b, *a);
                        }
                    }
                    wp = wp.add(F);
                }
            }
            for (fi, row) in acc.iter().enumerate() {
                for (i, &a) in row.iter().enumerate() {
                    _mm512_storeu_ps(out.add(fi * ld + i * LANES), a);
                }
            }
        }
    }

    /// [`super::tile`] for a `T × 16·V` tile, with the taps' offsets given.
    ///
    /// # Safety
    /// As [`super::tile`].
    #[target_feature(enable = "avx512f")]
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn channels<const T: usize, const V: usize>(
        x: *const f32,
        bases: &[usize],
        chan: usize,
        taps: &[usize],
        w: *const f32,
        cn: usize,
        out: *mut f32,
        accumulate: bool,
    ) {
        let f = V * LANES;
        // SAFETY (whole body): every pointer offset stays inside the extents of the contract.
        unsafe {
            let mut acc = [[_mm512_setzero_ps(); V]; T];
            if accumulate {
                for (i, row) in acc.iter_mut().enumerate() {
                    for (v, a) in row.iter_mut().enumerate() {
                        *a = _mm512_loadu_ps(out.add(i * f + v * LANES));
                    }
                }
            }
            let mut wp = w;
            for c in 0..cn {
                let xc = x.add(c * chan);
                let at: [*const f32; T] = std::array::from_fn(|i| xc.add(bases[i]));
                for &off in taps {
                    let wv: [__m512; V] =
                        std::array::from_fn(|v| _mm512_loadu_ps(wp.add(v * LANES)));
                    for (row, &xp) in acc.iter_mut().zip(&at) {
                        let b = _mm512_set1_ps(*xp.add(off));
                        for (a, &wv) in row.iter_mut().zip(&wv) {
                            *a = _mm512_fmadd_ps(wv, b, *a);
                        }
                    }
                    wp = wp.add(f);
                }
            }
            for (i, row) in acc.iter().enumerate() {
                for (v, &a) in row.iter().enumerate() {
                    _mm512_storeu_ps(out.add(i * f + v * LANES), a);
                }
            }
        }
    }
}

//! Direct CPU convolution with AVX-512 for dense convolutions (one group) larger than 1×1 or
//! strided, and for pointwise ones (1×1, stride 1, unpadded) on small maps with many input
//! channels or with few output channels (see [`applies`]): no im2col matrix, every tap read
//! straight from a padded copy of the input (or, for a pointwise convolution's FP32 input, the
//! input itself).
//!
//! Each image's input is copied once into a zero-bordered *frame* per channel, split into
//! `stride_h × stride_w` phases (phase `(a, b)` holds padded rows `a, a + sh, …` and columns
//! `b, b + sw, …`; only those up to the last one a tap reads are built), all `wf` columns wide. Output position `(p, q)` is then frame position
//! `p·wf + q`, and kernel tap `(r, s)` reads frame position `p·wf + q + offset(r, s)` of one
//! phase: every tap is the same constant shift for all outputs, whatever the stride. (A strided
//! `Channels` tile over 16 input channels or more reads an unphased frame instead, the padded
//! input itself, output position `(p, q)` at `p·sh·wf + q·sw`: see [`Geometry::unphased`].)
//!
//! A register tile holds up to 24 accumulators and sums every (input channel, tap) in registers,
//! in one of two shapes ([`Tile`]), whichever wastes less work on padding for the plan:
//! - `Positions`: `t` vectors of 16 consecutive frame positions × `f` output channels, the
//!   weights broadcast. Consecutive outputs read consecutive inputs, so a row computes all `wf`
//!   frame columns (the last `wf − q` are discarded): best for wide output rows and few output
//!   channels. Lanes past an item's last position are masked, neither read nor written.
//! - `Channels`: 6 output positions × up to 4 vectors of 16 output channels, the inputs
//!   broadcast: no position is wasted, so small output maps (the deep layers) fill every lane;
//!   its values reach `y` through a 16 × 16 vector transpose. Its blocks are as even as they can
//!   be (96 channels: two of 3 vectors), and a block computes only the vectors its channels
//!   fill (160 channels: 4, 4 and 2).
//!
//! Weights are packed once per plan as `[k / F][c][r·s][F]` (`F` output channels per block,
//! padded with zeros), from a cache line so that a `Channels` tile's weight loads never split,
//! and kept with the weight tensor (see [`super::derived`]). Work is cut into (image, block of
//! output rows, group of blocks of `F` output channels) items shared by the threads. Each tile
//! runs for every block of its item's group in turn, so its input stays in L1 (a `Positions`
//! tile for the first block prefetches the next tile's input); a `Channels`
//! tile, which reads more weights than input, has groups of few blocks, down to one, whose
//! weights stay in L1 instead (see [`split`]; it also prefetches a share of the weights read
//! next, see [`Weights`]). Where `y` is FP32, or FP16 and one channel chunk holds every input
//! channel (the stems: tiles then never add to what they stored), `Positions` tiles write `y`,
//! each frame row's first `q` positions onto an output row (a vector crossing a row's end
//! stored in two masked parts, [`Wrap`]; frame rows of at least 16), FP16 rounded in the
//! register; otherwise tiles write a small buffer, copied
//! into `y` (`Channels` tiles: transposed), an FP16 `y` rounded on the way (no FP32 copy of the
//! whole output). The convolution's epilogue (bias, residual sum, ReLU or Clip) is applied in
//! registers: by `Positions` tiles as they store (the sum only where they write `y`), by the
//! transposes of `Channels` tiles; a `Positions` buffer with a residual sum is finished by a pass
//! over each of its rows as it is copied.
//!
//! Inside a model's program, activations between convolutions may be blocked
//! (`[n][c/16][h·w][16]`, see [`super::blocked`]): then the tile is always `Channels`, a blocked
//! input is framed blocked (sixteen channels per frame position, the taps' offsets and the
//! tile's positions scaled by sixteen; one phase: unphased, or a strided 1×1 convolution's
//! input subsampled), and a blocked output takes each of a tile's vectors as it is — written by
//! the tiles themselves in FP32 (the epilogue applied by the last chunk), copied from the buffer
//! vector by vector in FP16 — with no transpose.

use std::ops::{Deref, DerefMut};
use std::sync::Arc;

use rayon::prelude::*;

use super::blocked::{Layouts, BLOCK};
use super::conv::{is_pointwise, Addends};
use super::derived::{CpuData, Key};
use super::scratch::{as_f32, with_buffer, TaskBuffer};
use super::simd;
use super::{narrow, values, Disjoint, Widen};
use crate::backend::MemoryAccount;
use crate::dtype::{DType, Element};
use crate::ops::{Clamp, ConvPlan};
use crate::tensor::HostData;

/// Output positions one item computes, about: a few output rows.
const ITEM_POSITIONS: usize = 512;

/// Bytes of packed weights per channel chunk, at most: a chunk's weights for all of an item's
/// output channel blocks stay in L2 while its tiles run over them.
const CHUNK_WEIGHT_BYTES: usize = 256 << 10;

/// Bytes of input one tile reads per channel chunk, at most: they stay in L1 while the tile runs
/// for each of the item's output channel blocks.
const TILE_INPUT_BYTES: usize = 16 << 10;

/// Bytes of one output channel block's packed weights per channel chunk, at most, where that
/// leaves chunks of at least [`BLOCK_CHUNK_MIN_CHANNELS`] channels: a tile re-reads its block's
/// chunk once per pass, and in L1 it stays there (3×3 convolutions at C = 64 to 512, 56×56 to
/// 14×14, one thread: 0.94–0.96× the time against chunks sized for L2 only; a 7×7 convolution
/// over 3 channels cut into chunks of 2 and 1 channels took 1.03–1.06× the time, so it is not
/// cut).
const BLOCK_CHUNK_WEIGHT_BYTES: usize = 32 << 10;

/// See [`BLOCK_CHUNK_WEIGHT_BYTES`].
const BLOCK_CHUNK_MIN_CHANNELS: usize = 8;

/// Multiply-adds a `Channels` tile's item holds at least, where its group of output channel
/// blocks is cut down (see [`split`]): ResNet-50 at batch 8 took 0.95× the time with one block
/// per item instead of all 32 (its 1×1 convolutions with 2048 output channels 0.78–0.81×: with
/// every block in one item, chunks of 32 channels streamed the weights from L2), MobileNetV2's
/// 96 → 576 expansions at 14×14 (1.2 million per block) 0.85–0.90×; but its 160 → 960
/// expansions at 7×7 (0.5 million per block) took 1.2× the time with one block per item
/// instead of two to five (Intel Xeon model 207, two threads, `eia infer --profile`).
const CHANNELS_ITEM_TERMS: usize = 1_000_000;

/// Work items per thread, about, where the output channel blocks are split for them.
const ITEMS_PER_THREAD: usize = 4;

/// How far ahead of its own columns a `Channels` tile's transpose into a planar `y` prefetches
/// the lines it will write (two transposes on): its stores waited for their lines (a third of
/// `transpose`'s samples on the instruction after its store, `perf annotate`), and
/// `conv1_7x7s2` at batch 8, whose 25 MB output stays in no cache, spent 19.8% of its samples in
/// `transpose`, 12.4% with the prefetch (Intel Xeon model 207, `perf record` of `eia run`).
const TRANSPOSE_AHEAD: usize = 2 * LANES;

/// Bytes of frames built at once (images are framed in groups of about this size).
const FRAME_GROUP_BYTES: usize = 8 << 20;

/// Lanes of one AVX-512 vector of f32.
const LANES: usize = 16;

/// What writing one value of a `Channels` tile into `y` (a 16×16 vector transpose) costs, in lanes
/// of FMA work.
const TRANSPOSE_LANES: usize = 4;

/// Fewest input channels for which a strided `Channels` tile reads an unphased frame (see
/// [`Geometry::unphased`]). A stem's few channels stay in phases: unphased, `conv1_7x7s2`
/// took 1.07× the time (Intel Xeon model 207; `benches/ab.py`, n1, and n8 in FP32). (Not measured
/// apart: its framing, shared out by (image, channel, row phase), then has three items for the
/// threads instead of six.)
const UNPHASED_MIN_CHANNELS: usize = 16;

/// Fewest terms per output (`c·r·s`) of a convolution that reads or writes blocked activations:
/// below, a `Channels` tile spends more on broadcasts and transposes than on its sums, and the
/// GEMM lowering was faster (MobileNetV2's 16 → 96 and 32 → 192 expansions at 112×112 and
/// 28×28: 1.32–1.53× the time reading a blocked input; `eia infer --profile`, Intel Xeon
/// model 207).
const BLOCKED_MIN_TERMS: usize = 64;

/// Fewest output channels of a convolution that reads or writes blocked activations: with
/// fewer, a `Channels` tile fills less than its four vectors (MobileNetV2's 32 → 16 projection
/// at 112×112 writing blocked: 1.56× the time).
const BLOCKED_MIN_CHANNELS: usize = 64;

/// Fewest terms per output (`c·r·s`) of a convolution that reads a blocked input into a planar
/// output: ResNet-50's 256 → 64 reductions at 56×56 did so in 0.73–0.78× the time of the GEMM
/// lowering on a planar input, MobileNetV2's 64 → 384 and 96 → 576 expansions at 14×14 in
/// 1.14–1.21× (`eia infer --profile`, Intel Xeon model 207).
const BLOCKED_PLANAR_MIN_TERMS: usize = 192;

/// Fewest positions per channel (a 32×32 map) of a planar input that a `Channels` tile
/// prefetches two lines further ahead in: ResNet-50's 64 → 256 expansions at 56×56, batch 8,
/// took 0.87× the time; a 7×7 reduction, where that reaches past the map, 1.13×.
const FAR_PREFETCH_MIN_POSITIONS: usize = 1024;

/// A register tile of 24 accumulators (see the module doc).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Tile {
    /// `t` vectors of 16 consecutive frame positions × `f` output channels.
    Positions { t: usize, f: usize },
    /// `t` output positions × `v` vectors of 16 output channels.
    Channels { t: usize, v: usize },
}

/// The register tiles, in order of preference when they cost the same. (`Channels` tiles of 8 × 3
/// and 12 × 2 vectors measured 15–40% slower than 6 × 4 on Zen 4 for the same work: more
/// broadcasts per FMA.)
const TILES: [Tile; 4] = [
    Tile::Channels { t: 6, v: 4 },
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

    /// The tile for `k` output channels: a `Channels` tile of as few vectors as leave the
    /// number of blocks unchanged, so that the blocks are as even as they can be (96 channels:
    /// 2 blocks of 3 vectors, not 4 + 2, which left one of two threads a third of the work).
    fn even(self, k: usize) -> Self {
        match self {
            Tile::Positions { .. } => self,
            Tile::Channels { t, v } => {
                let vectors = k.div_ceil(LANES).max(1);
                Tile::Channels {
                    t,
                    v: vectors.div_ceil(vectors.div_ceil(v)),
                }
            }
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

/// Pointwise convolutions with output maps up to this many positions and at least
/// [`POINTWISE_MIN_CHANNELS`] input channels run here: the GEMM lowering's tiles waste lanes on
/// such maps, and with few input channels the GEMM measured faster (MobileNetV2's 14×14
/// expansions, ResNet-50's 56×56 layers: `eia infer --profile`, `eia run`, Zen 4; MobileNetV2's
/// 16 → 96 expansion at 112×112, one thread: 1.09–1.51× the GEMM's time, the output stores and
/// epilogue about 40% of the kernel's profile, 1.1–1.6× slower again without the tiles' write
/// prefetch, and no faster prefetching the next block's lines).
const POINTWISE_MAX_POSITIONS: usize = 196;

/// See [`POINTWISE_MAX_POSITIONS`].
const POINTWISE_MIN_CHANNELS: usize = 128;

/// Pointwise FP32 convolutions of at most this many output channels, and at least four times
/// as many input channels, run here on any map: the GEMM lowering packs the input for a
/// product that uses each value only `k` times. MobileNetV2's projections (96 and 144 → 24 at
/// 56×56, 144 and 192 → 32 at 28×28) took 0.78–0.91× the GEMM's time (`eia infer --profile`,
/// Intel Xeon model 207, two threads); in FP16, whose direct kernel widens the whole input
/// first, 1.16–1.85×.
const THIN_MAX_CHANNELS: usize = 32;

/// Whether the direct kernel computes `plan` on this CPU: dense convolutions larger than 1×1,
/// strided 1×1 ones (ResNet's downsampling shortcuts: their frame is the one phase they read;
/// 15–25% faster than the GEMM lowering on ResNet-50's three, `eia infer`, one thread, Zen 4),
/// the pointwise ones above, and thin projections ([`THIN_MAX_CHANNELS`]).
pub fn applies(plan: &ConvPlan) -> bool {
    let pointwise = is_pointwise(plan)
        && (plan.p * plan.q <= POINTWISE_MAX_POSITIONS && plan.c >= POINTWISE_MIN_CHANNELS
            || thin(plan));
    computes(plan) && (plan.r * plan.s > 1 || pointwise || plan.stride != [1, 1])
}

/// Whether pointwise `plan` is a thin FP32 projection (see [`THIN_MAX_CHANNELS`]).
fn thin(plan: &ConvPlan) -> bool {
    plan.dtype == DType::F32 && plan.k <= THIN_MAX_CHANNELS && plan.c >= 4 * plan.k
}

/// Whether the direct kernel can compute `plan` on this CPU at all: one group, no empty
/// dimension, AVX-512 (F; FP16 outputs are stored with BW and VL).
fn computes(plan: &ConvPlan) -> bool {
    #[cfg(target_arch = "x86_64")]
    let cpu = super::avx512::supported();
    #[cfg(not(target_arch = "x86_64"))]
    let cpu = false;
    cpu && plan.group == 1
        && [plan.n, plan.c, plan.k, plan.p, plan.q]
            .iter()
            .all(|&d| d > 0)
}

/// Whether the direct kernel computes `plan` from a blocked input (see [`super::blocked`]):
/// whole blocks of input channels, and not a convolution the Winograd kernel computes faster
/// (ResNet-50's 3×3 layers at 56×56 and 28×28 took 1.21–1.26× the time on the direct kernel
/// blocked: `eia infer --profile`, Intel Xeon model 207).
pub fn reads_blocked(plan: &ConvPlan) -> bool {
    blocks(plan) && plan.c.is_multiple_of(BLOCK)
}

/// Whether the direct kernel computes `plan` into a blocked output: whole blocks of output
/// channels (and not a Winograd convolution, as [`reads_blocked`]).
pub fn writes_blocked(plan: &ConvPlan) -> bool {
    blocks(plan) && plan.k.is_multiple_of(BLOCK)
}

/// Whether a convolution that reads a blocked input has terms enough per output (`c·r·s`) to
/// write a planar output through its tiles' transposes at no loss (see
/// [`BLOCKED_PLANAR_MIN_TERMS`]).
pub fn reads_blocked_into_planar(plan: &ConvPlan) -> bool {
    plan.c * plan.r * plan.s >= BLOCKED_PLANAR_MIN_TERMS
}

/// See [`reads_blocked`]: also not a convolution of fewer than [`BLOCKED_MIN_TERMS`] terms per
/// output or [`BLOCKED_MIN_CHANNELS`] output channels.
fn blocks(plan: &ConvPlan) -> bool {
    #[cfg(target_arch = "x86_64")]
    let winograd = super::winograd::applies(plan);
    #[cfg(not(target_arch = "x86_64"))]
    let winograd = false;
    computes(plan)
        && !winograd
        && plan.c * plan.r * plan.s >= BLOCKED_MIN_TERMS
        && plan.k >= BLOCKED_MIN_CHANNELS
}

/// The frame geometry of a plan and its register tile.
struct Geometry {
    /// Frame rows and columns of one phase.
    hf: usize,
    wf: usize,
    /// Elements of one channel's frame: its phases up to the last one a tap reads.
    chan: usize,
    /// Frame offset of each tap `(r, s)`, in `r·s + s` order, from the channel's frame start.
    taps: Vec<usize>,
    /// Output rows per item.
    rows: usize,
    tile: Tile,
    /// Output channels per block: `tile.channels()`.
    f: usize,
    /// How far a tap reaches past an output position's frame position, within a phase (or
    /// the unphased frame).
    reach: usize,
    /// The phases the frame is split into (rows, columns): the plan's stride, or one phase
    /// (`[1, 1]`) for a strided `Channels` tile (see [`Geometry::unphased`]).
    phases: [usize; 2],
    /// Frame rows and columns from one output position to the next: `[1, 1]` in a phase, the
    /// plan's stride in an unphased frame.
    stride: [usize; 2],
    /// Elements past the last channel's frame that a tile may read: a `Positions` tile reads
    /// frame positions under `p·wf` (masked beyond), shifted by a tap; a `Channels` tile reads
    /// output positions only, inside the frame.
    slack: usize,
    /// Which activations are blocked: a blocked frame is `[c / 16][hf·wf][16]` per image (its
    /// taps' offsets, and the tile's positions, in elements: sixteen per frame position).
    blocked: Layouts,
}

impl Geometry {
    /// The geometry for `plan` with `blocked` activations: always a `Channels` tile where any
    /// is blocked (its vectors are the blocked layout's; a blocked input's frame is then one
    /// phase: the padded input, unphased, or a strided 1×1 convolution's one phase).
    fn new(plan: &ConvPlan, blocked: Layouts) -> Self {
        let ([sh, sw], [dh, dw]) = (plan.stride, plan.dilation);
        let hf = plan.p + (plan.r - 1) * dh / sh;
        let wf = plan.q + (plan.s - 1) * dw / sw;
        let plane = hf * wf;
        let phase = |rs: usize| (rs / plan.s * dh % sh) * sw + rs % plan.s * dw % sw;
        let taps: Vec<usize> = (0..plan.r * plan.s)
            .map(|rs| {
                let (dy, dx) = (rs / plan.s * dh, rs % plan.s * dw);
                phase(rs) * plane + dy / sh * wf + dx / sw
            })
            .collect();
        let rows = (ITEM_POSITIONS / wf).clamp(1, plan.p);
        // The tile with the least work: every computed value (positions rounded up to whole
        // tiles per item — a `Channels` item's last tile computes only the positions left, but
        // counted whole here it keeps the choices measured before it did — output channels to
        // whole blocks) costs c·r·s lanes of FMA, plus its
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
            // A `Channels` block computes only the vectors its channels fill.
            let k = match *tile {
                Tile::Positions { f, .. } => plan.k.next_multiple_of(f),
                Tile::Channels { .. } => plan.k.next_multiple_of(LANES),
            };
            positions * k * (plan.c * taps.len() + copy)
        };
        let tile = if blocked.x || blocked.y {
            TILES[0].even(plan.k)
        } else {
            TILES
                .into_iter()
                .map(|tile| tile.even(plan.k))
                .min_by_key(work)
                .expect("TILES is not empty")
        };
        // Only the phases up to the last one a tap reads are framed (a strided 1×1 convolution
        // reads phase 0 only).
        let phases = (0..plan.r * plan.s)
            .map(phase)
            .max()
            .expect("a kernel has a tap")
            + 1;
        let chan = phases * plane;
        let furthest = taps.iter().max().expect("a kernel has a tap");
        let f = tile.channels();
        let g = Geometry {
            hf,
            wf,
            chan,
            rows: even_rows(plan, rows, tile),
            tile,
            f,
            slack: (plan.p * wf + furthest).saturating_sub(chan),
            reach: (plan.r - 1) * dh / sh * wf + (plan.s - 1) * dw / sw,
            taps,
            phases: plan.stride,
            stride: [1, 1],
            blocked,
        };
        let mut g = match tile {
            Tile::Channels { .. } if phases > 1 && plan.c >= UNPHASED_MIN_CHANNELS => {
                g.unphased(plan)
            }
            _ => g,
        };
        if blocked.x {
            for tap in &mut g.taps {
                *tap *= BLOCK;
            }
        }
        g
    }

    /// Frame elements from one frame position to the next.
    fn position_step(&self) -> usize {
        if self.blocked.x {
            BLOCK
        } else {
            1
        }
    }

    /// This geometry with the frame in one phase, the padded input itself: a `Channels` tile
    /// broadcasts its inputs one at a time, so it needs no phase in which consecutive outputs
    /// read consecutive inputs, and in one phase a tile's taps read fewer cache lines of each
    /// channel (its rows, not its rows in each phase) and framing copies rows without
    /// splitting their columns.
    fn unphased(self, plan: &ConvPlan) -> Self {
        let ([sh, sw], [dh, dw]) = (plan.stride, plan.dilation);
        let hf = (plan.p - 1) * sh + (plan.r - 1) * dh + 1;
        let wf = (plan.q - 1) * sw + (plan.s - 1) * dw + 1;
        let taps = (0..plan.r * plan.s)
            .map(|rs| rs / plan.s * dh * wf + rs % plan.s * dw)
            .collect();
        Geometry {
            hf,
            wf,
            chan: hf * wf,
            taps,
            slack: 0,
            reach: (plan.r - 1) * dh * wf + (plan.s - 1) * dw,
            phases: [1, 1],
            stride: plan.stride,
            ..self
        }
    }
}

/// How `images` images' work is cut, with items of `rows` output rows and blocks of output
/// channels of `tile`: `(blocks, kbs, group, groups)`, the blocks of output rows, the blocks of
/// output channels, and the groups of up to `group` of them. An item is one image's block of
/// rows for one group.
///
/// Where an image has fewer than [`ITEMS_PER_THREAD`] blocks of rows per thread, its output
/// channels are split into groups to make more items: equal groups, as many items as make a
/// multiple of the threads where down to half the group size allows it (20 blocks on two
/// threads: ten groups of 2, not six of 3 and one of 2, which left one thread idle for a
/// seventh of the time). A `Positions` tile reads four vectors of input for six weights, so it
/// keeps its input in L1 over the blocks of its group; a `Channels` tile reads the other way
/// round (four vectors of weights for six input values), so its group is as small as leaves
/// [`CHANNELS_ITEM_TERMS`] multiply-adds per item: each block's chunk of weights stays in L1
/// while the tile runs over the item's positions, and the chunks are as long as one block
/// allows (see [`block_chunk`]).
fn split(plan: &ConvPlan, rows: usize, tile: Tile, images: usize) -> (usize, usize, usize, usize) {
    let threads = rayon::current_num_threads();
    let blocks = plan.p.div_ceil(rows);
    let kbs = plan.k.div_ceil(tile.channels());
    let splits = (ITEMS_PER_THREAD * threads)
        .div_ceil(images * blocks)
        .clamp(1, kbs);
    let most = kbs.div_ceil(splits);
    let most = match tile {
        Tile::Positions { .. } => most,
        Tile::Channels { .. } => {
            let block = rows * plan.q * tile.channels() * plan.c * plan.r * plan.s;
            most.min(CHANNELS_ITEM_TERMS.div_ceil(block))
        }
    };
    let group = (most.div_ceil(2)..=most)
        .rev()
        .find(|&g| kbs.is_multiple_of(g) && (images * blocks * (kbs / g)).is_multiple_of(threads))
        .unwrap_or(most);
    (blocks, kbs, group, kbs.div_ceil(group))
}

/// Output rows per item: `rows` (about [`ITEM_POSITIONS`]) or fewer, so that the blocks of rows
/// are as equal as they can be and the items a multiple of the threads. The threads finish
/// together only if each gets as much work: seven items of 8 rows on two threads leave one idle
/// for an eighth of the time, eight of 7 rows do not; 28 rows cut 17 + 11 leave one idle for a
/// fifth. The rows shrink by half at most, and the channel groups stay as they are.
fn even_rows(plan: &ConvPlan, rows: usize, tile: Tile) -> usize {
    let threads = rayon::current_num_threads();
    let rows = plan.p.div_ceil(plan.p.div_ceil(rows));
    let (blocks, _, _, groups) = split(plan, rows, tile, plan.n);
    let even = |rows: usize| {
        let (b, _, _, g) = split(plan, rows, tile, plan.n);
        g == groups && (plan.n * b * g).is_multiple_of(threads)
    };
    if even(rows) {
        return rows;
    }
    (blocks + 1..=plan.p)
        .map(|blocks| plan.p.div_ceil(blocks))
        .find(|&r| even(r))
        .filter(|&r| 2 * r >= rows)
        .unwrap_or(rows)
}

/// The convolution's epilogue as a tile applies it in registers while it stores its last channel
/// chunk: the bias of its output channels, the residual sum (only where the tile writes `y`: the
/// sum's values at the tile's first output, laid out as the output is) and the clamp's bounds
/// (infinite without a fused ReLU or Clip). `Positions` tiles, and `Channels` tiles writing a
/// blocked FP32 `y`.
#[derive(Clone, Copy)]
struct Finish<'a> {
    bias: Option<&'a [f32]>,
    sum: Option<&'a [f32]>,
    bounds: [f32; 2],
}

/// Where a `Positions` tile writes `y` directly though frame rows are longer than output rows
/// (`wf > q`): its positions `start..` of the item's frame rows, each frame row's first `q`
/// columns landing on an output row (the `wf − q` past them are not written). With `wf ≥ 16`
/// a vector of 16 frame positions spans at most two rows: two masked accesses per vector.
#[derive(Clone, Copy)]
struct Wrap {
    wf: usize,
    q: usize,
    start: usize,
}

/// The convolution's epilogue as a `Channels` block's transpose applies it to the (up to 16)
/// output channels it writes: their bias (from the first), their rows of the residual sum (none,
/// or one per channel, as long as their rows of `y`) and the clamp's bounds.
struct Columns<'a> {
    bias: Option<&'a [f32]>,
    sum: &'a [&'a [f32]],
    bounds: [f32; 2],
}

/// One cache line of f32. Packed weights are stored in these, so that every vector of weights a
/// `Channels` tile loads is one whole line (a load split across two lines costs Intel cores
/// two).
#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct Line([f32; LANES]);

// SAFETY: sixteen f32 fill the 64-byte alignment exactly: no padding, any bits valid, zero is
// zero.
unsafe impl bytemuck::Zeroable for Line {}
// SAFETY: as above.
unsafe impl bytemuck::Pod for Line {}

/// Weights packed for the direct kernel, starting on a cache line.
pub struct PackedWeights {
    lines: Vec<Line>,
    len: usize,
}

impl PackedWeights {
    /// `len` zeros.
    pub(super) fn zeros(len: usize) -> Self {
        PackedWeights {
            lines: vec![Line([0.0; LANES]); len.div_ceil(LANES)],
            len,
        }
    }
}

impl Deref for PackedWeights {
    type Target = [f32];

    fn deref(&self) -> &[f32] {
        &bytemuck::cast_slice(&self.lines)[..self.len]
    }
}

impl DerefMut for PackedWeights {
    fn deref_mut(&mut self) -> &mut [f32] {
        &mut bytemuck::cast_slice_mut(&mut self.lines)[..self.len]
    }
}

/// The weights packed for the direct kernel (or transformed for the Winograd one), cached with
/// the tensor or packed for this call.
pub enum Packed {
    Cached(Arc<PackedWeights>),
    Owned(PackedWeights),
}

impl Packed {
    /// The form `key` (`len` f32) that `build` makes of the weights `w`: the one cached with the
    /// tensor (charged to `account`) where the cache's rules allow, else built now.
    pub fn of(
        w: &CpuData,
        key: &Key,
        len: usize,
        account: Option<&Arc<dyn MemoryAccount>>,
        build: impl Fn(&HostData) -> PackedWeights,
    ) -> Self {
        match w.derived(key, 4 * len, account, &build) {
            Some(cached) => Packed::Cached(cached),
            None => Packed::Owned(build(w.data())),
        }
    }
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

/// `plan`'s weights `[k, c, r, s]` packed for the direct kernel with `blocked` activations (see
/// the module doc): the form
/// cached with the tensor (charged to `account`) where the cache's rules allow, else packed now.
pub fn packed_weights(
    plan: &ConvPlan,
    blocked: Layouts,
    w: &CpuData,
    account: Option<&Arc<dyn MemoryAccount>>,
) -> Packed {
    let f = Geometry::new(plan, blocked).f;
    let len = plan.k.next_multiple_of(f) * plan.c * plan.r * plan.s;
    let key = Key::new("direct conv weights", &[f, plan.k, plan.c, plan.r, plan.s]);
    Packed::of(w, &key, len, account, |data| pack(plan, f, data))
}

/// Packs `[k, c, r, s]` weights (FP32 or FP16) as `[k / f][c][r·s][f]` f32, zero-padded.
fn pack(plan: &ConvPlan, f: usize, w: &HostData) -> PackedWeights {
    fn packed<T: Element>(plan: &ConvPlan, f: usize, w: &[T]) -> PackedWeights {
        let (c, rs) = (plan.c, plan.r * plan.s);
        let kp = plan.k.next_multiple_of(f);
        let mut out = PackedWeights::zeros(kp * c * rs);
        out.par_chunks_mut(c * rs * f)
            .enumerate()
            .for_each(|(kb, block)| {
                // Output channels kb·f.. of this block that exist; the rest stay zero.
                let fv = f.min(plan.k - kb * f);
                let wb = &w[kb * f * c * rs..][..fv * c * rs];
                for (ci, taps) in block.chunks_exact_mut(rs * f).enumerate() {
                    for (t, lanes) in taps.chunks_exact_mut(f).enumerate() {
                        for (fi, v) in lanes[..fv].iter_mut().enumerate() {
                            *v = wb[(fi * c + ci) * rs + t].to_f32();
                        }
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
/// residual `sum` (`y`'s storage type), into `y` (FP32, or FP16 rounded as each item's values
/// are written). `y` is fully written.
pub fn conv<Y: Element>(
    plan: &ConvPlan,
    blocked: Layouts,
    x: &HostData,
    w: &[f32],
    bias: Option<&[f32]>,
    sum: Option<&HostData>,
    y: &mut [Y],
) {
    let g = Geometry::new(plan, blocked);
    // A blocked FP16 output's store reads the sum as stored, widened in registers
    // (`avx512::store_blocked`); every other epilogue reads it as f32, FP16 widened whole
    // (a pass over the sum through memory: ResNet-50's at batch 1 hold 5.5 million values).
    let stored: Option<&[Y]> = sum.map(values);
    let widened = sum
        .filter(|_| Y::DTYPE == DType::F32 || !g.blocked.y)
        .map(as_f32);
    let add = Addends {
        bias,
        sum: widened.as_deref(),
    };
    match x {
        // A pointwise convolution's input is its own frame (slack 0): no copy in FP32, one
        // parallel widening of the whole input in FP16 (not a frame row at a time).
        _ if is_pointwise(plan) => compute(plan, &g, &as_f32(x), w, add, stored, y),
        HostData::F32(x) => conv_from(plan, &g, x, w, add, stored, y),
        HostData::F16(x) => conv_from(plan, &g, x, w, add, stored, y),
    }
}

/// [`conv`] for input elements `T`.
fn conv_from<T: Widen, Y: Element>(
    plan: &ConvPlan,
    g: &Geometry,
    x: &[T],
    w: &[f32],
    add: Addends,
    stored: Option<&[Y]>,
    y: &mut [Y],
) {
    if y.is_empty() {
        return;
    }
    let image_frame = plan.c * g.chan;
    let group = (FRAME_GROUP_BYTES / (4 * image_frame)).clamp(1, plan.n);
    let pkq = plan.k * plan.p * plan.q;
    with_buffer(group * image_frame + g.slack, |frames| {
        for n0 in (0..plan.n).step_by(group) {
            let images = group.min(plan.n - n0);
            let x = &x[n0 * plan.c * plan.h * plan.w..];
            if g.blocked.x {
                frame_blocked(plan, g, x, images, frames);
            } else {
                frame(plan, g, x, images, frames);
            }
            let part = n0 * pkq..(n0 + images) * pkq;
            let add = Addends {
                sum: add.sum.map(|s| &s[part.clone()]),
                ..add
            };
            let stored = stored.map(|s| &s[part.clone()]);
            compute(plan, g, frames, w, add, stored, &mut y[part]);
        }
    });
}

/// Writes the frames of `images` images of `x` into `frames` (`[image][c][phase][hf][wf]`),
/// zero wherever a frame position falls into padding. The threads share (image, channel, row
/// phase) items, so a stem's three input channels still make work for every thread; an item
/// reads each of its input rows once (as f32: an FP16 row widened into a row buffer) for all
/// its column phases.
fn frame<T: Widen>(plan: &ConvPlan, g: &Geometry, x: &[T], images: usize, frames: &mut [f32]) {
    let ([sh, sw], [pt, pl]) = (g.phases, plan.pad);
    let (hw, plane) = (plan.h * plan.w, g.hf * g.wf);
    frames[..images * plan.c * g.chan]
        .par_chunks_mut(g.chan)
        .enumerate()
        .flat_map(|(nc, chan)| {
            // Row phase a: phases a·sw .. a·sw + sw (those framed), contiguous.
            chan.par_chunks_mut(sw * plane)
                .enumerate()
                .map(move |(a, planes)| (nc, a, planes))
        })
        .for_each(|(nc, a, planes)| {
            let xc = &x[nc * hw..][..hw];
            let mut widened = TaskBuffer::take(plan.w);
            for i in 0..g.hf {
                let src = (i * sh + a)
                    .checked_sub(pt)
                    .filter(|&ih| ih < plan.h)
                    .map(|ih| f32_row(&xc[ih * plan.w..][..plan.w], &mut widened));
                for (b, plane) in planes.chunks_exact_mut(plane).enumerate() {
                    let row = &mut plane[i * g.wf..][..g.wf];
                    match src {
                        Some(src) => frame_row(src, b, sw, pl, row),
                        None => row.fill(0.0),
                    }
                }
            }
        });
}

/// [`frame`] for a blocked input, into blocked frames (`[image][c / 16][hf][wf][16]`, one
/// phase): the threads share the frame's rows of sixteen channels.
fn frame_blocked<T: Widen>(
    plan: &ConvPlan,
    g: &Geometry,
    x: &[T],
    images: usize,
    frames: &mut [f32],
) {
    // One phase: the padded input, or its first phase (a strided 1×1 convolution's).
    debug_assert_eq!(g.chan, g.hf * g.wf);
    let ([pt, pl], [sh, sw], w) = (plan.pad, g.phases, plan.w);
    let row_len = BLOCK * w;
    // Frame columns lo..hi hold input columns lo·sw − pl..hi·sw − pl, sw apart.
    let lo = pl.div_ceil(sw).min(g.wf);
    let hi = (pl + w).div_ceil(sw).clamp(lo, g.wf);
    frames[..images * plan.c * g.chan]
        .par_chunks_mut(BLOCK * g.wf)
        .enumerate()
        .for_each(|(index, row)| {
            // Row `i` of channel block `nb` (of every image's blocks in turn).
            let (nb, i) = (index / g.hf, index % g.hf);
            match ((i * sh).checked_sub(pt).filter(|&ih| ih < plan.h), lo < hi) {
                (Some(ih), true) => {
                    let src = &x[(nb * plan.h + ih) * row_len..][..row_len];
                    row[..BLOCK * lo].fill(0.0);
                    if sw == 1 {
                        T::widen(
                            &src[BLOCK * (lo - pl)..BLOCK * (hi - pl)],
                            &mut row[BLOCK * lo..BLOCK * hi],
                        );
                    } else {
                        for j in lo..hi {
                            let at = BLOCK * (j * sw - pl);
                            T::widen(&src[at..at + BLOCK], &mut row[BLOCK * j..BLOCK * (j + 1)]);
                        }
                    }
                    row[BLOCK * hi..].fill(0.0);
                }
                _ => row.fill(0.0),
            }
        });
}

/// `row` as f32: itself, or widened into `buffer`.
fn f32_row<'a, T: Widen>(row: &'a [T], buffer: &'a mut TaskBuffer) -> &'a [f32] {
    match T::DTYPE {
        DType::F32 => bytemuck::cast_slice(row),
        DType::F16 => {
            let values = buffer.values(row.len());
            T::widen(row, values);
            values
        }
    }
}

/// Frame row `row` from input row `src`: `row[j]` is padded column `j·sw + b`, which is input
/// column `j·sw + b − pl` where that is inside the row, else zero.
fn frame_row(src: &[f32], b: usize, sw: usize, pl: usize, row: &mut [f32]) {
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
    let (src, row) = (&src[first..], &mut row[lo..hi]);
    match sw {
        1 => row.copy_from_slice(&src[..row.len()]),
        2 => {
            // The last frame column's input may be the input row's last: no pair after it.
            let last = row.len() - 1;
            evens(src, &mut row[..last]);
            row[last] = src[2 * last];
        }
        _ => {
            for (v, &s) in row.iter_mut().zip(src.iter().step_by(sw)) {
                *v = s;
            }
        }
    }
}

simd::multiversion! {
    /// `dst[j] = src[2j]` over `src`'s first `2·dst.len()` elements (in pairs, which LLVM
    /// turns into vector shuffles).
    fn evens(src: &[f32], dst: &mut [f32]) {
        for (v, pair) in dst.iter_mut().zip(src.chunks_exact(2)) {
            *v = pair[0];
        }
    }
}

/// Most input channels per chunk for one block of `f` output channels of `rs` taps each (see
/// [`BLOCK_CHUNK_WEIGHT_BYTES`]); no limit where it would leave fewer than
/// [`BLOCK_CHUNK_MIN_CHANNELS`].
fn block_chunk(rs: usize, f: usize) -> usize {
    let channels = BLOCK_CHUNK_WEIGHT_BYTES / (4 * rs * f);
    if channels >= BLOCK_CHUNK_MIN_CHANNELS {
        channels
    } else {
        usize::MAX
    }
}

/// Every (image, row block, group of output channel blocks) item of one group of framed images
/// into its part of `y` (`[images, k, p, q]`). Each tile of an item runs for every block of its
/// group in turn, so the input it reads stays in L1 and the weights stream from L2 (or, with
/// one block per item, stay in L1: see [`BLOCK_CHUNK_WEIGHT_BYTES`] and [`split`]). Where `y`
/// is FP32 (or FP16 with every channel in one chunk) and frame rows are output rows or at least
/// 16 long ([`Wrap`]), `Positions` tiles write `y` directly; otherwise tiles write a buffer,
/// copied (or transposed, and FP16 rounded) into `y` at the end.
fn compute<Y: Element>(
    plan: &ConvPlan,
    g: &Geometry,
    frames: &[f32],
    w: &[f32],
    add: Addends,
    stored: Option<&[Y]>,
    y: &mut [Y],
) {
    let (pq, rs) = (plan.p * plan.q, plan.r * plan.s);
    let images = y.len() / (plan.k * pq);
    let (blocks, kbs, group, groups) = split(plan, g.rows, g.tile, images);
    let (t, step) = match g.tile {
        Tile::Positions { t, .. } => (t, t * LANES),
        Tile::Channels { t, .. } => (t, t),
    };
    let chunk = (CHUNK_WEIGHT_BYTES / (4 * rs * g.f * group))
        .min(TILE_INPUT_BYTES / (4 * (step + g.reach)))
        .min(block_chunk(rs, g.f))
        .clamp(1, plan.c);
    // A blocked frame's chunks are whole blocks of channels.
    let chunk = if g.blocked.x {
        (chunk / BLOCK).max(1) * BLOCK
    } else {
        chunk
    };
    // Tiles accumulate a chunk at a time into what they write: in FP32 only, so an FP16 `y`
    // only where one chunk holds every channel (the stems). Frame rows longer than output rows
    // wrap onto them (`Wrap`) where a vector spans at most two.
    let into_y = matches!(g.tile, Tile::Positions { .. })
        && (g.wf == plan.q || g.wf >= LANES)
        && (Y::DTYPE == DType::F32 || chunk == plan.c);
    // `Channels` tiles write a blocked FP32 `y` themselves, each vector one output position's
    // sixteen channels, the epilogue applied by the last chunk.
    let blocked_into_y = g.blocked.y && Y::DTYPE == DType::F32;
    let wraps = g.wf != plan.q;
    // `Positions` tiles apply the epilogue themselves: into y, or without a residual sum into
    // the buffer, whose values are then only copied.
    let finished_by_tiles =
        matches!(g.tile, Tile::Positions { .. }) && (into_y || add.sum.is_none());
    let bounds = Clamp::bounds(plan.clamp);
    assert!(w.len() >= kbs * g.f * plan.c * rs);
    assert!(frames.len() >= images * plan.c * g.chan + g.slack);
    // An item's buffer holds at most this many values (see `ld` below).
    let buffer_len = if into_y || blocked_into_y {
        0
    } else {
        group
            * g.f
            * g.tile
                .positions(g.rows, g.wf, plan.q)
                .next_multiple_of(LANES)
    };
    let out = Disjoint::new(y);
    (0..images * blocks * groups).into_par_iter().for_each_init(
        || (TaskBuffer::take(buffer_len), Vec::new()),
        |(task, bases): &mut (TaskBuffer, Vec<usize>), item| {
            let (ni, block, kg) = (
                item / (blocks * groups),
                item / groups % blocks,
                item % groups,
            );
            let (p0, kb0) = (block * g.rows, kg * group);
            let rows = g.rows.min(plan.p - p0);
            let kbn = group.min(kbs - kb0);
            let (positions, run) = (g.tile.positions(rows, g.wf, plan.q), rows * plan.q);
            // Output channel block kbi's first value in `y`, and its channel count.
            let first = |kbi: usize| ((ni * plan.k + (kb0 + kbi) * g.f) * plan.p + p0) * plan.q;
            let fv = |kbi: usize| g.f.min(plan.k - (kb0 + kbi) * g.f);
            // In the buffer, each block's values are `f` rows of `ld` positions, or `ld` rows of
            // `f` channels (a `Channels` tile's rows are transposed 16 at a time).
            let ld = positions.next_multiple_of(LANES);
            let buf = if into_y || blocked_into_y {
                &mut []
            } else {
                task.values(kbn * g.f * ld)
            };
            let x = &frames[ni * plan.c * g.chan..][..plan.c * g.chan + g.slack];
            if let Tile::Channels { .. } = g.tile {
                // Frame offset of each output position, the last repeated to a whole tile.
                let ([sh, sw], step) = (g.stride, g.position_step());
                bases.clear();
                bases.extend((0..positions).map(|i| {
                    let i = i.min(run - 1);
                    ((p0 + i / plan.q) * sh * g.wf + i % plan.q * sw) * step
                }));
            }
            // The weights the item reads next: its next chunk's, or after its last the next
            // item's first (a thread's items are mostly consecutive).
            let after = |c0: usize| -> Option<Weights> {
                let cn = chunk.min(plan.c - c0);
                if c0 + cn < plan.c {
                    Some(Weights::of(plan, g, chunk, kb0, kbn, c0 + cn))
                } else {
                    let kb = (item + 1 < images * blocks * groups)
                        .then(|| (item + 1) % groups * group)?;
                    Some(Weights::of(plan, g, chunk, kb, group.min(kbs - kb), 0))
                }
            };
            let passes = positions.div_ceil(step);
            for c0 in (0..plan.c).step_by(chunk) {
                let xc = &x[c0 * g.chan..];
                let cn = chunk.min(plan.c - c0);
                let next = after(c0);
                for j in (0..positions).step_by(step) {
                    let valid = (rows * g.wf - j).min(step);
                    for kbi in 0..kbn {
                        // This call's share of the weights read next (see `Weights`).
                        let ahead = next
                            .as_ref()
                            .map_or(&[][..], |n| n.share(w, kbi, j / step, passes));
                        let wc = &w[((kb0 + kbi) * plan.c + c0) * rs * g.f..][..cn * rs * g.f];
                        // SAFETY (all three): `applies` checked AVX-512 F, BW and VL. A
                        // `Positions` tile reads the `cn` channel frames of `xc` at p0·wf + j +
                        // tap + (0..valid), frame positions under p·wf + tap: at most
                        // (cn − 1)·chan + p·wf + tap − 1 < cn·chan + slack, inside `x` (bounded
                        // above); a `Channels` tile reads them at an output position's frame
                        // offset + tap, inside each channel's frame. `wc` holds cn·rs·f weights.
                        // A tile writes its first `fv` rows × `valid` positions into y (rows p0..
                        // of channels (kb0 + kbi)·f.., which this item alone writes: valid ≤
                        // run − j; an FP16 y only from one chunk, so never accumulating), or
                        // t·16 × f (at most t × f) values into block kbi of `buf`.
                        unsafe {
                            match g.tile {
                                Tile::Positions { .. } => {
                                    // Wrapping tiles address y from the item's first output.
                                    let (at, wrap) = if wraps {
                                        let wrap = Wrap {
                                            wf: g.wf,
                                            q: plan.q,
                                            start: j,
                                        };
                                        (first(kbi), Some(wrap))
                                    } else {
                                        (first(kbi) + j, None)
                                    };
                                    // Finished by the last chunk.
                                    let finish =
                                        (finished_by_tiles && c0 + cn == plan.c).then(|| Finish {
                                            bias: add.bias.map(|b| &b[(kb0 + kbi) * g.f..]),
                                            sum: add.sum.map(|s| &s[at..]),
                                            bounds,
                                        });
                                    // Into `y` (its storage type) or into the FP32 buffer.
                                    let x = xc[p0 * g.wf + j..].as_ptr();
                                    // The item's next tile's input, fetched while the first
                                    // block's tile reads this one's (see `positions`).
                                    let next = (kbi == 0 && j + step < positions)
                                        .then(|| x.wrapping_add(step));
                                    macro_rules! into {
                                        ($dst:expr, $ld:expr, $wrap:expr) => {
                                            tile(
                                                g,
                                                x,
                                                &[],
                                                valid,
                                                wc,
                                                cn,
                                                $dst,
                                                $ld,
                                                0,
                                                fv(kbi),
                                                c0 > 0,
                                                finish,
                                                &[],
                                                $wrap,
                                                next,
                                            )
                                        };
                                    }
                                    if into_y {
                                        into!(out.ptr().add(at), pq, wrap)
                                    } else {
                                        into!(buf[kbi * g.f * ld + j..].as_mut_ptr(), ld, None)
                                    }
                                }
                                Tile::Channels { .. } if blocked_into_y => {
                                    // Channel block k0 / 16 of image ni from position
                                    // p0·q + j, its vectors pq positions apart.
                                    let k0 = (kb0 + kbi) * g.f;
                                    let at = (ni * plan.k + k0) * pq + (p0 * plan.q + j) * LANES;
                                    let finish = (c0 + cn == plan.c).then(|| Finish {
                                        bias: add.bias.map(|b| &b[k0..]),
                                        sum: add.sum.map(|s| &s[at..]),
                                        bounds,
                                    });
                                    tile(
                                        g,
                                        xc.as_ptr(),
                                        &bases[j..j + t],
                                        (run - j).min(t),
                                        wc,
                                        cn,
                                        out.ptr().add(at),
                                        LANES,
                                        pq * LANES,
                                        fv(kbi),
                                        c0 > 0,
                                        finish,
                                        ahead,
                                        None,
                                        None,
                                    )
                                }
                                Tile::Channels { .. } => tile(
                                    g,
                                    xc.as_ptr(),
                                    &bases[j..j + t],
                                    // The item's last tile: only the positions left.
                                    (run - j).min(t),
                                    wc,
                                    cn,
                                    buf[(kbi * ld + j) * g.f..].as_mut_ptr(),
                                    g.f,
                                    LANES,
                                    fv(kbi),
                                    c0 > 0,
                                    None,
                                    ahead,
                                    None,
                                    None,
                                ),
                            }
                        }
                    }
                }
            }
            if blocked_into_y {
                return;
            }
            if g.blocked.y {
                for kbi in 0..kbn {
                    for v in 0..fv(kbi) / LANES {
                        // Channel block kb of image ni, from the item's first position.
                        let k0 = (kb0 + kbi) * g.f + v * LANES;
                        let at = (ni * plan.k + k0) * pq + p0 * plan.q * LANES;
                        // SAFETY: `applies` checked AVX-512 F, BW and VL; the buffer holds
                        // `run` rows of f from row kbi·ld, their vector v under f; positions
                        // p0·q.. p0·q + run of the channel block, which this item alone
                        // writes; the sum (in y's layout) and the bias have values there.
                        #[cfg(target_arch = "x86_64")]
                        unsafe {
                            avx512::store_blocked(
                                &buf[kbi * ld * g.f + v * LANES..],
                                g.f,
                                out.slice(at, run * LANES),
                                add.bias.map(|b| &b[k0..k0 + LANES]),
                                stored.map(|s| &s[at..at + run * LANES]),
                                bounds,
                            )
                        };
                    }
                }
                return;
            }
            for kbi in (0..kbn).filter(|_| !(into_y && finished_by_tiles)) {
                // SAFETY: rows p0..p0 + rows of image ni, channels (kb0 + kbi)·f.. (under k):
                // runs of y that this item alone writes.
                let mut dst: Vec<&mut [Y]> = (0..fv(kbi))
                    .map(|fi| unsafe { out.slice(first(kbi) + fi * pq, run) })
                    .collect();
                match g.tile {
                    // Written by its tiles.
                    Tile::Positions { .. } if into_y => {}
                    Tile::Positions { .. } => {
                        for (fi, d) in dst.iter_mut().enumerate() {
                            let k = (kb0 + kbi) * g.f + fi;
                            let from = &mut buf[(kbi * g.f + fi) * ld..];
                            for (pr, row) in d.chunks_exact_mut(plan.q).enumerate() {
                                let values = &mut from[pr * g.wf..][..plan.q];
                                // With a residual sum the tiles left the epilogue to this
                                // pass, over each row while it is in cache.
                                if !finished_by_tiles {
                                    add.apply(plan, k, first(kbi) + fi * pq + pr * plan.q, values);
                                }
                                narrow(values, row);
                            }
                        }
                    }
                    Tile::Channels { .. } => {
                        let values = &buf[..];
                        for (v, d) in dst.chunks_mut(LANES).enumerate() {
                            // The epilogue of output channels (kb0 + kbi)·f + v·16.., applied as
                            // they are transposed.
                            let k0 = (kb0 + kbi) * g.f + v * LANES;
                            // Their rows of the residual sum, on the stack (no allocation
                            // per block).
                            let rows: [&[f32]; LANES] = std::array::from_fn(|l| match add.sum {
                                Some(s) if l < d.len() => {
                                    &s[first(kbi) + (v * LANES + l) * pq..][..run]
                                }
                                _ => &[],
                            });
                            let columns = Columns {
                                bias: add.bias.map(|b| &b[k0..]),
                                sum: if add.sum.is_some() {
                                    &rows[..d.len()]
                                } else {
                                    &[]
                                },
                                bounds,
                            };
                            for i0 in (0..run).step_by(LANES) {
                                // SAFETY: `applies` checked AVX-512 F, BW and VL; block kbi
                                // holds 16 rows of f from row i0 (ld is a multiple of 16), and
                                // column v·16 + 15 < f; i0 + min(16, run − i0) ≤ run, each `d`'s
                                // and sum row's length; the bias has a value for each of `d`'s
                                // channels.
                                #[cfg(target_arch = "x86_64")]
                                unsafe {
                                    avx512::transpose(
                                        &values[(kbi * ld + i0) * g.f + v * LANES..],
                                        g.f,
                                        d,
                                        i0,
                                        &columns,
                                    )
                                };
                            }
                        }
                    }
                }
            }
        },
    );
}

/// The packed weights of one channel chunk for a run of output channel blocks: `blocks` runs
/// of `len` values, `stride` apart, from `start`.
///
/// A chunk's weights come from memory the first time its tiles read them, then from L2 for the
/// item's other passes over its positions. Read cold, they made a chunk's first pass 3–7 times
/// as slow as the others (per-call timers, ResNet-50 on one thread: 12.7 µs against 2.4 µs for
/// a 7×7, 512-channel 3×3 conv), so each `Channels` tile prefetches a share of the weights read
/// next — the item's next chunk, or after its last the next item's first (a thread's items are
/// mostly consecutive) — a few lines per channel, spread over the chunk's calls so that they
/// never queue up at once. (All of a pass's share at its start gained nothing: the burst held
/// up the tiles' own loads.)
struct Weights {
    start: usize,
    stride: usize,
    len: usize,
    blocks: usize,
}

impl Weights {
    /// Chunk `c0..c0 + chunk` (cut at `c`) of blocks `kb0..kb0 + blocks`.
    fn of(
        plan: &ConvPlan,
        g: &Geometry,
        chunk: usize,
        kb0: usize,
        blocks: usize,
        c0: usize,
    ) -> Self {
        let per_channel = plan.r * plan.s * g.f;
        Weights {
            start: (kb0 * plan.c + c0) * per_channel,
            stride: plan.c * per_channel,
            len: chunk.min(plan.c - c0) * per_channel,
            blocks,
        }
    }

    /// What the call for block `kbi` in pass `pass` of `passes` prefetches: its part of block
    /// `kbi`'s run (none past the last block), as a slice of `w`. Over the passes, each run's
    /// lines are shared out whole and once.
    fn share<'a>(&self, w: &'a [f32], kbi: usize, pass: usize, passes: usize) -> &'a [f32] {
        if kbi >= self.blocks {
            return &[];
        }
        let lines = self.len.div_ceil(LANES);
        let line = |p: usize| (lines * p / passes * LANES).min(self.len);
        &w[self.start + kbi * self.stride..][line(pass)..line(pass + 1)]
    }
}

/// One register tile (`g.tile`), summed over `cn` channel frames of `x` (`chan` apart, or in
/// blocks of sixteen in a blocked frame, see [`Geometry`]) and every tap, added to
/// (`accumulate`) or stored into `out`:
/// - `Positions`: `f` output channels × `t·16` frame positions from `x` (at the tile's first
///   position), of which the first `valid` are read and written, into the first `fv` of `f`
///   rows `ld` apart (`bases` unused; `wrap`: frame positions mapped onto output rows from the
///   item's first output), with the epilogue applied where `finish` says, fetching the lines
///   of `next` (another tile's first tap, `chan` apart per channel) into L1 as it goes;
/// - `Channels`: the first `valid` of `t` output positions (frame offsets `bases` into `x`;
///   fewer than `t` only in an item's last tile, which computes no others) ×
///   the first `fv` (rounded up to whole vectors) of the block's `f = 16·v` output channels,
///   position `i`'s vector `v` at `out + i·ld + v·vstride` (rows of `f` in the buffer: `ld = f`,
///   `vstride = 16`; a blocked `y`: `ld = 16`, `vstride` one channel block's values), with the
///   epilogue applied where `finish` says, prefetching `ahead` (the weights read next, see
///   [`Weights`]; `Positions` tiles take none) a few lines per channel (`next` unused).
///
/// # Safety
/// The CPU must support AVX-512 F, BW and VL; every input the tile reads (`x + c·chan + tap +
/// (0..valid)`, or `x + c·chan + base + tap`, for c < cn) must be readable, `w` must hold
/// `cn·r·s·f` values and every output it writes (`out + fi·ld + (0..valid)` for fi < fv, those
/// positions mapped by `wrap` if given, or `out + i·ld + v·vstride + (0..16)` for i < valid and
/// v < fv / 16) must be writable (and readable
/// when `accumulate`), with `finish`'s sum (if any) holding a value at each of those offsets.
/// `out` (`O`) is FP32 but for a `Positions` tile that does not accumulate (FP16 rounded as
/// stored); the others assert it.
#[allow(clippy::too_many_arguments)]
unsafe fn tile<O: Element>(
    g: &Geometry,
    x: *const f32,
    bases: &[usize],
    valid: usize,
    w: &[f32],
    cn: usize,
    out: *mut O,
    ld: usize,
    vstride: usize,
    fv: usize,
    accumulate: bool,
    finish: Option<Finish>,
    ahead: &[f32],
    wrap: Option<Wrap>,
    next: Option<*const f32>,
) {
    debug_assert!(w.len() >= cn * g.taps.len() * g.f);
    debug_assert!(matches!(g.tile, Tile::Channels { .. }) || g.blocked == Layouts::default());
    let (chan, taps, w) = (g.chan, &g.taps[..], w.as_ptr());
    #[cfg(target_arch = "x86_64")]
    // SAFETY: the caller's contract.
    unsafe {
        use avx512::{channels_of, positions, ChannelsTile};
        match g.tile {
            Tile::Positions { t: 4, f: 6 } => positions::<O, 4, 6>(
                x, valid, chan, taps, w, cn, out, ld, fv, accumulate, finish, wrap, next,
            ),
            Tile::Positions { t: 3, f: 8 } => positions::<O, 3, 8>(
                x, valid, chan, taps, w, cn, out, ld, fv, accumulate, finish, wrap, next,
            ),
            Tile::Positions { t: 2, f: 12 } => positions::<O, 2, 12>(
                x, valid, chan, taps, w, cn, out, ld, fv, accumulate, finish, wrap, next,
            ),
            Tile::Channels { t: 6, v } => {
                debug_assert!(fv <= v * LANES && (1..=6).contains(&valid));
                assert_eq!(
                    O::DTYPE,
                    DType::F32,
                    "`Channels` tiles write an FP32 buffer"
                );
                let out = out.cast::<f32>();
                let tile = match valid {
                    6 => channels_of::<6>,
                    5 => channels_of::<5>,
                    4 => channels_of::<4>,
                    3 => channels_of::<3>,
                    2 => channels_of::<2>,
                    _ => channels_of::<1>,
                };
                let args = ChannelsTile {
                    x,
                    bases,
                    vstride,
                    finish,
                    // From one channel to the next within a block: a frame, or one lane.
                    chan: if g.blocked.x { 1 } else { chan },
                    block: BLOCK * chan,
                    taps,
                    w,
                    cn,
                    f: g.f,
                    out,
                    ld,
                    accumulate,
                    ahead,
                };
                tile(fv.div_ceil(LANES), &args)
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

    use super::{Columns, Finish, Wrap, FAR_PREFETCH_MIN_POSITIONS, LANES, TRANSPOSE_AHEAD};
    use crate::backend::cpu::avx512::{
        finished, first, inside, load, prefetch_for_write, store, transpose16,
    };
    use crate::dtype::{DType, Element};

    /// [`super::tile`] for a `T × F` tile, with the taps' offsets given.
    ///
    /// # Safety
    /// As [`super::tile`].
    #[target_feature(enable = "avx512f,avx512bw,avx512vl")]
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn positions<O: Element, const T: usize, const F: usize>(
        x: *const f32,
        valid: usize,
        chan: usize,
        taps: &[usize],
        w: *const f32,
        cn: usize,
        out: *mut O,
        ld: usize,
        fv: usize,
        accumulate: bool,
        finish: Option<Finish>,
        wrap: Option<Wrap>,
        next: Option<*const f32>,
    ) {
        // SAFETY (whole body): every pointer offset stays inside the extents of the contract.
        unsafe {
            // Lanes past `valid` are neither read nor written (masked accesses do not fault).
            let masks: [__mmask16; T] = std::array::from_fn(|i| {
                let lanes = valid.saturating_sub(i * LANES).min(LANES);
                ((1u32 << lanes) - 1) as __mmask16
            });
            // Each vector's runs of outputs: offset and lanes (the second run empty unless
            // frame rows wrap onto output rows).
            let runs: [[(isize, __mmask16); 2]; T] = std::array::from_fn(|i| match wrap {
                Some(wrap) => wrapped(wrap, i, masks[i]),
                None => [((i * LANES) as isize, masks[i]), (0, 0)],
            });
            // Row `fi`'s vector `i` from `base` (masked lanes zero).
            let load = |base: *const f32, fi: usize, i: usize| {
                let row = base.wrapping_add(fi * ld);
                let [(o0, m0), (o1, m1)] = runs[i];
                // Only the lanes under the masks are read: outputs of the tile.
                let v = _mm512_maskz_loadu_ps(m0, row.wrapping_offset(o0));
                if m1 == 0 {
                    v
                } else {
                    _mm512_mask_loadu_ps(v, m1, row.wrapping_offset(o1))
                }
            };
            // The lines this tile stores (lane 0 of each vector, and the last lane), fetched
            // while it computes: a stem's output is written into memory last touched an
            // inference ago (MobileNetV2's 3×3/2 stem inside the model: 0.69–0.85× the time;
            // alone at batch 8, 0.75–0.88×; at batch 1, its output in cache, unchanged; a
            // prefetch for each run's first and last valid lane cost 1.14× there). A tile that
            // accumulates has loaded them already.
            if !accumulate {
                for fi in 0..fv {
                    let row = out.wrapping_add(fi * ld);
                    for &[(o, _), _] in &runs {
                        prefetch_for_write(row.wrapping_offset(o));
                    }
                    prefetch_for_write(row.wrapping_offset(runs[T - 1][0].0 + 15));
                }
            }
            let mut acc = [[_mm512_setzero_ps(); T]; F];
            if accumulate {
                assert_eq!(O::DTYPE, DType::F32, "tiles accumulate in FP32 only");
                for (fi, row) in acc.iter_mut().enumerate().take(fv) {
                    for (i, a) in row.iter_mut().enumerate() {
                        *a = load(out.cast::<f32>(), fi, i);
                    }
                }
            }
            sum_positions(&mut acc, x, &masks, chan, taps, w, cn, next);
            if let Some(Finish {
                bias,
                sum,
                bounds: [lo, hi],
            }) = finish
            {
                let (lo, hi) = (_mm512_set1_ps(lo), _mm512_set1_ps(hi));
                for (fi, row) in acc.iter_mut().enumerate().take(fv) {
                    // x + (−0) is x for every x: a missing bias changes nothing.
                    let b = _mm512_set1_ps(bias.map_or(-0.0, |b| b[fi]));
                    for (i, a) in row.iter_mut().enumerate() {
                        let s = sum.map(|s| load(s.as_ptr(), fi, i));
                        *a = finished(*a, b, s, lo, hi);
                    }
                }
            }
            for (fi, row) in acc.iter().enumerate().take(fv) {
                for (&a, runs) in row.iter().zip(&runs) {
                    for &(o, m) in runs.iter().filter(|&&(_, m)| m != 0) {
                        // FP16 rounded to nearest even.
                        store(out.wrapping_add(fi * ld).wrapping_offset(o), m, a);
                    }
                }
            }
        }
    }

    /// Vector `i`'s two runs of outputs where frame rows wrap onto output rows (see [`Wrap`]):
    /// (offset of its lane 0 from the item's first output, lanes) in the row it starts in and
    /// in the next, both within `valid`.
    fn wrapped(wrap: Wrap, i: usize, valid: __mmask16) -> [(isize, __mmask16); 2] {
        let s = wrap.start + i * LANES;
        let (row, col) = ((s / wrap.wf) as isize, (s % wrap.wf) as isize);
        let (wf, q) = (wrap.wf as isize, wrap.q as isize);
        // Output offset of frame position s if it lay in frame row r.
        let at = |r: isize| s as isize - r * (wf - q);
        // Lanes whose column col + l is one of the first q of this row, or of the next.
        [
            (at(row), inside(col, q) & valid),
            (at(row + 1), inside(col - wf, q) & valid),
        ]
    }

    /// Adds to `acc` every (channel, tap) product of a `Positions` tile, on a copy that stays in
    /// registers. (Summed in place inside [`positions`], every tile's accumulators stayed in
    /// memory, each one stored after every FMA: twice as slow on pointwise convolutions.) With
    /// `next`, each channel's step also prefetches the `T + 1` lines of that channel at `next`:
    /// the item's next tile, whose input a pointwise convolution otherwise waits for channel by
    /// channel (its rows `h·w` apart, no stream the hardware prefetcher follows): MobileNetV2's
    /// projections to 24 channels at 56×56 took 0.82–0.84× the time (`eia infer --profile`,
    /// Intel Xeon model 207, two threads).
    ///
    /// # Safety
    /// As [`super::tile`].
    #[target_feature(enable = "avx512f")]
    #[inline(never)]
    #[allow(clippy::too_many_arguments)]
    unsafe fn sum_positions<const T: usize, const F: usize>(
        acc: &mut [[__m512; T]; F],
        x: *const f32,
        masks: &[__mmask16; T],
        chan: usize,
        taps: &[usize],
        w: *const f32,
        cn: usize,
        next: Option<*const f32>,
    ) {
        // SAFETY (whole body): every pointer offset stays inside the extents of the contract.
        unsafe {
            let mut sums = *acc;
            let mut wp = w;
            for c in 0..cn {
                if let Some(next) = next {
                    // The lines of channel c's T vectors at `next` (a prefetch never faults).
                    let at = next.wrapping_add(c * chan);
                    for i in 0..=T {
                        _mm_prefetch::<_MM_HINT_T0>(at.wrapping_add(i * LANES).cast());
                    }
                }
                let xc = x.add(c * chan);
                for &off in taps {
                    let xp = xc.add(off);
                    let mut xv = [_mm512_setzero_ps(); T];
                    for ((v, &m), i) in xv.iter_mut().zip(masks).zip(0..) {
                        *v = _mm512_maskz_loadu_ps(m, xp.add(i * LANES));
                    }
                    for (fi, row) in sums.iter_mut().enumerate() {
                        let b = _mm512_set1_ps(*wp.add(fi));
                        for (a, &v) in row.iter_mut().zip(&xv) {
                            *a = _mm512_fmadd_ps(v, b, *a);
                        }
                    }
                    wp = wp.add(F);
                }
            }
            *acc = sums;
        }
    }

    /// What a `Channels` tile reads and writes, as [`super::tile`] takes it: `f` is the
    /// block's output channels (weights `f` per channel and tap, output rows `f` apart).
    #[derive(Clone, Copy)]
    pub struct ChannelsTile<'a> {
        pub x: *const f32,
        pub bases: &'a [usize],
        /// Elements from one channel to the next inside a block of sixteen, and from one
        /// block to the next (`16·chan` in planar frames, one lane in blocked ones).
        pub chan: usize,
        pub block: usize,
        pub taps: &'a [usize],
        pub w: *const f32,
        pub cn: usize,
        /// Output channels per block: the packed weights' width.
        pub f: usize,
        /// Output position `i`'s vector `v` at `out + i·ld + v·vstride`.
        pub out: *mut f32,
        pub ld: usize,
        pub vstride: usize,
        pub accumulate: bool,
        /// The epilogue, applied as the tile stores (its sum at the same offsets as `out`).
        pub finish: Option<Finish<'a>>,
        pub ahead: &'a [f32],
    }

    /// [`channels`] for `T` positions × `vectors` (1 to 4) vectors of output channels.
    ///
    /// # Safety
    /// As [`channels`].
    pub unsafe fn channels_of<const T: usize>(vectors: usize, tile: &ChannelsTile) {
        // SAFETY: the caller's contract.
        unsafe {
            match vectors {
                4 => channels::<T, 4>(tile),
                3 => channels::<T, 3>(tile),
                2 => channels::<T, 2>(tile),
                _ => channels::<T, 1>(tile),
            }
        }
    }

    /// [`super::tile`] for `T` positions × the first `16·V` of a block's `f` output channels,
    /// with the taps' offsets given.
    ///
    /// # Safety
    /// As [`super::tile`], with `16·V ≤ f`.
    #[target_feature(enable = "avx512f")]
    unsafe fn channels<const T: usize, const V: usize>(tile: &ChannelsTile) {
        let ChannelsTile {
            x,
            bases,
            chan,
            block,
            taps,
            w,
            cn,
            f,
            out,
            ld,
            vstride,
            accumulate,
            finish,
            ahead,
        } = *tile;
        // `ahead`'s lines, as many per channel as share them out over `cn`.
        let (mut pf, pf_end) = (ahead.as_ptr(), ahead.as_ptr_range().end);
        let per_channel = ahead.len().div_ceil(LANES).div_ceil(cn.max(1)) * LANES;
        let mut prefetch = || {
            let stop = pf.wrapping_add(per_channel);
            while pf < pf_end && pf < stop {
                _mm_prefetch::<_MM_HINT_T0>(pf.cast());
                pf = pf.wrapping_add(LANES);
            }
        };
        // The lines the epilogue reads (the residual sum) and, on the first chunk, those the
        // tile writes, asked for before its sums (at batch 8 they are in memory, not in a
        // cache: the loads after the last FMA waited for them).
        for i in 0..T {
            for v in 0..V {
                let at = i * ld + v * vstride;
                if let Some(Finish { sum: Some(s), .. }) = finish {
                    _mm_prefetch::<_MM_HINT_T0>(s.as_ptr().wrapping_add(at).cast());
                }
                if !accumulate {
                    prefetch_for_write(out.wrapping_add(at));
                }
            }
        }
        // SAFETY (whole body): every pointer offset stays inside the extents of the contract.
        unsafe {
            let mut acc = [[_mm512_setzero_ps(); V]; T];
            if accumulate {
                for (i, row) in acc.iter_mut().enumerate() {
                    for (v, a) in row.iter_mut().enumerate() {
                        *a = _mm512_loadu_ps(out.add(i * ld + v * vstride));
                    }
                }
            }
            let mut wp = w;
            // A pointwise convolution's tile within a row reads consecutive inputs of each
            // channel: one pointer, moved a channel at a time (not `T` of them recomputed).
            let blocked = block != LANES * chan;
            if taps.len() == 1 && blocked && (0..T).all(|i| bases[i] == bases[0] + i * LANES) {
                // The same in a blocked frame: a channel's positions are a lane of consecutive
                // lines; the first T channels of a block fetch the next tile's T lines.
                let x0 = x.add(bases[0] + taps[0]);
                for c in 0..cn {
                    prefetch();
                    let (b, l) = (c / LANES, c % LANES);
                    let xp = x0.add(b * block + l);
                    if l < T {
                        _mm_prefetch::<_MM_HINT_T0>(
                            x0.wrapping_add(b * block + (T + l) * LANES).cast(),
                        );
                    }
                    let wv: [__m512; V] =
                        std::array::from_fn(|v| _mm512_loadu_ps(wp.add(v * LANES)));
                    for (i, row) in acc.iter_mut().enumerate() {
                        let b = _mm512_set1_ps(*xp.add(i * LANES));
                        for (a, &wv) in row.iter_mut().zip(&wv) {
                            *a = _mm512_fmadd_ps(wv, b, *a);
                        }
                    }
                    wp = wp.add(f);
                }
            } else if taps.len() == 1 && !blocked && (0..T).all(|i| bases[i] == bases[0] + i) {
                let mut xp = x.add(bases[0] + taps[0]);
                // The line the next tile reads past this one's (a line of another core's L2,
                // where the op before wrote it there); on large maps two lines further (the
                // line a tile two or more ahead reads: at batch 8 the op before has left the
                // input in memory, not in a cache, and a map's channels are as many streams).
                let ahead = 2 * T - 1
                    + if chan >= FAR_PREFETCH_MIN_POSITIONS {
                        2 * LANES
                    } else {
                        0
                    };
                for _ in 0..cn {
                    prefetch();
                    _mm_prefetch::<_MM_HINT_T0>(xp.wrapping_add(ahead).cast());
                    let wv: [__m512; V] =
                        std::array::from_fn(|v| _mm512_loadu_ps(wp.add(v * LANES)));
                    for (i, row) in acc.iter_mut().enumerate() {
                        let b = _mm512_set1_ps(*xp.add(i));
                        for (a, &wv) in row.iter_mut().zip(&wv) {
                            *a = _mm512_fmadd_ps(wv, b, *a);
                        }
                    }
                    wp = wp.add(f);
                    xp = xp.add(chan);
                }
            } else {
                for c in 0..cn {
                    prefetch();
                    let xc = x.add(c / LANES * block + c % LANES * chan);
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
            }
            // The epilogue through raw pointers: a bounds check here (a panic path reading the
            // accumulators) made LLVM keep them on the stack, a store after every FMA (2.2×
            // ResNet-50's time).
            let epilogue = finish.map(|Finish { bias, sum, bounds }| {
                let b: [__m512; V] = std::array::from_fn(|v| {
                    bias.map_or(_mm512_set1_ps(-0.0), |b| {
                        _mm512_loadu_ps(b.as_ptr().add(v * LANES))
                    })
                });
                let bounds = (_mm512_set1_ps(bounds[0]), _mm512_set1_ps(bounds[1]));
                (b, sum.map(|s| s.as_ptr()), bounds)
            });
            for (i, row) in acc.iter().enumerate() {
                for (v, &a) in row.iter().enumerate() {
                    let at = i * ld + v * vstride;
                    let a = match epilogue {
                        Some((b, sum, (lo, hi))) => {
                            let s = sum.map(|s| _mm512_loadu_ps(s.add(at)));
                            finished(a, b[v], s, lo, hi)
                        }
                        None => a,
                    };
                    _mm512_storeu_ps(out.add(at), a);
                }
            }
        }
    }

    /// Writes `run` rows of 16 values (`src + i·ld + (0..16)`) into `dst` (16 values a row),
    /// finished by the epilogue: the bias of the 16 channels, the residual sum (`dst`'s
    /// layout and storage type, FP16 widened in registers), the clamp's bounds.
    ///
    /// # Safety
    /// The CPU must support AVX-512 F, BW and VL; `src` must hold `(run − 1)·ld + 16` values,
    /// `dst` and the sum `16·run`.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl")]
    pub unsafe fn store_blocked<Y: Element>(
        src: &[f32],
        ld: usize,
        dst: &mut [Y],
        bias: Option<&[f32]>,
        sum: Option<&[Y]>,
        [lo, hi]: [f32; 2],
    ) {
        let run = dst.len() / LANES;
        debug_assert!(run == 0 || src.len() >= (run - 1) * ld + LANES);
        debug_assert!(sum.is_none_or(|s| s.len() == dst.len()));
        // SAFETY (whole body): the loads stay inside `src`, the bias and the sum, the stores
        // inside `dst` (the contract).
        unsafe {
            let (lo, hi) = (_mm512_set1_ps(lo), _mm512_set1_ps(hi));
            // x + (−0) is x for every x: a missing bias changes nothing.
            let b = bias.map_or(_mm512_set1_ps(-0.0), |b| _mm512_loadu_ps(b.as_ptr()));
            for i in 0..run {
                let s = sum.map(|s| load(s.as_ptr().add(i * LANES), !0));
                let v = finished(_mm512_loadu_ps(src.as_ptr().add(i * ld)), b, s, lo, hi);
                store(dst.as_mut_ptr().add(i * LANES), !0, v);
            }
        }
    }

    /// Writes 16 rows of 16 values (`src + i·ld + (0..16)`, i < 16), transposed and finished
    /// by `columns`' epilogue: value `l` of row `i` goes to `dst[l][at + i]`, for the first
    /// `dst.len() ≤ 16` columns `l` and the rows `i < dst[l].len() − at` (at most 16); the lines
    /// `TRANSPOSE_AHEAD` values further on are prefetched for writing (a prefetch never faults).
    ///
    /// # Safety
    /// The CPU must support AVX-512 F, BW and VL, `src` must hold `15·ld + 16` values,
    /// `columns.bias` (if any) a value per column, and `columns.sum` none or a row per column as
    /// long as its `dst`.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl")]
    pub unsafe fn transpose<Y: Element>(
        src: &[f32],
        ld: usize,
        dst: &mut [&mut [Y]],
        at: usize,
        columns: &Columns,
    ) {
        debug_assert!(src.len() >= 15 * ld + LANES && dst.len() <= LANES);
        debug_assert!(columns.sum.is_empty() || columns.sum.len() == dst.len());
        let [lo, hi] = columns.bounds;
        // SAFETY (whole body): the loads stay inside `src` and the sum rows (the contract), the
        // stores inside each `dst[l]` (masked to its length).
        unsafe {
            let (lo, hi) = (_mm512_set1_ps(lo), _mm512_set1_ps(hi));
            let r = std::array::from_fn(|i| _mm512_loadu_ps(src.as_ptr().add(i * ld)));
            for d in dst.iter() {
                prefetch_for_write(d.as_ptr().wrapping_add(at + TRANSPOSE_AHEAD));
            }
            for (l, (column, d)) in transpose16(r).into_iter().zip(dst.iter_mut()).enumerate() {
                let m = first(d.len() - at);
                // x + (−0) is x for every x: a missing bias changes nothing.
                let b = _mm512_set1_ps(columns.bias.map_or(-0.0, |b| b[l]));
                let s = columns
                    .sum
                    .get(l)
                    .map(|s| _mm512_maskz_loadu_ps(m, s.as_ptr().add(at)));
                let v = finished(column, b, s, lo, hi);
                store(d.as_mut_ptr().add(at), m, v);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dtype::DType;
    use crate::ops::Conv;
    use crate::tensor::TensorDesc;

    #[test]
    fn packed_weights_start_on_a_cache_line_in_block_channel_tap_lane_order() {
        let desc = |shape: &[usize]| TensorDesc::new(DType::F32, shape).unwrap();
        let (k, c) = (7, 3);
        let plan = Conv::default()
            .plan(&desc(&[1, c, 5, 5]), &desc(&[k, c, 3, 3]), None, None)
            .unwrap();
        let w: Vec<f32> = (0..k * c * 9).map(|i| i as f32 + 1.0).collect();
        for f in [6, 8, 64] {
            let packed = pack(&plan, f, &HostData::F32(w.clone()));
            assert_eq!(packed.as_ptr() as usize % 64, 0, "f = {f}");
            assert_eq!(packed.len(), k.next_multiple_of(f) * c * 9, "f = {f}");
            for (i, &v) in packed.iter().enumerate() {
                let (kb, ci, t, fi) = (i / (c * 9 * f), i / (9 * f) % c, i / f % 9, i % f);
                let ki = kb * f + fi;
                let want = if ki < k {
                    w[(ki * c + ci) * 9 + t]
                } else {
                    0.0
                };
                assert_eq!(v, want, "f = {f}, packed value {i}");
            }
        }
    }

    #[test]
    fn prefetch_shares_cover_each_run_once() {
        // Runs of 9 taps × 64 channels × 14 input channels (8064 values, 504 lines), 3 blocks
        // 2 chunks apart, shared over 9 and over 1000 passes (more passes than lines).
        let (len, stride) = (14 * 9 * 64, 28 * 9 * 64);
        let w = vec![0.0f32; 5 * stride];
        let next = Weights {
            start: 2 * stride + len,
            stride,
            len,
            blocks: 3,
        };
        let base = w.as_ptr() as usize;
        for passes in [1, 9, 1000] {
            for kbi in 0..4 {
                let shares: Vec<&[f32]> = (0..passes)
                    .map(|p| next.share(&w, kbi, p, passes))
                    .collect();
                if kbi == 3 {
                    assert!(shares.iter().all(|s| s.is_empty()), "no block 3");
                    continue;
                }
                let mut at = base + 4 * (next.start + kbi * stride);
                for s in shares.iter().filter(|s| !s.is_empty()) {
                    assert_eq!(s.as_ptr() as usize, at, "shares follow each other");
                    assert_eq!((at - base) % 64, 0, "a share starts on a line");
                    at += 4 * s.len();
                }
                assert_eq!(
                    at,
                    base + 4 * (next.start + kbi * stride + len),
                    "{passes} passes"
                );
            }
        }
    }

    #[test]
    fn channels_tiles_cut_output_channels_into_even_blocks() {
        // (k, vectors per block): the fewest blocks of at most 4 vectors, as even as they go.
        for (k, v) in [(1, 1), (16, 1), (21, 2), (32, 2), (48, 3), (64, 4), (96, 3)] {
            assert_eq!(
                Tile::Channels { t: 6, v: 4 }.even(k),
                Tile::Channels { t: 6, v },
                "{k}"
            );
        }
        for (k, v) in [(144, 3), (160, 4), (200, 4), (576, 4), (1280, 4)] {
            assert_eq!(
                Tile::Channels { t: 6, v: 4 }.even(k),
                Tile::Channels { t: 6, v },
                "{k}"
            );
        }
        let positions = Tile::Positions { t: 2, f: 12 };
        assert_eq!(positions.even(96), positions);
        // MobileNetV2's 576 → 96 projection on its 14×14 map: two blocks of 3 vectors (padded
        // to 64 channels, or in `Positions` tiles of 32 frame positions, it computed a quarter
        // or an eighth more).
        let desc = |shape: &[usize]| TensorDesc::new(DType::F32, shape).unwrap();
        let plan = Conv::default()
            .plan(
                &desc(&[1, 576, 14, 14]),
                &desc(&[96, 576, 1, 1]),
                None,
                None,
            )
            .unwrap();
        assert_eq!(
            Geometry::new(&plan, Layouts::default()).tile,
            Tile::Channels { t: 6, v: 3 }
        );
    }

    #[test]
    fn channel_groups_are_equal_and_divide_among_the_threads() {
        let desc = |shape: &[usize]| TensorDesc::new(DType::F32, shape).unwrap();
        // (input, output channels, kernel size, threads, tile, blocks per group, equal groups
        // making a multiple of the threads): a 3×3 convolution of 12 blocks of 6 channels over 4
        // blocks of rows on `Positions` tiles, its groups as large as leave ITEMS_PER_THREAD
        // items per thread; MobileNetV2's pointwise convolutions on `Channels` tiles, cut to
        // one block where it has a million terms (320 → 1280 and 576 → 96 on 7×7 and 14×14) or
        // two where it has half a million (160 → 960 on 7×7: 15 blocks make no equal groups).
        let positions = Tile::Positions { t: 4, f: 6 };
        let channels = |v| Tile::Channels { t: 6, v };
        for (x, k, r, threads, tile, want, equal) in [
            ([1, 8, 40, 40], 72, 3, 2, positions, 6, true),
            ([1, 8, 40, 40], 72, 3, 1, positions, 12, true),
            ([1, 8, 40, 40], 72, 3, 4, positions, 3, true),
            ([1, 320, 7, 7], 1280, 1, 2, channels(4), 1, true),
            ([1, 320, 7, 7], 1280, 1, 1, channels(4), 1, true),
            ([1, 576, 14, 14], 96, 1, 2, channels(3), 1, true),
            ([1, 160, 7, 7], 960, 1, 2, channels(4), 2, false),
        ] {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            let conv = Conv {
                pads: [r / 2; 4],
                ..Conv::default()
            };
            let plan = conv
                .plan(&desc(&x), &desc(&[k, x[1], r, r]), None, None)
                .unwrap();
            let (chosen, kbs, group, items) = pool.install(|| {
                let g = Geometry::new(&plan, Layouts::default());
                let (blocks, kbs, group, groups) = split(&plan, g.rows, g.tile, plan.n);
                (g.tile, kbs, group, plan.n * blocks * groups)
            });
            let case = format!("{x:?} → {k} on {threads} threads");
            assert_eq!(chosen, tile, "{case}");
            assert_eq!(group, want, "{case}");
            if equal {
                assert_eq!(kbs % group, 0, "{case}: equal groups");
                assert_eq!(items % threads, 0, "{case}: {items} items");
            }
        }
    }

    #[test]
    fn items_divide_evenly_among_the_threads() {
        let desc = |shape: &[usize]| TensorDesc::new(DType::F32, shape).unwrap();
        let conv = Conv {
            pads: [1; 4],
            ..Conv::default()
        };
        // (input [n, c, h, w], threads, rows per item): ResNet-50's 3×3 layers' maps.
        for (x, threads, want) in [
            // 8 rows (512 positions) make 7 items: 7 rows make 8.
            ([1, 64, 56, 56], 2, 7),
            ([1, 64, 56, 56], 1, 8),
            ([1, 64, 56, 56], 4, 7),
            // Even: 7 images of 7 items each; 2 blocks of 14 rows (not 17 + 11) × 2 channel
            // groups.
            ([7, 64, 56, 56], 7, 8),
            ([1, 128, 28, 28], 2, 14),
        ] {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            let plan = conv
                .plan(&desc(&x), &desc(&[x[1], x[1], 3, 3]), None, None)
                .unwrap();
            let (rows, items) = pool.install(|| {
                let g = Geometry::new(&plan, Layouts::default());
                let (blocks, _, _, groups) = split(&plan, g.rows, g.tile, plan.n);
                (g.rows, plan.n * blocks * groups)
            });
            assert_eq!(rows, want, "{x:?} on {threads} threads");
            assert_eq!(
                items % threads,
                0,
                "{x:?} on {threads} threads: {items} items"
            );
        }
    }
}

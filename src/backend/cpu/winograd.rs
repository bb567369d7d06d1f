//! Winograd F(2×2, 3×3) convolution with AVX-512 for dense 3×3 convolutions with unit strides
//! and dilations (ResNet's and VGG's 3×3 layers): each 2×2 block of output positions, a *tile*,
//! is computed from the 4×4 input patch under it with 16 multiply-adds per (input channel,
//! output channel) instead of the direct sum's 36 (Lavin and Gray, "Fast Algorithms for
//! Convolutional Neural Networks", 2016).
//!
//! With `d` a tile's 4×4 patch of one input channel and `g` one 3×3 filter, the tile's outputs
//! are `Aᵀ[(G g Gᵀ) ⊙ (Bᵀ d B)]A`; summed over the input channels, the 16 element products
//! become 16 matrix products. Work is cut into items of (image, block of tile rows, group of
//! output channels), shared by the threads; each item
//! 1. transforms its tiles' input, `V[ξ][c][t] = (Bᵀ d B)[ξ]`, sixteen tiles of a tile row per
//!    vector, read straight from `x` with masked loads (padding reads as zero; FP16 widened);
//! 2. multiplies `M[ξ] = U[ξ] · V[ξ]` for each of the 16 `ξ`, in register tiles of 6 output
//!    channels × 64 tiles, where `U = G g Gᵀ` is computed once per plan (in f64, rounded once)
//!    and cached with the weights as `[ξ][k / 6][c][6]` (see [`weights`]);
//! 3. transforms the products back, `Aᵀ M A`, applies the epilogue (bias, residual sum, ReLU or
//!    Clip) and stores `y` (FP16 rounded), two vectors of tiles interleaved into each output row.
//!
//! The transforms' coefficients are 0, ±1 and ±½: each output is the exact convolution's terms
//! regrouped, with a few more roundings (checked against float64 by the conformance suite's 3×3
//! cases and `tests/cpu.rs`'s `winograd_conv_edges`). A NaN input reaches exactly the outputs
//! whose 3×3 windows hold it, as in the direct sum (`winograd_conv_nan_reaches_only_its_windows`);
//! an infinite one may give NaN where the direct sum gives ±∞ (the transforms subtract it from
//! itself).

use rayon::prelude::*;

#[cfg(target_arch = "x86_64")]
use super::avx512;
use super::conv::Addends;
use super::derived::{CpuData, Key};
use super::direct::{Packed, PackedWeights};
use crate::backend::MemoryAccount;
use crate::dtype::Element;
use crate::ops::ConvPlan;
use crate::tensor::HostData;
use std::sync::Arc;

/// f32 lanes of an AVX-512 vector.
const LANES: usize = 16;

/// Output channels of a register tile: each of its transformed weights is broadcast.
const KR: usize = 6;

/// Vectors of tiles of a register tile (`KR × VR` accumulators).
const VR: usize = 4;

/// Most tiles of a block of tile rows (a whole number of rows, at least one).
const BLOCK_TILES: usize = 128;

/// Transformed input values of one chunk of input channels for one `ξ`, at most (32 KiB of
/// f32, an L1): see [`Grid::chunk`].
const CHUNK_VALUES: usize = 8 << 10;

/// Most output channels of an item: its products (16 per channel and tile) stay in L2.
const GROUP_CHANNELS: usize = 128;

/// Work items per thread, at least, where the output channels are split for them.
const ITEMS_PER_THREAD: usize = 2;

/// Fewest input and output channels: below, the transforms cost more than the products save.
const MIN_CHANNELS: usize = 16;

/// Fewest tiles per tile row (output columns: twice as many): the transforms compute a row's
/// tiles 16 at a time, and on narrower maps most of each vector is wasted (ResNet-50's 7×7
/// layer, 512 channels: 0.81–0.92× the direct kernel's speed at batch 1, 1.05–1.10× at batch 8;
/// in-process alternation, one and two threads, Intel Xeon model 207).
const MIN_ROW_TILES: usize = 7;

/// Fewest tiles per call: each transformed filter (16 values for the 9 of a 3×3 one) is read
/// once per call and used once per tile. ResNet-50's 14×14 layer at batch 1 (49 tiles, 4.2 MiB
/// of transformed weights) ran 1.37× the direct kernel's speed alone, but 0.87–0.91× inside the
/// model on one thread and 0.96–0.99× on two, where the weights come from memory, not from the
/// cache a repeated call leaves them in (the 56×56 layer: 1.35–1.55× inside the model).
const MIN_TILES: usize = 128;

/// `G`, which transforms a 3×3 filter's rows and columns into four.
const G: [[f64; 3]; 4] = [
    [1.0, 0.0, 0.0],
    [0.5, 0.5, 0.5],
    [0.5, -0.5, 0.5],
    [0.0, 0.0, 1.0],
];

/// Whether this kernel computes `plan` on this CPU: one group, a 3×3 kernel, unit strides and
/// dilations, at least [`MIN_CHANNELS`] input and output channels, output rows of at least
/// [`MIN_ROW_TILES`] tiles and [`MIN_TILES`] tiles in all, and AVX-512 F, BW and VL.
pub fn applies(plan: &ConvPlan) -> bool {
    #[cfg(target_arch = "x86_64")]
    let cpu = avx512::supported();
    #[cfg(not(target_arch = "x86_64"))]
    let cpu = false;
    cpu && plan.group == 1
        && [plan.r, plan.s] == [3, 3]
        && plan.stride == [1, 1]
        && plan.dilation == [1, 1]
        && plan.c >= MIN_CHANNELS
        && plan.k >= MIN_CHANNELS
        && plan.q.div_ceil(2) >= MIN_ROW_TILES
        && plan.n * plan.p.div_ceil(2) * plan.q.div_ceil(2) >= MIN_TILES
}

/// `plan`'s weights `[k, c, 3, 3]` transformed (see the module doc): the form cached with the
/// tensor (charged to `account`) where the cache's rules allow, else transformed now.
pub fn weights(plan: &ConvPlan, w: &CpuData, account: Option<&Arc<dyn MemoryAccount>>) -> Packed {
    let len = 16 * plan.k.next_multiple_of(KR) * plan.c;
    let key = Key::new("winograd weights", &[plan.k, plan.c]);
    Packed::of(w, &key, len, account, |data| transform(plan, data))
}

/// `U[ξ][k / KR][c][KR] = (G g Gᵀ)[ξ]` of each filter `g = w[k][c]`, output channels past `k`
/// zero.
fn transform(plan: &ConvPlan, w: &HostData) -> PackedWeights {
    fn transformed<T: Element>(plan: &ConvPlan, w: &[T]) -> PackedWeights {
        let (k, c) = (plan.k, plan.c);
        let mut u = PackedWeights::zeros(16 * k.next_multiple_of(KR) * c);
        u.par_chunks_mut(k.next_multiple_of(KR) * c)
            .enumerate()
            .for_each(|(xi, u)| {
                let (a, b) = (G[xi / 4], G[xi % 4]);
                for ki in 0..k {
                    for ci in 0..c {
                        let g = &w[(ki * c + ci) * 9..][..9];
                        let v: f64 = (0..3)
                            .map(|i| {
                                let row: f64 =
                                    (0..3).map(|j| g[3 * i + j].to_f32() as f64 * b[j]).sum();
                                a[i] * row
                            })
                            .sum();
                        u[(ki / KR * c + ci) * KR + ki % KR] = v as f32;
                    }
                }
            });
        u
    }
    match w {
        HostData::F32(w) => transformed(plan, w),
        HostData::F16(w) => transformed(plan, w),
    }
}

/// How a plan's tiles and output channels are cut into items. Tile rows are numbered across
/// the batch (image `i`'s row `ty` is row `i·tp + ty`), so that a block of rows may span images
/// and small maps still fill whole vectors.
#[derive(Clone, Copy, Debug)]
struct Grid {
    /// Tile rows per image and tiles per row: `⌈p/2⌉`, `⌈q/2⌉`.
    tp: usize,
    tq: usize,
    /// Tile rows per block, and blocks.
    rows: usize,
    blocks: usize,
    /// A block's tiles, rounded up to whole vectors.
    tiles: usize,
    /// Input channels per chunk: a chunk's transformed inputs for one `ξ` stay in L1 while
    /// every output channel block is multiplied by them.
    chunk: usize,
    /// Blocks of `KR` output channels: in all, per group, and groups.
    kbs: usize,
    per_group: usize,
    groups: usize,
}

impl Grid {
    fn new(plan: &ConvPlan, threads: usize) -> Self {
        let (tp, tq) = (plan.p.div_ceil(2), plan.q.div_ceil(2));
        let all = plan.n * tp;
        // The blocks of at most BLOCK_TILES tiles (whole rows, as even as they can be) that
        // compute the fewest tiles in all, rounded up to vectors; the fewest blocks among equals.
        let most = (BLOCK_TILES / tq).clamp(1, all);
        let padded = |blocks: usize| {
            let rows = all.div_ceil(blocks);
            let last = all - (blocks - 1) * rows;
            (blocks - 1) * (rows * tq).next_multiple_of(LANES) + (last * tq).next_multiple_of(LANES)
        };
        let blocks = (all.div_ceil(most)..=all)
            .filter(|&b| (b - 1) * all.div_ceil(b) < all)
            .min_by_key(|&b| (padded(b), b))
            .unwrap_or(all);
        let rows = all.div_ceil(blocks);
        let tiles = (rows * tq).next_multiple_of(LANES);
        let kbs = plan.k.div_ceil(KR);
        let groups = (ITEMS_PER_THREAD * threads)
            .div_ceil(blocks)
            .max(plan.k.div_ceil(GROUP_CHANNELS))
            .clamp(1, kbs);
        let per_group = kbs.div_ceil(groups);
        Grid {
            tp,
            tq,
            rows,
            blocks,
            tiles,
            chunk: (CHUNK_VALUES / tiles).clamp(1, plan.c),
            kbs,
            per_group,
            groups: kbs.div_ceil(per_group),
        }
    }

    fn items(&self) -> usize {
        self.blocks * self.groups
    }

    /// f32 values of an item's buffers: transformed inputs of a chunk, and products.
    fn buffer_len(&self) -> (usize, usize) {
        (
            16 * self.chunk * self.tiles,
            16 * self.per_group * KR * self.tiles,
        )
    }
}

/// Computes `plan` (for which [`applies`] holds) in FP32 from the input `x` (FP32, or FP16
/// widened as it is loaded), the weights as [`weights`] returns them, the bias and the residual
/// sum, into `y` (FP32, or FP16 rounded as it is stored). `y` is fully written.
pub fn conv<Y: Element>(plan: &ConvPlan, x: &HostData, u: &[f32], add: Addends, y: &mut [Y]) {
    match x {
        HostData::F32(x) => conv_from(plan, x, u, add, y),
        HostData::F16(x) => conv_from(plan, x, u, add, y),
    }
}

fn conv_from<T: Element, Y: Element>(
    plan: &ConvPlan,
    x: &[T],
    u: &[f32],
    add: Addends,
    y: &mut [Y],
) {
    #[cfg(target_arch = "x86_64")]
    {
        use super::scratch::TaskBuffer;
        use super::Disjoint;

        assert!(
            applies(plan),
            "winograd::conv on a plan it does not apply to"
        );
        assert_eq!(x.len(), plan.n * plan.c * plan.h * plan.w);
        assert_eq!(y.len(), plan.n * plan.k * plan.p * plan.q);
        assert_eq!(u.len(), 16 * plan.k.next_multiple_of(KR) * plan.c);
        let grid = Grid::new(plan, rayon::current_num_threads());
        let (v_len, m_len) = grid.buffer_len();
        let out = Disjoint::new(y);
        (0..grid.items()).into_par_iter().for_each(|i| {
            let mut buffer = TaskBuffer::take(v_len + m_len + LANES);
            let values = buffer.values(v_len + m_len + LANES);
            let at = values.as_ptr().align_offset(64).min(LANES);
            let (v, m) = values[at..][..v_len + m_len].split_at_mut(v_len);
            let item = Item {
                block: i / grid.groups,
                group: i % grid.groups,
            };
            // SAFETY: the CPU supports AVX-512 F, BW and VL (`applies`); the lengths of `x`,
            // `u`, `y` and the buffers are the plan's and the grid's (asserted and built
            // above); items write disjoint parts of `y` (their images, tile rows and output
            // channels).
            unsafe { avx512_kernel::item(plan, &grid, item, x, u, add, out, v, m) };
        });
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (plan, x, u, add, y);
        unreachable!("winograd::applies is false without x86-64");
    }
}

/// One work item: a block of tile rows, a group of output channel blocks.
#[derive(Clone, Copy, Debug)]
struct Item {
    block: usize,
    group: usize,
}

#[cfg(target_arch = "x86_64")]
mod avx512_kernel {
    use std::arch::x86_64::*;

    use super::super::avx512::{first, inside, load, store};
    use super::super::conv::Addends;
    use super::super::Disjoint;
    use super::{Grid, Item, KR, LANES, VR};
    use crate::dtype::Element;
    use crate::ops::{Clamp, ConvPlan};

    /// Computes `item` of `plan` into `y` (see the module doc), `v` and `m` its buffers.
    ///
    /// # Safety
    /// The CPU must support AVX-512 F, BW and VL; `x`, `u` and `y` have the plan's lengths and
    /// `v` and `m` the grid's ([`Grid::buffer_len`]); no other item writes this one's part of
    /// `y`.
    #[allow(clippy::too_many_arguments)]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl")]
    pub unsafe fn item<T: Element, Y: Element>(
        plan: &ConvPlan,
        grid: &Grid,
        item: Item,
        x: &[T],
        u: &[f32],
        add: Addends,
        y: Disjoint<Y>,
        v: &mut [f32],
        m: &mut [f32],
    ) {
        let (c, tiles, tq) = (plan.c, grid.tiles, grid.tq);
        let g0 = item.block * grid.rows;
        let g1 = (g0 + grid.rows).min(plan.n * grid.tp);
        let used = (g1 - g0) * tq;
        let kb0 = item.group * grid.per_group;
        let kb1 = (kb0 + grid.per_group).min(grid.kbs);
        let kg = grid.per_group * KR;
        let (vp, mp) = (v.as_mut_ptr(), m.as_mut_ptr());
        for c0 in (0..c).step_by(grid.chunk) {
            let cn = grid.chunk.min(c - c0);
            // 1. Input transform of the chunk: V[ξ][ci][t], the lanes past the block's tiles
            // zeroed (they are multiplied, never stored).
            for g in g0..g1 {
                let (image, ty) = (g / grid.tp, g % grid.tp);
                let xs = x.as_ptr().add((image * c + c0) * plan.h * plan.w);
                for tx0 in (0..tq).step_by(LANES) {
                    let rows = Rows::new(plan, ty, tx0);
                    let lanes = first(tq - tx0);
                    let t = (g - g0) * tq + tx0;
                    for ci in 0..cn {
                        let d = rows.transform(xs.add(ci * plan.h * plan.w));
                        for (xi, &d) in d.iter().enumerate() {
                            _mm512_mask_storeu_ps(vp.add((xi * cn + ci) * tiles + t), lanes, d);
                        }
                    }
                }
            }
            if !used.is_multiple_of(LANES) {
                for row in 0..16 * cn {
                    let t = vp.add(row * tiles + used);
                    _mm512_mask_storeu_ps(t, first(LANES - used % LANES), _mm512_setzero_ps());
                }
            }
            // 2. Products: M[ξ][kk][t] (+)= U[ξ][kk][chunk] · V[ξ][chunk][t] for the group's
            // output channels kk (whole blocks of KR).
            let computed = used.next_multiple_of(LANES);
            for xi in 0..16 {
                for kb in kb0..kb1 {
                    let ub = u.as_ptr().add(((xi * grid.kbs + kb) * c + c0) * KR);
                    let vb = vp.add(xi * cn * tiles);
                    let mb = mp.add((xi * kg + (kb - kb0) * KR) * tiles);
                    for t0 in (0..computed).step_by(VR * LANES) {
                        let (vb, mb, more) = (vb.add(t0), mb.add(t0), c0 > 0);
                        match (computed - t0) / LANES {
                            1 => product::<1>(ub, vb, tiles, cn, mb, more),
                            2 => product::<2>(ub, vb, tiles, cn, mb, more),
                            3 => product::<3>(ub, vb, tiles, cn, mb, more),
                            _ => product::<VR>(ub, vb, tiles, cn, mb, more),
                        }
                    }
                }
            }
        }

        // 3. Output transform, epilogue, stores.
        let bounds = Clamp::bounds(plan.clamp);
        let (lo, hi) = (_mm512_set1_ps(bounds[0]), _mm512_set1_ps(bounds[1]));
        let (pq, k1) = (plan.p * plan.q, (kb1 * KR).min(plan.k));
        for k in kb0 * KR..k1 {
            // x + (−0) is x for every x: a missing bias changes nothing.
            let bias = _mm512_set1_ps(add.bias.map_or(-0.0, |b| b[k]));
            let mk = mp.add((k - kb0 * KR) * tiles);
            for g in g0..g1 {
                let (image, ty) = (g / grid.tp, g % grid.tp);
                let plane = (image * plan.k + k) * pq;
                let sum = add.sum.map(|s| s[plane..][..pq].as_ptr());
                let yp = y.ptr().add(plane);
                for tx0 in (0..tq).step_by(LANES) {
                    let t = (g - g0) * tq + tx0;
                    // Lanes past the row's last tile load zero (they may lie past the buffer).
                    let lanes = first(tq - tx0);
                    let mv: [__m512; 16] = std::array::from_fn(|xi| {
                        _mm512_maskz_loadu_ps(lanes, mk.add(xi * kg * tiles + t))
                    });
                    for (a, row) in output_tiles(mv).iter().enumerate() {
                        let p = 2 * ty + a;
                        if p >= plan.p {
                            break;
                        }
                        for (half, &vals) in row.iter().enumerate() {
                            let col = 2 * tx0 + half * LANES;
                            if col >= plan.q {
                                break;
                            }
                            let mask = first(plan.q - col);
                            let at = p * plan.q + col;
                            let mut v = _mm512_add_ps(vals, bias);
                            if let Some(s) = sum {
                                // (conv + bias) + sum, as `conv::epilogue` rounds it.
                                v = _mm512_add_ps(v, _mm512_maskz_loadu_ps(mask, s.add(at)));
                            }
                            // max and min return their second operand when either is NaN: NaN
                            // stays NaN, as in `Clamp::apply`.
                            v = _mm512_min_ps(hi, _mm512_max_ps(lo, v));
                            store(yp.add(at), mask, v);
                        }
                    }
                }
            }
        }
    }

    /// Where the 16 tiles `(ty, tx0..tx0 + 16)` of a tile row read a channel's plane: the offset
    /// of each input row of their 4×4 patches (None: a padding row) and the masks of the
    /// columns `col + (0..32)` and `col + 2 + (0..32)` inside the plane's rows.
    struct Rows {
        offsets: [Option<isize>; 4],
        masks: [__mmask16; 4],
    }

    impl Rows {
        fn new(plan: &ConvPlan, ty: usize, tx0: usize) -> Self {
            let (h, w) = (plan.h as isize, plan.w as isize);
            let col = (2 * tx0) as isize - plan.pad[1] as isize;
            Rows {
                offsets: std::array::from_fn(|i| {
                    let row = (2 * ty + i) as isize - plan.pad[0] as isize;
                    (0..h).contains(&row).then_some(row * w + col)
                }),
                masks: [0, 16, 2, 18].map(|d| inside(col + d, w)),
            }
        }

        /// `Bᵀ d B` of the 16 tiles' patches of `plane` (lane `l`: tile `tx0 + l`; lanes past
        /// the row's last tile hold values of no tile), as 16 vectors indexed `4·i + j`.
        ///
        /// # Safety
        /// The CPU must support AVX-512 F, BW and VL; `plane` is a channel's plane of the
        /// plan's input.
        #[target_feature(enable = "avx512f,avx512bw,avx512vl")]
        #[inline]
        unsafe fn transform<T: Element>(&self, plane: *const T) -> [__m512; 16] {
            let even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
            let odd = _mm512_setr_epi32(1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31);
            // d[i][j]: input row 2·ty + i − pad, column 2·(tx0 + l) + j − pad of lane l.
            let mut d = [[_mm512_setzero_ps(); 4]; 4];
            for (di, offset) in d.iter_mut().zip(self.offsets) {
                if let Some(o) = offset {
                    let base = plane.wrapping_offset(o);
                    let [m0, m1, m2, m3] = self.masks;
                    let a0 = load(base, m0);
                    let a1 = load(base.wrapping_add(16), m1);
                    let b0 = load(base.wrapping_add(2), m2);
                    let b1 = load(base.wrapping_add(18), m3);
                    *di = [
                        _mm512_permutex2var_ps(a0, even, a1),
                        _mm512_permutex2var_ps(a0, odd, a1),
                        _mm512_permutex2var_ps(b0, even, b1),
                        _mm512_permutex2var_ps(b0, odd, b1),
                    ];
                }
            }
            // Bᵀ on the columns, then B on the rows.
            let mut t = [[_mm512_setzero_ps(); 4]; 4];
            for (j, tj) in t.iter_mut().enumerate() {
                *tj = bt(d[0][j], d[1][j], d[2][j], d[3][j]);
            }
            let mut out = [_mm512_setzero_ps(); 16];
            for i in 0..4 {
                out[4 * i..4 * i + 4].copy_from_slice(&bt(t[0][i], t[1][i], t[2][i], t[3][i]));
            }
            out
        }
    }

    /// `Bᵀ (d0, d1, d2, d3)`.
    #[target_feature(enable = "avx512f")]
    #[inline]
    fn bt(d0: __m512, d1: __m512, d2: __m512, d3: __m512) -> [__m512; 4] {
        [
            _mm512_sub_ps(d0, d2),
            _mm512_add_ps(d1, d2),
            _mm512_sub_ps(d2, d1),
            _mm512_sub_ps(d1, d3),
        ]
    }

    /// `Aᵀ (m0, m1, m2, m3)`.
    #[target_feature(enable = "avx512f")]
    #[inline]
    fn at(m0: __m512, m1: __m512, m2: __m512, m3: __m512) -> [__m512; 2] {
        [
            _mm512_add_ps(_mm512_add_ps(m0, m1), m2),
            _mm512_sub_ps(_mm512_sub_ps(m1, m2), m3),
        ]
    }

    /// `Aᵀ M A` of 16 tiles (`m[4·i + j]`, a tile per lane): per output row `a` of the tiles,
    /// its two vectors of 16 consecutive output columns (the tiles' two columns interleaved).
    #[target_feature(enable = "avx512f")]
    #[inline]
    fn output_tiles(m: [__m512; 16]) -> [[__m512; 2]; 2] {
        let lo = _mm512_setr_epi32(0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23);
        let hi = _mm512_setr_epi32(8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31);
        // Aᵀ on the columns: s[j] = rows 0 and 1 of column j.
        let s: [[__m512; 2]; 4] = std::array::from_fn(|j| at(m[j], m[4 + j], m[8 + j], m[12 + j]));
        std::array::from_fn(|a| {
            let [y0, y1] = at(s[0][a], s[1][a], s[2][a], s[3][a]);
            [
                _mm512_permutex2var_ps(y0, lo, y1),
                _mm512_permutex2var_ps(y0, hi, y1),
            ]
        })
    }

    /// `M[kk][t] = Σ_c U[c][kk] · V[c][t]` for `KR` output channels and `V` vectors of tiles,
    /// added to `M` where `more`: `u` at `[c][KR]`, `v` and `m` rows `ld` apart.
    #[target_feature(enable = "avx512f")]
    unsafe fn product<const V: usize>(
        u: *const f32,
        v: *const f32,
        ld: usize,
        c: usize,
        m: *mut f32,
        more: bool,
    ) {
        let mut acc = [[_mm512_setzero_ps(); V]; KR];
        if more {
            for (i, row) in acc.iter_mut().enumerate() {
                for (j, a) in row.iter_mut().enumerate() {
                    *a = _mm512_loadu_ps(m.add(i * ld + j * LANES));
                }
            }
        }
        let (mut up, mut vp) = (u, v);
        for _ in 0..c {
            let vv: [__m512; V] = std::array::from_fn(|j| _mm512_loadu_ps(vp.add(j * LANES)));
            for (i, row) in acc.iter_mut().enumerate() {
                let b = _mm512_set1_ps(*up.add(i));
                for (a, &x) in row.iter_mut().zip(&vv) {
                    *a = _mm512_fmadd_ps(x, b, *a);
                }
            }
            up = up.add(KR);
            vp = vp.add(ld);
        }
        for (i, row) in acc.iter().enumerate() {
            for (j, &a) in row.iter().enumerate() {
                _mm512_storeu_ps(m.add(i * ld + j * LANES), a);
            }
        }
    }
}

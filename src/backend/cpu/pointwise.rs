//! FP16 pointwise convolutions (1×1, stride 1, unpadded, one group) with AVX-512: `Y[k][j] =
//! Σ_c W[k][c] · X[c][j]` per image, positions `j` along the vectors, accumulated in FP32, the
//! epilogue (bias, residual sum, ReLU or Clip) applied in registers and the outputs rounded to
//! FP16 as they are stored — one pass over `y`, where the GEMM lowering's FP16 path
//! ([`super::conv::pointwise_f16`]) writes each block in FP32 and then rounds it.
//!
//! Work is cut into items of (image, block of positions, group of output channels), shared by
//! the threads. Each item widens a chunk of input channels of its positions into a buffer that
//! stays in L1 (the lanes past the block zero), then multiplies it by every block of 6 output
//! channels of its group on a register tile of 6 output channels × 64 positions
//! ([`tile_product`](super::avx512::tile_product), as in the Winograd kernel), partial sums
//! kept in a second buffer between chunks. The weights are packed once per plan as
//! `[k / 6][c][6]` in FP32 (output channels past `k` zero) and cached with the weight tensor
//! (see [`super::derived`]).
//!
//! FP32 pointwise convolutions stay on the GEMM lowering: inside ResNet-50-like chains of 1×1
//! layers at 56×56 (in-process alternation, Intel Xeon model 207) this kernel took 1.09–1.17×
//! its time in FP32, but 0.85–0.97× in FP16, and MobileNetV2 in FP16 0.90× as a whole. Those
//! on small maps with many input channels are the direct kernel's ([`super::direct::applies`],
//! picked first by the backend's launch).

use std::sync::Arc;

use half::f16;
use rayon::prelude::*;

#[cfg(target_arch = "x86_64")]
use super::avx512;
use super::conv::{is_pointwise, Addends};
use super::derived::{CpuData, Key};
use super::direct::{Packed, PackedWeights};
use crate::backend::MemoryAccount;
use crate::dtype::{DType, Element};
use crate::ops::ConvPlan;
use crate::tensor::HostData;

/// f32 lanes of an AVX-512 vector.
const LANES: usize = 16;

/// Output channels of a register tile: each of its weights is broadcast.
const KR: usize = 6;

/// Vectors of positions of a register tile (`KR × VR` accumulators).
const VR: usize = 4;

/// Most positions of an item.
const BLOCK_POSITIONS: usize = 128;

/// Input values of one chunk of input channels, at most (32 KiB of f32, an L1).
const CHUNK_VALUES: usize = 8 << 10;

/// Most output channels of an item: its partial sums stay in L2.
const GROUP_CHANNELS: usize = 128;

/// Work items per thread, at least, where the output channels are split for them.
const ITEMS_PER_THREAD: usize = 2;

/// Whether this kernel computes `plan` on this CPU: an FP16 pointwise convolution of one group,
/// and AVX-512 F, BW and VL.
pub fn applies(plan: &ConvPlan) -> bool {
    #[cfg(target_arch = "x86_64")]
    let cpu = avx512::supported();
    #[cfg(not(target_arch = "x86_64"))]
    let cpu = false;
    cpu && plan.dtype == DType::F16
        && plan.group == 1
        && is_pointwise(plan)
        && [plan.n, plan.c, plan.k, plan.p, plan.q]
            .iter()
            .all(|&d| d > 0)
}

/// `plan`'s weights `[k, c, 1, 1]` packed as `[k / 6][c][6]`: the form cached with the tensor
/// (charged to `account`) where the cache's rules allow, else packed now.
pub fn weights(plan: &ConvPlan, w: &CpuData, account: Option<&Arc<dyn MemoryAccount>>) -> Packed {
    let len = plan.k.next_multiple_of(KR) * plan.c;
    let key = Key::new("pointwise weights", &[plan.k, plan.c]);
    Packed::of(w, &key, len, account, |data| pack(plan, data))
}

fn pack(plan: &ConvPlan, w: &HostData) -> PackedWeights {
    fn packed<T: Element>(plan: &ConvPlan, w: &[T]) -> PackedWeights {
        let (k, c) = (plan.k, plan.c);
        let mut u = PackedWeights::zeros(k.next_multiple_of(KR) * c);
        for (ki, row) in w.chunks_exact(c).enumerate() {
            for (ci, &v) in row.iter().enumerate() {
                u[(ki / KR * c + ci) * KR + ki % KR] = v.to_f32();
            }
        }
        u
    }
    match w {
        HostData::F32(w) => packed(plan, w),
        HostData::F16(w) => packed(plan, w),
    }
}

/// How a plan's positions and output channels are cut into items.
#[derive(Clone, Copy, Debug)]
struct Grid {
    /// Blocks of positions per image, and positions per block (the last one may have fewer).
    blocks: usize,
    positions: usize,
    /// A block's positions rounded up to whole vectors: the buffers' row length.
    ld: usize,
    /// Input channels per chunk.
    chunk: usize,
    /// Blocks of `KR` output channels: in all, per group, and groups.
    kbs: usize,
    per_group: usize,
    groups: usize,
}

impl Grid {
    fn new(plan: &ConvPlan, threads: usize) -> Self {
        let pq = plan.p * plan.q;
        let blocks = pq.div_ceil(BLOCK_POSITIONS);
        let positions = pq.div_ceil(blocks).next_multiple_of(LANES).min(pq);
        let blocks = pq.div_ceil(positions);
        let ld = positions.next_multiple_of(LANES);
        let kbs = plan.k.div_ceil(KR);
        let groups = (ITEMS_PER_THREAD * threads)
            .div_ceil(plan.n * blocks)
            .max(plan.k.div_ceil(GROUP_CHANNELS))
            .clamp(1, kbs);
        let per_group = kbs.div_ceil(groups);
        Grid {
            blocks,
            positions,
            ld,
            chunk: (CHUNK_VALUES / ld).clamp(1, plan.c),
            kbs,
            per_group,
            groups: kbs.div_ceil(per_group),
        }
    }

    fn items(&self, plan: &ConvPlan) -> usize {
        plan.n * self.blocks * self.groups
    }

    /// f32 values of an item's buffers: a chunk of inputs, and partial sums.
    fn buffer_len(&self) -> (usize, usize) {
        (self.chunk * self.ld, self.per_group * KR * self.ld)
    }
}

/// Computes `plan` (for which [`applies`] holds) in FP32 from the input `x`, the weights as
/// [`weights`] returns them, the bias and the residual sum, into `y`. `y` is fully written.
pub fn conv(plan: &ConvPlan, x: &[f16], u: &[f32], add: Addends, y: &mut [f16]) {
    #[cfg(target_arch = "x86_64")]
    {
        use super::scratch::TaskBuffer;
        use super::Disjoint;

        assert!(
            applies(plan),
            "pointwise::conv on a plan it does not apply to"
        );
        assert_eq!(x.len(), plan.n * plan.c * plan.h * plan.w);
        assert_eq!(y.len(), plan.n * plan.k * plan.p * plan.q);
        assert_eq!(u.len(), plan.k.next_multiple_of(KR) * plan.c);
        let grid = Grid::new(plan, rayon::current_num_threads());
        let (v_len, m_len) = grid.buffer_len();
        let out = Disjoint::new(y);
        (0..grid.items(plan)).into_par_iter().for_each(|i| {
            let mut buffer = TaskBuffer::take(v_len + m_len + LANES);
            let values = buffer.values(v_len + m_len + LANES);
            let at = values.as_ptr().align_offset(64).min(LANES);
            let (v, m) = values[at..][..v_len + m_len].split_at_mut(v_len);
            let item = Item {
                image: i / (grid.blocks * grid.groups),
                block: i / grid.groups % grid.blocks,
                group: i % grid.groups,
            };
            // SAFETY: the CPU supports AVX-512 F, BW and VL (`applies`); the lengths of `x`,
            // `u`, `y` and the buffers are the plan's and the grid's (asserted and built
            // above); items write disjoint parts of `y` (their images, positions and output
            // channels).
            unsafe { avx512_kernel::item(plan, &grid, item, x, u, add, out, v, m) };
        });
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (plan, x, u, add, y);
        unreachable!("pointwise::applies is false without x86-64");
    }
}

/// One work item: an image's block of positions, a group of output channel blocks.
#[derive(Clone, Copy, Debug)]
struct Item {
    image: usize,
    block: usize,
    group: usize,
}

#[cfg(target_arch = "x86_64")]
mod avx512_kernel {
    use std::arch::x86_64::*;

    use super::super::avx512::{first, load, store, tile_load, tile_product, tile_store};
    use super::super::conv::Addends;
    use super::super::Disjoint;
    use super::{Grid, Item, KR, LANES, VR};
    use crate::ops::{Clamp, ConvPlan};
    use half::f16;

    /// Computes `item` of `plan` into `y` (see the module doc), `v` and `m` its buffers.
    ///
    /// # Safety
    /// The CPU must support AVX-512 F, BW and VL; `x`, `u` and `y` have the plan's lengths and
    /// `v` and `m` the grid's ([`Grid::buffer_len`]); no other item writes this one's part of
    /// `y`.
    #[allow(clippy::too_many_arguments)]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl")]
    pub unsafe fn item(
        plan: &ConvPlan,
        grid: &Grid,
        item: Item,
        x: &[f16],
        u: &[f32],
        add: Addends,
        y: Disjoint<f16>,
        v: &mut [f32],
        m: &mut [f32],
    ) {
        let (c, k, ld, pq) = (plan.c, plan.k, grid.ld, plan.p * plan.q);
        let j0 = item.block * grid.positions;
        let used = grid.positions.min(pq - j0);
        let computed = used.next_multiple_of(LANES);
        let kb0 = item.group * grid.per_group;
        let kb1 = (kb0 + grid.per_group).min(grid.kbs);
        let (vp, mp) = (v.as_mut_ptr(), m.as_mut_ptr());
        let xs = x.as_ptr().add(item.image * c * pq + j0);
        let bounds = Clamp::bounds(plan.clamp);
        let out = Outputs {
            y,
            add,
            lo: _mm512_set1_ps(bounds[0]),
            hi: _mm512_set1_ps(bounds[1]),
            image: item.image,
            j0,
            used,
            k,
            pq,
            ld,
        };
        for c0 in (0..c).step_by(grid.chunk) {
            let cn = grid.chunk.min(c - c0);
            // The chunk's inputs, FP32, the lanes past the block zero (multiplied, never
            // stored).
            for ci in 0..cn {
                let row = xs.add((c0 + ci) * pq);
                for t in (0..computed).step_by(LANES) {
                    _mm512_storeu_ps(vp.add(ci * ld + t), load(row.add(t), first(used - t)));
                }
            }
            let last = c0 + cn == c;
            for kb in kb0..kb1 {
                let ub = u.as_ptr().add((kb * c + c0) * KR);
                let mb = mp.add((kb - kb0) * KR * ld);
                for t0 in (0..computed).step_by(VR * LANES) {
                    let tile = Tile {
                        m: mb.add(t0),
                        more: c0 > 0,
                        last,
                        k: kb * KR,
                        t0,
                    };
                    let vb = vp.add(t0);
                    match (computed - t0) / LANES {
                        1 => tile.run::<1>(ub, vb, cn, &out),
                        2 => tile.run::<2>(ub, vb, cn, &out),
                        3 => tile.run::<3>(ub, vb, cn, &out),
                        _ => tile.run::<VR>(ub, vb, cn, &out),
                    }
                }
            }
        }
    }

    /// Where an item's outputs go, and its epilogue.
    struct Outputs<'a> {
        y: Disjoint<f16>,
        add: Addends<'a>,
        lo: __m512,
        hi: __m512,
        /// The item's image, first position and positions; the plan's `k` and `p·q`; the
        /// buffers' row length.
        image: usize,
        j0: usize,
        used: usize,
        k: usize,
        pq: usize,
        ld: usize,
    }

    /// One register tile of an item: `KR` output channels from `k`, positions `t0..` of the
    /// item's block; its partial sums at `m`, read where `more`; `last`: the item's last chunk
    /// of input channels, whose tile finishes the outputs.
    struct Tile {
        m: *mut f32,
        more: bool,
        last: bool,
        k: usize,
        t0: usize,
    }

    impl Tile {
        /// Multiplies the chunk of `cn` input channels (`u` its packed weights, `v` its inputs)
        /// into the tile, then keeps the sums or, for the last chunk, stores the outputs through
        /// the epilogue.
        ///
        /// # Safety
        /// As for [`item`]; the tile lies inside the item's weights, buffers and outputs.
        #[target_feature(enable = "avx512f,avx512bw,avx512vl")]
        #[inline]
        unsafe fn run<const V: usize>(
            &self,
            u: *const f32,
            v: *const f32,
            cn: usize,
            out: &Outputs,
        ) {
            let rows = KR.min(out.k - self.k);
            let mut acc = tile_load::<KR, V>(self.m, out.ld, self.more);
            tile_product(u, v, out.ld, cn, &mut acc);
            if !self.last {
                tile_store(self.m, out.ld, &acc);
                return;
            }
            for (i, row) in acc.iter().enumerate().take(rows) {
                let kk = self.k + i;
                // x + (−0) is x for every x: a missing bias changes nothing.
                let bias = _mm512_set1_ps(out.add.bias.map_or(-0.0, |b| b[kk]));
                let at = (out.image * out.k + kk) * out.pq + out.j0;
                for (j, &a) in row.iter().enumerate() {
                    let t = self.t0 + j * LANES;
                    if t >= out.used {
                        break;
                    }
                    let mask = first(out.used - t);
                    let mut s = _mm512_add_ps(a, bias);
                    if let Some(sum) = out.add.sum {
                        // (conv + bias) + sum, as `conv::epilogue` rounds it.
                        let r = _mm512_maskz_loadu_ps(mask, sum.as_ptr().add(at + t));
                        s = _mm512_add_ps(s, r);
                    }
                    // max and min return their second operand when either is NaN: NaN stays
                    // NaN, as in `Clamp::apply`.
                    s = _mm512_min_ps(out.hi, _mm512_max_ps(out.lo, s));
                    store(out.y.ptr().add(at + t), mask, s);
                }
            }
        }
    }
}

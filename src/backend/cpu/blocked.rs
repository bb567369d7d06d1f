//! The CPU backend's blocked activation layout: `[n][c/16][h·w][16]`, the channels of each
//! position in blocks of sixteen (onnxruntime's NCHWc with an AVX-512 vector's block). A direct
//! convolution's register tile computes sixteen output channels of one position in one vector:
//! written blocked they are one store, where the planar (NCHW) layout takes a 16 × 16 transpose
//! per sixteen positions, and read blocked an input's frame keeps sixteen channels of a position
//! on one cache line.
//!
//! Only a program's scratch tensors are ever blocked, and only where every step that reads one
//! reads it blocked ([`outputs`]); a [`super::derived::CpuData`] records whether its values are
//! blocked, so any other read — an op that reads only planar values, a download — gets them
//! planar ([`to_planar`]). A tensor of `c` channels, a multiple of 16, has the same length in
//! both layouts, and image `i`'s channel block `b` occupies the same range of it
//! (`(i·c + 16·b)·h·w..` for `16·h·w` values): converting is a transpose inside each block.

use rayon::prelude::*;

use crate::backend::Step;
use crate::dtype::{DType, Element};
use crate::ops::{ConvPlan, FamilyPlan, Op, PoolKind, PoolPlan};
use crate::tensor::{HostData, TensorDesc};

/// Channels per block: the f32 lanes of an AVX-512 vector.
pub const BLOCK: usize = 16;

/// Which of a convolution's activations (input `x`, output `y` and its residual sum, which is
/// in `y`'s layout) are blocked.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Layouts {
    pub x: bool,
    pub y: bool,
}

/// The shape of a blocked tensor's values: `c` channels (a multiple of [`BLOCK`]) of `hw`
/// positions per image.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Blocked {
    pub c: usize,
    pub hw: usize,
}

impl Blocked {
    /// The blocked shape of `desc` (`[n, c, …]`, `c` a multiple of [`BLOCK`]).
    pub fn of(desc: &TensorDesc) -> Option<Self> {
        let shape = desc.shape();
        let c = *shape.get(1)?;
        (shape.len() >= 3 && c > 0 && c.is_multiple_of(BLOCK)).then(|| Blocked {
            c,
            hw: shape[2..].iter().product(),
        })
    }
}

/// `x` (blocked as `b` says) in the planar layout.
pub fn to_planar(x: &HostData, b: Blocked) -> HostData {
    convert(x, b.hw, BLOCK)
}

/// `x` (planar, `b.c` channels of `b.hw` positions) in the blocked layout.
pub fn to_blocked(x: &HostData, b: Blocked) -> HostData {
    convert(x, BLOCK, b.hw)
}

/// `x` with each channel block, `rows` rows of `cols`, transposed (by the Transpose op's
/// kernel, which takes no dimension of one).
fn convert(x: &HostData, rows: usize, cols: usize) -> HostData {
    let blocks = x.len() / (rows * cols);
    if rows == 1 || cols == 1 {
        return x.clone();
    }
    let (shape, perm): (&[usize], &[usize]) = if blocks == 1 {
        (&[rows, cols], &[1, 0])
    } else {
        (&[blocks, rows, cols], &[0, 2, 1])
    };
    super::layout::transposed(x, shape, perm)
}

/// Whether a kernel computes convolution `plan` from a blocked input: the depthwise one
/// ([`depthwise`]) or the direct one.
pub fn reads_conv(plan: &ConvPlan) -> bool {
    depthwise(plan) || super::direct::reads_blocked(plan)
}

/// Whether a kernel computes convolution `plan` into a blocked output.
pub fn writes_conv(plan: &ConvPlan) -> bool {
    depthwise(plan) || super::direct::writes_blocked(plan)
}

/// Whether convolution `plan` reads a blocked input into a planar output at no loss: the
/// depthwise kernel always (it transposes its output either way), the direct one with terms
/// enough per output ([`super::direct::reads_blocked_into_planar`]).
fn reads_into_planar(plan: &ConvPlan) -> bool {
    depthwise(plan) || super::direct::reads_blocked_into_planar(plan)
}

/// Whether the depthwise kernel computes `plan` with blocked activations.
pub fn depthwise(plan: &ConvPlan) -> bool {
    #[cfg(target_arch = "x86_64")]
    return super::depthwise_blocked::blocks(plan);
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = plan;
        false
    }
}

/// Whether a kernel computes pool `plan` from a blocked input: a global one ([`global_pool`])
/// or a window MaxPool (`pool::blocked_max`, into a planar output).
pub fn pools(plan: &PoolPlan) -> bool {
    global(plan) || window_max(plan)
}

/// Whether [`global_pool`] computes `plan`.
fn global(plan: &PoolPlan) -> bool {
    plan.global && plan.kind != PoolKind::AverageIncludePad && plan.c.is_multiple_of(BLOCK)
}

/// Whether `pool::blocked_max` computes `plan`.
fn window_max(plan: &PoolPlan) -> bool {
    #[cfg(target_arch = "x86_64")]
    return super::pool::blocked_max::applies(plan);
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = plan;
        false
    }
}

/// Pool `plan` (for which [`pools`] holds) of blocked `x` into planar `y`.
pub fn pool<T: Element>(plan: &PoolPlan, x: &[T], y: &mut [T]) {
    if global(plan) {
        return global_pool(plan, x, y);
    }
    #[cfg(target_arch = "x86_64")]
    return super::pool::blocked_max::max_pool(plan, x, y);
    #[cfg(not(target_arch = "x86_64"))]
    unreachable!("no kernel pools a window from a blocked input here")
}

/// A global pool (maximum or mean, as [`global`] allows) of blocked `x` into `y` (`[n, c]`:
/// one position, the same in either layout), sixteen channels a vector; the mean divided as
/// `pool::mean` divides it, and NaN ignored by the maximum as in `pool::global_max`. FP16 input
/// is widened a block at a time (element by element it took 6.7× the FP32 pool's time in
/// ResNet-50).
fn global_pool<T: Element>(plan: &PoolPlan, x: &[T], y: &mut [T]) {
    let (hw, max) = (plan.h * plan.w, plan.kind == PoolKind::Max);
    y.par_chunks_mut(BLOCK)
        .zip(x.par_chunks(BLOCK * hw))
        .for_each_init(Vec::new, |wide, (y, x)| {
            let x: &[f32] = if T::DTYPE == DType::F32 {
                bytemuck::cast_slice(x)
            } else {
                super::widen(x, wide);
                wide
            };
            let mut acc = [if max { f32::NEG_INFINITY } else { 0.0 }; BLOCK];
            for position in x.chunks_exact(BLOCK) {
                for (a, &v) in acc.iter_mut().zip(position) {
                    *a = match max {
                        true if v > *a => v,
                        true => *a,
                        false => *a + v,
                    };
                }
            }
            for (y, a) in y.iter_mut().zip(acc) {
                *y = T::from_f32(if max { a } else { super::pool::mean(a, hw) });
            }
        });
}

/// For each step of a program, whether its output is left blocked: it is a convolution that
/// can write the blocked layout, it is not among the entries the program's caller `reads`, and
/// every later step that reads it (before the entry is written again) reads it blocked at no
/// loss: a global pool or a window MaxPool ([`pools`]); a convolution as its residual sum where
/// its own output is blocked; a convolution as its input where its own output is blocked too,
/// or where it writes a planar output at no loss ([`reads_into_planar`]). Decided from the last
/// step back, since a convolution's reading depends on its own output; then, from the first
/// step on, a depthwise convolution keeps a blocked output only where its input is blocked.
/// `descs` gives each table entry's descriptor (none for an empty entry).
pub fn outputs(steps: &[Step], descs: &[Option<&TensorDesc>], reads: &[usize]) -> Vec<bool> {
    let plans: Vec<Option<FamilyPlan>> = steps
        .iter()
        .map(|s| {
            let inputs: Option<Vec<&TensorDesc>> = s
                .inputs
                .iter()
                .map(|&i| descs.get(i).copied().flatten())
                .collect();
            match &s.op {
                Op::Conv(_) | Op::MaxPool(_) | Op::GlobalAveragePool | Op::GlobalMaxPool => {
                    s.op.plan(&inputs?).ok().map(|p| p.family)
                }
                _ => None,
            }
        })
        .collect();
    // Each step's readers (step, input index), and whether the caller reads it.
    let mut readers: Vec<Vec<(usize, usize)>> = vec![Vec::new(); steps.len()];
    let mut read_back = vec![false; steps.len()];
    // The step that last wrote each entry, as the steps run, and the one that wrote each
    // step's first input.
    let mut writer: Vec<Option<usize>> = vec![None; descs.len()];
    let mut source: Vec<Option<usize>> = vec![None; steps.len()];
    for (j, step) in steps.iter().enumerate() {
        for (a, &e) in step.inputs.iter().enumerate() {
            if let Some(Some(w)) = writer.get(e) {
                readers[*w].push((j, a));
                if a == 0 {
                    source[j] = Some(*w);
                }
            }
        }
        if let Some(w) = writer.get_mut(step.output) {
            *w = Some(j);
        }
    }
    for &e in reads {
        if let Some(Some(w)) = writer.get(e) {
            read_back[*w] = true;
        }
    }
    let mut blocked = vec![false; steps.len()];
    for i in (0..steps.len()).rev() {
        let writes = matches!(&plans[i], Some(FamilyPlan::Conv(p)) if writes_conv(p));
        blocked[i] = writes
            && !read_back[i]
            && readers[i].iter().all(|&(j, a)| match &plans[j] {
                Some(FamilyPlan::Conv(p)) if a == 0 => {
                    reads_conv(p) && (blocked[j] || reads_into_planar(p))
                }
                Some(FamilyPlan::Conv(p)) => Some(a) == p.sum_input() && blocked[j],
                Some(FamilyPlan::Pool(p)) => pools(p),
                _ => false,
            });
    }
    // A depthwise convolution writes blocked only from a blocked input: from a planar one
    // its planar kernels are the faster (a stride-2 28×28 → 14×14 one of MobileNetV2 took
    // 1.45× the time transposing its input). Its readers then read it planar, as they can.
    for i in 0..steps.len() {
        if matches!(&plans[i], Some(FamilyPlan::Conv(p)) if depthwise(p)) {
            blocked[i] &= source[i].is_some_and(|w| blocked[w]);
        }
    }
    blocked
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dtype::DType;
    use half::f16;

    #[test]
    fn blocks_hold_sixteen_channels_of_a_position_and_convert_back() {
        // Several channel blocks, one, and one position.
        for (n, c, hw) in [(2, 32, 5), (1, 16, 7), (3, 16, 1)] {
            convert_case(n, c, hw);
        }
    }

    fn convert_case(n: usize, c: usize, hw: usize) {
        let b = Blocked { c, hw };
        let planar: Vec<f32> = (0..n * c * hw).map(|i| i as f32).collect();
        let HostData::F32(blocked) = to_blocked(&HostData::F32(planar.clone()), b) else {
            panic!("f32 in, f32 out");
        };
        for (i, ci, p) in
            (0..n).flat_map(|i| (0..c).flat_map(move |ci| (0..hw).map(move |p| (i, ci, p))))
        {
            let at = ((i * c / BLOCK + ci / BLOCK) * hw + p) * BLOCK + ci % BLOCK;
            assert_eq!(
                blocked[at],
                planar[(i * c + ci) * hw + p],
                "image {i} channel {ci} position {p}"
            );
        }
        assert_eq!(
            to_planar(&HostData::F32(blocked), b),
            HostData::F32(planar.clone())
        );
        let halves: Vec<f16> = planar.iter().map(|&v| f16::from_f32(v)).collect();
        let back = to_planar(&to_blocked(&HostData::F16(halves.clone()), b), b);
        assert_eq!(back, HostData::F16(halves));
    }

    /// [`outputs`] for steps over FP32 entries of these shapes.
    fn outputs_of(steps: &[Step], shapes: &[&[usize]], reads: &[usize]) -> Vec<bool> {
        let descs: Vec<TensorDesc> = shapes
            .iter()
            .map(|shape| TensorDesc::new(DType::F32, shape).unwrap())
            .collect();
        let descs: Vec<Option<&TensorDesc>> = descs.iter().map(Some).collect();
        outputs(steps, &descs, reads)
    }

    /// A 56×56 bottleneck of ResNet-50 (its 3×3 on the Winograd kernel), a reduction and a
    /// MobileNet-style expansion: which outputs stay blocked.
    #[test]
    fn convolutions_feeding_convolutions_stay_blocked() {
        if !super::super::avx512::supported() {
            return;
        }
        use crate::ops::Conv;
        // Entries: 0 the input, 1..=6 activations, 7.. weights.
        let shapes: [&[usize]; 12] = [
            &[1, 256, 56, 56],
            &[1, 64, 56, 56],
            &[1, 64, 56, 56],
            &[1, 256, 56, 56],
            &[1, 64, 56, 56],
            &[1, 192, 56, 56],
            &[1, 256, 1, 1],
            &[64, 256, 1, 1],
            &[64, 64, 3, 3],
            &[256, 64, 1, 1],
            &[64, 256, 1, 1],
            &[192, 64, 1, 1],
        ];
        let conv = |x: usize, w: usize, sum: Option<usize>, y: usize| Step {
            op: Op::Conv(Conv {
                pads: if w == 8 { [1; 4] } else { [0; 4] },
                sum: sum.is_some(),
                ..Conv::default()
            }),
            inputs: [x, w].into_iter().chain(sum).collect(),
            output: y,
        };
        let steps = [
            // 256 → 64: its input is the program's, its output feeds a Winograd 3×3: planar.
            conv(0, 7, None, 1),
            conv(1, 8, None, 2),
            // 64 → 256 + the input: read by a 256 → 64 reduction and a global pool.
            conv(2, 9, Some(0), 3),
            // 256 → 64: reads blocked into a planar output (terms enough per output)...
            conv(3, 10, None, 4),
            // ... since 64 → 192 has too few to read a blocked input.
            conv(4, 11, None, 5),
            Step {
                op: Op::GlobalAveragePool,
                inputs: vec![3],
                output: 6,
            },
        ];
        assert_eq!(
            outputs_of(&steps, &shapes, &[5, 6]),
            [false, false, true, false, false, false]
        );
        // Read back by the caller, or by an op that reads planar values, it is planar.
        assert_eq!(outputs_of(&steps, &shapes, &[3, 5, 6]), [false; 6]);
        let mut relu = steps.to_vec();
        relu.push(Step {
            op: Op::Relu,
            inputs: vec![3],
            output: 1,
        });
        assert_eq!(outputs_of(&relu, &shapes, &[5, 6]), [false; 7]);
    }

    /// MobileNetV2's inverted residual at 14×14: expansion, depthwise, projection.
    #[test]
    fn depthwise_convolutions_stay_blocked_from_a_blocked_input() {
        if !super::super::avx512::supported() {
            return;
        }
        use crate::ops::Conv;
        // Entries: 0 the input, 1..=3 activations, 4.. weights.
        let shapes: [&[usize]; 7] = [
            &[1, 64, 14, 14],
            &[1, 384, 14, 14],
            &[1, 384, 14, 14],
            &[1, 64, 14, 14],
            &[384, 64, 1, 1],
            &[384, 1, 3, 3],
            &[64, 384, 1, 1],
        ];
        let pointwise = |x: usize, w: usize, y: usize| Step {
            op: Op::Conv(Conv::default()),
            inputs: vec![x, w],
            output: y,
        };
        let depthwise = |x: usize, y: usize| Step {
            op: Op::Conv(Conv {
                group: 384,
                pads: [1; 4],
                ..Conv::default()
            }),
            inputs: vec![x, 5],
            output: y,
        };
        // The projection reads blocked into its planar output, read back; so does the
        // depthwise convolution, whose input the expansion leaves blocked.
        let steps = [pointwise(0, 4, 1), depthwise(1, 2), pointwise(2, 6, 3)];
        assert_eq!(outputs_of(&steps, &shapes, &[3]), [true, true, false]);
        // From the program's (planar) input, the depthwise output stays planar too.
        let from_input = [depthwise(1, 2), pointwise(2, 6, 3)];
        assert_eq!(outputs_of(&from_input, &shapes, &[3]), [false, false]);
    }

    /// ResNet's stem and the MaxPool after it, which reads the stem's output blocked into its
    /// own planar output.
    #[test]
    fn a_convolution_feeding_a_max_pool_stays_blocked() {
        if !super::super::avx512::supported() {
            return;
        }
        use crate::ops::{Conv, MaxPool};
        // Entries: 0 the input, 1..=3 activations, 4.. weights.
        let shapes: [&[usize]; 6] = [
            &[1, 3, 224, 224],
            &[1, 64, 112, 112],
            &[1, 64, 56, 56],
            &[1, 64, 56, 56],
            &[64, 3, 7, 7],
            &[64, 64, 1, 1],
        ];
        let stem = Step {
            op: Op::Conv(Conv {
                strides: [2, 2],
                pads: [3; 4],
                ..Conv::default()
            }),
            inputs: vec![0, 4],
            output: 1,
        };
        let pool = Step {
            op: Op::MaxPool(MaxPool {
                kernel_shape: [3, 3],
                strides: [2, 2],
                pads: [1; 4],
                ..MaxPool::default()
            }),
            inputs: vec![1],
            output: 2,
        };
        let pointwise = Step {
            op: Op::Conv(Conv::default()),
            inputs: vec![2, 5],
            output: 3,
        };
        let steps = [stem.clone(), pool.clone(), pointwise];
        assert_eq!(outputs_of(&steps, &shapes, &[3]), [true, false, false]);
        // Also read by an op that reads planar values, the stem's output is planar.
        let relu = Step {
            op: Op::Relu,
            inputs: vec![1],
            output: 3,
        };
        assert_eq!(
            outputs_of(&[stem, pool, relu], &shapes, &[2, 3]),
            [false; 3]
        );
    }

    #[test]
    fn only_tensors_of_whole_channel_blocks_are_blocked() {
        let desc = |shape: &[usize]| TensorDesc::new(DType::F32, shape).unwrap();
        assert_eq!(
            Blocked::of(&desc(&[1, 32, 7, 7])),
            Some(Blocked { c: 32, hw: 49 })
        );
        assert_eq!(Blocked::of(&desc(&[1, 24, 7, 7])), None);
        assert_eq!(Blocked::of(&desc(&[1, 32])), None);
    }
}

//! The suite bodies, generic over the backend. Each runs both dtypes. Results are checked
//! through the one entry point every front end uses, [`Backend::apply_into`] (with an [`Op`]);
//! the typed conveniences (`gemm`, `conv`, …) are covered by the allocating-form and error
//! checks.

use eia::backend::Step;
use eia::ops::{AutoPad, BatchNorm, Clip, Conv, Gemm, Op, Softmax};
use eia::{Backend, DType, Error, HostTensor, Tensor};
use rand::RngExt;

use super::suite_unary::unary;
use super::{abs, assert_close, assert_close_scaled, f64s, poisoned, random, reference, rng};

/// A fused Clip for outputs `want` (float64, the ReLU already applied): bounds at quantiles of
/// the values, so that many outputs land on each bound (`variant` 0: both bounds, 1: only max,
/// 2: only min), and `want` clipped by it as the fused epilogue clips (after the ReLU).
fn fused_clip(want: &mut Vec<f64>, variant: usize) -> Clip {
    let mut sorted = want.clone();
    sorted.sort_by(f64::total_cmp);
    let at = |q: f64| Some(sorted[((sorted.len() - 1) as f64 * q) as usize] as f32);
    let clip = match variant % 3 {
        0 => Clip {
            min: at(0.25),
            max: at(0.75),
        },
        1 => Clip {
            min: None,
            max: at(0.6),
        },
        _ => Clip {
            min: at(0.4),
            max: None,
        },
    };
    *want = unary(&Op::Clip(clip), want);
    clip
}

fn up<B: Backend>(b: &B, t: &HostTensor) -> eia::Tensor<B::Storage> {
    b.upload(t).unwrap()
}

/// Gemm over edge shapes × transposes × every C broadcast × alpha/beta × ReLU × Clip.
pub fn gemm_matches_reference<B: Backend>(backend: &B) {
    let mut rng = rng("gemm_matches_reference");
    let shapes = [
        (1, 1, 1),
        (1, 7, 13),
        (17, 1, 5),
        (3, 5, 1),
        (31, 37, 41),
        (64, 64, 64),
        (127, 129, 65),
        (8, 9, 4099),
        (257, 200, 300),
        // GEMVs with few outputs (not a multiple of 4 or 16) and K not a multiple of the CPU
        // dot product's 16 lanes.
        (1, 19, 33),
        (1, 6, 17),
        // Large enough to be split across threads: a GEMV split over K, one split over its
        // outputs, and a short wide matrix split along its columns.
        (1, 300, 4099),
        (3001, 1, 700),
        (20, 300, 400),
        // Two to eight rows against transposed B of long sums (the CPU's few-rows kernel:
        // each row count's own column groups, columns left over, K past whole vectors), one
        // wide enough to split its columns across threads.
        (2, 37, 300),
        (3, 21, 257),
        (4, 7, 1000),
        (5, 45, 256),
        (6, 13, 311),
        (7, 100, 290),
    ];
    let mut case = 0usize;
    for dtype in DType::ALL {
        for &(m, n, k) in &shapes {
            for (trans_a, trans_b) in [(false, false), (true, false), (false, true), (true, true)] {
                case += 1;
                let c_shape: Option<Vec<usize>> = match case % 6 {
                    0 => None,
                    1 => Some(vec![]),
                    2 => Some(vec![n]),
                    3 => Some(vec![m, 1]),
                    4 => Some(vec![m, n]),
                    _ => Some(vec![1, n]),
                };
                let mut op = Gemm {
                    alpha: rng.random_range(0.5..2.0),
                    beta: rng.random_range(-1.5..1.5),
                    trans_a,
                    trans_b,
                    relu: case.is_multiple_of(5),
                    clip: None,
                };
                let a_shape = if trans_a { [k, m] } else { [m, k] };
                let b_shape = if trans_b { [n, k] } else { [k, n] };
                let a = random(&mut rng, dtype, &a_shape, -1.0, 1.0);
                let b = random(&mut rng, dtype, &b_shape, -1.0, 1.0);
                let c = c_shape
                    .as_ref()
                    .map(|s| random(&mut rng, dtype, s, -1.0, 1.0));
                let (mut want, want_shape) = reference::gemm(
                    &f64s(&a),
                    &a_shape,
                    &f64s(&b),
                    &b_shape,
                    c.as_ref()
                        .map(|c| (f64s(c), c.shape().to_vec()))
                        .as_ref()
                        .map(|(v, s)| (&v[..], &s[..])),
                    op.alpha as f64,
                    op.beta as f64,
                    trans_a,
                    trans_b,
                    op.relu,
                );
                if case % 4 == 1 {
                    op.clip = Some(fused_clip(&mut want, case / 4));
                }
                // The same on absolute values bounds what rounding may cost when terms cancel.
                let c_abs = c.as_ref().map(|c| (abs(c), c.shape().to_vec()));
                let (scale, _) = reference::gemm(
                    &abs(&a),
                    &a_shape,
                    &abs(&b),
                    &b_shape,
                    c_abs.as_ref().map(|(v, s)| (&v[..], &s[..])),
                    (op.alpha as f64).abs(),
                    (op.beta as f64).abs(),
                    trans_a,
                    trans_b,
                    false,
                );
                let inputs: Vec<_> = [&a, &b]
                    .into_iter()
                    .chain(&c)
                    .map(|t| up(backend, t))
                    .collect();
                let mut y = poisoned(backend, dtype, &want_shape);
                backend
                    .apply_into(&Op::Gemm(op), &inputs.iter().collect::<Vec<_>>(), &mut y)
                    .unwrap();
                let what = format!("{dtype} Gemm m={m} n={n} k={k} {op:?} C={c_shape:?}");
                let got = backend.download(&y).unwrap();
                assert_close_scaled(&what, &got, &want, &scale, &want_shape);
            }
        }
    }
}

/// The allocating forms return the same as the `_into` forms.
pub fn gemm_allocating_form<B: Backend>(backend: &B) {
    let mut rng = rng("gemm_allocating_form");
    for dtype in DType::ALL {
        let a = random(&mut rng, dtype, &[19, 23], -1.0, 1.0);
        let b = random(&mut rng, dtype, &[23, 11], -1.0, 1.0);
        let (want, shape) = reference::gemm(
            &f64s(&a),
            &[19, 23],
            &f64s(&b),
            &[23, 11],
            None,
            1.0,
            1.0,
            false,
            false,
            false,
        );
        let y = backend
            .gemm(&Gemm::default(), &up(backend, &a), &up(backend, &b), None)
            .unwrap();
        assert_close(
            &format!("{dtype} Gemm (allocating)"),
            &backend.download(&y).unwrap(),
            &want,
            &shape,
        );
        let y = backend.matmul(&up(backend, &a), &up(backend, &b)).unwrap();
        assert_close(
            &format!("{dtype} MatMul (allocating)"),
            &backend.download(&y).unwrap(),
            &want,
            &shape,
        );
        let y = backend
            .apply(&Op::MatMul, &[&up(backend, &a), &up(backend, &b)])
            .unwrap();
        assert_close(
            &format!("{dtype} MatMul (apply)"),
            &backend.download(&y).unwrap(),
            &want,
            &shape,
        );
    }
}

/// MatMul: 1-D promotion, batch dims, broadcasting both ways.
pub fn matmul_batched_broadcast<B: Backend>(backend: &B) {
    let mut rng = rng("matmul_batched_broadcast");
    let cases: [(&[usize], &[usize]); 10] = [
        (&[5], &[5]),
        (&[5], &[5, 3]),
        (&[4, 5], &[5]),
        (&[7, 1], &[1, 3]),
        (&[2, 3, 4], &[4, 5]),
        (&[3, 4], &[2, 4, 5]),
        (&[2, 1, 3, 4], &[5, 4, 6]),
        (&[1, 4], &[3, 4, 2]),
        (&[64, 13, 17], &[64, 17, 19]),
        (&[2, 3, 33, 65], &[1, 3, 65, 31]),
    ];
    for dtype in DType::ALL {
        for (a_shape, b_shape) in cases {
            let a = random(&mut rng, dtype, a_shape, -1.0, 1.0);
            let b = random(&mut rng, dtype, b_shape, -1.0, 1.0);
            let (want, want_shape) = reference::matmul(&f64s(&a), a_shape, &f64s(&b), b_shape);
            // Dot products whose terms cancel are judged by the size of their terms.
            let (scale, _) = reference::matmul(&abs(&a), a_shape, &abs(&b), b_shape);
            let mut y = poisoned(backend, dtype, &want_shape);
            backend
                .apply_into(&Op::MatMul, &[&up(backend, &a), &up(backend, &b)], &mut y)
                .unwrap();
            let what = format!("{dtype} MatMul {a_shape:?} x {b_shape:?}");
            let got = backend.download(&y).unwrap();
            assert_close_scaled(&what, &got, &want, &scale, &want_shape);
        }
    }
}

/// One conv case: input shape, weight shape, attributes, with or without bias, with or without
/// a fused residual sum (a random `Sum` of the output's shape, input 2), and with a fused Clip
/// (bounds from `fused_clip`'s `variant`) or without.
#[allow(clippy::too_many_arguments)]
pub fn conv_case<B: Backend>(
    backend: &B,
    rng: &mut rand::rngs::StdRng,
    dtype: DType,
    x_shape: [usize; 4],
    w_shape: [usize; 4],
    op: &Conv,
    bias: bool,
    sum: bool,
    clip: Option<usize>,
) {
    let x = random(rng, dtype, &x_shape, -1.0, 1.0);
    let w = random(rng, dtype, &w_shape, -1.0, 1.0);
    let b = bias.then(|| random(rng, dtype, &[w_shape[0]], -1.0, 1.0));
    let bias64 = b.as_ref().map(f64s);
    // The reference before the epilogue's activations: conv + bias, then + sum, ReLU, Clip.
    let linear = Conv {
        relu: false,
        clip: None,
        sum: false,
        ..op.clone()
    };
    let (mut want, want_shape) = reference::conv(
        &linear,
        &f64s(&x),
        &x_shape,
        &f64s(&w),
        &w_shape,
        bias64.as_deref(),
    );
    let s = sum.then(|| random(rng, dtype, &want_shape, -1.0, 1.0));
    if let Some(s) = &s {
        want.iter_mut().zip(f64s(s)).for_each(|(v, s)| *v += s);
    }
    if op.relu {
        want.iter_mut().for_each(|v| *v = v.max(0.0));
    }
    let op = &Conv {
        sum,
        clip: clip.map(|variant| fused_clip(&mut want, variant)),
        ..op.clone()
    };
    // The same on absolute values bounds what rounding may cost when the bias, the sum and the
    // terms cancel (as for GEMM).
    let bias_abs = b.as_ref().map(abs);
    let (mut scale, _) = reference::conv(
        &linear,
        &abs(&x),
        &x_shape,
        &abs(&w),
        &w_shape,
        bias_abs.as_deref(),
    );
    if let Some(s) = &s {
        scale.iter_mut().zip(abs(s)).for_each(|(v, s)| *v += s);
    }
    let inputs: Vec<_> = [&x, &w]
        .into_iter()
        .chain(&s)
        .chain(&b)
        .map(|t| up(backend, t))
        .collect();
    let mut y = poisoned(backend, dtype, &want_shape);
    backend
        .apply_into(
            &Op::Conv(op.clone()),
            &inputs.iter().collect::<Vec<_>>(),
            &mut y,
        )
        .unwrap();
    let what = format!("{dtype} Conv X{x_shape:?} W{w_shape:?} bias={bias} {op:?}");
    let got = backend.download(&y).unwrap();
    assert_close_scaled(&what, &got, &want, &scale, &want_shape);
}

/// Conv edge cases: strides, asymmetric pads, dilations, groups, depthwise, auto_pad, 1×1.
pub fn conv_matches_reference<B: Backend>(backend: &B) {
    let mut rng = rng("conv_matches_reference");
    let conv = |strides: [usize; 2],
                pads: [usize; 4],
                dilations: [usize; 2],
                group: usize,
                auto_pad: AutoPad,
                relu: bool| Conv {
        strides,
        pads,
        dilations,
        group,
        auto_pad,
        kernel_shape: None,
        relu,
        ..Conv::default()
    };
    use AutoPad::*;
    #[rustfmt::skip]
    let cases: Vec<([usize; 4], [usize; 4], Conv, bool)> = vec![
        ([1, 1, 1, 1], [1, 1, 1, 1], conv([1, 1], [0; 4], [1, 1], 1, NotSet, false), false),
        ([1, 3, 7, 7], [5, 3, 3, 3], conv([1, 1], [1, 1, 1, 1], [1, 1], 1, NotSet, false), true),
        ([2, 3, 11, 13], [4, 3, 3, 3], conv([2, 2], [1, 1, 1, 1], [1, 1], 1, NotSet, true), true),
        ([1, 2, 9, 10], [3, 2, 3, 2], conv([1, 2], [2, 0, 1, 3], [1, 1], 1, NotSet, false), true),
        ([1, 4, 13, 11], [6, 4, 3, 3], conv([1, 1], [2, 2, 2, 2], [2, 3], 1, NotSet, false), false),
        ([2, 6, 8, 9], [4, 3, 3, 3], conv([1, 1], [1, 1, 1, 1], [1, 1], 2, NotSet, false), true),
        ([1, 8, 10, 10], [8, 1, 3, 3], conv([1, 1], [1, 1, 1, 1], [1, 1], 8, NotSet, true), true),
        ([2, 5, 12, 9], [10, 1, 5, 3], conv([2, 1], [2, 1, 0, 2], [1, 2], 5, NotSet, false), true),
        ([1, 7, 9, 9], [7, 1, 3, 3], conv([2, 2], [0; 4], [1, 1], 7, SameUpper, false), false),
        ([1, 16, 5, 7], [11, 16, 1, 1], conv([1, 1], [0; 4], [1, 1], 1, NotSet, false), true),
        ([3, 16, 7, 7], [8, 16, 1, 1], conv([2, 2], [0; 4], [1, 1], 1, NotSet, false), false),
        ([1, 3, 23, 23], [8, 3, 7, 7], conv([2, 2], [3, 3, 3, 3], [1, 1], 1, NotSet, true), true),
        ([1, 3, 10, 9], [4, 3, 4, 3], conv([3, 2], [0; 4], [1, 1], 1, SameUpper, false), true),
        ([1, 3, 10, 9], [4, 3, 4, 3], conv([3, 2], [0; 4], [1, 1], 1, SameLower, false), true),
        ([1, 3, 10, 9], [4, 3, 4, 2], conv([2, 3], [0; 4], [2, 1], 1, Valid, false), false),
        ([1, 2, 5, 5], [3, 2, 5, 5], conv([1, 1], [0; 4], [1, 1], 1, NotSet, false), true),
        ([1, 2, 3, 3], [3, 2, 3, 3], conv([1, 1], [4, 4, 4, 4], [1, 1], 1, NotSet, false), false),
        ([1, 640, 3, 3], [5, 640, 3, 3], conv([1, 1], [1, 1, 1, 1], [1, 1], 1, NotSet, false), false),
        ([2, 12, 6, 6], [12, 4, 3, 3], conv([1, 1], [1, 1, 1, 1], [1, 1], 3, NotSet, false), true),
        // Kernel columns that only ever see padding (found by the property test).
        ([1, 1, 1, 1], [1, 1, 1, 3], conv([1, 1], [0; 4], [1, 2], 1, SameUpper, false), false),
        ([1, 2, 1, 2], [2, 1, 1, 3], conv([1, 2], [0, 3, 0, 3], [1, 2], 2, NotSet, true), true),
        // Strides larger than the input, with pads wide enough for two outputs per axis.
        ([1, 2, 3, 4], [3, 2, 2, 2], conv([5, 7], [3, 4, 3, 4], [1, 1], 1, NotSet, false), true),
        // Pointwise convolutions whose FP16 input tiles are copied by cp.async (p·q % 8 == 0):
        // K a multiple of the k-tile and not, several M and N tiles, and groups whose weights
        // start off a 16-byte boundary (issue 20: F1, F2).
        ([2, 40, 8, 8], [136, 40, 1, 1], conv([1, 1], [0; 4], [1, 1], 1, NotSet, false), true),
        ([1, 24, 8, 8], [24, 3, 1, 1], conv([1, 1], [0; 4], [1, 1], 8, NotSet, true), true),
        ([1, 64, 4, 6], [72, 64, 1, 1], conv([1, 1], [0; 4], [1, 1], 1, NotSet, false), false),
        // A pointwise map wider than one block of the CPU's FP16 pointwise path (1024 columns
        // at most for these channels): two blocks or more, the last one partial.
        ([1, 32, 34, 35], [40, 32, 1, 1], conv([1, 1], [0; 4], [1, 1], 1, NotSet, false), true),
        // Depthwise with column stride 2 (split into even and odd columns): odd and even
        // widths, rows past 32 and 64 columns with tails off 16, asymmetric pads, odd and even
        // dilations, a channel multiplier, a single output column.
        ([1, 3, 9, 37], [3, 1, 3, 3], conv([2, 2], [1, 1, 1, 1], [1, 1], 3, NotSet, true), true),
        ([2, 4, 10, 70], [4, 1, 3, 3], conv([1, 2], [0, 1, 2, 0], [1, 1], 4, NotSet, false), true),
        ([1, 2, 8, 140], [4, 1, 3, 5], conv([2, 2], [1, 2, 1, 2], [2, 2], 2, NotSet, true), false),
        ([1, 3, 7, 33], [3, 1, 2, 3], conv([2, 2], [0, 0, 0, 1], [1, 3], 3, NotSet, false), true),
        ([1, 2, 5, 1], [2, 1, 3, 3], conv([2, 2], [1, 1, 1, 1], [1, 1], 2, NotSet, true), true),
        // Depthwise with column stride 3 (the portable kernel's three column phases): 16 and
        // 36 output columns (a 16-lane chunk; 32-lane chunks, the last partial), dilated.
        ([1, 3, 7, 50], [3, 1, 3, 3], conv([2, 3], [1, 2, 1, 0], [1, 2], 3, NotSet, true), true),
        ([2, 2, 6, 110], [2, 1, 2, 3], conv([1, 3], [0, 1, 1, 1], [2, 2], 2, NotSet, false), true),
        // Strided dense convolutions of 16 input channels and more on small maps (AVX-512:
        // `Channels` tiles reading an unphased frame): asymmetric pads, row and column strides
        // that differ, dilations with strides, pads past half the kernel, two images.
        ([2, 16, 9, 11], [32, 16, 3, 3], conv([2, 2], [1, 0, 2, 1], [1, 1], 1, NotSet, false), true),
        ([1, 24, 13, 10], [48, 24, 3, 2], conv([3, 2], [2, 1, 0, 1], [2, 1], 1, NotSet, true), true),
        ([1, 32, 6, 9], [48, 32, 2, 3], conv([1, 2], [0, 3, 1, 3], [2, 1], 1, NotSet, false), false),
    ];
    for dtype in DType::ALL {
        for (i, (x, w, op, bias)) in cases.iter().enumerate() {
            // Every other case with a fused Clip, its three kinds of bounds in turn; two cases
            // in three with a residual sum (with and without ReLU and Clip).
            let clip = (i % 2 == 1).then_some(i / 2);
            let sum = i % 3 != 0;
            conv_case(backend, &mut rng, dtype, *x, *w, op, *bias, sum, clip);
        }
    }
}

/// ResNet-50 layer shapes at batch 1 (large K, many channels); exercises the threaded paths,
/// including output-column blocks that start and end inside an output row (the 30×30 case).
pub fn conv_resnet_shapes<B: Backend>(backend: &B) {
    let mut rng = rng("conv_resnet_shapes");
    let pad1 = Conv {
        pads: [1; 4],
        ..Conv::default()
    };
    let cases: [([usize; 4], [usize; 4], Conv); 4] = [
        ([1, 64, 14, 14], [64, 64, 3, 3], pad1.clone()),
        ([1, 32, 30, 30], [16, 32, 3, 3], pad1.clone()),
        ([1, 256, 14, 14], [64, 256, 1, 1], Conv::default()),
        (
            [1, 128, 15, 15],
            [128, 128, 3, 3],
            Conv {
                strides: [2, 2],
                ..pad1
            },
        ),
    ];
    for dtype in DType::ALL {
        for (i, (x, w, op)) in cases.iter().enumerate() {
            // The blocks of the threaded paths clip and add a residual sum too (bounds on both
            // sides).
            let clip = (i % 2 == 1).then_some(0);
            conv_case(backend, &mut rng, dtype, *x, *w, op, true, i >= 2, clip);
        }
    }
}

/// Programs of convolutions feeding convolutions, which the CPU backend (and an accelerator on
/// it, local or served) runs with their intermediates in its blocked layout
/// (`src/backend/cpu/blocked.rs`; with AVX-512): a planar input into a blocked output, blocked
/// into blocked through a padded 3×3, a strided 3×3 (80 output channels: blocks of three and two
/// vectors), a pointwise and a strided 1×1 convolution with a blocked residual sum, a dilated
/// 3×3 into a depthwise one read back planar; beside them a depthwise convolution of the planar
/// input into a blocked output, read by a padded depthwise one into the second output read back.
/// Then the same with an intermediate also read by the caller (left planar, so a blocked output
/// takes it as a planar sum, converted) or also read by a Relu step (planar, so the
/// convolutions after it read it planar), or with the first output left blocked for a global
/// average or max pool. FP32 and FP16, two images, against the float64 reference rounded to
/// the dtype after each step.
pub fn conv_programs_match_reference<B: Backend>(backend: &B) {
    let mut rng = rng("conv_programs_match_reference");
    // (input entry, weight shape, conv, residual sum entry, output entry); entry 0 is the
    // input, 1..=5 and 7 the intermediates, 6 and 8 the outputs.
    let conv = |strides, pads, dilations, relu, sum| Conv {
        strides,
        pads,
        dilations,
        relu,
        sum,
        ..Conv::default()
    };
    let depthwise = |group, strides, pads, relu| Conv {
        group,
        ..conv(strides, pads, [1, 1], relu, false)
    };
    type Link = (usize, [usize; 4], Conv, Option<usize>, usize);
    #[rustfmt::skip]
    let chain: Vec<Link> = vec![
        (0, [64, 16, 3, 3], conv([1, 1], [1; 4], [1, 1], true, false), None, 1),
        (1, [80, 64, 3, 3], conv([2, 2], [1, 1, 1, 1], [1, 1], false, false), None, 2),
        (2, [64, 80, 1, 1], conv([1, 1], [0; 4], [1, 1], false, false), None, 3),
        (1, [64, 64, 1, 1], conv([2, 2], [0; 4], [1, 1], true, true), Some(3), 4),
        (4, [64, 64, 3, 3], conv([1, 1], [2, 1, 0, 2], [2, 1], false, false), None, 5),
        (5, [64, 1, 3, 3], depthwise(64, [1, 1], [1; 4], true), None, 6),
        (0, [16, 1, 3, 3], depthwise(16, [2, 2], [1; 4], false), None, 7),
        (7, [16, 1, 3, 3], depthwise(16, [1, 1], [0, 1, 2, 1], true), None, 8),
    ];
    let x_shape = [2, 16, 9, 9];
    for dtype in DType::ALL {
        for extra in [
            None,
            Some("read"),
            Some("relu"),
            Some("average"),
            Some("max"),
        ] {
            let x = random(&mut rng, dtype, &x_shape, -1.0, 1.0);
            // Values, magnitudes and shape per entry, as the reference computes them: the
            // magnitudes (the error bound's scale) are those of the last step's terms, the
            // values before it taken as exact (a scale carried through every step in absolute
            // values grows past the values themselves: a bias left out went unnoticed).
            let mut want: Vec<(Vec<f64>, Vec<f64>, Vec<usize>)> =
                vec![(f64s(&x), abs(&x), x_shape.to_vec())];
            let mut weights = Vec::new();
            for (input, w_shape, op, sum, _) in &chain {
                let w = random(&mut rng, dtype, w_shape, -0.5, 0.5);
                let b = random(&mut rng, dtype, &[w_shape[0]], -0.5, 0.5);
                let linear = Conv {
                    relu: false,
                    sum: false,
                    ..op.clone()
                };
                let (xv, _, xs) = &want[*input];
                let xa: Vec<f64> = xv.iter().map(|v| v.abs()).collect();
                let (mut v, shape) =
                    reference::conv(&linear, xv, xs, &f64s(&w), w_shape, Some(&f64s(&b)));
                let (mut a, _) =
                    reference::conv(&linear, &xa, xs, &abs(&w), w_shape, Some(&abs(&b)));
                if let Some(s) = sum {
                    v.iter_mut().zip(&want[*s].0).for_each(|(v, s)| *v += s);
                    a.iter_mut()
                        .zip(&want[*s].0)
                        .for_each(|(a, s)| *a += s.abs());
                }
                if op.relu {
                    v.iter_mut().for_each(|v| *v = v.max(0.0));
                }
                // Rounded to the dtype, as the step stores it.
                let f32s: Vec<f32> = v.iter().map(|&v| v as f32).collect();
                let v = f64s(&HostTensor::from_f32(dtype, &shape, &f32s).unwrap());
                want.push((v, a, shape));
                weights.push((w, b));
            }
            // Table: entries 0..=8 as above, then each step's weights and bias.
            let mut table: Vec<Option<Tensor<B::Storage>>> = want
                .iter()
                .map(|(_, _, shape)| Some(poisoned(backend, dtype, shape)))
                .collect();
            let mut steps = Vec::new();
            for ((input, _, op, sum, output), (w, b)) in chain.iter().zip(&weights) {
                let wi = table.len();
                table.push(Some(backend.upload(w).unwrap()));
                table.push(Some(backend.upload(b).unwrap()));
                let inputs = [*input, wi]
                    .into_iter()
                    .chain(*sum)
                    .chain([wi + 1])
                    .collect();
                steps.push(Step {
                    op: Op::Conv(op.clone()),
                    inputs,
                    output: *output,
                });
            }
            // The table entries read back, each with its reference (an index into `want`).
            let mut reads = vec![(6, 6), (8, 8)];
            match extra {
                Some("read") => reads.push((3, 3)),
                Some("relu") => {
                    let out = table.len();
                    table.push(Some(poisoned(backend, dtype, &want[1].2)));
                    steps.insert(
                        1,
                        Step {
                            op: Op::Relu,
                            inputs: vec![1],
                            output: out,
                        },
                    );
                }
                Some(pool @ ("average" | "max")) => {
                    // The output blocked, read by a global pool whose output is read.
                    let (v, _, shape) = &want[6];
                    let plane = shape[2] * shape[3];
                    let pooled = |v: &[f64]| match pool {
                        "max" => v.iter().copied().fold(f64::NEG_INFINITY, f64::max),
                        _ => v.iter().sum::<f64>() / plane as f64,
                    };
                    let values: Vec<f64> = v.chunks(plane).map(pooled).collect();
                    let scale: Vec<f64> = v
                        .chunks(plane)
                        .map(|v| pooled(&v.iter().map(|v| v.abs()).collect::<Vec<_>>()))
                        .collect();
                    let pooled_shape = vec![shape[0], shape[1], 1, 1];
                    reads = vec![(table.len(), want.len()), (8, 8)];
                    table.push(Some(poisoned(backend, dtype, &pooled_shape)));
                    want.push((values, scale, pooled_shape));
                    steps.push(Step {
                        op: match pool {
                            "max" => Op::GlobalMaxPool,
                            _ => Op::GlobalAveragePool,
                        },
                        inputs: vec![6],
                        output: reads[0].0,
                    });
                }
                _ => {}
            }
            let entries: Vec<usize> = reads.iter().map(|&(entry, _)| entry).collect();
            let got = backend
                .run_program(&mut table, &[(0, &x)], &steps, &entries, None)
                .unwrap();
            for (got, &(entry, reference)) in got.iter().zip(&reads) {
                let (v, a, shape) = &want[reference];
                let what = format!("{dtype} entry {entry} with {extra:?}");
                assert_close_scaled(&what, got, v, a, shape);
            }
        }
    }
}

/// BatchNormalization over ranks 2–5 and several epsilons.
pub fn batch_norm_matches_reference<B: Backend>(backend: &B) {
    let mut rng = rng("batch_norm_matches_reference");
    let shapes: [&[usize]; 8] = [
        &[1, 1],
        &[2, 3],
        &[3, 5, 7],
        &[2, 4, 5, 6],
        &[1, 3, 1, 1, 2],
        &[2, 64, 33, 17],
        // More channels than the CPU folds a chunk at a time (64), the last chunk partial.
        &[2, 130, 3, 5],
        // Planes of at least 1024 elements (the CUDA plane kernel), over several blocks each,
        // starting off a 16-byte boundary (peeled heads and tails).
        &[1, 2, 9001],
    ];
    for dtype in DType::ALL {
        for (i, shape) in shapes.iter().enumerate() {
            batch_norm_case(
                backend,
                &mut rng,
                dtype,
                shape,
                [1e-5, 1e-3, 0.0, 0.1][i % 4],
            );
        }
    }
}

/// BatchNormalization of `shape` (channels in dimension 1) in `dtype` with `epsilon` against the
/// float64 reference (fresh random inputs, poisoned output).
pub fn batch_norm_case<B: Backend>(
    backend: &B,
    rng: &mut rand::rngs::StdRng,
    dtype: DType,
    shape: &[usize],
    epsilon: f32,
) {
    let c = shape[1];
    let op = BatchNorm { epsilon };
    let x = random(rng, dtype, shape, -3.0, 3.0);
    let scale = random(rng, dtype, &[c], 0.5, 2.0);
    let bias = random(rng, dtype, &[c], -1.0, 1.0);
    let mean = random(rng, dtype, &[c], -0.5, 0.5);
    let var = random(rng, dtype, &[c], 0.25, 2.0);
    let want = reference::batch_norm(
        &f64s(&x),
        shape,
        &f64s(&scale),
        &f64s(&bias),
        &f64s(&mean),
        &f64s(&var),
        op.epsilon as f64,
    );
    let inputs = [&x, &scale, &bias, &mean, &var].map(|t| up(backend, t));
    let mut y = poisoned(backend, dtype, shape);
    backend
        .apply_into(&Op::BatchNorm(op), &inputs.each_ref(), &mut y)
        .unwrap();
    // Bounded against the same formula on absolute values, |scale|·(|x| + |mean|) /
    // sqrt(var + ε) + |B|: where x·a and B − mean·a cancel (one element, seed
    // 17765442541012920033) a plain relative error measures the cancellation.
    let neg_abs = |t: &HostTensor| f64s(t).iter().map(|v| -v.abs()).collect::<Vec<_>>();
    let bound = reference::batch_norm(
        &abs(&x),
        shape,
        &abs(&scale),
        &abs(&bias),
        &neg_abs(&mean),
        &f64s(&var),
        op.epsilon as f64,
    );
    let what = format!("{dtype} BatchNormalization {shape:?} {op:?}");
    assert_close_scaled(&what, &backend.download(&y).unwrap(), &want, &bound, shape);
}

fn softmax_case<B: Backend>(backend: &B, x: &HostTensor, axis: i64) {
    let want = reference::softmax(&f64s(x), x.shape(), axis);
    let mut y = poisoned(backend, x.dtype(), x.shape());
    backend
        .apply_into(&Op::Softmax(Softmax { axis }), &[&up(backend, x)], &mut y)
        .unwrap();
    let what = format!("{} Softmax {:?} axis={axis}", x.dtype(), x.shape());
    assert_close(&what, &backend.download(&y).unwrap(), &want, x.shape());
}

/// Softmax along every axis, negative and positive, of several ranks, rows around the 16-lane
/// vector width, and long rows.
pub fn softmax_every_axis<B: Backend>(backend: &B) {
    let mut rng = rng("softmax_every_axis");
    let shapes: [&[usize]; 14] = [
        &[1],
        &[1, 1],
        // Rows of one vector, one more, and two and one more (the AVX-512 loops' tails).
        &[5, 16],
        &[4, 17],
        &[3, 33],
        &[3, 4, 5],
        &[2, 3, 5, 7],
        &[7, 1000],
        // Rows for the CUDA block kernel at each of its block sizes (128 to 1024 threads).
        &[2, 1500],
        &[2, 3000],
        &[1, 6000],
        &[1, 12000],
        &[3, 32771],
        &[4099, 3],
    ];
    for dtype in DType::ALL {
        for shape in shapes {
            let x = random(&mut rng, dtype, shape, -5.0, 5.0);
            let rank = shape.len() as i64;
            for axis in -rank..rank {
                softmax_case(backend, &x, axis);
            }
        }
    }
}

/// Large magnitudes (stability), `-inf` entries (→ 0), a fully `-inf` row (→ NaN, as the
/// definition gives), NaN entries (→ their row NaN) and entries whose exp underflows.
pub fn softmax_extremes<B: Backend>(backend: &B) {
    let mut rng = rng("softmax_extremes");
    for dtype in DType::ALL {
        let big = if dtype == DType::F16 { 60000.0 } else { 1e30 };
        let x = random(&mut rng, dtype, &[4, 37], big * 0.99, big);
        softmax_case(backend, &x, -1);
        softmax_case(backend, &x, 0);
        let mut values = random(&mut rng, dtype, &[3, 19], -4.0, 4.0)
            .data()
            .to_f32_vec();
        for (i, v) in values.iter_mut().enumerate() {
            if i % 3 == 0 || (19..38).contains(&i) {
                *v = f32::NEG_INFINITY;
            }
        }
        let x = HostTensor::from_f32(dtype, &[3, 19], &values).unwrap();
        softmax_case(backend, &x, -1);
        let y = backend
            .download(
                &backend
                    .softmax(&Softmax { axis: 1 }, &up(backend, &x))
                    .unwrap(),
            )
            .unwrap();
        let y = y.data().to_f32_vec();
        assert!(
            y[19..38].iter().all(|v| v.is_nan()),
            "{dtype}: an all -inf row has no softmax"
        );
        assert!(
            y[..19].iter().step_by(3).all(|&v| v == 0.0),
            "{dtype}: -inf entries give exactly 0"
        );
        // A NaN turns its row NaN, whether it sits in a full vector or in a row's tail.
        let mut values = random(&mut rng, dtype, &[3, 37], -4.0, 4.0)
            .data()
            .to_f32_vec();
        values[5] = f32::NAN;
        values[37 + 35] = f32::NAN;
        let x = HostTensor::from_f32(dtype, &[3, 37], &values).unwrap();
        let y = backend
            .download(
                &backend
                    .softmax(&Softmax { axis: 1 }, &up(backend, &x))
                    .unwrap(),
            )
            .unwrap();
        let y = y.data().to_f32_vec();
        assert!(
            y[..74].iter().all(|v| v.is_nan()),
            "{dtype}: a NaN turns its row NaN"
        );
        assert!(
            y[74..].iter().all(|v| v.is_finite()),
            "{dtype}: a NaN stays in its row"
        );
        // Entries far enough below the maximum that their exp underflows (subnormal or 0).
        let x = random(&mut rng, dtype, &[5, 41], -120.0, 0.0);
        softmax_case(backend, &x, -1);
        // The maximum found wherever it sits: row r of 100 (whole groups of vectors, then a
        // tail) is one 0 at position r among −1000s, whose softmax is one-hot. A maximum
        // missed gives exp(1000): NaN, or a row that sums to less than 1.
        let values: Vec<f32> = (0..100 * 100)
            .map(|i| if i / 100 == i % 100 { 0.0 } else { -1000.0 })
            .collect();
        let x = HostTensor::from_f32(dtype, &[100, 100], &values).unwrap();
        softmax_case(backend, &x, -1);
    }
}

/// Zero-sized dimensions are valid and produce empty (or zero-filled for K = 0) outputs.
pub fn empty_tensors<B: Backend>(backend: &B) {
    for dtype in DType::ALL {
        let a = HostTensor::full(dtype, &[3, 0], 1.0).unwrap();
        let b = HostTensor::full(dtype, &[0, 4], 1.0).unwrap();
        let c = HostTensor::full(dtype, &[4], 0.5).unwrap();
        let mut y = poisoned(backend, dtype, &[3, 4]);
        let op = Gemm {
            beta: 2.0,
            ..Gemm::default()
        };
        backend
            .gemm_into(
                &op,
                &up(backend, &a),
                &up(backend, &b),
                Some(&up(backend, &c)),
                &mut y,
            )
            .unwrap();
        assert_close(
            &format!("{dtype} Gemm K=0"),
            &backend.download(&y).unwrap(),
            &[1.0; 12],
            &[3, 4],
        );
        let mut y = poisoned(backend, dtype, &[3, 4]);
        backend
            .matmul_into(&up(backend, &a), &up(backend, &b), &mut y)
            .unwrap();
        assert_close(
            &format!("{dtype} MatMul K=0"),
            &backend.download(&y).unwrap(),
            &[0.0; 12],
            &[3, 4],
        );
        let x = HostTensor::full(dtype, &[0, 5], 1.0).unwrap();
        let y = backend
            .softmax(&Softmax::default(), &up(backend, &x))
            .unwrap();
        assert_eq!(backend.download(&y).unwrap().shape(), &[0, 5]);
    }
}

fn expect_err<T: std::fmt::Debug>(what: &str, r: eia::Result<T>, check: impl Fn(&Error) -> bool) {
    match r {
        Err(e) => {
            assert!(check(&e), "{what}: unexpected error kind: {e:?}");
            assert!(!e.to_string().is_empty());
        }
        Ok(v) => panic!("{what}: expected an error, got {v:?}"),
    }
}

fn h(dtype: DType, shape: &[usize]) -> HostTensor {
    HostTensor::full(dtype, shape, 1.0).unwrap()
}

/// Every Gemm/MatMul validation error is typed and readable.
pub fn errors_gemm_matmul<B: Backend>(backend: &B) {
    let f = |shape: &[usize]| up(backend, &h(DType::F32, shape));
    let g = |shape: &[usize]| up(backend, &h(DType::F16, shape));
    let shape_err = |e: &Error| matches!(e, Error::Shape { .. });
    let d = Gemm::default();
    expect_err(
        "K mismatch",
        backend.gemm(&d, &f(&[2, 3]), &f(&[4, 5]), None).map(|_| ()),
        shape_err,
    );
    expect_err(
        "rank of A",
        backend
            .gemm(&d, &f(&[2, 3, 1]), &f(&[3, 5]), None)
            .map(|_| ()),
        shape_err,
    );
    expect_err(
        "rank of B",
        backend.gemm(&d, &f(&[2, 3]), &f(&[3]), None).map(|_| ()),
        shape_err,
    );
    expect_err(
        "C broadcast",
        backend
            .gemm(&d, &f(&[2, 3]), &f(&[3, 5]), Some(&f(&[4])))
            .map(|_| ()),
        shape_err,
    );
    expect_err(
        "C rank",
        backend
            .gemm(&d, &f(&[2, 3]), &f(&[3, 5]), Some(&f(&[1, 2, 5])))
            .map(|_| ()),
        shape_err,
    );
    expect_err(
        "C rows",
        backend
            .gemm(&d, &f(&[2, 3]), &f(&[3, 5]), Some(&f(&[3, 5])))
            .map(|_| ()),
        shape_err,
    );
    let trans = Gemm { trans_a: true, ..d };
    expect_err(
        "transA K mismatch",
        backend
            .gemm(&trans, &f(&[2, 3]), &f(&[3, 5]), None)
            .map(|_| ()),
        shape_err,
    );
    expect_err(
        "dtype B",
        backend.gemm(&d, &f(&[2, 3]), &g(&[3, 5]), None).map(|_| ()),
        |e| matches!(e, Error::DTypeMismatch { operand: "B", .. }),
    );
    expect_err(
        "dtype C",
        backend
            .gemm(&d, &f(&[2, 3]), &f(&[3, 5]), Some(&g(&[5])))
            .map(|_| ()),
        |e| matches!(e, Error::DTypeMismatch { operand: "C", .. }),
    );
    for (what, clip, name) in [
        (
            "clip min > max",
            Clip {
                min: Some(1.0),
                max: Some(0.0),
            },
            "clip.min",
        ),
        (
            "clip min NaN",
            Clip {
                min: Some(f32::NAN),
                max: None,
            },
            "clip.min",
        ),
        (
            "clip max NaN",
            Clip {
                min: None,
                max: Some(f32::NAN),
            },
            "clip.max",
        ),
    ] {
        let op = Gemm {
            clip: Some(clip),
            ..d
        };
        expect_err(
            what,
            backend
                .gemm(&op, &f(&[2, 3]), &f(&[3, 5]), None)
                .map(|_| ()),
            |e| matches!(e, Error::Attribute { op: "Gemm", name: n, .. } if *n == name),
        );
    }
    let nan_alpha = Gemm {
        alpha: f32::NAN,
        ..d
    };
    expect_err(
        "alpha NaN",
        backend
            .gemm(&nan_alpha, &f(&[2, 3]), &f(&[3, 5]), None)
            .map(|_| ()),
        |e| matches!(e, Error::Attribute { name: "alpha", .. }),
    );
    expect_err(
        "MatMul scalar",
        backend.matmul(&f(&[]), &f(&[3])).map(|_| ()),
        shape_err,
    );
    expect_err(
        "MatMul K",
        backend.matmul(&f(&[2, 3]), &f(&[4, 5])).map(|_| ()),
        shape_err,
    );
    expect_err(
        "MatMul batch",
        backend.matmul(&f(&[2, 2, 3]), &f(&[3, 3, 5])).map(|_| ()),
        shape_err,
    );
    expect_err(
        "MatMul dtype",
        backend.matmul(&g(&[2, 3]), &f(&[3, 5])).map(|_| ()),
        |e| matches!(e, Error::DTypeMismatch { .. }),
    );
    let msg = backend
        .gemm(&d, &f(&[2, 3]), &f(&[4, 5]), None)
        .map(|_| ())
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("Gemm") && msg.contains("K=3") && msg.contains("K=4"),
        "message names the op and both K: {msg}"
    );
}

/// Too few or too many inputs for any op is an `Arity` error naming the op's inputs.
pub fn errors_arity<B: Backend>(backend: &B) {
    let t = up(backend, &h(DType::F32, &[2, 2]));
    let ops = [
        Op::Gemm(Gemm::default()),
        Op::MatMul,
        Op::Conv(Conv::default()),
        Op::BatchNorm(BatchNorm::default()),
        Op::Softmax(Softmax::default()),
    ];
    for op in &ops {
        for n in [0, *op.arity().end() + 1] {
            let inputs = vec![&t; n];
            let what = format!("{} with {n} inputs", op.name());
            expect_err(
                &what,
                backend.apply(op, &inputs).map(|_| ()),
                |e| matches!(e, Error::Arity { got, .. } if *got == n),
            );
        }
    }
    let msg = backend
        .apply(&ops[0], &[&t])
        .map(|_| ())
        .unwrap_err()
        .to_string();
    assert!(msg.contains("Gemm") && msg.contains("A, B[, C]"), "{msg}");
}

/// Every Conv validation error is typed and readable.
pub fn errors_conv<B: Backend>(backend: &B) {
    let f = |shape: &[usize]| up(backend, &h(DType::F32, shape));
    let x = f(&[1, 4, 8, 8]);
    let w = f(&[6, 4, 3, 3]);
    let d = Conv::default();
    let shape_err = |e: &Error| matches!(e, Error::Shape { .. });
    let attr = |name: &'static str| move |e: &Error| matches!(e, Error::Attribute { name: n, .. } if *n == name);
    expect_err(
        "rank X",
        backend.conv(&d, &f(&[4, 8, 8]), &w, None).map(|_| ()),
        shape_err,
    );
    expect_err(
        "rank W",
        backend.conv(&d, &x, &f(&[6, 4, 3]), None).map(|_| ()),
        shape_err,
    );
    expect_err(
        "channels",
        backend.conv(&d, &x, &f(&[6, 3, 3, 3]), None).map(|_| ()),
        shape_err,
    );
    expect_err(
        "group divides",
        backend
            .conv(
                &Conv {
                    group: 3,
                    ..d.clone()
                },
                &x,
                &w,
                None,
            )
            .map(|_| ()),
        attr("group"),
    );
    for (what, clip, name) in [
        (
            "clip min > max",
            Clip {
                min: Some(6.0),
                max: Some(0.0),
            },
            "clip.min",
        ),
        (
            "clip max NaN",
            Clip {
                min: Some(0.0),
                max: Some(f32::NAN),
            },
            "clip.max",
        ),
    ] {
        let op = Conv {
            relu: true,
            clip: Some(clip),
            ..d.clone()
        };
        expect_err(
            what,
            backend.conv(&op, &x, &w, None).map(|_| ()),
            |e| matches!(e, Error::Attribute { op: "Conv", name: n, .. } if *n == name),
        );
    }
    expect_err(
        "group zero",
        backend
            .conv(
                &Conv {
                    group: 0,
                    ..d.clone()
                },
                &x,
                &w,
                None,
            )
            .map(|_| ()),
        attr("group"),
    );
    expect_err(
        "stride zero",
        backend
            .conv(
                &Conv {
                    strides: [0, 1],
                    ..d.clone()
                },
                &x,
                &w,
                None,
            )
            .map(|_| ()),
        attr("strides"),
    );
    // Beyond what any backend indexes (the CPU's strided path once overflowed on this).
    expect_err(
        "stride 2^40",
        backend
            .conv(
                &Conv {
                    strides: [1, 1 << 40],
                    ..d.clone()
                },
                &x,
                &w,
                None,
            )
            .map(|_| ()),
        attr("strides"),
    );
    expect_err(
        "dilation zero",
        backend
            .conv(
                &Conv {
                    dilations: [1, 0],
                    ..d.clone()
                },
                &x,
                &w,
                None,
            )
            .map(|_| ()),
        attr("dilations"),
    );
    expect_err(
        "kernel too big",
        backend.conv(&d, &x, &f(&[6, 4, 9, 3]), None).map(|_| ()),
        shape_err,
    );
    expect_err(
        "dilated kernel too big",
        backend
            .conv(
                &Conv {
                    dilations: [4, 1],
                    ..d.clone()
                },
                &x,
                &w,
                None,
            )
            .map(|_| ()),
        shape_err,
    );
    expect_err(
        "bias shape",
        backend.conv(&d, &x, &w, Some(&f(&[5]))).map(|_| ()),
        shape_err,
    );
    expect_err(
        "bias dtype",
        backend
            .conv(&d, &x, &w, Some(&up(backend, &h(DType::F16, &[6]))))
            .map(|_| ()),
        |e| matches!(e, Error::DTypeMismatch { .. }),
    );
    expect_err(
        "kernel_shape",
        backend
            .conv(
                &Conv {
                    kernel_shape: Some([5, 5]),
                    ..d.clone()
                },
                &x,
                &w,
                None,
            )
            .map(|_| ()),
        attr("kernel_shape"),
    );
    expect_err(
        "empty kernel",
        backend.conv(&d, &x, &f(&[6, 4, 0, 3]), None).map(|_| ()),
        shape_err,
    );
    // A residual sum (output [1, 6, 6, 6]) of another shape (broadcastable or not), dtype or
    // missing: typed errors that leave the output as it was.
    let summed = Op::Conv(Conv {
        sum: true,
        relu: true,
        ..d.clone()
    });
    let b = f(&[6]);
    let half = up(backend, &h(DType::F16, &[1, 6, 6, 6]));
    let mut y = poisoned(backend, DType::F32, &[1, 6, 6, 6]);
    for (what, sum, check) in [
        (
            "sum broadcast",
            f(&[1, 6, 1, 1]),
            shape_err as fn(&Error) -> bool,
        ),
        ("sum too big", f(&[1, 6, 6, 7]), shape_err),
        ("sum rank", f(&[6, 6, 6]), shape_err),
    ] {
        expect_err(
            what,
            backend.apply_into(&summed, &[&x, &w, &sum, &b], &mut y),
            check,
        );
    }
    expect_err(
        "sum dtype",
        backend.apply_into(&summed, &[&x, &w, &half, &b], &mut y),
        |e| {
            matches!(
                e,
                Error::DTypeMismatch {
                    op: "Conv",
                    operand: "Sum",
                    ..
                }
            )
        },
    );
    expect_err(
        "sum missing",
        backend.apply_into(&summed, &[&x, &w], &mut y),
        |e| matches!(e, Error::Arity { got: 2, .. }),
    );
    let got = backend.download(&y).unwrap().data().to_f64_vec();
    assert!(
        got.iter().all(|v| v.is_nan()),
        "a refused Conv wrote its output"
    );
    // Conv::plan given a Sum that disagrees with the attribute.
    let out = eia::TensorDesc::new(DType::F32, &[1, 6, 6, 6]).unwrap();
    let with_sum = Conv {
        sum: true,
        ..d.clone()
    };
    for (op, sum) in [(&with_sum, None), (&d, Some(&out))] {
        expect_err(
            "sum attribute against the inputs",
            op.plan(x.desc(), w.desc(), None, sum).map(|_| ()),
            attr("sum"),
        );
    }
    let msg = backend
        .apply(&summed, &[&x])
        .map(|_| ())
        .unwrap_err()
        .to_string();
    assert!(msg.contains("X, W, Sum[, B]"), "{msg}");
}

/// Every BatchNormalization and Softmax validation error is typed and readable.
pub fn errors_batch_norm_softmax<B: Backend>(backend: &B) {
    let f = |shape: &[usize]| up(backend, &h(DType::F32, shape));
    let p = f(&[3]);
    let bn = BatchNorm::default();
    expect_err(
        "rank 1",
        backend
            .batch_norm(&bn, &f(&[3]), [&p, &p, &p, &p])
            .map(|_| ()),
        |e| matches!(e, Error::Shape { .. }),
    );
    expect_err(
        "param shape",
        backend
            .batch_norm(&bn, &f(&[2, 3, 4]), [&p, &p, &f(&[4]), &p])
            .map(|_| ()),
        |e| matches!(e, Error::Shape { msg, .. } if msg.contains("input_mean")),
    );
    expect_err(
        "param dtype",
        backend
            .batch_norm(
                &bn,
                &f(&[2, 3, 4]),
                [&p, &up(backend, &h(DType::F16, &[3])), &p, &p],
            )
            .map(|_| ()),
        |e| matches!(e, Error::DTypeMismatch { operand: "B", .. }),
    );
    expect_err(
        "epsilon",
        backend
            .batch_norm(&BatchNorm { epsilon: -1.0 }, &f(&[2, 3]), [&p, &p, &p, &p])
            .map(|_| ()),
        |e| {
            matches!(
                e,
                Error::Attribute {
                    name: "epsilon",
                    ..
                }
            )
        },
    );
    for axis in [3, -4, i64::MAX, i64::MIN] {
        expect_err(
            "softmax axis",
            backend
                .softmax(&Softmax { axis }, &f(&[2, 3, 4]))
                .map(|_| ()),
            |e| matches!(e, Error::Attribute { name: "axis", .. }),
        );
    }
    expect_err(
        "softmax scalar",
        backend.softmax(&Softmax::default(), &f(&[])).map(|_| ()),
        |e| matches!(e, Error::Shape { .. }),
    );
    expect_err(
        "host data length",
        HostTensor::new(&[2, 3], vec![1.0f32; 5]),
        |e| matches!(e, Error::DataLength { .. }),
    );
    expect_err(
        "host bytes length",
        HostTensor::from_bytes(DType::F16, &[3], &[0u8; 5]),
        |e| matches!(e, Error::ByteLength { .. }),
    );
    expect_err(
        "shape overflow",
        HostTensor::full(DType::F32, &[usize::MAX, 2], 0.0),
        |e| matches!(e, Error::ShapeOverflow { .. }),
    );
    expect_err("dtype name", "int8".parse::<DType>(), |e| {
        matches!(e, Error::UnknownDType(_))
    });
}

/// A failed `_into` call (bad operands or a wrong output) leaves the output as it was.
pub fn errors_leave_output_untouched<B: Backend>(backend: &B) {
    let f = |shape: &[usize]| up(backend, &h(DType::F32, shape));
    let mut y = poisoned(backend, DType::F32, &[2, 5]);
    expect_err(
        "bad operands",
        backend.gemm_into(&Gemm::default(), &f(&[2, 3]), &f(&[4, 5]), None, &mut y),
        |e| matches!(e, Error::Shape { .. }),
    );
    let mut wrong = poisoned(backend, DType::F32, &[5, 2]);
    expect_err(
        "wrong output shape",
        backend.gemm_into(&Gemm::default(), &f(&[2, 3]), &f(&[3, 5]), None, &mut wrong),
        |e| matches!(e, Error::Output { .. }),
    );
    let mut wrong_dtype = poisoned(backend, DType::F16, &[2, 5]);
    expect_err(
        "wrong output dtype",
        backend.softmax_into(&Softmax::default(), &f(&[2, 5]), &mut wrong_dtype),
        |e| matches!(e, Error::Output { .. }),
    );
    for t in [&y, &wrong] {
        let v = backend.download(t).unwrap().data().to_f32_vec();
        assert!(
            v.iter().all(|v| v.is_nan()),
            "output changed by a failed call"
        );
    }
}

// The families' suites, each in its own file.
#[allow(unused_imports)] // test crates that run no suite
pub use super::{suite_binary::*, suite_layout::*, suite_lrn::*, suite_pool::*, suite_unary::*};

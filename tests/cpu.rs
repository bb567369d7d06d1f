//! The op conformance suite on the CPU backend (rayon's global pool), and on a one-thread pool
//! so that the sequential paths are covered too.

mod common;

backend_suite!(eia::CpuBackend::new());

mod single_thread {
    use super::common;
    use crate::backend_suite;
    backend_suite!(eia::CpuBackend::with_threads(1).unwrap());
}

/// Runs each `(x shape, w shape, conv)` case on the CPU backend in FP32 and FP16 against the
/// float64 reference (inputs from the RNG stream `name`), with a bias, every other case with a
/// fused Clip (in each of its bound variants) and, where `sums`, two in three with a residual sum.
fn conv_cases(name: &str, cases: &[([usize; 4], [usize; 4], eia::ops::Conv)], sums: bool) {
    let cpu = eia::CpuBackend::new();
    let mut rng = common::rng(name);
    for dtype in eia::DType::ALL {
        for (i, (x, w, op)) in cases.iter().enumerate() {
            let clip = (i % 2 == 1).then_some(i / 2);
            let sum = sums && i % 3 != 0;
            common::suite::conv_case(&cpu, &mut rng, dtype, *x, *w, op, true, sum, clip);
        }
    }
}

/// Shapes for the direct convolution of the AVX-512 path (`src/backend/cpu/direct.rs`; on the
/// narrower instruction sets they run the GEMM lowering; `tests/weight_cache.rs` covers its
/// cached packed weights): images framed in groups of one (each image's frame is over half the
/// 8 MiB a group holds), output channels that fill no register tile (1, 7, 13) or leave a
/// block's last vectors empty (21, 40, 70, 200), output maps of many row blocks and single
/// rows, channels in several chunks, strides and dilations that split the input into phases of
/// unequal widths, strided 1×1 convolutions, and thin pointwise projections (FP32: a wide map
/// of two images, output channels that fill no block); every other case with a fused Clip, two
/// in three with a residual sum.
#[test]
fn direct_conv_edges() {
    use eia::ops::Conv;
    let conv = |strides, pads, dilations| Conv {
        strides,
        pads,
        dilations,
        ..Conv::default()
    };
    let cases: [([usize; 4], [usize; 4], eia::ops::Conv); 16] = [
        // Few output channels on a wide map (a `Positions` tile) whose frame rows are wider than
        // the output rows, in several channel chunks.
        (
            [1, 150, 20, 29],
            [8, 150, 3, 3],
            conv([1, 1], [1; 4], [1, 1]),
        ),
        (
            [3, 64, 130, 130],
            [1, 64, 3, 3],
            conv([1, 1], [1; 4], [1, 1]),
        ),
        (
            [1, 5, 70, 33],
            [7, 5, 3, 3],
            conv([1, 1], [1, 0, 2, 1], [1, 1]),
        ),
        ([2, 3, 41, 47], [13, 3, 7, 7], conv([2, 2], [3; 4], [1, 1])),
        (
            [1, 200, 6, 5],
            [13, 200, 3, 3],
            conv([1, 1], [1; 4], [1, 1]),
        ),
        (
            [1, 4, 1, 40],
            [9, 4, 1, 3],
            conv([1, 3], [0, 2, 0, 1], [1, 2]),
        ),
        (
            [2, 6, 19, 23],
            [10, 6, 3, 5],
            conv([3, 2], [2, 1, 0, 3], [2, 1]),
        ),
        // Pointwise (small maps, many channels): FP32 read in place, the last image's last
        // tile ending with the input.
        (
            [3, 130, 7, 9],
            [21, 130, 1, 1],
            conv([1, 1], [0; 4], [1, 1]),
        ),
        (
            [2, 128, 5, 13],
            [96, 128, 1, 1],
            conv([1, 1], [0; 4], [2, 2]),
        ),
        (
            [1, 300, 1, 1],
            [70, 300, 1, 1],
            conv([1, 1], [0; 4], [1, 1]),
        ),
        (
            [1, 144, 14, 14],
            [40, 144, 1, 1],
            conv([1, 1], [0; 4], [1, 1]),
        ),
        // Blocks of 4 vectors of output channels, the last filled by one: 200 = 3·64 + 8.
        (
            [1, 160, 3, 5],
            [200, 160, 1, 1],
            conv([1, 1], [0; 4], [1, 1]),
        ),
        // Strided 1×1 (a ResNet shortcut): only the phase it reads is framed; odd sizes leave
        // the last input row and column unread, and a padded one reads zeros on its border.
        (
            [2, 40, 15, 13],
            [24, 40, 1, 1],
            conv([2, 2], [0; 4], [1, 1]),
        ),
        (
            [1, 9, 8, 7],
            [70, 9, 1, 1],
            conv([3, 2], [1, 0, 2, 1], [1, 1]),
        ),
        (
            [2, 144, 23, 25],
            [24, 144, 1, 1],
            conv([1, 1], [0; 4], [1, 1]),
        ),
        (
            [1, 100, 17, 30],
            [17, 100, 1, 1],
            conv([1, 1], [0; 4], [1, 1]),
        ),
    ];
    conv_cases("direct_conv_edges", &cases, true);
}

/// Shapes for the Winograd convolution of the AVX-512 path (`src/backend/cpu/winograd.rs`: 3×3,
/// unit strides, at least 16 input and output channels, 13 output columns and 128 tiles of 2×2
/// outputs; on the narrower instruction sets they run the GEMM lowering): odd output sizes (a
/// tile's second row or column past the map), tile rows of more than one vector with a partial
/// last one, padding uneven and larger than half the kernel, blocks of tile rows spanning
/// images, input channels in several chunks, output channels that fill no register tile and
/// split into groups; every other case with a fused Clip, two in three with a residual sum.
#[test]
fn winograd_conv_edges() {
    use eia::ops::Conv;
    let conv = |pads| Conv {
        pads,
        ..Conv::default()
    };
    let cases: [([usize; 4], [usize; 4], eia::ops::Conv); 6] = [
        ([3, 16, 13, 13], [16, 16, 3, 3], conv([1; 4])),
        ([2, 24, 37, 40], [22, 24, 3, 3], conv([0, 2, 1, 0])),
        ([3, 200, 14, 14], [70, 200, 3, 3], conv([1; 4])),
        ([1, 16, 15, 33], [200, 16, 3, 3], conv([2; 4])),
        ([3, 32, 16, 16], [32, 32, 3, 3], conv([0; 4])),
        ([5, 40, 9, 30], [17, 40, 3, 3], conv([3, 1, 0, 2])),
    ];
    conv_cases("winograd_conv_edges", &cases, true);
}

/// Shapes for pointwise convolutions on the GEMM lowering (`src/backend/cpu/conv.rs`; FP16 ones
/// widened and rounded a block of columns at a time, `pointwise_f16`; none of these is small
/// enough with channels enough for the direct kernel, which with AVX-512 takes the FP32 130 → 1
/// as a thin projection): maps of one position, of fewer than a
/// vector and of a partial last vector, a 14×14 map, maps cut into column blocks whose last one
/// is shorter (on two or more threads), many input channels, output channels that fill no
/// register tile (1, 17, 70) and many (200); every other case with a fused Clip, two in three
/// with a residual sum.
#[test]
fn pointwise_conv_edges() {
    let op = eia::ops::Conv::default();
    let cases: [([usize; 4], [usize; 4], eia::ops::Conv); 6] = [
        ([2, 16, 3, 5], [17, 16, 1, 1], op.clone()),
        ([1, 200, 15, 17], [70, 200, 1, 1], op.clone()),
        ([3, 24, 14, 14], [200, 24, 1, 1], op.clone()),
        ([1, 8, 40, 40], [6, 8, 1, 1], op.clone()),
        ([2, 64, 1, 1], [33, 64, 1, 1], op.clone()),
        ([1, 130, 20, 20], [1, 130, 1, 1], op),
    ];
    conv_cases("pointwise_conv_edges", &cases, true);
}

/// A NaN input reaches exactly the outputs whose 3×3 windows hold it on the Winograd kernel, as
/// in the direct sum: its transforms regroup a tile's terms but carry no input to an output
/// whose window lacks it. NaN at a corner, on an edge and inside, in two images.
#[test]
fn winograd_conv_nan_reaches_only_its_windows() {
    use eia::Backend;
    let cpu = eia::CpuBackend::new();
    let mut rng = common::rng("winograd_conv_nan_reaches_only_its_windows");
    let (xs, ws) = ([3, 16, 13, 13], [16, 16, 3, 3]);
    let op = eia::ops::Conv {
        pads: [1; 4],
        ..Default::default()
    };
    for dtype in eia::DType::ALL {
        let x = common::random(&mut rng, dtype, &xs, -1.0, 1.0);
        let mut values: Vec<f32> = common::f64s(&x).iter().map(|&v| v as f32).collect();
        for (n, c, h, w) in [(1, 5, 0, 0), (1, 5, 6, 12), (2, 0, 7, 6)] {
            values[((n * 16 + c) * 13 + h) * 13 + w] = f32::NAN;
        }
        let x = eia::HostTensor::from_f32(dtype, &xs, &values).unwrap();
        let w = common::random(&mut rng, dtype, &ws, -1.0, 1.0);
        let (want, shape) =
            common::reference::conv(&op, &common::f64s(&x), &xs, &common::f64s(&w), &ws, None);
        assert!(want.iter().any(|v| v.is_nan()) && want.iter().any(|v| v.is_finite()));
        let mut y = common::poisoned(&cpu, dtype, &shape);
        let (x, w) = (cpu.upload(&x).unwrap(), cpu.upload(&w).unwrap());
        cpu.apply_into(&eia::ops::Op::Conv(op.clone()), &[&x, &w], &mut y)
            .unwrap();
        let what = format!("{dtype} Conv with NaN inputs");
        common::assert_close(&what, &cpu.download(&y).unwrap(), &want, &shape);
    }
}

/// A grouped convolution's attributes (the depthwise tests' cases).
fn grouped(
    strides: [usize; 2],
    pads: [usize; 4],
    dilations: [usize; 2],
    group: usize,
) -> eia::ops::Conv {
    eia::ops::Conv {
        strides,
        pads,
        dilations,
        group,
        ..eia::ops::Conv::default()
    }
}

/// Shapes for the depthwise kernel (`src/backend/cpu/depthwise.rs`: on AVX-512 read in place
/// through masked loads, several rows at a time, elsewhere from a padded copy): one-row maps,
/// maps whose inner rows form groups and leave rows over (20 columns at stride 2, 7×7), output
/// rows of one lane past a vector and of two 64-column blocks, stride 2 on odd widths and with a dilation,
/// several output channels per group, pads wider than the kernel (rows and columns that read
/// only padding), and the shapes the in-place kernel leaves to the copy (a column stride of
/// 3, 17 kernel columns); every other case with a fused Clip.
#[test]
fn depthwise_conv_edges() {
    let cases: [([usize; 4], [usize; 4], eia::ops::Conv); 11] = [
        (
            [1, 3, 1, 40],
            [3, 1, 3, 3],
            grouped([1, 1], [1; 4], [1, 1], 3),
        ),
        (
            [1, 2, 22, 40],
            [2, 1, 3, 3],
            grouped([2, 2], [1; 4], [1, 1], 2),
        ),
        (
            [1, 3, 7, 7],
            [3, 1, 3, 3],
            grouped([1, 1], [1; 4], [1, 1], 3),
        ),
        (
            [2, 5, 9, 33],
            [5, 1, 3, 3],
            grouped([2, 2], [1; 4], [1, 1], 5),
        ),
        (
            [1, 4, 20, 129],
            [8, 1, 3, 3],
            grouped([1, 1], [1; 4], [1, 1], 4),
        ),
        (
            [1, 3, 13, 131],
            [3, 1, 5, 5],
            grouped([2, 2], [2, 1, 2, 3], [1, 2], 3),
        ),
        (
            [2, 6, 7, 7],
            [6, 1, 3, 3],
            grouped([2, 2], [1; 4], [1, 1], 6),
        ),
        (
            [1, 2, 3, 3],
            [2, 1, 3, 3],
            grouped([1, 1], [4; 4], [1, 1], 2),
        ),
        (
            [1, 2, 14, 17],
            [2, 1, 1, 1],
            grouped([2, 2], [0; 4], [1, 1], 2),
        ),
        (
            [1, 3, 10, 11],
            [3, 1, 3, 3],
            grouped([3, 3], [1; 4], [1, 1], 3),
        ),
        (
            [1, 2, 6, 21],
            [2, 1, 3, 17],
            grouped([1, 1], [1, 8, 1, 8], [1, 1], 2),
        ),
    ];
    conv_cases("depthwise_conv_edges", &cases, true);
}

/// 3×3 depthwise convolutions at column stride 2 on the AVX-512 row kernel, which loads each
/// vector's input columns once and takes tap 2 from the next vector's (the last vector's from
/// one load more): rows of one vector, of four (a whole block, its last lane reading the
/// column after), of two blocks and a tail, with the last column in the padding or not; no
/// residual sum (with one, the padded copy runs), every other case with a fused Clip.
#[test]
fn depthwise_stride2_rows() {
    let cases: [([usize; 4], [usize; 4], eia::ops::Conv); 4] = [
        (
            [1, 3, 6, 29],
            [3, 1, 3, 3],
            grouped([2, 2], [1; 4], [1, 1], 3),
        ),
        (
            [1, 2, 5, 128],
            [2, 1, 3, 3],
            grouped([2, 2], [1, 0, 1, 1], [1, 1], 2),
        ),
        (
            [1, 2, 6, 261],
            [2, 1, 3, 3],
            grouped([2, 2], [1; 4], [1, 1], 2),
        ),
        (
            [2, 2, 4, 256],
            [4, 1, 3, 3],
            grouped([2, 2], [0, 1, 0, 0], [1, 1], 2),
        ),
    ];
    conv_cases("depthwise_stride2_rows", &cases, false);
}

/// Depthwise convolutions on maps at most 8 wide (with AVX-512, the kernel that puts sixteen
/// channels in a vector): channel counts that leave a block partly empty, two outputs per
/// group, every stride and padding shape, a 1×1 map and a tall one; half with a fused Clip.
#[test]
fn depthwise_small_maps() {
    let cases: [([usize; 4], [usize; 4], eia::ops::Conv); 10] = [
        (
            [2, 20, 7, 7],
            [20, 1, 3, 3],
            grouped([1, 1], [1; 4], [1, 1], 20),
        ),
        (
            [1, 33, 14, 14],
            [33, 1, 3, 3],
            grouped([2, 2], [1; 4], [1, 1], 33),
        ),
        (
            [1, 16, 8, 8],
            [32, 1, 3, 3],
            grouped([1, 1], [1; 4], [1, 1], 16),
        ),
        (
            [1, 17, 5, 6],
            [17, 1, 5, 5],
            grouped([1, 1], [2, 1, 3, 2], [1, 1], 17),
        ),
        (
            [1, 18, 7, 7],
            [18, 1, 3, 3],
            grouped([1, 1], [2; 4], [2, 2], 18),
        ),
        (
            [1, 5, 1, 1],
            [5, 1, 3, 3],
            grouped([1, 1], [1; 4], [1, 1], 5),
        ),
        (
            [1, 24, 12, 4],
            [24, 1, 3, 1],
            grouped([1, 3], [1, 0, 1, 0], [1, 1], 24),
        ),
        (
            [1, 40, 3, 3],
            [40, 1, 3, 3],
            grouped([1, 1], [4, 2, 4, 2], [1, 1], 40),
        ),
        (
            [1, 16, 40, 3],
            [16, 1, 3, 3],
            grouped([1, 1], [1; 4], [1, 1], 16),
        ),
        (
            [1, 32, 14, 14],
            [32, 1, 2, 2],
            grouped([2, 2], [0; 4], [1, 1], 32),
        ),
    ];
    conv_cases("depthwise_small_maps", &cases, false);
}

/// Depthwise convolutions the flat kernel takes (`src/backend/cpu/depthwise.rs`, AVX-512:
/// stride 1 with `q = w`, a channel's outputs as one row of `p·q`): one-row, 7×7 (two images)
/// and 14×14 maps, a 5×5 kernel with two outputs per group, a dilation, pads only on top and
/// right, maps of several vector groups (56×56, 30×30) and, for the row kernel beside it, a
/// width of sixteen; every other case with a fused Clip.
#[test]
fn depthwise_flat_maps() {
    let cases: [([usize; 4], [usize; 4], eia::ops::Conv); 9] = [
        (
            [1, 3, 1, 40],
            [3, 1, 3, 3],
            grouped([1, 1], [1; 4], [1, 1], 3),
        ),
        (
            [2, 5, 7, 7],
            [5, 1, 3, 3],
            grouped([1, 1], [1; 4], [1, 1], 5),
        ),
        (
            [1, 4, 14, 14],
            [4, 1, 3, 3],
            grouped([1, 1], [1; 4], [1, 1], 4),
        ),
        (
            [1, 3, 9, 11],
            [6, 1, 5, 5],
            grouped([1, 1], [2; 4], [1, 1], 3),
        ),
        (
            [1, 2, 10, 13],
            [2, 1, 3, 3],
            grouped([1, 1], [2; 4], [2, 2], 2),
        ),
        (
            [1, 2, 9, 10],
            [2, 1, 3, 3],
            grouped([1, 1], [2, 0, 0, 2], [1, 1], 2),
        ),
        (
            [1, 2, 56, 56],
            [2, 1, 3, 3],
            grouped([1, 1], [1; 4], [1, 1], 2),
        ),
        (
            [1, 3, 30, 30],
            [3, 1, 3, 3],
            grouped([1, 1], [1; 4], [1, 1], 3),
        ),
        (
            [1, 2, 5, 16],
            [2, 1, 3, 3],
            grouped([1, 1], [1; 4], [1, 1], 2),
        ),
    ];
    conv_cases("depthwise_flat_maps", &cases, false);
}

/// Outputs streamed with non-temporal stores (`simd::Store::Stream`: here ops that touch at
/// least 40 MiB, whatever this machine's cache): the binary ops by a per-channel scalar, a
/// scalar, the same shape and a row, and BatchNormalization, each just over that in FP32 (FP16
/// outputs are never streamed), with runs of 1001 elements whose starts fall on every 4-byte
/// offset of a cache line (head, streamed lines and blocks, tail).
#[test]
fn streamed_outputs() {
    let mut rng = common::rng("streamed_outputs");
    let backend = eia::CpuBackend::new().streaming_from(40 << 20);
    let big: &[usize] = &[5, 1050, 1001];
    let dtype = eia::DType::F32;
    for other in [&[5, 1, 1][..], &[], big, &[1001]] {
        common::suite_binary::binary_ops_case(&backend, &mut rng, dtype, big, other);
    }
    common::suite_binary::binary_ops_case(&backend, &mut rng, dtype, &[1], big);
    common::suite::batch_norm_case(&backend, &mut rng, dtype, &[1, 5, 1050, 1001], 1e-5);
}

/// `run_program` on the CPU lends the storages of a program's scratch entries among them for the
/// call (`src/backend/cpu/reuse.rs`): a step that fails after a storage was lent leaves every
/// entry with its own storage at its own length, and the next program computes what its ops do.
#[test]
fn a_failed_program_gives_every_storage_back() {
    use eia::backend::{Backend, Step};
    use eia::{DType, HostTensor, Tensor, TensorDesc};
    let cpu = eia::CpuBackend::new();
    // 0: the input; 1, 3: intermediates; 2: too small for the step that writes it; 4: read.
    let lens = [64, 64, 32, 64, 64];
    let mut table: Vec<Option<Tensor<eia::backend::cpu::CpuData>>> = lens
        .iter()
        .map(|&n| {
            Some(
                cpu.alloc(&TensorDesc::new(DType::F32, &[n]).unwrap())
                    .unwrap(),
            )
        })
        .collect();
    let storage = |t: &Option<Tensor<eia::backend::cpu::CpuData>>| {
        let t = t.as_ref().unwrap();
        let eia::HostData::F32(v) = t.storage().data() else {
            unreachable!()
        };
        (v.as_ptr(), v.len(), t.desc().len())
    };
    let before: Vec<_> = table.iter().map(storage).collect();
    let x: Vec<f32> = (0..64).map(|i| i as f32 - 31.5).collect();
    let input = HostTensor::new(&[64], x.clone()).unwrap();
    let relu = |i: usize, o: usize| Step {
        op: eia::ops::Op::Relu,
        inputs: vec![i],
        output: o,
    };
    // Step 1 writes entry 3 into the input's storage (released by step 0); step 2 fails.
    let failing = [relu(0, 1), relu(1, 3), relu(1, 2)];
    let err = cpu.run_program(&mut table, &[(0, &input)], &failing, &[], None);
    assert!(err.is_err(), "a 64-element Relu into 32 elements ran");
    let after: Vec<_> = table.iter().map(storage).collect();
    assert_eq!(
        before, after,
        "(pointer, length, descriptor's length) per entry"
    );
    let steps = [relu(0, 1), relu(1, 3), relu(3, 4)];
    let out = cpu
        .run_program(&mut table, &[(0, &input)], &steps, &[4], None)
        .unwrap();
    let want: Vec<f32> = x.iter().map(|v| v.max(0.0)).collect();
    assert_eq!(out[0].data().to_f32_vec(), want);
    let after: Vec<_> = table.iter().map(storage).collect();
    assert_eq!(before, after);
}

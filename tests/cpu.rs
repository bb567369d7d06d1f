//! The op conformance suite on the CPU backend (rayon's global pool), and on a one-thread pool
//! so that the sequential paths are covered too.

mod common;

backend_suite!(eia::CpuBackend::new());

mod single_thread {
    use super::common;
    use crate::backend_suite;
    backend_suite!(eia::CpuBackend::with_threads(1).unwrap());
}

/// Shapes for the direct convolution of the AVX-512 path (`src/backend/cpu/direct.rs`; on the
/// narrower instruction sets they run the GEMM lowering; `tests/weight_cache.rs` covers its
/// cached packed weights): images framed in groups of one (each image's frame is over half the
/// 8 MiB a group holds), output channels that fill no register
/// tile (1, 7, 13), output maps of many row blocks and single rows, channels in several
/// chunks, and strides and dilations that split the input into phases of unequal widths;
/// every other case with a fused Clip, two in three with a residual sum.
#[test]
fn direct_conv_edges() {
    use common::suite::conv_case;
    use eia::ops::Conv;
    use eia::DType;
    let cpu = eia::CpuBackend::new();
    let mut rng = common::rng("direct_conv_edges");
    let conv = |strides, pads, dilations| Conv {
        strides,
        pads,
        dilations,
        ..Conv::default()
    };
    let cases: [([usize; 4], [usize; 4], Conv); 6] = [
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
    ];
    for dtype in DType::ALL {
        for (i, (x, w, op)) in cases.iter().enumerate() {
            // Every other case with a fused Clip, in each of its bound variants; two in three
            // with a residual sum.
            let clip = (i % 2 == 1).then_some(i / 2);
            conv_case(&cpu, &mut rng, dtype, *x, *w, op, true, i % 3 != 0, clip);
        }
    }
}

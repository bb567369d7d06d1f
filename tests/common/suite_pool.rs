//! The pooling suite (MaxPool, AveragePool, GlobalMaxPool, GlobalAveragePool) and its float64
//! references, written from the ONNX definitions (and onnxruntime's rules for ceil_mode and
//! count_include_pad) independently of `eia::ops::pool`.

use eia::ops::{AutoPad, AveragePool, MaxPool, Op};
use eia::{Backend, DType, Error, HostTensor};

use super::{assert_close, f64s, poisoned, random, rng};

/// One 2-D pooling problem, in ONNX attributes.
#[derive(Clone, Debug)]
struct Case {
    shape: [usize; 4],
    kernel: [usize; 2],
    strides: [usize; 2],
    pads: [usize; 4],
    dilations: [usize; 2],
    ceil_mode: bool,
    auto_pad: AutoPad,
}

fn case(shape: [usize; 4], kernel: [usize; 2], strides: [usize; 2], pads: [usize; 4]) -> Case {
    Case {
        shape,
        kernel,
        strides,
        pads,
        dilations: [1, 1],
        ceil_mode: false,
        auto_pad: AutoPad::NotSet,
    }
}

/// What a window reduces to, for the reference.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Kind {
    Max,
    Average { count_include_pad: bool },
}

/// The resolved `[begin, end]` padding of one axis and its output size (ONNX formulas; with
/// ceil_mode, onnxruntime drops a last window that would start in the trailing padding).
fn axis(c: &Case, a: usize) -> (usize, usize, usize) {
    let (input, k, s, d) = (c.shape[2 + a], c.kernel[a], c.strides[a], c.dilations[a]);
    let extent = (k - 1) * d + 1;
    let (b, e) = match c.auto_pad {
        AutoPad::NotSet => (c.pads[a], c.pads[a + 2]),
        AutoPad::Valid => (0, 0),
        AutoPad::SameUpper | AutoPad::SameLower => {
            let out = input.div_ceil(s);
            let total = ((out - 1) * s + extent).saturating_sub(input);
            if c.auto_pad == AutoPad::SameUpper {
                (total / 2, total - total / 2)
            } else {
                (total - total / 2, total / 2)
            }
        }
    };
    let span = (input + b + e - extent) as f64 / s as f64;
    let mut out = if c.ceil_mode {
        span.ceil() as usize + 1
    } else {
        span.floor() as usize + 1
    };
    if c.ceil_mode && (out - 1) * s >= input + b {
        out -= 1;
    }
    (b, e, out)
}

/// The float64 pool of `x` and the output shape.
fn reference(x: &[f64], c: &Case, kind: Kind) -> (Vec<f64>, Vec<usize>) {
    let [n, ch, h, w] = c.shape;
    let (pt, pb, p) = axis(c, 0);
    let (pl, pr, q) = axis(c, 1);
    let mut y = Vec::with_capacity(n * ch * p * q);
    for plane in 0..n * ch {
        let xp = &x[plane * h * w..(plane + 1) * h * w];
        for op in 0..p {
            for oq in 0..q {
                let (mut max, mut sum, mut count, mut positions) =
                    (f64::NEG_INFINITY, 0.0, 0usize, 0usize);
                for i in 0..c.kernel[0] {
                    for j in 0..c.kernel[1] {
                        // Position in the padded input.
                        let ph = op * c.strides[0] + i * c.dilations[0];
                        let pw = oq * c.strides[1] + j * c.dilations[1];
                        if ph < pt + h + pb && pw < pl + w + pr {
                            positions += 1;
                        }
                        if ph < pt || ph >= pt + h || pw < pl || pw >= pl + w {
                            continue;
                        }
                        let v = xp[(ph - pt) * w + (pw - pl)];
                        max = max.max(v);
                        sum += v;
                        count += 1;
                    }
                }
                y.push(match kind {
                    Kind::Max => max,
                    Kind::Average {
                        count_include_pad: false,
                    } => sum / count as f64,
                    Kind::Average {
                        count_include_pad: true,
                    } => sum / positions as f64,
                });
            }
        }
    }
    (y, vec![n, ch, p, q])
}

/// The float64 global pool of `x` (`[N, C, spatial...]`) and the output shape.
fn reference_global(x: &[f64], shape: &[usize], max: bool) -> (Vec<f64>, Vec<usize>) {
    let len: usize = shape[2..].iter().product();
    let y = x
        .chunks(len)
        .map(|p| {
            if max {
                p.iter().copied().fold(f64::NEG_INFINITY, f64::max)
            } else {
                p.iter().sum::<f64>() / len as f64
            }
        })
        .collect();
    let mut out = shape.to_vec();
    out[2..].fill(1);
    (y, out)
}

fn up<B: Backend>(b: &B, t: &HostTensor) -> eia::Tensor<B::Storage> {
    b.upload(t).unwrap()
}

/// Runs `op` on `x` into a poisoned output and checks it against `want`.
fn check<B: Backend>(
    backend: &B,
    what: &str,
    op: &Op,
    x: &HostTensor,
    want: &[f64],
    shape: &[usize],
) {
    let mut y = poisoned(backend, x.dtype(), shape);
    backend
        .apply_into(op, &[&up(backend, x)], &mut y)
        .unwrap_or_else(|e| panic!("{what}: {e}"));
    assert_close(what, &backend.download(&y).unwrap(), want, shape);
}

fn cases() -> Vec<Case> {
    let mut v = vec![
        case([2, 3, 7, 9], [3, 3], [1, 1], [0; 4]),
        // 1x1 kernel, and a whole-image kernel.
        case([1, 2, 5, 5], [1, 1], [1, 1], [0; 4]),
        case([2, 3, 6, 7], [6, 7], [1, 1], [0; 4]),
        case([1, 1, 1, 1], [1, 1], [1, 1], [0; 4]),
        // Strides larger than the kernel, and unequal ones.
        case([1, 3, 9, 11], [2, 2], [3, 3], [0; 4]),
        case([2, 2, 10, 7], [2, 3], [4, 1], [1, 0, 0, 2]),
        // Pads larger than half the kernel (but smaller than it), asymmetric.
        case([2, 2, 7, 8], [3, 3], [2, 2], [2, 1, 2, 2]),
        case([1, 2, 4, 4], [4, 4], [1, 1], [3, 3, 3, 3]),
        // The ResNet-50 stem, small, and one large enough to split across threads.
        case([2, 8, 17, 17], [3, 3], [2, 2], [1; 4]),
        case([2, 16, 40, 41], [3, 3], [2, 2], [1; 4]),
        // A wide row (vectorised path) with a unit column stride.
        case([1, 2, 3, 300], [2, 5], [2, 1], [1, 2, 0, 1]),
        // Inception's 35x35 blocks (unit strides: whole LANES blocks and a ragged last one).
        case([1, 3, 35, 35], [3, 3], [1, 1], [1; 4]),
        // Planes taller than the CPU kernel's group of rows (several groups, the last short),
        // with a unit and a stride-2 column stride.
        case([1, 2, 31, 200], [3, 3], [1, 1], [1; 4]),
        case([1, 2, 41, 150], [3, 3], [2, 2], [1; 4]),
        // Row widths around the CPU kernels' 16 lanes: w = 1, odd widths below 16, widths
        // that are not a multiple of 16 (ragged last blocks of 16 and of 32 input columns),
        // pads on one side only, and a kernel 17 wide (its last tap 16 lanes on).
        case([1, 2, 6, 1], [3, 1], [1, 1], [1, 0, 1, 0]),
        case([1, 3, 5, 13], [3, 3], [2, 2], [0, 1, 0, 0]),
        case([2, 2, 7, 15], [3, 3], [1, 1], [0, 0, 1, 1]),
        // The AVX-512 kernel's sliding window of 3 rows (row stride 1): widths 1, 2, 3, 15,
        // 16, 17 and 33, odd and even heights, pads above half the kernel, 2 and 5 column
        // taps, a window of one row.
        case([1, 2, 4, 1], [3, 3], [1, 1], [2, 2, 2, 2]),
        case([1, 2, 5, 2], [3, 3], [1, 1], [2, 1, 0, 2]),
        case([2, 1, 6, 3], [3, 2], [1, 1], [0, 1, 2, 0]),
        case([1, 1, 3, 15], [3, 3], [1, 1], [2; 4]),
        case([1, 2, 7, 16], [3, 3], [1, 1], [2, 2, 2, 2]),
        case([1, 2, 8, 17], [3, 5], [1, 1], [1, 2, 2, 4]),
        case([1, 2, 9, 33], [3, 3], [1, 1], [0, 2, 1, 0]),
        case([1, 2, 1, 20], [3, 3], [1, 1], [1; 4]),
        case([1, 2, 9, 37], [3, 3], [1, 2], [1, 0, 0, 2]),
        case([1, 2, 6, 50], [2, 2], [2, 2], [0; 4]),
        case([1, 2, 5, 65], [3, 3], [2, 2], [0, 2, 0, 0]),
        case([1, 1, 3, 40], [2, 17], [1, 1], [0, 8, 0, 8]),
        // Unit strides with an output plane of the input's size (the AVX-512 flat kernel: the
        // plane as one run of vectors): several planes with a 1-lane tail, a 5×5 window, pads
        // on one side of each axis, a 2×2 window, a 1-row window, rows shorter than a vector,
        // the largest plane pooled flat and one row more.
        case([2, 3, 17, 17], [3, 3], [1, 1], [1; 4]),
        case([1, 2, 9, 11], [5, 5], [1, 1], [2; 4]),
        case([1, 2, 7, 9], [3, 3], [1, 1], [0, 2, 2, 0]),
        case([1, 2, 6, 5], [2, 2], [1, 1], [0, 0, 1, 1]),
        case([2, 2, 4, 20], [1, 5], [1, 1], [0, 2, 0, 2]),
        case([1, 2, 5, 3], [3, 3], [1, 1], [1; 4]),
        case([1, 1, 64, 64], [3, 3], [1, 1], [1; 4]),
        case([1, 1, 65, 64], [3, 3], [1, 1], [1; 4]),
        // The stride-2 kernel's fixed three adjacent column taps: output rows 1, 15, 17 and
        // 33 wide (the last block of 16 one lane, whole, and one lane past), a 1-row map,
        // odd heights, one-sided pads.
        case([1, 2, 1, 2], [3, 3], [2, 2], [1; 4]),
        case([1, 2, 3, 29], [3, 3], [2, 2], [1; 4]),
        case([2, 1, 5, 34], [3, 3], [2, 2], [1, 1, 0, 0]),
        case([1, 2, 4, 65], [3, 3], [2, 2], [0, 1, 1, 0]),
    ];
    // ceil_mode: ragged last windows, one dropped because it would start in the padding.
    for (shape, k, s, p) in [
        ([1, 3, 5, 5], [2, 2], [2, 2], [0; 4]),
        ([1, 2, 6, 6], [3, 3], [2, 2], [1, 1, 0, 0]),
        ([1, 2, 7, 7], [2, 2], [3, 3], [1; 4]),
        ([2, 3, 8, 11], [3, 2], [2, 3], [0, 1, 2, 1]),
    ] {
        v.push(Case {
            ceil_mode: true,
            ..case(shape, k, s, p)
        });
    }
    // Every auto_pad (explicit pads are ignored with them), with and without ceil_mode.
    for (i, auto_pad) in [AutoPad::SameUpper, AutoPad::SameLower, AutoPad::Valid]
        .into_iter()
        .enumerate()
    {
        for (shape, k, s) in [
            ([1, 2, 7, 8], [3, 3], [2, 2]),
            ([2, 1, 6, 9], [2, 4], [1, 3]),
            ([1, 1, 5, 5], [2, 2], [3, 3]),
        ] {
            v.push(Case {
                auto_pad,
                ceil_mode: i % 2 == 0,
                pads: [7; 4],
                ..case(shape, k, s, [0; 4])
            });
        }
    }
    v
}

/// MaxPool-only cases: dilations (windows never entirely in the padding).
fn dilated_cases() -> Vec<Case> {
    let d = |c: Case, dilations| Case { dilations, ..c };
    vec![
        d(case([1, 3, 9, 10], [3, 3], [1, 1], [2, 1, 1, 2]), [2, 2]),
        d(case([2, 2, 11, 12], [2, 2], [2, 2], [0; 4]), [2, 3]),
        Case {
            ceil_mode: true,
            ..d(case([1, 2, 10, 9], [2, 3], [2, 2], [1, 1, 1, 0]), [3, 2])
        },
        Case {
            auto_pad: AutoPad::SameUpper,
            ..d(case([1, 2, 8, 9], [3, 2], [1, 2], [0; 4]), [2, 2])
        },
        Case {
            auto_pad: AutoPad::SameLower,
            ..d(case([1, 2, 8, 9], [2, 3], [2, 1], [0; 4]), [3, 2])
        },
        // Column dilations with column strides 1 and 2 on rows wider than 16.
        d(case([1, 2, 7, 40], [3, 3], [1, 2], [1, 2, 1, 2]), [2, 3]),
        d(case([1, 2, 6, 35], [2, 4], [1, 1], [0; 4]), [1, 5]),
        // Dilated rows with three adjacent column taps at a column stride of 2.
        d(case([1, 2, 9, 35], [3, 3], [2, 2], [1; 4]), [2, 1]),
        // Dilated taps with an output plane of the input's size (the flat kernel).
        d(case([1, 2, 9, 10], [3, 3], [1, 1], [2, 0, 2, 2]), [2, 1]),
        // The sliding window of 3 rows with dilated columns.
        d(case([1, 2, 6, 20], [3, 3], [1, 1], [1, 2, 1, 2]), [1, 2]),
    ]
}

/// MaxPool over edge shapes, every padding mode, ceil_mode and dilations.
pub fn max_pool_matches_reference<B: Backend>(backend: &B) {
    let mut rng = rng("max_pool_matches_reference");
    for dtype in DType::ALL {
        for c in cases().into_iter().chain(dilated_cases()) {
            let x = random(&mut rng, dtype, &c.shape, -1.0, 1.0);
            let (want, shape) = reference(&f64s(&x), &c, Kind::Max);
            let op = Op::MaxPool(MaxPool {
                kernel_shape: c.kernel,
                strides: c.strides,
                pads: c.pads,
                dilations: c.dilations,
                ceil_mode: c.ceil_mode,
                auto_pad: c.auto_pad,
                storage_order: 0,
            });
            check(
                backend,
                &format!("{dtype} MaxPool {c:?}"),
                &op,
                &x,
                &want,
                &shape,
            );
        }
    }
}

/// A NaN input never wins a MaxPool: a window's maximum is that of its other elements, and a
/// window of NaNs (and padding) only gives `-inf`, the reference's fold from `-inf`.
pub fn max_pool_nan_never_wins<B: Backend>(backend: &B) {
    let mut rng = rng("max_pool_nan_never_wins");
    for dtype in DType::ALL {
        for c in [
            case([1, 3, 9, 37], [3, 3], [1, 1], [1; 4]),
            case([1, 3, 10, 45], [3, 3], [2, 2], [1; 4]),
            case([1, 2, 7, 29], [3, 3], [2, 2], [0, 1, 1, 0]),
            case([2, 2, 7, 7], [2, 2], [1, 1], [0; 4]),
        ] {
            let mut values = random(&mut rng, DType::F32, &c.shape, -1.0, 1.0)
                .data()
                .to_f32_vec();
            // Half the elements NaN, in runs long enough to fill some windows.
            for (i, v) in values.iter_mut().enumerate() {
                if (i / 3 + i / 17) % 2 == 0 {
                    *v = f32::NAN;
                }
            }
            let x = HostTensor::from_f32(dtype, &c.shape, &values).unwrap();
            let (want, shape) = reference(&f64s(&x), &c, Kind::Max);
            assert!(want.contains(&f64::NEG_INFINITY));
            let op = Op::MaxPool(MaxPool {
                kernel_shape: c.kernel,
                strides: c.strides,
                pads: c.pads,
                ..MaxPool::default()
            });
            check(backend, &format!("{dtype} {c:?}"), &op, &x, &want, &shape);
        }
        // GlobalMaxPool likewise: planes with a tail (fewer than sixteen, and twenty), of whole
        // vectors, of several vectors; the first plane all NaN (its maximum `-inf`).
        for shape in [
            &[2, 3, 7, 7][..],
            &[2, 10, 7, 7],
            &[1, 3, 16],
            &[1, 2, 70, 70],
        ] {
            let plane: usize = shape[2..].iter().product();
            let mut values = random(&mut rng, DType::F32, shape, -1.0, 1.0)
                .data()
                .to_f32_vec();
            for (i, v) in values.iter_mut().enumerate() {
                if i < plane || (i / 3 + i / 17) % 2 == 0 {
                    *v = f32::NAN;
                }
            }
            let x = HostTensor::from_f32(dtype, shape, &values).unwrap();
            let (want, out) = reference_global(&f64s(&x), shape, true);
            assert_eq!(want[0], f64::NEG_INFINITY);
            let what = format!("{dtype} GlobalMaxPool {shape:?}");
            check(backend, &what, &Op::GlobalMaxPool, &x, &want, &out);
        }
    }
}

/// AveragePool over the same cases, counting the padding and not.
pub fn average_pool_matches_reference<B: Backend>(backend: &B) {
    let mut rng = rng("average_pool_matches_reference");
    for dtype in DType::ALL {
        for c in cases() {
            for count_include_pad in [false, true] {
                let x = random(&mut rng, dtype, &c.shape, -1.0, 1.0);
                let (want, shape) = reference(&f64s(&x), &c, Kind::Average { count_include_pad });
                let op = Op::AveragePool(AveragePool {
                    kernel_shape: c.kernel,
                    strides: c.strides,
                    pads: c.pads,
                    ceil_mode: c.ceil_mode,
                    count_include_pad,
                    auto_pad: c.auto_pad,
                });
                let what =
                    format!("{dtype} AveragePool count_include_pad={count_include_pad} {c:?}");
                check(backend, &what, &op, &x, &want, &shape);
            }
        }
    }
}

/// A known answer (onnxruntime 1.32's output): AveragePool 3x3 s2 on ones [1,1,5,5] with
/// pads [1,1,0,0], ceil_mode and count_include_pad: the ceil_mode positions beyond the
/// trailing edge do not count, the leading padding does.
pub fn average_pool_count_include_pad_known_answer<B: Backend>(backend: &B) {
    for dtype in DType::ALL {
        let x = HostTensor::full(dtype, &[1, 1, 5, 5], 1.0).unwrap();
        let op = Op::AveragePool(AveragePool {
            kernel_shape: [3, 3],
            strides: [2, 2],
            pads: [1, 1, 0, 0],
            ceil_mode: true,
            count_include_pad: true,
            auto_pad: AutoPad::NotSet,
        });
        let (a, b) = (4.0 / 9.0, 2.0 / 3.0);
        let want = [a, b, b, b, 1.0, 1.0, b, 1.0, 1.0];
        check(backend, &format!("{dtype}"), &op, &x, &want, &[1, 1, 3, 3]);
    }
}

/// GlobalMaxPool and GlobalAveragePool over ranks 3 to 5, 1-sized and long planes.
pub fn global_pools_match_reference<B: Backend>(backend: &B) {
    let mut rng = rng("global_pools_match_reference");
    for dtype in DType::ALL {
        for shape in [
            &[2, 3, 5, 7][..],
            &[1, 4, 1, 1],
            &[2, 3, 1000],
            &[1, 2, 3, 4, 5],
            &[3, 5, 33, 33],
            &[1, 1, 1],
            &[2, 64, 7, 7],
            // FP16 planes are widened a group at a time: several groups, the last short,
            // and planes larger than a group.
            &[2, 100, 7, 7],
            &[1, 3, 70, 70],
            // Planes of whole vectors only (no tail): one vector, and four at once.
            &[1, 17, 16],
            &[2, 3, 8, 8],
            // Sixteen planes and more of one to four vectors with a tail (AVX-512 reduces
            // sixteen such planes at a time), and a few planes left over.
            &[1, 33, 4],
            &[1, 20, 5, 5],
            &[2, 9, 6, 7],
        ] {
            for max in [false, true] {
                let x = random(&mut rng, dtype, shape, -1.0, 1.0);
                let (want, out) = reference_global(&f64s(&x), shape, max);
                let op = if max {
                    Op::GlobalMaxPool
                } else {
                    Op::GlobalAveragePool
                };
                check(
                    backend,
                    &format!("{dtype} {op:?} {shape:?}"),
                    &op,
                    &x,
                    &want,
                    &out,
                );
            }
        }
    }
}

/// Empty batches and channels give empty outputs.
pub fn pool_empty_tensors<B: Backend>(backend: &B) {
    let max = Op::MaxPool(MaxPool {
        kernel_shape: [2, 2],
        ..MaxPool::default()
    });
    for dtype in DType::ALL {
        for (op, shape, out) in [
            (&max, &[0, 3, 4, 4][..], &[0, 3, 3, 3][..]),
            (&max, &[2, 0, 4, 4], &[2, 0, 3, 3]),
            (&Op::GlobalAveragePool, &[0, 3, 4, 4], &[0, 3, 1, 1]),
            (&Op::GlobalMaxPool, &[2, 0, 5], &[2, 0, 1]),
        ] {
            let x = HostTensor::full(dtype, shape, 1.0).unwrap();
            let y = backend.apply(op, &[&up(backend, &x)]).unwrap();
            assert_eq!(y.shape(), out, "{op:?} {shape:?}");
        }
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

/// Every pooling validation error is typed, names the op and leaves the output untouched.
pub fn errors_pool<B: Backend>(backend: &B) {
    let f = |shape: &[usize]| up(backend, &HostTensor::full(DType::F32, shape, 1.0).unwrap());
    let max = |k: usize| MaxPool {
        kernel_shape: [k, k],
        ..MaxPool::default()
    };
    let avg = |k: usize| AveragePool {
        kernel_shape: [k, k],
        ..AveragePool::default()
    };
    let attr = |name: &'static str| move |e: &Error| matches!(e, Error::Attribute { name: n, .. } if *n == name);
    let shape =
        |op: &'static str| move |e: &Error| matches!(e, Error::Shape { op: o, .. } if *o == op);
    let x = f(&[2, 3, 5, 5]);
    type Check = Box<dyn Fn(&Error) -> bool>;
    let cases: Vec<(&str, Op, Check)> = vec![
        (
            "no kernel_shape",
            Op::MaxPool(MaxPool::default()),
            Box::new(attr("kernel_shape")),
        ),
        (
            "no kernel_shape",
            Op::AveragePool(AveragePool::default()),
            Box::new(attr("kernel_shape")),
        ),
        (
            "zero kernel",
            Op::MaxPool(MaxPool {
                kernel_shape: [2, 0],
                ..max(2)
            }),
            Box::new(attr("kernel_shape")),
        ),
        (
            "zero stride",
            Op::MaxPool(MaxPool {
                strides: [1, 0],
                ..max(2)
            }),
            Box::new(attr("strides")),
        ),
        (
            "zero stride",
            Op::AveragePool(AveragePool {
                strides: [0, 1],
                ..avg(2)
            }),
            Box::new(attr("strides")),
        ),
        (
            "zero dilation",
            Op::MaxPool(MaxPool {
                dilations: [0, 1],
                ..max(2)
            }),
            Box::new(attr("dilations")),
        ),
        (
            "pad = kernel",
            Op::MaxPool(MaxPool {
                pads: [0, 2, 0, 0],
                ..max(2)
            }),
            Box::new(attr("pads")),
        ),
        (
            "pad > kernel",
            Op::AveragePool(AveragePool {
                pads: [0, 0, 0, 5],
                ..avg(3)
            }),
            Box::new(attr("pads")),
        ),
        (
            "storage_order",
            Op::MaxPool(MaxPool {
                storage_order: 1,
                ..max(2)
            }),
            Box::new(attr("storage_order")),
        ),
        (
            "kernel > input",
            Op::MaxPool(max(6)),
            Box::new(shape("MaxPool")),
        ),
        (
            "kernel > padded input",
            Op::AveragePool(AveragePool {
                pads: [1, 0, 1, 0],
                ..avg(8)
            }),
            Box::new(shape("AveragePool")),
        ),
        (
            "dilated kernel > input",
            Op::MaxPool(MaxPool {
                dilations: [3, 1],
                ..max(3)
            }),
            Box::new(shape("MaxPool")),
        ),
        (
            "huge dilation",
            Op::MaxPool(MaxPool {
                dilations: [usize::MAX / 2, 1],
                ..max(3)
            }),
            Box::new(attr("dilations")),
        ),
    ];
    for (what, op, check) in cases {
        let mut y = poisoned(backend, DType::F32, &[2, 3, 4, 4]);
        expect_err(what, backend.apply_into(&op, &[&x], &mut y), check);
        let v = backend.download(&y).unwrap().data().to_f32_vec();
        assert!(
            v.iter().all(|v| v.is_nan()),
            "{what}: output changed by a failed call"
        );
    }
    // Ranks: 2-D pools need [N, C, H, W]; global ones rank >= 3; empty spatial axes.
    for (op, s) in [
        (Op::MaxPool(max(1)), &[2, 3, 5][..]),
        (Op::AveragePool(avg(1)), &[1, 2, 3, 4, 5]),
        (Op::MaxPool(max(1)), &[1, 2, 0, 4]),
        (Op::GlobalAveragePool, &[2, 3]),
        (Op::GlobalMaxPool, &[4]),
        (Op::GlobalMaxPool, &[2, 3, 4, 0]),
    ] {
        let name = op.name();
        expect_err(
            &format!("{name} {s:?}"),
            backend.apply(&op, &[&f(s)]).map(|_| ()),
            shape(name),
        );
    }
    // Arity, the output's shape and dtype.
    expect_err(
        "two inputs",
        backend.apply(&Op::GlobalMaxPool, &[&x, &x]).map(|_| ()),
        |e| {
            matches!(
                e,
                Error::Arity {
                    op: "GlobalMaxPool",
                    ..
                }
            )
        },
    );
    for (dtype, s) in [(DType::F32, &[2, 3, 5, 5][..]), (DType::F16, &[2, 3, 1, 1])] {
        let mut y = poisoned(backend, dtype, s);
        expect_err(
            "wrong output",
            backend.apply_into(&Op::GlobalAveragePool, &[&x], &mut y),
            |e| matches!(e, Error::Output { .. }),
        );
        let v = backend.download(&y).unwrap().data().to_f32_vec();
        assert!(
            v.iter().all(|v| v.is_nan()),
            "output changed by a failed call"
        );
    }
}

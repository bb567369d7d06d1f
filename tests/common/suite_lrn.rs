//! The LRN suite and its float64 reference, written from the ONNX definition independently of
//! `eia::ops::lrn`.

use eia::ops::{Lrn, Op};
use eia::{Backend, DType, Error, HostTensor};
use rand::rngs::StdRng;

use super::{assert_close, f64s, poisoned, random, rng};

/// The float64 LRN of `x` (`[N, C, spatial...]`): the window of channel `c` is
/// `[max(0, c − ⌊(size−1)/2⌋), min(C−1, c + ⌈(size−1)/2⌉)]`.
fn reference(x: &[f64], shape: &[usize], op: &Lrn) -> Vec<f64> {
    let (n, c) = (shape[0], shape[1]);
    let inner: usize = shape[2..].iter().product();
    let below = (op.size - 1) / 2;
    let above = (op.size - 1).div_ceil(2);
    let mut y = vec![f64::NAN; x.len()];
    for b in 0..n {
        for ch in 0..c {
            for i in 0..inner {
                let at = |k: usize| (b * c + k) * inner + i;
                let first = ch.saturating_sub(below);
                let last = (ch + above).min(c - 1);
                let sum: f64 = (first..=last).map(|k| x[at(k)] * x[at(k)]).sum();
                let base = op.bias as f64 + op.alpha as f64 / op.size as f64 * sum;
                y[at(ch)] = x[at(ch)] / base.powf(op.beta as f64);
            }
        }
    }
    y
}

fn lrn(size: usize, alpha: f32, beta: f32, bias: f32) -> Lrn {
    Lrn {
        size,
        alpha,
        beta,
        bias,
    }
}

/// Runs `op` on `x` into a poisoned output and checks it against the reference.
fn check<B: Backend>(backend: &B, x: &HostTensor, op: Lrn) {
    let (dtype, shape) = (x.dtype(), x.shape().to_vec());
    let want = reference(&f64s(x), &shape, &op);
    let mut y = poisoned(backend, dtype, &shape);
    backend
        .apply_into(&Op::Lrn(op), &[&backend.upload(x).unwrap()], &mut y)
        .unwrap();
    let what = format!("{dtype} LRN {shape:?} {op:?}");
    assert_close(&what, &backend.download(&y).unwrap(), &want, &shape);
}

/// LRN over ranks 3 to 5; one channel; windows of size 1, even sizes, sizes wider than the
/// channels; ONNX's defaults and attributes that make the denominator matter (large alpha, small
/// bias, negative and zero beta); spatial extents and channel counts beyond the backends'
/// column and channel blocks.
pub fn lrn_matches_reference<B: Backend>(backend: &B) {
    let mut rng = rng("lrn_matches_reference");
    let strong = |size| lrn(size, 0.9, 0.75, 1.5);
    for dtype in DType::ALL {
        for (shape, op) in [
            (
                &[2, 5, 3, 4][..],
                Lrn {
                    size: 5,
                    ..Lrn::default()
                },
            ),
            (&[2, 5, 3, 4], strong(3)),
            (&[2, 6, 2, 3], strong(2)),
            (&[1, 7, 3, 3], strong(4)),
            (&[1, 3, 7, 7], strong(7)),
            (&[2, 4, 2, 2], strong(12)),
            (&[1, 1, 2, 3], strong(1)),
            (&[2, 1, 5], strong(3)),
            (&[2, 1, 3, 3], strong(4)),
            (&[3, 6, 2, 2], strong(1)),
            (&[3, 8, 11], strong(5)),
            (&[1, 4, 2, 3, 5], lrn(3, 2.0, 0.3, 0.5)),
            (&[2, 5, 1, 2, 3], lrn(6, 1.0, -0.5, 0.25)),
            (&[1, 6, 1, 1], lrn(11, 1.0, 2.0, 1.0)),
            (&[1, 5, 4], lrn(3, 0.0, 0.75, 2.0)),
            (&[1, 9, 3], lrn(3, 1.0, 0.0, 1.0)),
            (&[1, 37, 30, 40], strong(5)),
            (&[1, 40, 3, 3], strong(19)),
        ] {
            let x = random(&mut rng, dtype, shape, -2.0, 2.0);
            check(backend, &x, op);
        }
    }
}

/// Values of magnitude 0.5 to 1.5 times `scale(channel)`, a third of them negative.
fn channel_scaled(
    rng: &mut StdRng,
    dtype: DType,
    shape: &[usize],
    scale: impl Fn(usize) -> f32,
) -> HostTensor {
    let (c, plane) = (shape[1], shape[2..].iter().product::<usize>());
    let x = random(rng, dtype, shape, 0.5, 1.5);
    let values: Vec<f32> = x
        .data()
        .to_f32_vec()
        .iter()
        .enumerate()
        .map(|(i, &v)| {
            let sign = if i % 3 == 0 { -1.0 } else { 1.0 };
            sign * v * scale(i / plane % c)
        })
        .collect();
    HostTensor::from_f32(dtype, shape, &values).unwrap()
}

/// Channels of very different magnitudes (a large one among small ones) with a small bias: the
/// square sum must drop a large square without losing the small ones it leaves behind (a
/// window slid in f32 fails this).
pub fn lrn_mixed_magnitudes<B: Backend>(backend: &B) {
    let mut rng = rng("lrn_mixed_magnitudes");
    for dtype in DType::ALL {
        let x = channel_scaled(&mut rng, dtype, &[2, 12, 5, 7], |ch| {
            if ch % 6 == 1 {
                300.0
            } else {
                0.01
            }
        });
        for size in [2, 3, 5] {
            check(backend, &x, lrn(size, 1.0, 0.75, 1e-3));
        }
    }
}

/// Channels about 1e15 (3e4 in FP16, squares beyond 2^50 times the others') among channels of
/// small values, with a bias too small to hide them: the windows after a huge channel must still
/// see their small squares (a sum that adds the huge square and later drops it has lost them).
pub fn lrn_far_magnitudes<B: Backend>(backend: &B) {
    let mut rng = rng("lrn_far_magnitudes");
    for dtype in DType::ALL {
        let (huge, small) = match dtype {
            DType::F32 => (1e15, 1.0),
            DType::F16 => (3e4, 1e-3),
        };
        let x = channel_scaled(&mut rng, dtype, &[2, 20, 3, 37], |ch| {
            if ch == 2 || ch == 13 {
                huge
            } else {
                small
            }
        });
        for size in [3, 5] {
            check(backend, &x, lrn(size, 1.0, 0.75, 1e-3 * small * small));
        }
    }
}

/// Bases at both ends of the f32 range: a subnormal bias under windows of zeros (whole spatial
/// columns, so that vectors mix them with ordinary bases; a reciprocal square root estimate of a
/// subnormal is not refinable) and, in FP32, a second image whose squares reach 1e30.
pub fn lrn_extreme_bases<B: Backend>(backend: &B) {
    let mut rng = rng("lrn_extreme_bases");
    let shape = [2, 7, 5, 9];
    for dtype in DType::ALL {
        let x = random(&mut rng, dtype, &shape, 0.5, 1.5);
        let values: Vec<f32> = x
            .data()
            .to_f32_vec()
            .iter()
            .enumerate()
            .map(|(i, &v)| match (i % 45 % 3, i / (7 * 45)) {
                (0, _) => 0.0,
                (_, 1) if dtype == DType::F32 => -v * 1e15,
                _ => v,
            })
            .collect();
        let x = HostTensor::from_f32(dtype, &shape, &values).unwrap();
        for size in [1, 3, 4] {
            check(backend, &x, lrn(size, 1.0, 0.75, 1e-39));
        }
    }
}

/// FP32 squares beyond f32's range at both ends: columns of magnitudes near 2e19 (squares near
/// 4e38, past f32::MAX; a small alpha keeps the bases finite) and columns near 1e-24 (squares
/// near 1e-48, below the smallest subnormal; a large alpha makes them most of a base that a bias
/// of 1e-37 keeps normal), beside ordinary columns, so that vectors mix them. A sum of squares
/// taken in f32 loses both kinds.
pub fn lrn_squares_beyond_f32<B: Backend>(backend: &B) {
    let mut rng = rng("lrn_squares_beyond_f32");
    let shape = [2, 9, 5, 7];
    for (scale, alpha, bias) in [(2e19, 1e-30, 1.0), (1e-24, 1e12, 1e-37)] {
        let x = random(&mut rng, DType::F32, &shape, 0.5, 1.5);
        let values: Vec<f32> = x
            .data()
            .to_f32_vec()
            .iter()
            .enumerate()
            .map(|(i, &v)| if i % 35 % 4 == 1 { v } else { -v * scale })
            .collect();
        let x = HostTensor::from_f32(DType::F32, &shape, &values).unwrap();
        for size in [1, 3, 5] {
            check(backend, &x, lrn(size, alpha, 0.75, bias));
        }
    }
}

/// Empty batches, channels and spatial axes give empty outputs.
pub fn lrn_empty_tensors<B: Backend>(backend: &B) {
    for dtype in DType::ALL {
        for shape in [&[0, 3, 4][..], &[2, 0, 5], &[2, 3, 0], &[1, 2, 3, 0, 2]] {
            let x = HostTensor::full(dtype, shape, 1.0).unwrap();
            let op = Op::Lrn(lrn(3, 1e-4, 0.75, 1.0));
            let y = backend.apply(&op, &[&backend.upload(&x).unwrap()]).unwrap();
            assert_eq!((y.shape(), y.dtype()), (shape, dtype), "{shape:?}");
        }
    }
}

fn expect_err<T: std::fmt::Debug>(what: &str, r: eia::Result<T>, check: impl Fn(&Error) -> bool) {
    match r {
        Err(e) => {
            assert!(check(&e), "{what}: unexpected error kind: {e:?}");
            assert!(e.to_string().contains("LRN"), "{what}: {e}");
        }
        Ok(v) => panic!("{what}: expected an error, got {v:?}"),
    }
}

/// Every LRN validation error is typed, names the op and leaves the output untouched.
pub fn errors_lrn<B: Backend>(backend: &B) {
    let up = |dtype, shape: &[usize]| {
        backend
            .upload(&HostTensor::full(dtype, shape, 1.0).unwrap())
            .unwrap()
    };
    let x = up(DType::F32, &[2, 3, 4, 4]);
    let d = lrn(3, 1e-4, 0.75, 1.0);
    for (what, op, name) in [
        ("no size", Lrn::default(), "size"),
        (
            "huge size",
            Lrn {
                size: usize::MAX,
                ..d
            },
            "size",
        ),
        ("negative alpha", Lrn { alpha: -0.5, ..d }, "alpha"),
        (
            "NaN alpha",
            Lrn {
                alpha: f32::NAN,
                ..d
            },
            "alpha",
        ),
        (
            "infinite alpha",
            Lrn {
                alpha: f32::INFINITY,
                ..d
            },
            "alpha",
        ),
        (
            "NaN beta",
            Lrn {
                beta: f32::NAN,
                ..d
            },
            "beta",
        ),
        (
            "infinite beta",
            Lrn {
                beta: f32::INFINITY,
                ..d
            },
            "beta",
        ),
        ("zero bias", Lrn { bias: 0.0, ..d }, "bias"),
        ("negative bias", Lrn { bias: -1.0, ..d }, "bias"),
        (
            "NaN bias",
            Lrn {
                bias: f32::NAN,
                ..d
            },
            "bias",
        ),
    ] {
        let mut y = poisoned(backend, DType::F32, &[2, 3, 4, 4]);
        expect_err(
            what,
            backend.apply_into(&Op::Lrn(op), &[&x], &mut y),
            |e| matches!(e, Error::Attribute { op: "LRN", name: n, .. } if *n == name),
        );
        let v = backend.download(&y).unwrap().data().to_f32_vec();
        assert!(
            v.iter().all(|v| v.is_nan()),
            "{what}: output changed by a failed call"
        );
    }
    // Ranks below 3.
    for shape in [&[2, 3][..], &[4], &[]] {
        expect_err(
            &format!("X {shape:?}"),
            backend
                .apply(&Op::Lrn(d), &[&up(DType::F16, shape)])
                .map(|_| ()),
            |e| matches!(e, Error::Shape { op: "LRN", .. }),
        );
    }
    // Arity, the output's shape and dtype.
    for inputs in [&[][..], &[&x, &x]] {
        expect_err(
            &format!("{} inputs", inputs.len()),
            backend.apply(&Op::Lrn(d), inputs).map(|_| ()),
            |e| matches!(e, Error::Arity { op: "LRN", .. }),
        );
    }
    for (dtype, s) in [(DType::F32, &[2, 3, 4, 5][..]), (DType::F16, &[2, 3, 4, 4])] {
        let mut y = poisoned(backend, dtype, s);
        expect_err(
            "wrong output",
            backend.apply_into(&Op::Lrn(d), &[&x], &mut y),
            |e| matches!(e, Error::Output { .. }),
        );
        let v = backend.download(&y).unwrap().data().to_f32_vec();
        assert!(
            v.iter().all(|v| v.is_nan()),
            "output changed by a failed call"
        );
    }
}

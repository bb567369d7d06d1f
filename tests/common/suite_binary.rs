//! The suite for the binary family: Add (with and without the fused ReLU), Sub, Mul, Div and
//! Sum over every broadcast kind, both dtypes, special values, and their errors; with its
//! float64 references.

use eia::ops::{Add, Op, MAX_INPUTS};
use eia::{Backend, DType, Error, HostTensor};

use super::{assert_close_scaled, f64s, poisoned, random, rng};

fn up<B: Backend>(b: &B, t: &HostTensor) -> eia::Tensor<B::Storage> {
    b.upload(t).unwrap()
}

/// The numpy broadcast of `shapes`, or `None` when they do not broadcast.
pub fn broadcast_shape(shapes: &[&[usize]]) -> Option<Vec<usize>> {
    let rank = shapes.iter().map(|s| s.len()).max().unwrap_or(0);
    let mut out = vec![1usize; rank];
    for s in shapes {
        for (d, &n) in s.iter().enumerate() {
            let o = &mut out[rank - s.len() + d];
            if *o == 1 {
                *o = n;
            } else if n != 1 && n != *o {
                return None;
            }
        }
    }
    Some(out)
}

/// Float64 elementwise reference: `f` folded left to right over the broadcast inputs, and the
/// same fold over absolute values (the error scale for sums whose terms cancel).
pub fn elementwise(
    inputs: &[(&[f64], &[usize])],
    f: impl Fn(f64, f64) -> f64,
) -> (Vec<f64>, Vec<usize>) {
    let shapes: Vec<&[usize]> = inputs.iter().map(|(_, s)| *s).collect();
    let out = broadcast_shape(&shapes).expect("broadcastable");
    let n: usize = out.iter().product();
    let rank = out.len();
    let y = (0..n)
        .map(|i| {
            let mut coords = vec![0usize; rank];
            let mut r = i;
            for d in (0..rank).rev() {
                coords[d] = r % out[d];
                r /= out[d];
            }
            let mut acc: Option<f64> = None;
            for (x, s) in inputs {
                let mut off = 0;
                for (d, &dim) in s.iter().enumerate() {
                    let c = if dim == 1 {
                        0
                    } else {
                        coords[rank - s.len() + d]
                    };
                    off = off * dim + c;
                }
                acc = Some(match acc {
                    None => x[off],
                    Some(a) => f(a, x[off]),
                });
            }
            acc.unwrap()
        })
        .collect();
    (y, out)
}

/// A float64 elementwise function.
type F64Op = fn(f64, f64) -> f64;

/// The binary ops under test, with their float64 functions.
fn ops() -> Vec<(Op, &'static str, F64Op)> {
    vec![
        (Op::Add(Add::default()), "Add", |a, b| a + b),
        (Op::Add(Add { relu: true }), "Add+ReLU", |a, b| {
            (a + b).max(0.0)
        }),
        (Op::Sub, "Sub", |a, b| a - b),
        (Op::Mul, "Mul", |a, b| a * b),
        (Op::Div, "Div", |a, b| a / b),
    ]
}

/// Every broadcast kind: same shape, scalar either side, rank 0, [C,1,1] vs [N,C,H,W], [1,N] vs
/// [M,1], row vectors, leading-dim broadcast, 1-sized dims everywhere, empty dims, odd sizes,
/// ranks up to 7 (collapsed views longer than the CUDA planner's 6 dims).
const SHAPES: &[(&[usize], &[usize])] = &[
    (&[2, 3, 4], &[2, 3, 4]),
    (&[3, 1001], &[3, 1001]),
    (&[3, 5], &[]),
    (&[], &[3, 5]),
    (&[], &[]),
    (&[1], &[]),
    (&[517], &[1]),
    (&[3, 1, 1], &[2, 3, 4, 5]),
    (&[2, 16, 7, 9], &[1, 16, 1, 1]),
    (&[2, 16, 7, 9], &[16, 1, 1]),
    (&[1, 5], &[4, 1]),
    (&[37, 1], &[1, 70]),
    (&[4, 33], &[33]),
    (&[33], &[4, 33]),
    (&[2, 70], &[2, 1]),
    (&[1, 3, 4], &[5, 3, 4]),
    (&[5, 3, 4], &[1, 1, 4]),
    (&[1, 1, 3, 1], &[2, 1, 1, 1]),
    (&[1, 1], &[1, 1, 1]),
    (&[0, 3], &[3]),
    (&[2, 0], &[1]),
    (&[0], &[]),
    (&[2, 1, 3, 1, 2, 3], &[3, 1, 2, 1]),
    (&[2, 1, 2, 1, 2, 1, 3], &[1, 3, 1, 2, 1, 2, 1]),
    (&[3, 40000], &[40000]),
    (&[3, 40000], &[3, 40000]),
];

/// Add (± ReLU), Sub, Mul, Div over every broadcast kind, both dtypes.
pub fn binary_broadcast_kinds<B: Backend>(backend: &B) {
    let mut rng = rng("binary_broadcast_kinds");
    for dtype in DType::ALL {
        for (op, name, f) in ops() {
            for (a_shape, b_shape) in SHAPES {
                binary_case(backend, &mut rng, dtype, (&op, name, f), a_shape, b_shape);
            }
        }
    }
}

/// Add (± ReLU), Sub, Mul, Div of `a_shape` by `b_shape` in `dtype` against the float64
/// reference (fresh random inputs, poisoned output).
pub fn binary_ops_case<B: Backend>(
    backend: &B,
    rng: &mut rand::rngs::StdRng,
    dtype: DType,
    a_shape: &[usize],
    b_shape: &[usize],
) {
    for (op, name, f) in ops() {
        binary_case(backend, rng, dtype, (&op, name, f), a_shape, b_shape);
    }
}

/// One op of `a_shape` by `b_shape` in `dtype` against the float64 reference.
fn binary_case<B: Backend>(
    backend: &B,
    rng: &mut rand::rngs::StdRng,
    dtype: DType,
    (op, name, f): (&Op, &str, F64Op),
    a_shape: &[usize],
    b_shape: &[usize],
) {
    let a = random(rng, dtype, a_shape, -2.0, 2.0);
    // Divisors away from zero, either sign.
    let b = if name == "Div" {
        let v = random(rng, dtype, b_shape, 0.5, 2.0).data().to_f32_vec();
        let signed: Vec<f32> = v
            .iter()
            .enumerate()
            .map(|(i, &x)| if i % 3 == 1 { -x } else { x })
            .collect();
        HostTensor::from_f32(dtype, b_shape, &signed).unwrap()
    } else {
        random(rng, dtype, b_shape, -2.0, 2.0)
    };
    let (af, bf) = (f64s(&a), f64s(&b));
    let (want, shape) = elementwise(&[(&af, a_shape), (&bf, b_shape)], f);
    let abs = |v: &[f64]| v.iter().map(|x| x.abs()).collect::<Vec<_>>();
    let (aa, ba) = (abs(&af), abs(&bf));
    let g = |x: f64, y: f64| {
        if name == "Mul" || name == "Div" {
            f(x, y).abs()
        } else {
            x + y
        }
    };
    let (scale, _) = elementwise(&[(&aa, a_shape), (&ba, b_shape)], g);
    let mut y = poisoned(backend, dtype, &shape);
    backend
        .apply_into(op, &[&up(backend, &a), &up(backend, &b)], &mut y)
        .unwrap();
    let what = format!("{dtype} {name} {a_shape:?} {b_shape:?}");
    let got = backend.download(&y).unwrap();
    assert_close_scaled(&what, &got, &want, &scale, &shape);
    // The allocating form agrees.
    if a_shape.len() == 4 {
        let y2 = backend
            .apply(op, &[&up(backend, &a), &up(backend, &b)])
            .unwrap();
        assert_eq!(y2.shape(), &shape[..], "{what}");
    }
}

/// Sum of 1, 2, 3, 9 and MAX_INPUTS inputs, same shapes and broadcast mixes, both dtypes.
pub fn sum_n_inputs<B: Backend>(backend: &B) {
    let mut rng = rng("sum_n_inputs");
    let cases: &[&[&[usize]]] = &[
        &[&[3, 4]],
        &[&[]],
        &[&[5, 7], &[5, 7]],
        &[&[5, 7], &[7]],
        &[&[2, 3, 4], &[2, 3, 4], &[2, 3, 4]],
        &[&[2, 3, 4], &[3, 1], &[]],
        &[
            &[1, 1],
            &[5, 1],
            &[1, 6],
            &[6],
            &[],
            &[1],
            &[5, 6],
            &[1, 1, 6],
            &[4, 1, 1],
        ],
        &[&[1001usize][..]; 9],
        &[&[2usize, 8, 33][..]; 9],
        &[&[0, 3], &[3], &[1, 3]],
        &[
            &[2, 1, 2, 1, 2, 1, 3],
            &[1, 3, 1, 2, 1, 2, 1],
            &[2, 1, 1, 1, 1, 1, 1],
        ],
    ];
    let max: Vec<&[usize]> = (0..MAX_INPUTS)
        .map(|i| if i % 2 == 0 { &[3, 5][..] } else { &[5][..] })
        .collect();
    for dtype in DType::ALL {
        for shapes in cases.iter().copied().chain([&max[..]]) {
            let xs: Vec<HostTensor> = shapes
                .iter()
                .map(|s| random(&mut rng, dtype, s, -2.0, 2.0))
                .collect();
            let vals: Vec<Vec<f64>> = xs.iter().map(f64s).collect();
            let refs: Vec<(&[f64], &[usize])> =
                vals.iter().zip(shapes).map(|(v, s)| (&v[..], *s)).collect();
            let (want, shape) = elementwise(&refs, |a, b| a + b);
            let abs: Vec<Vec<f64>> = vals
                .iter()
                .map(|v| v.iter().map(|x| x.abs()).collect())
                .collect();
            let arefs: Vec<(&[f64], &[usize])> =
                abs.iter().zip(shapes).map(|(v, s)| (&v[..], *s)).collect();
            let (scale, _) = elementwise(&arefs, |a, b| a + b);
            let ts: Vec<_> = xs.iter().map(|x| up(backend, x)).collect();
            let inputs: Vec<_> = ts.iter().collect();
            let mut y = poisoned(backend, dtype, &shape);
            backend.apply_into(&Op::Sum, &inputs, &mut y).unwrap();
            let what = format!("{dtype} Sum of {} {shapes:?}", shapes.len());
            let got = backend.download(&y).unwrap();
            assert_close_scaled(&what, &got, &want, &scale, &shape);
        }
        // One rounding: in FP16, 2048 + 1 + … + 1 (8 ones) rounded after each add stays 2048;
        // accumulated in FP32 it is 2056 (representable).
        let mut xs = vec![HostTensor::full(dtype, &[5], 2048.0).unwrap()];
        xs.extend((0..8).map(|_| HostTensor::full(dtype, &[1], 1.0).unwrap()));
        let ts: Vec<_> = xs.iter().map(|x| up(backend, x)).collect();
        let inputs: Vec<_> = ts.iter().collect();
        let mut y = poisoned(backend, dtype, &[5]);
        backend.apply_into(&Op::Sum, &inputs, &mut y).unwrap();
        let got = backend.download(&y).unwrap().data().to_f32_vec();
        assert_eq!(got, vec![2056.0; 5], "{dtype}: Sum rounds once");
        // Add's fused ReLU likewise applies before the one rounding.
        let a = HostTensor::from_f32(dtype, &[3], &[2048.0, -1.0, 0.5]).unwrap();
        let b = HostTensor::from_f32(dtype, &[3], &[1.0, 0.25, -1.0]).unwrap();
        let y = backend
            .apply(
                &Op::Add(Add { relu: true }),
                &[&up(backend, &a), &up(backend, &b)],
            )
            .unwrap();
        let got = backend.download(&y).unwrap().data().to_f32_vec();
        let first = if dtype == DType::F16 { 2048.0 } else { 2049.0 };
        assert_eq!(got, vec![first, 0.0, 0.0], "{dtype}: Add + ReLU");
    }
}

/// IEEE special values: x/0 = ±inf, 0/0 = NaN, inf·0 = NaN, inf − inf = NaN; ReLU keeps NaN and
/// maps -inf to 0.
pub fn binary_special_values<B: Backend>(backend: &B) {
    let inf = f32::INFINITY;
    let a = [1.0, -1.0, 0.0, inf, inf, -inf, f32::NAN, -0.0, 3.0];
    let b = [0.0, 0.0, 0.0, 0.0, inf, 2.0, 1.0, 0.0, -0.0];
    for dtype in DType::ALL {
        for (op, name, f) in ops() {
            // Elementwise, then each operand broadcast along the other's rows (the CPU divides
            // an FP16 row by one value as a product with its reciprocal).
            for shapes in [
                (&[9][..], &[9][..]),
                (&[9, 1][..], &[9][..]),
                (&[9][..], &[9, 1][..]),
            ] {
                let ha = HostTensor::from_f32(dtype, &[9], &a).unwrap();
                let hb = HostTensor::from_f32(dtype, &[9], &b).unwrap();
                let ha = HostTensor::from_bytes(dtype, shapes.0, ha.as_bytes()).unwrap();
                let hb = HostTensor::from_bytes(dtype, shapes.1, hb.as_bytes()).unwrap();
                let (af, bf) = (f64s(&ha), f64s(&hb));
                let (want, shape) = elementwise(&[(&af, shapes.0), (&bf, shapes.1)], |x, y| {
                    let v = f(x, y);
                    // max(0, NaN) is NaN in the kernels (f64::max would give 0).
                    if name == "Add+ReLU" && (x + y).is_nan() {
                        f64::NAN
                    } else {
                        v
                    }
                });
                let mut y = poisoned(backend, dtype, &shape);
                backend
                    .apply_into(&op, &[&up(backend, &ha), &up(backend, &hb)], &mut y)
                    .unwrap();
                let got = backend.download(&y).unwrap().data().to_f64_vec();
                for (i, (&g, &w)) in got.iter().zip(&want).enumerate() {
                    let ok = if w.is_nan() { g.is_nan() } else { g == w };
                    assert!(
                        ok,
                        "{dtype} {name} {shapes:?}: element {i} is {g}, want {w}"
                    );
                }
            }
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

/// Every bad input is a typed error naming the op and the operands, and leaves the output as
/// it was: shapes that do not broadcast, mixed dtypes, wrong arity, a wrong output.
pub fn errors_binary<B: Backend>(backend: &B) {
    let f =
        |dtype: DType, shape: &[usize]| up(backend, &HostTensor::full(dtype, shape, 1.0).unwrap());
    let f32s = |shape: &[usize]| f(DType::F32, shape);
    let untouched = |what: &str, y: &eia::Tensor<B::Storage>| {
        let v = backend.download(y).unwrap().data().to_f32_vec();
        assert!(
            v.iter().all(|v| v.is_nan()),
            "{what}: output changed by a failed call"
        );
    };
    let all = [
        Op::Add(Add { relu: true }),
        Op::Sub,
        Op::Mul,
        Op::Div,
        Op::Sum,
    ];
    for op in &all {
        let name = op.name();
        let mut y = poisoned(backend, DType::F32, &[2, 3]);
        for (a, b) in [
            (&[2, 3][..], &[4][..]),
            (&[2, 3], &[3, 3]),
            (&[2, 3, 3], &[2, 2, 1]),
        ] {
            let what = format!("{name} {a:?} {b:?}");
            let r = backend.apply_into(op, &[&f32s(a), &f32s(b)], &mut y);
            let msg = r.as_ref().map(|_| ()).unwrap_err().to_string();
            expect_err(&what, r, |e| matches!(e, Error::Shape { .. }));
            assert!(
                msg.contains(name) && msg.contains("do not broadcast"),
                "{msg}"
            );
            untouched(&what, &y);
        }
        let msg = backend
            .apply(op, &[&f32s(&[2, 3]), &f32s(&[4])])
            .map(|_| ())
            .unwrap_err()
            .to_string();
        if *op != Op::Sum {
            assert!(
                msg.contains(&format!(
                    "{name}: A [2, 3] and B [4] do not broadcast: dimension -1 is 3 and 4"
                )),
                "{msg}"
            );
        }
        expect_err(
            &format!("{name} dtypes"),
            backend.apply_into(op, &[&f32s(&[2, 3]), &f(DType::F16, &[2, 3])], &mut y),
            |e| matches!(e, Error::DTypeMismatch { .. }),
        );
        untouched(name, &y);
        let mut wrong = poisoned(backend, DType::F32, &[3, 2]);
        expect_err(
            &format!("{name} output shape"),
            backend.apply_into(op, &[&f32s(&[2, 3]), &f32s(&[3])], &mut wrong),
            |e| matches!(e, Error::Output { .. }),
        );
        untouched(name, &wrong);
        let mut wrong = poisoned(backend, DType::F16, &[2, 3]);
        expect_err(
            &format!("{name} output dtype"),
            backend.apply_into(op, &[&f32s(&[2, 3]), &f32s(&[3])], &mut wrong),
            |e| matches!(e, Error::Output { .. }),
        );
        untouched(name, &wrong);
        // Arity: the binary ops take exactly two; Sum 1 ..= MAX_INPUTS.
        let t = f32s(&[2, 3]);
        let counts: &[usize] = if *op == Op::Sum {
            &[0, MAX_INPUTS + 1]
        } else {
            &[0, 1, 3]
        };
        for &n in counts {
            let inputs = vec![&t; n];
            expect_err(
                &format!("{name} with {n} inputs"),
                backend.apply_into(op, &inputs, &mut y),
                |e| matches!(e, Error::Arity { got, .. } if *got == n),
            );
            untouched(name, &y);
        }
    }
    // Sum names the operands that clash.
    let mut y = poisoned(backend, DType::F32, &[2, 3]);
    let r = backend.apply_into(
        &Op::Sum,
        &[&f32s(&[2, 3]), &f32s(&[3]), &f32s(&[2, 2])],
        &mut y,
    );
    let msg = r.as_ref().map(|_| ()).unwrap_err().to_string();
    assert!(msg.contains("data_0") && msg.contains("data_2"), "{msg}");
    let r = backend.apply_into(
        &Op::Sum,
        &[&f32s(&[2, 3]), &f32s(&[3]), &f(DType::F16, &[3])],
        &mut y,
    );
    expect_err("Sum dtypes", r, |e| {
        matches!(
            e,
            Error::DTypeMismatch {
                operand: "data_2",
                ..
            }
        )
    });
    untouched("Sum", &y);
}

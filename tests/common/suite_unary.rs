//! The suite for the unary family (Relu, Clip, LeakyRelu, Sigmoid, Tanh), with its float64
//! references. Besides the suite's norm-wise bound, every element is checked on its own
//! (relative error within the dtype's tolerance; absolute for results below 1e-30 in FP32 and
//! below the smallest normal in FP16, where relative precision ends):
//! Sigmoid and Tanh must be accurate everywhere, not only on average.

use eia::ops::{Clip, LeakyRelu, Op};
use eia::{Backend, DType, Error, HostTensor};

use super::{assert_close_scaled, f64s, poisoned, random, rng, tolerance};

fn up<B: Backend>(b: &B, t: &HostTensor) -> eia::Tensor<B::Storage> {
    b.upload(t).unwrap()
}

/// The float64 reference of a unary op (ONNX semantics; NaN in, NaN out).
pub fn unary(op: &Op, x: &[f64]) -> Vec<f64> {
    x.iter()
        .map(|&x| {
            if x.is_nan() {
                return f64::NAN;
            }
            match op {
                Op::Relu => x.max(0.0),
                Op::Clip(c) => {
                    let lo = c.min.map_or(f64::NEG_INFINITY, f64::from);
                    let hi = c.max.map_or(f64::INFINITY, f64::from);
                    x.max(lo).min(hi)
                }
                Op::LeakyRelu(l) => {
                    if x < 0.0 {
                        l.alpha as f64 * x
                    } else {
                        x
                    }
                }
                Op::Sigmoid => 1.0 / (1.0 + (-x).exp()),
                Op::Tanh => x.tanh(),
                other => panic!("{other:?} is not a unary op"),
            }
        })
        .collect()
}

/// Every unary op with a spread of attributes.
fn ops() -> Vec<Op> {
    vec![
        Op::Relu,
        Op::Clip(Clip::RELU6),
        Op::Clip(Clip {
            min: Some(-0.5),
            max: None,
        }),
        Op::Clip(Clip {
            min: None,
            max: Some(1.25),
        }),
        Op::Clip(Clip::default()),
        Op::Clip(Clip {
            min: Some(0.75),
            max: Some(0.75),
        }),
        Op::LeakyRelu(LeakyRelu::default()),
        Op::LeakyRelu(LeakyRelu { alpha: -0.5 }),
        Op::LeakyRelu(LeakyRelu { alpha: 3.0 }),
        Op::LeakyRelu(LeakyRelu { alpha: 0.0 }),
        Op::Sigmoid,
        Op::Tanh,
    ]
}

/// Runs `op` on `x` into a poisoned output (and the allocating form) and checks both against
/// the reference, norm-wise and element by element.
fn case<B: Backend>(backend: &B, op: &Op, x: &HostTensor) {
    let what = format!("{} {:?} {op:?}", x.dtype(), x.shape());
    let mut want = unary(op, &f64s(x));
    if x.dtype() == DType::F16 {
        // Results beyond FP16's range round to ±inf (LeakyRelu with alpha > 1).
        for w in want.iter_mut().filter(|w| w.abs() >= 65520.0) {
            *w = w.signum() * f64::INFINITY;
        }
    }
    // Results below the floor are judged absolutely (FP16 Sigmoid(-20) is 0).
    let floor = floor(x.dtype());
    let scale: Vec<f64> = want.iter().map(|w| w.abs().max(floor)).collect();
    let xd = up(backend, x);
    let mut y = poisoned(backend, x.dtype(), x.shape());
    backend.apply_into(op, &[&xd], &mut y).unwrap();
    let got = backend.download(&y).unwrap();
    assert_close_scaled(&what, &got, &want, &scale, x.shape());
    elementwise(&what, &got, &want);
    let y = backend.apply(op, &[&xd]).unwrap();
    let again = backend.download(&y).unwrap();
    assert_eq!(again.as_bytes(), got.as_bytes(), "{what}: allocating form");
}

/// Where relative precision ends: results below it are compared absolutely.
fn floor(dtype: DType) -> f64 {
    match dtype {
        DType::F32 => 1e-30,
        DType::F16 => 6.103_515_625e-5, // the smallest normal FP16
    }
}

/// Every element within the dtype's relative tolerance (absolute for tiny results: FP32 below
/// 1e-30, FP16 below its smallest normal).
fn elementwise(what: &str, got: &HostTensor, want: &[f64]) {
    let tol = tolerance(got.dtype());
    let floor = floor(got.dtype());
    for (i, (&g, &w)) in got.data().to_f64_vec().iter().zip(want).enumerate() {
        if w.is_nan() {
            assert!(g.is_nan(), "{what}: element {i} is {g}, want NaN");
        } else if w.is_infinite() {
            assert_eq!(g, w, "{what}: element {i}");
        } else {
            assert!(
                (g - w).abs() <= tol * w.abs().max(floor),
                "{what}: element {i} is {g}, want {w}"
            );
        }
    }
}

/// Every op, both dtypes, over inputs in [-20, 20): scalars (rank 0), 1-sized dimensions,
/// empty tensors, every length 1..=70 (vector heads and tails), ResNet-like shapes and ~1M
/// elements (the CPU's multi-threaded path, many CUDA blocks).
pub fn unary_matches_reference<B: Backend>(backend: &B) {
    let mut rng = rng("unary_matches_reference");
    let mut shapes: Vec<Vec<usize>> = vec![
        vec![],
        vec![1],
        vec![1, 1, 1],
        vec![0],
        vec![2, 0, 3],
        vec![3, 5, 7],
        vec![1, 64, 11, 11],
        vec![2, 3, 33, 65],
    ];
    shapes.extend((1..=70).map(|n| vec![n]));
    for dtype in DType::ALL {
        for op in ops() {
            for shape in &shapes {
                let x = random(&mut rng, dtype, shape, -20.0, 20.0);
                case(backend, &op, &x);
            }
        }
        // ~1M elements, odd: several tasks of the CPU backend, a ragged last CUDA block.
        for op in [Op::Relu, Op::Clip(Clip::RELU6), Op::Sigmoid, Op::Tanh] {
            let x = random(&mut rng, dtype, &[1, 1 << 10, 1025], -20.0, 20.0);
            case(backend, &op, &x);
        }
        let x = random(&mut rng, dtype, &[1 << 20, 1], -3.0, 3.0);
        case(backend, &Op::LeakyRelu(LeakyRelu { alpha: 0.2 }), &x);
    }
}

/// Near zero (Tanh's polynomial, Sigmoid ≈ 1/2), subnormals, large magnitudes (saturation, no
/// overflow), ±inf, NaN (propagated by every op, as onnxruntime does), ±0 and values on the Clip bounds.
pub fn unary_extremes<B: Backend>(backend: &B) {
    let mut rng = rng("unary_extremes");
    for dtype in DType::ALL {
        let big = if dtype == DType::F16 { 60000.0 } else { 1e30 };
        let mut special = vec![
            f32::NAN,
            f32::INFINITY,
            f32::NEG_INFINITY,
            0.0,
            -0.0,
            6.0,
            -0.5,
            1.25,
            0.75,
            big,
            -big,
            -100.0,
            -88.0,
            -87.0,
            -30.0,
            9.0,
            44.5,
            0.625,
            -0.625,
            0.624,
            1e-4,
            -3e-3,
            // Subnormal in FP32 (the first two) and in FP16 (1e-6 and -3e-7).
            1e-40,
            -1e-40,
            1e-6,
            -3e-7,
            f32::NAN,
        ];
        // Small magnitudes spanning the polynomial range and the switch to the exponential.
        special.extend(
            random(&mut rng, dtype, &[41], -0.7, 0.7)
                .data()
                .to_f32_vec(),
        );
        special.extend(
            random(&mut rng, dtype, &[37], -1e-3, 1e-3)
                .data()
                .to_f32_vec(),
        );
        let n = special.len();
        let x = HostTensor::from_f32(dtype, &[n], &special).unwrap();
        for op in ops() {
            case(backend, &op, &x);
        }
        // The same values at every offset modulo 16 bytes: vectors with a NaN in any lane.
        for shift in 1..8 {
            let x = HostTensor::from_f32(dtype, &[n - shift], &special[shift..]).unwrap();
            case(backend, &Op::Relu, &x);
            case(backend, &Op::Sigmoid, &x);
            case(backend, &Op::Tanh, &x);
        }
        let run = |op: &Op, v: f32| {
            let x = HostTensor::from_f32(dtype, &[1], &[v]).unwrap();
            let y = backend.apply(op, &[&up(backend, &x)]).unwrap();
            backend.download(&y).unwrap().data().to_f32_vec()[0]
        };
        assert_eq!(run(&Op::Tanh, f32::INFINITY), 1.0);
        assert_eq!(run(&Op::Tanh, -big), -1.0);
        assert_eq!(run(&Op::Sigmoid, f32::NEG_INFINITY), 0.0);
        assert_eq!(run(&Op::Sigmoid, big), 1.0);
        let s = run(&Op::Sigmoid, -big);
        assert!((0.0..1e-30).contains(&s), "{dtype}: Sigmoid(-{big}) = {s}");
        for op in ops() {
            assert!(
                run(&op, f32::NAN).is_nan(),
                "{dtype} {op:?}: NaN in, NaN out"
            );
        }
    }
}

/// Bad attributes and operands: typed errors naming the op, and the output left untouched.
pub fn unary_errors<B: Backend>(backend: &B) {
    for dtype in DType::ALL {
        let x = up(backend, &HostTensor::full(dtype, &[2, 3], 1.0).unwrap());
        let mut y = poisoned(backend, dtype, &[2, 3]);
        let bad_attrs = [
            (
                Op::Clip(Clip {
                    min: Some(1.0),
                    max: Some(0.5),
                }),
                "Clip",
                "min",
            ),
            (
                Op::Clip(Clip {
                    min: Some(f32::NAN),
                    max: None,
                }),
                "Clip",
                "min",
            ),
            (
                Op::Clip(Clip {
                    min: Some(0.0),
                    max: Some(f32::NAN),
                }),
                "Clip",
                "max",
            ),
            (
                Op::LeakyRelu(LeakyRelu { alpha: f32::NAN }),
                "LeakyRelu",
                "alpha",
            ),
            (
                Op::LeakyRelu(LeakyRelu {
                    alpha: f32::INFINITY,
                }),
                "LeakyRelu",
                "alpha",
            ),
        ];
        for (op, name, attr) in bad_attrs {
            match backend.apply_into(&op, &[&x], &mut y) {
                Err(Error::Attribute { op: o, name: a, .. }) => {
                    assert_eq!((o, a), (name, attr), "{op:?}")
                }
                other => panic!("{op:?}: expected an attribute error, got {other:?}"),
            }
            let Err(e) = backend.apply(&op, &[&x]) else {
                panic!("{op:?}: allocating form accepted")
            };
            assert!(e.to_string().starts_with(name), "{e}");
        }
        for op in ops() {
            match backend.apply_into(&op, &[&x, &x], &mut y) {
                Err(Error::Arity { op: o, got: 2, .. }) => assert_eq!(o, op.name()),
                other => panic!("{op:?} with 2 inputs: {other:?}"),
            }
            assert!(matches!(
                backend.apply_into(&op, &[], &mut y),
                Err(Error::Arity { got: 0, .. })
            ));
            let mut wrong_shape = poisoned(backend, dtype, &[3, 2]);
            assert!(matches!(
                backend.apply_into(&op, &[&x], &mut wrong_shape),
                Err(Error::Output { .. })
            ));
            let other = if dtype == DType::F32 {
                DType::F16
            } else {
                DType::F32
            };
            let mut wrong_dtype = poisoned(backend, other, &[2, 3]);
            assert!(matches!(
                backend.apply_into(&op, &[&x], &mut wrong_dtype),
                Err(Error::Output { .. })
            ));
            for t in [&wrong_shape, &wrong_dtype] {
                let v = backend.download(t).unwrap().data().to_f32_vec();
                assert!(v.iter().all(|v| v.is_nan()), "{op:?}: output changed");
            }
        }
        let v = backend.download(&y).unwrap().data().to_f32_vec();
        assert!(
            v.iter().all(|v| v.is_nan()),
            "output changed by a failed call"
        );
    }
}

//! The layout ops' suite (Concat, Transpose, Flatten, Reshape, Squeeze, Unsqueeze, Identity,
//! Dropout) and their float64 references: every output element is one input element, so the
//! reference is an index map computed here independently of `eia::ops`.

use eia::ops::{Concat, Dropout, Flatten, Op, Reshape, Squeeze, Transpose, Unsqueeze, MAX_INPUTS};
use eia::{Backend, DType, Error, HostTensor};

use super::{assert_close, f64s, poisoned, random, rng};

/// Runs `op` on `xs` into a poisoned output of `shape` and checks it against `want`.
fn case<B: Backend>(
    backend: &B,
    what: &str,
    op: &Op,
    xs: &[&HostTensor],
    want: &[f64],
    shape: &[usize],
) {
    let dtype = xs[0].dtype();
    let ups: Vec<_> = xs.iter().map(|x| backend.upload(x).unwrap()).collect();
    let refs: Vec<_> = ups.iter().collect();
    let mut y = poisoned(backend, dtype, shape);
    backend
        .apply_into(op, &refs, &mut y)
        .unwrap_or_else(|e| panic!("{what}: {e}"));
    let got = backend.download(&y).unwrap();
    assert_close(&format!("{what} {dtype}"), &got, want, shape);
    // The allocating form gives the same.
    let y2 = backend.apply(op, &refs).unwrap();
    assert_eq!(
        backend.download(&y2).unwrap().data(),
        got.data(),
        "{what}: apply"
    );
}

fn strides(shape: &[usize]) -> Vec<usize> {
    let mut s = vec![1; shape.len()];
    for i in (0..shape.len().saturating_sub(1)).rev() {
        s[i] = s[i + 1] * shape[i + 1];
    }
    s
}

/// The float64 transpose of `x` (`shape`) by `perm`.
pub fn transpose_ref(x: &[f64], shape: &[usize], perm: &[usize]) -> (Vec<f64>, Vec<usize>) {
    let out: Vec<usize> = perm.iter().map(|&a| shape[a]).collect();
    let xs = strides(shape);
    let n: usize = out.iter().product();
    let y = (0..n)
        .map(|j| {
            let (mut r, mut xi) = (j, 0);
            for k in (0..out.len()).rev() {
                xi += (r % out[k]) * xs[perm[k]];
                r /= out[k];
            }
            x[xi]
        })
        .collect();
    (y, out)
}

/// The float64 concatenation along `axis` (non-negative).
pub fn concat_ref(xs: &[(&[f64], &[usize])], axis: usize) -> (Vec<f64>, Vec<usize>) {
    let mut shape = xs[0].1.to_vec();
    shape[axis] = xs.iter().map(|(_, s)| s[axis]).sum();
    let outer: usize = shape[..axis].iter().product();
    let inner: usize = shape[axis + 1..].iter().product();
    let mut y = Vec::new();
    for o in 0..outer {
        for (x, s) in xs {
            let w = s[axis] * inner;
            y.extend_from_slice(&x[o * w..(o + 1) * w]);
        }
    }
    (y, shape)
}

/// Every permutation of `0..n`.
fn perms(n: usize) -> Vec<Vec<usize>> {
    if n == 0 {
        return vec![vec![]];
    }
    let mut all = Vec::new();
    for p in perms(n - 1) {
        for i in 0..=p.len() {
            let mut q = p.clone();
            q.insert(i, n - 1);
            all.push(q);
        }
    }
    all
}

/// Every perm of rank-4 tensors (with and without 1-sized dims), rank 0 to 3, the default
/// (reversing) perm, a large matrix, and empty tensors.
pub fn layout_transpose_every_perm<B: Backend>(backend: &B) {
    let mut rng = rng("layout_transpose_every_perm");
    for dtype in DType::ALL {
        let mut shapes: Vec<Vec<usize>> = vec![
            vec![2, 3, 4, 5],
            vec![1, 3, 1, 5],
            vec![3, 1, 2, 1],
            vec![0, 3, 2, 2],
        ];
        shapes.extend([
            vec![],
            vec![7],
            vec![1],
            vec![5, 9],
            vec![2, 1, 3],
            vec![67, 130],
        ]);
        for shape in &shapes {
            let x = random(&mut rng, dtype, shape, -4.0, 4.0);
            let xv = f64s(&x);
            for perm in perms(shape.len()) {
                let (want, out) = transpose_ref(&xv, shape, &perm);
                let op = Op::Transpose(Transpose {
                    perm: Some(perm.iter().map(|&a| a as i64).collect()),
                });
                case(
                    backend,
                    &format!("Transpose {shape:?} {perm:?}"),
                    &op,
                    &[&x],
                    &want,
                    &out,
                );
            }
            let rev: Vec<usize> = (0..shape.len()).rev().collect();
            let (want, out) = transpose_ref(&xv, shape, &rev);
            let op = Op::Transpose(Transpose { perm: None });
            case(
                backend,
                &format!("Transpose {shape:?} default"),
                &op,
                &[&x],
                &want,
                &out,
            );
        }
        // NCHW <-> NHWC of a mid-sized image batch.
        let shape = [2, 17, 9, 33];
        let x = random(&mut rng, dtype, &shape, -4.0, 4.0);
        for perm in [[0, 2, 3, 1], [0, 3, 1, 2]] {
            let (want, out) = transpose_ref(&f64s(&x), &shape, &perm);
            let op = Op::Transpose(Transpose {
                perm: Some(perm.iter().map(|&a| a as i64).collect()),
            });
            case(
                backend,
                &format!("Transpose {shape:?} {perm:?}"),
                &op,
                &[&x],
                &want,
                &out,
            );
        }
    }
}

/// Concat along every axis (negative too) of 1 to 4 inputs, inputs empty along the axis, rank 1,
/// and the most inputs allowed.
pub fn layout_concat_every_axis<B: Backend>(backend: &B) {
    let mut rng = rng("layout_concat_every_axis");
    for dtype in DType::ALL {
        for base in [vec![2usize, 3, 4], vec![1, 5, 1], vec![6], vec![3, 1, 2, 5]] {
            let rank = base.len();
            for axis in -(rank as i64)..rank as i64 {
                let a = axis.rem_euclid(rank as i64) as usize;
                for lens in [&[3usize][..], &[1, 2], &[2, 0, 3], &[1, 1, 4, 2], &[0]] {
                    let xs: Vec<HostTensor> = lens
                        .iter()
                        .map(|&l| {
                            let mut s = base.clone();
                            s[a] = l;
                            random(&mut rng, dtype, &s, -4.0, 4.0)
                        })
                        .collect();
                    let vals: Vec<Vec<f64>> = xs.iter().map(f64s).collect();
                    let parts: Vec<(&[f64], &[usize])> = vals
                        .iter()
                        .zip(&xs)
                        .map(|(v, x)| (&v[..], x.shape()))
                        .collect();
                    let (want, out) = concat_ref(&parts, a);
                    let refs: Vec<&HostTensor> = xs.iter().collect();
                    let what = format!("Concat {base:?} axis {axis} lens {lens:?}");
                    case(
                        backend,
                        &what,
                        &Op::Concat(Concat { axis }),
                        &refs,
                        &want,
                        &out,
                    );
                }
            }
        }
        let xs: Vec<HostTensor> = (0..MAX_INPUTS)
            .map(|i| random(&mut rng, dtype, &[2, 1 + i % 3], -4.0, 4.0))
            .collect();
        let vals: Vec<Vec<f64>> = xs.iter().map(f64s).collect();
        let parts: Vec<(&[f64], &[usize])> = vals
            .iter()
            .zip(&xs)
            .map(|(v, x)| (&v[..], x.shape()))
            .collect();
        let (want, out) = concat_ref(&parts, 1);
        let refs: Vec<&HostTensor> = xs.iter().collect();
        case(
            backend,
            "Concat 64 inputs",
            &Op::Concat(Concat { axis: -1 }),
            &refs,
            &want,
            &out,
        );
    }
}

/// Flatten at every axis, Reshape with 0, -1 and allowzero, Squeeze and Unsqueeze with negative
/// axes, Identity and Dropout: each a copy of the input's elements into its new shape.
pub fn layout_reshapes<B: Backend>(backend: &B) {
    let mut rng = rng("layout_reshapes");
    for dtype in DType::ALL {
        let mut copy = |what: String, op: Op, shape: &[usize], out: &[usize]| {
            let x = random(&mut rng, dtype, shape, -4.0, 4.0);
            case(backend, &what, &op, &[&x], &f64s(&x), out);
        };
        for shape in [
            vec![],
            vec![5],
            vec![2, 3, 4],
            vec![1, 1, 3],
            vec![2, 0, 3],
            vec![3, 1000],
        ] {
            let rank = shape.len() as i64;
            for axis in -rank..=rank {
                let a = if axis < 0 { axis + rank } else { axis } as usize;
                let out = [shape[..a].iter().product(), shape[a..].iter().product()];
                copy(
                    format!("Flatten {shape:?} axis {axis}"),
                    Op::Flatten(Flatten { axis }),
                    &shape,
                    &out,
                );
            }
            copy(format!("Identity {shape:?}"), Op::Identity, &shape, &shape);
            copy(
                format!("Dropout {shape:?}"),
                Op::Dropout(Dropout {
                    ratio: 0.3,
                    training_mode: false,
                }),
                &shape,
                &shape,
            );
            let n: usize = shape.iter().product();
            let reshape = |s: &[i64], z: bool| {
                Op::Reshape(Reshape {
                    shape: s.to_vec(),
                    allowzero: z,
                })
            };
            copy(
                format!("Reshape {shape:?} [n]"),
                reshape(&[n as i64], n == 0),
                &shape,
                &[n],
            );
            if n > 0 {
                copy(
                    format!("Reshape {shape:?} [-1]"),
                    reshape(&[-1], false),
                    &shape,
                    &[n],
                );
                copy(
                    format!("Reshape {shape:?} [1,-1,1]"),
                    reshape(&[1, -1, 1], true),
                    &shape,
                    &[1, n, 1],
                );
            }
            if shape.len() >= 2 {
                let rest: usize = shape[1..].iter().product();
                copy(
                    format!("Reshape {shape:?} [0,-1]"),
                    reshape(&[0, -1], false),
                    &shape,
                    &[shape[0], rest],
                );
            }
            // Squeeze: all 1-dims, then the 1-dims one at a time by negative axes.
            let squeezed: Vec<usize> = shape.iter().copied().filter(|&d| d != 1).collect();
            copy(
                format!("Squeeze {shape:?} all"),
                Op::Squeeze(Squeeze { axes: None }),
                &shape,
                &squeezed,
            );
            for (i, _) in shape.iter().enumerate().filter(|(_, &d)| d == 1) {
                let mut out = shape.clone();
                out.remove(i);
                let axes = Some(vec![i as i64 - rank]);
                copy(
                    format!("Squeeze {shape:?} {axes:?}"),
                    Op::Squeeze(Squeeze { axes }),
                    &shape,
                    &out,
                );
            }
            // Unsqueeze at the front, at the end (negative) and at both.
            let mut front = vec![1];
            front.extend(&shape);
            copy(
                format!("Unsqueeze {shape:?} [0]"),
                Op::Unsqueeze(Unsqueeze { axes: vec![0] }),
                &shape,
                &front,
            );
            let mut both = front.clone();
            both.push(1);
            copy(
                format!("Unsqueeze {shape:?} [-1, 0]"),
                Op::Unsqueeze(Unsqueeze { axes: vec![-1, 0] }),
                &shape,
                &both,
            );
        }
        copy(
            "Reshape allowzero".into(),
            Op::Reshape(Reshape {
                shape: vec![0, 7],
                allowzero: true,
            }),
            &[2, 0, 3],
            &[0, 7],
        );
        // A large copy (split across threads on the CPU, many blocks on the GPU).
        copy(
            "Identity large".into(),
            Op::Identity,
            &[301, 1037],
            &[301, 1037],
        );
    }
}

fn expect_err(what: &str, r: eia::Result<()>, check: impl Fn(&Error) -> bool) {
    match r {
        Err(e) => {
            assert!(check(&e), "{what}: unexpected error kind: {e:?}");
            assert!(
                e.to_string().contains(what.split(' ').next().unwrap()),
                "{what}: {e}"
            );
        }
        Ok(()) => panic!("{what}: expected an error"),
    }
}

/// Every bad attribute and operand of the layout ops: a typed error naming the op, and the
/// (poisoned) output untouched.
#[allow(clippy::type_complexity)]
pub fn errors_layout<B: Backend>(backend: &B) {
    let t = |dtype: DType, shape: &[usize]| {
        backend
            .upload(&HostTensor::full(dtype, shape, 1.0).unwrap())
            .unwrap()
    };
    let x = t(DType::F32, &[2, 3, 4]);
    let x16 = t(DType::F16, &[2, 3, 4]);
    let (x244, x23) = (t(DType::F32, &[2, 4, 4]), t(DType::F32, &[2, 3]));
    let attr =
        |n: &'static str| move |e: &Error| matches!(e, Error::Attribute { name, .. } if *name == n);
    let shape = |e: &Error| matches!(e, Error::Shape { .. });
    let cases: Vec<(
        &str,
        Op,
        Vec<&eia::Tensor<B::Storage>>,
        Box<dyn Fn(&Error) -> bool>,
    )> = vec![
        (
            "Transpose repeated",
            Op::Transpose(Transpose {
                perm: Some(vec![0, 0, 1]),
            }),
            vec![&x],
            Box::new(attr("perm")),
        ),
        (
            "Transpose short",
            Op::Transpose(Transpose {
                perm: Some(vec![1, 0]),
            }),
            vec![&x],
            Box::new(attr("perm")),
        ),
        (
            "Transpose out of range",
            Op::Transpose(Transpose {
                perm: Some(vec![0, 1, 3]),
            }),
            vec![&x],
            Box::new(attr("perm")),
        ),
        (
            "Transpose negative",
            Op::Transpose(Transpose {
                perm: Some(vec![-1, 0, 1]),
            }),
            vec![&x],
            Box::new(attr("perm")),
        ),
        (
            "Reshape two -1",
            Op::Reshape(Reshape {
                shape: vec![-1, -1],
                allowzero: false,
            }),
            vec![&x],
            Box::new(attr("shape")),
        ),
        (
            "Reshape size",
            Op::Reshape(Reshape {
                shape: vec![5, 5],
                allowzero: false,
            }),
            vec![&x],
            Box::new(shape),
        ),
        (
            "Reshape -1 no fit",
            Op::Reshape(Reshape {
                shape: vec![5, -1],
                allowzero: false,
            }),
            vec![&x],
            Box::new(shape),
        ),
        (
            "Reshape -2",
            Op::Reshape(Reshape {
                shape: vec![-2, 12],
                allowzero: false,
            }),
            vec![&x],
            Box::new(attr("shape")),
        ),
        (
            "Reshape 0 past rank",
            Op::Reshape(Reshape {
                shape: vec![1, 1, 1, 0],
                allowzero: false,
            }),
            vec![&x],
            Box::new(attr("shape")),
        ),
        (
            "Reshape allowzero 0 and -1",
            Op::Reshape(Reshape {
                shape: vec![0, -1],
                allowzero: true,
            }),
            vec![&x],
            Box::new(attr("shape")),
        ),
        (
            "Squeeze non-1",
            Op::Squeeze(Squeeze {
                axes: Some(vec![1]),
            }),
            vec![&x],
            Box::new(shape),
        ),
        (
            "Squeeze out of range",
            Op::Squeeze(Squeeze {
                axes: Some(vec![-4]),
            }),
            vec![&x],
            Box::new(attr("axes")),
        ),
        (
            "Unsqueeze duplicate",
            Op::Unsqueeze(Unsqueeze { axes: vec![0, -5] }),
            vec![&x],
            Box::new(attr("axes")),
        ),
        (
            "Unsqueeze out of range",
            Op::Unsqueeze(Unsqueeze { axes: vec![4] }),
            vec![&x],
            Box::new(attr("axes")),
        ),
        (
            "Unsqueeze none",
            Op::Unsqueeze(Unsqueeze { axes: vec![] }),
            vec![&x],
            Box::new(attr("axes")),
        ),
        (
            "Flatten axis",
            Op::Flatten(Flatten { axis: 4 }),
            vec![&x],
            Box::new(attr("axis")),
        ),
        (
            "Flatten negative axis",
            Op::Flatten(Flatten { axis: -4 }),
            vec![&x],
            Box::new(attr("axis")),
        ),
        (
            "Dropout training",
            Op::Dropout(Dropout {
                ratio: 0.5,
                training_mode: true,
            }),
            vec![&x],
            Box::new(attr("training_mode")),
        ),
        (
            "Dropout ratio",
            Op::Dropout(Dropout {
                ratio: 1.5,
                training_mode: false,
            }),
            vec![&x],
            Box::new(attr("ratio")),
        ),
        (
            "Concat axis",
            Op::Concat(Concat { axis: 3 }),
            vec![&x, &x],
            Box::new(attr("axis")),
        ),
        (
            "Concat negative axis",
            Op::Concat(Concat { axis: -4 }),
            vec![&x, &x],
            Box::new(attr("axis")),
        ),
        (
            "Concat off-axis",
            Op::Concat(Concat { axis: 0 }),
            vec![&x, &x244],
            Box::new(shape),
        ),
        (
            "Concat rank",
            Op::Concat(Concat { axis: 0 }),
            vec![&x, &x23],
            Box::new(shape),
        ),
        (
            "Concat dtype",
            Op::Concat(Concat { axis: 0 }),
            vec![&x, &x16],
            Box::new(|e: &Error| matches!(e, Error::DTypeMismatch { .. })),
        ),
        (
            "Concat none",
            Op::Concat(Concat { axis: 0 }),
            vec![],
            Box::new(|e: &Error| matches!(e, Error::Arity { .. })),
        ),
        (
            "Identity two",
            Op::Identity,
            vec![&x, &x],
            Box::new(|e: &Error| matches!(e, Error::Arity { .. })),
        ),
    ];
    let mut y = poisoned(backend, DType::F32, &[2, 3, 4]);
    for (what, op, inputs, check) in &cases {
        expect_err(what, backend.apply_into(op, inputs, &mut y), check);
        assert!(backend.apply(op, inputs).is_err(), "{what}: apply");
    }
    let many: Vec<_> = (0..=MAX_INPUTS).map(|_| &x).collect();
    expect_err(
        "Concat 65",
        backend.apply_into(&Op::Concat(Concat { axis: 0 }), &many, &mut y),
        |e| matches!(e, Error::Arity { .. }),
    );
    // A good op into an output of the wrong shape.
    expect_err(
        "Transpose output",
        backend.apply_into(&Op::Transpose(Transpose { perm: None }), &[&x], &mut y),
        |e| matches!(e, Error::Output { .. }),
    );
    let v = backend.download(&y).unwrap().data().to_f32_vec();
    assert!(
        v.iter().all(|v| v.is_nan()),
        "output changed by a failed call"
    );
}

//! Float64 reference implementations written straight from the ONNX operator definitions,
//! independent of the crate's plans: loops over every output element, every index computed
//! from the definition.

use eia::ops::{AutoPad, Conv};

/// Row-major strides of `shape`.
fn strides(shape: &[usize]) -> Vec<usize> {
    let mut s = vec![1; shape.len()];
    for i in (0..shape.len().saturating_sub(1)).rev() {
        s[i] = s[i + 1] * shape[i + 1];
    }
    s
}

/// ONNX Gemm: `alpha·op(A)·op(B) + beta·C` with C unidirectionally broadcast, then optional ReLU.
#[allow(clippy::too_many_arguments)]
pub fn gemm(
    a: &[f64],
    a_shape: &[usize],
    b: &[f64],
    b_shape: &[usize],
    c: Option<(&[f64], &[usize])>,
    alpha: f64,
    beta: f64,
    trans_a: bool,
    trans_b: bool,
    relu: bool,
) -> (Vec<f64>, Vec<usize>) {
    let at = |i: usize, k: usize| {
        if trans_a {
            a[k * a_shape[1] + i]
        } else {
            a[i * a_shape[1] + k]
        }
    };
    let bt = |k: usize, j: usize| {
        if trans_b {
            b[j * b_shape[1] + k]
        } else {
            b[k * b_shape[1] + j]
        }
    };
    let m = if trans_a { a_shape[1] } else { a_shape[0] };
    let kk = if trans_a { a_shape[0] } else { a_shape[1] };
    let n = if trans_b { b_shape[0] } else { b_shape[1] };
    let mut y = vec![0.0; m * n];
    for i in 0..m {
        for j in 0..n {
            let mut acc = 0.0;
            for k in 0..kk {
                acc += at(i, k) * bt(k, j);
            }
            let mut v = alpha * acc;
            if let Some((c, cs)) = c {
                // Right-align C's shape against [m, n]; dims of 1 broadcast.
                let full: Vec<usize> = std::iter::repeat_n(1, 2 - cs.len())
                    .chain(cs.iter().copied())
                    .collect();
                let ci = if full[0] == 1 { 0 } else { i };
                let cj = if full[1] == 1 { 0 } else { j };
                v += beta * c[ci * full[1] + cj];
            }
            y[i * n + j] = if relu && v < 0.0 { 0.0 } else { v };
        }
    }
    (y, vec![m, n])
}

/// numpy `matmul` with 1-D promotion and batch broadcasting.
pub fn matmul(
    a: &[f64],
    a_shape: &[usize],
    b: &[f64],
    b_shape: &[usize],
) -> (Vec<f64>, Vec<usize>) {
    let a2: Vec<usize> = if a_shape.len() == 1 {
        vec![1, a_shape[0]]
    } else {
        a_shape.to_vec()
    };
    let b2: Vec<usize> = if b_shape.len() == 1 {
        vec![b_shape[0], 1]
    } else {
        b_shape.to_vec()
    };
    let (m, k) = (a2[a2.len() - 2], a2[a2.len() - 1]);
    let n = b2[b2.len() - 1];
    let rank = a2.len().max(b2.len()) - 2;
    let pad = |s: &[usize]| -> Vec<usize> {
        let batch = &s[..s.len() - 2];
        std::iter::repeat_n(1, rank - batch.len())
            .chain(batch.iter().copied())
            .collect()
    };
    let (ab, bb) = (pad(&a2), pad(&b2));
    let out_batch: Vec<usize> = ab.iter().zip(&bb).map(|(&x, &y)| x.max(y)).collect();
    let (abs, bbs, obs) = (strides(&ab), strides(&bb), strides(&out_batch));
    let count: usize = out_batch.iter().product();
    let mut y = vec![0.0; count * m * n];
    for o in 0..count {
        let (mut ai, mut bi) = (0, 0);
        for d in 0..rank {
            let idx = (o / obs[d]) % out_batch[d];
            ai += if ab[d] == 1 { 0 } else { idx * abs[d] };
            bi += if bb[d] == 1 { 0 } else { idx * bbs[d] };
        }
        for i in 0..m {
            for j in 0..n {
                let mut acc = 0.0;
                for kk in 0..k {
                    acc += a[ai * m * k + i * k + kk] * b[bi * k * n + kk * n + j];
                }
                y[o * m * n + i * n + j] = acc;
            }
        }
    }
    let mut shape = out_batch;
    if a_shape.len() > 1 {
        shape.push(m);
    }
    if b_shape.len() > 1 {
        shape.push(n);
    }
    (y, shape)
}

/// ONNX Conv (2-D) from its definition, pads resolved from `auto_pad` as the spec states.
pub fn conv(
    op: &Conv,
    x: &[f64],
    x_shape: &[usize],
    w: &[f64],
    w_shape: &[usize],
    bias: Option<&[f64]>,
) -> (Vec<f64>, Vec<usize>) {
    let (n, c, h, wd) = (x_shape[0], x_shape[1], x_shape[2], x_shape[3]);
    let (k, cg, r, s) = (w_shape[0], w_shape[1], w_shape[2], w_shape[3]);
    let kg = k / op.group;
    let mut begin = [0i64; 2];
    let mut out = [0usize; 2];
    for (axis, (&input, &kernel)) in [h, wd].iter().zip(&[r, s]).enumerate() {
        let (stride, dil) = (op.strides[axis] as i64, op.dilations[axis] as i64);
        let ext = dil * (kernel as i64 - 1) + 1;
        let input = input as i64;
        let (b, e) = match op.auto_pad {
            AutoPad::NotSet => (op.pads[axis] as i64, op.pads[axis + 2] as i64),
            AutoPad::Valid => (0, 0),
            AutoPad::SameUpper | AutoPad::SameLower => {
                let o = (input + stride - 1) / stride;
                let total = ((o - 1) * stride + ext - input).max(0);
                if op.auto_pad == AutoPad::SameUpper {
                    (total / 2, total - total / 2)
                } else {
                    (total - total / 2, total / 2)
                }
            }
        };
        begin[axis] = b;
        out[axis] = ((input + b + e - ext) / stride + 1) as usize;
    }
    let (p, q) = (out[0], out[1]);
    let mut y = vec![0.0; n * k * p * q];
    for ni in 0..n {
        for ki in 0..k {
            let g = ki / kg;
            for pi in 0..p {
                for qi in 0..q {
                    let mut acc = bias.map_or(0.0, |b| b[ki]);
                    for ci in 0..cg {
                        let cin = g * cg + ci;
                        for ri in 0..r {
                            for si in 0..s {
                                let ih =
                                    (pi * op.strides[0] + ri * op.dilations[0]) as i64 - begin[0];
                                let iw =
                                    (qi * op.strides[1] + si * op.dilations[1]) as i64 - begin[1];
                                if ih < 0 || iw < 0 || ih >= h as i64 || iw >= wd as i64 {
                                    continue;
                                }
                                acc += x[((ni * c + cin) * h + ih as usize) * wd + iw as usize]
                                    * w[((ki * cg + ci) * r + ri) * s + si];
                            }
                        }
                    }
                    y[((ni * k + ki) * p + pi) * q + qi] =
                        if op.relu && acc < 0.0 { 0.0 } else { acc };
                }
            }
        }
    }
    (y, vec![n, k, p, q])
}

/// ONNX BatchNormalization (inference) over channel dim 1.
#[allow(clippy::too_many_arguments)]
pub fn batch_norm(
    x: &[f64],
    shape: &[usize],
    scale: &[f64],
    bias: &[f64],
    mean: &[f64],
    var: &[f64],
    eps: f64,
) -> Vec<f64> {
    let c = shape[1];
    let inner: usize = shape[2..].iter().product();
    x.iter()
        .enumerate()
        .map(|(i, &v)| {
            let ch = (i / inner) % c;
            scale[ch] * (v - mean[ch]) / (var[ch] + eps).sqrt() + bias[ch]
        })
        .collect()
}

/// ONNX Softmax along `axis` (negative counts from the end).
pub fn softmax(x: &[f64], shape: &[usize], axis: i64) -> Vec<f64> {
    let axis = axis.rem_euclid(shape.len() as i64) as usize;
    let len = shape[axis];
    let inner: usize = shape[axis + 1..].iter().product();
    let outer: usize = shape[..axis].iter().product();
    let mut y = vec![0.0; x.len()];
    for o in 0..outer {
        for i in 0..inner {
            let at = |l: usize| o * len * inner + l * inner + i;
            let max = (0..len).map(|l| x[at(l)]).fold(f64::NEG_INFINITY, f64::max);
            let sum: f64 = (0..len).map(|l| (x[at(l)] - max).exp()).sum();
            for l in 0..len {
                y[at(l)] = (x[at(l)] - max).exp() / sum;
            }
        }
    }
    y
}

//! Gemm (`Y = alpha·A'·B' + beta·C`, ONNX) and MatMul (numpy-style batched matmul, ONNX), both
//! resolved into one [`GemmPlan`]: a batch of `M×K · K×N` products over strided operands.

use super::{expect_rank, indexable, output, product, same_dtype, Clamp, Clip};
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::tensor::TensorDesc;

/// ONNX Gemm attributes, plus an optional fused ReLU and Clip on the output.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Gemm {
    pub alpha: f32,
    pub beta: f32,
    pub trans_a: bool,
    pub trans_b: bool,
    /// Apply `max(0, y)` to the result (fused epilogue).
    pub relu: bool,
    /// Clip the result to these bounds (fused epilogue; after the ReLU when both are set).
    pub clip: Option<Clip>,
}

impl Default for Gemm {
    fn default() -> Self {
        Gemm {
            alpha: 1.0,
            beta: 1.0,
            trans_a: false,
            trans_b: false,
            relu: false,
            clip: None,
        }
    }
}

/// ONNX MatMul (no attributes): numpy `matmul` semantics with batch broadcasting.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct MatMul;

/// Element strides of a logical row-major matrix view: element `(i, j)` is at
/// `i·row + j·col`. A stride of 0 broadcasts along that axis.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MatLayout {
    pub row: usize,
    pub col: usize,
}

/// A validated batched GEMM: for each batch index `b`,
/// `Y[b] = clamp?(alpha · A[b] · B[b] + beta · C)` with `A[b]` `m×k`, `B[b]` `k×n`, `Y[b]` `m×n`
/// contiguous at `b·m·n`.
#[derive(Clone, Debug, PartialEq)]
pub struct GemmPlan {
    pub dtype: DType,
    pub m: usize,
    pub n: usize,
    pub k: usize,
    /// Output batch dimensions (empty for a single matrix).
    pub batch_dims: Vec<usize>,
    /// Per batch dimension, the element stride of A's and B's batch (0 where broadcast).
    pub a_batch_strides: Vec<usize>,
    pub b_batch_strides: Vec<usize>,
    pub a: MatLayout,
    pub b: MatLayout,
    pub alpha: f32,
    pub beta: f32,
    /// Layout of C broadcast to `m×n`, when C is present (and beta is applied to it).
    pub c: Option<MatLayout>,
    /// The fused ReLU and/or Clip, applied last.
    pub clamp: Option<Clamp>,
    pub output: TensorDesc,
}

impl GemmPlan {
    /// Number of matrices in the batch.
    pub fn batch(&self) -> usize {
        self.batch_dims.iter().product()
    }

    /// Element offsets of A and B for output batch index `index` (row-major over `batch_dims`).
    pub fn batch_offsets(&self, mut index: usize) -> (usize, usize) {
        let (mut a, mut b) = (0, 0);
        for d in (0..self.batch_dims.len()).rev() {
            let i = index % self.batch_dims[d];
            index /= self.batch_dims[d];
            a += i * self.a_batch_strides[d];
            b += i * self.b_batch_strides[d];
        }
        (a, b)
    }

    /// Exact FLOP count: `2·M·N·K` per matrix.
    pub fn flops(&self) -> u64 {
        2 * product(&self.batch_dims) * self.m as u64 * self.n as u64 * self.k as u64
    }
}

impl Gemm {
    /// Validates operands (A: 2-D, B: 2-D, C: broadcastable to `M×N`) and resolves the plan.
    pub fn plan(&self, a: &TensorDesc, b: &TensorDesc, c: Option<&TensorDesc>) -> Result<GemmPlan> {
        const OP: &str = "Gemm";
        let dtype = a.dtype();
        same_dtype(OP, "B", dtype, b)?;
        indexable(OP, &[("A", a), ("B", b)])?;
        if let Some(c) = c {
            indexable(OP, &[("C", c)])?;
        }
        expect_rank(OP, "A", a, 2)?;
        expect_rank(OP, "B", b, 2)?;
        for (name, v) in [("alpha", self.alpha), ("beta", self.beta)] {
            if !v.is_finite() {
                return Err(Error::attribute(
                    OP,
                    name,
                    format!("must be finite, got {v}"),
                ));
            }
        }
        let (ad, bd) = (a.shape(), b.shape());
        let (m, ka) = if self.trans_a {
            (ad[1], ad[0])
        } else {
            (ad[0], ad[1])
        };
        let (kb, n) = if self.trans_b {
            (bd[1], bd[0])
        } else {
            (bd[0], bd[1])
        };
        if ka != kb {
            return Err(Error::shape(
                OP,
                format!(
                    "inner dimensions differ: A{} {:?} gives K={ka}, B{} {:?} gives K={kb}",
                    if self.trans_a { "ᵀ" } else { "" },
                    ad,
                    if self.trans_b { "ᵀ" } else { "" },
                    bd
                ),
            ));
        }
        let a_layout = if self.trans_a {
            MatLayout { row: 1, col: m }
        } else {
            MatLayout { row: ka, col: 1 }
        };
        let b_layout = if self.trans_b {
            MatLayout { row: 1, col: ka }
        } else {
            MatLayout { row: n, col: 1 }
        };
        let c_layout = match c {
            None => None,
            Some(c) => {
                same_dtype(OP, "C", dtype, c)?;
                Some(c_broadcast(c.shape(), m, n)?)
            }
        };
        Ok(GemmPlan {
            dtype,
            m,
            n,
            k: ka,
            batch_dims: Vec::new(),
            a_batch_strides: Vec::new(),
            b_batch_strides: Vec::new(),
            a: a_layout,
            b: b_layout,
            alpha: self.alpha,
            beta: self.beta,
            c: c_layout,
            clamp: Clamp::fused(OP, self.relu, self.clip.as_ref())?,
            output: output(OP, dtype, &[m, n])?,
        })
    }
}

/// Unidirectional broadcast of C to `m×n` (ONNX Gemm): returns C's strides in the output view.
fn c_broadcast(shape: &[usize], m: usize, n: usize) -> Result<MatLayout> {
    let bad = || {
        Error::shape(
            "Gemm",
            format!("C of shape {shape:?} cannot broadcast to the output [{m}, {n}]"),
        )
    };
    // Right-align C's dims against [m, n]; a dim of 1 broadcasts.
    let (cm, cn) = match *shape {
        [] => (1, 1),
        [cn] => (1, cn),
        [cm, cn] => (cm, cn),
        _ => return Err(bad()),
    };
    let row = match cm {
        _ if cm == m => cn,
        1 => 0,
        _ => return Err(bad()),
    };
    let col = match cn {
        _ if cn == n => 1,
        1 => 0,
        _ => return Err(bad()),
    };
    // A broadcast column must not keep a row stride of cn == 1 when m == 1; normalise.
    let row = if cm == 1 { 0 } else { row };
    Ok(MatLayout { row, col })
}

impl MatMul {
    /// Validates operands and resolves numpy-style batched matmul: 1-D A is `[1, K]` and 1-D B is
    /// `[K, 1]` with that dimension dropped from the output; batch dimensions broadcast.
    pub fn plan(&self, a: &TensorDesc, b: &TensorDesc) -> Result<GemmPlan> {
        const OP: &str = "MatMul";
        let dtype = a.dtype();
        same_dtype(OP, "B", dtype, b)?;
        indexable(OP, &[("A", a), ("B", b)])?;
        if a.rank() == 0 || b.rank() == 0 {
            return Err(Error::shape(
                OP,
                format!(
                    "operands must have rank >= 1, got A {:?} and B {:?}",
                    a.shape(),
                    b.shape()
                ),
            ));
        }
        let a_vec = a.rank() == 1;
        let b_vec = b.rank() == 1;
        let ashape: Vec<usize> = if a_vec {
            vec![1, a.shape()[0]]
        } else {
            a.shape().to_vec()
        };
        let bshape: Vec<usize> = if b_vec {
            vec![b.shape()[0], 1]
        } else {
            b.shape().to_vec()
        };
        let (m, k) = (ashape[ashape.len() - 2], ashape[ashape.len() - 1]);
        let (kb, n) = (bshape[bshape.len() - 2], bshape[bshape.len() - 1]);
        if k != kb {
            return Err(Error::shape(
                OP,
                format!(
                    "inner dimensions differ: A {:?} has K={k}, B {:?} has K={kb}",
                    a.shape(),
                    b.shape()
                ),
            ));
        }
        let a_batch = &ashape[..ashape.len() - 2];
        let b_batch = &bshape[..bshape.len() - 2];
        let rank = a_batch.len().max(b_batch.len());
        let mut batch_dims = Vec::with_capacity(rank);
        let mut a_strides = vec![0; rank];
        let mut b_strides = vec![0; rank];
        let (mut a_stride, mut b_stride) = (m * k, k * n);
        for i in 0..rank {
            // Walk from the innermost batch dim outwards, right-aligned.
            let da = (i < a_batch.len()).then(|| a_batch[a_batch.len() - 1 - i]);
            let db = (i < b_batch.len()).then(|| b_batch[b_batch.len() - 1 - i]);
            let (xa, xb) = (da.unwrap_or(1), db.unwrap_or(1));
            let d = match (xa, xb) {
                _ if xa == xb => xa,
                (1, _) => xb,
                (_, 1) => xa,
                _ => {
                    return Err(Error::shape(
                        OP,
                        format!(
                            "batch dimensions of A {:?} and B {:?} do not broadcast ({xa} vs {xb})",
                            a.shape(),
                            b.shape()
                        ),
                    ))
                }
            };
            let slot = rank - 1 - i;
            a_strides[slot] = if xa == 1 { 0 } else { a_stride };
            b_strides[slot] = if xb == 1 { 0 } else { b_stride };
            a_stride *= xa;
            b_stride *= xb;
            batch_dims.push(d);
        }
        batch_dims.reverse();
        let mut out_shape = batch_dims.clone();
        if !a_vec {
            out_shape.push(m);
        }
        if !b_vec {
            out_shape.push(n);
        }
        Ok(GemmPlan {
            dtype,
            m,
            n,
            k,
            a_batch_strides: a_strides,
            b_batch_strides: b_strides,
            batch_dims,
            a: MatLayout { row: k, col: 1 },
            b: MatLayout { row: n, col: 1 },
            alpha: 1.0,
            beta: 0.0,
            c: None,
            clamp: None,
            output: output(OP, dtype, &out_shape)?,
        })
    }
}

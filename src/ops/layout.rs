//! The layout ops (ONNX opset 13): Concat, Transpose, Flatten, Reshape, Squeeze, Unsqueeze,
//! Identity and Dropout (inference). Every one writes its output tensor (this API always writes
//! into an output, never returns a view): Flatten, Reshape, Squeeze, Unsqueeze, Identity and
//! Dropout are one contiguous copy ([`LayoutKind::Copy`]), Transpose a strided gather over the
//! input's dimensions merged where the permutation keeps them adjacent
//! ([`LayoutKind::Transpose`]), and Concat a strided copy per input ([`LayoutKind::Concat`]).
//!
//! The inputs that ONNX passes as constant tensors — Reshape's `shape`, Squeeze's and
//! Unsqueeze's `axes`, Dropout's `ratio` and `training_mode` — are attributes here (eia tensors
//! are float only; a model compiler folds constant inputs into attributes).

use super::{indexable, output, same_dtype};
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::tensor::TensorDesc;

/// The most dimensions a Transpose may have once 1-sized dimensions are dropped and those that
/// stay adjacent are merged (what the CUDA kernel indexes).
pub const MAX_TRANSPOSE_RANK: usize = 8;

/// ONNX Concat: the inputs joined along `axis` (negative counts from the end). Every input has
/// the same rank and the same dimensions off the axis; an input may be empty along the axis.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Concat {
    /// ONNX requires it (there is no default).
    pub axis: i64,
}

/// ONNX Transpose: `output.shape[i] = input.shape[perm[i]]`.
#[derive(Clone, Debug, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Transpose {
    /// A permutation of `0..rank`; `None` (the ONNX default) or an empty list reverses the
    /// dimensions (the wire and the C ABI spell "unset" as empty).
    pub perm: Option<Vec<i64>>,
}

/// ONNX Flatten: a 2-D output `[d0·…·d(axis−1), d(axis)·…·d(n−1)]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Flatten {
    /// In `-rank ..= rank`; negative counts from the end. ONNX default: 1.
    pub axis: i64,
}

impl Default for Flatten {
    fn default() -> Self {
        Flatten { axis: 1 }
    }
}

/// ONNX Reshape (opset 14) with its `shape` input as an attribute: a `0` copies the input's
/// dimension at that index (unless `allowzero`, where it is a literal 0) and at most one `-1`
/// is inferred from the element count.
#[derive(Clone, Debug, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Reshape {
    pub shape: Vec<i64>,
    /// ONNX `allowzero` (default false): a `0` in `shape` is a zero-sized dimension, not a copy;
    /// `shape` may then not hold both `0` and `-1`.
    pub allowzero: bool,
}

/// ONNX Squeeze (opset 13) with its `axes` input as an attribute.
#[derive(Clone, Debug, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Squeeze {
    /// The 1-sized dimensions to remove (negative count from the end; each must be 1); `None`
    /// or an empty list removes every 1-sized dimension.
    pub axes: Option<Vec<i64>>,
}

/// ONNX Unsqueeze (opset 13) with its `axes` input as an attribute.
#[derive(Clone, Debug, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Unsqueeze {
    /// Where 1-sized dimensions are inserted, as indices of the output (negative count from the
    /// output's end); required, no duplicates.
    pub axes: Vec<i64>,
}

/// ONNX Dropout in inference mode: the identity. `ratio` (ONNX's optional input) is accepted
/// and ignored; the optional `mask` output is not supported; `training_mode` must be false.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Dropout {
    /// ONNX default 0.5; must lie in `[0, 1)`.
    pub ratio: f32,
    /// ONNX default false; true (training) is refused.
    pub training_mode: bool,
}

impl Default for Dropout {
    fn default() -> Self {
        Dropout {
            ratio: 0.5,
            training_mode: false,
        }
    }
}

/// A validated layout op: what the kernels do, and the output.
#[derive(Clone, Debug, PartialEq)]
pub struct LayoutPlan {
    pub dtype: DType,
    pub kind: LayoutKind,
    pub output: TensorDesc,
}

/// The data movement of a layout plan.
#[derive(Clone, Debug, PartialEq)]
pub enum LayoutKind {
    /// `output.len()` elements copied in order (Flatten, Reshape, Squeeze, Unsqueeze, Identity,
    /// Dropout).
    Copy,
    /// `y[j] = x[i]` with `j` the row-major index over `perm`-ordered `shape` of the element
    /// at `i` in `shape`: `shape` is the input's shape with 1-sized dimensions dropped and
    /// dimensions that stay adjacent in the permutation merged (rank ≥ 2 after merging, else
    /// the kind is `Copy`); `perm` its permutation.
    Transpose { shape: Vec<usize>, perm: Vec<usize> },
    /// The output viewed as `[outer, Σ widths]` with input `i` viewed as `[outer, widths[i]]`
    /// (`widths[i]` = its axis length × the product of the dimensions after the axis) and
    /// copied at column offset `widths[..i].sum()`.
    Concat { outer: usize, widths: Vec<usize> },
}

impl LayoutPlan {
    /// Exact FLOP count: 1 per output element (data movement is charged so no op is free).
    pub fn flops(&self) -> u64 {
        self.output.len() as u64
    }
}

/// Resolves `axis` against `rank` (valid: `-rank ..= rank - 1`, or `..= rank` when `inclusive`).
fn axis(
    op: &'static str,
    name: &'static str,
    axis: i64,
    rank: usize,
    inclusive: bool,
    what: &TensorDesc,
) -> Result<usize> {
    let r = rank as i64;
    let hi = if inclusive { r } else { r - 1 };
    if axis < -r || axis > hi {
        return Err(Error::attribute(
            op,
            name,
            format!(
                "{axis} is out of range for input {:?} (valid: {} ..= {hi})",
                what.shape(),
                -r
            ),
        ));
    }
    Ok(if axis < 0 { axis + r } else { axis } as usize)
}

/// A copy of `x` into the shape `shape` (the same element count).
fn copy(op: &'static str, x: &TensorDesc, shape: &[usize]) -> Result<LayoutPlan> {
    debug_assert_eq!(shape.iter().product::<usize>(), x.len());
    Ok(LayoutPlan {
        dtype: x.dtype(),
        kind: LayoutKind::Copy,
        output: output(op, x.dtype(), shape)?,
    })
}

impl Concat {
    pub fn plan(&self, inputs: &[&TensorDesc]) -> Result<LayoutPlan> {
        const OP: &str = "Concat";
        let first = inputs[0];
        let names: Vec<(&'static str, &TensorDesc)> =
            inputs.iter().map(|&t| ("an input", t)).collect();
        indexable(OP, &names)?;
        let rank = first.rank();
        if rank == 0 {
            return Err(Error::shape(
                OP,
                "inputs must have rank >= 1, input 0 is a scalar",
            ));
        }
        let ax = axis(OP, "axis", self.axis, rank, false, first)?;
        let mut total = 0usize;
        for (i, t) in inputs.iter().enumerate() {
            same_dtype(OP, "inputs", first.dtype(), t)?;
            let off_axis = |s: &[usize]| {
                let mut s = s.to_vec();
                s.remove(ax);
                s
            };
            if t.rank() != rank || off_axis(t.shape()) != off_axis(first.shape()) {
                return Err(Error::shape(
                    OP,
                    format!(
                        "input {i} {:?} does not match input 0 {:?}: every input has rank {rank} \
                         and the same dimensions except along axis {}",
                        t.shape(),
                        first.shape(),
                        self.axis
                    ),
                ));
            }
            total = total
                .checked_add(t.shape()[ax])
                .ok_or(Error::ShapeOverflow {
                    shape: first.shape().to_vec(),
                })?;
        }
        let mut shape = first.shape().to_vec();
        shape[ax] = total;
        let output = output(OP, first.dtype(), &shape)?;
        let inner: usize = shape[ax + 1..].iter().product();
        Ok(LayoutPlan {
            dtype: first.dtype(),
            kind: LayoutKind::Concat {
                outer: shape[..ax].iter().product(),
                widths: inputs.iter().map(|t| t.shape()[ax] * inner).collect(),
            },
            output,
        })
    }
}

impl Transpose {
    pub fn plan(&self, x: &TensorDesc) -> Result<LayoutPlan> {
        const OP: &str = "Transpose";
        indexable(OP, &[("data", x)])?;
        let rank = x.rank();
        let perm: Vec<usize> = match &self.perm {
            None => (0..rank).rev().collect(),
            Some(p) if p.is_empty() => (0..rank).rev().collect(),
            Some(p) => {
                let mut seen = vec![false; rank];
                let bad = p.len() != rank
                    || p.iter().any(|&a| {
                        let ok = a >= 0 && (a as u64) < rank as u64 && !seen[a as usize];
                        if ok {
                            seen[a as usize] = true;
                        }
                        !ok
                    });
                if bad {
                    return Err(Error::attribute(
                        OP,
                        "perm",
                        format!(
                            "{p:?} is not a permutation of 0..{rank} for input {:?}",
                            x.shape()
                        ),
                    ));
                }
                p.iter().map(|&a| a as usize).collect()
            }
        };
        let shape: Vec<usize> = perm.iter().map(|&a| x.shape()[a]).collect();
        let output = output(OP, x.dtype(), &shape)?;
        // Drop 1-sized dimensions, then merge runs that stay adjacent in the permutation.
        let kept: Vec<usize> = perm
            .iter()
            .copied()
            .filter(|&a| x.shape()[a] != 1)
            .collect();
        let mut order: Vec<usize> = kept.clone();
        order.sort_unstable();
        // Input dims (in input order) grouped: a new group starts where the output order breaks.
        let pos = |a: usize| kept.iter().position(|&b| b == a).unwrap();
        let mut groups: Vec<Vec<usize>> = Vec::new();
        for &a in &order {
            match groups.last_mut() {
                Some(g) if pos(*g.last().unwrap()) + 1 == pos(a) => g.push(a),
                _ => groups.push(vec![a]),
            }
        }
        if groups.len() > MAX_TRANSPOSE_RANK {
            return Err(Error::shape(
                OP,
                format!(
                    "perm {perm:?} of data {:?} moves {} separate groups of dimensions; at most \
                     {MAX_TRANSPOSE_RANK} are supported",
                    x.shape(),
                    groups.len()
                ),
            ));
        }
        let kind = if groups.len() <= 1 || x.is_empty() {
            LayoutKind::Copy
        } else {
            let merged: Vec<usize> = groups
                .iter()
                .map(|g| g.iter().map(|&a| x.shape()[a]).product())
                .collect();
            let mut by_out: Vec<usize> = (0..groups.len()).collect();
            by_out.sort_by_key(|&g| pos(groups[g][0]));
            LayoutKind::Transpose {
                shape: merged,
                perm: by_out,
            }
        };
        Ok(LayoutPlan {
            dtype: x.dtype(),
            kind,
            output,
        })
    }
}

impl Flatten {
    pub fn plan(&self, x: &TensorDesc) -> Result<LayoutPlan> {
        const OP: &str = "Flatten";
        indexable(OP, &[("input", x)])?;
        let ax = axis(OP, "axis", self.axis, x.rank(), true, x)?;
        let s = x.shape();
        copy(OP, x, &[s[..ax].iter().product(), s[ax..].iter().product()])
    }
}

impl Reshape {
    pub fn plan(&self, x: &TensorDesc) -> Result<LayoutPlan> {
        const OP: &str = "Reshape";
        indexable(OP, &[("data", x)])?;
        let bad = |msg: String| Err(Error::attribute(OP, "shape", msg));
        let mut shape = Vec::with_capacity(self.shape.len());
        let mut infer = None;
        for (i, &d) in self.shape.iter().enumerate() {
            match d {
                -1 if infer.is_some() => {
                    return bad(format!("{:?} holds more than one -1", self.shape))
                }
                -1 => {
                    infer = Some(i);
                    shape.push(1);
                }
                0 if !self.allowzero => match x.shape().get(i) {
                    Some(&v) => shape.push(v),
                    None => {
                        return bad(format!(
                            "{:?}: the 0 at index {i} copies a dimension input {:?} lacks",
                            self.shape,
                            x.shape()
                        ))
                    }
                },
                d if d < 0 => {
                    return bad(format!(
                        "{:?}: {d} at index {i} is negative (only -1 is allowed)",
                        self.shape
                    ))
                }
                d => match usize::try_from(d) {
                    Ok(v) => shape.push(v),
                    Err(_) => return bad(format!("{:?}: {d} is too large", self.shape)),
                },
            }
        }
        if self.allowzero && infer.is_some() && self.shape.contains(&0) {
            return bad(format!(
                "{:?} holds both 0 and -1, which allowzero forbids",
                self.shape
            ));
        }
        let known = shape
            .iter()
            .try_fold(1usize, |a, &d| a.checked_mul(d))
            .ok_or_else(|| Error::ShapeOverflow {
                shape: shape.clone(),
            })?;
        if let Some(i) = infer {
            if known == 0 || !x.len().is_multiple_of(known) {
                return Err(Error::shape(
                    OP,
                    format!(
                        "shape {:?} cannot hold input {:?} ({} elements): the -1 has no integer \
                         value",
                        self.shape,
                        x.shape(),
                        x.len()
                    ),
                ));
            }
            shape[i] = x.len() / known;
        } else if known != x.len() {
            return Err(Error::shape(
                OP,
                format!(
                    "shape {:?} (resolved {shape:?}, {known} elements) does not hold input {:?} \
                     ({} elements)",
                    self.shape,
                    x.shape(),
                    x.len()
                ),
            ));
        }
        copy(OP, x, &shape)
    }
}

/// Resolves `axes` against `rank`: each in range, no duplicates.
fn axes_set(op: &'static str, axes: &[i64], rank: usize, what: &TensorDesc) -> Result<Vec<bool>> {
    let mut set = vec![false; rank];
    for &a in axes {
        let r = rank as i64;
        if a < -r || a >= r {
            return Err(Error::attribute(
                op,
                "axes",
                format!(
                    "{axes:?}: {a} is out of range for rank {rank} (input {:?}; valid: {} ..= {})",
                    what.shape(),
                    -r,
                    r - 1
                ),
            ));
        }
        let i = a.rem_euclid(r) as usize;
        if set[i] {
            return Err(Error::attribute(
                op,
                "axes",
                format!("{axes:?} names dimension {i} twice"),
            ));
        }
        set[i] = true;
    }
    Ok(set)
}

impl Squeeze {
    pub fn plan(&self, x: &TensorDesc) -> Result<LayoutPlan> {
        const OP: &str = "Squeeze";
        indexable(OP, &[("data", x)])?;
        let s = x.shape();
        let drop = match &self.axes {
            None => s.iter().map(|&d| d == 1).collect(),
            Some(axes) if axes.is_empty() => s.iter().map(|&d| d == 1).collect(),
            Some(axes) => {
                let set = axes_set(OP, axes, x.rank(), x)?;
                if let Some(i) = (0..s.len()).find(|&i| set[i] && s[i] != 1) {
                    return Err(Error::shape(
                        OP,
                        format!(
                            "axes {axes:?}: dimension {i} of data {s:?} is {}, not 1",
                            s[i]
                        ),
                    ));
                }
                set
            }
        };
        let shape: Vec<usize> = (0..s.len()).filter(|&i| !drop[i]).map(|i| s[i]).collect();
        copy(OP, x, &shape)
    }
}

impl Unsqueeze {
    pub fn plan(&self, x: &TensorDesc) -> Result<LayoutPlan> {
        const OP: &str = "Unsqueeze";
        indexable(OP, &[("data", x)])?;
        if self.axes.is_empty() {
            return Err(Error::attribute(
                OP,
                "axes",
                "is required and must name at least one dimension",
            ));
        }
        let rank = x.rank() + self.axes.len();
        let set = axes_set(OP, &self.axes, rank, x)?;
        let mut dims = x.shape().iter();
        let shape: Vec<usize> = set
            .iter()
            .map(|&new| if new { 1 } else { *dims.next().unwrap() })
            .collect();
        copy(OP, x, &shape)
    }
}

/// ONNX Identity.
pub fn identity(x: &TensorDesc) -> Result<LayoutPlan> {
    indexable("Identity", &[("input", x)])?;
    copy("Identity", x, x.shape())
}

impl Dropout {
    pub fn plan(&self, x: &TensorDesc) -> Result<LayoutPlan> {
        const OP: &str = "Dropout";
        indexable(OP, &[("data", x)])?;
        if self.training_mode {
            return Err(Error::attribute(
                OP,
                "training_mode",
                "true is not supported: eia runs inference, where Dropout is the identity",
            ));
        }
        if !(0.0..1.0).contains(&self.ratio) {
            return Err(Error::attribute(
                OP,
                "ratio",
                format!("{} is outside [0, 1)", self.ratio),
            ));
        }
        copy(OP, x, x.shape())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(shape: &[usize]) -> TensorDesc {
        TensorDesc::new(DType::F32, shape).unwrap()
    }

    #[test]
    fn concat_shapes_and_errors() {
        let p = Concat { axis: -2 }
            .plan(&[&d(&[2, 3, 4]), &d(&[2, 0, 4]), &d(&[2, 5, 4])])
            .unwrap();
        assert_eq!(p.output.shape(), &[2, 8, 4]);
        assert_eq!(
            p.kind,
            LayoutKind::Concat {
                outer: 2,
                widths: vec![12, 0, 20]
            }
        );
        assert_eq!(p.flops(), 64);
        assert!(matches!(
            Concat { axis: 1 }.plan(&[&d(&[2, 3]), &d(&[3, 3])]),
            Err(Error::Shape { .. })
        ));
        assert!(matches!(
            Concat { axis: 2 }.plan(&[&d(&[2, 3])]),
            Err(Error::Attribute { name: "axis", .. })
        ));
        assert!(Concat { axis: 0 }.plan(&[&d(&[])]).is_err());
        let h = TensorDesc::new(DType::F16, &[2, 3]).unwrap();
        assert!(matches!(
            Concat { axis: 0 }.plan(&[&d(&[2, 3]), &h]),
            Err(Error::DTypeMismatch { .. })
        ));
    }

    #[test]
    fn transpose_merges_and_validates() {
        let p = Transpose { perm: None }.plan(&d(&[2, 3, 4])).unwrap();
        assert_eq!(p.output.shape(), &[4, 3, 2]);
        let p = Transpose {
            perm: Some(vec![0, 2, 3, 1]),
        }
        .plan(&d(&[2, 3, 4, 5]))
        .unwrap();
        assert_eq!(p.output.shape(), &[2, 4, 5, 3]);
        assert_eq!(
            p.kind,
            LayoutKind::Transpose {
                shape: vec![2, 3, 20],
                perm: vec![0, 2, 1]
            }
        );
        let p = Transpose {
            perm: Some(vec![1, 0, 2]),
        }
        .plan(&d(&[1, 3, 4]))
        .unwrap();
        assert_eq!(p.kind, LayoutKind::Copy);
        for bad in [
            vec![0, 0, 1],
            vec![0, 1],
            vec![0, 1, 3],
            vec![-1, 0, 1],
            vec![0, 1, 2, 3],
        ] {
            assert!(matches!(
                Transpose { perm: Some(bad) }.plan(&d(&[2, 3, 4])),
                Err(Error::Attribute { name: "perm", .. })
            ));
        }
        assert_eq!(
            Transpose { perm: None }
                .plan(&d(&[]))
                .unwrap()
                .output
                .shape(),
            &[] as &[usize]
        );
    }

    #[test]
    fn reshape_flatten_squeeze_unsqueeze() {
        let r = |s: &[i64], z: bool, x: &[usize]| {
            Reshape {
                shape: s.to_vec(),
                allowzero: z,
            }
            .plan(&d(x))
        };
        assert_eq!(
            r(&[0, -1], false, &[2, 3, 4]).unwrap().output.shape(),
            &[2, 12]
        );
        assert_eq!(r(&[0, 5], true, &[0, 3]).unwrap().output.shape(), &[0, 5]);
        assert_eq!(
            r(&[], false, &[1, 1]).unwrap().output.shape(),
            &[] as &[usize]
        );
        assert!(r(&[-1, -1], false, &[4]).is_err());
        assert!(r(&[5], false, &[4]).is_err());
        assert!(r(&[0, -1], true, &[4]).is_err());
        assert!(r(&[-1, 0], false, &[3, 0]).is_err());
        assert_eq!(r(&[-1, 0], false, &[0, 3]).unwrap().output.shape(), &[0, 3]);
        assert!(r(&[-2], false, &[4]).is_err());
        assert!(r(&[0, 0], false, &[4]).is_err());
        let f = |a: i64, x: &[usize]| Flatten { axis: a }.plan(&d(x));
        assert_eq!(f(0, &[2, 3]).unwrap().output.shape(), &[1, 6]);
        assert_eq!(f(-1, &[2, 3, 4]).unwrap().output.shape(), &[6, 4]);
        assert_eq!(f(3, &[2, 3, 4]).unwrap().output.shape(), &[24, 1]);
        assert_eq!(f(0, &[]).unwrap().output.shape(), &[1, 1]);
        assert!(f(4, &[2, 3, 4]).is_err());
        assert!(f(-4, &[2, 3, 4]).is_err());
        let s = |a: Option<Vec<i64>>, x: &[usize]| Squeeze { axes: a }.plan(&d(x));
        assert_eq!(s(None, &[1, 3, 1]).unwrap().output.shape(), &[3]);
        assert_eq!(
            s(Some(vec![-1]), &[1, 3, 1]).unwrap().output.shape(),
            &[1, 3]
        );
        assert!(matches!(
            s(Some(vec![1]), &[1, 3, 1]),
            Err(Error::Shape { .. })
        ));
        assert!(s(Some(vec![0, 0]), &[1, 3]).is_err());
        assert!(s(Some(vec![3]), &[1, 3]).is_err());
        let u = |a: Vec<i64>, x: &[usize]| Unsqueeze { axes: a }.plan(&d(x));
        assert_eq!(u(vec![0, -1], &[3]).unwrap().output.shape(), &[1, 3, 1]);
        assert_eq!(u(vec![0], &[]).unwrap().output.shape(), &[1]);
        assert!(u(vec![], &[3]).is_err());
        assert!(u(vec![0, -3], &[3]).is_err());
        assert!(u(vec![2], &[3]).is_err());
        assert!(Dropout {
            ratio: 0.5,
            training_mode: true
        }
        .plan(&d(&[2]))
        .is_err());
        assert_eq!(identity(&d(&[0, 2])).unwrap().flops(), 0);
    }
}

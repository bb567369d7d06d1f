//! Conv (ONNX, 2-D): NCHW input, OIHW weights, strides, asymmetric pads, dilations, groups
//! (depthwise included), optional bias, auto_pad, and an optional fused residual sum, ReLU and/or
//! Clip: `y = clip?(relu?(conv(x, w) + b + sum))`.

use super::{expect_rank, indexable, output, product, same_dtype, Clamp, Clip, MAX_DIM};
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::tensor::TensorDesc;

const OP: &str = "Conv";

/// ONNX `auto_pad`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum AutoPad {
    /// Use the explicit `pads`.
    #[default]
    #[serde(rename = "NOTSET")]
    NotSet,
    /// Output is `ceil(in / stride)`; odd padding goes at the end.
    #[serde(rename = "SAME_UPPER")]
    SameUpper,
    /// Output is `ceil(in / stride)`; odd padding goes at the beginning.
    #[serde(rename = "SAME_LOWER")]
    SameLower,
    /// No padding.
    #[serde(rename = "VALID")]
    Valid,
}

impl AutoPad {
    /// The ONNX spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            AutoPad::NotSet => "NOTSET",
            AutoPad::SameUpper => "SAME_UPPER",
            AutoPad::SameLower => "SAME_LOWER",
            AutoPad::Valid => "VALID",
        }
    }
}

impl std::str::FromStr for AutoPad {
    type Err = String;

    /// The ONNX spelling; empty is NOTSET.
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        Ok(match s {
            "" | "NOTSET" => AutoPad::NotSet,
            "SAME_UPPER" => AutoPad::SameUpper,
            "SAME_LOWER" => AutoPad::SameLower,
            "VALID" => AutoPad::Valid,
            other => {
                return Err(format!(
                    "{other:?} is not NOTSET, SAME_UPPER, SAME_LOWER or VALID"
                ))
            }
        })
    }
}

/// ONNX Conv attributes for 2-D inputs, plus an optional fused residual sum, ReLU and Clip.
/// Inputs `X, W[, B]`, or `X, W, Sum[, B]` when `sum` is set.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Conv {
    /// `[stride_h, stride_w]`.
    pub strides: [usize; 2],
    /// ONNX order `[top, left, bottom, right]`; used only with `AutoPad::NotSet`.
    pub pads: [usize; 4],
    /// `[dilation_h, dilation_w]`.
    pub dilations: [usize; 2],
    pub group: usize,
    pub auto_pad: AutoPad,
    /// Optional ONNX `kernel_shape`; when given it must match the weights.
    pub kernel_shape: Option<[usize; 2]>,
    /// The third input, `Sum` (the output's shape and dtype), is added after the bias and before
    /// the ReLU or Clip (fused epilogue; a residual Add); the bias, if any, comes after it.
    pub sum: bool,
    /// Apply `max(0, y)` after the bias and sum (fused epilogue).
    pub relu: bool,
    /// Clip `y` to these bounds after the bias and sum (fused epilogue; after the ReLU when
    /// both are set): ReLU6 is `Clip::RELU6`.
    pub clip: Option<Clip>,
}

impl Default for Conv {
    fn default() -> Self {
        Conv {
            strides: [1, 1],
            pads: [0; 4],
            dilations: [1, 1],
            group: 1,
            auto_pad: AutoPad::NotSet,
            kernel_shape: None,
            sum: false,
            relu: false,
            clip: None,
        }
    }
}

/// A validated 2-D convolution. Input `[n, c, h, w]`, weights `[k, c/group, r, s]`, output
/// `[n, k, p, q]`; input row `p·stride_h + r·dilation_h - pad_top` feeds output row `p`.
#[derive(Clone, Debug, PartialEq)]
pub struct ConvPlan {
    pub dtype: DType,
    pub n: usize,
    pub c: usize,
    pub h: usize,
    pub w: usize,
    pub k: usize,
    pub r: usize,
    pub s: usize,
    pub p: usize,
    pub q: usize,
    pub group: usize,
    pub stride: [usize; 2],
    pub dilation: [usize; 2],
    /// Resolved `[top, left]` padding (bottom/right follow from the output size).
    pub pad: [usize; 2],
    pub bias: bool,
    /// Whether a residual `Sum` (input 2; the bias, if any, is then input 3) is added after
    /// the bias.
    pub sum: bool,
    /// The fused ReLU and/or Clip, applied after the bias and sum.
    pub clamp: Option<Clamp>,
    pub output: TensorDesc,
}

impl ConvPlan {
    /// Input channels per group.
    pub fn c_per_group(&self) -> usize {
        self.c / self.group
    }

    /// Output channels per group.
    pub fn k_per_group(&self) -> usize {
        self.k / self.group
    }

    /// The input index of the bias, when there is one (after the sum, when there is one).
    pub fn bias_input(&self) -> Option<usize> {
        self.bias.then_some(2 + usize::from(self.sum))
    }

    /// The input index of the residual sum, when there is one.
    pub fn sum_input(&self) -> Option<usize> {
        self.sum.then_some(2)
    }

    /// Exact FLOP count: `2·N·K·P·Q·(C/group)·R·S`, plus `N·K·P·Q` for a residual sum.
    pub fn flops(&self) -> u64 {
        let sum = match self.sum {
            true => product(&[self.n, self.k, self.p, self.q]),
            false => 0,
        };
        sum + 2 * [
            self.n,
            self.k,
            self.p,
            self.q,
            self.c_per_group(),
            self.r,
            self.s,
        ]
        .iter()
        .map(|&d| d as u64)
        .product::<u64>()
    }
}

impl Conv {
    /// Validates input `x` (NCHW), weights `w` (OIHW), optional bias `[K]` and the residual
    /// `sum` (given exactly when `self.sum` is set; the output's shape and dtype), and resolves
    /// padding and the output shape.
    pub fn plan(
        &self,
        x: &TensorDesc,
        w: &TensorDesc,
        bias: Option<&TensorDesc>,
        sum: Option<&TensorDesc>,
    ) -> Result<ConvPlan> {
        let dtype = x.dtype();
        same_dtype(OP, "W", dtype, w)?;
        indexable(OP, &[("X", x), ("W", w)])?;
        expect_rank(OP, "X", x, 4)?;
        expect_rank(OP, "W", w, 4)?;
        for (name, v) in [("strides", self.strides), ("dilations", self.dilations)] {
            if v.iter().any(|&d| d == 0 || d > MAX_DIM) {
                return Err(Error::attribute(
                    OP,
                    name,
                    format!("must be in 1..={MAX_DIM}, got {v:?}"),
                ));
            }
        }
        let [n, c, h, wd] = [x.shape()[0], x.shape()[1], x.shape()[2], x.shape()[3]];
        let [k, cg, r, s] = [w.shape()[0], w.shape()[1], w.shape()[2], w.shape()[3]];
        let group = self.group;
        if group == 0 {
            return Err(Error::attribute(OP, "group", "must be >= 1, got 0"));
        }
        if c % group != 0 || k % group != 0 {
            return Err(Error::attribute(
                OP,
                "group",
                format!("{group} must divide input channels C={c} and output channels K={k}"),
            ));
        }
        if cg != c / group {
            return Err(Error::shape(
                OP,
                format!(
                    "W {:?} has {cg} input channels per group, X {:?} with group={group} needs {}",
                    w.shape(),
                    x.shape(),
                    c / group
                ),
            ));
        }
        if r == 0 || s == 0 {
            return Err(Error::shape(
                OP,
                format!("W {:?} has an empty kernel", w.shape()),
            ));
        }
        if let Some(ks) = self.kernel_shape {
            if ks != [r, s] {
                return Err(Error::attribute(
                    OP,
                    "kernel_shape",
                    format!("{ks:?} does not match the weights' kernel [{r}, {s}]"),
                ));
            }
        }
        if let Some(b) = bias {
            same_dtype(OP, "B", dtype, b)?;
            if b.shape() != [k] {
                return Err(Error::shape(
                    OP,
                    format!(
                        "bias B must have shape [{k}] (one per output channel), got {:?}",
                        b.shape()
                    ),
                ));
            }
        }
        let (pad_h, p) = self.resolve_axis(0, h, r)?;
        let (pad_w, q) = self.resolve_axis(1, wd, s)?;
        let output = output(OP, dtype, &[n, k, p, q])?;
        if self.sum != sum.is_some() {
            let given = if self.sum {
                "no Sum input"
            } else {
                "a Sum input"
            };
            return Err(Error::attribute(
                OP,
                "sum",
                format!("is {}, but {given} was given", self.sum),
            ));
        }
        if let Some(sum) = sum {
            same_dtype(OP, "Sum", dtype, sum)?;
            if sum.shape() != output.shape() {
                return Err(Error::shape(
                    OP,
                    format!(
                        "the residual Sum must have the output's shape {:?} (no broadcasting), got {:?}",
                        output.shape(),
                        sum.shape()
                    ),
                ));
            }
        }
        Ok(ConvPlan {
            dtype,
            n,
            c,
            h,
            w: wd,
            k,
            r,
            s,
            p,
            q,
            group,
            stride: self.strides,
            dilation: self.dilations,
            pad: [pad_h, pad_w],
            bias: bias.is_some(),
            sum: self.sum,
            clamp: Clamp::fused(OP, self.relu, self.clip.as_ref())?,
            output,
        })
    }

    /// Padding at the beginning and the output size along spatial axis `axis` (0 = H, 1 = W).
    fn resolve_axis(&self, axis: usize, input: usize, kernel: usize) -> Result<(usize, usize)> {
        let window = Window {
            op: OP,
            auto_pad: self.auto_pad,
            pads: self.pads,
            strides: self.strides,
            dilations: self.dilations,
            ceil_mode: false,
        };
        let a = window.resolve_axis(axis, input, kernel)?;
        Ok((a.begin, a.out))
    }
}

/// The sliding-window geometry Conv and the pools share: how `auto_pad`, `pads`, `strides`,
/// `dilations` and `ceil_mode` resolve each spatial axis.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Window {
    pub op: &'static str,
    pub auto_pad: AutoPad,
    /// ONNX order `[top, left, bottom, right]`; used only with `AutoPad::NotSet`.
    pub pads: [usize; 4],
    pub strides: [usize; 2],
    pub dilations: [usize; 2],
    /// Round the output size up (pools), keeping only windows that start inside the input or
    /// its leading padding (onnxruntime's rule).
    pub ceil_mode: bool,
}

/// One resolved spatial axis.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Axis {
    /// Padding at the beginning and at the end.
    pub begin: usize,
    pub end: usize,
    /// Output size.
    pub out: usize,
}

impl Window {
    /// Padding and the output size along spatial axis `axis` (0 = H, 1 = W) of an input of
    /// `input` elements and a kernel of `kernel` taps. Sizes that overflow `usize` (huge
    /// dilations or pads) are refused, not wrapped.
    pub fn resolve_axis(&self, axis: usize, input: usize, kernel: usize) -> Result<Axis> {
        let op = self.op;
        let stride = self.strides[axis];
        let name = ["H", "W"][axis];
        let extent = self.dilations[axis]
            .checked_mul(kernel - 1)
            .and_then(|e| e.checked_add(1))
            .ok_or_else(|| {
                Error::attribute(
                    op,
                    "dilations",
                    format!(
                        "{:?}: the dilated kernel ({kernel} taps on the {name} axis) overflows",
                        self.dilations
                    ),
                )
            })?;
        let (begin, end) = match self.auto_pad {
            AutoPad::NotSet => (self.pads[axis], self.pads[axis + 2]),
            AutoPad::Valid => (0, 0),
            AutoPad::SameUpper | AutoPad::SameLower => {
                let out = input.div_ceil(stride);
                // (out - 1)·stride < input, so only the extent can overflow here.
                let total = ((out.max(1) - 1) * stride)
                    .checked_add(extent)
                    .ok_or_else(|| {
                        Error::attribute(
                            op,
                            "dilations",
                            format!("{:?}: the padding SAME needs overflows", self.dilations),
                        )
                    })?
                    .saturating_sub(input);
                let small = total / 2;
                if self.auto_pad == AutoPad::SameUpper {
                    (small, total - small)
                } else {
                    (total - small, small)
                }
            }
        };
        let padded = input
            .checked_add(begin)
            .and_then(|v| v.checked_add(end))
            .ok_or_else(|| {
                Error::attribute(
                    op,
                    "pads",
                    format!(
                        "{:?}: the padded {name} axis (input {input} + {begin} + {end}) overflows",
                        self.pads
                    ),
                )
            })?;
        if padded > MAX_DIM {
            return Err(Error::attribute(
                op,
                "pads",
                format!(
                    "{:?}: the padded {name} axis (input {input} + {begin} + {end}) exceeds {MAX_DIM}, the most any backend indexes",
                    self.pads
                ),
            ));
        }
        if padded < extent {
            return Err(Error::shape(
                op,
                format!(
                    "{name} axis: padded input {padded} (input {input} + pads {begin}+{end}) is smaller than the dilated kernel {extent}"
                ),
            ));
        }
        let mut out = (padded - extent) / stride + 1;
        if self.ceil_mode && (padded - extent) % stride != 0 {
            out += 1;
            // The last window must start inside the input or its leading padding.
            if (out - 1) * stride >= input + begin {
                out -= 1;
            }
        }
        Ok(Axis { begin, end, out })
    }
}

//! Pooling (ONNX): MaxPool and AveragePool over 2-D NCHW inputs (kernel_shape, strides, pads,
//! ceil_mode, auto_pad; dilations for MaxPool, count_include_pad for AveragePool), and
//! GlobalMaxPool / GlobalAveragePool over every spatial axis of an input of rank ≥ 3.
//!
//! Semantics follow onnxruntime: padding never wins a MaxPool (it is `-inf`), nor does a NaN
//! input (a window of NaNs gives `-inf`; onnxruntime: the lowest finite float); with ceil_mode
//! the last window must start inside the input or its leading padding; AveragePool with
//! `count_include_pad` divides by the window's positions inside the padded input (padding
//! included, positions that ceil_mode adds beyond the trailing padding excluded), without it by
//! the input elements in the window. Like onnxruntime, explicit pads must be smaller than the
//! kernel. Where they differ: `SAME_*` padding counts the dilated kernel (the ONNX formula;
//! onnxruntime uses the undilated one), and a MaxPool window that holds no input element
//! (possible only with dilations) gives `-inf` (onnxruntime: the lowest finite float).
//! MaxPool's optional second output, Indices, is not supported (so `storage_order` must be 0).

use super::conv::{AutoPad, Window};
use super::{expect_rank, indexable, output, product, MAX_DIM};
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::tensor::TensorDesc;

/// ONNX MaxPool attributes (2-D). `kernel_shape` is required (no default: `[0, 0]` is refused).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MaxPool {
    /// `[kernel_h, kernel_w]`.
    pub kernel_shape: [usize; 2],
    /// `[stride_h, stride_w]`.
    pub strides: [usize; 2],
    /// ONNX order `[top, left, bottom, right]`; used only with `AutoPad::NotSet`.
    pub pads: [usize; 4],
    /// `[dilation_h, dilation_w]`.
    pub dilations: [usize; 2],
    pub ceil_mode: bool,
    pub auto_pad: AutoPad,
    /// Layout of the Indices output, which is not supported: must be 0.
    pub storage_order: i64,
}

impl Default for MaxPool {
    fn default() -> Self {
        MaxPool {
            kernel_shape: [0, 0],
            strides: [1, 1],
            pads: [0; 4],
            dilations: [1, 1],
            ceil_mode: false,
            auto_pad: AutoPad::NotSet,
            storage_order: 0,
        }
    }
}

/// ONNX AveragePool attributes (2-D). `kernel_shape` is required (`[0, 0]` is refused).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AveragePool {
    /// `[kernel_h, kernel_w]`.
    pub kernel_shape: [usize; 2],
    /// `[stride_h, stride_w]`.
    pub strides: [usize; 2],
    /// ONNX order `[top, left, bottom, right]`; used only with `AutoPad::NotSet`.
    pub pads: [usize; 4],
    pub ceil_mode: bool,
    /// Divide by the window's positions inside the padded input rather than by its input
    /// elements.
    pub count_include_pad: bool,
    pub auto_pad: AutoPad,
}

impl Default for AveragePool {
    fn default() -> Self {
        AveragePool {
            kernel_shape: [0, 0],
            strides: [1, 1],
            pads: [0; 4],
            ceil_mode: false,
            count_include_pad: false,
            auto_pad: AutoPad::NotSet,
        }
    }
}

/// What a window reduces to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PoolKind {
    /// The largest input element (padding never counts).
    Max,
    /// The mean of the input elements.
    Average,
    /// The sum of the input elements over the window's positions inside the padded input.
    AverageIncludePad,
}

/// A validated pooling: `n·c` planes `[h, w]`, each pooled with an `r × s` window (taps
/// `dilation` apart) into `[p, q]`. Output row `op` reads input rows `op·stride_h +
/// i·dilation_h − pad_top`, `i < r`, those outside `[0, h)` being padding. A global pool is the
/// plane flattened to `[1, h·w]` with a `1 × h·w` window (`global`).
#[derive(Clone, Debug, PartialEq)]
pub struct PoolPlan {
    pub dtype: DType,
    pub kind: PoolKind,
    /// GlobalMaxPool / GlobalAveragePool (then `h = r = p = q = 1`, `s = w`).
    pub global: bool,
    pub n: usize,
    pub c: usize,
    pub h: usize,
    pub w: usize,
    pub r: usize,
    pub s: usize,
    pub p: usize,
    pub q: usize,
    pub stride: [usize; 2],
    pub dilation: [usize; 2],
    /// Resolved `[top, left]` padding.
    pub pad: [usize; 2],
    /// The padded extent `[pad_top + h + pad_bottom, pad_left + w + pad_right]`:
    /// `AverageIncludePad` counts the window's positions below it.
    pub padded: [usize; 2],
    pub output: TensorDesc,
}

impl PoolPlan {
    /// Exact FLOP count: the window's taps (padding included) per output element, which for a
    /// global pool is one per input element.
    pub fn flops(&self) -> u64 {
        product(&[self.n, self.c, self.p, self.q, self.r, self.s])
    }

    /// Planes (`n·c`).
    pub fn planes(&self) -> usize {
        self.n * self.c
    }
}

impl MaxPool {
    /// Validates input `x` (NCHW) against the attributes and resolves the output.
    pub fn plan(&self, x: &TensorDesc) -> Result<PoolPlan> {
        const OP: &str = "MaxPool";
        if self.storage_order != 0 {
            return Err(Error::attribute(
                OP,
                "storage_order",
                format!(
                    "only 0 is supported (it orders the Indices output, which is not supported), got {}",
                    self.storage_order
                ),
            ));
        }
        let window = Window {
            op: OP,
            auto_pad: self.auto_pad,
            pads: self.pads,
            strides: self.strides,
            dilations: self.dilations,
            ceil_mode: self.ceil_mode,
        };
        plan_2d(window, self.kernel_shape, PoolKind::Max, x)
    }
}

impl AveragePool {
    /// Validates input `x` (NCHW) against the attributes and resolves the output.
    pub fn plan(&self, x: &TensorDesc) -> Result<PoolPlan> {
        let window = Window {
            op: "AveragePool",
            auto_pad: self.auto_pad,
            pads: self.pads,
            strides: self.strides,
            dilations: [1, 1],
            ceil_mode: self.ceil_mode,
        };
        let kind = if self.count_include_pad {
            PoolKind::AverageIncludePad
        } else {
            PoolKind::Average
        };
        plan_2d(window, self.kernel_shape, kind, x)
    }
}

fn plan_2d(window: Window, kernel: [usize; 2], kind: PoolKind, x: &TensorDesc) -> Result<PoolPlan> {
    let op = window.op;
    indexable(op, &[("X", x)])?;
    expect_rank(op, "X", x, 4)?;
    for (name, v) in [
        ("kernel_shape", kernel),
        ("strides", window.strides),
        ("dilations", window.dilations),
    ] {
        if v.iter().any(|&d| d == 0 || d > MAX_DIM) {
            let required = if name == "kernel_shape" {
                " (it is required)"
            } else {
                ""
            };
            return Err(Error::attribute(
                op,
                name,
                format!("must be in 1..={MAX_DIM}, got {v:?}{required}"),
            ));
        }
    }
    if window.auto_pad == AutoPad::NotSet {
        let p = window.pads;
        if (0..4).any(|i| p[i] >= kernel[i % 2]) {
            return Err(Error::attribute(
                op,
                "pads",
                format!("{p:?}: each pad must be smaller than the kernel {kernel:?} on its axis"),
            ));
        }
    }
    let [n, c, h, w] = [x.shape()[0], x.shape()[1], x.shape()[2], x.shape()[3]];
    if h == 0 || w == 0 {
        return Err(Error::shape(
            op,
            format!("X {:?} has an empty spatial axis", x.shape()),
        ));
    }
    let ah = window.resolve_axis(0, h, kernel[0])?;
    let aw = window.resolve_axis(1, w, kernel[1])?;
    Ok(PoolPlan {
        dtype: x.dtype(),
        kind,
        global: false,
        n,
        c,
        h,
        w,
        r: kernel[0],
        s: kernel[1],
        p: ah.out,
        q: aw.out,
        stride: window.strides,
        dilation: window.dilations,
        pad: [ah.begin, aw.begin],
        padded: [ah.begin + h + ah.end, aw.begin + w + aw.end],
        output: output(op, x.dtype(), &[n, c, ah.out, aw.out])?,
    })
}

/// GlobalMaxPool (`max = true`) or GlobalAveragePool of `x` (rank ≥ 3): every spatial axis
/// reduced to 1.
pub fn plan_global(max: bool, x: &TensorDesc) -> Result<PoolPlan> {
    let op = if max {
        "GlobalMaxPool"
    } else {
        "GlobalAveragePool"
    };
    indexable(op, &[("X", x)])?;
    let shape = x.shape();
    if shape.len() < 3 {
        return Err(Error::shape(
            op,
            format!(
                "X must have rank >= 3 ([N, C, spatial...]), got shape {shape:?} (rank {})",
                shape.len()
            ),
        ));
    }
    if shape[2..].contains(&0) {
        return Err(Error::shape(
            op,
            format!("X {shape:?} has an empty spatial axis"),
        ));
    }
    let len: usize = shape[2..].iter().product();
    if len > MAX_DIM {
        return Err(Error::shape(
            op,
            format!("X {shape:?} has {len} spatial elements per plane, more than the {MAX_DIM} any backend indexes"),
        ));
    }
    let mut out = shape.to_vec();
    out[2..].fill(1);
    Ok(PoolPlan {
        dtype: x.dtype(),
        kind: if max {
            PoolKind::Max
        } else {
            PoolKind::Average
        },
        global: true,
        n: shape[0],
        c: shape[1],
        h: 1,
        w: len,
        r: 1,
        s: len,
        p: 1,
        q: 1,
        stride: [1, 1],
        dilation: [1, 1],
        pad: [0, 0],
        padded: [1, len],
        output: output(op, x.dtype(), &out)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Error;

    fn x(shape: &[usize]) -> TensorDesc {
        TensorDesc::new(DType::F32, shape).unwrap()
    }

    fn max(k: usize) -> MaxPool {
        MaxPool {
            kernel_shape: [k, k],
            ..MaxPool::default()
        }
    }

    #[test]
    fn output_sizes() {
        // ResNet-50 stem: 3x3 s2 p1 on 112 → 56.
        let m = MaxPool {
            strides: [2, 2],
            pads: [1; 4],
            ..max(3)
        };
        let p = m.plan(&x(&[2, 64, 112, 112])).unwrap();
        assert_eq!(p.output.shape(), [2, 64, 56, 56]);
        assert_eq!(p.flops(), 2 * 64 * 56 * 56 * 9);
        // ceil_mode: 5 with k2 s2 → 3 (last window ragged); pads [1,1,1,1] k3 s2 on 5: 3 either way.
        let c = MaxPool {
            strides: [2, 2],
            ceil_mode: true,
            ..max(2)
        };
        assert_eq!(
            c.plan(&x(&[1, 1, 5, 5])).unwrap().output.shape(),
            [1, 1, 3, 3]
        );
        // The last window would start in the trailing padding: dropped.
        let a = AveragePool {
            kernel_shape: [2, 2],
            strides: [3, 3],
            pads: [1, 1, 1, 1],
            ceil_mode: true,
            ..AveragePool::default()
        };
        assert_eq!(
            a.plan(&x(&[1, 1, 5, 5])).unwrap().output.shape(),
            [1, 1, 2, 2]
        );
        // SAME: ceil(in / stride), with ceil_mode too.
        for auto_pad in [AutoPad::SameUpper, AutoPad::SameLower] {
            for ceil_mode in [false, true] {
                let m = MaxPool {
                    strides: [3, 3],
                    auto_pad,
                    ceil_mode,
                    ..max(2)
                };
                assert_eq!(
                    m.plan(&x(&[1, 1, 5, 7])).unwrap().output.shape(),
                    [1, 1, 2, 3]
                );
            }
        }
        let v = MaxPool {
            auto_pad: AutoPad::Valid,
            pads: [9; 4],
            dilations: [2, 1],
            ..max(3)
        };
        assert_eq!(
            v.plan(&x(&[1, 1, 5, 5])).unwrap().output.shape(),
            [1, 1, 1, 3]
        );
    }

    #[test]
    fn global_pools() {
        let p = plan_global(false, &x(&[2, 3, 4, 5, 6])).unwrap();
        assert_eq!(p.output.shape(), [2, 3, 1, 1, 1]);
        assert_eq!((p.w, p.s, p.flops()), (120, 120, 720));
        assert_eq!(
            plan_global(true, &x(&[2, 3, 4])).unwrap().output.shape(),
            [2, 3, 1]
        );
        assert!(matches!(
            plan_global(true, &x(&[2, 3])),
            Err(Error::Shape { .. })
        ));
        assert!(matches!(
            plan_global(true, &x(&[2, 3, 0])),
            Err(Error::Shape { .. })
        ));
        assert_eq!(plan_global(true, &x(&[0, 3, 2])).unwrap().flops(), 0);
    }

    #[test]
    fn bad_attributes_are_refused() {
        let attr = |r: Result<PoolPlan>, name: &str| match r {
            Err(Error::Attribute { name: n, .. }) => assert_eq!(n, name),
            other => panic!("{other:?}"),
        };
        attr(MaxPool::default().plan(&x(&[1, 1, 4, 4])), "kernel_shape");
        attr(
            MaxPool {
                strides: [0, 1],
                ..max(2)
            }
            .plan(&x(&[1, 1, 4, 4])),
            "strides",
        );
        attr(
            MaxPool {
                dilations: [1, 0],
                ..max(2)
            }
            .plan(&x(&[1, 1, 4, 4])),
            "dilations",
        );
        attr(
            MaxPool {
                pads: [0, 0, 2, 0],
                ..max(2)
            }
            .plan(&x(&[1, 1, 4, 4])),
            "pads",
        );
        attr(
            MaxPool {
                storage_order: 1,
                ..max(2)
            }
            .plan(&x(&[1, 1, 4, 4])),
            "storage_order",
        );
        let big = MaxPool { ..max(6) }.plan(&x(&[1, 1, 5, 5]));
        assert!(matches!(big, Err(Error::Shape { .. })), "{big:?}");
        assert!(matches!(
            max(2).plan(&x(&[1, 4, 4])),
            Err(Error::Shape { .. })
        ));
        assert!(matches!(
            max(1).plan(&x(&[1, 1, 0, 4])),
            Err(Error::Shape { .. })
        ));
    }
}

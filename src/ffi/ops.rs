//! The ops across the C ABI, with their ONNX attributes as plain C structs (each with an
//! `_default()` giving the ONNX defaults) turned into an [`Op`] and run through the one entry
//! point, [`crate::Backend::apply`]. Every op allocates its output on the accelerator.

use std::sync::Arc;

use super::accelerator::{eia_accelerator, Accel};
use super::error::{eia_error, guard, Outcome};
use super::tensor::{eia_tensor, on_accel, Held};
use super::{elements, required};
use crate::ops::{Add, AutoPad, BatchNorm, Conv, Gemm, Op, Softmax};
use crate::tensor::Tensor;

/// ONNX `auto_pad` (one of the `EIA_AUTO_PAD_*` values).
pub type eia_auto_pad_t = u32;
/// Use the explicit `pads`.
pub const EIA_AUTO_PAD_NOTSET: eia_auto_pad_t = 0;
/// Output size `ceil(in / stride)`; odd padding at the end.
pub const EIA_AUTO_PAD_SAME_UPPER: eia_auto_pad_t = 1;
/// Output size `ceil(in / stride)`; odd padding at the beginning.
pub const EIA_AUTO_PAD_SAME_LOWER: eia_auto_pad_t = 2;
/// No padding.
pub const EIA_AUTO_PAD_VALID: eia_auto_pad_t = 3;

/// ONNX Gemm attributes: `Y = relu?(alpha·A'·B' + beta·C)`.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct eia_gemm_attrs {
    pub alpha: f32,
    pub beta: f32,
    pub trans_a: bool,
    pub trans_b: bool,
    /// Apply max(0, y) to the result (fused; not an ONNX attribute).
    pub relu: bool,
}

/// ONNX Conv attributes for 2-D NCHW input and OIHW weights.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct eia_conv_attrs {
    /// {stride_h, stride_w}.
    pub strides: [usize; 2],
    /// ONNX order {top, left, bottom, right}; used only with `EIA_AUTO_PAD_NOTSET`.
    pub pads: [usize; 4],
    /// {dilation_h, dilation_w}.
    pub dilations: [usize; 2],
    pub group: usize,
    /// One of the `EIA_AUTO_PAD_*` values.
    pub auto_pad: eia_auto_pad_t,
    /// {kernel_h, kernel_w}, checked against the weights; {0, 0} takes them from the weights.
    pub kernel_shape: [usize; 2],
    /// Apply max(0, y) after the bias (fused; not an ONNX attribute).
    pub relu: bool,
}

/// ONNX BatchNormalization attributes (inference form).
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct eia_batch_norm_attrs {
    pub epsilon: f32,
}

/// ONNX Softmax attributes (opset 13).
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct eia_softmax_attrs {
    /// The reduced axis; negative values count from the end.
    pub axis: i64,
}

/// Add attributes: ONNX Add has none; `relu` fuses the ReLU that follows it (ResNet's residual
/// Add → Relu).
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct eia_add_attrs {
    /// Apply max(0, y) to the sum (fused; not an ONNX attribute).
    pub relu: bool,
}

impl From<&eia_gemm_attrs> for Gemm {
    fn from(a: &eia_gemm_attrs) -> Self {
        Gemm {
            alpha: a.alpha,
            beta: a.beta,
            trans_a: a.trans_a,
            trans_b: a.trans_b,
            relu: a.relu,
        }
    }
}

impl TryFrom<&eia_conv_attrs> for Conv {
    type Error = eia_error;
    fn try_from(a: &eia_conv_attrs) -> Result<Self, eia_error> {
        let auto_pad = match a.auto_pad {
            EIA_AUTO_PAD_NOTSET => AutoPad::NotSet,
            EIA_AUTO_PAD_SAME_UPPER => AutoPad::SameUpper,
            EIA_AUTO_PAD_SAME_LOWER => AutoPad::SameLower,
            EIA_AUTO_PAD_VALID => AutoPad::Valid,
            other => {
                return Err(eia_error::invalid(format!(
                    "auto_pad {other} is unknown: use one of EIA_AUTO_PAD_NOTSET, _SAME_UPPER, \
                     _SAME_LOWER, _VALID (0-3)"
                )))
            }
        };
        Ok(Conv {
            strides: a.strides,
            pads: a.pads,
            dilations: a.dilations,
            group: a.group,
            auto_pad,
            kernel_shape: (a.kernel_shape != [0, 0]).then_some(a.kernel_shape),
            relu: a.relu,
        })
    }
}

/// Gemm's ONNX defaults: alpha 1, beta 1, no transposes, no ReLU.
#[no_mangle]
pub extern "C" fn eia_gemm_attrs_default() -> eia_gemm_attrs {
    let d = Gemm::default();
    eia_gemm_attrs {
        alpha: d.alpha,
        beta: d.beta,
        trans_a: d.trans_a,
        trans_b: d.trans_b,
        relu: d.relu,
    }
}

/// Conv's ONNX defaults: strides 1, no pads, dilations 1, group 1, NOTSET, kernel from weights.
#[no_mangle]
pub extern "C" fn eia_conv_attrs_default() -> eia_conv_attrs {
    let d = Conv::default();
    eia_conv_attrs {
        strides: d.strides,
        pads: d.pads,
        dilations: d.dilations,
        group: d.group,
        auto_pad: EIA_AUTO_PAD_NOTSET,
        kernel_shape: [0, 0],
        relu: d.relu,
    }
}

/// BatchNormalization's ONNX default: epsilon 1e-5.
#[no_mangle]
pub extern "C" fn eia_batch_norm_attrs_default() -> eia_batch_norm_attrs {
    eia_batch_norm_attrs {
        epsilon: BatchNorm::default().epsilon,
    }
}

/// Softmax's ONNX default: axis -1.
#[no_mangle]
pub extern "C" fn eia_softmax_attrs_default() -> eia_softmax_attrs {
    eia_softmax_attrs {
        axis: Softmax::default().axis,
    }
}

/// Add's default: no fused ReLU.
#[no_mangle]
pub extern "C" fn eia_add_attrs_default() -> eia_add_attrs {
    eia_add_attrs {
        relu: Add::default().relu,
    }
}

/// Runs `op` on `accelerator` over `inputs` (in the op's ONNX order; `None`: an optional input
/// left out, always last) and hands the new output to `out`.
fn run(
    accelerator: &eia_accelerator,
    op: Op,
    inputs: &[Option<&eia_tensor>],
    out: &mut *mut eia_tensor,
) -> Outcome {
    let accel = &accelerator.accel;
    *out = on_accel!(&**accel, b => eia_tensor::new(accel, b.wrap(apply(b, accel, &op, inputs)?)));
    Ok(())
}

fn apply<B: Held>(
    b: &B,
    accel: &Arc<Accel>,
    op: &Op,
    inputs: &[Option<&eia_tensor>],
) -> Result<Tensor<B::Storage>, eia_error> {
    let x = inputs
        .iter()
        .flatten()
        .map(|t| t.on::<B>(accel))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(b.apply(op, &x)?)
}

/// ONNX Gemm: `Y = relu?(alpha·A'·B' + beta·C)` for 2-D `a`, `b`; `c` (unidirectionally
/// broadcast to Y) may be NULL.
#[no_mangle]
pub extern "C" fn eia_gemm(
    accelerator: Option<&eia_accelerator>,
    attrs: Option<&eia_gemm_attrs>,
    a: Option<&eia_tensor>,
    b: Option<&eia_tensor>,
    c: Option<&eia_tensor>,
    y: Option<&mut *mut eia_tensor>,
) -> Option<Box<eia_error>> {
    guard(|| {
        let accelerator = required(accelerator, "accelerator")?;
        let op = Op::Gemm(required(attrs, "attrs")?.into());
        let inputs = [Some(required(a, "a")?), Some(required(b, "b")?), c];
        run(accelerator, op, &inputs, required(y, "y")?)
    })
}

/// ONNX MatMul: numpy-style matrix product with batch broadcasting.
#[no_mangle]
pub extern "C" fn eia_matmul(
    accelerator: Option<&eia_accelerator>,
    a: Option<&eia_tensor>,
    b: Option<&eia_tensor>,
    y: Option<&mut *mut eia_tensor>,
) -> Option<Box<eia_error>> {
    guard(|| {
        let accelerator = required(accelerator, "accelerator")?;
        let inputs = [Some(required(a, "a")?), Some(required(b, "b")?)];
        run(accelerator, Op::MatMul, &inputs, required(y, "y")?)
    })
}

/// ONNX Conv (2-D): `x` is NCHW, `w` is OIHW (I = C / group); `bias` (length O) may be NULL.
#[no_mangle]
pub extern "C" fn eia_conv(
    accelerator: Option<&eia_accelerator>,
    attrs: Option<&eia_conv_attrs>,
    x: Option<&eia_tensor>,
    w: Option<&eia_tensor>,
    bias: Option<&eia_tensor>,
    y: Option<&mut *mut eia_tensor>,
) -> Option<Box<eia_error>> {
    guard(|| {
        let accelerator = required(accelerator, "accelerator")?;
        let op = Op::Conv(required(attrs, "attrs")?.try_into()?);
        let inputs = [Some(required(x, "x")?), Some(required(w, "w")?), bias];
        run(accelerator, op, &inputs, required(y, "y")?)
    })
}

/// ONNX BatchNormalization (inference): per channel (dimension 1) of `x`,
/// `y = scale·(x − mean)/√(var + epsilon) + bias`.
#[no_mangle]
pub extern "C" fn eia_batch_norm(
    accelerator: Option<&eia_accelerator>,
    attrs: Option<&eia_batch_norm_attrs>,
    x: Option<&eia_tensor>,
    scale: Option<&eia_tensor>,
    bias: Option<&eia_tensor>,
    mean: Option<&eia_tensor>,
    var: Option<&eia_tensor>,
    y: Option<&mut *mut eia_tensor>,
) -> Option<Box<eia_error>> {
    guard(|| {
        let accelerator = required(accelerator, "accelerator")?;
        let op = Op::BatchNorm(BatchNorm {
            epsilon: required(attrs, "attrs")?.epsilon,
        });
        let inputs = [
            Some(required(x, "x")?),
            Some(required(scale, "scale")?),
            Some(required(bias, "bias")?),
            Some(required(mean, "mean")?),
            Some(required(var, "var")?),
        ];
        run(accelerator, op, &inputs, required(y, "y")?)
    })
}

/// ONNX Softmax (opset 13) along `attrs->axis`.
#[no_mangle]
pub extern "C" fn eia_softmax(
    accelerator: Option<&eia_accelerator>,
    attrs: Option<&eia_softmax_attrs>,
    x: Option<&eia_tensor>,
    y: Option<&mut *mut eia_tensor>,
) -> Option<Box<eia_error>> {
    guard(|| {
        let accelerator = required(accelerator, "accelerator")?;
        let op = Op::Softmax(Softmax {
            axis: required(attrs, "attrs")?.axis,
        });
        let inputs = [Some(required(x, "x")?)];
        run(accelerator, op, &inputs, required(y, "y")?)
    })
}

/// ONNX Add with numpy broadcasting of `a` and `b`, `relu` fused when `attrs->relu`.
#[no_mangle]
pub extern "C" fn eia_add(
    accelerator: Option<&eia_accelerator>,
    attrs: Option<&eia_add_attrs>,
    a: Option<&eia_tensor>,
    b: Option<&eia_tensor>,
    y: Option<&mut *mut eia_tensor>,
) -> Option<Box<eia_error>> {
    guard(|| {
        let accelerator = required(accelerator, "accelerator")?;
        let op = Op::Add(Add {
            relu: required(attrs, "attrs")?.relu,
        });
        let inputs = [Some(required(a, "a")?), Some(required(b, "b")?)];
        run(accelerator, op, &inputs, required(y, "y")?)
    })
}

/// One of Sub, Mul, Div over `a`, `b`.
fn binary(
    op: Op,
    accelerator: Option<&eia_accelerator>,
    a: Option<&eia_tensor>,
    b: Option<&eia_tensor>,
    y: Option<&mut *mut eia_tensor>,
) -> Option<Box<eia_error>> {
    guard(|| {
        let accelerator = required(accelerator, "accelerator")?;
        let inputs = [Some(required(a, "a")?), Some(required(b, "b")?)];
        run(accelerator, op, &inputs, required(y, "y")?)
    })
}

/// ONNX Sub (`a − b`) with numpy broadcasting.
#[no_mangle]
pub extern "C" fn eia_sub(
    accelerator: Option<&eia_accelerator>,
    a: Option<&eia_tensor>,
    b: Option<&eia_tensor>,
    y: Option<&mut *mut eia_tensor>,
) -> Option<Box<eia_error>> {
    binary(Op::Sub, accelerator, a, b, y)
}

/// ONNX Mul with numpy broadcasting.
#[no_mangle]
pub extern "C" fn eia_mul(
    accelerator: Option<&eia_accelerator>,
    a: Option<&eia_tensor>,
    b: Option<&eia_tensor>,
    y: Option<&mut *mut eia_tensor>,
) -> Option<Box<eia_error>> {
    binary(Op::Mul, accelerator, a, b, y)
}

/// ONNX Div (`a / b`, IEEE: x/0 is ±inf, 0/0 NaN) with numpy broadcasting.
#[no_mangle]
pub extern "C" fn eia_div(
    accelerator: Option<&eia_accelerator>,
    a: Option<&eia_tensor>,
    b: Option<&eia_tensor>,
    y: Option<&mut *mut eia_tensor>,
) -> Option<Box<eia_error>> {
    binary(Op::Div, accelerator, a, b, y)
}

/// ONNX Sum of `n_inputs` tensors (1 to 64) with numpy broadcasting, accumulated in FP32.
///
/// # Safety
/// `inputs` points to `n_inputs` tensor pointers (it may be NULL when `n_inputs` is 0).
#[no_mangle]
pub unsafe extern "C" fn eia_sum(
    accelerator: Option<&eia_accelerator>,
    inputs: *const Option<&eia_tensor>,
    n_inputs: usize,
    y: Option<&mut *mut eia_tensor>,
) -> Option<Box<eia_error>> {
    guard(|| {
        let accelerator = required(accelerator, "accelerator")?;
        // SAFETY: the caller's contract.
        let list = unsafe { elements(inputs, n_inputs, "inputs") }?;
        let inputs = list
            .iter()
            .map(|t| required(*t, "inputs[i]").map(Some))
            .collect::<Result<Vec<_>, _>>()?;
        run(accelerator, Op::Sum, &inputs, required(y, "y")?)
    })
}

//! The ops across the C ABI, with their ONNX attributes as plain C structs (each with an
//! `_default()` giving the ONNX defaults) turned into an [`Op`] and run through the one entry
//! point, [`crate::Backend::apply`]. Every op allocates its output on the accelerator.

use std::sync::Arc;

use super::accelerator::{eia_accelerator, Accel};
use super::error::{eia_error, guard, Outcome};
use super::required;
use super::tensor::{eia_tensor, on_accel, Held};
use crate::ops::{AutoPad, AveragePool, BatchNorm, Conv, Gemm, MaxPool, Op, Softmax};
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
        let auto_pad = auto_pad_from(a.auto_pad)?;
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

/// ONNX MaxPool attributes (2-D NCHW). Only the Y output is computed (not Indices).
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct eia_max_pool_attrs {
    /// {kernel_h, kernel_w}; required (the default {0, 0} is refused).
    pub kernel_shape: [usize; 2],
    /// {stride_h, stride_w}.
    pub strides: [usize; 2],
    /// ONNX order {top, left, bottom, right}; used only with `EIA_AUTO_PAD_NOTSET`; each must
    /// be smaller than the kernel on its axis.
    pub pads: [usize; 4],
    /// {dilation_h, dilation_w}.
    pub dilations: [usize; 2],
    pub ceil_mode: bool,
    /// One of the `EIA_AUTO_PAD_*` values.
    pub auto_pad: eia_auto_pad_t,
    /// Only 0 is supported (it orders the Indices output).
    pub storage_order: i64,
}

/// ONNX AveragePool attributes (2-D NCHW).
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct eia_average_pool_attrs {
    /// {kernel_h, kernel_w}; required (the default {0, 0} is refused).
    pub kernel_shape: [usize; 2],
    /// {stride_h, stride_w}.
    pub strides: [usize; 2],
    /// ONNX order {top, left, bottom, right}; used only with `EIA_AUTO_PAD_NOTSET`; each must
    /// be smaller than the kernel on its axis.
    pub pads: [usize; 4],
    pub ceil_mode: bool,
    /// Divide by the window's positions inside the padded input, not its input elements.
    pub count_include_pad: bool,
    /// One of the `EIA_AUTO_PAD_*` values.
    pub auto_pad: eia_auto_pad_t,
}

/// `auto_pad` from its `EIA_AUTO_PAD_*` value.
fn auto_pad_from(v: eia_auto_pad_t) -> Result<AutoPad, eia_error> {
    Ok(match v {
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
    })
}

impl TryFrom<&eia_max_pool_attrs> for MaxPool {
    type Error = eia_error;
    fn try_from(a: &eia_max_pool_attrs) -> Result<Self, eia_error> {
        Ok(MaxPool {
            kernel_shape: a.kernel_shape,
            strides: a.strides,
            pads: a.pads,
            dilations: a.dilations,
            ceil_mode: a.ceil_mode,
            auto_pad: auto_pad_from(a.auto_pad)?,
            storage_order: a.storage_order,
        })
    }
}

impl TryFrom<&eia_average_pool_attrs> for AveragePool {
    type Error = eia_error;
    fn try_from(a: &eia_average_pool_attrs) -> Result<Self, eia_error> {
        Ok(AveragePool {
            kernel_shape: a.kernel_shape,
            strides: a.strides,
            pads: a.pads,
            ceil_mode: a.ceil_mode,
            count_include_pad: a.count_include_pad,
            auto_pad: auto_pad_from(a.auto_pad)?,
        })
    }
}

/// MaxPool's ONNX defaults: strides 1, no pads, dilations 1, no ceil_mode, NOTSET,
/// storage_order 0; kernel_shape {0, 0} (must be set).
#[no_mangle]
pub extern "C" fn eia_max_pool_attrs_default() -> eia_max_pool_attrs {
    let d = MaxPool::default();
    eia_max_pool_attrs {
        kernel_shape: d.kernel_shape,
        strides: d.strides,
        pads: d.pads,
        dilations: d.dilations,
        ceil_mode: d.ceil_mode,
        auto_pad: EIA_AUTO_PAD_NOTSET,
        storage_order: d.storage_order,
    }
}

/// AveragePool's ONNX defaults: strides 1, no pads, no ceil_mode, count_include_pad 0,
/// NOTSET; kernel_shape {0, 0} (must be set).
#[no_mangle]
pub extern "C" fn eia_average_pool_attrs_default() -> eia_average_pool_attrs {
    let d = AveragePool::default();
    eia_average_pool_attrs {
        kernel_shape: d.kernel_shape,
        strides: d.strides,
        pads: d.pads,
        ceil_mode: d.ceil_mode,
        count_include_pad: d.count_include_pad,
        auto_pad: EIA_AUTO_PAD_NOTSET,
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

/// ONNX MaxPool (2-D): `x` is NCHW; only the Y output (not Indices).
#[no_mangle]
pub extern "C" fn eia_max_pool(
    accelerator: Option<&eia_accelerator>,
    attrs: Option<&eia_max_pool_attrs>,
    x: Option<&eia_tensor>,
    y: Option<&mut *mut eia_tensor>,
) -> Option<Box<eia_error>> {
    guard(|| {
        let accelerator = required(accelerator, "accelerator")?;
        let op = Op::MaxPool(required(attrs, "attrs")?.try_into()?);
        run(
            accelerator,
            op,
            &[Some(required(x, "x")?)],
            required(y, "y")?,
        )
    })
}

/// ONNX AveragePool (2-D): `x` is NCHW.
#[no_mangle]
pub extern "C" fn eia_average_pool(
    accelerator: Option<&eia_accelerator>,
    attrs: Option<&eia_average_pool_attrs>,
    x: Option<&eia_tensor>,
    y: Option<&mut *mut eia_tensor>,
) -> Option<Box<eia_error>> {
    guard(|| {
        let accelerator = required(accelerator, "accelerator")?;
        let op = Op::AveragePool(required(attrs, "attrs")?.try_into()?);
        run(
            accelerator,
            op,
            &[Some(required(x, "x")?)],
            required(y, "y")?,
        )
    })
}

/// ONNX GlobalAveragePool: the mean over every spatial axis of `x` (rank >= 3).
#[no_mangle]
pub extern "C" fn eia_global_average_pool(
    accelerator: Option<&eia_accelerator>,
    x: Option<&eia_tensor>,
    y: Option<&mut *mut eia_tensor>,
) -> Option<Box<eia_error>> {
    guard(|| {
        let accelerator = required(accelerator, "accelerator")?;
        let inputs = [Some(required(x, "x")?)];
        run(
            accelerator,
            Op::GlobalAveragePool,
            &inputs,
            required(y, "y")?,
        )
    })
}

/// ONNX GlobalMaxPool: the largest element over every spatial axis of `x` (rank >= 3).
#[no_mangle]
pub extern "C" fn eia_global_max_pool(
    accelerator: Option<&eia_accelerator>,
    x: Option<&eia_tensor>,
    y: Option<&mut *mut eia_tensor>,
) -> Option<Box<eia_error>> {
    guard(|| {
        let accelerator = required(accelerator, "accelerator")?;
        let inputs = [Some(required(x, "x")?)];
        run(accelerator, Op::GlobalMaxPool, &inputs, required(y, "y")?)
    })
}

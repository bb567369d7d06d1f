//! The ops across the C ABI, with their ONNX attributes as plain C structs (each with an
//! `_default()` giving the ONNX defaults) turned into an [`Op`] and run through the one entry
//! point, [`crate::Backend::apply`]. Every op allocates its output on the accelerator.

use std::sync::Arc;

use super::accelerator::{eia_accelerator, Accel};
use super::error::{eia_error, guard, Outcome};
use super::tensor::{eia_tensor, on_accel, Held};
use super::{elements, required};
use crate::ops::{
    Add, AutoPad, AveragePool, BatchNorm, Clip, Concat, Conv, Dropout, Flatten, Gemm, LeakyRelu,
    Lrn, MaxPool, Op, Reshape, Softmax, Squeeze, Transpose, Unsqueeze, MAX_INPUTS,
};
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

/// ONNX Gemm attributes: `Y = clip?(relu?(alpha·A'·B' + beta·C))`.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct eia_gemm_attrs {
    pub alpha: f32,
    pub beta: f32,
    pub trans_a: bool,
    pub trans_b: bool,
    /// Apply max(0, y) to the result (fused; not an ONNX attribute).
    pub relu: bool,
    /// Clip the result to [clip_min, clip_max] after the ReLU (fused; not an ONNX attribute);
    /// `-INFINITY` / `INFINITY`: no bound on that side (the default: no Clip).
    pub clip_min: f32,
    pub clip_max: f32,
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
    /// Clip to [clip_min, clip_max] after the bias and ReLU (fused; not an ONNX attribute; ReLU6:
    /// 0 and 6); `-INFINITY` / `INFINITY`: no bound on that side (the default: no Clip).
    pub clip_min: f32,
    pub clip_max: f32,
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

/// ONNX Clip bounds (ONNX's constant `min`/`max` inputs, as attributes). `-INFINITY` / `INFINITY`:
/// no bound on that side (ReLU6: min 0, max 6).
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct eia_clip_attrs {
    pub min: f32,
    pub max: f32,
}

/// ONNX LeakyRelu attributes.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct eia_leaky_relu_attrs {
    /// Slope for x < 0 (finite).
    pub alpha: f32,
}

impl From<&eia_clip_attrs> for Clip {
    fn from(a: &eia_clip_attrs) -> Self {
        Clip {
            min: (a.min != f32::NEG_INFINITY).then_some(a.min),
            max: (a.max != f32::INFINITY).then_some(a.max),
        }
    }
}

/// A Conv's or Gemm's fused Clip from its `clip_min` / `clip_max`: none when both are infinite.
fn fused_clip(min: f32, max: f32) -> Option<Clip> {
    let clip = Clip::from(&eia_clip_attrs { min, max });
    (clip != Clip::default()).then_some(clip)
}

/// `clip_min` / `clip_max` of an optional fused Clip.
fn clip_bounds(clip: Option<Clip>) -> [f32; 2] {
    clip.unwrap_or_default().bounds()
}

/// Add attributes: ONNX Add has none; `relu` fuses the ReLU that follows it (ResNet's residual
/// Add → Relu).
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct eia_add_attrs {
    /// Apply max(0, y) to the sum (fused; not an ONNX attribute).
    pub relu: bool,
}

/// ONNX Concat attributes.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct eia_concat_attrs {
    /// The joined axis (required by ONNX); negative values count from the end.
    pub axis: i64,
}

/// ONNX Transpose attributes.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct eia_transpose_attrs {
    /// `n_perm` values, a permutation of 0..rank; NULL / 0 reverses the dimensions (the ONNX
    /// default). Read during the call only.
    pub perm: *const i64,
    pub n_perm: usize,
}

/// ONNX Flatten attributes.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct eia_flatten_attrs {
    /// In -rank ..= rank; negative values count from the end. ONNX default: 1.
    pub axis: i64,
}

/// ONNX Reshape attributes (its `shape` input as an attribute).
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct eia_reshape_attrs {
    /// `n_shape` values: a 0 copies the input's dimension (unless `allowzero`), one -1 is
    /// inferred. Read during the call only.
    pub shape: *const i64,
    pub n_shape: usize,
    /// ONNX allowzero: a 0 is a zero-sized dimension (then no -1 may appear with it).
    pub allowzero: bool,
}

/// ONNX Squeeze and Unsqueeze attributes (their `axes` input as an attribute).
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct eia_axes_attrs {
    /// `n_axes` values, negative counting from the end (Unsqueeze: of the output). Squeeze:
    /// NULL / 0 removes every 1-sized dimension; Unsqueeze requires at least one. Read during
    /// the call only.
    pub axes: *const i64,
    pub n_axes: usize,
}

/// ONNX Dropout attributes (inference: the identity).
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct eia_dropout_attrs {
    /// In [0, 1); accepted and ignored. ONNX default 0.5.
    pub ratio: f32,
    /// Must be false (training is refused).
    pub training_mode: bool,
}

/// ONNX LRN attributes.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct eia_lrn_attrs {
    /// Channels in the window, >= 1 (odd or even); required (the default 0 is refused).
    pub size: usize,
    /// Finite, >= 0. ONNX default 1e-4.
    pub alpha: f32,
    /// Finite. ONNX default 0.75.
    pub beta: f32,
    /// Finite, > 0. ONNX default 1.0.
    pub bias: f32,
}

/// The `n` values at `p` (NULL with `n` = 0 is empty).
///
/// # Safety
/// `p` points to `n` readable values, or `n` is 0.
unsafe fn values(p: *const i64, n: usize, name: &str) -> Result<Vec<i64>, eia_error> {
    if n == 0 {
        return Ok(Vec::new());
    }
    if p.is_null() {
        return Err(eia_error::null(name));
    }
    // SAFETY: non-null with `n` values per the contract above.
    Ok(unsafe { std::slice::from_raw_parts(p, n) }.to_vec())
}

impl From<&eia_gemm_attrs> for Gemm {
    fn from(a: &eia_gemm_attrs) -> Self {
        Gemm {
            alpha: a.alpha,
            beta: a.beta,
            trans_a: a.trans_a,
            trans_b: a.trans_b,
            relu: a.relu,
            clip: fused_clip(a.clip_min, a.clip_max),
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
            sum: false,
            relu: a.relu,
            clip: fused_clip(a.clip_min, a.clip_max),
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

/// Gemm's ONNX defaults: alpha 1, beta 1, no transposes, no ReLU, no Clip.
#[no_mangle]
pub extern "C" fn eia_gemm_attrs_default() -> eia_gemm_attrs {
    let d = Gemm::default();
    let [clip_min, clip_max] = clip_bounds(d.clip);
    eia_gemm_attrs {
        alpha: d.alpha,
        beta: d.beta,
        trans_a: d.trans_a,
        trans_b: d.trans_b,
        relu: d.relu,
        clip_min,
        clip_max,
    }
}

/// Conv's ONNX defaults: strides 1, no pads, dilations 1, group 1, NOTSET, kernel from weights,
/// no ReLU, no Clip.
#[no_mangle]
pub extern "C" fn eia_conv_attrs_default() -> eia_conv_attrs {
    let d = Conv::default();
    let [clip_min, clip_max] = clip_bounds(d.clip);
    eia_conv_attrs {
        strides: d.strides,
        pads: d.pads,
        dilations: d.dilations,
        group: d.group,
        auto_pad: EIA_AUTO_PAD_NOTSET,
        kernel_shape: [0, 0],
        relu: d.relu,
        clip_min,
        clip_max,
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

/// Clip's ONNX default: no bounds (min -INFINITY, max INFINITY).
#[no_mangle]
pub extern "C" fn eia_clip_attrs_default() -> eia_clip_attrs {
    eia_clip_attrs {
        min: f32::NEG_INFINITY,
        max: f32::INFINITY,
    }
}

/// LeakyRelu's ONNX default: alpha 0.01.
#[no_mangle]
pub extern "C" fn eia_leaky_relu_attrs_default() -> eia_leaky_relu_attrs {
    eia_leaky_relu_attrs {
        alpha: LeakyRelu::default().alpha,
    }
}

/// Add's default: no fused ReLU.
#[no_mangle]
pub extern "C" fn eia_add_attrs_default() -> eia_add_attrs {
    eia_add_attrs {
        relu: Add::default().relu,
    }
}

/// ONNX Concat's default axis (ONNX requires one): 0.
#[no_mangle]
pub extern "C" fn eia_concat_attrs_default() -> eia_concat_attrs {
    eia_concat_attrs { axis: 0 }
}

/// Transpose's ONNX default: reverse the dimensions (no perm).
#[no_mangle]
pub extern "C" fn eia_transpose_attrs_default() -> eia_transpose_attrs {
    eia_transpose_attrs {
        perm: std::ptr::null(),
        n_perm: 0,
    }
}

/// Flatten's ONNX default: axis 1.
#[no_mangle]
pub extern "C" fn eia_flatten_attrs_default() -> eia_flatten_attrs {
    eia_flatten_attrs {
        axis: Flatten::default().axis,
    }
}

/// Reshape's defaults: an empty shape (a scalar), allowzero false.
#[no_mangle]
pub extern "C" fn eia_reshape_attrs_default() -> eia_reshape_attrs {
    eia_reshape_attrs {
        shape: std::ptr::null(),
        n_shape: 0,
        allowzero: false,
    }
}

/// No axes (Squeeze: every 1-sized dimension).
#[no_mangle]
pub extern "C" fn eia_axes_attrs_default() -> eia_axes_attrs {
    eia_axes_attrs {
        axes: std::ptr::null(),
        n_axes: 0,
    }
}

/// Dropout's ONNX defaults: ratio 0.5, training_mode false.
#[no_mangle]
pub extern "C" fn eia_dropout_attrs_default() -> eia_dropout_attrs {
    let d = Dropout::default();
    eia_dropout_attrs {
        ratio: d.ratio,
        training_mode: d.training_mode,
    }
}

/// LRN's ONNX defaults (alpha 1e-4, beta 0.75, bias 1.0); `size` 0, which the caller must set.
#[no_mangle]
pub extern "C" fn eia_lrn_attrs_default() -> eia_lrn_attrs {
    let d = Lrn::default();
    eia_lrn_attrs {
        size: d.size,
        alpha: d.alpha,
        beta: d.beta,
        bias: d.bias,
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

/// ONNX Gemm: `Y = clip?(relu?(alpha·A'·B' + beta·C))` for 2-D `a`, `b`; `c` (unidirectionally
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

/// [`eia_conv`] with a fused residual sum (not ONNX; ResNet's `Add`): `sum`, of the output's
/// shape and dtype, is added after the bias and before `attrs`' ReLU and Clip:
/// `y = clip(relu(conv(x, w) + bias + sum))`. `bias` may be NULL; `sum` may not.
#[no_mangle]
pub extern "C" fn eia_conv_sum(
    accelerator: Option<&eia_accelerator>,
    attrs: Option<&eia_conv_attrs>,
    x: Option<&eia_tensor>,
    w: Option<&eia_tensor>,
    bias: Option<&eia_tensor>,
    sum: Option<&eia_tensor>,
    y: Option<&mut *mut eia_tensor>,
) -> Option<Box<eia_error>> {
    guard(|| {
        let accelerator = required(accelerator, "accelerator")?;
        let op = Op::Conv(Conv {
            sum: true,
            ..required(attrs, "attrs")?.try_into()?
        });
        let inputs = [
            Some(required(x, "x")?),
            Some(required(w, "w")?),
            Some(required(sum, "sum")?),
            bias,
        ];
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

/// Runs a one-input op `op` on `x` into a new `*y`.
fn run_unary(
    accelerator: Option<&eia_accelerator>,
    op: Op,
    x: Option<&eia_tensor>,
    y: Option<&mut *mut eia_tensor>,
) -> Outcome {
    run_unary_with(accelerator, x, y, || Ok(op))
}

/// Runs a one-input op on `x` into a new `*y`, the op built (from its attrs) after the
/// accelerator and `x` are checked.
fn run_unary_with(
    accelerator: Option<&eia_accelerator>,
    x: Option<&eia_tensor>,
    y: Option<&mut *mut eia_tensor>,
    op: impl FnOnce() -> Result<Op, eia_error>,
) -> Outcome {
    let accelerator = required(accelerator, "accelerator")?;
    let inputs = [Some(required(x, "x")?)];
    run(accelerator, op()?, &inputs, required(y, "y")?)
}

/// ONNX Relu: `max(x, 0)` elementwise (NaN stays NaN).
#[no_mangle]
pub extern "C" fn eia_relu(
    accelerator: Option<&eia_accelerator>,
    x: Option<&eia_tensor>,
    y: Option<&mut *mut eia_tensor>,
) -> Option<Box<eia_error>> {
    guard(|| run_unary(accelerator, Op::Relu, x, y))
}

/// ONNX Clip: `min(max(x, attrs->min), attrs->max)` elementwise; min > max or a NaN bound is an
/// attribute error.
#[no_mangle]
pub extern "C" fn eia_clip(
    accelerator: Option<&eia_accelerator>,
    attrs: Option<&eia_clip_attrs>,
    x: Option<&eia_tensor>,
    y: Option<&mut *mut eia_tensor>,
) -> Option<Box<eia_error>> {
    guard(|| {
        let op = Op::Clip(required(attrs, "attrs")?.into());
        run_unary(accelerator, op, x, y)
    })
}

/// ONNX LeakyRelu: `x` for x >= 0, `attrs->alpha · x` otherwise.
#[no_mangle]
pub extern "C" fn eia_leaky_relu(
    accelerator: Option<&eia_accelerator>,
    attrs: Option<&eia_leaky_relu_attrs>,
    x: Option<&eia_tensor>,
    y: Option<&mut *mut eia_tensor>,
) -> Option<Box<eia_error>> {
    guard(|| {
        let op = Op::LeakyRelu(LeakyRelu {
            alpha: required(attrs, "attrs")?.alpha,
        });
        run_unary(accelerator, op, x, y)
    })
}

/// ONNX Sigmoid: `1 / (1 + e^-x)` elementwise.
#[no_mangle]
pub extern "C" fn eia_sigmoid(
    accelerator: Option<&eia_accelerator>,
    x: Option<&eia_tensor>,
    y: Option<&mut *mut eia_tensor>,
) -> Option<Box<eia_error>> {
    guard(|| run_unary(accelerator, Op::Sigmoid, x, y))
}

/// ONNX Tanh elementwise.
#[no_mangle]
pub extern "C" fn eia_tanh(
    accelerator: Option<&eia_accelerator>,
    x: Option<&eia_tensor>,
    y: Option<&mut *mut eia_tensor>,
) -> Option<Box<eia_error>> {
    guard(|| run_unary(accelerator, Op::Tanh, x, y))
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
    guard(|| run_unary(accelerator, Op::GlobalAveragePool, x, y))
}

/// ONNX GlobalMaxPool: the largest element over every spatial axis of `x` (rank >= 3).
#[no_mangle]
pub extern "C" fn eia_global_max_pool(
    accelerator: Option<&eia_accelerator>,
    x: Option<&eia_tensor>,
    y: Option<&mut *mut eia_tensor>,
) -> Option<Box<eia_error>> {
    guard(|| run_unary(accelerator, Op::GlobalMaxPool, x, y))
}

/// Runs a one-input op built from its (required) attrs.
fn unary(
    accelerator: Option<&eia_accelerator>,
    x: Option<&eia_tensor>,
    y: Option<&mut *mut eia_tensor>,
    op: impl FnOnce() -> Result<Op, eia_error>,
) -> Option<Box<eia_error>> {
    guard(|| run_unary_with(accelerator, x, y, op))
}

/// ONNX Concat of `n_inputs` tensors (1 to 64) along `attrs->axis`.
///
/// # Safety
/// `inputs` points to `n_inputs` tensor handles (or is NULL with `n_inputs` 0).
#[no_mangle]
pub unsafe extern "C" fn eia_concat(
    accelerator: Option<&eia_accelerator>,
    attrs: Option<&eia_concat_attrs>,
    inputs: *const Option<&eia_tensor>,
    n_inputs: usize,
    y: Option<&mut *mut eia_tensor>,
) -> Option<Box<eia_error>> {
    guard(|| {
        let accelerator = required(accelerator, "accelerator")?;
        let op = Op::Concat(Concat {
            axis: required(attrs, "attrs")?.axis,
        });
        if n_inputs > MAX_INPUTS {
            return Err(eia_error::invalid(format!(
                "Concat takes 1 to {MAX_INPUTS} inputs, got {n_inputs}"
            )));
        }
        let list: &[Option<&eia_tensor>] = if n_inputs == 0 {
            &[]
        } else if inputs.is_null() {
            return Err(eia_error::null("inputs"));
        } else {
            // SAFETY: `n_inputs` handles per the contract above.
            unsafe { std::slice::from_raw_parts(inputs, n_inputs) }
        };
        let list = list
            .iter()
            .enumerate()
            .map(|(i, t)| {
                t.map(Some)
                    .ok_or_else(|| eia_error::null(&format!("inputs[{i}]")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        run(accelerator, op, &list, required(y, "y")?)
    })
}

/// ONNX Transpose by `attrs->perm`.
///
/// # Safety
/// `attrs->perm` points to `attrs->n_perm` values (or `n_perm` is 0).
#[no_mangle]
pub unsafe extern "C" fn eia_transpose(
    accelerator: Option<&eia_accelerator>,
    attrs: Option<&eia_transpose_attrs>,
    x: Option<&eia_tensor>,
    y: Option<&mut *mut eia_tensor>,
) -> Option<Box<eia_error>> {
    unary(accelerator, x, y, || {
        let a = required(attrs, "attrs")?;
        // SAFETY: the caller's contract.
        let perm = unsafe { values(a.perm, a.n_perm, "attrs->perm") }?;
        Ok(Op::Transpose(Transpose {
            perm: (!perm.is_empty()).then_some(perm),
        }))
    })
}

/// ONNX Flatten at `attrs->axis`: a 2-D output.
#[no_mangle]
pub extern "C" fn eia_flatten(
    accelerator: Option<&eia_accelerator>,
    attrs: Option<&eia_flatten_attrs>,
    x: Option<&eia_tensor>,
    y: Option<&mut *mut eia_tensor>,
) -> Option<Box<eia_error>> {
    unary(accelerator, x, y, || {
        Ok(Op::Flatten(Flatten {
            axis: required(attrs, "attrs")?.axis,
        }))
    })
}

/// ONNX Reshape to `attrs->shape`.
///
/// # Safety
/// `attrs->shape` points to `attrs->n_shape` values (or `n_shape` is 0).
#[no_mangle]
pub unsafe extern "C" fn eia_reshape(
    accelerator: Option<&eia_accelerator>,
    attrs: Option<&eia_reshape_attrs>,
    x: Option<&eia_tensor>,
    y: Option<&mut *mut eia_tensor>,
) -> Option<Box<eia_error>> {
    unary(accelerator, x, y, || {
        let a = required(attrs, "attrs")?;
        Ok(Op::Reshape(Reshape {
            // SAFETY: the caller's contract.
            shape: unsafe { values(a.shape, a.n_shape, "attrs->shape") }?,
            allowzero: a.allowzero,
        }))
    })
}

/// ONNX Squeeze of `attrs->axes` (none: every 1-sized dimension).
///
/// # Safety
/// `attrs->axes` points to `attrs->n_axes` values (or `n_axes` is 0).
#[no_mangle]
pub unsafe extern "C" fn eia_squeeze(
    accelerator: Option<&eia_accelerator>,
    attrs: Option<&eia_axes_attrs>,
    x: Option<&eia_tensor>,
    y: Option<&mut *mut eia_tensor>,
) -> Option<Box<eia_error>> {
    unary(accelerator, x, y, || {
        let a = required(attrs, "attrs")?;
        // SAFETY: the caller's contract.
        let axes = unsafe { values(a.axes, a.n_axes, "attrs->axes") }?;
        Ok(Op::Squeeze(Squeeze {
            axes: (!axes.is_empty()).then_some(axes),
        }))
    })
}

/// ONNX Unsqueeze at `attrs->axes` (indices of the output).
///
/// # Safety
/// `attrs->axes` points to `attrs->n_axes` values (or `n_axes` is 0).
#[no_mangle]
pub unsafe extern "C" fn eia_unsqueeze(
    accelerator: Option<&eia_accelerator>,
    attrs: Option<&eia_axes_attrs>,
    x: Option<&eia_tensor>,
    y: Option<&mut *mut eia_tensor>,
) -> Option<Box<eia_error>> {
    unary(accelerator, x, y, || {
        let a = required(attrs, "attrs")?;
        Ok(Op::Unsqueeze(Unsqueeze {
            // SAFETY: the caller's contract.
            axes: unsafe { values(a.axes, a.n_axes, "attrs->axes") }?,
        }))
    })
}

/// ONNX Identity: a copy of `x`.
#[no_mangle]
pub extern "C" fn eia_identity(
    accelerator: Option<&eia_accelerator>,
    x: Option<&eia_tensor>,
    y: Option<&mut *mut eia_tensor>,
) -> Option<Box<eia_error>> {
    unary(accelerator, x, y, || Ok(Op::Identity))
}

/// ONNX Dropout in inference: a copy of `x` (no mask output; training_mode must be false).
#[no_mangle]
pub extern "C" fn eia_dropout(
    accelerator: Option<&eia_accelerator>,
    attrs: Option<&eia_dropout_attrs>,
    x: Option<&eia_tensor>,
    y: Option<&mut *mut eia_tensor>,
) -> Option<Box<eia_error>> {
    unary(accelerator, x, y, || {
        let a = required(attrs, "attrs")?;
        Ok(Op::Dropout(Dropout {
            ratio: a.ratio,
            training_mode: a.training_mode,
        }))
    })
}

/// ONNX LRN across the channels of `x` ([N, C, spatial...], rank >= 3):
/// `y = x / (bias + alpha / size · Σ x²)^beta`, the sum over the window of `attrs->size`
/// channels.
#[no_mangle]
pub extern "C" fn eia_lrn(
    accelerator: Option<&eia_accelerator>,
    attrs: Option<&eia_lrn_attrs>,
    x: Option<&eia_tensor>,
    y: Option<&mut *mut eia_tensor>,
) -> Option<Box<eia_error>> {
    unary(accelerator, x, y, || {
        let a = required(attrs, "attrs")?;
        Ok(Op::Lrn(Lrn {
            size: a.size,
            alpha: a.alpha,
            beta: a.beta,
            bias: a.bias,
        }))
    })
}

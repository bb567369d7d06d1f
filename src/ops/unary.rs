//! Elementwise activations (ONNX opset 13+): Relu, Clip, LeakyRelu, Sigmoid, Tanh. One input
//! `X` of any shape (scalars and empty tensors included), one output of the same dtype and shape.
//!
//! - `Relu`: `max(x, 0)`.
//! - `Clip`: `min(max(x, min), max)`. ONNX passes `min` and `max` as optional constant input
//!   tensors; here they are attributes (the model compiler folds the constants in). Each may be
//!   unset, meaning no bound on that side; ReLU6 is `Clip { min: Some(0.0), max: Some(6.0) }`.
//! - `LeakyRelu`: `x` for `x ≥ 0`, `alpha·x` otherwise (ONNX default `alpha = 0.01`).
//! - `Sigmoid`: `1 / (1 + e^−x)`; `+∞` gives 1, `−∞` gives 0, large negative inputs underflow to
//!   (at worst) 0, never NaN.
//! - `Tanh`: saturates to ±1 (`±∞` included).
//!
//! NaN inputs give NaN outputs for every activation, as onnxruntime does (its Relu and Clip are
//! Eigen `cwiseMax`/`cwiseMin`, which keep a NaN left operand; LeakyRelu computes `alpha·x` for
//! it). FP16 storage is computed in FP32 and rounded once.

use super::{indexable, product};
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::tensor::TensorDesc;

/// ONNX Clip bounds (constant inputs folded into attributes). `None`: no bound on that side.
#[derive(Clone, Copy, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Clip {
    /// Lower bound; `None` = −∞ (ONNX: the `min` input left out).
    pub min: Option<f32>,
    /// Upper bound; `None` = +∞ (ONNX: the `max` input left out).
    pub max: Option<f32>,
}

impl Clip {
    /// ReLU6: `Clip(0, 6)` (MobileNet).
    pub const RELU6: Clip = Clip {
        min: Some(0.0),
        max: Some(6.0),
    };
}

/// ONNX LeakyRelu attributes.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LeakyRelu {
    /// Slope for `x < 0`. ONNX default: 0.01. Must be finite.
    pub alpha: f32,
}

impl Default for LeakyRelu {
    fn default() -> Self {
        LeakyRelu { alpha: 0.01 }
    }
}

/// The activation a unary plan computes, with its resolved parameters.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Activation {
    Relu,
    /// Bounds resolved: an unset bound is the matching infinity; `min <= max`, neither NaN.
    Clip {
        min: f32,
        max: f32,
    },
    LeakyRelu {
        alpha: f32,
    },
    Sigmoid,
    Tanh,
}

impl Activation {
    /// The ONNX op type.
    pub fn name(self) -> &'static str {
        match self {
            Activation::Relu => "Relu",
            Activation::Clip { .. } => "Clip",
            Activation::LeakyRelu { .. } => "LeakyRelu",
            Activation::Sigmoid => "Sigmoid",
            Activation::Tanh => "Tanh",
        }
    }

    /// FLOPs charged per element: 1 for Relu, Clip and LeakyRelu, 4 for Sigmoid and Tanh.
    pub fn flops_per_element(self) -> u64 {
        match self {
            Activation::Relu | Activation::Clip { .. } | Activation::LeakyRelu { .. } => 1,
            Activation::Sigmoid | Activation::Tanh => 4,
        }
    }

    /// The activation of one value in f64 (for references and tests).
    pub fn eval_f64(self, x: f64) -> f64 {
        match self {
            Activation::Relu => {
                if x < 0.0 {
                    0.0
                } else {
                    x
                }
            }
            Activation::Clip { min, max } => {
                let v = if x < min as f64 { min as f64 } else { x };
                if v > max as f64 {
                    max as f64
                } else {
                    v
                }
            }
            Activation::LeakyRelu { alpha } => {
                if x < 0.0 {
                    alpha as f64 * x
                } else {
                    x
                }
            }
            Activation::Sigmoid => 1.0 / (1.0 + (-x).exp()),
            Activation::Tanh => x.tanh(),
        }
    }

    /// Validates `x` and makes the plan.
    pub fn plan(self, x: &TensorDesc) -> Result<UnaryPlan> {
        let op = self.name();
        indexable(op, &[("X", x)])?;
        match self {
            Activation::Clip { min, max } => check_bounds(op, ["min", "max"], min, max)?,
            Activation::LeakyRelu { alpha } if !alpha.is_finite() => {
                return Err(Error::attribute(
                    op,
                    "alpha",
                    format!("{alpha} is not a finite number"),
                ));
            }
            _ => {}
        }
        Ok(UnaryPlan {
            dtype: x.dtype(),
            len: x.len(),
            activation: self,
            output: x.clone(),
        })
    }
}

impl Clip {
    /// `[min, max]` with unset bounds resolved to infinities.
    pub fn bounds(&self) -> [f32; 2] {
        [
            self.min.unwrap_or(f32::NEG_INFINITY),
            self.max.unwrap_or(f32::INFINITY),
        ]
    }

    /// The activation with unset bounds resolved to infinities.
    pub fn activation(&self) -> Activation {
        let [min, max] = self.bounds();
        Activation::Clip { min, max }
    }
}

/// Checks resolved Clip bounds for `op`, naming them `names` in errors: neither NaN, `min <= max`.
fn check_bounds(op: &'static str, names: [&'static str; 2], min: f32, max: f32) -> Result<()> {
    for (name, v) in names.into_iter().zip([min, max]) {
        if v.is_nan() {
            return Err(Error::attribute(
                op,
                name,
                "is NaN (expected a number, or unset for no bound)",
            ));
        }
    }
    if min > max {
        return Err(Error::attribute(
            op,
            names[0],
            format!("{min} is greater than max {max} (expected min <= max)"),
        ));
    }
    Ok(())
}

/// The clamp a Conv or Gemm applies in its fused epilogue, after the bias: `min(max(y, lo), hi)`,
/// NaN staying NaN. A fused ReLU is `[0, +∞]`, a fused Clip its bounds
/// (unset ones infinite), both together the ReLU then the Clip: `[max(0, min), max]`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Clamp {
    pub lo: f32,
    pub hi: f32,
}

impl Clamp {
    /// The clamp of `op`'s fused `relu` and `clip` attributes (None when neither is set), the
    /// Clip's bounds checked as Clip checks them (errors name `clip.min` / `clip.max`).
    pub fn fused(op: &'static str, relu: bool, clip: Option<&Clip>) -> Result<Option<Clamp>> {
        let (lo, hi) = match clip {
            Some(c) => {
                let [min, max] = c.bounds();
                check_bounds(op, ["clip.min", "clip.max"], min, max)?;
                (min, max)
            }
            None if relu => (0.0, f32::INFINITY),
            None => return Ok(None),
        };
        Ok(Some(Clamp {
            lo: if relu { lo.max(0.0) } else { lo },
            hi,
        }))
    }

    /// `[lo, hi]` of an optional clamp, infinite without one (kernels that always clamp: the
    /// infinite bounds change no value).
    pub fn bounds(clamp: Option<Clamp>) -> [f32; 2] {
        clamp.map_or([f32::NEG_INFINITY, f32::INFINITY], |c| [c.lo, c.hi])
    }

    /// The clamp of one value; NaN stays NaN.
    #[inline]
    pub fn apply(self, v: f32) -> f32 {
        let t = if v < self.lo { self.lo } else { v };
        if t > self.hi {
            self.hi
        } else {
            t
        }
    }

    /// The clamp of one value in f64 (for references and tests).
    pub fn eval_f64(self, v: f64) -> f64 {
        Activation::Clip {
            min: self.lo,
            max: self.hi,
        }
        .eval_f64(v)
    }
}

impl LeakyRelu {
    pub fn activation(&self) -> Activation {
        Activation::LeakyRelu { alpha: self.alpha }
    }
}

/// A validated elementwise activation over `len` contiguous elements.
#[derive(Clone, Debug, PartialEq)]
pub struct UnaryPlan {
    pub dtype: DType,
    /// Elements (0 for an empty tensor, 1 for a scalar).
    pub len: usize,
    pub activation: Activation,
    pub output: TensorDesc,
}

impl UnaryPlan {
    /// Exact FLOP count: 1 per element (Relu, Clip, LeakyRelu) or 4 (Sigmoid, Tanh).
    pub fn flops(&self) -> u64 {
        self.activation.flops_per_element() * product(&[self.len])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::Op;

    fn desc(shape: &[usize]) -> TensorDesc {
        TensorDesc::new(DType::F32, shape).unwrap()
    }

    #[test]
    fn shapes_pass_through() {
        for shape in [&[][..], &[0][..], &[1, 1, 1], &[2, 3, 5], &[4, 0, 3]] {
            for op in [
                Op::Relu,
                Op::Clip(Clip::RELU6),
                Op::LeakyRelu(LeakyRelu::default()),
                Op::Sigmoid,
                Op::Tanh,
            ] {
                let plan = op.plan(&[&desc(shape)]).unwrap();
                assert_eq!(plan.output(), &desc(shape));
                let n: usize = shape.iter().product();
                let per = if matches!(op, Op::Sigmoid | Op::Tanh) {
                    4
                } else {
                    1
                };
                assert_eq!(plan.flops(), per * n as u64, "{op:?} {shape:?}");
            }
        }
    }

    #[test]
    fn clip_bounds() {
        let x = desc(&[3]);
        assert!(Clip::default().activation().plan(&x).is_ok());
        assert!(Clip {
            min: Some(2.0),
            max: Some(2.0)
        }
        .activation()
        .plan(&x)
        .is_ok());
        assert!(Clip {
            min: Some(f32::NEG_INFINITY),
            max: Some(f32::INFINITY)
        }
        .activation()
        .plan(&x)
        .is_ok());
        let bad = [
            (
                Clip {
                    min: Some(1.0),
                    max: Some(0.0),
                },
                "min",
            ),
            (
                Clip {
                    min: Some(f32::NAN),
                    max: None,
                },
                "min",
            ),
            (
                Clip {
                    min: None,
                    max: Some(f32::NAN),
                },
                "max",
            ),
        ];
        for (clip, attr) in bad {
            match Op::Clip(clip).plan(&[&x]) {
                Err(Error::Attribute {
                    op: "Clip", name, ..
                }) => assert_eq!(name, attr, "{clip:?}"),
                other => panic!("{clip:?}: {other:?}"),
            }
        }
    }

    #[test]
    fn leaky_relu_alpha_must_be_finite() {
        let x = desc(&[3]);
        for alpha in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
            let e = Op::LeakyRelu(LeakyRelu { alpha }).plan(&[&x]).unwrap_err();
            assert!(
                matches!(
                    e,
                    Error::Attribute {
                        op: "LeakyRelu",
                        name: "alpha",
                        ..
                    }
                ),
                "{e}"
            );
        }
        for alpha in [0.0, -2.0, 1.5] {
            assert!(Op::LeakyRelu(LeakyRelu { alpha }).plan(&[&x]).is_ok());
        }
    }

    #[test]
    fn f64_semantics() {
        let nan = f64::NAN;
        for a in [
            Activation::Relu,
            Clip::RELU6.activation(),
            LeakyRelu::default().activation(),
            Activation::Sigmoid,
            Activation::Tanh,
        ] {
            assert!(a.eval_f64(nan).is_nan(), "{a:?}");
        }
        assert_eq!(Clip::RELU6.activation().eval_f64(7.0), 6.0);
        assert_eq!(Clip::RELU6.activation().eval_f64(-7.0), 0.0);
        assert_eq!(Activation::Sigmoid.eval_f64(f64::NEG_INFINITY), 0.0);
        assert_eq!(Activation::Tanh.eval_f64(f64::INFINITY), 1.0);
    }
}

//! ONNX nodes into eia: each node becomes an [`Op`] over runtime tensors, an alias of its input
//! (Identity, inference Dropout), or a constant folded at load (`Constant`, `Shape`, and integer
//! arithmetic on constants). Attributes are read with the op's ONNX defaults; anything eia does
//! not implement is an error naming the attribute, never silently ignored.

use super::onnx::{self, Attrs, Constant};
use crate::ops::{AutoPad, BatchNorm, Conv, Gemm, Op, Softmax};
use crate::tensor::TensorDesc;

/// What is known at load time about one input of a node.
#[derive(Clone, Copy, Debug)]
pub enum Known<'a> {
    /// A tensor computed at run time, with its inferred descriptor.
    Runtime(&'a TensorDesc),
    /// A constant (initializer, `Constant` output, folded value).
    Const(&'a Constant),
    /// An optional input left out (empty name).
    Absent,
}

/// What a node becomes.
#[derive(Debug)]
pub enum Imported {
    /// An op over the node's present inputs, in order.
    Op(Op),
    /// Its output is its first input, unchanged.
    Alias,
    /// Its output is a constant.
    Const(Constant),
}

/// The op types eia imports (for the error listing unsupported nodes).
pub const SUPPORTED: &[&str] = &[
    "BatchNormalization",
    "Constant",
    "Conv",
    "Dropout",
    "Gemm",
    "Identity",
    "MatMul",
    "Shape",
    "Softmax",
];

/// Imports one node of a model of ai.onnx opset `opset`.
pub fn import(
    node: &onnx::proto::NodeProto,
    opset: i64,
    inputs: &[Known],
) -> Result<Imported, String> {
    let a = Attrs::new(node);
    let op_type = node.op_type();
    match op_type {
        "Constant" => {
            a.only(&["value"])?;
            let t = a
                .tensor("value")?
                .ok_or("only the `value` (tensor) form of Constant is supported")?;
            Ok(Imported::Const(onnx::tensor(t)?))
        }
        "Identity" => {
            a.only(&[])?;
            Ok(Imported::Alias)
        }
        "Dropout" => {
            a.only(&["ratio", "seed", "is_test"])?;
            if node.output.len() > 1 && !node.output[1].is_empty() {
                return Err("the mask output of Dropout is not supported".into());
            }
            if let Some(Known::Const(Constant::Ints { values, .. })) = inputs.get(2) {
                if values.first().is_some_and(|&v| v != 0) {
                    return Err("training_mode is true; eia runs inference only".into());
                }
            }
            Ok(Imported::Alias)
        }
        "Shape" => {
            a.only(&["start", "end"])?;
            let shape = match inputs.first() {
                Some(Known::Runtime(d)) => d.shape().to_vec(),
                Some(Known::Const(c)) => c.shape().to_vec(),
                _ => return Err("Shape takes one input".into()),
            };
            let rank = shape.len() as i64;
            let clamp = |v: i64| (if v < 0 { v + rank } else { v }).clamp(0, rank) as usize;
            let start = clamp(a.int("start")?.unwrap_or(0));
            let end = clamp(a.int("end")?.unwrap_or(rank));
            let values: Vec<i64> = shape[start..end.max(start)]
                .iter()
                .map(|&d| d as i64)
                .collect();
            Ok(Imported::Const(Constant::Ints {
                shape: vec![values.len()],
                values,
            }))
        }
        "Gemm" => {
            a.only(&["alpha", "beta", "transA", "transB"])?;
            let d = Gemm::default();
            Ok(Imported::Op(Op::Gemm(Gemm {
                alpha: a.float("alpha")?.unwrap_or(d.alpha),
                beta: a.float("beta")?.unwrap_or(d.beta),
                trans_a: a.int("transA")?.unwrap_or(0) != 0,
                trans_b: a.int("transB")?.unwrap_or(0) != 0,
                relu: false,
            })))
        }
        "MatMul" => {
            a.only(&[])?;
            Ok(Imported::Op(Op::MatMul))
        }
        "Conv" => {
            a.only(&[
                "kernel_shape",
                "strides",
                "pads",
                "dilations",
                "group",
                "auto_pad",
            ])?;
            let d = Conv::default();
            let auto_pad = match a.string("auto_pad")? {
                Some(s) => s
                    .parse::<AutoPad>()
                    .map_err(|e| format!("attribute auto_pad: {e}"))?,
                None => AutoPad::NotSet,
            };
            Ok(Imported::Op(Op::Conv(Conv {
                strides: a.fixed("strides")?.unwrap_or(d.strides),
                pads: a.fixed("pads")?.unwrap_or(d.pads),
                dilations: a.fixed("dilations")?.unwrap_or(d.dilations),
                group: a.usize("group")?.unwrap_or(d.group),
                auto_pad,
                kernel_shape: a.fixed("kernel_shape")?,
                relu: false,
            })))
        }
        "BatchNormalization" => {
            a.only(&["epsilon", "momentum", "spatial", "training_mode", "is_test"])?;
            if a.int("training_mode")?.unwrap_or(0) != 0 {
                return Err("training_mode is 1; eia runs inference only".into());
            }
            if a.int("spatial")?.unwrap_or(1) != 1 {
                return Err("spatial = 0 (per-element statistics) is not supported".into());
            }
            if node.output.iter().skip(1).any(|o| !o.is_empty()) {
                return Err("the running statistics outputs (training) are not supported".into());
            }
            Ok(Imported::Op(Op::BatchNorm(BatchNorm {
                epsilon: a.float("epsilon")?.unwrap_or(BatchNorm::default().epsilon),
            })))
        }
        "Softmax" => {
            a.only(&["axis"])?;
            let default = if opset >= 13 { -1 } else { 1 };
            let axis = a.int("axis")?.unwrap_or(default);
            if opset < 13 {
                // Before opset 13, Softmax flattens the input to 2-D at `axis` and normalises
                // each row: the same as opset 13's only when `axis` is the last dimension.
                let rank = match inputs.first() {
                    Some(Known::Runtime(d)) => d.rank() as i64,
                    _ => return Err("Softmax takes one runtime input".into()),
                };
                let last = if axis < 0 { axis + rank } else { axis };
                if last != rank - 1 {
                    return Err(format!(
                        "opset {opset} Softmax over axis {axis} of a rank-{rank} input (all dimensions from the axis on, flattened) is not supported; only the last axis"
                    ));
                }
            }
            Ok(Imported::Op(Op::Softmax(Softmax { axis })))
        }
        _ => Err(format!(
            "op {op_type} is not supported (eia imports {})",
            SUPPORTED.join(", ")
        )),
    }
}

//! ONNX nodes into eia: each node becomes an [`Op`] over runtime tensors, an alias of its input
//! (Identity, inference Dropout), or a constant folded at load (`Constant`, `Shape`, and integer
//! arithmetic on constants). Attributes are read with the op's ONNX defaults; anything eia does
//! not implement is an error naming the attribute, never silently ignored.

use super::onnx::{self, Attrs, Constant};
use crate::ops::{
    Add, AutoPad, AveragePool, BatchNorm, Clip, Concat, Conv, Flatten, Gemm, LeakyRelu, Lrn,
    MaxPool, Op, Reshape, Softmax, Squeeze, Transpose, Unsqueeze,
};
use crate::tensor::HostTensor;
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
    "Add",
    "AveragePool",
    "BatchNormalization",
    "Cast",
    "Clip",
    "Concat",
    "Constant",
    "ConstantOfShape",
    "Conv",
    "Div",
    "Dropout",
    "Flatten",
    "Gather",
    "Gemm",
    "GlobalAveragePool",
    "GlobalMaxPool",
    "Identity",
    "LRN",
    "LeakyRelu",
    "MatMul",
    "MaxPool",
    "Mul",
    "Relu",
    "Reshape",
    "Shape",
    "Sigmoid",
    "Softmax",
    "Squeeze",
    "Sub",
    "Sum",
    "Tanh",
    "Transpose",
    "Unsqueeze",
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
            a.only(&[
                "value",
                "value_int",
                "value_ints",
                "value_float",
                "value_floats",
            ])?;
            if let Some(t) = a.tensor("value")? {
                return Ok(Imported::Const(onnx::tensor(t)?));
            }
            if let Some(v) = a.int("value_int")? {
                return Ok(Imported::Const(Constant::Ints {
                    shape: vec![],
                    values: vec![v],
                }));
            }
            if let Some(v) = a.ints("value_ints")? {
                return Ok(Imported::Const(Constant::Ints {
                    shape: vec![v.len()],
                    values: v,
                }));
            }
            let floats = match (a.float("value_float")?, a.floats("value_floats")?) {
                (Some(v), _) => (vec![], vec![v]),
                (_, Some(v)) => (vec![v.len()], v),
                _ => {
                    return Err(
                        "Constant has no value (value, value_int(s) or value_float(s))".into(),
                    )
                }
            };
            Ok(Imported::Const(Constant::Float(
                HostTensor::new(&floats.0, floats.1).map_err(|e| e.to_string())?,
            )))
        }
        "ConstantOfShape" => {
            a.only(&["value"])?;
            let shape = const_ints(inputs, 0, "shape")?;
            let shape = shape
                .iter()
                .map(|&d| usize::try_from(d).map_err(|_| format!("shape holds {d}")))
                .collect::<Result<Vec<_>, _>>()?;
            let fill = match a.tensor("value")? {
                Some(t) => onnx::tensor(t)?,
                None => {
                    Constant::Float(HostTensor::new(&[1], vec![0.0f32]).map_err(|e| e.to_string())?)
                }
            };
            let n: usize = shape.iter().product();
            Ok(Imported::Const(match fill {
                Constant::Float(t) => {
                    let v = t.data().to_f32_vec().first().copied().unwrap_or(0.0);
                    Constant::Float(HostTensor::new(&shape, vec![v; n]).map_err(|e| e.to_string())?)
                }
                Constant::Ints { values, .. } => Constant::Ints {
                    shape,
                    values: vec![values.first().copied().unwrap_or(0); n],
                },
            }))
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
                clip: None,
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
                sum: false,
                relu: false,
                clip: None,
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
        "Relu" | "Sigmoid" | "Tanh" => {
            a.only(&[])?;
            Ok(Imported::Op(match op_type {
                "Relu" => Op::Relu,
                "Sigmoid" => Op::Sigmoid,
                _ => Op::Tanh,
            }))
        }
        "LRN" => {
            a.only(&["size", "alpha", "beta", "bias"])?;
            let d = Lrn::default();
            let size = a.int("size")?.ok_or("size is required")?;
            Ok(Imported::Op(Op::Lrn(Lrn {
                size: usize::try_from(size)
                    .map_err(|_| format!("size must be >= 1, got {size}"))?,
                alpha: a.float("alpha")?.unwrap_or(d.alpha),
                beta: a.float("beta")?.unwrap_or(d.beta),
                bias: a.float("bias")?.unwrap_or(d.bias),
            })))
        }
        "LeakyRelu" => {
            a.only(&["alpha"])?;
            Ok(Imported::Op(Op::LeakyRelu(LeakyRelu {
                alpha: a.float("alpha")?.unwrap_or(LeakyRelu::default().alpha),
            })))
        }
        "Clip" => {
            a.only(&["min", "max"])?;
            let bound = |i: usize, attr: &str| -> Result<Option<f32>, String> {
                if opset < 11 {
                    return a.float(attr);
                }
                match inputs.get(i) {
                    None | Some(Known::Absent) => Ok(None),
                    Some(Known::Const(Constant::Float(t))) if t.data().len() == 1 => {
                        Ok(Some(t.data().to_f32_vec()[0]))
                    }
                    _ => Err(format!("its {attr} input must be a constant scalar")),
                }
            };
            Ok(Imported::Op(Op::Clip(Clip {
                min: bound(1, "min")?,
                max: bound(2, "max")?,
            })))
        }
        "Add" | "Sub" | "Mul" | "Div" | "Sum" | "Concat" | "Unsqueeze" | "Squeeze" | "Reshape"
        | "Gather" | "Cast"
            if all_ints(inputs) =>
        {
            fold_ints(node, opset, inputs).map(Imported::Const)
        }
        "Add" | "Sub" | "Mul" | "Div" => {
            a.only(&[])?;
            Ok(Imported::Op(match op_type {
                "Add" => Op::Add(Add::default()),
                "Sub" => Op::Sub,
                "Mul" => Op::Mul,
                _ => Op::Div,
            }))
        }
        "Sum" => {
            a.only(&[])?;
            Ok(Imported::Op(Op::Sum))
        }
        "MaxPool" => {
            a.only(&[
                "kernel_shape",
                "strides",
                "pads",
                "dilations",
                "ceil_mode",
                "auto_pad",
                "storage_order",
            ])?;
            if node.output.iter().skip(1).any(|o| !o.is_empty()) {
                return Err("the Indices output of MaxPool is not supported".into());
            }
            let d = MaxPool::default();
            Ok(Imported::Op(Op::MaxPool(MaxPool {
                kernel_shape: a.fixed("kernel_shape")?.ok_or("kernel_shape is required")?,
                strides: a.fixed("strides")?.unwrap_or(d.strides),
                pads: a.fixed("pads")?.unwrap_or(d.pads),
                dilations: a.fixed("dilations")?.unwrap_or(d.dilations),
                ceil_mode: a.int("ceil_mode")?.unwrap_or(0) != 0,
                auto_pad: auto_pad(&a)?,
                storage_order: a.int("storage_order")?.unwrap_or(0),
            })))
        }
        "AveragePool" => {
            a.only(&[
                "kernel_shape",
                "strides",
                "pads",
                "ceil_mode",
                "count_include_pad",
                "auto_pad",
            ])?;
            let d = AveragePool::default();
            Ok(Imported::Op(Op::AveragePool(AveragePool {
                kernel_shape: a.fixed("kernel_shape")?.ok_or("kernel_shape is required")?,
                strides: a.fixed("strides")?.unwrap_or(d.strides),
                pads: a.fixed("pads")?.unwrap_or(d.pads),
                ceil_mode: a.int("ceil_mode")?.unwrap_or(0) != 0,
                count_include_pad: a.int("count_include_pad")?.unwrap_or(0) != 0,
                auto_pad: auto_pad(&a)?,
            })))
        }
        "GlobalAveragePool" | "GlobalMaxPool" => {
            a.only(&[])?;
            Ok(Imported::Op(if op_type == "GlobalAveragePool" {
                Op::GlobalAveragePool
            } else {
                Op::GlobalMaxPool
            }))
        }
        "Concat" => {
            a.only(&["axis"])?;
            Ok(Imported::Op(Op::Concat(Concat {
                axis: a.int("axis")?.ok_or("axis is required")?,
            })))
        }
        "Transpose" => {
            a.only(&["perm"])?;
            Ok(Imported::Op(Op::Transpose(Transpose {
                perm: a.ints("perm")?,
            })))
        }
        "Flatten" => {
            a.only(&["axis"])?;
            Ok(Imported::Op(Op::Flatten(Flatten {
                axis: a.int("axis")?.unwrap_or(Flatten::default().axis),
            })))
        }
        "Reshape" => {
            a.only(&["allowzero", "shape"])?;
            let shape = if opset < 5 {
                a.ints("shape")?.ok_or("shape is required")?
            } else {
                const_ints(inputs, 1, "shape")?
            };
            Ok(Imported::Op(Op::Reshape(Reshape {
                shape,
                allowzero: a.int("allowzero")?.unwrap_or(0) != 0,
            })))
        }
        "Squeeze" => {
            a.only(&["axes"])?;
            let axes = if opset < 13 {
                a.ints("axes")?
            } else {
                match inputs.get(1) {
                    None | Some(Known::Absent) => None,
                    _ => Some(const_ints(inputs, 1, "axes")?),
                }
            };
            Ok(Imported::Op(Op::Squeeze(Squeeze { axes })))
        }
        "Unsqueeze" => {
            a.only(&["axes"])?;
            let axes = if opset < 13 {
                a.ints("axes")?.ok_or("axes is required")?
            } else {
                const_ints(inputs, 1, "axes")?
            };
            Ok(Imported::Op(Op::Unsqueeze(Unsqueeze { axes })))
        }
        "Gather" | "Cast" => Err(format!(
            "{op_type} is supported on constant integer tensors (shape arithmetic) only"
        )),
        _ => Err(format!(
            "op {op_type} is not supported (eia imports {})",
            SUPPORTED.join(", ")
        )),
    }
}

/// ONNX `auto_pad`, NOTSET when absent.
fn auto_pad(a: &Attrs) -> Result<AutoPad, String> {
    match a.string("auto_pad")? {
        Some(s) => s.parse().map_err(|e| format!("attribute auto_pad: {e}")),
        None => Ok(AutoPad::NotSet),
    }
}

/// Input `i`, which must be a constant integer tensor (a shape, axes).
fn const_ints(inputs: &[Known], i: usize, what: &str) -> Result<Vec<i64>, String> {
    match inputs.get(i) {
        Some(Known::Const(Constant::Ints { values, .. })) => Ok(values.clone()),
        _ => Err(format!(
            "its {what} input must be a constant integer tensor (an initializer, a Constant or a folded shape computation)"
        )),
    }
}

/// Whether every present input is a constant integer tensor.
fn all_ints(inputs: &[Known]) -> bool {
    inputs.iter().any(|k| !matches!(k, Known::Absent))
        && inputs
            .iter()
            .all(|k| matches!(k, Known::Absent | Known::Const(Constant::Ints { .. })))
}

/// Shape arithmetic on constant integer tensors, folded at load (what exporters emit around
/// Reshape: `Shape → Gather → Unsqueeze → Concat`).
fn fold_ints(
    node: &onnx::proto::NodeProto,
    opset: i64,
    inputs: &[Known],
) -> Result<Constant, String> {
    let a = Attrs::new(node);
    let ints: Vec<(&[usize], &[i64])> = inputs
        .iter()
        .filter_map(|k| match k {
            Known::Const(Constant::Ints { shape, values }) => Some((&shape[..], &values[..])),
            _ => None,
        })
        .collect();
    let (shape0, x) = ints[0];
    let out = |shape: Vec<usize>, values: Vec<i64>| Ok(Constant::Ints { shape, values });
    let axes = |attr_or_input: usize| -> Result<Vec<i64>, String> {
        if opset < 13 {
            Ok(a.ints("axes")?.unwrap_or_default())
        } else {
            Ok(ints
                .get(attr_or_input)
                .map(|(_, v)| v.to_vec())
                .unwrap_or_default())
        }
    };
    match node.op_type() {
        "Add" | "Sub" | "Mul" | "Div" => {
            let (shape1, y) = ints.get(1).ok_or("takes two inputs")?;
            let n = x.len().max(y.len());
            if !(x.len() == n || x.len() == 1) || !(y.len() == n || y.len() == 1) {
                return Err("integer operands of different lengths".into());
            }
            let at = |v: &[i64], i: usize| v[if v.len() == 1 { 0 } else { i }];
            let values = (0..n)
                .map(|i| {
                    let (p, q) = (at(x, i), at(y, i));
                    match node.op_type() {
                        "Add" => p.checked_add(q),
                        "Sub" => p.checked_sub(q),
                        "Mul" => p.checked_mul(q),
                        _ => p.checked_div(q),
                    }
                    .ok_or_else(|| format!("integer overflow or division by zero: {p}, {q}"))
                })
                .collect::<Result<Vec<_>, _>>()?;
            let shape = if x.len() >= y.len() { shape0 } else { shape1 };
            out(shape.to_vec(), values)
        }
        "Concat" => {
            if ints.iter().any(|(s, _)| s.len() != 1) {
                return Err("integer Concat of tensors that are not 1-D".into());
            }
            let values: Vec<i64> = ints.iter().flat_map(|(_, v)| v.iter().copied()).collect();
            out(vec![values.len()], values)
        }
        "Unsqueeze" => {
            let axes = axes(1)?;
            let rank = shape0.len() + axes.len();
            let mut shape = shape0.to_vec();
            let mut norm: Vec<usize> = axes
                .iter()
                .map(|&ax| if ax < 0 { ax + rank as i64 } else { ax } as usize)
                .collect();
            norm.sort();
            for ax in norm {
                if ax > shape.len() {
                    return Err(format!("Unsqueeze axis {ax} out of range"));
                }
                shape.insert(ax, 1);
            }
            out(shape, x.to_vec())
        }
        "Squeeze" => {
            let axes = axes(1)?;
            let rank = shape0.len() as i64;
            let shape = shape0
                .iter()
                .enumerate()
                .filter(|&(i, &d)| {
                    !(d == 1
                        && (axes.is_empty()
                            || axes
                                .iter()
                                .any(|&ax| (if ax < 0 { ax + rank } else { ax }) == i as i64)))
                })
                .map(|(_, &d)| d)
                .collect();
            out(shape, x.to_vec())
        }
        "Reshape" => {
            let (_, target) = ints.get(1).ok_or("takes a shape input")?;
            let known: i64 = target.iter().filter(|&&d| d > 0).product();
            let shape = target
                .iter()
                .enumerate()
                .map(|(i, &d)| match d {
                    -1 => Ok(x.len() / known.max(1) as usize),
                    0 => shape0
                        .get(i)
                        .copied()
                        .ok_or("0 beyond the input's rank".to_string()),
                    d => Ok(d as usize),
                })
                .collect::<Result<Vec<_>, _>>()?;
            out(shape, x.to_vec())
        }
        "Gather" => {
            let (ishape, idx) = ints.get(1).ok_or("takes indices")?;
            if a.int("axis")?.unwrap_or(0) != 0 || shape0.len() != 1 {
                return Err("integer Gather is folded on 1-D data along axis 0 only".into());
            }
            let values = idx
                .iter()
                .map(|&i| {
                    let j = if i < 0 { i + x.len() as i64 } else { i };
                    x.get(j as usize)
                        .copied()
                        .ok_or(format!("index {i} out of range"))
                })
                .collect::<Result<Vec<_>, _>>()?;
            out(ishape.to_vec(), values)
        }
        "Cast" => {
            let to = a.int("to")?.ok_or("Cast needs `to`")?;
            match onnx::float_dtype(to as i32) {
                Some(_) => {
                    let v: Vec<f32> = x.iter().map(|&v| v as f32).collect();
                    Ok(Constant::Float(
                        HostTensor::new(shape0, v).map_err(|e| e.to_string())?,
                    ))
                }
                None => out(shape0.to_vec(), x.to_vec()),
            }
        }
        "Sum" => {
            let n = ints.iter().map(|(_, v)| v.len()).max().unwrap_or(0);
            if ints.iter().any(|(_, v)| v.len() != n) {
                return Err("integer Sum of different lengths".into());
            }
            let values = (0..n)
                .map(|i| ints.iter().map(|(_, v)| v[i]).sum())
                .collect();
            out(shape0.to_vec(), values)
        }
        other => Err(format!("{other} is not folded on integers")),
    }
}

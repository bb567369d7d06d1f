//! The op table and keyword attributes: every [`Op`] variant with its inputs and default
//! attributes (what `eia/__init__.py` turns into one method per op, with its signature and
//! docstring), and `name` + keywords into an [`Op`] through its serde form — one conversion for
//! every op, checked by serde (`deny_unknown_fields`, types) and then by the op's plan.

use std::collections::HashMap;
use std::sync::OnceLock;

use eia::ops::{
    AveragePool, BatchNorm, Clip, Concat, Conv, Dropout, Flatten, Gemm, LeakyRelu, Lrn, MaxPool,
    Op, Reshape, Softmax, Squeeze, Transpose, Unsqueeze,
};
use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList};

/// Every op, with its default attributes (Concat's required `axis` as 0: [`Entry::required`]
/// lists it). The match below stops the build when `Op` gains a variant not listed here.
fn every_op() -> Vec<Op> {
    let all = vec![
        Op::Gemm(Gemm::default()),
        Op::MatMul,
        Op::Conv(Conv::default()),
        Op::BatchNorm(BatchNorm::default()),
        Op::Softmax(Softmax::default()),
        Op::Relu,
        Op::Clip(Clip::default()),
        Op::LeakyRelu(LeakyRelu::default()),
        Op::Sigmoid,
        Op::Tanh,
        Op::Add(Default::default()),
        Op::Sub,
        Op::Mul,
        Op::Div,
        Op::Sum,
        Op::MaxPool(MaxPool::default()),
        Op::AveragePool(AveragePool::default()),
        Op::GlobalAveragePool,
        Op::GlobalMaxPool,
        Op::Concat(Concat { axis: 0 }),
        Op::Transpose(Transpose::default()),
        Op::Flatten(Flatten::default()),
        Op::Reshape(Reshape::default()),
        Op::Squeeze(Squeeze::default()),
        Op::Unsqueeze(Unsqueeze::default()),
        Op::Identity,
        Op::Dropout(Dropout::default()),
        Op::Lrn(Lrn::default()),
    ];
    for op in &all {
        match op {
            Op::Gemm(_)
            | Op::MatMul
            | Op::Conv(_)
            | Op::BatchNorm(_)
            | Op::Softmax(_)
            | Op::Relu
            | Op::Clip(_)
            | Op::LeakyRelu(_)
            | Op::Sigmoid
            | Op::Tanh
            | Op::Add(_)
            | Op::Sub
            | Op::Mul
            | Op::Div
            | Op::Sum
            | Op::MaxPool(_)
            | Op::AveragePool(_)
            | Op::GlobalAveragePool
            | Op::GlobalMaxPool
            | Op::Concat(_)
            | Op::Transpose(_)
            | Op::Flatten(_)
            | Op::Reshape(_)
            | Op::Squeeze(_)
            | Op::Unsqueeze(_)
            | Op::Identity
            | Op::Dropout(_)
            | Op::Lrn(_) => {}
        }
    }
    all
}

/// One op of the table.
struct Entry {
    /// Its default attributes (see [`every_op`]).
    op: Op,
    /// Takes no attributes (a unit variant).
    unit: bool,
    /// Attributes without a default.
    required: Vec<String>,
}

/// The table by method name (the variant's serde name), built once.
fn table(py: Python<'_>) -> PyResult<&'static HashMap<String, Entry>> {
    static TABLE: OnceLock<HashMap<String, Entry>> = OnceLock::new();
    if let Some(t) = TABLE.get() {
        return Ok(t);
    }
    let mut t = HashMap::new();
    for op in every_op() {
        let (name, attrs) = split(&serialize(py, &op)?)?;
        let mut required = Vec::new();
        if let Some(attrs) = &attrs {
            for key in attrs.keys() {
                let without = attrs.copy()?;
                without.del_item(&key)?;
                if deserialize(py, &name, Some(&without)).is_err() {
                    required.push(key.extract()?);
                }
            }
        }
        let unit = attrs.is_none();
        t.insert(name, Entry { op, unit, required });
    }
    Ok(TABLE.get_or_init(|| t))
}

fn serialize<'py>(py: Python<'py>, op: &Op) -> PyResult<Bound<'py, PyAny>> {
    pythonize::pythonize(py, op).map_err(|e| PyValueError::new_err(e.to_string()))
}

/// A serialized op's name and attributes (`None` for a unit variant).
fn split<'py>(v: &Bound<'py, PyAny>) -> PyResult<(String, Option<Bound<'py, PyDict>>)> {
    if let Ok(name) = v.extract::<String>() {
        return Ok((name, None));
    }
    let d = v.cast::<PyDict>()?;
    let (name, attrs) = d
        .iter()
        .next()
        .ok_or_else(|| PyValueError::new_err("an op serialized to an empty map"))?;
    Ok((name.extract()?, Some(attrs.cast_into::<PyDict>()?)))
}

fn deserialize(py: Python<'_>, name: &str, attrs: Option<&Bound<'_, PyDict>>) -> PyResult<Op> {
    let tagged = PyDict::new(py);
    match attrs {
        Some(a) => tagged.set_item(name, a)?,
        None => tagged.set_item(name, PyDict::new(py))?,
    }
    pythonize::depythonize::<Op>(&tagged)
        .map_err(|e| PyTypeError::new_err(format!("{name}: attributes: {e}")))
}

/// The op `name` (a method name: "conv", "batch_norm", …) with keyword attributes `attrs`
/// (ONNX defaults for those left out).
pub fn parse(py: Python<'_>, name: &str, attrs: Option<&Bound<'_, PyDict>>) -> PyResult<Op> {
    let entry = table(py)?
        .get(name)
        .ok_or_else(|| PyValueError::new_err(format!("no op named {name:?}")))?;
    let attrs = attrs.filter(|a| !a.is_empty());
    match attrs {
        None if entry.required.is_empty() => Ok(entry.op.clone()),
        Some(a) if entry.unit => Err(PyTypeError::new_err(format!(
            "{name}() takes no attributes, got {}",
            a.keys().str()?
        ))),
        _ => deserialize(py, name, attrs),
    }
}

/// The op table for `eia/__init__.py`: one dict per op — `name` (the method), `onnx` (the ONNX
/// op type), `inputs` (ONNX input names), `required` (how many inputs are), `variadic`,
/// `attrs` (name → default), `required_attrs`.
#[pyfunction]
pub fn op_table(py: Python<'_>) -> PyResult<Bound<'_, PyList>> {
    let table = table(py)?;
    let list = PyList::empty(py);
    for op in every_op() {
        let (name, attrs) = split(&serialize(py, &op)?)?;
        let entry = &table[&name];
        let (inputs, required) = op.inputs();
        let d = PyDict::new(py);
        d.set_item("name", &name)?;
        d.set_item("onnx", op.name())?;
        d.set_item("inputs", inputs.to_vec())?;
        d.set_item("required", required)?;
        d.set_item("variadic", op.variadic() || matches!(op, Op::Concat(_)))?;
        d.set_item("attrs", attrs.unwrap_or_else(|| PyDict::new(py)))?;
        d.set_item("required_attrs", entry.required.clone())?;
        list.append(d)?;
    }
    Ok(list)
}

//! The ONNX file format: the protobuf types generated from `proto/onnx/onnx.proto`, and the
//! reading of what a model stores in them — tensors (initializers, `Constant` values) and node
//! attributes — into eia's types, with a readable error for everything eia does not take.

use std::collections::HashMap;
use std::path::{Component, Path};

use crate::dtype::DType;
use crate::tensor::HostTensor;

/// The generated ONNX protobuf messages (`ModelProto`, `GraphProto`, `NodeProto`, …).
#[allow(clippy::all, missing_docs)]
pub mod proto {
    include!(concat!(env!("OUT_DIR"), "/onnx.rs"));
}

use proto::attribute_proto::AttributeType;
use proto::tensor_proto::{DataLocation, DataType};
use proto::{AttributeProto, ModelProto, NodeProto, TensorProto};

/// A constant value of a graph: a float tensor eia computes with, or integers (shapes, axes,
/// indices) that only the load-time folding reads.
#[derive(Clone, Debug)]
pub enum Constant {
    Float(HostTensor),
    Ints { shape: Vec<usize>, values: Vec<i64> },
}

impl Constant {
    /// Its shape.
    pub fn shape(&self) -> &[usize] {
        match self {
            Constant::Float(t) => t.shape(),
            Constant::Ints { shape, .. } => shape,
        }
    }
}

/// The dtype eia computes a float ONNX element type in, if it does.
pub fn float_dtype(elem_type: i32) -> Option<DType> {
    match DataType::try_from(elem_type).ok()? {
        DataType::Float => Some(DType::F32),
        DataType::Float16 => Some(DType::F16),
        _ => None,
    }
}

/// The ONNX name of an element type, for errors.
pub fn type_name(elem_type: i32) -> String {
    DataType::try_from(elem_type)
        .map(|t| t.as_str_name().to_string())
        .unwrap_or_else(|_| format!("element type {elem_type}"))
}

/// Reads the external data of every tensor of `model` (initializers and node attributes) into
/// the tensor itself, as ONNX's `load_external_data_for_model` does: each `location` is a file
/// relative to `dir` (the model's directory) that must stay inside it; `offset` and `length` (in
/// bytes) select a range of it. Each file is read once. Every problem is listed.
pub fn inline_external_data(model: &mut ModelProto, dir: &Path) -> Result<(), String> {
    let Some(graph) = model.graph.as_mut() else {
        return Ok(());
    };
    let mut files: HashMap<String, std::io::Result<Vec<u8>>> = HashMap::new();
    let mut problems = Vec::new();
    let attribute_tensors = graph
        .node
        .iter_mut()
        .flat_map(|n| &mut n.attribute)
        .flat_map(|a| a.t.iter_mut().chain(&mut a.tensors));
    for t in graph.initializer.iter_mut().chain(attribute_tensors) {
        if t.data_location != Some(DataLocation::External as i32) {
            continue;
        }
        match external_bytes(t, dir, &mut files) {
            Ok(raw) => {
                t.raw_data = Some(raw);
                t.data_location = Some(DataLocation::Default as i32);
                t.external_data.clear();
            }
            Err(e) => problems.push(format!("tensor '{}': {e}", t.name())),
        }
    }
    match problems.len() {
        0 => Ok(()),
        n => Err(format!(
            "{n} tensor{} with external data cannot be read:\n  {}",
            if n == 1 { "" } else { "s" },
            problems.join("\n  ")
        )),
    }
}

/// The bytes `t`'s `external_data` entries name.
fn external_bytes(
    t: &TensorProto,
    dir: &Path,
    files: &mut HashMap<String, std::io::Result<Vec<u8>>>,
) -> Result<Vec<u8>, String> {
    let entry = |key: &str| {
        t.external_data
            .iter()
            .find(|e| e.key() == key)
            .map(|e| e.value().to_string())
    };
    let number = |key: &str| {
        entry(key)
            .map(|v| {
                v.parse::<usize>()
                    .map_err(|_| format!("its external data {key} {v:?} is not a byte count"))
            })
            .transpose()
    };
    let location = entry("location").ok_or("its external data has no location")?;
    let relative = Path::new(&location);
    if !relative
        .components()
        .all(|c| matches!(c, Component::Normal(_) | Component::CurDir))
    {
        return Err(format!(
            "external data location {location:?} must be a relative path inside the model's directory"
        ));
    }
    let (offset, length) = (number("offset")?.unwrap_or(0), number("length")?);
    let file = files
        .entry(location.clone())
        .or_insert_with(|| std::fs::read(dir.join(relative)));
    let bytes = file
        .as_ref()
        .map_err(|e| format!("cannot read {}: {e}", dir.join(relative).display()))?;
    let end = match length {
        Some(n) => offset.checked_add(n),
        None => Some(bytes.len()),
    };
    match end {
        Some(end) if offset <= end && end <= bytes.len() => Ok(bytes[offset..end].to_vec()),
        _ => Err(format!(
            "its external data (offset {offset}, length {}) lies beyond the end of {location} ({} bytes)",
            length.map_or("to the end".into(), |n| n.to_string()),
            bytes.len()
        )),
    }
}

/// Reads a tensor stored in the model (an initializer or a `Constant` node's value).
pub fn tensor(t: &TensorProto) -> Result<Constant, String> {
    if t.data_location == Some(DataLocation::External as i32) {
        return Err(format!(
            "tensor '{}' keeps its data in an external file: load the model from its path (Model::load, `eia infer FILE`) so that the file can be found beside it",
            t.name()
        ));
    }
    if t.segment.is_some() {
        return Err(format!("tensor '{}' is segmented", t.name()));
    }
    let shape = t
        .dims
        .iter()
        .map(|&d| {
            usize::try_from(d).map_err(|_| format!("tensor '{}' has dimension {d}", t.name()))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let len = shape
        .iter()
        .try_fold(1usize, |n, &d| n.checked_mul(d))
        .ok_or_else(|| format!("tensor '{}' of shape {shape:?} is too large", t.name()))?;
    let raw = t.raw_data.as_deref().filter(|r| !r.is_empty());
    let wrong_len = |got: usize| {
        format!(
            "tensor '{}' of shape {shape:?} holds {got} values, expected {len}",
            t.name()
        )
    };
    let elem = DataType::try_from(t.data_type()).unwrap_or(DataType::Undefined);
    let ints = |values: Vec<i64>| -> Result<Constant, String> {
        if values.len() != len {
            return Err(wrong_len(values.len()));
        }
        Ok(Constant::Ints {
            shape: shape.clone(),
            values,
        })
    };
    /// Little-endian values of `N` bytes each.
    fn le<const N: usize, T>(raw: &[u8], f: impl Fn([u8; N]) -> T) -> Vec<T> {
        raw.chunks_exact(N)
            .map(|c| f(c.try_into().expect("chunks of N")))
            .collect()
    }
    match elem {
        DataType::Float | DataType::Float16 | DataType::Double => {
            let dtype = if elem == DataType::Float16 {
                DType::F16
            } else {
                DType::F32
            };
            let host = match (elem, raw) {
                (DataType::Float, Some(raw)) => {
                    HostTensor::from_bytes(DType::F32, &shape, raw).map_err(|e| e.to_string())?
                }
                (DataType::Float16, Some(raw)) => {
                    HostTensor::from_bytes(DType::F16, &shape, raw).map_err(|e| e.to_string())?
                }
                (DataType::Double, Some(raw)) => {
                    let v: Vec<f32> = le(raw, |b| f64::from_le_bytes(b) as f32);
                    HostTensor::from_f32(dtype, &shape, &v).map_err(|e| e.to_string())?
                }
                (DataType::Float, None) => HostTensor::from_f32(dtype, &shape, &t.float_data)
                    .map_err(|_| wrong_len(t.float_data.len()))?,
                (DataType::Float16, None) => {
                    // FP16 values are stored as their bit patterns in int32_data.
                    let bytes: Vec<u8> = t
                        .int32_data
                        .iter()
                        .flat_map(|&b| (b as u16).to_le_bytes())
                        .collect();
                    HostTensor::from_bytes(DType::F16, &shape, &bytes)
                        .map_err(|_| wrong_len(t.int32_data.len()))?
                }
                _ => {
                    let v: Vec<f32> = t.double_data.iter().map(|&d| d as f32).collect();
                    HostTensor::from_f32(dtype, &shape, &v).map_err(|_| wrong_len(v.len()))?
                }
            };
            Ok(Constant::Float(host))
        }
        DataType::Int64 => ints(match raw {
            Some(raw) => le(raw, i64::from_le_bytes),
            None => t.int64_data.clone(),
        }),
        DataType::Int32 | DataType::Int8 | DataType::Int16 | DataType::Uint8 | DataType::Bool => {
            ints(match (elem, raw) {
                (DataType::Int32, Some(raw)) => le(raw, |b| i32::from_le_bytes(b) as i64),
                (DataType::Int8, Some(raw)) => raw.iter().map(|&b| b as i8 as i64).collect(),
                (DataType::Int16, Some(raw)) => le(raw, |b| i16::from_le_bytes(b) as i64),
                (_, Some(raw)) => raw.iter().map(|&b| b as i64).collect(),
                (_, None) => t.int32_data.iter().map(|&v| v as i64).collect(),
            })
        }
        _ => Err(format!(
            "tensor '{}' is {}; eia reads FLOAT, FLOAT16 and DOUBLE weights and integer constants",
            t.name(),
            type_name(t.data_type())
        )),
    }
}

/// A node's attributes, read by name with the type each op expects.
pub struct Attrs<'a> {
    node: &'a NodeProto,
}

impl<'a> Attrs<'a> {
    pub fn new(node: &'a NodeProto) -> Self {
        Attrs { node }
    }

    fn get(&self, name: &str, ty: AttributeType) -> Result<Option<&'a AttributeProto>, String> {
        match self.node.attribute.iter().find(|a| a.name() == name) {
            None => Ok(None),
            Some(a) if a.r#type() == ty || a.r#type() == AttributeType::Undefined => Ok(Some(a)),
            Some(a) => Err(format!(
                "attribute {name} is {}, expected {}",
                a.r#type().as_str_name(),
                ty.as_str_name()
            )),
        }
    }

    pub fn int(&self, name: &str) -> Result<Option<i64>, String> {
        Ok(self.get(name, AttributeType::Int)?.map(|a| a.i()))
    }

    pub fn float(&self, name: &str) -> Result<Option<f32>, String> {
        Ok(self.get(name, AttributeType::Float)?.map(|a| a.f()))
    }

    pub fn floats(&self, name: &str) -> Result<Option<Vec<f32>>, String> {
        Ok(self
            .get(name, AttributeType::Floats)?
            .map(|a| a.floats.clone()))
    }

    pub fn ints(&self, name: &str) -> Result<Option<Vec<i64>>, String> {
        Ok(self.get(name, AttributeType::Ints)?.map(|a| a.ints.clone()))
    }

    pub fn string(&self, name: &str) -> Result<Option<String>, String> {
        self.get(name, AttributeType::String)?
            .map(|a| {
                String::from_utf8(a.s().to_vec())
                    .map_err(|_| format!("attribute {name} is not UTF-8"))
            })
            .transpose()
    }

    pub fn tensor(&self, name: &str) -> Result<Option<&'a TensorProto>, String> {
        Ok(self
            .get(name, AttributeType::Tensor)?
            .and_then(|a| a.t.as_ref()))
    }

    /// An int attribute that must be a non-negative size.
    pub fn usize(&self, name: &str) -> Result<Option<usize>, String> {
        self.int(name)?
            .map(|v| usize::try_from(v).map_err(|_| format!("attribute {name} is {v}")))
            .transpose()
    }

    /// A list of non-negative sizes.
    pub fn usizes(&self, name: &str) -> Result<Option<Vec<usize>>, String> {
        self.ints(name)?
            .map(|v| {
                v.iter()
                    .map(|&x| usize::try_from(x).map_err(|_| format!("attribute {name} holds {x}")))
                    .collect()
            })
            .transpose()
    }

    /// A list of exactly `N` sizes, if present.
    pub fn fixed<const N: usize>(&self, name: &str) -> Result<Option<[usize; N]>, String> {
        self.usizes(name)?
            .map(|v| {
                <[usize; N]>::try_from(v.as_slice()).map_err(|_| {
                    format!("attribute {name} is {v:?}; eia takes {N} values (2-D ops)")
                })
            })
            .transpose()
    }

    /// Fails on any attribute not in `known`, so that nothing a model asks for is silently
    /// ignored.
    pub fn only(&self, known: &[&str]) -> Result<(), String> {
        match self
            .node
            .attribute
            .iter()
            .find(|a| !known.contains(&a.name()))
        {
            Some(a) => Err(format!(
                "attribute {} is not supported (eia reads {})",
                a.name(),
                if known.is_empty() {
                    "none".to_string()
                } else {
                    known.join(", ")
                }
            )),
            None => Ok(()),
        }
    }
}

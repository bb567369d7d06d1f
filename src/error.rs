//! The crate's one error type: every bad input becomes a typed variant with a message a person
//! can act on. Variants are grouped by kind (shape, dtype, attribute, data, backend).

use crate::dtype::DType;

/// Result alias used across the crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in eia.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Error {
    /// An operand's shape does not fit the op (rank, inner dimensions, broadcast, channels).
    #[error("{op}: {msg}")]
    Shape { op: &'static str, msg: String },

    /// Operands of one op mix element types.
    #[error("{op}: operand {operand} is {got}, expected {expected} (all operands of one op share a dtype)")]
    DTypeMismatch {
        op: &'static str,
        operand: &'static str,
        expected: DType,
        got: DType,
    },

    /// An attribute value is out of range or inconsistent with the operands.
    #[error("{op}: attribute {name}: {msg}")]
    Attribute {
        op: &'static str,
        name: &'static str,
        msg: String,
    },

    /// Host data does not hold as many elements as the shape says.
    #[error("tensor data holds {got} elements but shape {shape:?} needs {expected}")]
    DataLength {
        shape: Vec<usize>,
        expected: usize,
        got: usize,
    },

    /// A byte buffer's length is not a multiple of the dtype size or does not match the shape.
    #[error("tensor bytes: {got} bytes given, shape {shape:?} of {dtype} needs {expected}")]
    ByteLength {
        dtype: DType,
        shape: Vec<usize>,
        expected: usize,
        got: usize,
    },

    /// A tensor's element count overflows `usize`.
    #[error("shape {shape:?} has more elements than fit in memory")]
    ShapeOverflow { shape: Vec<usize> },

    /// An output tensor handed to an `_into` call has the wrong shape or dtype.
    #[error("{op}: output is {got_dtype} {got:?}, the op produces {expected_dtype} {expected:?}")]
    Output {
        op: &'static str,
        expected: Vec<usize>,
        expected_dtype: DType,
        got: Vec<usize>,
        got_dtype: DType,
    },

    /// An unknown dtype name was given (e.g. on the command line or over the wire).
    #[error("unknown dtype {0:?}: valid dtypes are FP32 (f32) and FP16 (f16)")]
    UnknownDType(String),

    /// A backend failed or is unavailable (no CUDA driver, out of device memory, ...).
    #[error("{backend} backend: {msg}")]
    Backend { backend: &'static str, msg: String },
}

impl Error {
    pub(crate) fn shape(op: &'static str, msg: impl Into<String>) -> Self {
        Error::Shape {
            op,
            msg: msg.into(),
        }
    }

    pub(crate) fn attribute(op: &'static str, name: &'static str, msg: impl Into<String>) -> Self {
        Error::Attribute {
            op,
            name,
            msg: msg.into(),
        }
    }
}

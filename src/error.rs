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

    /// An op was given too few or too many inputs.
    #[error("{op}: takes inputs {expected}, got {got} inputs")]
    Arity {
        op: &'static str,
        expected: String,
        got: usize,
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

    /// A tier name that is neither built in nor configured.
    #[error("unknown tier {name:?}: valid tiers are {} (an `ml.` prefix is accepted)", valid.join(", "))]
    UnknownTier { name: String, valid: Vec<String> },

    /// A configuration (tier file, device settings) is malformed or inconsistent.
    #[error("configuration {source_name}: {msg}")]
    Config { source_name: String, msg: String },

    /// An allocation would take an accelerator past its tier's memory.
    #[error("accelerator {accelerator} ({tier}): allocating {} would exceed its memory quota: {} in use of {}; free tensors or resize to a larger tier", bytes(*requested), bytes(*used), bytes(*quota))]
    MemoryQuota {
        accelerator: u64,
        tier: String,
        requested: u64,
        used: u64,
        quota: u64,
    },

    /// An allocation would take an accelerator past its limit on live tensors.
    #[error("accelerator {accelerator}: it holds {limit} tensors, the most one accelerator may hold; free tensors first")]
    TensorLimit { accelerator: u64, limit: usize },

    /// A resize to a tier whose memory is smaller than what the accelerator holds.
    #[error("accelerator {accelerator}: cannot resize to {tier}: {} in use exceeds its {} quota; free tensors first", bytes(*used), bytes(*quota))]
    ResizeBelowUsage {
        accelerator: u64,
        tier: String,
        used: u64,
        quota: u64,
    },

    /// Attaching (or resizing) would exceed what the device can deliver.
    #[error("device capacity: {0}")]
    Capacity(String),

    /// The accelerator was detached; its tensors are gone.
    #[error("accelerator {0} is detached: its memory was freed and it runs no more ops")]
    Detached(u64),

    /// A remote server refused a call (its gRPC status code and message).
    #[error("server: {code}: {msg}")]
    Remote { code: String, msg: String },

    /// The network failed: cannot connect, bad TLS or address.
    #[error("network: {0}")]
    Network(String),

    /// A server could not answer a call: it died, is draining, its connection broke or the
    /// call's deadline passed. Retryable ([`Error::is_retryable`]): attach elsewhere (a
    /// [`crate::rpc::Fleet`] does) and try again.
    #[error("host {host} unavailable (retryable): {msg}")]
    Unavailable { host: String, msg: String },

    /// No host of a fleet attached an accelerator of the tier: every host and why it refused.
    #[error("no host attached {tier}{}: {}", if *retryable { " (retryable)" } else { "" }, refusals.join("; "))]
    NoHost {
        tier: String,
        /// `host: why` for each host tried.
        refusals: Vec<String>,
        /// Whether a host may admit it later (some were unreachable, draining or full).
        retryable: bool,
    },

    /// A tensor of one accelerator was passed to another.
    #[error("tensor belongs to accelerator {owner}, not to accelerator {accelerator}; download and upload it to move it")]
    ForeignTensor { accelerator: u64, owner: u64 },

    /// An ONNX model eia cannot load or run: every problem found, one per line.
    #[error("model: {0}")]
    Model(String),
}

/// `n` bytes for people: "2 GiB" when exact, else "1.50 GiB (1610612736 bytes)".
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if n < 1024 {
        return format!("{n} bytes");
    }
    let (mut scale, mut unit) = (1024u64, 0);
    while n >= scale * 1024 && unit + 1 < UNITS.len() {
        scale *= 1024;
        unit += 1;
    }
    if n.is_multiple_of(scale) {
        format!("{} {}", n / scale, UNITS[unit])
    } else {
        format!("{:.2} {} ({n} bytes)", n as f64 / scale as f64, UNITS[unit])
    }
}

impl Error {
    /// Whether the same call may succeed if tried again (on another host, or later): a host
    /// that is unavailable, or a fleet none of whose hosts could admit the tier just now.
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Unavailable { .. } => true,
            Error::NoHost { retryable, .. } => *retryable,
            _ => false,
        }
    }

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

//! `eia.Error` and one subclass per [`eia::Error`] kind, with the message Rust prints;
//! `RemoteError` also carries the gRPC code (`.code`).

use pyo3::create_exception;
use pyo3::exceptions::PyException;
use pyo3::prelude::*;

create_exception!(eia, Error, PyException, "Every error eia raises.");

/// Declares the subclasses of `Error`, one per `eia::Error` variant, and the mapping.
macro_rules! kinds {
    ($($variant:ident => $class:ident: $doc:literal,)*) => {
        $(create_exception!(eia, $class, Error, $doc);)*

        /// Adds `Error` and its subclasses to the module.
        pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
            let py = m.py();
            m.add("Error", py.get_type::<Error>())?;
            $(m.add(stringify!($class), py.get_type::<$class>())?;)*
            m.add("RemoteError", py.get_type::<RemoteError>())?;
            Ok(())
        }

        /// The Python exception for `e`.
        pub fn to_py(e: eia::Error) -> PyErr {
            let msg = e.to_string();
            match e {
                eia::Error::Remote { code, .. } => remote(code, msg),
                $(eia::Error::$variant { .. } => $class::new_err(msg),)*
            }
        }
    };
}

kinds! {
    Shape => ShapeError: "An operand's shape does not fit the op.",
    DTypeMismatch => DTypeMismatchError: "Operands of one op mix element types.",
    Arity => ArityError: "An op was given too few or too many inputs.",
    Attribute => InvalidAttributeError: "An attribute value is out of range or inconsistent with the operands.",
    DataLength => DataLengthError: "Host data does not hold as many elements as the shape says.",
    ByteLength => ByteLengthError: "A byte buffer does not match its shape and dtype.",
    ShapeOverflow => ShapeOverflowError: "A tensor's element count overflows.",
    Output => OutputError: "An output tensor has the wrong shape or dtype.",
    UnknownDType => UnknownDTypeError: "An element type eia does not compute in (only float32 and float16).",
    Backend => BackendError: "A backend failed or is unavailable.",
    UnknownTier => UnknownTierError: "A tier name that is neither built in nor configured.",
    Config => ConfigError: "A configuration is malformed or inconsistent.",
    MemoryQuota => MemoryQuotaError: "An allocation would exceed the accelerator's memory quota.",
    TensorLimit => TensorLimitError: "The accelerator holds the most tensors it may.",
    ResizeBelowUsage => ResizeBelowUsageError: "A resize to a tier smaller than what the accelerator holds.",
    Capacity => CapacityError: "Attaching or resizing would exceed what the device can deliver.",
    Detached => DetachedError: "The accelerator was detached; its tensors are gone.",
    Network => NetworkError: "The network failed: cannot connect, connection lost, bad TLS or address.",
    Unavailable => UnavailableError: "A host could not answer (dead, draining, or past the deadline); retryable elsewhere.",
    NoHost => NoHostError: "No host of a fleet attached the tier; the message says why each refused.",
    ForeignTensor => ForeignTensorError: "A tensor of one accelerator was passed to another.",
    Model => ModelError: "An ONNX model eia cannot load or run.",
}

create_exception!(
    eia,
    RemoteError,
    Error,
    "A server refused a call; `.code` is its gRPC status code (e.g. 'InvalidArgument')."
);

/// A `RemoteError` whose `code` attribute is the gRPC code.
fn remote(code: String, msg: String) -> PyErr {
    Python::attach(|py| {
        let err = RemoteError::new_err(msg);
        // Setting an attribute on a fresh exception instance cannot fail short of memory.
        let _ = err.value(py).setattr("code", code);
        err
    })
}

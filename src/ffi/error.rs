//! The C ABI's error object and the guard every entry point runs its body in: a typed error, a
//! null argument or a panic all become an `eia_error` with a code and a readable message, and a
//! panic never unwinds into the caller.

use std::any::Any;
use std::ffi::{c_char, CString};
use std::panic::{catch_unwind, AssertUnwindSafe};

use crate::error::Error;

/// What kind of failure an `eia_error` reports (one of the `EIA_ERR_*` values).
pub type eia_code_t = u32;

/// No error (what `eia_error_code(NULL)` returns).
pub const EIA_OK: eia_code_t = 0;
/// A required pointer argument was NULL.
pub const EIA_ERR_NULL_ARGUMENT: eia_code_t = 1;
/// An argument is out of range: an unknown dtype or auto_pad value, a string that is not
/// UTF-8, a host buffer whose size does not match the tensor, an input on another accelerator.
pub const EIA_ERR_INVALID_ARGUMENT: eia_code_t = 2;
/// An operand's shape does not fit the op, or a shape overflows memory.
pub const EIA_ERR_SHAPE: eia_code_t = 3;
/// Operands of one op mix element types.
pub const EIA_ERR_DTYPE: eia_code_t = 4;
/// An op attribute is out of range or inconsistent with the operands.
pub const EIA_ERR_ATTRIBUTE: eia_code_t = 5;
/// Host data does not hold as many elements or bytes as the shape says.
pub const EIA_ERR_DATA_LENGTH: eia_code_t = 6;
/// A tier name that is neither built in nor configured.
pub const EIA_ERR_UNKNOWN_TIER: eia_code_t = 7;
/// A configuration (tier TOML, certificate) is malformed.
pub const EIA_ERR_CONFIG: eia_code_t = 8;
/// An allocation or resize would exceed the accelerator's memory quota or its limit on live
/// tensors.
pub const EIA_ERR_MEMORY_QUOTA: eia_code_t = 9;
/// Attaching or resizing would exceed what the device can deliver.
pub const EIA_ERR_CAPACITY: eia_code_t = 10;
/// The accelerator was detached; its tensors are gone.
pub const EIA_ERR_DETACHED: eia_code_t = 11;
/// A remote server refused the call (the message names its gRPC status).
pub const EIA_ERR_REMOTE: eia_code_t = 12;
/// The network failed: cannot connect, connection lost, bad TLS or address.
pub const EIA_ERR_NETWORK: eia_code_t = 13;
/// The backend failed (out of device memory, no driver, ...).
pub const EIA_ERR_BACKEND: eia_code_t = 14;
/// A bug in eia: the call panicked. The message says where; please report it.
pub const EIA_ERR_INTERNAL: eia_code_t = 15;
/// An ONNX model cannot be loaded or run (the message lists every problem).
pub const EIA_ERR_MODEL: eia_code_t = 16;

/// An error: a code and a message. Returned by every fallible call (NULL means success); the
/// caller owns it and frees it with `eia_error_free`.
pub struct eia_error {
    code: eia_code_t,
    message: CString,
}

impl eia_error {
    pub(crate) fn new(code: eia_code_t, message: impl Into<String>) -> Self {
        let mut message = message.into().into_bytes();
        message.retain(|&b| b != 0);
        eia_error {
            code,
            message: CString::new(message).expect("NUL bytes were removed"),
        }
    }

    /// A NULL pointer where `argument` is required.
    pub(crate) fn null(argument: &str) -> Self {
        eia_error::new(
            EIA_ERR_NULL_ARGUMENT,
            format!("argument `{argument}` is NULL"),
        )
    }

    pub(crate) fn invalid(message: impl Into<String>) -> Self {
        eia_error::new(EIA_ERR_INVALID_ARGUMENT, message)
    }

    fn panicked(payload: Box<dyn Any + Send>) -> Self {
        let what = payload
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "unknown panic".into());
        eia_error::new(
            EIA_ERR_INTERNAL,
            format!("internal error (a bug in eia, please report it): {what}"),
        )
    }
}

impl From<Error> for eia_error {
    fn from(e: Error) -> Self {
        let code = match &e {
            Error::Shape { .. } | Error::ShapeOverflow { .. } => EIA_ERR_SHAPE,
            Error::DTypeMismatch { .. } | Error::UnknownDType(_) => EIA_ERR_DTYPE,
            Error::Attribute { .. } => EIA_ERR_ATTRIBUTE,
            Error::DataLength { .. } | Error::ByteLength { .. } => EIA_ERR_DATA_LENGTH,
            Error::Output { .. } | Error::ForeignTensor { .. } | Error::Arity { .. } => {
                EIA_ERR_INVALID_ARGUMENT
            }
            Error::Backend { .. } => EIA_ERR_BACKEND,
            Error::UnknownTier { .. } => EIA_ERR_UNKNOWN_TIER,
            Error::Config { .. } => EIA_ERR_CONFIG,
            Error::MemoryQuota { .. }
            | Error::TensorLimit { .. }
            | Error::ResizeBelowUsage { .. } => EIA_ERR_MEMORY_QUOTA,
            Error::Capacity(_) => EIA_ERR_CAPACITY,
            Error::Detached(_) => EIA_ERR_DETACHED,
            Error::Remote { .. } => EIA_ERR_REMOTE,
            Error::Network(_) | Error::Unavailable { .. } => EIA_ERR_NETWORK,
            Error::NoHost { .. } => EIA_ERR_CAPACITY,
            Error::Model(_) => EIA_ERR_MODEL,
        };
        eia_error::new(code, e.to_string())
    }
}

/// The result every entry point's body returns.
pub(crate) type Outcome = Result<(), eia_error>;

/// Runs an entry point's body: `None` (NULL) on success, else the error, panics included.
pub(crate) fn guard(body: impl FnOnce() -> Outcome) -> Option<Box<eia_error>> {
    match catch_unwind(AssertUnwindSafe(body)) {
        Ok(Ok(())) => None,
        Ok(Err(e)) => Some(Box::new(e)),
        Err(payload) => Some(Box::new(eia_error::panicked(payload))),
    }
}

/// Drops a handle the caller freed; a panic in its destructor is caught, never unwound.
pub(crate) fn dispose<T>(handle: Option<Box<T>>) {
    drop(guard(move || {
        drop(handle);
        Ok(())
    }));
}

/// The error's code (`EIA_OK` for NULL).
#[no_mangle]
pub extern "C" fn eia_error_code(error: Option<&eia_error>) -> eia_code_t {
    error.map_or(EIA_OK, |e| e.code)
}

/// The error's message, NUL-terminated UTF-8, valid until the error is freed ("" for NULL).
#[no_mangle]
pub extern "C" fn eia_error_message(error: Option<&eia_error>) -> *const c_char {
    error.map_or(c"".as_ptr(), |e| e.message.as_ptr())
}

/// Frees an error. NULL is allowed and does nothing.
#[no_mangle]
pub extern "C" fn eia_error_free(error: Option<Box<eia_error>>) {
    drop(error);
}

/// Frees a string eia returned (`eia_accelerator_summary`, `eia_accelerator_tier_name`). NULL is
/// allowed and does nothing.
///
/// # Safety
/// `s` is NULL or a string eia returned, not freed before.
#[no_mangle]
pub unsafe extern "C" fn eia_string_free(s: *mut c_char) {
    if !s.is_null() {
        // SAFETY: the caller passes a string that `CString::into_raw` made, once.
        drop(unsafe { CString::from_raw(s) });
    }
}

/// The library's version, e.g. "0.1.0" (static; never freed).
#[no_mangle]
pub extern "C" fn eia_version() -> *const c_char {
    const VERSION: &std::ffi::CStr = match std::ffi::CStr::from_bytes_with_nul(
        concat!(env!("CARGO_PKG_VERSION"), "\0").as_bytes(),
    ) {
        Ok(v) => v,
        Err(_) => panic!("the version has no NUL"),
    };
    VERSION.as_ptr()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panic_becomes_an_internal_error() {
        let e = guard(|| panic!("boom {}", 42)).expect("an error");
        assert_eq!(eia_error_code(Some(&e)), EIA_ERR_INTERNAL);
        let msg = unsafe { std::ffi::CStr::from_ptr(eia_error_message(Some(&e))) };
        assert!(msg.to_str().unwrap().ends_with("boom 42"), "{msg:?}");
        assert!(guard(|| Ok(())).is_none());
    }

    #[test]
    fn messages_with_nul_bytes_survive() {
        let e = eia_error::new(EIA_ERR_CONFIG, "a\0b");
        assert_eq!(e.message.to_str().unwrap(), "ab");
    }
}

//! The C ABI (`include/eia.h`): the whole product — local or remote accelerators of a tier,
//! tensors from host memory, every op with its ONNX attributes, whole ONNX models, usage, resize,
//! detach — for C, Python (ctypes) and any runtime with an FFI.
//!
//! Conventions (after wasmtime's and rustls-ffi's C APIs):
//! - Objects are opaque handles made by `eia_*_new` / `_attach` and freed by `eia_*_free`.
//! - Every fallible call returns `eia_error *`: NULL on success, else an error with a code and a
//!   message that the caller frees. Out-parameters are written only on success.
//! - A NULL where a handle, string or out-parameter is required is an `EIA_ERR_NULL_ARGUMENT`
//!   error; a panic inside eia is caught and returned as `EIA_ERR_INTERNAL`, never unwound.
//!
//! The header is generated from these modules by cbindgen (`cbindgen.toml`); `tests/ffi.rs`
//! fails when `include/eia.h` differs from what the code declares.
#![allow(non_camel_case_types)]

pub mod accelerator;
pub mod error;
pub mod model;
pub mod ops;
pub mod tensor;

use std::ffi::{c_char, CStr, CString};

use crate::dtype::DType;
use error::eia_error;

/// Element types of tensors (one of the `EIA_*` dtype values).
pub type eia_dtype_t = u32;
/// IEEE 754 binary32.
pub const EIA_F32: eia_dtype_t = 1;
/// IEEE 754 binary16 storage; ops accumulate in FP32.
pub const EIA_F16: eia_dtype_t = 2;

/// A required handle or out-parameter.
fn required<T>(p: Option<T>, name: &str) -> Result<T, eia_error> {
    p.ok_or_else(|| eia_error::null(name))
}

/// A required NUL-terminated UTF-8 string.
///
/// # Safety
/// `s` is NULL or points to a NUL-terminated string that lives for the call.
unsafe fn string<'a>(s: *const c_char, name: &str) -> Result<&'a str, eia_error> {
    if s.is_null() {
        return Err(eia_error::null(name));
    }
    // SAFETY: non-null and NUL-terminated per the contract above.
    unsafe { CStr::from_ptr(s) }
        .to_str()
        .map_err(|_| eia_error::invalid(format!("argument `{name}` is not valid UTF-8")))
}

/// An optional string: NULL is `None`.
///
/// # Safety
/// As [`string`].
unsafe fn optional_string<'a>(s: *const c_char, name: &str) -> Result<Option<&'a str>, eia_error> {
    if s.is_null() {
        return Ok(None);
    }
    // SAFETY: the caller's contract.
    unsafe { string(s, name) }.map(Some)
}

/// `len` elements at `p`; NULL is allowed only when `len` is 0.
///
/// # Safety
/// `p` is NULL or points to `len` initialised elements that live for the call.
unsafe fn elements<'a, T>(p: *const T, len: usize, name: &str) -> Result<&'a [T], eia_error> {
    if len == 0 {
        return Ok(&[]);
    }
    if p.is_null() {
        return Err(eia_error::null(name));
    }
    // SAFETY: non-null, `len` elements per the contract above.
    Ok(unsafe { std::slice::from_raw_parts(p, len) })
}

fn dtype(value: eia_dtype_t) -> Result<DType, eia_error> {
    match value {
        EIA_F32 => Ok(DType::F32),
        EIA_F16 => Ok(DType::F16),
        other => Err(eia_error::invalid(format!(
            "dtype {other} is unknown: use EIA_F32 ({EIA_F32}) or EIA_F16 ({EIA_F16})"
        ))),
    }
}

fn dtype_value(d: DType) -> eia_dtype_t {
    match d {
        DType::F32 => EIA_F32,
        DType::F16 => EIA_F16,
    }
}

/// A string handed to the caller, who frees it with `eia_string_free`.
fn owned_string(s: String) -> *mut c_char {
    let mut bytes = s.into_bytes();
    bytes.retain(|&b| b != 0);
    CString::new(bytes)
        .expect("NUL bytes were removed")
        .into_raw()
}

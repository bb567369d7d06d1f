//! Tensors across the C ABI: made from host memory (FP32 or FP16, row-major), rewritten, read
//! back, described; each handle keeps the accelerator it lives on.

use std::ffi::c_void;
use std::sync::Arc;

use super::accelerator::{eia_accelerator, Accel};
use super::error::{dispose, eia_error, guard};
use super::{dtype_value, eia_dtype_t, elements, required};
use crate::accelerator::Buffer;
use crate::backend::{Backend, CpuBackend};
use crate::error::Error;
use crate::rpc::{RemoteAccelerator, RemoteBuffer};
use crate::tensor::{HostTensor, Tensor, TensorDesc};
use crate::Accelerator;

/// A tensor on an accelerator. Many threads may read a tensor (use it as an op input, read it
/// back) at once; `eia_tensor_write` and `eia_tensor_free` need it to themselves.
pub struct eia_tensor {
    accel: Arc<Accel>,
    data: Data,
}

/// The tensor's storage on its kind of accelerator.
pub(crate) enum Data {
    Local(Tensor<Buffer>),
    Remote(Tensor<RemoteBuffer>),
}

impl Data {
    fn desc(&self) -> &TensorDesc {
        match self {
            Data::Local(t) => t.desc(),
            Data::Remote(t) => t.desc(),
        }
    }
}

/// An accelerator kind an `eia_accelerator` holds, and where its tensors sit in [`Data`].
pub(crate) trait Held: Backend {
    /// Hands a tensor this accelerator made to a handle.
    fn wrap(&self, t: Tensor<Self::Storage>) -> Data;
    fn unwrap(d: &Data) -> Option<&Tensor<Self::Storage>>;
    fn unwrap_mut(d: &mut Data) -> Option<&mut Tensor<Self::Storage>>;
}

impl Held for Accelerator<CpuBackend> {
    fn wrap(&self, t: Tensor<Buffer>) -> Data {
        Data::Local(t)
    }
    fn unwrap(d: &Data) -> Option<&Tensor<Buffer>> {
        match d {
            Data::Local(t) => Some(t),
            Data::Remote(_) => None,
        }
    }
    fn unwrap_mut(d: &mut Data) -> Option<&mut Tensor<Buffer>> {
        match d {
            Data::Local(t) => Some(t),
            Data::Remote(_) => None,
        }
    }
}

impl Held for RemoteAccelerator {
    fn wrap(&self, t: Tensor<RemoteBuffer>) -> Data {
        Data::Remote(t)
    }
    fn unwrap(d: &Data) -> Option<&Tensor<RemoteBuffer>> {
        match d {
            Data::Remote(t) => Some(t),
            Data::Local(_) => None,
        }
    }
    fn unwrap_mut(d: &mut Data) -> Option<&mut Tensor<RemoteBuffer>> {
        match d {
            Data::Remote(t) => Some(t),
            Data::Local(_) => None,
        }
    }
}

/// Runs `$body` with `$b` bound to the accelerator behind `$accel`, whatever its kind.
macro_rules! on_accel {
    ($accel:expr, $b:ident => $body:expr) => {
        match $accel {
            Accel::Local($b) => $body,
            Accel::Remote($b) => $body,
        }
    };
}
pub(crate) use on_accel;

impl eia_tensor {
    pub(crate) fn new(accel: &Arc<Accel>, data: Data) -> *mut eia_tensor {
        Box::into_raw(Box::new(eia_tensor {
            accel: Arc::clone(accel),
            data,
        }))
    }

    /// This tensor as an operand on `accel`, which must be where it lives.
    pub(crate) fn on<B: Held>(&self, accel: &Arc<Accel>) -> Result<&Tensor<B::Storage>, eia_error> {
        let foreign = || Error::ForeignTensor {
            accelerator: accel.id(),
            owner: self.accel.id(),
        };
        if !Arc::ptr_eq(&self.accel, accel) {
            return Err(foreign().into());
        }
        B::unwrap(&self.data).ok_or_else(|| foreign().into())
    }
}

/// `nbytes` of host data at `data` as a tensor of `dtype` and `shape`.
///
/// # Safety
/// As `eia_tensor_new`.
unsafe fn host_tensor(
    dtype: eia_dtype_t,
    shape: &[usize],
    data: *const c_void,
    nbytes: usize,
) -> Result<HostTensor, eia_error> {
    let dtype = super::dtype(dtype)?;
    // SAFETY: the caller's contract.
    let bytes = unsafe { elements(data.cast::<u8>(), nbytes, "data") }?;
    Ok(HostTensor::from_bytes(dtype, shape, bytes)?)
}

/// Creates a tensor on `accelerator` from host memory: `rank` dimensions at `shape` (row-major;
/// rank 0 is a scalar and `shape` may then be NULL) and `nbytes` bytes of little-endian elements
/// of `dtype` at `data`, which must be exactly the shape's size (`EIA_ERR_DATA_LENGTH` otherwise).
/// The data is copied; the caller keeps its buffer.
///
/// # Safety
/// `shape` points to `rank` values and `data` to `nbytes` readable bytes (either may be NULL
/// when its count is 0).
#[no_mangle]
pub unsafe extern "C" fn eia_tensor_new(
    accelerator: Option<&eia_accelerator>,
    dtype: eia_dtype_t,
    shape: *const usize,
    rank: usize,
    data: *const c_void,
    nbytes: usize,
    out: Option<&mut *mut eia_tensor>,
) -> Option<Box<eia_error>> {
    guard(|| {
        let accelerator = required(accelerator, "accelerator")?;
        let out = required(out, "out")?;
        // SAFETY: the caller's contract, for both arrays.
        let shape = unsafe { elements(shape, rank, "shape") }?;
        let host = unsafe { host_tensor(dtype, shape, data, nbytes) }?;
        let accel = &accelerator.accel;
        *out = on_accel!(&**accel, b => eia_tensor::new(accel, b.wrap(b.upload(&host)?)));
        Ok(())
    })
}

/// Overwrites a tensor's elements with `nbytes` bytes at `data` (its dtype, exactly its size).
///
/// # Safety
/// `data` points to `nbytes` readable bytes.
#[no_mangle]
pub unsafe extern "C" fn eia_tensor_write(
    tensor: Option<&mut eia_tensor>,
    data: *const c_void,
    nbytes: usize,
) -> Option<Box<eia_error>> {
    guard(|| {
        let tensor = required(tensor, "tensor")?;
        let desc = tensor.data.desc();
        // SAFETY: the caller's contract.
        let host = unsafe { host_tensor(dtype_value(desc.dtype()), desc.shape(), data, nbytes) }?;
        on_accel!(&*tensor.accel, b => write(b, &mut tensor.data, &host))?;
        Ok(())
    })
}

fn write<B: Held>(b: &B, data: &mut Data, host: &HostTensor) -> Result<(), Error> {
    let t = B::unwrap_mut(data).expect("a tensor's data is of its accelerator's kind");
    b.write(t, host)
}

/// Copies a tensor's elements into `data`, which holds `nbytes` bytes: exactly the tensor's size
/// (`EIA_ERR_DATA_LENGTH` otherwise). Waits for the ops that write it.
///
/// # Safety
/// `data` points to `nbytes` writable bytes.
#[no_mangle]
pub unsafe extern "C" fn eia_tensor_read(
    tensor: Option<&eia_tensor>,
    data: *mut c_void,
    nbytes: usize,
) -> Option<Box<eia_error>> {
    guard(|| {
        let tensor = required(tensor, "tensor")?;
        let desc = tensor.data.desc();
        if nbytes != desc.bytes() {
            return Err(Error::ByteLength {
                dtype: desc.dtype(),
                shape: desc.shape().to_vec(),
                expected: desc.bytes(),
                got: nbytes,
            }
            .into());
        }
        if nbytes > 0 && data.is_null() {
            return Err(eia_error::null("data"));
        }
        let host = on_accel!(&*tensor.accel, b => download(b, &tensor.data))?;
        // SAFETY: `data` holds `nbytes` writable bytes, the host tensor's size.
        unsafe {
            std::ptr::copy_nonoverlapping(host.as_bytes().as_ptr(), data.cast::<u8>(), nbytes);
        }
        Ok(())
    })
}

fn download<B: Held>(b: &B, data: &Data) -> Result<HostTensor, Error> {
    b.download(B::unwrap(data).expect("a tensor's data is of its accelerator's kind"))
}

/// The tensor's dtype (`EIA_F32` or `EIA_F16`).
#[no_mangle]
pub extern "C" fn eia_tensor_dtype(
    tensor: Option<&eia_tensor>,
    out: Option<&mut eia_dtype_t>,
) -> Option<Box<eia_error>> {
    guard(|| {
        let tensor = required(tensor, "tensor")?;
        *required(out, "out")? = dtype_value(tensor.data.desc().dtype());
        Ok(())
    })
}

/// The tensor's shape: `*dims` points to `*rank` dimensions owned by the tensor, valid until it
/// is freed.
#[no_mangle]
pub extern "C" fn eia_tensor_shape(
    tensor: Option<&eia_tensor>,
    dims: Option<&mut *const usize>,
    rank: Option<&mut usize>,
) -> Option<Box<eia_error>> {
    guard(|| {
        let tensor = required(tensor, "tensor")?;
        let dims = required(dims, "dims")?;
        let rank = required(rank, "rank")?;
        let shape = tensor.data.desc().shape();
        *dims = shape.as_ptr();
        *rank = shape.len();
        Ok(())
    })
}

/// The tensor's size in bytes (what `eia_tensor_read` needs).
#[no_mangle]
pub extern "C" fn eia_tensor_bytes(
    tensor: Option<&eia_tensor>,
    out: Option<&mut usize>,
) -> Option<Box<eia_error>> {
    guard(|| {
        let tensor = required(tensor, "tensor")?;
        *required(out, "out")? = tensor.data.desc().bytes();
        Ok(())
    })
}

/// Frees a tensor (its memory on the accelerator too). NULL is allowed.
#[no_mangle]
pub extern "C" fn eia_tensor_free(tensor: Option<Box<eia_tensor>>) {
    dispose(tensor);
}

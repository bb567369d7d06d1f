//! Tensors: a descriptor (dtype + row-major shape) paired with a backend's storage, and the host
//! storage that data enters and leaves through. Byte views are zero-copy via `bytemuck`.

use half::f16;

use crate::dtype::{DType, Element};
use crate::error::{Error, Result};

/// Element type and row-major shape of a tensor. A scalar has the empty shape.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct TensorDesc {
    dtype: DType,
    shape: Vec<usize>,
    len: usize,
}

impl TensorDesc {
    /// A descriptor; fails if the element count overflows `usize` (or its byte size, `isize`).
    pub fn new(dtype: DType, shape: &[usize]) -> Result<Self> {
        let overflow = || Error::ShapeOverflow {
            shape: shape.to_vec(),
        };
        let len = shape
            .iter()
            .try_fold(1usize, |acc, &d| acc.checked_mul(d))
            .ok_or_else(overflow)?;
        let bytes = len.checked_mul(dtype.size()).ok_or_else(overflow)?;
        if bytes > isize::MAX as usize {
            return Err(overflow());
        }
        Ok(TensorDesc {
            dtype,
            shape: shape.to_vec(),
            len,
        })
    }

    pub fn dtype(&self) -> DType {
        self.dtype
    }

    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    pub fn rank(&self) -> usize {
        self.shape.len()
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Size of the data in bytes.
    pub fn bytes(&self) -> usize {
        self.len * self.dtype.size()
    }
}

/// Tensor data in host memory, typed by dtype. The CPU backend stores it in a
/// [`crate::backend::cpu::CpuData`], next to the forms it derives from it.
#[derive(Clone, Debug, PartialEq)]
pub enum HostData {
    F32(Vec<f32>),
    F16(Vec<f16>),
}

impl HostData {
    pub fn dtype(&self) -> DType {
        match self {
            HostData::F32(_) => DType::F32,
            HostData::F16(_) => DType::F16,
        }
    }

    pub fn len(&self) -> usize {
        match self {
            HostData::F32(v) => v.len(),
            HostData::F16(v) => v.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// `len` copies of `value` rounded to `dtype`.
    pub fn filled(dtype: DType, len: usize, value: f32) -> Self {
        match dtype {
            DType::F32 => HostData::F32(vec![value; len]),
            DType::F16 => HostData::F16(vec![f16::from_f32(value); len]),
        }
    }

    /// Copies little-endian bytes of `dtype` elements.
    pub fn from_bytes(dtype: DType, bytes: &[u8]) -> Self {
        match dtype {
            DType::F32 => HostData::F32(bytemuck::pod_collect_to_vec(bytes)),
            DType::F16 => HostData::F16(bytemuck::pod_collect_to_vec(bytes)),
        }
    }

    /// `len` zero elements of `dtype`, or `None` if the memory cannot be had. Large buffers come
    /// from zeroed pages (no pass over them here): the way to fill one from bytes arriving in
    /// pieces, through [`HostData::as_bytes_mut`], without an intermediate copy.
    pub fn try_zeroed(dtype: DType, len: usize) -> Option<Self> {
        Some(match dtype {
            DType::F32 => HostData::F32(bytemuck::allocation::try_zeroed_vec(len).ok()?),
            DType::F16 => HostData::F16(bytemuck::allocation::try_zeroed_vec(len).ok()?),
        })
    }

    /// Zero-copy view of the elements as bytes.
    pub fn as_bytes(&self) -> &[u8] {
        match self {
            HostData::F32(v) => bytemuck::cast_slice(v),
            HostData::F16(v) => bytemuck::cast_slice(v),
        }
    }

    /// Zero-copy mutable view of the elements as bytes (little-endian, like every host).
    pub fn as_bytes_mut(&mut self) -> &mut [u8] {
        match self {
            HostData::F32(v) => bytemuck::cast_slice_mut(v),
            HostData::F16(v) => bytemuck::cast_slice_mut(v),
        }
    }

    /// Every element widened to f64 (exact).
    pub fn to_f64_vec(&self) -> Vec<f64> {
        match self {
            HostData::F32(v) => v.iter().map(|x| x.to_f64()).collect(),
            HostData::F16(v) => v.iter().map(|x| x.to_f64()).collect(),
        }
    }

    /// Every element widened to f32 (exact; FP16 through `half`'s vectorised slice conversion).
    pub fn to_f32_vec(&self) -> Vec<f32> {
        match self {
            HostData::F32(v) => v.clone(),
            HostData::F16(v) => {
                let mut out = vec![0.0; v.len()];
                half::slice::HalfFloatSliceExt::convert_to_f32_slice(&v[..], &mut out);
                out
            }
        }
    }
}

/// The elements as bytes, so owned host data can back a shared byte buffer without a copy.
impl AsRef<[u8]> for HostData {
    fn as_ref(&self) -> &[u8] {
        self.as_bytes()
    }
}

impl From<Vec<f32>> for HostData {
    fn from(v: Vec<f32>) -> Self {
        HostData::F32(v)
    }
}

impl From<Vec<f16>> for HostData {
    fn from(v: Vec<f16>) -> Self {
        HostData::F16(v)
    }
}

/// A tensor: its descriptor and the storage a backend keeps it in.
#[derive(Clone, Debug, PartialEq)]
pub struct Tensor<S> {
    desc: TensorDesc,
    storage: S,
}

/// A tensor in host memory.
pub type HostTensor = Tensor<HostData>;

impl<S> Tensor<S> {
    /// Pairs storage with its descriptor. Backends call this after they allocated `storage` for
    /// `desc`; the pairing is trusted from then on.
    pub fn from_parts(desc: TensorDesc, storage: S) -> Self {
        Tensor { desc, storage }
    }

    pub fn desc(&self) -> &TensorDesc {
        &self.desc
    }

    pub fn dtype(&self) -> DType {
        self.desc.dtype()
    }

    pub fn shape(&self) -> &[usize] {
        self.desc.shape()
    }

    pub fn storage(&self) -> &S {
        &self.storage
    }

    pub fn storage_mut(&mut self) -> &mut S {
        &mut self.storage
    }

    pub fn into_storage(self) -> S {
        self.storage
    }
}

impl HostTensor {
    /// A host tensor from data and a shape; fails if the element count differs from the shape's.
    pub fn new(shape: &[usize], data: impl Into<HostData>) -> Result<Self> {
        let data = data.into();
        let desc = TensorDesc::new(data.dtype(), shape)?;
        if desc.len() != data.len() {
            return Err(Error::DataLength {
                shape: shape.to_vec(),
                expected: desc.len(),
                got: data.len(),
            });
        }
        Ok(Tensor::from_parts(desc, data))
    }

    /// A host tensor from raw little-endian bytes.
    pub fn from_bytes(dtype: DType, shape: &[usize], bytes: &[u8]) -> Result<Self> {
        let desc = TensorDesc::new(dtype, shape)?;
        if bytes.len() != desc.bytes() {
            return Err(Error::ByteLength {
                dtype,
                shape: shape.to_vec(),
                expected: desc.bytes(),
                got: bytes.len(),
            });
        }
        Ok(Tensor::from_parts(desc, HostData::from_bytes(dtype, bytes)))
    }

    /// A host tensor of `dtype` with every element `value` (rounded to `dtype`).
    pub fn full(dtype: DType, shape: &[usize], value: f32) -> Result<Self> {
        let desc = TensorDesc::new(dtype, shape)?;
        let data = HostData::filled(dtype, desc.len(), value);
        Ok(Tensor::from_parts(desc, data))
    }

    /// A host tensor of `dtype` from f32 values, each rounded to `dtype`.
    pub fn from_f32(dtype: DType, shape: &[usize], values: &[f32]) -> Result<Self> {
        let data = match dtype {
            DType::F32 => HostData::F32(values.to_vec()),
            DType::F16 => {
                // Vectorised (F16C where the CPU has it): a model's whole input, every run.
                let mut v = vec![f16::ZERO; values.len()];
                half::slice::HalfFloatSliceExt::convert_from_f32_slice(&mut v[..], values);
                HostData::F16(v)
            }
        };
        Self::new(shape, data)
    }

    pub fn data(&self) -> &HostData {
        self.storage()
    }

    /// Zero-copy view of the elements as bytes.
    pub fn as_bytes(&self) -> &[u8] {
        self.storage().as_bytes()
    }
}

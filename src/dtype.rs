//! Element types: FP32 and FP16 storage. F16 ops always accumulate in FP32; the `Element` trait
//! is the one place that says how each storage type converts to and from the accumulator.

use half::f16;
use std::fmt;
use std::str::FromStr;

use crate::error::Error;

/// The element type of a tensor.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum DType {
    /// IEEE 754 binary32; arithmetic in FP32.
    F32,
    /// IEEE 754 binary16 storage; arithmetic accumulates in FP32.
    F16,
}

impl DType {
    /// All dtypes, in a fixed order.
    pub const ALL: [DType; 2] = [DType::F32, DType::F16];

    /// Bytes per element.
    pub const fn size(self) -> usize {
        match self {
            DType::F32 => 4,
            DType::F16 => 2,
        }
    }

    /// The Open Inference Protocol datatype string ("FP32", "FP16").
    pub const fn name(self) -> &'static str {
        match self {
            DType::F32 => "FP32",
            DType::F16 => "FP16",
        }
    }
}

impl fmt::Display for DType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for DType {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        match s.to_ascii_lowercase().as_str() {
            "fp32" | "f32" | "float32" | "float" => Ok(DType::F32),
            "fp16" | "f16" | "float16" | "half" => Ok(DType::F16),
            _ => Err(Error::UnknownDType(s.to_string())),
        }
    }
}

/// A storage element type: plain old data with a conversion to and from the FP32 accumulator.
pub trait Element: bytemuck::Pod + Send + Sync + fmt::Debug + 'static {
    /// The dtype tag of this element type.
    const DTYPE: DType;
    /// Widen to the FP32 accumulator type.
    fn to_f32(self) -> f32;
    /// Round from FP32 (round to nearest even).
    fn from_f32(v: f32) -> Self;
    /// Widen to f64 (exact for both storage types).
    fn to_f64(self) -> f64;
    /// Round from f64 (round to nearest even, once).
    fn from_f64(v: f64) -> Self;
}

impl Element for f32 {
    const DTYPE: DType = DType::F32;
    #[inline(always)]
    fn to_f32(self) -> f32 {
        self
    }
    #[inline(always)]
    fn from_f32(v: f32) -> Self {
        v
    }
    #[inline(always)]
    fn to_f64(self) -> f64 {
        self as f64
    }
    #[inline(always)]
    fn from_f64(v: f64) -> Self {
        v as f32
    }
}

impl Element for f16 {
    const DTYPE: DType = DType::F16;
    #[inline(always)]
    fn to_f32(self) -> f32 {
        f16::to_f32(self)
    }
    #[inline(always)]
    fn from_f32(v: f32) -> Self {
        f16::from_f32(v)
    }
    #[inline(always)]
    fn to_f64(self) -> f64 {
        f16::to_f64(self)
    }
    #[inline(always)]
    fn from_f64(v: f64) -> Self {
        f16::from_f64(v)
    }
}

//! Element types: FP32 and FP16 storage. F16 ops always accumulate in FP32; the `Element` trait
//! is the one place that says how each storage type converts to and from the accumulator.
//! [`PerDType`] holds one value of a thing per dtype (a tier's rates, a device's capacity, the
//! FLOPs an accelerator was charged), so the FP32/FP16 pair is written once.

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

/// One value per dtype: the FP32 and FP16 values of one thing, indexed by [`DType`].
///
/// ```
/// use eia::dtype::{DType, PerDType};
/// let tflops = PerDType::new(1.0, 8.0);
/// assert_eq!(tflops[DType::F16], 8.0);
/// let cost = tflops.map(|r| 1e12 / (r * 1e12));
/// assert_eq!(cost.iter().collect::<Vec<_>>(), [(DType::F32, &1.0), (DType::F16, &0.125)]);
/// assert_eq!(tflops.zip(cost).map(|(r, c)| r * c), PerDType::new(1.0, 1.0));
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct PerDType<T> {
    f32: T,
    f16: T,
}

impl<T> PerDType<T> {
    /// The FP32 and FP16 values.
    pub const fn new(f32: T, f16: T) -> Self {
        PerDType { f32, f16 }
    }

    /// The value `f` gives for each dtype.
    pub fn from_fn(mut f: impl FnMut(DType) -> T) -> Self {
        PerDType::new(f(DType::F32), f(DType::F16))
    }

    /// Each value through `f`.
    pub fn map<U>(self, mut f: impl FnMut(T) -> U) -> PerDType<U> {
        PerDType::new(f(self.f32), f(self.f16))
    }

    /// The values of `self` and `other` paired per dtype.
    pub fn zip<U>(self, other: PerDType<U>) -> PerDType<(T, U)> {
        PerDType::new((self.f32, other.f32), (self.f16, other.f16))
    }

    /// Each dtype with its value, in [`DType::ALL`] order.
    pub fn iter(&self) -> impl Iterator<Item = (DType, &T)> {
        DType::ALL.into_iter().map(move |d| (d, &self[d]))
    }
}

impl<T> std::ops::Index<DType> for PerDType<T> {
    type Output = T;
    fn index(&self, dtype: DType) -> &T {
        match dtype {
            DType::F32 => &self.f32,
            DType::F16 => &self.f16,
        }
    }
}

impl<T> std::ops::IndexMut<DType> for PerDType<T> {
    fn index_mut(&mut self, dtype: DType) -> &mut T {
        match dtype {
            DType::F32 => &mut self.f32,
            DType::F16 => &mut self.f16,
        }
    }
}

impl<T> IntoIterator for PerDType<T> {
    type Item = (DType, T);
    type IntoIter = std::array::IntoIter<(DType, T), 2>;
    fn into_iter(self) -> Self::IntoIter {
        [(DType::F32, self.f32), (DType::F16, self.f16)].into_iter()
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

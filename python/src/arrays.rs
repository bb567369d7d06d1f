//! numpy arrays to host tensors and back: float32 and float16 arrays of any shape and strides
//! (a C-contiguous array is copied once, as one slice; any other is gathered in C order).

use eia::{f16, HostData, HostTensor};
use numpy::ndarray::{ArrayD, IxDyn};
use numpy::{IntoPyArray, PyArrayDyn, PyArrayMethods, PyUntypedArrayMethods};
use pyo3::exceptions::PyTypeError;
use pyo3::prelude::*;

use crate::errors::to_py;

/// The array's elements in C order: one slice copy when contiguous, else gathered.
fn elements<T: numpy::Element + Copy>(a: &Bound<'_, PyArrayDyn<T>>) -> Vec<T> {
    let a = a.readonly();
    // `as_slice` also takes Fortran-ordered arrays (memory order): C order only.
    match a.as_slice() {
        Ok(s) if a.is_c_contiguous() => s.to_vec(),
        _ => a.as_array().iter().copied().collect(),
    }
}

/// A host tensor holding `array`'s values (float32 or float16).
pub fn host(array: &Bound<'_, PyAny>) -> PyResult<HostTensor> {
    let (shape, data): (Vec<usize>, HostData) = if let Ok(a) = array.cast::<PyArrayDyn<f32>>() {
        (a.shape().to_vec(), elements(a).into())
    } else if let Ok(a) = array.cast::<PyArrayDyn<f16>>() {
        (a.shape().to_vec(), elements(a).into())
    } else if let Ok(a) = array.cast::<numpy::PyUntypedArray>() {
        let dtype = a.dtype().str()?.to_string();
        return Err(to_py(eia::Error::UnknownDType(dtype)));
    } else {
        return Err(PyTypeError::new_err(format!(
            "expected a numpy.ndarray of float32 or float16, got {}",
            array.get_type().name()?
        )));
    };
    HostTensor::new(&shape, data).map_err(to_py)
}

/// A numpy array owning `t`'s values (no copy: the array takes the tensor's buffer).
pub fn array<'py>(py: Python<'py>, t: HostTensor) -> PyResult<Bound<'py, PyAny>> {
    let shape = IxDyn(t.shape());
    let shaped = |e: numpy::ndarray::ShapeError| PyTypeError::new_err(e.to_string());
    Ok(match t.into_storage() {
        HostData::F32(v) => ArrayD::from_shape_vec(shape, v)
            .map_err(shaped)?
            .into_pyarray(py)
            .into_any(),
        HostData::F16(v) => ArrayD::from_shape_vec(shape, v)
            .map_err(shaped)?
            .into_pyarray(py)
            .into_any(),
    })
}

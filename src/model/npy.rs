//! `.npy` files (numpy's `np.save` / `np.load`) in and out of [`HostTensor`]s, through the
//! `npyz` crate: float32 and float16 arrays as they are, float64 narrowed to float32; C order
//! only.

use std::path::Path;

use npyz::WriterBuilder;

use crate::error::{Error, Result};
use crate::f16;
use crate::tensor::{HostData, HostTensor};

fn npy_err(path: &Path, msg: impl std::fmt::Display) -> Error {
    Error::Config {
        source_name: path.display().to_string(),
        msg: msg.to_string(),
    }
}

/// Reads a `.npy` file.
pub fn read(path: impl AsRef<Path>) -> Result<HostTensor> {
    let path = path.as_ref();
    let bytes = std::fs::read(path).map_err(|e| npy_err(path, e))?;
    let npy = npyz::NpyFile::new(&bytes[..]).map_err(|e| npy_err(path, e))?;
    if npy.order() != npyz::Order::C && npy.shape().len() > 1 {
        return Err(npy_err(
            path,
            "Fortran-order arrays are not supported; save a C-order array (np.ascontiguousarray)",
        ));
    }
    let shape = npy
        .shape()
        .iter()
        .map(|&d| usize::try_from(d).map_err(|_| npy_err(path, format!("dimension {d}"))))
        .collect::<Result<Vec<_>>>()?;
    let descr = npy.dtype().descr();
    let wrap = |e: std::io::Error| npy_err(path, e);
    match descr.trim_matches('\'').trim_start_matches(['<', '=', '|']) {
        "f4" => HostTensor::new(&shape, npy.into_vec::<f32>().map_err(wrap)?),
        "f2" => HostTensor::new(&shape, npy.into_vec::<f16>().map_err(wrap)?),
        "f8" => {
            let v: Vec<f32> = npy
                .into_vec::<f64>()
                .map_err(wrap)?
                .into_iter()
                .map(|v| v as f32)
                .collect();
            HostTensor::new(&shape, v)
        }
        _ => Err(npy_err(
            path,
            format!("array dtype {descr} is not float32, float16 or float64"),
        )),
    }
}

/// Writes `t` as a `.npy` file (float32 or float16).
pub fn write(path: impl AsRef<Path>, t: &HostTensor) -> Result<()> {
    let path = path.as_ref();
    let file = std::fs::File::create(path).map_err(|e| npy_err(path, e))?;
    let shape: Vec<u64> = t.shape().iter().map(|&d| d as u64).collect();
    let io = |e: std::io::Error| npy_err(path, e);
    let out = std::io::BufWriter::new(file);
    match t.data() {
        HostData::F32(v) => {
            let mut w = npyz::WriteOptions::new()
                .default_dtype()
                .shape(&shape)
                .writer(out)
                .begin_nd()
                .map_err(io)?;
            w.extend(v.iter().copied()).map_err(io)?;
            w.finish().map_err(io)
        }
        HostData::F16(v) => {
            let mut w = npyz::WriteOptions::<f16>::new()
                .default_dtype()
                .shape(&shape)
                .writer(out)
                .begin_nd()
                .map_err(io)?;
            w.extend(v.iter().copied()).map_err(io)?;
            w.finish().map_err(io)
        }
    }?;
    Ok(())
}

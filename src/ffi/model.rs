//! Whole ONNX models across the C ABI: load a `.onnx` file onto an accelerator (its weights
//! uploaded once), describe its inputs and outputs, and run inferences from FP32 host buffers
//! into FP32 host buffers — on a remote accelerator, one round trip each.

use std::ffi::{c_char, CString};
use std::sync::{Arc, Mutex};

use super::accelerator::{eia_accelerator, Accel};
use super::error::{dispose, eia_error, guard, Outcome};
use super::{dtype_value, eia_dtype_t, elements, required, string};
use crate::accelerator::Buffer;
use crate::dtype::DType;
use crate::model::{LoadOptions, Model, Port};
use crate::rpc::RemoteBuffer;
use crate::sync::lock;
use crate::tensor::{HostTensor, Tensor};

/// A model loaded onto one accelerator: its weights and buffers live there until
/// `eia_model_free`. Thread-safe; inferences on one model run one at a time (load it again to
/// run several at once).
pub struct eia_model {
    model: Model,
    accel: Arc<Accel>,
    table: Mutex<Table>,
    /// The ports' names as C strings: the inputs, then the outputs.
    names: Vec<CString>,
}

/// The model's tensors on its kind of accelerator (see [`Model::session`]).
enum Table {
    Local(Vec<Option<Tensor<Buffer>>>),
    Remote(Vec<Option<Tensor<RemoteBuffer>>>),
}

/// How to load a model (see `eia_model_options_default`).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct eia_model_options {
    /// The size of a symbolic first input dimension (the batch); at least 1.
    pub batch: usize,
    /// Compute in FP16 (FP16 storage, FP32 accumulation) whatever the model's float type.
    pub fp16: bool,
}

/// Batch 1, FP32.
#[no_mangle]
pub extern "C" fn eia_model_options_default() -> eia_model_options {
    LoadOptions::default().into()
}

impl From<LoadOptions> for eia_model_options {
    fn from(o: LoadOptions) -> Self {
        eia_model_options {
            batch: o.batch,
            fp16: o.fp16,
        }
    }
}

impl From<&eia_model_options> for LoadOptions {
    fn from(o: &eia_model_options) -> Self {
        LoadOptions {
            batch: o.batch,
            fp16: o.fp16,
        }
    }
}

/// A model's input or output, valid while the model lives.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct eia_model_port {
    /// Its name in the ONNX graph (NUL-terminated).
    pub name: *const c_char,
    /// The dtype the model computes it in; host buffers are FP32 whatever this is.
    pub dtype: eia_dtype_t,
    /// `rank` dimensions, at the batch the model was loaded for.
    pub dims: *const usize,
    pub rank: usize,
    /// Elements (the product of `dims`): the length of its host buffer.
    pub elements: usize,
}

/// What one inference costs.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct eia_model_info {
    pub inputs: usize,
    pub outputs: usize,
    /// Ops it runs.
    pub ops: usize,
    /// FLOPs of one inference (what the meter charges).
    pub flops: u64,
    /// Bytes of weights.
    pub weight_bytes: u64,
    /// Accelerator memory the loaded model holds (weights and buffers).
    pub memory_bytes: u64,
}

impl eia_model {
    fn load(accelerator: &eia_accelerator, model: Model) -> Result<eia_model, eia_error> {
        let accel = Arc::clone(&accelerator.accel);
        let table = match &*accel {
            Accel::Local(b) => Table::Local(model.upload(b)?),
            Accel::Remote(b) => Table::Remote(model.upload(b)?),
        };
        let names = model
            .inputs()
            .iter()
            .chain(model.outputs())
            .map(|p| CString::new(p.name.replace('\0', "")).expect("NUL bytes were removed"))
            .collect();
        Ok(eia_model {
            model,
            accel,
            table: Mutex::new(table),
            names,
        })
    }

    fn run(&self, inputs: &[HostTensor]) -> crate::error::Result<Vec<HostTensor>> {
        let mut table = lock(&self.table);
        match (&*self.accel, &mut *table) {
            (Accel::Local(b), Table::Local(t)) => self.model.run_on(b, t, inputs),
            (Accel::Remote(b), Table::Remote(t)) => self.model.run_on(b, t, inputs),
            _ => unreachable!("a model's table is made on its own accelerator"),
        }
    }

    fn port(&self, index: usize, output: bool) -> Result<eia_model_port, eia_error> {
        let (ports, offset, kind) = match output {
            false => (self.model.inputs(), 0, "input"),
            true => (self.model.outputs(), self.model.inputs().len(), "output"),
        };
        let port: &Port = ports.get(index).ok_or_else(|| {
            eia_error::invalid(format!(
                "{kind} {index} does not exist: the model has {} {kind}s",
                ports.len()
            ))
        })?;
        let dims = port.desc.shape();
        Ok(eia_model_port {
            name: self.names[offset + index].as_ptr(),
            dtype: dtype_value(port.desc.dtype()),
            dims: dims.as_ptr(),
            rank: dims.len(),
            elements: port.desc.len(),
        })
    }
}

/// Loads the model from `read`, with `options` (NULL: the defaults), onto `accelerator`, and
/// hands it to `out`.
fn load(
    accelerator: Option<&eia_accelerator>,
    options: Option<&eia_model_options>,
    out: Option<&mut *mut eia_model>,
    read: impl FnOnce(LoadOptions) -> crate::error::Result<Model>,
) -> Outcome {
    let accelerator = required(accelerator, "accelerator")?;
    let out = required(out, "out")?;
    let options = options.map_or_else(LoadOptions::default, LoadOptions::from);
    let model = eia_model::load(accelerator, read(options)?)?;
    *out = Box::into_raw(Box::new(model));
    Ok(())
}

/// Loads the `.onnx` file at `path` onto `accelerator`: every node is checked first (one
/// `EIA_ERR_MODEL` error lists all the problems), a model that does not fit in the
/// accelerator's memory is `EIA_ERR_MEMORY_QUOTA` before anything is uploaded, then the weights
/// are uploaded once.
///
/// # Safety
/// `path` is NULL or a NUL-terminated string.
#[no_mangle]
pub unsafe extern "C" fn eia_model_load(
    accelerator: Option<&eia_accelerator>,
    path: *const c_char,
    options: Option<&eia_model_options>,
    out: Option<&mut *mut eia_model>,
) -> Option<Box<eia_error>> {
    guard(|| {
        // SAFETY: the caller's contract.
        let path = unsafe { string(path, "path") }?;
        load(accelerator, options, out, |o| Model::load(path, o))
    })
}

/// As `eia_model_load`, from the `len` bytes of a `.onnx` file at `bytes`.
///
/// # Safety
/// `bytes` is NULL (only if `len` is 0) or points to `len` readable bytes.
#[no_mangle]
pub unsafe extern "C" fn eia_model_load_bytes(
    accelerator: Option<&eia_accelerator>,
    bytes: *const u8,
    len: usize,
    options: Option<&eia_model_options>,
    out: Option<&mut *mut eia_model>,
) -> Option<Box<eia_error>> {
    guard(|| {
        // SAFETY: the caller's contract.
        let bytes = unsafe { elements(bytes, len, "bytes") }?;
        load(accelerator, options, out, |o| Model::from_bytes(bytes, o))
    })
}

/// The model's counts, FLOPs and memory.
#[no_mangle]
pub extern "C" fn eia_model_describe(
    model: Option<&eia_model>,
    out: Option<&mut eia_model_info>,
) -> Option<Box<eia_error>> {
    guard(|| {
        let m = &required(model, "model")?.model;
        *required(out, "out")? = eia_model_info {
            inputs: m.inputs().len(),
            outputs: m.outputs().len(),
            ops: m.ops().count(),
            flops: m.flops(),
            weight_bytes: m.weight_bytes(),
            memory_bytes: m.peak_bytes(),
        };
        Ok(())
    })
}

/// Input `index` (in graph order).
#[no_mangle]
pub extern "C" fn eia_model_input(
    model: Option<&eia_model>,
    index: usize,
    out: Option<&mut eia_model_port>,
) -> Option<Box<eia_error>> {
    guard(|| {
        *required(out, "out")? = required(model, "model")?.port(index, false)?;
        Ok(())
    })
}

/// Output `index` (in graph order).
#[no_mangle]
pub extern "C" fn eia_model_output(
    model: Option<&eia_model>,
    index: usize,
    out: Option<&mut eia_model_port>,
) -> Option<Box<eia_error>> {
    guard(|| {
        *required(out, "out")? = required(model, "model")?.port(index, true)?;
        Ok(())
    })
}

/// One inference. `inputs[i]` holds `input_lens[i]` FP32 values of input `i`, row-major, for
/// every input in graph order; `outputs[i]` has room for `output_lens[i]` FP32 values of
/// output `i`. Each length must equal the port's `elements`. The outputs are written only on
/// success.
///
/// # Safety
/// `inputs` and `input_lens` point to `n_inputs` elements, each `inputs[i]` to `input_lens[i]`
/// floats; `outputs` and `output_lens` to `n_outputs`, each `outputs[i]` to `output_lens[i]`
/// writable floats that do not overlap the inputs.
#[no_mangle]
pub unsafe extern "C" fn eia_model_run(
    model: Option<&eia_model>,
    inputs: *const *const f32,
    input_lens: *const usize,
    n_inputs: usize,
    outputs: *const *mut f32,
    output_lens: *const usize,
    n_outputs: usize,
) -> Option<Box<eia_error>> {
    guard(|| {
        let model = required(model, "model")?;
        let m = &model.model;
        let count = |kind: &str, want: usize, got: usize| {
            (want != got).then(|| {
                eia_error::invalid(format!("the model has {want} {kind}s, {got} were given"))
            })
        };
        if let Some(e) = count("input", m.inputs().len(), n_inputs)
            .or_else(|| count("output", m.outputs().len(), n_outputs))
        {
            return Err(e);
        }
        // SAFETY: the caller's contract, for each array.
        let (inputs, input_lens, outputs, output_lens) = unsafe {
            (
                elements(inputs, n_inputs, "inputs")?,
                elements(input_lens, n_inputs, "input_lens")?,
                elements(outputs, n_outputs, "outputs")?,
                elements(output_lens, n_outputs, "output_lens")?,
            )
        };
        let check = |kind: &str, port: &Port, len: usize| {
            (len != port.desc.len()).then(|| {
                eia_error::invalid(format!(
                    "{kind} {} is {:?} ({} values), {len} were given",
                    port.name,
                    port.desc.shape(),
                    port.desc.len()
                ))
            })
        };
        let mut hosts = Vec::with_capacity(n_inputs);
        for ((port, &p), &len) in m.inputs().iter().zip(inputs).zip(input_lens) {
            if let Some(e) = check("input", port, len) {
                return Err(e);
            }
            // SAFETY: `p` holds `len` floats per the caller's contract.
            let values = unsafe { elements(p, len, &port.name) }?;
            hosts.push(HostTensor::from_f32(DType::F32, port.desc.shape(), values)?);
        }
        for (port, &len) in m.outputs().iter().zip(output_lens) {
            if let Some(e) = check("output", port, len) {
                return Err(e);
            }
        }
        if let Some(i) = outputs
            .iter()
            .zip(output_lens)
            .position(|(p, &len)| p.is_null() && len > 0)
        {
            return Err(eia_error::null(&format!("outputs[{i}]")));
        }
        let results = model.run(&hosts)?;
        for ((&p, &len), y) in outputs.iter().zip(output_lens).zip(results) {
            if len > 0 {
                // SAFETY: non-null, `len` writable floats per the caller's contract.
                let dst = unsafe { std::slice::from_raw_parts_mut(p, len) };
                dst.copy_from_slice(&y.data().to_f32_vec());
            }
        }
        Ok(())
    })
}

/// Frees a model and its memory on the accelerator. NULL is allowed.
#[no_mangle]
pub extern "C" fn eia_model_free(model: Option<Box<eia_model>>) {
    dispose(model);
}

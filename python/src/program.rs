//! Programs: ops recorded against an accelerator and run together. On a remote accelerator
//! the whole program is one `Run` round trip ([`eia::rpc::client::Program`]): the server
//! allocates every op's output, later ops take earlier ones' outputs, and the tensors asked for
//! are read back in the same trip; on a local accelerator the ops run in order. Each op is validated when recorded (the same typed
//! errors as a direct call); its output is a pending [`Tensor`] until the program runs.

use std::sync::{Arc, Mutex};

use eia::ops::Op;
use eia::rpc::client;
use eia::sync::lock;
use eia::Backend;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList, PyTuple};

use crate::accel::{tensors, Kind, Shared, Storage, Tensor};
use crate::arrays;
use crate::errors::{to_py, Error as PyEiaError};
use crate::ops;

/// An op's input: a tensor with storage, or the output of an earlier step.
enum Input {
    Ready(Py<Tensor>),
    Step(usize),
}

struct Step {
    op: Op,
    inputs: Vec<Input>,
    output: Py<Tensor>,
}

/// Where a program is. Its lock is never held while the GIL is released: `run` takes the
/// steps out, so another thread's call fails fast instead of waiting on it.
enum State {
    Recording(Vec<Step>),
    Running,
    Ran(usize),
}

/// Ops recorded on one accelerator (the Python class `eia.Program` wraps it and adds one
/// method per op).
#[pyclass(frozen, module = "eia._eia")]
pub struct Program {
    acc: Arc<Shared>,
    state: Mutex<State>,
}

impl Program {
    pub fn new(acc: Arc<Shared>) -> Program {
        Program {
            acc,
            state: Mutex::new(State::Recording(Vec::new())),
        }
    }
}

fn not_recording() -> PyErr {
    PyEiaError::new_err("this program has already run (or is running): record a new one")
}

/// The storage of a tensor the program reads: its own, or a step's fresh output.
fn resolve<'a>(
    input: &'a Input,
    outputs: &'a [Storage],
    acc: &Arc<Shared>,
) -> eia::Result<&'a Storage> {
    match input {
        Input::Step(i) => Ok(&outputs[*i]),
        Input::Ready(t) => t
            .get()
            .slot
            .get()
            .filter(|_| Arc::ptr_eq(&t.get().acc, acc))
            .ok_or_else(|| acc.foreign(t.get().acc.id())),
    }
}

#[pymethods]
impl Program {
    /// Records the op `name` on `inputs` with keyword attributes `attrs`; returns its output,
    /// pending until the program runs.
    #[pyo3(signature = (name, inputs, attrs=None))]
    fn apply(
        &self,
        py: Python<'_>,
        name: &str,
        inputs: &Bound<'_, PyTuple>,
        attrs: Option<&Bound<'_, PyDict>>,
    ) -> PyResult<Py<Tensor>> {
        let op = ops::parse(py, name, attrs)?;
        let mut state = lock(&self.state);
        let State::Recording(steps) = &mut *state else {
            return Err(not_recording());
        };
        let mut recorded = Vec::new();
        let mut descs = Vec::new();
        for t in tensors(inputs)? {
            let tensor = t.get();
            let step = steps.iter().position(|s| s.output.as_ptr() == t.as_ptr());
            match step {
                Some(i) => recorded.push(Input::Step(i)),
                None => {
                    tensor.storage(&self.acc)?;
                    recorded.push(Input::Ready(t.clone().unbind()));
                }
            }
            descs.push(tensor.desc.clone());
        }
        let plan = op.plan(&descs.iter().collect::<Vec<_>>()).map_err(to_py)?;
        let output = Py::new(
            py,
            Tensor::new(self.acc.clone(), plan.output().clone(), None),
        )?;
        steps.push(Step {
            op,
            inputs: recorded,
            output: output.clone_ref(py),
        });
        Ok(output)
    }

    /// Runs the recorded ops, then returns the tensors of `fetch` as numpy arrays (read in the
    /// same round trip on a remote accelerator). A program runs once.
    #[pyo3(signature = (fetch = Vec::new()))]
    fn run<'py>(
        &self,
        py: Python<'py>,
        fetch: Vec<Bound<'py, Tensor>>,
    ) -> PyResult<Bound<'py, PyList>> {
        let state = std::mem::replace(&mut *lock(&self.state), State::Running);
        let steps = match state {
            State::Recording(steps) => steps,
            other => {
                *lock(&self.state) = other;
                return Err(not_recording());
            }
        };
        let restore = |steps| *lock(&self.state) = State::Recording(steps);
        // What to read: a step's output (by index) or a tensor that already has storage.
        let fetch = fetch
            .iter()
            .map(
                |t| match steps.iter().position(|s| s.output.as_ptr() == t.as_ptr()) {
                    Some(i) => Ok(Input::Step(i)),
                    None => t
                        .get()
                        .storage(&self.acc)
                        .map(|_| Input::Ready(t.clone().unbind())),
                },
            )
            .collect::<PyResult<Vec<_>>>();
        let fetch = match fetch {
            Ok(f) => f,
            Err(e) => {
                restore(steps);
                return Err(e);
            }
        };
        let ran = py.detach(|| match &self.acc.kind {
            Kind::Remote(r) => self.remote(r, &steps, &fetch),
            Kind::Cpu(a) => self.local(a, &steps, &fetch),
            Kind::Cuda(a) => self.local(a, &steps, &fetch),
        });
        let (outputs, reads) = match ran {
            Ok(ran) => ran,
            Err(e) => {
                restore(steps);
                return Err(to_py(e));
            }
        };
        for (step, y) in steps.iter().zip(outputs) {
            let _ = step.output.get().slot.set(y);
        }
        *lock(&self.state) = State::Ran(steps.len());
        let arrays = reads
            .into_iter()
            .map(|h| arrays::array(py, h))
            .collect::<PyResult<Vec<_>>>()?;
        PyList::new(py, arrays)
    }

    /// How many ops are recorded.
    fn __len__(&self) -> usize {
        match &*lock(&self.state) {
            State::Recording(steps) => steps.len(),
            State::Running => 0,
            State::Ran(n) => *n,
        }
    }
}

type Ran = (Vec<Storage>, Vec<eia::HostTensor>);

impl Program {
    /// On a local accelerator: each op in order (on the backend's own threads), then the reads.
    fn local<B: Backend + Clone + 'static>(
        &self,
        a: &eia::Accelerator<B>,
        steps: &[Step],
        fetch: &[Input],
    ) -> eia::Result<Ran> {
        let outputs = a.run_ops(|| {
            let mut outputs: Vec<Storage> = Vec::with_capacity(steps.len());
            for step in steps {
                let inputs = step
                    .inputs
                    .iter()
                    .map(|x| resolve(x, &outputs, &self.acc))
                    .collect::<eia::Result<Vec<_>>>()?;
                let y = a.apply(&step.op, &self.acc.locals(&inputs)?)?;
                outputs.push(Storage::Local(y));
            }
            Ok::<_, eia::Error>(outputs)
        })?;
        let reads = fetch
            .iter()
            .map(|x| self.acc.download(resolve(x, &outputs, &self.acc)?))
            .collect::<eia::Result<_>>()?;
        Ok((outputs, reads))
    }

    /// On a remote accelerator: one program in one round trip, every output allocated by the
    /// server (an op's input that is an earlier step's output names that step).
    fn remote(
        &self,
        r: &client::RemoteAccelerator,
        steps: &[Step],
        fetch: &[Input],
    ) -> eia::Result<Ran> {
        let mut program = client::Program::new();
        let mut made: Vec<client::Output> = Vec::with_capacity(steps.len());
        for step in steps {
            let inputs = step
                .inputs
                .iter()
                .map(|x| self.operand(x, &made))
                .collect::<eia::Result<Vec<_>>>()?;
            made.push(program.apply_new(&step.op, &inputs)?);
        }
        for x in fetch {
            program.read(self.operand(x, &made)?)?;
        }
        let ran = r.run_all(&program)?;
        let outputs = ran.allocated.into_iter().map(Storage::Remote).collect();
        Ok((outputs, ran.reads))
    }

    /// A remote program's operand for `input`: a tensor it holds, or a step's output.
    fn operand<'a>(
        &self,
        input: &'a Input,
        made: &[client::Output],
    ) -> eia::Result<client::Operand<'a>> {
        match input {
            Input::Step(i) => Ok(client::Operand::Output(made[*i])),
            Input::Ready(_) => Ok(client::Operand::Tensor(
                self.acc.remotes(&[resolve(input, &[], &self.acc)?])?[0],
            )),
        }
    }
}

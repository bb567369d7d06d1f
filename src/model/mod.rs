//! Whole ONNX models: [`Model::load`] reads a `.onnx` file, checks every node up front (one
//! error lists *all* the nodes eia cannot run), infers every shape for a batch size, folds
//! what is constant, and leaves a straight list of [`Op`]s over numbered tensor slots.
//! [`Model::session`] uploads the weights to a backend once; [`Session::run`] runs one
//! inference, freeing each intermediate tensor after its last use.
//!
//! The graph's first input dimension may be symbolic (`N`, `batch_size`, …): it is the batch
//! the model is loaded for ([`LoadOptions::batch`]). Every other dimension must be fixed.

mod fleet;
mod fuse;
pub mod import;
pub mod npy;
pub mod onnx;
pub mod zoo;

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

use prost::Message;

use crate::backend::{Backend, Step};
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::ops::Op;
use crate::sync::lock;
use crate::tensor::{HostData, HostTensor, Tensor, TensorDesc};
pub use fleet::FleetSession;
use import::{Imported, Known};
use onnx::Constant;
use std::sync::Mutex;

/// The ai.onnx opsets eia reads (the attribute forms of opsets 7–21).
pub const OPSETS: std::ops::RangeInclusive<i64> = 7..=21;

/// How to load a model.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LoadOptions {
    /// The size of a symbolic first input dimension.
    pub batch: usize,
    /// Compute in FP16 (weights and activations stored as FP16, FP32 accumulation), whatever
    /// the model's own float type.
    pub fp16: bool,
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions {
            batch: 1,
            fp16: false,
        }
    }
}

/// A runtime input or output of the model.
#[derive(Clone, Debug, PartialEq)]
pub struct Port {
    pub name: String,
    /// Its descriptor (dtype eia computes in, shape at the loaded batch).
    pub desc: TensorDesc,
}

/// One op as the loader resolves it, over slots (one per tensor value of the graph).
#[derive(Clone, Debug)]
pub(crate) struct SlotStep {
    /// The ONNX node's name (`#index` when it has none), for errors and profiles; a fused
    /// step's names joined by `+`.
    node: String,
    op: Op,
    inputs: Vec<usize>,
    output: usize,
    flops: u64,
}

/// A model loaded for one batch size and precision: weights on the host, ops in order.
#[derive(Clone, Debug)]
pub struct Model {
    /// The graph's name.
    pub name: String,
    /// Its ai.onnx opset.
    pub opset: i64,
    inputs: Vec<Port>,
    outputs: Vec<Port>,
    /// Its ops over a table of tensors: the weights (entries `0..weights.len()`), then the
    /// buffers every input and intermediate lives in ([`Model::buffers`]).
    program: Vec<Step>,
    /// Each op's node name and FLOPs.
    nodes: Vec<(String, u64)>,
    weights: Vec<HostTensor>,
    /// The descriptor of each buffer (table entry `weights.len() + i`).
    buffers: Vec<TensorDesc>,
    /// The table entries of the inputs and of the outputs.
    input_entries: Vec<usize>,
    output_entries: Vec<usize>,
}

/// A slot's content while a model is being loaded.
enum Value {
    Slot(usize),
    Const(Constant),
}

fn model_err(msg: impl Into<String>) -> Error {
    Error::Model(msg.into())
}

/// One error listing every problem found.
fn problems(list: &[String]) -> Error {
    model_err(format!(
        "{} problem{}:\n  {}",
        list.len(),
        if list.len() == 1 { "" } else { "s" },
        list.join("\n  ")
    ))
}

fn decode(bytes: &[u8]) -> Result<onnx::proto::ModelProto> {
    onnx::proto::ModelProto::decode(bytes)
        .map_err(|e| model_err(format!("not an ONNX model (protobuf: {e})")))
}

impl Model {
    /// Loads the `.onnx` file at `path` (and the files of its external data, beside it).
    pub fn load(path: impl AsRef<Path>, options: LoadOptions) -> Result<Model> {
        let path = path.as_ref();
        let in_file = |e: Error| match e {
            Error::Model(m) => model_err(format!("{}: {m}", path.display())),
            e => e,
        };
        let bytes = std::fs::read(path)
            .map_err(|e| model_err(format!("cannot read {}: {e}", path.display())))?;
        let mut model = decode(&bytes).map_err(in_file)?;
        let dir = path.parent().unwrap_or(Path::new("."));
        onnx::inline_external_data(&mut model, dir).map_err(|e| in_file(model_err(e)))?;
        Model::from_proto(&model, options).map_err(in_file)
    }

    /// Loads a model from the bytes of a `.onnx` file (with no external data).
    pub fn from_bytes(bytes: &[u8], options: LoadOptions) -> Result<Model> {
        Model::from_proto(&decode(bytes)?, options)
    }

    fn from_proto(model: &onnx::proto::ModelProto, options: LoadOptions) -> Result<Model> {
        if options.batch == 0 {
            return Err(model_err("batch must be at least 1"));
        }
        let graph = model
            .graph
            .as_ref()
            .ok_or_else(|| model_err("not an ONNX model: it has no graph"))?;
        let opset = model
            .opset_import
            .iter()
            .find(|o| matches!(o.domain(), "" | "ai.onnx"))
            .map(|o| o.version())
            .ok_or_else(|| model_err("the model imports no ai.onnx opset"))?;
        if !OPSETS.contains(&opset) {
            return Err(model_err(format!(
                "ai.onnx opset {opset} is not supported (eia reads opsets {}–{})",
                OPSETS.start(),
                OPSETS.end()
            )));
        }
        Loader::new(options, opset).load(graph)
    }

    /// The runtime inputs, in graph order.
    pub fn inputs(&self) -> &[Port] {
        &self.inputs
    }

    /// The outputs, in graph order.
    pub fn outputs(&self) -> &[Port] {
        &self.outputs
    }

    /// The ops it runs, in order.
    pub fn ops(&self) -> impl Iterator<Item = &Op> {
        self.program.iter().map(|s| &s.op)
    }

    /// FLOPs of one inference (what the meter charges).
    pub fn flops(&self) -> u64 {
        self.nodes.iter().map(|(_, f)| f).sum()
    }

    /// Bytes of weights.
    pub fn weight_bytes(&self) -> u64 {
        self.weights.iter().map(|w| w.desc().bytes() as u64).sum()
    }

    /// The device memory a session holds: its weights and the buffers of its inputs and
    /// intermediates. A buffer is shared by tensors of the same dtype and shape whose lives do
    /// not overlap, so this stays near the largest set of tensors live at once.
    pub fn peak_bytes(&self) -> u64 {
        self.weight_bytes() + self.buffers.iter().map(|d| d.bytes() as u64).sum::<u64>()
    }

    /// Uploads the weights to `backend` and allocates the buffers, ready to run.
    pub fn session<'a, B: Backend>(&'a self, backend: &'a B) -> Result<Session<'a, B>> {
        Ok(Session {
            model: self,
            backend,
            table: Mutex::new(self.upload(backend)?),
        })
    }

    /// The table of a session on `backend`: the weights uploaded, the buffers allocated. A
    /// model that does not fit in what the accelerator has left (`Error::MemoryQuota`, or its
    /// tensor limit) is refused before anything is uploaded; an upload that fails anyway frees
    /// what was uploaded before it.
    pub(crate) fn upload<B: Backend>(
        &self,
        backend: &B,
    ) -> Result<Vec<Option<Tensor<B::Storage>>>> {
        backend.check_room(self.peak_bytes(), self.weights.len() + self.buffers.len())?;
        let mut table = Vec::with_capacity(self.weights.len() + self.buffers.len());
        for w in &self.weights {
            table.push(Some(backend.upload(w)?));
        }
        for d in &self.buffers {
            table.push(Some(backend.alloc(d)?));
        }
        Ok(table)
    }

    /// One inference on a session's `table` (see [`Session::run`]).
    pub(crate) fn run_on<B: Backend>(
        &self,
        backend: &B,
        table: &mut [Option<Tensor<B::Storage>>],
        inputs: &[HostTensor],
    ) -> Result<Vec<HostTensor>> {
        self.execute(backend, table, inputs, None)
    }

    /// [`Model::run_on`]; with `times`, step by step (see [`Session::profile`]), pushing each
    /// step's time.
    fn execute<B: Backend>(
        &self,
        backend: &B,
        table: &mut [Option<Tensor<B::Storage>>],
        inputs: &[HostTensor],
        times: Option<&mut Vec<Duration>>,
    ) -> Result<Vec<HostTensor>> {
        if inputs.len() != self.inputs.len() {
            return Err(model_err(format!(
                "the model takes {} inputs ({}), got {}",
                self.inputs.len(),
                self.inputs
                    .iter()
                    .map(|p| p.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
                inputs.len()
            )));
        }
        let mut converted = Vec::new();
        for (port, host) in self.inputs.iter().zip(inputs) {
            if host.shape() != port.desc.shape() {
                return Err(model_err(format!(
                    "input {} is {:?}, the model (loaded for this batch) takes {:?}",
                    port.name,
                    host.shape(),
                    port.desc.shape()
                )));
            }
            converted.push(
                (host.dtype() != port.desc.dtype())
                    .then(|| {
                        // An f32 input is converted as it is, not copied first.
                        let dtype = port.desc.dtype();
                        match host.data() {
                            HostData::F32(v) => HostTensor::from_f32(dtype, host.shape(), v),
                            d => HostTensor::from_f32(dtype, host.shape(), &d.to_f32_vec()),
                        }
                    })
                    .transpose()?,
            );
        }
        let writes: Vec<(usize, &HostTensor)> = self
            .input_entries
            .iter()
            .zip(inputs.iter().zip(&converted))
            .map(|(&e, (host, conv))| (e, conv.as_ref().unwrap_or(host)))
            .collect();
        let run = match times {
            None => backend.run_program(table, &writes, &self.program, &self.output_entries, None),
            Some(times) => self.run_timed(backend, table, &writes, times),
        };
        run.map_err(|e| match e {
            // The server's own refusal, or a host that could not answer: as they are.
            Error::Remote { .. } | Error::Unavailable { .. } => e,
            e => model_err(format!("inference failed: {e}")),
        })
    }

    /// The program with each step timed up to a [`Backend::synchronize`], as a whole program
    /// runs (see [`Backend::run_program`]: a step per call where the backend has no better
    /// way), all inside one [`Backend::run_ops`]: on the CPU every step starts on the pool
    /// thread that ran the one before, the other threads awake. (Outside it, each step was
    /// handed to the pool and woke its sleeping threads: MobileNetV2's ops summed to 7.69 ms on
    /// two threads against 6.79 inside, its whole program's p50 7.24 and 7.18.)
    fn run_timed<B: Backend>(
        &self,
        backend: &B,
        table: &mut [Option<Tensor<B::Storage>>],
        writes: &[(usize, &HostTensor)],
        times: &mut Vec<Duration>,
    ) -> Result<Vec<HostTensor>> {
        let mut last = None;
        let mut observe = || -> Result<()> {
            backend.synchronize()?;
            let now = Instant::now();
            if let Some(last) = last.replace(now) {
                times.push(now - last);
            }
            Ok(())
        };
        backend.run_ops(|| {
            backend.run_program(
                table,
                writes,
                &self.program,
                &self.output_entries,
                Some(&mut observe),
            )
        })
    }

    /// What each op of one inference is: its node's name, its kind (the ONNX op, with `+Add`
    /// / `+Relu` / `+Clip` where a residual Add / a ReLU / a Clip is fused into it and
    /// `(depthwise)` for a Conv with one channel per group) and its FLOPs.
    pub fn nodes(&self) -> impl Iterator<Item = (&str, String, u64)> {
        self.program
            .iter()
            .zip(&self.nodes)
            .map(|(step, (node, flops))| (node.as_str(), self.kind(step), *flops))
    }

    fn kind(&self, step: &Step) -> String {
        let depthwise = match &step.op {
            Op::Conv(c) => {
                let w = step.inputs[1];
                let per_group = self.weights.get(w).map(|w| w.shape()[1]);
                c.group > 1 && per_group == Some(1)
            }
            _ => false,
        };
        let relu = matches!(&step.op, Op::Conv(c) if c.relu)
            || matches!(&step.op, Op::Gemm(g) if g.relu)
            || matches!(&step.op, Op::Add(a) if a.relu);
        let clip = matches!(&step.op, Op::Conv(c) if c.clip.is_some())
            || matches!(&step.op, Op::Gemm(g) if g.clip.is_some());
        let sum = matches!(&step.op, Op::Conv(c) if c.sum);
        format!(
            "{}{}{}{}{}",
            step.op.name(),
            if depthwise { "(depthwise)" } else { "" },
            if sum { "+Add" } else { "" },
            if relu { "+Relu" } else { "" },
            if clip { "+Clip" } else { "" }
        )
    }
}

/// One op's share of a profiled inference ([`Session::profile`]).
#[derive(Clone, Debug, PartialEq)]
pub struct NodeTime {
    /// The ONNX nodes it runs: one node's name (`'name'`, or `#index` when it has none), or
    /// those of a fused group joined by `+` (`'conv'+'bn'+'relu'`).
    pub node: String,
    /// The op it runs (see [`Model::nodes`]).
    pub kind: String,
    pub flops: u64,
    pub time: Duration,
}

/// A model's weights and buffers on one backend: runs inferences, one at a time.
pub struct Session<'a, B: Backend> {
    model: &'a Model,
    backend: &'a B,
    table: Mutex<Vec<Option<Tensor<B::Storage>>>>,
}

impl<B: Backend> Session<'_, B> {
    /// The backend it runs on.
    pub fn backend(&self) -> &B {
        self.backend
    }

    /// One inference: `inputs` in graph order (FP32 or the model's dtype; converted to the
    /// dtype the model computes in), the outputs in graph order. On a remote accelerator this
    /// is one round trip.
    pub fn run(&self, inputs: &[HostTensor]) -> Result<Vec<HostTensor>> {
        self.model
            .run_on(self.backend, &mut lock(&self.table), inputs)
    }

    /// One inference as [`Session::run`], op by op, timing each: the outputs and every op's
    /// time, in program order. Each op is its own [`Backend::run_steps`] call followed by a
    /// [`Backend::synchronize`], all inside one [`Backend::run_ops`] as a whole program runs;
    /// the times add what a whole program saves only where a step is a call of its own: a
    /// round trip per op on a remote accelerator.
    pub fn profile(&self, inputs: &[HostTensor]) -> Result<(Vec<HostTensor>, Vec<NodeTime>)> {
        let mut times = Vec::with_capacity(self.model.program.len());
        let outputs = self.model.execute(
            self.backend,
            &mut lock(&self.table),
            inputs,
            Some(&mut times),
        )?;
        let nodes = self
            .model
            .nodes()
            .zip(times)
            .map(|((node, kind, flops), time)| NodeTime {
                node: node.to_string(),
                kind,
                flops,
                time,
            })
            .collect();
        Ok((outputs, nodes))
    }
}

/// The state of one load: what each value name holds, and the slots so far.
struct Loader {
    options: LoadOptions,
    opset: i64,
    values: HashMap<String, Value>,
    descs: Vec<TensorDesc>,
    weights: Vec<HostTensor>,
    weight_slots: Vec<usize>,
    inputs: Vec<Port>,
    input_slots: Vec<usize>,
    steps: Vec<SlotStep>,
    errors: Vec<String>,
}

impl Loader {
    fn new(options: LoadOptions, opset: i64) -> Self {
        Loader {
            options,
            opset,
            values: HashMap::new(),
            descs: Vec::new(),
            weights: Vec::new(),
            weight_slots: Vec::new(),
            inputs: Vec::new(),
            input_slots: Vec::new(),
            steps: Vec::new(),
            errors: Vec::new(),
        }
    }

    /// The dtype eia computes a float tensor of `dtype` in.
    fn compute_dtype(&self, dtype: DType) -> DType {
        if self.options.fp16 {
            DType::F16
        } else {
            dtype
        }
    }

    fn load(mut self, graph: &onnx::proto::GraphProto) -> Result<Model> {
        for init in &graph.initializer {
            match onnx::tensor(init) {
                Ok(c) => {
                    self.values.insert(init.name().to_string(), Value::Const(c));
                }
                Err(e) => self
                    .errors
                    .push(format!("initializer {}: {e}", init.name())),
            }
        }
        // Nodes cannot be checked against weights that cannot be read.
        if !self.errors.is_empty() {
            return Err(problems(&self.errors));
        }
        for input in &graph.input {
            if self.values.contains_key(input.name()) {
                continue; // an initializer given a default value: a constant here
            }
            match self.input_desc(input) {
                Ok(desc) => {
                    let slot = self.slot(desc.clone());
                    self.values
                        .insert(input.name().to_string(), Value::Slot(slot));
                    self.input_slots.push(slot);
                    self.inputs.push(Port {
                        name: input.name().to_string(),
                        desc,
                    });
                }
                Err(e) => self.errors.push(format!("input {}: {e}", input.name())),
            }
        }
        // Every node of an op eia does not run, grouped by op type (in order of appearance).
        let mut unsupported: Vec<(String, Vec<String>)> = Vec::new();
        for (i, n) in graph.node.iter().enumerate() {
            if matches!(n.domain(), "" | "ai.onnx") && import::SUPPORTED.contains(&n.op_type()) {
                continue;
            }
            let op = format!("{}{}", domain_prefix(n), n.op_type());
            let at = match unsupported.iter().position(|(o, _)| *o == op) {
                Some(at) => at,
                None => {
                    unsupported.push((op, Vec::new()));
                    unsupported.len() - 1
                }
            };
            unsupported[at].1.push(node_name(n, i));
        }
        if !unsupported.is_empty() {
            let count: usize = unsupported.iter().map(|(_, n)| n.len()).sum();
            let lines: Vec<String> = unsupported
                .iter()
                .map(|(op, nodes)| format!("{op} ({}): {}", nodes.len(), nodes.join(", ")))
                .collect();
            return Err(model_err(format!(
                "{count} node{} of {} op type{} eia does not run (eia runs {}):\n  {}",
                if count == 1 { "" } else { "s" },
                unsupported.len(),
                if unsupported.len() == 1 { "" } else { "s" },
                import::SUPPORTED.join(", "),
                lines.join("\n  ")
            )));
        }
        let mut defined: std::collections::HashSet<&str> =
            self.values.keys().map(String::as_str).collect();
        defined.extend(graph.input.iter().map(|i| i.name()));
        let order = topological_order(graph, &defined)?;
        for i in order {
            let node = &graph.node[i];
            if let Err(e) = self.node(node, i) {
                self.errors.push(format!(
                    "node {} ({}): {e}",
                    node_name(node, i),
                    node.op_type()
                ));
            }
        }
        let mut outputs = Vec::new();
        let mut output_slots = Vec::new();
        for out in &graph.output {
            match self.values.get(out.name()) {
                Some(Value::Slot(s)) => {
                    output_slots.push(*s);
                    outputs.push(Port {
                        name: out.name().to_string(),
                        desc: self.descs[*s].clone(),
                    });
                }
                Some(Value::Const(_)) => self.errors.push(format!(
                    "output {} is a constant; eia returns computed tensors",
                    out.name()
                )),
                None if self.errors.is_empty() => self
                    .errors
                    .push(format!("output {} is not produced by any node", out.name())),
                None => {} // an error above already explains it
            }
        }
        if !self.errors.is_empty() {
            return Err(problems(&self.errors));
        }
        fuse::Graph {
            steps: &mut self.steps,
            weights: &mut self.weights,
            weight_slots: &mut self.weight_slots,
            descs: &mut self.descs,
            outputs: &output_slots,
        }
        .fuse()?;
        self.finish(graph.name(), outputs, &output_slots)
    }

    /// The model: the memory plan (a table entry per weight, a buffer per tensor that lives at
    /// run time, shared by tensors of one descriptor whose lives do not overlap) and the ops
    /// over it.
    fn finish(mut self, name: &str, outputs: Vec<Port>, output_slots: &[usize]) -> Result<Model> {
        // Only the weights some op still reads (folding leaves the originals unread), each
        // in its slot's dtype.
        let read: std::collections::HashSet<usize> = self
            .steps
            .iter()
            .flat_map(|s| s.inputs.iter().copied())
            .collect();
        let mut kept = Vec::new();
        let mut kept_slots = Vec::new();
        for (w, s) in std::mem::take(&mut self.weights)
            .into_iter()
            .zip(&self.weight_slots)
        {
            if read.contains(s) {
                let dtype = self.descs[*s].dtype();
                kept.push(if w.dtype() == dtype {
                    w
                } else {
                    HostTensor::from_f32(dtype, w.shape(), &w.data().to_f32_vec())?
                });
                kept_slots.push(*s);
            }
        }
        self.weights = kept;
        self.weight_slots = kept_slots;
        for step in &mut self.steps {
            let descs: Vec<&TensorDesc> = step.inputs.iter().map(|&s| &self.descs[s]).collect();
            step.flops = step.op.plan(&descs)?.flops();
        }
        let frees = frees(&self.steps, &self.weight_slots, output_slots);
        let mut entry = vec![usize::MAX; self.descs.len()];
        for (w, &s) in self.weight_slots.iter().enumerate() {
            entry[s] = w;
        }
        let first_buffer = self.weights.len();
        let mut arena = Arena::default();
        for &s in &self.input_slots {
            entry[s] = first_buffer + arena.take(&self.descs[s]);
        }
        let mut program = Vec::with_capacity(self.steps.len());
        for (step, dead) in self.steps.iter().zip(&frees) {
            entry[step.output] = first_buffer + arena.take(&self.descs[step.output]);
            program.push(Step {
                op: step.op.clone(),
                inputs: step.inputs.iter().map(|&s| entry[s]).collect(),
                output: entry[step.output],
            });
            for &s in dead {
                arena.give_back(&self.descs[s], entry[s] - first_buffer);
            }
        }
        let buffers = arena.buffers;
        Ok(Model {
            name: name.to_string(),
            opset: self.opset,
            input_entries: self.input_slots.iter().map(|&s| entry[s]).collect(),
            output_entries: output_slots.iter().map(|&s| entry[s]).collect(),
            inputs: self.inputs,
            outputs,
            program,
            nodes: self
                .steps
                .iter()
                .map(|s| (s.node.clone(), s.flops))
                .collect(),
            weights: self.weights,
            buffers,
        })
    }

    fn slot(&mut self, desc: TensorDesc) -> usize {
        self.descs.push(desc);
        self.descs.len() - 1
    }

    /// A runtime input's descriptor at the loaded batch.
    fn input_desc(
        &self,
        input: &onnx::proto::ValueInfoProto,
    ) -> std::result::Result<TensorDesc, String> {
        use onnx::proto::tensor_shape_proto::dimension::Value as D;
        use onnx::proto::type_proto::Value as T;
        let Some(T::TensorType(t)) = input.r#type.as_ref().and_then(|t| t.value.as_ref()) else {
            return Err("not a tensor".into());
        };
        let dtype = onnx::float_dtype(t.elem_type()).ok_or_else(|| {
            format!(
                "is {}; eia takes FLOAT and FLOAT16 inputs",
                onnx::type_name(t.elem_type())
            )
        })?;
        let dims = &t
            .shape
            .as_ref()
            .ok_or("has no shape (eia needs every dimension but the batch)")?
            .dim;
        let shape = dims
            .iter()
            .enumerate()
            .map(|(i, d)| match d.value.as_ref() {
                Some(D::DimValue(v)) if *v >= 0 => Ok(*v as usize),
                _ if i == 0 => Ok(self.options.batch),
                Some(D::DimParam(p)) => Err(format!(
                    "dimension {i} is symbolic ({p}); only the first (batch) dimension may be"
                )),
                _ => Err(format!(
                    "dimension {i} is unknown; only the first (batch) dimension may be"
                )),
            })
            .collect::<std::result::Result<Vec<_>, _>>()?;
        TensorDesc::new(self.compute_dtype(dtype), &shape).map_err(|e| e.to_string())
    }

    /// Imports one node (its inputs are known: the order is topological).
    fn node(
        &mut self,
        node: &onnx::proto::NodeProto,
        index: usize,
    ) -> std::result::Result<(), String> {
        let mut known = Vec::with_capacity(node.input.len());
        for name in &node.input {
            known.push(match name.as_str() {
                "" => Known::Absent,
                name => match self.values.get(name) {
                    Some(Value::Slot(s)) => Known::Runtime(&self.descs[*s]),
                    Some(Value::Const(c)) => Known::Const(c),
                    // An input whose own node or declaration failed: that error names it, and
                    // nothing depending on it is checked further.
                    None => return Ok(()),
                },
            });
        }
        let imported = import::import(node, self.opset, &known)?;
        let output = node
            .output
            .first()
            .filter(|o| !o.is_empty())
            .ok_or("it has no output")?
            .clone();
        let value = match imported {
            Imported::Const(c) => Value::Const(c),
            Imported::Alias => match self.values.get(&node.input[0]) {
                Some(Value::Slot(s)) => Value::Slot(*s),
                Some(Value::Const(c)) => Value::Const(c.clone()),
                None => unreachable!("inputs were checked above"),
            },
            Imported::Op(op) => {
                let mut slots = Vec::new();
                // The op's tensor operands; ONNX inputs past them (Clip's bounds, Reshape's
                // shape, …) were read as attributes.
                let operands = node.input.len().min(*op.arity().end());
                for name in node.input[..operands].iter().filter(|n| !n.is_empty()) {
                    let slot = match self.values.get(name) {
                        Some(Value::Slot(s)) => *s,
                        Some(Value::Const(Constant::Float(t))) => {
                            // Kept in FP32 until the model is final (folding reads it), in the
                            // dtype the model computes in from then on.
                            let desc = TensorDesc::new(self.compute_dtype(t.dtype()), t.shape())
                                .map_err(|e| e.to_string())?;
                            let t = HostTensor::new(t.shape(), t.data().to_f32_vec())
                                .map_err(|e| e.to_string())?;
                            let slot = self.slot(desc);
                            self.weights.push(t);
                            self.weight_slots.push(slot);
                            // Later readers of the same initializer share the uploaded copy.
                            self.values.insert(name.clone(), Value::Slot(slot));
                            slot
                        }
                        Some(Value::Const(Constant::Ints { .. })) => {
                            return Err(format!(
                                "input {name} is an integer tensor; {} computes on float tensors",
                                op.name()
                            ))
                        }
                        None => unreachable!("inputs were checked above"),
                    };
                    slots.push(slot);
                }
                let descs: Vec<&TensorDesc> = slots.iter().map(|&s| &self.descs[s]).collect();
                let plan = op.plan(&descs).map_err(|e| e.to_string())?;
                let out = self.slot(plan.output().clone());
                self.steps.push(SlotStep {
                    node: node_name(node, index),
                    op,
                    inputs: slots,
                    output: out,
                    flops: plan.flops(),
                });
                Value::Slot(out)
            }
        };
        self.values.insert(output, value);
        Ok(())
    }
}

/// For each step, the slots to free after it: every input and intermediate that is no model
/// output, after its last reader (an intermediate nothing reads: after the step making it).
/// Weights stay for the session.
fn frees(steps: &[SlotStep], weights: &[usize], outputs: &[usize]) -> Vec<Vec<usize>> {
    let mut last: HashMap<usize, usize> = HashMap::new();
    for (i, step) in steps.iter().enumerate() {
        for &s in step.inputs.iter().chain([&step.output]) {
            last.insert(s, i);
        }
    }
    let mut frees = vec![Vec::new(); steps.len()];
    for (s, i) in last {
        if !weights.contains(&s) && !outputs.contains(&s) {
            frees[i].push(s);
        }
    }
    frees
}

/// Buffers for tensors: one of the same descriptor that is idle, else a new one.
#[derive(Default)]
struct Arena {
    buffers: Vec<TensorDesc>,
    idle: HashMap<TensorDesc, Vec<usize>>,
}

impl Arena {
    fn take(&mut self, desc: &TensorDesc) -> usize {
        self.idle
            .get_mut(desc)
            .and_then(Vec::pop)
            .unwrap_or_else(|| {
                self.buffers.push(desc.clone());
                self.buffers.len() - 1
            })
    }

    fn give_back(&mut self, desc: &TensorDesc, buffer: usize) {
        self.idle.entry(desc.clone()).or_default().push(buffer);
    }
}

fn node_name(node: &onnx::proto::NodeProto, index: usize) -> String {
    if node.name().is_empty() {
        format!("#{index}")
    } else {
        format!("'{}'", node.name())
    }
}

fn domain_prefix(node: &onnx::proto::NodeProto) -> String {
    match node.domain() {
        "" | "ai.onnx" => String::new(),
        d => format!("{d}."),
    }
}

/// The nodes in an order where every input is produced before it is read (Kahn's algorithm,
/// keeping the file's order among ready nodes). A cycle, or an input nothing produces, is an
/// error naming the nodes involved.
fn topological_order(
    graph: &onnx::proto::GraphProto,
    known: &std::collections::HashSet<&str>,
) -> Result<Vec<usize>> {
    let mut producer: HashMap<&str, usize> = HashMap::new();
    let mut problems = Vec::new();
    for (i, node) in graph.node.iter().enumerate() {
        for out in node.output.iter().filter(|o| !o.is_empty()) {
            if known.contains(out.as_str()) || producer.insert(out, i).is_some() {
                problems.push(format!(
                    "node {} ({}): output {out} is already defined",
                    node_name(node, i),
                    node.op_type()
                ));
            }
        }
    }
    let mut waiting = vec![0usize; graph.node.len()];
    let mut readers: Vec<Vec<usize>> = vec![Vec::new(); graph.node.len()];
    for (i, node) in graph.node.iter().enumerate() {
        for input in node.input.iter().filter(|n| !n.is_empty()) {
            if let Some(&p) = producer.get(input.as_str()) {
                waiting[i] += 1;
                readers[p].push(i);
            } else if !known.contains(input.as_str()) {
                problems.push(format!(
                    "node {} ({}): input {input} is not a graph input, an initializer or any node's output",
                    node_name(node, i),
                    node.op_type()
                ));
            }
        }
    }
    if !problems.is_empty() {
        return Err(self::problems(&problems));
    }
    let mut ready: std::collections::BTreeSet<usize> =
        (0..graph.node.len()).filter(|&i| waiting[i] == 0).collect();
    let mut order = Vec::with_capacity(graph.node.len());
    while let Some(i) = ready.pop_first() {
        order.push(i);
        for &r in &readers[i] {
            waiting[r] -= 1;
            if waiting[r] == 0 {
                ready.insert(r);
            }
        }
    }
    if order.len() < graph.node.len() {
        let stuck: Vec<String> = (0..graph.node.len())
            .filter(|&i| waiting[i] > 0)
            .map(|i| {
                format!(
                    "{} ({})",
                    node_name(&graph.node[i], i),
                    graph.node[i].op_type()
                )
            })
            .collect();
        return Err(model_err(format!(
            "the graph has a cycle: nodes {} wait on each other",
            stuck.join(", ")
        )));
    }
    Ok(order)
}

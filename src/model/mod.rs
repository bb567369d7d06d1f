//! Whole ONNX models: [`Model::load`] reads a `.onnx` file, checks every node up front (one
//! error lists *all* the nodes eia cannot run), infers every shape for a batch size, folds
//! what is constant, and leaves a straight list of [`Op`]s over numbered tensor slots.
//! [`Model::session`] uploads the weights to a backend once; [`Session::run`] runs one
//! inference, freeing each intermediate tensor after its last use.
//!
//! The graph's first input dimension may be symbolic (`N`, `batch_size`, …): it is the batch
//! the model is loaded for ([`LoadOptions::batch`]). Every other dimension must be fixed.

pub mod import;
pub mod onnx;

use std::collections::HashMap;
use std::path::Path;

use prost::Message;

use crate::backend::Backend;
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::ops::Op;
use crate::tensor::{HostTensor, Tensor, TensorDesc};
use import::{Imported, Known};
use onnx::Constant;

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

/// One op of the loaded model.
#[derive(Clone, Debug)]
struct Step {
    /// The ONNX node's name (or `op_type#index` when it has none), for errors.
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
    /// Slot of each output.
    output_slots: Vec<usize>,
    /// Every tensor's descriptor, by slot: inputs, weights and step outputs.
    descs: Vec<TensorDesc>,
    /// The weights, and the slot of each.
    weights: Vec<HostTensor>,
    weight_slots: Vec<usize>,
    steps: Vec<Step>,
    /// The runtime slots (inputs, intermediates) each step leaves dead: freed after it.
    frees: Vec<Vec<usize>>,
}

/// A slot's content while a model is being loaded.
enum Value {
    Slot(usize),
    Const(Constant),
}

fn model_err(msg: impl Into<String>) -> Error {
    Error::Model(msg.into())
}

impl Model {
    /// Loads the `.onnx` file at `path`.
    pub fn load(path: impl AsRef<Path>, options: LoadOptions) -> Result<Model> {
        let path = path.as_ref();
        let bytes = std::fs::read(path)
            .map_err(|e| model_err(format!("cannot read {}: {e}", path.display())))?;
        Model::from_bytes(&bytes, options).map_err(|e| match e {
            Error::Model(m) => model_err(format!("{}: {m}", path.display())),
            e => e,
        })
    }

    /// Loads a model from the bytes of a `.onnx` file.
    pub fn from_bytes(bytes: &[u8], options: LoadOptions) -> Result<Model> {
        if options.batch == 0 {
            return Err(model_err("batch must be at least 1"));
        }
        let model = onnx::proto::ModelProto::decode(bytes)
            .map_err(|e| model_err(format!("not an ONNX model (protobuf: {e})")))?;
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
        self.steps.iter().map(|s| &s.op)
    }

    /// FLOPs of one inference (what the meter charges).
    pub fn flops(&self) -> u64 {
        self.steps.iter().map(|s| s.flops).sum()
    }

    /// Bytes of weights.
    pub fn weight_bytes(&self) -> u64 {
        self.weights.iter().map(|w| w.desc().bytes() as u64).sum()
    }

    /// The largest sum of tensor bytes live at once during an inference (inputs, weights,
    /// intermediates and outputs, freeing each tensor after its last use).
    pub fn peak_bytes(&self) -> u64 {
        let bytes = |s: usize| self.descs[s].bytes() as u64;
        let mut live: u64 = self.weight_bytes()
            + self
                .inputs
                .iter()
                .map(|p| p.desc.bytes() as u64)
                .sum::<u64>();
        let mut peak = live;
        for (step, frees) in self.steps.iter().zip(&self.frees) {
            live += bytes(step.output);
            peak = peak.max(live);
            live -= frees.iter().map(|&s| bytes(s)).sum::<u64>();
        }
        peak
    }

    /// Uploads the weights to `backend`, ready to run.
    pub fn session<'a, B: Backend>(&'a self, backend: &'a B) -> Result<Session<'a, B>> {
        let weights = self
            .weights
            .iter()
            .map(|w| backend.upload(w))
            .collect::<Result<Vec<_>>>()?;
        let mut weight_of = vec![None; self.descs.len()];
        for (w, &s) in self.weight_slots.iter().enumerate() {
            weight_of[s] = Some(w);
        }
        Ok(Session {
            weight_of,
            model: self,
            backend,
            weights,
        })
    }
}

/// A model's weights on one backend: runs inferences.
pub struct Session<'a, B: Backend> {
    model: &'a Model,
    backend: &'a B,
    weights: Vec<Tensor<B::Storage>>,
    /// The weight each slot holds, if it holds one.
    weight_of: Vec<Option<usize>>,
}

impl<B: Backend> Session<'_, B> {
    /// The backend it runs on.
    pub fn backend(&self) -> &B {
        self.backend
    }

    /// One inference: `inputs` in graph order (FP32 or the model's dtype; converted to the
    /// dtype the model computes in), the outputs in graph order.
    pub fn run(&self, inputs: &[HostTensor]) -> Result<Vec<HostTensor>> {
        let m = self.model;
        if inputs.len() != m.inputs.len() {
            return Err(model_err(format!(
                "the model takes {} inputs ({}), got {}",
                m.inputs.len(),
                m.inputs
                    .iter()
                    .map(|p| p.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
                inputs.len()
            )));
        }
        let mut slots: Vec<Option<Tensor<B::Storage>>> = Vec::with_capacity(m.descs.len());
        for (port, host) in m.inputs.iter().zip(inputs) {
            if host.shape() != port.desc.shape() {
                return Err(model_err(format!(
                    "input {} is {:?}, the model (loaded for this batch) takes {:?}",
                    port.name,
                    host.shape(),
                    port.desc.shape()
                )));
            }
            let t = if host.dtype() == port.desc.dtype() {
                self.backend.upload(host)?
            } else {
                let values = host.data().to_f32_vec();
                self.backend.upload_owned(HostTensor::from_f32(
                    port.desc.dtype(),
                    host.shape(),
                    &values,
                )?)?
            };
            slots.push(Some(t));
        }
        slots.resize_with(m.descs.len(), || None);
        self.backend.run_ops(|| -> Result<()> {
            for (step, frees) in m.steps.iter().zip(&m.frees) {
                let x: Vec<&Tensor<B::Storage>> = step
                    .inputs
                    .iter()
                    .map(|&s| self.tensor(&slots, s))
                    .collect();
                let y = self.backend.apply(&step.op, &x).map_err(|e| {
                    model_err(format!("node {} ({}): {e}", step.node, step.op.name()))
                })?;
                slots[step.output] = Some(y);
                for &s in frees {
                    slots[s] = None;
                }
            }
            Ok(())
        })?;
        m.output_slots
            .iter()
            .map(|&s| self.backend.download(self.tensor(&slots, s)))
            .collect()
    }

    /// The tensor in slot `s`: a weight, or a live input or intermediate.
    fn tensor<'t>(
        &'t self,
        slots: &'t [Option<Tensor<B::Storage>>],
        s: usize,
    ) -> &'t Tensor<B::Storage> {
        match self.weight_of[s] {
            Some(w) => &self.weights[w],
            None => slots[s]
                .as_ref()
                .expect("a tensor is computed before it is read, and freed after"),
        }
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
    steps: Vec<Step>,
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
        for input in &graph.input {
            if self.values.contains_key(input.name()) {
                continue; // an initializer given a default value: a constant here
            }
            match self.input_desc(input) {
                Ok(desc) => {
                    let slot = self.slot(desc.clone());
                    self.values
                        .insert(input.name().to_string(), Value::Slot(slot));
                    self.inputs.push(Port {
                        name: input.name().to_string(),
                        desc,
                    });
                }
                Err(e) => self.errors.push(format!("input {}: {e}", input.name())),
            }
        }
        let unsupported: Vec<String> = graph
            .node
            .iter()
            .enumerate()
            .filter(|(_, n)| {
                !matches!(n.domain(), "" | "ai.onnx") || !import::SUPPORTED.contains(&n.op_type())
            })
            .map(|(i, n)| {
                format!(
                    "node {} ({}{})",
                    node_name(n, i),
                    domain_prefix(n),
                    n.op_type()
                )
            })
            .collect();
        if !unsupported.is_empty() {
            return Err(model_err(format!(
                "{} node{} use{} ops eia does not run (eia runs {}):\n  {}",
                unsupported.len(),
                if unsupported.len() == 1 { "" } else { "s" },
                if unsupported.len() == 1 { "s" } else { "" },
                import::SUPPORTED.join(", "),
                unsupported.join("\n  ")
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
            return Err(model_err(format!(
                "{} problem{}:\n  {}",
                self.errors.len(),
                if self.errors.len() == 1 { "" } else { "s" },
                self.errors.join("\n  ")
            )));
        }
        let frees = frees(&self.steps, &self.weight_slots, &output_slots);
        Ok(Model {
            frees,
            name: graph.name().to_string(),
            opset: self.opset,
            inputs: self.inputs,
            outputs,
            output_slots,
            descs: self.descs,
            weights: self.weights,
            weight_slots: self.weight_slots,
            steps: self.steps,
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
                for name in node.input.iter().filter(|n| !n.is_empty()) {
                    let slot = match self.values.get(name) {
                        Some(Value::Slot(s)) => *s,
                        Some(Value::Const(Constant::Float(t))) => {
                            let t = if t.dtype() == self.compute_dtype(t.dtype()) {
                                t.clone()
                            } else {
                                HostTensor::from_f32(DType::F16, t.shape(), &t.data().to_f32_vec())
                                    .map_err(|e| e.to_string())?
                            };
                            let slot = self.slot(t.desc().clone());
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
                self.steps.push(Step {
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
fn frees(steps: &[Step], weights: &[usize], outputs: &[usize]) -> Vec<Vec<usize>> {
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
        return Err(model_err(format!(
            "{} problem{}:\n  {}",
            problems.len(),
            if problems.len() == 1 { "" } else { "s" },
            problems.join("\n  ")
        )));
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

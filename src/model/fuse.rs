//! Load-time rewrites of a model's op list that leave its results unchanged beyond the precision
//! contract: a BatchNormalization of a Conv's output (the Conv read by nothing else) folded into
//! the Conv's weights and bias, a residual Add of a Conv's output (read by nothing else) and a
//! tensor of the same shape fused into the Conv as its `sum`, a Relu fused into the epilogue of
//! the Conv, Gemm or Add that produces its input, and a Clip (ReLU6) into that of the Conv or
//! Gemm. Weights are folded in float64 from their FP32 values, before any conversion to FP16.

use std::collections::HashMap;

use super::SlotStep;
use crate::error::Result;
use crate::ops::{Conv, Op};
use crate::tensor::{HostTensor, TensorDesc};

/// The model under rewrite: its steps, and its weights (FP32 host data) by slot.
pub(super) struct Graph<'a> {
    pub steps: &'a mut Vec<SlotStep>,
    pub weights: &'a mut Vec<HostTensor>,
    pub weight_slots: &'a mut Vec<usize>,
    pub descs: &'a mut Vec<TensorDesc>,
    /// Slots that are model outputs (never fused away).
    pub outputs: &'a [usize],
}

impl Graph<'_> {
    /// Applies every rewrite; returns how many ops were removed.
    pub fn fuse(&mut self) -> Result<usize> {
        let before = self.steps.len();
        self.fold_batch_norms()?;
        self.fuse_residuals();
        self.fuse_activations()?;
        Ok(before - self.steps.len())
    }

    /// How many steps read each slot.
    fn readers(&self) -> HashMap<usize, usize> {
        let mut readers = HashMap::new();
        for step in self.steps.iter() {
            for &s in &step.inputs {
                *readers.entry(s).or_insert(0) += 1;
            }
        }
        readers
    }

    /// The step producing `slot`, if a step does and only `reader` reads it (and it is no
    /// model output).
    fn sole_producer(&self, slot: usize, readers: &HashMap<usize, usize>) -> Option<usize> {
        if readers.get(&slot) != Some(&1) || self.outputs.contains(&slot) {
            return None;
        }
        self.steps.iter().position(|s| s.output == slot)
    }

    fn weight(&self, slot: usize) -> Option<&HostTensor> {
        let w = self.weight_slots.iter().position(|&s| s == slot)?;
        Some(&self.weights[w])
    }

    fn add_weight(&mut self, t: HostTensor, dtype: crate::DType) -> Result<usize> {
        self.descs.push(TensorDesc::new(dtype, t.shape())?);
        let slot = self.descs.len() - 1;
        self.weights.push(t);
        self.weight_slots.push(slot);
        Ok(slot)
    }

    /// `Conv → BatchNormalization` into one Conv: per output channel k, with
    /// `f = scale / √(var + ε)`, `W'[k] = f·W[k]` and `B'[k] = f·(B[k] − mean) + bias`.
    fn fold_batch_norms(&mut self) -> Result<()> {
        let mut i = 0;
        while i < self.steps.len() {
            if let Some(conv) = self.fold_one(i)? {
                let bn = self.steps.remove(i);
                let j = if conv < i { conv } else { conv - 1 };
                self.steps[j].absorb(bn);
                continue;
            }
            i += 1;
        }
        Ok(())
    }

    /// Folds step `i` (if a foldable BatchNormalization) into its Conv, returning the Conv's
    /// step index.
    fn fold_one(&mut self, i: usize) -> Result<Option<usize>> {
        let Op::BatchNorm(bn) = &self.steps[i].op else {
            return Ok(None);
        };
        let epsilon = bn.epsilon as f64;
        let readers = self.readers();
        let Some(j) = self.sole_producer(self.steps[i].inputs[0], &readers) else {
            return Ok(None);
        };
        let Op::Conv(conv) = &self.steps[j].op else {
            return Ok(None);
        };
        if conv.relu || conv.clip.is_some() || conv.sum {
            return Ok(None);
        }
        let conv: Conv = conv.clone();
        let params: Option<Vec<Vec<f64>>> = self.steps[i].inputs[1..]
            .iter()
            .map(|&s| self.weight(s).map(|t| t.data().to_f64_vec()))
            .collect();
        let w_slot = self.steps[j].inputs[1];
        let (Some(params), Some(w)) = (params, self.weight(w_slot).cloned()) else {
            return Ok(None);
        };
        let bias = match self.steps[j].inputs.get(2) {
            Some(&b) => match self.weight(b) {
                Some(t) => Some(t.data().to_f64_vec()),
                None => return Ok(None),
            },
            None => None,
        };
        let k = w.shape()[0];
        let per_k = w.shape()[1..].iter().product::<usize>();
        let (scale, shift, mean, var) = (&params[0], &params[1], &params[2], &params[3]);
        let f: Vec<f64> = (0..k)
            .map(|c| scale[c] / (var[c] + epsilon).sqrt())
            .collect();
        let wv = w.data().to_f64_vec();
        let new_w: Vec<f32> = (0..k * per_k)
            .map(|e| (wv[e] * f[e / per_k]) as f32)
            .collect();
        let new_b: Vec<f32> = (0..k)
            .map(|c| (f[c] * (bias.as_ref().map_or(0.0, |b| b[c]) - mean[c]) + shift[c]) as f32)
            .collect();
        let dtype = self.descs[w_slot].dtype();
        let new_w = self.add_weight(HostTensor::new(w.shape(), new_w)?, dtype)?;
        let new_b = self.add_weight(HostTensor::new(&[k], new_b)?, dtype)?;
        let x = self.steps[j].inputs[0];
        self.steps[j].inputs = vec![x, new_w, new_b];
        self.steps[j].op = Op::Conv(conv);
        Ok(Some(j))
    }

    /// `Conv → Add(conv, other)` (either operand order) into one Conv with `sum = other`, when
    /// nothing else reads the Conv's output, `other` has the Add's output descriptor (no
    /// broadcasting) and the Conv has no epilogue of its own yet (an activation before the Add
    /// cannot move after it). The fused Conv runs where the Add ran, after `other` is made; its
    /// own inputs were made before its old place.
    fn fuse_residuals(&mut self) {
        let mut i = 0;
        while i < self.steps.len() {
            if let Some((j, other)) = self.residual_conv(i) {
                let add = self.steps.remove(i);
                let mut conv = self.steps.remove(j);
                if let Op::Conv(c) = &mut conv.op {
                    c.sum = true;
                    c.relu = matches!(add.op, Op::Add(a) if a.relu);
                }
                conv.inputs.insert(2, other);
                conv.absorb(add);
                // Where the Add was (j < i: one step before it has gone).
                self.steps.insert(i - 1, conv);
                continue;
            }
            i += 1;
        }
    }

    /// The Conv step and the other operand of step `i`, if it is an Add that
    /// [`Graph::fuse_residuals`] fuses.
    fn residual_conv(&self, i: usize) -> Option<(usize, usize)> {
        let Op::Add(_) = self.steps[i].op else {
            return None;
        };
        let readers = self.readers();
        let [a, b] = self.steps[i].inputs[..] else {
            return None;
        };
        let out = &self.descs[self.steps[i].output];
        [(a, b), (b, a)].into_iter().find_map(|(conv_out, other)| {
            let j = self.sole_producer(conv_out, &readers)?;
            let fusable = matches!(&self.steps[j].op,
                Op::Conv(c) if !c.sum && !c.relu && c.clip.is_none());
            let same = self.descs[conv_out] == *out && self.descs[other] == *out;
            (fusable && same && j < i).then_some((j, other))
        })
    }

    /// `Conv | Gemm | Add → Relu` into the producer's fused ReLU, and `Conv | Gemm → Clip` into
    /// its fused Clip.
    fn fuse_activations(&mut self) -> Result<()> {
        let mut i = 0;
        while i < self.steps.len() {
            if matches!(self.steps[i].op, Op::Relu | Op::Clip(_)) {
                let readers = self.readers();
                if let Some(j) = self.sole_producer(self.steps[i].inputs[0], &readers) {
                    let activation = self.steps[i].op.clone();
                    if fuse_activation(&mut self.steps[j].op, &activation) {
                        let fused = self.steps.remove(i);
                        let j = if j < i { j } else { j - 1 };
                        self.steps[j].absorb(fused);
                        continue;
                    }
                }
            }
            i += 1;
        }
        Ok(())
    }
}

impl SlotStep {
    /// Takes over the output of `fused`, the step folded into it, and adds its node to its
    /// name (`'conv'+'bn'+'relu'`), so errors and profiles name every node a step runs.
    fn absorb(&mut self, fused: SlotStep) {
        self.output = fused.output;
        self.node = format!("{}+{}", self.node, fused.node);
    }
}

/// Fuses `activation` (a Relu or a Clip) into `op`'s epilogue, if `op` has that epilogue and
/// nothing would then run in another order: a ReLU goes in where neither a ReLU nor a Clip is
/// fused yet (the epilogue applies the ReLU first), a Clip where no Clip is.
fn fuse_activation(op: &mut Op, activation: &Op) -> bool {
    let (relu, clip) = match op {
        Op::Conv(c) => (&mut c.relu, Some(&mut c.clip)),
        Op::Gemm(g) => (&mut g.relu, Some(&mut g.clip)),
        Op::Add(a) => (&mut a.relu, None),
        _ => return false,
    };
    match (activation, clip) {
        (Op::Relu, None) => !std::mem::replace(relu, true),
        (Op::Relu, Some(clip)) if clip.is_none() => !std::mem::replace(relu, true),
        (Op::Clip(c), Some(clip)) if clip.is_none() => {
            *clip = Some(*c);
            true
        }
        _ => false,
    }
}

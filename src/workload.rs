//! Named op workloads — the shapes that matter for inference (square and skinny GEMMs, ResNet-50
//! convolution layers, softmax rows, batch norm on ResNet activations) — shared by the `eia run`
//! command, the criterion benches and the peer comparison script, so every tool measures the
//! same problems.

use crate::backend::Backend;
use crate::dtype::DType;
use crate::error::Result;
use crate::ops::{BatchNorm, Concat, Conv, Gemm, Op, Softmax, Transpose};
use crate::tensor::{HostTensor, Tensor, TensorDesc};

/// One benchmarkable problem.
#[derive(Clone, Debug, PartialEq)]
pub enum Workload {
    /// `Y[m,n] = A[m,k] · B[k,n]` (ONNX Gemm, no C).
    Gemm { m: usize, n: usize, k: usize },
    /// A 2-D convolution with bias; `name` says which network layer it is.
    Conv {
        name: &'static str,
        x: [usize; 4],
        w: [usize; 4],
        conv: Conv,
    },
    /// BatchNormalization of an `[N, C, H, W]` activation.
    BatchNorm { shape: [usize; 4] },
    /// Softmax over the last axis of `[rows, len]`.
    Softmax { rows: usize, len: usize },
    /// Transpose of an `[N, C, H, W]` activation by `perm` (NCHW → NHWC and back).
    Transpose { shape: [usize; 4], perm: [usize; 4] },
    /// Concat of `inputs` `[N, C, H, W]` activations along the channels (Inception, DenseNet).
    Concat { shape: [usize; 4], inputs: usize },
}

impl Workload {
    /// Square GEMMs 256–2048 and skinny inference GEMMs (classifier heads, im2col shapes).
    pub fn gemms() -> Vec<Workload> {
        let square = [256, 512, 1024, 2048].map(|s| Workload::Gemm { m: s, n: s, k: s });
        let skinny = [
            (1, 1000, 2048),
            (32, 1000, 2048),
            (64, 3136, 576),
            (256, 196, 2304),
        ]
        .map(|(m, n, k)| Workload::Gemm { m, n, k });
        square.into_iter().chain(skinny).collect()
    }

    /// ResNet-50 convolution layers (and one MobileNet depthwise layer) at batch `n`.
    pub fn resnet50_convs(n: usize) -> Vec<Workload> {
        let pad1 = Conv {
            pads: [1; 4],
            ..Conv::default()
        };
        let layer = |name, c, hw, k, rs, conv: Conv| Workload::Conv {
            name,
            x: [n, c, hw, hw],
            w: [k, c / conv.group, rs, rs],
            conv,
        };
        vec![
            layer(
                "conv1_7x7s2",
                3,
                224,
                64,
                7,
                Conv {
                    strides: [2, 2],
                    pads: [3; 4],
                    ..Conv::default()
                },
            ),
            layer("res2_1x1", 64, 56, 64, 1, Conv::default()),
            layer("res2_3x3", 64, 56, 64, 3, pad1.clone()),
            layer("res2_1x1_expand", 64, 56, 256, 1, Conv::default()),
            layer("res3_3x3", 128, 28, 128, 3, pad1.clone()),
            layer("res4_3x3", 256, 14, 256, 3, pad1.clone()),
            layer("res4_1x1_reduce", 1024, 14, 256, 1, Conv::default()),
            layer("res5_3x3", 512, 7, 512, 3, pad1.clone()),
            layer(
                "mobilenet_dw_3x3",
                128,
                56,
                128,
                3,
                Conv { group: 128, ..pad1 },
            ),
        ]
    }

    /// Batch norm on ResNet activations.
    pub fn batch_norms() -> Vec<Workload> {
        [[1, 64, 112, 112], [8, 256, 56, 56], [1, 1024, 14, 14]]
            .map(|shape| Workload::BatchNorm { shape })
            .into()
    }

    /// Softmax rows of 1k–32k.
    pub fn softmaxes() -> Vec<Workload> {
        [(256, 1000), (64, 4096), (32, 32768)]
            .map(|(rows, len)| Workload::Softmax { rows, len })
            .into()
    }

    /// Layout ops on ResNet-sized activations: NCHW ↔ NHWC transposes and channel concats.
    pub fn layouts() -> Vec<Workload> {
        let shape = [8, 64, 56, 56];
        vec![
            Workload::Transpose {
                shape,
                perm: [0, 2, 3, 1],
            },
            Workload::Transpose {
                shape: [8, 56, 56, 64],
                perm: [0, 3, 1, 2],
            },
            Workload::Concat { shape, inputs: 2 },
            Workload::Concat {
                shape: [8, 32, 28, 28],
                inputs: 4,
            },
        ]
    }

    /// The sizes a GPU is judged at besides the shared ones: GEMM 4096³ and 8192³, and batch norm
    /// and softmax on tensors far larger than a GPU's caches.
    pub fn gpu_scale() -> Vec<Workload> {
        vec![
            Workload::Gemm {
                m: 4096,
                n: 4096,
                k: 4096,
            },
            Workload::Gemm {
                m: 8192,
                n: 8192,
                k: 8192,
            },
            Workload::BatchNorm {
                shape: [32, 256, 56, 56],
            },
            Workload::Softmax {
                rows: 65536,
                len: 1000,
            },
            Workload::Softmax {
                rows: 4096,
                len: 32768,
            },
        ]
    }

    /// Every workload of every family (convolutions at batch 1 and 8).
    pub fn all() -> Vec<Workload> {
        let mut all = Self::gemms();
        all.extend(Self::resnet50_convs(1));
        all.extend(Self::resnet50_convs(8));
        all.extend(Self::batch_norms());
        all.extend(Self::softmaxes());
        all.extend(Self::layouts());
        all
    }

    /// The op family: "gemm", "conv", "batchnorm" or "softmax".
    pub fn family(&self) -> &'static str {
        match self {
            Workload::Gemm { .. } => "gemm",
            Workload::Conv { .. } => "conv",
            Workload::BatchNorm { .. } => "batchnorm",
            Workload::Softmax { .. } => "softmax",
            Workload::Transpose { .. } => "transpose",
            Workload::Concat { .. } => "concat",
        }
    }

    /// A stable id, e.g. `gemm/1024x1024x1024`, `conv/res4_3x3/n8`, `softmax/32x32768`.
    pub fn id(&self) -> String {
        match self {
            Workload::Gemm { m, n, k } => format!("gemm/{m}x{n}x{k}"),
            Workload::Conv { name, x, .. } => format!("conv/{name}/n{}", x[0]),
            Workload::BatchNorm {
                shape: [n, c, h, w],
            } => format!("batchnorm/{n}x{c}x{h}x{w}"),
            Workload::Softmax { rows, len } => format!("softmax/{rows}x{len}"),
            Workload::Transpose { shape, perm } => format!(
                "transpose/{}/perm{}",
                dims(shape),
                perm.map(|p| p.to_string()).concat()
            ),
            Workload::Concat { shape, inputs } => format!("concat/{inputs}x{}", dims(shape)),
        }
    }

    /// The input descriptors, in the op's operand order.
    fn input_descs(&self, dtype: DType) -> Result<Vec<TensorDesc>> {
        let d = |shape: &[usize]| TensorDesc::new(dtype, shape);
        match self {
            Workload::Gemm { m, n, k } => Ok(vec![d(&[*m, *k])?, d(&[*k, *n])?]),
            Workload::Conv { x, w, .. } => Ok(vec![d(x)?, d(w)?, d(&[w[0]])?]),
            Workload::BatchNorm { shape } => {
                let p = d(&[shape[1]])?;
                Ok(vec![d(shape)?, p.clone(), p.clone(), p.clone(), p])
            }
            Workload::Softmax { rows, len } => Ok(vec![d(&[*rows, *len])?]),
            Workload::Transpose { shape, .. } => Ok(vec![d(shape)?]),
            Workload::Concat { shape, inputs } => Ok(vec![d(shape)?; *inputs]),
        }
    }

    /// The op it runs.
    pub fn op(&self) -> Op {
        match self {
            Workload::Gemm { .. } => Op::Gemm(Gemm::default()),
            Workload::Conv { conv, .. } => Op::Conv(conv.clone()),
            Workload::BatchNorm { .. } => Op::BatchNorm(BatchNorm::default()),
            Workload::Softmax { .. } => Op::Softmax(Softmax::default()),
            Workload::Transpose { perm, .. } => Op::Transpose(Transpose {
                perm: Some(perm.map(|p| p as i64).to_vec()),
            }),
            Workload::Concat { .. } => Op::Concat(Concat { axis: 1 }),
        }
    }

    /// Exact FLOPs (what the meter charges) and the output descriptor.
    pub fn plan(&self, dtype: DType) -> Result<(u64, TensorDesc)> {
        let inputs = self.input_descs(dtype)?;
        let plan = self.op().plan(&inputs.iter().collect::<Vec<_>>())?;
        Ok((plan.flops(), plan.output().clone()))
    }

    /// Compulsory memory traffic in bytes: every input read once, the output written once.
    pub fn bytes(&self, dtype: DType) -> Result<u64> {
        let (_, out) = self.plan(dtype)?;
        let inputs: usize = self.input_descs(dtype)?.iter().map(TensorDesc::bytes).sum();
        Ok((inputs + out.bytes()) as u64)
    }

    /// Whether throughput is best judged in GB/s (memory-bound) rather than GFLOPS.
    pub fn memory_bound(&self) -> bool {
        matches!(
            self,
            Workload::BatchNorm { .. }
                | Workload::Softmax { .. }
                | Workload::Transpose { .. }
                | Workload::Concat { .. }
        )
    }

    /// Uploads deterministic pseudo-random inputs (never all zero; BN variances positive) and
    /// allocates the output.
    pub fn prepare<B: Backend>(&self, backend: &B, dtype: DType) -> Result<Prepared<B>> {
        let mut state = 0x9E37_79B9_7F4A_7C15u64;
        let inputs = self
            .input_descs(dtype)?
            .iter()
            .enumerate()
            .map(|(i, desc)| {
                let (lo, hi) = if matches!(self, Workload::BatchNorm { .. }) && i == 4 {
                    (0.5, 1.5)
                } else {
                    (-1.0, 1.0)
                };
                let values: Vec<f32> = (0..desc.len())
                    .map(|_| uniform(&mut state, lo, hi))
                    .collect();
                backend.upload(&HostTensor::from_f32(dtype, desc.shape(), &values)?)
            })
            .collect::<Result<Vec<_>>>()?;
        let output = backend.alloc(&self.plan(dtype)?.1)?;
        Ok(Prepared {
            op: self.op(),
            inputs,
            output,
        })
    }
}

/// `8x64x56x56`.
fn dims(shape: &[usize]) -> String {
    shape
        .iter()
        .map(|d| d.to_string())
        .collect::<Vec<_>>()
        .join("x")
}

/// A uniform value in `[lo, hi)` from a xorshift state (deterministic test and demo data).
pub fn uniform(state: &mut u64, lo: f32, hi: f32) -> f32 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    lo + (hi - lo) * ((*state >> 40) as f32 / (1u64 << 24) as f32)
}

/// A workload's tensors on a backend, ready to run repeatedly.
pub struct Prepared<B: Backend> {
    op: Op,
    inputs: Vec<Tensor<B::Storage>>,
    output: Tensor<B::Storage>,
}

impl<B: Backend> Prepared<B> {
    /// Runs the op once into the prepared output (asynchronously on asynchronous backends).
    pub fn run(&mut self, backend: &B) -> Result<()> {
        let inputs: Vec<&Tensor<B::Storage>> = self.inputs.iter().collect();
        backend.apply_into(&self.op, &inputs, &mut self.output)
    }

    /// The output of the last run.
    pub fn output(&self) -> &Tensor<B::Storage> {
        &self.output
    }
}

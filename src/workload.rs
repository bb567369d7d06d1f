//! Named op workloads — the shapes that matter for inference (square and skinny GEMMs, ResNet-50
//! convolution layers, softmax rows, batch norm and activations on ResNet activations) — shared by the `eia run`
//! command, the criterion benches and the peer comparison script, so every tool measures the
//! same problems.

use crate::backend::Backend;
use crate::dtype::DType;
use crate::error::Result;
use crate::ops::{
    Add, AveragePool, BatchNorm, Clip, Concat, Conv, Gemm, LeakyRelu, Lrn, MaxPool, Op, Softmax,
    Transpose,
};
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
    /// An elementwise activation (Relu, Clip, LeakyRelu, Sigmoid, Tanh) of an `[N, C, H, W]`
    /// activation.
    Unary { op: Op, shape: [usize; 4] },
    /// An elementwise op (Add, Sub, Mul, Div; Add with its fused ReLU) of `a` and `b`, broadcast.
    Binary {
        op: Op,
        a: Vec<usize>,
        b: Vec<usize>,
    },
    /// A pool (`op`: MaxPool, AveragePool, GlobalAveragePool or GlobalMaxPool) of an
    /// `[N, C, H, W]` activation; `name` says which network layer it is.
    Pool {
        name: &'static str,
        x: [usize; 4],
        op: Op,
    },
    /// Transpose of an `[N, C, H, W]` activation by `perm` (NCHW → NHWC and back).
    Transpose { shape: [usize; 4], perm: [usize; 4] },
    /// Concat of `inputs` `[N, C, H, W]` activations along the channels (Inception, DenseNet).
    Concat { shape: [usize; 4], inputs: usize },
    /// LRN (`size` channels, ONNX's default alpha, beta, bias) of an `[N, C, H, W]` activation;
    /// `name` says which network layer it is.
    Lrn {
        name: &'static str,
        x: [usize; 4],
        size: usize,
    },
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

    /// ResNet-50 convolution layers (one of them the strided 3×3 that opens its fourth stage) and
    /// five MobileNetV2 layers (its stem, its widest pointwise expansion and projection, a
    /// depthwise layer of stride 1 and one of stride 2) at batch `n`.
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
            layer(
                "res4_3x3s2",
                256,
                28,
                256,
                3,
                Conv {
                    strides: [2, 2],
                    ..pad1.clone()
                },
            ),
            layer("res4_1x1_reduce", 1024, 14, 256, 1, Conv::default()),
            layer("res5_3x3", 512, 7, 512, 3, pad1.clone()),
            layer(
                "mobilenet_stem_3x3s2",
                3,
                224,
                32,
                3,
                Conv {
                    strides: [2, 2],
                    ..pad1.clone()
                },
            ),
            layer("mobilenet_1x1_expand", 16, 112, 96, 1, Conv::default()),
            layer("mobilenet_1x1_project", 144, 56, 24, 1, Conv::default()),
            layer(
                "mobilenet_dw_3x3",
                128,
                56,
                128,
                3,
                Conv {
                    group: 128,
                    ..pad1.clone()
                },
            ),
            layer(
                "mobilenet_dw_3x3s2",
                144,
                56,
                144,
                3,
                Conv {
                    group: 144,
                    strides: [2, 2],
                    ..pad1
                },
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

    /// Activations after ResNet's first convolution and before its pooling head: Relu, ReLU6
    /// (Clip 0..6), LeakyRelu (0.01), Sigmoid and Tanh.
    pub fn unaries() -> Vec<Workload> {
        let ops = [
            Op::Relu,
            Op::Clip(Clip::RELU6),
            Op::LeakyRelu(LeakyRelu::default()),
            Op::Sigmoid,
            Op::Tanh,
        ];
        ops.into_iter()
            .flat_map(|op| {
                [[1, 64, 112, 112], [32, 2048, 7, 7]].map(|shape| Workload::Unary {
                    op: op.clone(),
                    shape,
                })
            })
            .collect()
    }

    /// ResNet's elementwise ops at batch `n`: the residual Add → ReLU of two `[n,256,56,56]`
    /// activations, a per-channel Mul by `[1,256,1,1]`, and a row-wise Div of `[n·512, 1000]` by
    /// `[n·512, 1]`.
    pub fn binaries(n: usize) -> Vec<Workload> {
        let act = vec![n, 256, 56, 56];
        vec![
            Workload::Binary {
                op: Op::Add(Add { relu: true }),
                a: act.clone(),
                b: act.clone(),
            },
            Workload::Binary {
                op: Op::Mul,
                a: act,
                b: vec![1, 256, 1, 1],
            },
            Workload::Binary {
                op: Op::Div,
                a: vec![n * 512, 1000],
                b: vec![n * 512, 1],
            },
        ]
    }

    /// ResNet-50's pools at batch 1 and 8: the stem MaxPool (3×3, stride 2, pads 1) and the
    /// GlobalAveragePool before the classifier; and Inception v3's AveragePool (3×3, stride 1,
    /// pads 1, padding excluded from the count) on its 35×35 blocks.
    pub fn pools() -> Vec<Workload> {
        let stem = Op::MaxPool(MaxPool {
            kernel_shape: [3, 3],
            strides: [2, 2],
            pads: [1; 4],
            ..MaxPool::default()
        });
        let inception = Op::AveragePool(AveragePool {
            kernel_shape: [3, 3],
            strides: [1, 1],
            pads: [1; 4],
            ..AveragePool::default()
        });
        [1, 8]
            .into_iter()
            .flat_map(|n| {
                [
                    Workload::Pool {
                        name: "maxpool_3x3s2",
                        x: [n, 64, 112, 112],
                        op: stem.clone(),
                    },
                    Workload::Pool {
                        name: "global_avg",
                        x: [n, 2048, 7, 7],
                        op: Op::GlobalAveragePool,
                    },
                    Workload::Pool {
                        name: "avgpool_3x3s1",
                        x: [n, 256, 35, 35],
                        op: inception.clone(),
                    },
                ]
            })
            .collect()
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

    /// The LRNs of AlexNet (after conv1, `[N, 96, 55, 55]`) and Inception v1 (after conv2,
    /// `[N, 192, 56, 56]`), size 5, at batch 1 and 8.
    pub fn lrns() -> Vec<Workload> {
        [1, 8]
            .into_iter()
            .flat_map(|n| {
                [
                    Workload::Lrn {
                        name: "alexnet_norm1",
                        x: [n, 96, 55, 55],
                        size: 5,
                    },
                    Workload::Lrn {
                        name: "inception_norm2",
                        x: [n, 192, 56, 56],
                        size: 5,
                    },
                ]
            })
            .collect()
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
            Workload::binaries(32).swap_remove(0),
            Workload::binaries(32).swap_remove(1),
        ]
    }

    /// Every workload of every family (convolutions at batch 1 and 8).
    pub fn all() -> Vec<Workload> {
        let mut all = Self::gemms();
        all.extend(Self::resnet50_convs(1));
        all.extend(Self::resnet50_convs(8));
        all.extend(Self::batch_norms());
        all.extend(Self::softmaxes());
        all.extend(Self::unaries());
        all.extend(Self::binaries(8));
        all.extend(Self::pools());
        all.extend(Self::layouts());
        all.extend(Self::lrns());
        all
    }

    /// The op family: "gemm", "conv", "batchnorm", "softmax", "unary", "binary", "pool",
    /// "transpose", "concat" or "lrn".
    pub fn family(&self) -> &'static str {
        match self {
            Workload::Gemm { .. } => "gemm",
            Workload::Conv { .. } => "conv",
            Workload::BatchNorm { .. } => "batchnorm",
            Workload::Softmax { .. } => "softmax",
            Workload::Unary { .. } => "unary",
            Workload::Binary { .. } => "binary",
            Workload::Pool { .. } => "pool",
            Workload::Transpose { .. } => "transpose",
            Workload::Concat { .. } => "concat",
            Workload::Lrn { .. } => "lrn",
        }
    }

    /// A stable id, e.g. `gemm/1024x1024x1024`, `conv/res4_3x3/n8`, `softmax/32x32768`,
    /// `relu/1x64x112x112` (unary ops by their lowercase ONNX name).
    pub fn id(&self) -> String {
        match self {
            Workload::Gemm { m, n, k } => format!("gemm/{m}x{n}x{k}"),
            Workload::Conv { name, x, .. } => format!("conv/{name}/n{}", x[0]),
            Workload::BatchNorm {
                shape: [n, c, h, w],
            } => format!("batchnorm/{n}x{c}x{h}x{w}"),
            Workload::Softmax { rows, len } => format!("softmax/{rows}x{len}"),
            Workload::Unary {
                op,
                shape: [n, c, h, w],
            } => format!("{}/{n}x{c}x{h}x{w}", op.name().to_lowercase()),
            Workload::Binary { op, a, b } => {
                let name = match op {
                    Op::Add(Add { relu: true }) => "add_relu".to_string(),
                    op => op.name().to_lowercase(),
                };
                let dims = |s: &[usize]| {
                    s.iter()
                        .map(|d| d.to_string())
                        .collect::<Vec<_>>()
                        .join("x")
                };
                format!("binary/{name}/{}_by_{}", dims(a), dims(b))
            }
            Workload::Pool { name, x, .. } => format!("pool/{name}/n{}", x[0]),
            Workload::Transpose { shape, perm } => format!(
                "transpose/{}/perm{}",
                dims(shape),
                perm.map(|p| p.to_string()).concat()
            ),
            Workload::Concat { shape, inputs } => format!("concat/{inputs}x{}", dims(shape)),
            Workload::Lrn { name, x, .. } => format!("lrn/{name}/n{}", x[0]),
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
            Workload::Unary { shape, .. } => Ok(vec![d(shape)?]),
            Workload::Binary { a, b, .. } => Ok(vec![d(a)?, d(b)?]),
            Workload::Pool { x, .. } => Ok(vec![d(x)?]),
            Workload::Transpose { shape, .. } => Ok(vec![d(shape)?]),
            Workload::Concat { shape, inputs } => Ok(vec![d(shape)?; *inputs]),
            Workload::Lrn { x, .. } => Ok(vec![d(x)?]),
        }
    }

    /// The op it runs.
    pub fn op(&self) -> Op {
        match self {
            Workload::Gemm { .. } => Op::Gemm(Gemm::default()),
            Workload::Conv { conv, .. } => Op::Conv(conv.clone()),
            Workload::BatchNorm { .. } => Op::BatchNorm(BatchNorm::default()),
            Workload::Softmax { .. } => Op::Softmax(Softmax::default()),
            Workload::Unary { op, .. } => op.clone(),
            Workload::Binary { op, .. } => op.clone(),
            Workload::Pool { op, .. } => op.clone(),
            Workload::Transpose { perm, .. } => Op::Transpose(Transpose {
                perm: Some(perm.map(|p| p as i64).to_vec()),
            }),
            Workload::Concat { .. } => Op::Concat(Concat { axis: 1 }),
            Workload::Lrn { size, .. } => Op::Lrn(Lrn {
                size: *size,
                ..Lrn::default()
            }),
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
                | Workload::Unary { .. }
                | Workload::Binary { .. }
                | Workload::Pool { .. }
                | Workload::Transpose { .. }
                | Workload::Concat { .. }
                | Workload::Lrn { .. }
        )
    }

    /// The yardstick of a memory-bound workload: a plain copy (ONNX Identity, one parallel
    /// chunked memcpy on the CPU) of a 1-D tensor of half of [`Workload::bytes`] (rounded down to
    /// whole elements), so that reading it and writing its copy moves the bytes the op moves.
    /// Returns the copy's own traffic in bytes (2 × its tensor's bytes) and it, ready to run;
    /// `eia run` times it beside the op ("% of copy").
    pub fn prepare_copy<B: Backend>(
        &self,
        backend: &B,
        dtype: DType,
    ) -> Result<(u64, Prepared<B>)> {
        let len = self.bytes(dtype)? as usize / 2 / dtype.size();
        let desc = TensorDesc::new(dtype, &[len])?;
        let mut state = 0x9E37_79B9_7F4A_7C15u64;
        let values: Vec<f32> = (0..len).map(|_| uniform(&mut state, -1.0, 1.0)).collect();
        let input = backend.upload(&HostTensor::from_f32(dtype, desc.shape(), &values)?)?;
        let output = backend.alloc(&desc)?;
        Ok((
            2 * desc.bytes() as u64,
            Prepared {
                op: Op::Identity,
                inputs: vec![input],
                output,
            },
        ))
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
                let (lo, hi) = if matches!(self, Workload::BatchNorm { .. }) && i == 4
                    || matches!(self, Workload::Binary { op: Op::Div, .. }) && i == 1
                {
                    (0.5, 1.5)
                } else if matches!(self, Workload::Unary { .. }) {
                    (-8.0, 8.0) // both sides of every activation's bends
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

//! Conversions between the wire messages and eia's types, in both directions, and between
//! [`Error`] and gRPC statuses. Everything that decodes client input validates it here and
//! returns INVALID_ARGUMENT with a readable message rather than panicking.

use std::time::Duration;

use tonic::{Code, Status};

use super::proto;
use crate::accelerator::{Tier, Usage};
use crate::dtype::DType;
use crate::error::Error;
use crate::ops::{AutoPad, BatchNorm, Conv, Gemm, GemmSource, Softmax};
use crate::ops::{BatchNormPlan, ConvPlan, GemmPlan, SoftmaxPlan};
use crate::tensor::TensorDesc;

/// The status a server returns for an error.
pub fn status(e: Error) -> Status {
    let code = match &e {
        Error::MemoryQuota { .. }
        | Error::TensorLimit { .. }
        | Error::Capacity(_)
        | Error::ResizeBelowUsage { .. } => Code::ResourceExhausted,
        Error::Detached(_) => Code::NotFound,
        Error::Backend { .. } | Error::Network(_) => Code::Internal,
        Error::Remote { .. } => Code::Unknown,
        _ => Code::InvalidArgument,
    };
    Status::new(code, e.to_string())
}

/// The error a client reports for a status.
pub fn error(s: Status) -> Error {
    match s.code() {
        Code::Unavailable | Code::Cancelled | Code::DeadlineExceeded => {
            Error::Network(format!("{}: {}", s.code().description(), s.message()))
        }
        code => Error::Remote {
            code: format!("{code:?}"),
            msg: s.message().to_string(),
        },
    }
}

/// The error for a server reply that lacks what the protocol promises.
pub fn data_loss(msg: impl Into<String>) -> Error {
    Error::Remote {
        code: "DataLoss".into(),
        msg: msg.into(),
    }
}

pub fn invalid(msg: impl Into<String>) -> Status {
    Status::invalid_argument(msg)
}

/// A tensor's wire meta from its descriptor.
pub fn meta(desc: &TensorDesc) -> proto::TensorMeta {
    proto::TensorMeta {
        datatype: desc.dtype().name().to_string(),
        shape: desc.shape().iter().map(|&d| d as u64).collect(),
    }
}

/// A descriptor from wire meta (datatype string and shape, validated).
pub fn desc(meta: Option<&proto::TensorMeta>) -> Result<TensorDesc, Status> {
    let meta = meta.ok_or_else(|| invalid("tensor meta (datatype, shape) is missing"))?;
    let dtype: DType = meta.datatype.parse().map_err(status)?;
    let shape: Vec<usize> = meta
        .shape
        .iter()
        .map(|&d| usize::try_from(d).map_err(|_| invalid(format!("dimension {d} is too large"))))
        .collect::<Result<_, _>>()?;
    TensorDesc::new(dtype, &shape).map_err(status)
}

pub fn tier(t: &Tier) -> proto::Tier {
    proto::Tier {
        name: t.name().to_string(),
        fp32_tflops: t.tflops(DType::F32),
        fp16_tflops: t.tflops(DType::F16),
        memory_bytes: t.memory(),
    }
}

pub fn tier_from(t: Option<proto::Tier>) -> crate::Result<Tier> {
    let t = t.ok_or_else(|| data_loss("the server sent no tier"))?;
    Tier::new(&t.name, t.fp32_tflops, t.fp16_tflops, t.memory_bytes)
}

pub fn usage(u: &Usage) -> proto::Usage {
    proto::Usage {
        accelerator: u.accelerator,
        tier: u.tier.clone(),
        attached_seconds: u.attached.as_secs_f64(),
        ops: u.ops,
        flops_fp32: u.flops_f32,
        flops_fp16: u.flops_f16,
        charged_seconds: u.charged,
        meter_wait_seconds: u.meter_wait.as_secs_f64(),
        busy_seconds: u.busy.as_secs_f64(),
        bytes_uploaded: u.bytes_uploaded,
        bytes_downloaded: u.bytes_downloaded,
        op_bytes: u.op_bytes,
        memory_used: u.memory_used,
        memory_high_water: u.memory_high_water,
        memory_quota: u.memory_quota,
        meter_balance_seconds: u.meter_balance,
    }
}

pub fn usage_from(u: Option<proto::Usage>) -> crate::Result<Usage> {
    let u = u.ok_or_else(|| data_loss("the server sent no usage"))?;
    let secs = |s: f64| Duration::try_from_secs_f64(s).unwrap_or_default();
    Ok(Usage {
        accelerator: u.accelerator,
        tier: u.tier,
        attached: secs(u.attached_seconds),
        ops: u.ops,
        flops_f32: u.flops_fp32,
        flops_f16: u.flops_fp16,
        charged: u.charged_seconds,
        meter_wait: secs(u.meter_wait_seconds),
        busy: secs(u.busy_seconds),
        bytes_uploaded: u.bytes_uploaded,
        bytes_downloaded: u.bytes_downloaded,
        op_bytes: u.op_bytes,
        memory_used: u.memory_used,
        memory_high_water: u.memory_high_water,
        memory_quota: u.memory_quota,
        meter_balance: u.meter_balance_seconds,
    })
}

/// An op decoded from the wire, with its attributes validated for form (the accelerator
/// validates them against the operands).
pub enum WireOp {
    Gemm(Gemm),
    MatMul,
    Conv(Conv),
    BatchNorm(BatchNorm),
    Softmax(Softmax),
}

impl WireOp {
    /// (fewest, most) input handles the op takes.
    pub fn arity(&self) -> (usize, usize) {
        match self {
            WireOp::Gemm(_) => (2, 3),
            WireOp::MatMul => (2, 2),
            WireOp::Conv(_) => (2, 3),
            WireOp::BatchNorm(_) => (5, 5),
            WireOp::Softmax(_) => (1, 1),
        }
    }

    pub fn name(&self) -> &'static str {
        match self {
            WireOp::Gemm(_) => "Gemm",
            WireOp::MatMul => "MatMul",
            WireOp::Conv(_) => "Conv",
            WireOp::BatchNorm(_) => "BatchNormalization",
            WireOp::Softmax(_) => "Softmax",
        }
    }
}

pub fn op_from(kind: Option<&proto::op::Kind>) -> Result<WireOp, Status> {
    use proto::op::Kind;
    Ok(match kind.ok_or_else(|| invalid("op kind is missing"))? {
        Kind::Gemm(g) => WireOp::Gemm(Gemm {
            alpha: g.alpha,
            beta: g.beta,
            trans_a: g.trans_a,
            trans_b: g.trans_b,
            relu: g.relu,
        }),
        Kind::Matmul(_) => WireOp::MatMul,
        Kind::Conv(c) => WireOp::Conv(conv_from(c)?),
        Kind::BatchNorm(b) => WireOp::BatchNorm(BatchNorm { epsilon: b.epsilon }),
        Kind::Softmax(s) => WireOp::Softmax(Softmax { axis: s.axis }),
    })
}

fn conv_from(c: &proto::ConvOp) -> Result<Conv, Status> {
    fn fixed<const N: usize>(name: &str, v: &[u64]) -> Result<[usize; N], Status> {
        let values: Vec<usize> = v
            .iter()
            .map(|&x| {
                usize::try_from(x).map_err(|_| invalid(format!("Conv {name}: {x} is too large")))
            })
            .collect::<Result<_, _>>()?;
        values
            .try_into()
            .map_err(|_| invalid(format!("Conv {name}: expected {N} values, got {}", v.len())))
    }
    let auto_pad = match c.auto_pad.as_str() {
        "" | "NOTSET" => AutoPad::NotSet,
        "SAME_UPPER" => AutoPad::SameUpper,
        "SAME_LOWER" => AutoPad::SameLower,
        "VALID" => AutoPad::Valid,
        other => {
            return Err(invalid(format!(
                "Conv auto_pad: {other:?} is not NOTSET, SAME_UPPER, SAME_LOWER or VALID"
            )))
        }
    };
    Ok(Conv {
        strides: fixed("strides", &c.strides)?,
        pads: fixed("pads", &c.pads)?,
        dilations: fixed("dilations", &c.dilations)?,
        group: usize::try_from(c.group).map_err(|_| invalid("Conv group is too large"))?,
        auto_pad,
        kernel_shape: if c.kernel_shape.is_empty() {
            None
        } else {
            Some(fixed("kernel_shape", &c.kernel_shape)?)
        },
        relu: c.relu,
    })
}

/// The wire form of the op a GEMM plan came from.
pub fn gemm_kind(plan: &GemmPlan) -> proto::op::Kind {
    match plan.source {
        GemmSource::Gemm(g) => proto::op::Kind::Gemm(proto::GemmOp {
            alpha: g.alpha,
            beta: g.beta,
            trans_a: g.trans_a,
            trans_b: g.trans_b,
            relu: g.relu,
        }),
        GemmSource::MatMul => proto::op::Kind::Matmul(proto::MatMulOp {}),
    }
}

pub fn conv_kind(plan: &ConvPlan) -> proto::op::Kind {
    let c = &plan.attrs;
    let u = |v: &[usize]| v.iter().map(|&x| x as u64).collect();
    proto::op::Kind::Conv(proto::ConvOp {
        strides: u(&c.strides),
        pads: u(&c.pads),
        dilations: u(&c.dilations),
        group: c.group as u64,
        auto_pad: match c.auto_pad {
            AutoPad::NotSet => "NOTSET",
            AutoPad::SameUpper => "SAME_UPPER",
            AutoPad::SameLower => "SAME_LOWER",
            AutoPad::Valid => "VALID",
        }
        .to_string(),
        kernel_shape: c.kernel_shape.map(|k| u(&k)).unwrap_or_default(),
        relu: c.relu,
    })
}

pub fn batch_norm_kind(plan: &BatchNormPlan) -> proto::op::Kind {
    proto::op::Kind::BatchNorm(proto::BatchNormOp {
        epsilon: plan.epsilon,
    })
}

pub fn softmax_kind(plan: &SoftmaxPlan) -> proto::op::Kind {
    proto::op::Kind::Softmax(proto::SoftmaxOp { axis: plan.axis })
}

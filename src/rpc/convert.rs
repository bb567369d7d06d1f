//! Conversions between the wire messages and eia's types ([`Op`] included, with the ONNX
//! defaults of attributes left unset), in both directions, and between [`Error`] and gRPC
//! statuses. Everything that decodes client input validates it here and returns
//! INVALID_ARGUMENT with a readable message rather than panicking.

use std::time::Duration;

use tonic::{Code, Status};

use super::proto;
use crate::accelerator::{Tier, Usage};
use crate::dtype::DType;
use crate::error::Error;
use crate::ops::{AutoPad, BatchNorm, Conv, Gemm, Op, Softmax};
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

/// An op from the wire: its attributes validated for form (the plan validates them against the
/// operands), ONNX defaults for those left unset.
pub fn op_from(kind: Option<&proto::op::Kind>) -> Result<Op, Status> {
    use proto::op::Kind;
    Ok(match kind.ok_or_else(|| invalid("op kind is missing"))? {
        Kind::Gemm(g) => {
            let d = Gemm::default();
            Op::Gemm(Gemm {
                alpha: g.alpha.unwrap_or(d.alpha),
                beta: g.beta.unwrap_or(d.beta),
                trans_a: g.trans_a,
                trans_b: g.trans_b,
                relu: g.relu,
            })
        }
        Kind::Matmul(_) => Op::MatMul,
        Kind::Conv(c) => Op::Conv(conv_from(c)?),
        Kind::BatchNorm(b) => Op::BatchNorm(BatchNorm {
            epsilon: b.epsilon.unwrap_or(BatchNorm::default().epsilon),
        }),
        Kind::Softmax(s) => Op::Softmax(Softmax {
            axis: s.axis.unwrap_or(Softmax::default().axis),
        }),
    })
}

fn conv_from(c: &proto::ConvOp) -> Result<Conv, Status> {
    /// Exactly `N` values, or `default` for an empty list.
    fn fixed<const N: usize>(
        name: &str,
        v: &[u64],
        default: [usize; N],
    ) -> Result<[usize; N], Status> {
        if v.is_empty() {
            return Ok(default);
        }
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
    let auto_pad = c
        .auto_pad
        .parse::<AutoPad>()
        .map_err(|e| invalid(format!("Conv auto_pad: {e}")))?;
    let d = Conv::default();
    Ok(Conv {
        strides: fixed("strides", &c.strides, d.strides)?,
        pads: fixed("pads", &c.pads, d.pads)?,
        dilations: fixed("dilations", &c.dilations, d.dilations)?,
        group: match c.group {
            None => d.group,
            Some(g) => usize::try_from(g).map_err(|_| invalid("Conv group is too large"))?,
        },
        auto_pad,
        kernel_shape: if c.kernel_shape.is_empty() {
            None
        } else {
            Some(fixed("kernel_shape", &c.kernel_shape, [0, 0])?)
        },
        relu: c.relu,
    })
}

/// An op's wire form, every attribute set explicitly.
pub fn op_kind(op: &Op) -> proto::op::Kind {
    use proto::op::Kind;
    let u = |v: &[usize]| v.iter().map(|&x| x as u64).collect();
    match op {
        Op::Gemm(g) => Kind::Gemm(proto::GemmOp {
            alpha: Some(g.alpha),
            beta: Some(g.beta),
            trans_a: g.trans_a,
            trans_b: g.trans_b,
            relu: g.relu,
        }),
        Op::MatMul => Kind::Matmul(proto::MatMulOp {}),
        Op::Conv(c) => Kind::Conv(proto::ConvOp {
            strides: u(&c.strides),
            pads: u(&c.pads),
            dilations: u(&c.dilations),
            group: Some(c.group as u64),
            auto_pad: c.auto_pad.as_str().to_string(),
            kernel_shape: c.kernel_shape.map(|k| u(&k)).unwrap_or_default(),
            relu: c.relu,
        }),
        Op::BatchNorm(b) => Kind::BatchNorm(proto::BatchNormOp {
            epsilon: Some(b.epsilon),
        }),
        Op::Softmax(s) => Kind::Softmax(proto::SoftmaxOp { axis: Some(s.axis) }),
    }
}

//! Conversions between the wire messages and eia's types ([`Op`] included, with the ONNX
//! defaults of attributes left unset), in both directions, and between [`Error`] and gRPC
//! statuses. Everything that decodes client input validates it here and returns
//! INVALID_ARGUMENT with a readable message rather than panicking.

use tonic::{Code, Status};

use super::proto;
use crate::accelerator::{usage_table, Tier, Usage, Wire};
use crate::dtype::{DType, PerDType};
use crate::error::Error;
use crate::ops::{
    Add, AutoPad, AveragePool, BatchNorm, Clip, Concat, Conv, Dropout, Flatten, Gemm, LeakyRelu,
    Lrn, MaxPool, Op, Reshape, Softmax, Squeeze, Transpose, Unsqueeze,
};
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

/// The error a client reports for a status. A status tonic made from a failure of the
/// transport (it carries that error as its source; a server's status never does) is
/// UNAVAILABLE whatever code tonic gave it: the connection closed or was reset under the call,
/// or a server shutting down refused the stream (an HTTP/2 GOAWAY, which tonic calls INTERNAL).
pub fn error(s: Status) -> Error {
    let transport = std::error::Error::source(&s).is_some();
    match s.code() {
        Code::Internal | Code::Unknown if transport => Error::Network(format!(
            "{}: {}",
            Code::Unavailable.description(),
            s.message()
        )),
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
    let tflops = PerDType::new(t.fp32_tflops, t.fp16_tflops);
    Tier::new(&t.name, tflops, t.memory_bytes)
}

macro_rules! usage_wire {
    ($($name:ident ($($at:tt)+) c $c:ident: $unit:ident $kind:ident $series:literal, $label:expr,
        $help:literal;)*) => {
        /// A usage's wire form (one field per row of the usage table).
        pub fn usage(u: &Usage) -> proto::Usage {
            proto::Usage {
                accelerator: u.accelerator,
                tier: u.tier.clone(),
                $($name: Wire::to_wire(u.$($at)+),)*
            }
        }

        /// A usage from its wire form.
        pub fn usage_from(u: Option<proto::Usage>) -> crate::Result<Usage> {
            let u = u.ok_or_else(|| data_loss("the server sent no usage"))?;
            let mut usage = Usage {
                accelerator: u.accelerator,
                tier: u.tier,
                ..Usage::default()
            };
            $(usage.$($at)+ = Wire::from_wire(u.$name);)*
            Ok(usage)
        }
    };
}
usage_table!(usage_wire);

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
                clip: g.clip.as_ref().map(clip_from),
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
        Kind::Relu(_) => Op::Relu,
        Kind::Clip(c) => Op::Clip(clip_from(c)),
        Kind::LeakyRelu(l) => Op::LeakyRelu(LeakyRelu {
            alpha: l.alpha.unwrap_or(LeakyRelu::default().alpha),
        }),
        Kind::Sigmoid(_) => Op::Sigmoid,
        Kind::Tanh(_) => Op::Tanh,
        Kind::Add(a) => Op::Add(Add { relu: a.relu }),
        Kind::Sub(_) => Op::Sub,
        Kind::Mul(_) => Op::Mul,
        Kind::Div(_) => Op::Div,
        Kind::Sum(_) => Op::Sum,
        Kind::MaxPool(m) => Op::MaxPool(max_pool_from(m)?),
        Kind::AveragePool(a) => Op::AveragePool(average_pool_from(a)?),
        Kind::GlobalAveragePool(_) => Op::GlobalAveragePool,
        Kind::GlobalMaxPool(_) => Op::GlobalMaxPool,
        Kind::Concat(c) => Op::Concat(Concat {
            axis: c
                .axis
                .ok_or_else(|| invalid("Concat axis is required (ONNX has no default)"))?,
        }),
        Kind::Transpose(t) => Op::Transpose(Transpose {
            perm: (!t.perm.is_empty()).then(|| t.perm.clone()),
        }),
        Kind::Flatten(f) => Op::Flatten(Flatten {
            axis: f.axis.unwrap_or(Flatten::default().axis),
        }),
        Kind::Reshape(r) => Op::Reshape(Reshape {
            shape: r.shape.clone(),
            allowzero: r.allowzero,
        }),
        Kind::Squeeze(s) => Op::Squeeze(Squeeze {
            axes: (!s.axes.is_empty()).then(|| s.axes.clone()),
        }),
        Kind::Unsqueeze(u) => Op::Unsqueeze(Unsqueeze {
            axes: u.axes.clone(),
        }),
        Kind::Identity(_) => Op::Identity,
        Kind::Dropout(d) => Op::Dropout(Dropout {
            ratio: d.ratio.unwrap_or(Dropout::default().ratio),
            training_mode: d.training_mode,
        }),
        Kind::Lrn(l) => {
            let d = Lrn::default();
            Op::Lrn(Lrn {
                // Unset is 0 and too large saturates: the plan refuses both with its error.
                size: l
                    .size
                    .map_or(d.size, |s| usize::try_from(s).unwrap_or(usize::MAX)),
                alpha: l.alpha.unwrap_or(d.alpha),
                beta: l.beta.unwrap_or(d.beta),
                bias: l.bias.unwrap_or(d.bias),
            })
        }
    })
}

fn conv_from(c: &proto::ConvOp) -> Result<Conv, Status> {
    let auto_pad = auto_pad_from("Conv", &c.auto_pad)?;
    let d = Conv::default();
    Ok(Conv {
        strides: fixed("Conv", "strides", &c.strides, d.strides)?,
        pads: fixed("Conv", "pads", &c.pads, d.pads)?,
        dilations: fixed("Conv", "dilations", &c.dilations, d.dilations)?,
        group: match c.group {
            None => d.group,
            Some(g) => usize::try_from(g).map_err(|_| invalid("Conv group is too large"))?,
        },
        auto_pad,
        kernel_shape: if c.kernel_shape.is_empty() {
            None
        } else {
            Some(fixed("Conv", "kernel_shape", &c.kernel_shape, [0, 0])?)
        },
        sum: c.sum,
        relu: c.relu,
        clip: c.clip.as_ref().map(clip_from),
    })
}

fn clip_from(c: &proto::ClipOp) -> Clip {
    Clip {
        min: c.min,
        max: c.max,
    }
}

fn clip_op(c: &Clip) -> proto::ClipOp {
    proto::ClipOp {
        min: c.min,
        max: c.max,
    }
}

/// Exactly `N` values of attribute `name` of `op`, or `default` for an empty list.
fn fixed<const N: usize>(
    op: &str,
    name: &str,
    v: &[u64],
    default: [usize; N],
) -> Result<[usize; N], Status> {
    if v.is_empty() {
        return Ok(default);
    }
    let values: Vec<usize> = v
        .iter()
        .map(|&x| usize::try_from(x).map_err(|_| invalid(format!("{op} {name}: {x} is too large"))))
        .collect::<Result<_, _>>()?;
    values
        .try_into()
        .map_err(|_| invalid(format!("{op} {name}: expected {N} values, got {}", v.len())))
}

/// ONNX `auto_pad` from its wire name (empty: NOTSET).
fn auto_pad_from(op: &str, s: &str) -> Result<AutoPad, Status> {
    s.parse()
        .map_err(|e| invalid(format!("{op} auto_pad: {e}")))
}

/// The wire name of an `auto_pad`.
fn auto_pad_name(a: AutoPad) -> String {
    a.as_str().to_string()
}

fn max_pool_from(m: &proto::MaxPoolOp) -> Result<MaxPool, Status> {
    let d = MaxPool::default();
    Ok(MaxPool {
        kernel_shape: fixed("MaxPool", "kernel_shape", &m.kernel_shape, d.kernel_shape)?,
        strides: fixed("MaxPool", "strides", &m.strides, d.strides)?,
        pads: fixed("MaxPool", "pads", &m.pads, d.pads)?,
        dilations: fixed("MaxPool", "dilations", &m.dilations, d.dilations)?,
        ceil_mode: m.ceil_mode,
        auto_pad: auto_pad_from("MaxPool", &m.auto_pad)?,
        storage_order: m.storage_order.unwrap_or(d.storage_order),
    })
}

fn average_pool_from(a: &proto::AveragePoolOp) -> Result<AveragePool, Status> {
    let d = AveragePool::default();
    let op = "AveragePool";
    Ok(AveragePool {
        kernel_shape: fixed(op, "kernel_shape", &a.kernel_shape, d.kernel_shape)?,
        strides: fixed(op, "strides", &a.strides, d.strides)?,
        pads: fixed(op, "pads", &a.pads, d.pads)?,
        ceil_mode: a.ceil_mode,
        count_include_pad: a.count_include_pad,
        auto_pad: auto_pad_from(op, &a.auto_pad)?,
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
            clip: g.clip.as_ref().map(clip_op),
        }),
        Op::MatMul => Kind::Matmul(proto::MatMulOp {}),
        Op::Conv(c) => Kind::Conv(proto::ConvOp {
            strides: u(&c.strides),
            pads: u(&c.pads),
            dilations: u(&c.dilations),
            group: Some(c.group as u64),
            auto_pad: auto_pad_name(c.auto_pad),
            kernel_shape: c.kernel_shape.map(|k| u(&k)).unwrap_or_default(),
            relu: c.relu,
            clip: c.clip.as_ref().map(clip_op),
            sum: c.sum,
        }),
        Op::BatchNorm(b) => Kind::BatchNorm(proto::BatchNormOp {
            epsilon: Some(b.epsilon),
        }),
        Op::Softmax(s) => Kind::Softmax(proto::SoftmaxOp { axis: Some(s.axis) }),
        Op::Relu => Kind::Relu(proto::ReluOp {}),
        Op::Clip(c) => Kind::Clip(clip_op(c)),
        Op::LeakyRelu(l) => Kind::LeakyRelu(proto::LeakyReluOp {
            alpha: Some(l.alpha),
        }),
        Op::Sigmoid => Kind::Sigmoid(proto::SigmoidOp {}),
        Op::Tanh => Kind::Tanh(proto::TanhOp {}),
        Op::Add(a) => Kind::Add(proto::AddOp { relu: a.relu }),
        Op::Sub => Kind::Sub(proto::SubOp {}),
        Op::Mul => Kind::Mul(proto::MulOp {}),
        Op::Div => Kind::Div(proto::DivOp {}),
        Op::Sum => Kind::Sum(proto::SumOp {}),
        Op::MaxPool(m) => Kind::MaxPool(proto::MaxPoolOp {
            kernel_shape: u(&m.kernel_shape),
            strides: u(&m.strides),
            pads: u(&m.pads),
            dilations: u(&m.dilations),
            ceil_mode: m.ceil_mode,
            auto_pad: auto_pad_name(m.auto_pad),
            storage_order: Some(m.storage_order),
        }),
        Op::AveragePool(a) => Kind::AveragePool(proto::AveragePoolOp {
            kernel_shape: u(&a.kernel_shape),
            strides: u(&a.strides),
            pads: u(&a.pads),
            ceil_mode: a.ceil_mode,
            count_include_pad: a.count_include_pad,
            auto_pad: auto_pad_name(a.auto_pad),
        }),
        Op::GlobalAveragePool => Kind::GlobalAveragePool(proto::GlobalAveragePoolOp {}),
        Op::GlobalMaxPool => Kind::GlobalMaxPool(proto::GlobalMaxPoolOp {}),
        Op::Concat(c) => Kind::Concat(proto::ConcatOp { axis: Some(c.axis) }),
        Op::Transpose(t) => Kind::Transpose(proto::TransposeOp {
            perm: t.perm.clone().unwrap_or_default(),
        }),
        Op::Flatten(f) => Kind::Flatten(proto::FlattenOp { axis: Some(f.axis) }),
        Op::Reshape(r) => Kind::Reshape(proto::ReshapeOp {
            shape: r.shape.clone(),
            allowzero: r.allowzero,
        }),
        Op::Squeeze(s) => Kind::Squeeze(proto::SqueezeOp {
            axes: s.axes.clone().unwrap_or_default(),
        }),
        Op::Unsqueeze(u) => Kind::Unsqueeze(proto::UnsqueezeOp {
            axes: u.axes.clone(),
        }),
        Op::Identity => Kind::Identity(proto::IdentityOp {}),
        Op::Dropout(d) => Kind::Dropout(proto::DropoutOp {
            ratio: Some(d.ratio),
            training_mode: d.training_mode,
        }),
        Op::Lrn(l) => Kind::Lrn(proto::LrnOp {
            size: Some(l.size as u64),
            alpha: Some(l.alpha),
            beta: Some(l.beta),
            bias: Some(l.bias),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transport_failures_are_unavailable_and_server_statuses_keep_their_code() {
        // What tonic makes of a connection that failed under a call.
        let reset = Status::from_error(Box::new(std::io::Error::other("connection reset")));
        let e = error(reset);
        assert!(
            matches!(&e, Error::Network(m) if m.starts_with(Code::Unavailable.description())),
            "{e}"
        );
        // A server's own INTERNAL stays one.
        let e = error(Status::internal("a bug"));
        assert!(
            matches!(&e, Error::Remote { code, .. } if code == "Internal"),
            "{e}"
        );
    }
}

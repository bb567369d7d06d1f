//! Structured fuzzing of the network accelerator's decode and validation path (proptest, since
//! cargo-fuzz needs nightly). Each test starts a real server on 127.0.0.1:0 and throws
//! arbitrary or mutated requests at it through the generated tonic client: datatype strings,
//! shapes with zero, huge and overflowing dimensions, byte lengths that do not match, random
//! accelerator and tensor handles, programs of random ops (kind, arity, attributes), upload
//! chunk sequences with wrong totals or stray headers, and raw random or mutated bytes decoded
//! as every request message (prost `Message::decode`), run through the server's conversions
//! (`eia::rpc::convert`) and sent on.
//!
//! Every call must end in a status from [`ALLOWED`] — never INTERNAL or UNKNOWN (a server bug
//! or panic) nor UNAVAILABLE (a dropped connection). Afterwards the server must still be live,
//! a well-formed attach + op + detach must work, and the device must hold no memory. 256 cases
//! per property; the whole file runs in seconds in release.

mod common;

use std::cell::RefCell;
use std::collections::BTreeMap;

use bytes::Bytes;
use eia::accelerator::{Capacity, DeviceConfig, Tiers};
use eia::rpc::convert;
use eia::rpc::proto::{self, accelerators_client::AcceleratorsClient, op::Kind};
use eia::rpc::{ServerConfig, ServerHandle};
use eia::{CpuBackend, PerDType};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use prost::Message;
use tonic::transport::Channel;
use tonic::Code;

/// The statuses bad input may get (OK included: random input is sometimes valid). Messages
/// stay under the size limit, so tonic's OUT_OF_RANGE appears only where a fixed case asks.
const ALLOWED: [Code; 4] = [
    Code::Ok,
    Code::InvalidArgument,
    Code::NotFound,
    Code::ResourceExhausted,
];

/// "fuzz": fast (the meter never waits long) with a 4 MiB quota; "tiny": 1 MiB.
const TIERS: &str = "[[tier]]\nname = \"fuzz\"\nfp32_tflops = 1000.0\nfp16_tflops = 1000.0\nmemory_mib = 4\n\
                     [[tier]]\nname = \"tiny\"\nfp32_tflops = 1000.0\nfp16_tflops = 1000.0\nmemory_mib = 1\n";

/// Largest gRPC message the fuzz server takes (small, so the limit itself is exercised).
const MAX_MESSAGE: usize = 256 << 10;

/// A server, a runtime and a client for one test. (Fields drop in order: the client closes its
/// connection before the server shuts down, which waits for open connections.)
struct Env {
    client: AcceleratorsClient<Channel>,
    rt: tokio::runtime::Runtime,
    server: ServerHandle,
}

impl Env {
    fn start() -> Env {
        let tiers = Tiers::with_toml("fuzz", TIERS).unwrap();
        let config = ServerConfig {
            device: DeviceConfig {
                tiers,
                capacity: Some(Capacity {
                    tflops: PerDType::new(1e9, 1e9),
                    memory: 1 << 50,
                }),
                ..DeviceConfig::default()
            },
            max_message_bytes: MAX_MESSAGE,
            chunk_bytes: 1000, // downloads of a few KiB stream in several chunks
            metrics: Some("127.0.0.1:0".parse().unwrap()),
            ..ServerConfig::default()
        };
        let server =
            eia::rpc::spawn("127.0.0.1:0".parse().unwrap(), CpuBackend::new(), config).unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let client = rt
            .block_on(AcceleratorsClient::connect(server.url(false)))
            .unwrap();
        Env { client, rt, server }
    }

    fn c(&self) -> AcceleratorsClient<Channel> {
        self.client.clone()
    }

    fn attach(&self) -> u64 {
        let mut c = self.c();
        self.rt
            .block_on(c.attach(proto::AttachRequest {
                tier: "fuzz".into(),
            }))
            .unwrap()
            .into_inner()
            .accelerator
    }

    /// Detaches the case's accelerator; then the device must be idle.
    fn detach(&self, id: u64) -> Result<(), TestCaseError> {
        let mut c = self.c();
        let r = self
            .rt
            .block_on(c.detach(proto::DetachRequest { accelerator: id }));
        r.map_err(|s| TestCaseError::fail(format!("detach {id}: {s:?}")))?;
        self.idle()
    }

    /// No accelerator attached and no memory held on the device (from the metrics endpoint).
    fn idle(&self) -> Result<(), TestCaseError> {
        let metrics = common::scrape(self.server.metrics_addr().unwrap());
        for line in [
            "eia_device_memory_in_use_bytes 0",
            "eia_accelerators_attached 0",
        ] {
            prop_assert!(
                metrics.lines().any(|l| l == line),
                "missing {:?} in\n{}",
                line,
                metrics
            );
        }
        Ok(())
    }

    /// Allocates `metas` (all must be valid) and returns their handles.
    fn alloc(&self, id: u64, metas: &[proto::TensorMeta]) -> Vec<u64> {
        let mut c = self.c();
        self.rt
            .block_on(c.alloc(proto::AllocRequest {
                accelerator: id,
                tensors: metas.to_vec(),
            }))
            .unwrap()
            .into_inner()
            .tensors
    }

    /// The well-formed path still works afterwards and nothing is left on the device.
    fn finish(self) {
        OUTCOMES.with_borrow(|o| {
            for ((what, outcome), n) in o {
                println!("{what:>10} {outcome:<24} {n:>5}");
            }
        });
        let mut c = self.c();
        self.rt.block_on(async {
            let live = c.server_live(proto::ServerLiveRequest {}).await.unwrap();
            assert!(live.into_inner().live);
        });
        let id = self.attach();
        let t = self.alloc(id, &[meta("FP32", &[2, 3]), meta("FP32", &[2, 3])]);
        let input: Vec<f32> = vec![0.0, 1.0, 2.0, 3.0, 4.0, 5.0];
        let out = self
            .rt
            .block_on(c.run(proto::RunRequest {
                accelerator: id,
                writes: vec![proto::TensorWrite {
                    tensor: t[0],
                    data: input.iter().flat_map(|v| v.to_le_bytes()).collect(),
                }],
                ops: vec![proto::Op {
                    kind: Some(Kind::Softmax(proto::SoftmaxOp { axis: Some(-1) })),
                    inputs: vec![t[0]],
                    output: Some(t[1]),
                    ..Default::default()
                }],
                reads: vec![t[1]],
                ..Default::default()
            }))
            .unwrap()
            .into_inner();
        let y: Vec<f32> = out.reads[0]
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
            .collect();
        let e = [(-2f32).exp(), (-1f32).exp(), 1.0];
        let s: f32 = e.iter().sum();
        for (got, want) in y.iter().zip(e.iter().chain(&e).map(|v| v / s)) {
            assert!((got - want).abs() < 1e-6, "{y:?}");
        }
        self.detach(id).unwrap();
    }
}

fn meta(dtype: &str, shape: &[u64]) -> proto::TensorMeta {
    proto::TensorMeta {
        datatype: dtype.into(),
        shape: shape.to_vec(),
    }
}

thread_local! {
    /// How often each call ended in each status in this test (each test runs on its own thread;
    /// [`Env::finish`] prints them, `--nocapture` shows them): what the strategies reached.
    static OUTCOMES: RefCell<BTreeMap<(&'static str, String), usize>> =
        const { RefCell::new(BTreeMap::new()) };
}

fn count(what: &'static str, outcome: impl Into<String>) {
    OUTCOMES.with_borrow_mut(|o| *o.entry((what, outcome.into())).or_default() += 1);
}

/// Checks a call's outcome: OK or an allowed status.
fn allowed<T>(
    what: &'static str,
    r: &Result<tonic::Response<T>, tonic::Status>,
) -> Result<(), TestCaseError> {
    count(
        what,
        match r {
            Ok(_) => "Ok".to_string(),
            Err(s) => format!("{:?}", s.code()),
        },
    );
    if let Err(s) = r {
        prop_assert!(
            ALLOWED.contains(&s.code()),
            "{what}: {:?}: {}",
            s.code(),
            s.message()
        );
        prop_assert!(
            !s.message().is_empty(),
            "{what}: a status without a message"
        );
    }
    Ok(())
}

fn runner() -> TestRunner {
    TestRunner::new(Config {
        // PROPTEST_CASES=N runs a longer campaign.
        cases: std::env::var("PROPTEST_CASES")
            .ok()
            .and_then(|n| n.parse().ok())
            .unwrap_or(256),
        failure_persistence: None,
        max_shrink_iters: 256,
        ..Config::default()
    })
}

// ---------------------------------------------------------------------------------------------
// Strategies.

/// A dimension: usually small, sometimes zero, huge or overflowing.
fn dim() -> impl Strategy<Value = u64> {
    prop_oneof![
        6 => 0u64..5,
        1 => prop::sample::select(vec![
            u64::MAX,
            u64::MAX / 2,
            1 << 32,
            (1 << 32) + 1,
            1 << 62,
            (1 << 63) + 1,
            1 << 20,
            1 << 21,
        ]),
        1 => any::<u64>(),
    ]
}

/// A datatype string: valid, near-valid or arbitrary.
fn dtype() -> impl Strategy<Value = String> {
    prop_oneof![
        6 => prop::sample::select(vec!["FP32", "FP16"]).prop_map(String::from),
        1 => prop::sample::select(vec!["fp32", "", "FP64", "BF16", "INT8", "FP32 ", "FP16\0"])
            .prop_map(String::from),
        1 => "\\PC{0,10}",
    ]
}

fn any_meta() -> impl Strategy<Value = proto::TensorMeta> {
    (dtype(), prop::collection::vec(dim(), 0..6))
        .prop_map(|(datatype, shape)| proto::TensorMeta { datatype, shape })
}

/// Valid meta of a small tensor (at most 4^4 elements).
fn small_meta() -> impl Strategy<Value = proto::TensorMeta> {
    (
        prop::sample::select(vec!["FP32", "FP16"]),
        prop::collection::vec(0u64..5, 0..5),
    )
        .prop_map(|(d, shape)| meta(d, &shape))
}

/// Bytes a valid meta describes (None when it does not describe a tensor).
fn meta_bytes(m: &proto::TensorMeta) -> Option<usize> {
    convert::desc(Some(m)).ok().map(|d| d.bytes())
}

/// What a tensor of `m` is charged against the quota (at least the per-tensor minimum).
fn meta_charge(m: &proto::TensorMeta) -> Option<usize> {
    convert::desc(Some(m))
        .ok()
        .map(|d| eia::accelerator::charge(&d) as usize)
}

/// A handle: one of the case's (by index), an arbitrary number, or (in programs) a member of
/// the conv family or of a same-shape pair.
#[derive(Debug, Clone)]
enum Handle {
    Pool(usize),
    Raw(u64),
    Family(usize),
    Pair(usize, bool),
}

fn handle() -> impl Strategy<Value = Handle> {
    prop_oneof![
        5 => any::<usize>().prop_map(Handle::Pool),
        1 => prop_oneof![Just(0u64), Just(u64::MAX), any::<u64>()].prop_map(Handle::Raw),
    ]
}

fn resolve(h: &Handle, pool: &[u64]) -> u64 {
    let pairs = pool.len().saturating_sub(FAMILY) / 2;
    match h {
        Handle::Pool(i) if !pool.is_empty() => pool[i % pool.len()],
        Handle::Pool(i) => *i as u64,
        Handle::Raw(r) => *r,
        Handle::Family(i) if pool.len() >= FAMILY => pool[pool.len() - FAMILY + i % FAMILY],
        Handle::Pair(j, second) if pairs > 0 => pool[2 * (j % pairs) + *second as usize],
        Handle::Family(i) | Handle::Pair(i, _) => *i as u64,
    }
}

/// A byte length relative to the right one.
#[derive(Debug, Clone)]
enum Len {
    Exact,
    Off(i16),
    Zero,
    Any(u16),
}

fn len() -> impl Strategy<Value = Len> {
    prop_oneof![
        4 => Just(Len::Exact),
        2 => (-3i16..4).prop_map(Len::Off),
        1 => Just(Len::Zero),
        1 => any::<u16>().prop_map(Len::Any),
    ]
}

fn len_of(l: &Len, want: usize) -> usize {
    match l {
        Len::Exact => want,
        Len::Off(d) => (want as i64 + *d as i64).max(0) as usize,
        Len::Zero => 0,
        Len::Any(n) => *n as usize,
    }
}

/// `n` bytes of a pattern seeded by `seed`.
fn pattern(n: usize, seed: u8) -> Vec<u8> {
    (0..n)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

/// A conv attribute value: usually small, sometimes zero, huge or wrapping.
fn attr() -> impl Strategy<Value = u64> {
    prop_oneof![
        6 => 0u64..4,
        1 => prop::sample::select(vec![u64::MAX, u64::MAX - 1, 1 << 32, 1 << 63, (1 << 63) + 1]),
        1 => any::<u64>(),
    ]
}

/// A list of conv attribute values of any length.
fn attr_list() -> impl Strategy<Value = Vec<u64>> {
    prop::collection::vec(attr(), 0..6)
}

/// `[h, w]` attributes (strides, dilations, kernel_shape): the right length, random values.
fn attr_pair() -> impl Strategy<Value = Vec<u64>> {
    prop_oneof![
        5 => Just(vec![1, 1]),
        2 => prop::collection::vec(attr(), 2),
        1 => attr_list(),
    ]
}

/// Pads: zeros, four random values, lists of any length, or begin/end pairs whose sum wraps
/// around to a few (so the padded size looks small and the output shape can match).
fn pads() -> impl Strategy<Value = Vec<u64>> {
    let wrap = (any::<u64>(), 0u64..3, any::<u64>(), 0u64..3).prop_map(|(a, da, b, db)| {
        vec![
            a,
            b,
            a.wrapping_neg().wrapping_add(da),
            b.wrapping_neg().wrapping_add(db),
        ]
    });
    prop_oneof![
        4 => Just(vec![0, 0, 0, 0]),
        2 => prop::collection::vec(attr(), 4),
        2 => wrap,
        1 => attr_list(),
    ]
}

/// One conv attribute replaced by a wild value.
#[derive(Debug, Clone)]
enum ConvMutation {
    Strides(Vec<u64>),
    Pads(Vec<u64>),
    Dilations(Vec<u64>),
    Group(u64),
    AutoPad(String),
    KernelShape(Vec<u64>),
    Clip(proto::ClipOp),
}

/// A fused Clip: any bounds, NaN, infinite and min > max included.
fn clip_op() -> impl Strategy<Value = proto::ClipOp> {
    (
        prop::option::of(any::<f32>()),
        prop::option::of(any::<f32>()),
    )
        .prop_map(|(min, max)| proto::ClipOp { min, max })
}

/// Conv attributes: a valid set (strides, small pads, dilations, group 1 or 2, an auto_pad)
/// with up to three attributes replaced by wild values, so each case probes one or two
/// attributes past the others' checks.
fn conv_op() -> impl Strategy<Value = proto::ConvOp> {
    let pair = || prop::sample::select(vec![vec![1, 1], vec![2, 2], vec![1, 2], vec![2, 1]]);
    let base = (
        pair(),
        prop::collection::vec(0u64..2, 4),
        pair(),
        prop_oneof![8 => Just(Some(1u64)), 2 => Just(Some(2u64)), 1 => Just(None)],
        prop::sample::select(vec![
            "",
            "",
            "",
            "NOTSET",
            "VALID",
            "SAME_UPPER",
            "SAME_LOWER",
        ]),
        any::<bool>(),
    );
    let mutation = prop_oneof![
        1 => attr_pair().prop_map(ConvMutation::Strides),
        2 => pads().prop_map(ConvMutation::Pads),
        2 => attr_pair().prop_map(ConvMutation::Dilations),
        1 => prop_oneof![0u64..4, any::<u64>()].prop_map(ConvMutation::Group),
        1 => prop_oneof![
            prop::sample::select(vec!["", "NOTSET", "SAME_UPPER", "SAME_LOWER", "VALID"])
                .prop_map(String::from),
            "\\PC{0,12}",
        ]
        .prop_map(ConvMutation::AutoPad),
        1 => attr_pair().prop_map(ConvMutation::KernelShape),
        1 => clip_op().prop_map(ConvMutation::Clip),
    ];
    (base, prop::collection::vec(mutation, 0..3)).prop_map(
        |((strides, pads, dilations, group, auto_pad, relu), mutations)| {
            let mut c = proto::ConvOp {
                strides,
                pads,
                dilations,
                group,
                auto_pad: auto_pad.into(),
                kernel_shape: vec![],
                relu,
                clip: None,
                sum: false,
            };
            for m in mutations {
                match m {
                    ConvMutation::Strides(v) => c.strides = v,
                    ConvMutation::Pads(v) => c.pads = v,
                    ConvMutation::Dilations(v) => c.dilations = v,
                    ConvMutation::Group(g) => c.group = Some(g),
                    ConvMutation::AutoPad(a) => c.auto_pad = a,
                    ConvMutation::KernelShape(v) => c.kernel_shape = v,
                    ConvMutation::Clip(v) => c.clip = Some(v),
                }
            }
            c
        },
    )
}

fn op_kind() -> impl Strategy<Value = Option<Kind>> {
    let gemm = (
        prop::option::of(any::<f32>()),
        prop::option::of(any::<f32>()),
        any::<bool>(),
        any::<bool>(),
        any::<bool>(),
        prop::option::of(clip_op()),
    )
        .prop_map(|(alpha, beta, trans_a, trans_b, relu, clip)| {
            Kind::Gemm(proto::GemmOp {
                alpha,
                beta,
                trans_a,
                trans_b,
                relu,
                clip,
            })
        });
    prop_oneof![
        2 => gemm.prop_map(Some),
        2 => Just(Some(Kind::Matmul(proto::MatMulOp {}))),
        4 => conv_op().prop_map(|c| Some(Kind::Conv(c))),
        2 => prop::option::of(prop_oneof![3 => 1e-6f32..1.0, 1 => any::<f32>()])
            .prop_map(|epsilon| Some(Kind::BatchNorm(proto::BatchNormOp { epsilon }))),
        2 => prop::option::of(prop_oneof![3 => -5i64..5, 1 => any::<i64>()])
            .prop_map(|axis| Some(Kind::Softmax(proto::SoftmaxOp { axis }))),
        1 => Just(Some(Kind::Relu(proto::ReluOp {}))),
        2 => (
            prop::option::of(prop_oneof![3 => -8f32..8.0, 1 => any::<f32>()]),
            prop::option::of(prop_oneof![3 => -8f32..8.0, 1 => any::<f32>()]),
        )
            .prop_map(|(min, max)| Some(Kind::Clip(proto::ClipOp { min, max }))),
        1 => prop::option::of(any::<f32>())
            .prop_map(|alpha| Some(Kind::LeakyRelu(proto::LeakyReluOp { alpha }))),
        1 => Just(Some(Kind::Sigmoid(proto::SigmoidOp {}))),
        1 => Just(Some(Kind::Tanh(proto::TanhOp {}))),
        2 => any::<bool>().prop_map(|relu| Some(Kind::Add(proto::AddOp { relu }))),
        1 => Just(Some(Kind::Sub(proto::SubOp {}))),
        1 => Just(Some(Kind::Mul(proto::MulOp {}))),
        1 => Just(Some(Kind::Div(proto::DivOp {}))),
        2 => Just(Some(Kind::Sum(proto::SumOp {}))),
        2 => (attr_pair(), attr_pair(), pads(), attr_pair(), any::<bool>(), prop::option::of(-1i64..2))
            .prop_map(|(kernel_shape, strides, pads, dilations, ceil_mode, storage_order)| {
                Some(Kind::MaxPool(proto::MaxPoolOp {
                    kernel_shape,
                    strides,
                    pads,
                    dilations,
                    ceil_mode,
                    auto_pad: String::new(),
                    storage_order,
                }))
            }),
        2 => (attr_pair(), attr_pair(), pads(), any::<bool>(), any::<bool>())
            .prop_map(|(kernel_shape, strides, pads, ceil_mode, count_include_pad)| {
                Some(Kind::AveragePool(proto::AveragePoolOp {
                    kernel_shape,
                    strides,
                    pads,
                    ceil_mode,
                    count_include_pad,
                    auto_pad: String::new(),
                }))
            }),
        1 => Just(Some(Kind::GlobalAveragePool(proto::GlobalAveragePoolOp {}))),
        1 => Just(Some(Kind::GlobalMaxPool(proto::GlobalMaxPoolOp {}))),
        1 => prop::option::of(-5i64..5)
            .prop_map(|axis| Some(Kind::Concat(proto::ConcatOp { axis }))),
        1 => prop::collection::vec(-2i64..6, 0..6)
            .prop_map(|perm| Some(Kind::Transpose(proto::TransposeOp { perm }))),
        1 => (prop::collection::vec(-2i64..20, 0..5), any::<bool>())
            .prop_map(|(shape, allowzero)| Some(Kind::Reshape(proto::ReshapeOp { shape, allowzero }))),
        1 => prop::collection::vec(-5i64..5, 0..4)
            .prop_map(|axes| Some(Kind::Unsqueeze(proto::UnsqueezeOp { axes }))),
        2 => (
            prop::option::of(prop_oneof![3 => 0u64..8, 1 => any::<u64>()]),
            prop::option::of(prop_oneof![3 => 0f32..2.0, 1 => any::<f32>()]),
            prop::option::of(prop_oneof![3 => -1f32..2.0, 1 => any::<f32>()]),
            prop::option::of(prop_oneof![3 => -0.5f32..2.0, 1 => any::<f32>()]),
        )
            .prop_map(|(size, alpha, beta, bias)| {
                Some(Kind::Lrn(proto::LrnOp { size, alpha, beta, bias }))
            }),
        1 => Just(None),
    ]
}

#[derive(Debug, Clone)]
struct FuzzOp {
    kind: Option<Kind>,
    inputs: Vec<Handle>,
    /// None: the server allocates the output.
    output: Option<Handle>,
    /// Inputs replaced by an op's output (`Operand.op`): (which input, modulo their count, or
    /// one more where there are none; which op — earlier, itself, later or past the end).
    refs: Vec<(usize, u32)>,
}

/// The tensors every program's pool ends with, so ops find well-shaped operands: an index into
/// it is a [`Handle::Family`].
fn family() -> Vec<proto::TensorMeta> {
    vec![
        meta("FP32", &[1, 2, 3, 3]), // 0: conv/batch-norm X
        meta("FP32", &[2, 2, 1, 1]), // 1: W, 1x1
        meta("FP32", &[2, 2, 2, 2]), // 2: W, 2x2
        meta("FP32", &[2, 1, 2, 2]), // 3: W, 2x2, group 2
        meta("FP32", &[2]),          // 4: bias, batch-norm parameters
        meta("FP32", &[1, 2, 3, 3]), // 5: Y for a same-size output
        meta("FP32", &[1, 2, 2, 2]), // 6: Y one smaller
        meta("FP32", &[1, 2, 4, 4]), // 7: Y one larger
        meta("FP32", &[1, 2, 1, 1]), // 8: Y of one pixel
        meta("FP32", &[2, 3]),       // 9: GEMM A
        meta("FP32", &[3, 2]),       // 10: A transposed
        meta("FP32", &[3, 4]),       // 11: B
        meta("FP32", &[4, 3]),       // 12: B transposed
        meta("FP32", &[4]),          // 13: C
        meta("FP32", &[2, 4]),       // 14: Y
    ]
}

const FAMILY: usize = 15;

/// Operands that fit `kind` (mostly), chosen by the bits of `pick`.
fn shaped_operands(kind: &Option<Kind>, pick: u64) -> (Vec<Handle>, Handle) {
    let bit = |i: u32| pick >> i & 1 == 1;
    let f = Handle::Family;
    match kind {
        Some(Kind::Conv(_)) => {
            let mut x = vec![f(0), f(1 + (pick % 3) as usize)];
            if bit(8) {
                x.push(f(4));
            }
            (x, f(5 + (pick >> 4) as usize % 4))
        }
        Some(Kind::BatchNorm(_)) => (vec![f(0), f(4), f(4), f(4), f(4)], f(5)),
        Some(Kind::Gemm(g)) => {
            // Operands that fit the transposes, one time in four possibly not.
            let (ta, tb) = if bit(0) && bit(1) {
                (bit(2), bit(5))
            } else {
                (g.trans_a, g.trans_b)
            };
            let mut x = vec![f(if ta { 10 } else { 9 }), f(if tb { 12 } else { 11 })];
            if bit(6) {
                x.push(f(13));
            }
            (x, f(14))
        }
        Some(Kind::Matmul(_)) => {
            let mut x = vec![f(9), f(11)];
            if bit(0) && bit(1) {
                x.push(f(13));
            }
            (x, f(14))
        }
        Some(Kind::Add(_) | Kind::Sub(_) | Kind::Mul(_) | Kind::Div(_)) => {
            // Same shape, a per-channel broadcast, or (one time in four) shapes that clash.
            if bit(1) && bit(2) {
                (vec![f(9), f(13)], f(14))
            } else if bit(0) {
                (vec![f(0), f(8)], f(5))
            } else {
                (vec![f(0), f(5)], f(5))
            }
        }
        Some(Kind::Sum(_)) => {
            let n = 1 + (pick >> 4) as usize % 4;
            let x = [f(0), f(8), f(5), f(4)];
            (x[..n].to_vec(), f(5))
        }
        _ if bit(3) => (vec![f(0)], f(5)),
        _ => (
            vec![Handle::Pair(pick as usize, false)],
            Handle::Pair(pick as usize, true),
        ),
    }
}

fn fuzz_op() -> impl Strategy<Value = FuzzOp> {
    // Operands: random handles (1 in 4), or shaped for the op so that random attributes get past
    // the shape checks to the planning arithmetic and the kernels.
    (
        op_kind(),
        prop::collection::vec(handle(), 0..7),
        prop::option::weighted(0.9, handle()),
        any::<u64>(),
        0u8..4,
        prop_oneof![
            2 => Just(vec![]),
            1 => prop::collection::vec((any::<usize>(), 0u32..5), 1..3),
        ],
        any::<bool>(),
    )
        .prop_map(|(kind, inputs, output, pick, mode, refs, fresh)| {
            let (inputs, output) = if mode == 0 {
                (inputs, output)
            } else {
                let (inputs, output) = shaped_operands(&kind, pick);
                (inputs, Some(output))
            };
            // Ops whose inputs name other ops' outputs, and outputs the server allocates, often
            // enough that references are well formed (a unary op on a fresh unary output).
            let output = output.filter(|_| refs.is_empty() || !fresh);
            FuzzOp {
                kind,
                inputs,
                output,
                refs,
            }
        })
}

// ---------------------------------------------------------------------------------------------
// Properties over the wire.

#[test]
fn alloc_free_download_with_arbitrary_meta_and_handles() {
    let env = Env::start();
    let strategy = (
        prop::collection::vec(any_meta(), 0..4),
        prop::collection::vec(handle(), 0..4),
        prop::collection::vec(handle(), 0..3),
        any::<bool>(),
    );
    runner()
        .run(&strategy, |(metas, frees, downloads, foreign)| {
            let id = env.attach();
            let acc = if foreign { id ^ 0x5555 } else { id };
            let mut c = env.c();
            let r = env.rt.block_on(c.alloc(proto::AllocRequest {
                accelerator: acc,
                tensors: metas.clone(),
            }));
            allowed("alloc", &r)?;
            let pool = r.map(|r| r.into_inner().tensors).unwrap_or_default();
            // All or nothing: a refused alloc holds nothing.
            let u = env
                .rt
                .block_on(c.usage(proto::UsageRequest { accelerator: id }))
                .unwrap()
                .into_inner()
                .usage
                .unwrap();
            let held: usize = metas.iter().filter_map(meta_charge).sum();
            prop_assert_eq!(u.memory_used, if pool.is_empty() { 0 } else { held as u64 });
            for h in &downloads {
                let tensor = resolve(h, &pool);
                let r = env.rt.block_on(async {
                    let mut s = c
                        .download(proto::DownloadRequest {
                            accelerator: acc,
                            tensor,
                        })
                        .await?
                        .into_inner();
                    let mut n = 0;
                    let mut first = true;
                    while let Some(chunk) = s.message().await? {
                        assert_eq!(chunk.meta.is_some(), first, "meta in the first chunk only");
                        first = false;
                        n += chunk.data.len();
                    }
                    Ok::<_, tonic::Status>(tonic::Response::new(n))
                });
                allowed("download", &r)?;
                if let (Ok(n), Some(i)) = (&r, pool.iter().position(|&t| t == tensor)) {
                    prop_assert_eq!(Some(*n.get_ref()), meta_bytes(&metas[i]));
                }
            }
            let r = env.rt.block_on(c.free(proto::FreeRequest {
                accelerator: acc,
                tensors: frees.iter().map(|h| resolve(h, &pool)).collect(),
            }));
            allowed("free", &r)?;
            env.detach(id)
        })
        .unwrap();
    env.finish();
}

#[derive(Debug, Clone)]
struct UploadCase {
    meta: Option<proto::TensorMeta>,
    total: Len,
    chunk: usize,
    empty_chunks: Vec<usize>,
    header_first: bool,
    stray_header: Option<usize>,
    foreign: bool,
    no_messages: bool,
    seed: u8,
}

fn upload_case() -> impl Strategy<Value = UploadCase> {
    (
        prop_oneof![
            6 => small_meta().prop_map(Some),
            2 => any_meta().prop_map(Some),
            1 => Just(None),
        ],
        len(),
        prop_oneof![1usize..8, 8usize..300, 300usize..(MAX_MESSAGE - 64)],
        prop::collection::vec(any::<usize>(), 0..3),
        prop::bool::weighted(0.9),
        prop::option::weighted(0.1, any::<usize>()),
        prop::bool::weighted(0.1),
        prop::bool::weighted(0.03),
        any::<u8>(),
    )
        .prop_map(
            |(
                meta,
                total,
                chunk,
                empty_chunks,
                header_first,
                stray_header,
                foreign,
                no_messages,
                seed,
            )| {
                UploadCase {
                    meta,
                    total,
                    chunk,
                    empty_chunks,
                    header_first,
                    stray_header,
                    foreign,
                    no_messages,
                    seed,
                }
            },
        )
}

#[test]
fn uploads_with_wrong_totals_headers_and_meta() {
    let env = Env::start();
    runner()
        .run(&upload_case(), |u| {
            let id = env.attach();
            let want = u.meta.as_ref().and_then(meta_bytes);
            // At most 1 MiB goes up (larger declared sizes are past the quota, refused before
            // the data is read).
            let n = len_of(&u.total, want.unwrap_or(16)).min(1 << 20);
            let data = pattern(n, u.seed);
            let mut chunks: Vec<proto::UploadChunk> = data
                .chunks(u.chunk)
                .map(|c| proto::UploadChunk {
                    header: None,
                    data: Bytes::copy_from_slice(c),
                })
                .collect();
            for &at in &u.empty_chunks {
                let at = at % (chunks.len() + 1);
                chunks.insert(at.max(1).min(chunks.len()), proto::UploadChunk::default());
            }
            if chunks.is_empty() {
                chunks.push(proto::UploadChunk::default());
            }
            if u.header_first {
                chunks[0].header = Some(proto::UploadHeader {
                    accelerator: if u.foreign { id + 1000 } else { id },
                    meta: u.meta.clone(),
                });
            }
            if let Some(at) = u.stray_header {
                let at = at % chunks.len();
                chunks[at].header = Some(proto::UploadHeader::default());
            }
            if u.no_messages {
                chunks.clear();
            }
            let well_formed = u.header_first
                && u.stray_header.is_none()
                && !u.foreign
                && !u.no_messages
                && want == Some(n);
            let mut c = env.c();
            let r = env.rt.block_on(c.upload(tokio_stream::iter(chunks)));
            allowed("upload", &r)?;
            let usage = env
                .rt
                .block_on(c.usage(proto::UsageRequest { accelerator: id }))
                .unwrap()
                .into_inner()
                .usage
                .unwrap();
            match r {
                Ok(r) => {
                    prop_assert!(want == Some(n), "accepted {n} bytes for {:?}", u.meta);
                    // What comes back is exactly what went up.
                    let tensor = r.into_inner().tensor;
                    let back = env.rt.block_on(async {
                        let mut s = c
                            .download(proto::DownloadRequest {
                                accelerator: id,
                                tensor,
                            })
                            .await
                            .unwrap()
                            .into_inner();
                        let mut back = Vec::new();
                        while let Some(chunk) = s.message().await.unwrap() {
                            back.extend_from_slice(&chunk.data);
                        }
                        back
                    });
                    prop_assert_eq!(back, data);
                    prop_assert_eq!(
                        usage.memory_used,
                        (n as u64).max(eia::accelerator::MIN_TENSOR_CHARGE)
                    );
                }
                Err(s) => {
                    // A refused upload leaves nothing behind.
                    prop_assert_eq!(usage.memory_used, 0);
                    let fits = want.is_some_and(|w| w <= 4 << 20);
                    prop_assert!(
                        !(well_formed && fits),
                        "refused a well-formed upload: {s:?}"
                    );
                }
            }
            env.detach(id)
        })
        .unwrap();
    env.finish();
}

#[derive(Debug, Clone)]
struct ProgramCase {
    shapes: Vec<proto::TensorMeta>,
    writes: Vec<(Handle, Len)>,
    ops: Vec<FuzzOp>,
    frees: Vec<Handle>,
    reads: Vec<Handle>,
    /// Reads of ops' outputs (`Operand.op`), after `reads`.
    read_refs: Vec<u32>,
    /// Marked scratch: the server may move storage among the tensors it writes.
    scratch: bool,
    seed: u8,
}

fn program_case() -> impl Strategy<Value = ProgramCase> {
    // Tensors in pairs of the same shape (so ops find a matching output), plus a small conv
    // family, so that random attributes reach the kernels, not just shape checks.
    let shapes = prop::collection::vec(small_meta(), 1..4).prop_map(|v| {
        let mut shapes: Vec<proto::TensorMeta> =
            v.iter().flat_map(|m| [m.clone(), m.clone()]).collect();
        shapes.extend(family());
        shapes
    });
    // Mostly well-formed writes, frees and reads (a run stops at its first error, and the ops
    // come after them), each sometimes wrong.
    let write = (
        prop_oneof![6 => (0usize..FAMILY).prop_map(Handle::Family), 1 => handle()],
        prop_oneof![6 => Just(Len::Exact), 1 => len()],
    );
    let handles = |most: usize| {
        prop_oneof![
            4 => Just(vec![]),
            1 => prop::collection::vec(handle(), 0..most),
        ]
    };
    (
        shapes,
        prop::collection::vec(write, 0..3),
        prop::collection::vec(fuzz_op(), 1..4),
        handles(2),
        prop_oneof![
            4 => prop::collection::vec((0usize..FAMILY).prop_map(Handle::Family), 0..3),
            1 => handles(3),
        ],
        prop_oneof![3 => Just(vec![]), 1 => prop::collection::vec(0u32..5, 1..3)],
        prop::bool::weighted(0.25),
        any::<bool>(),
        any::<u8>(),
    )
        .prop_map(
            |(shapes, writes, mut ops, frees, reads, mut read_refs, chain, scratch, seed)| {
                // A chain of unary ops, each taking the output the server allocates for the one
                // before it, the last one's read: well formed, so that it runs unless the
                // writes, frees or reads are wrong.
                if chain {
                    let unary = [
                        Kind::Relu(proto::ReluOp {}),
                        Kind::Sigmoid(proto::SigmoidOp {}),
                        Kind::Tanh(proto::TanhOp {}),
                    ];
                    for (i, op) in ops.iter_mut().enumerate() {
                        op.kind = Some(unary[(seed as usize + i) % 3].clone());
                        op.inputs = vec![Handle::Family(0)];
                        op.output = None;
                        op.refs = match i {
                            0 => vec![],
                            i => vec![(0, i as u32 - 1)],
                        };
                    }
                    read_refs = vec![ops.len() as u32 - 1];
                }
                ProgramCase {
                    shapes,
                    writes,
                    ops,
                    frees,
                    reads,
                    read_refs,
                    scratch,
                    seed,
                }
            },
        )
}

#[test]
fn programs_of_random_ops() {
    let env = Env::start();
    runner()
        .run(&program_case(), |p| {
            let id = env.attach();
            let pool = env.alloc(id, &p.shapes);
            let sizes: Vec<usize> = p.shapes.iter().map(|m| meta_bytes(m).unwrap()).collect();
            let size_of = |t: u64| pool.iter().position(|&h| h == t).map(|i| sizes[i]);
            let writes = p
                .writes
                .iter()
                .map(|(h, l)| {
                    let tensor = resolve(h, &pool);
                    proto::TensorWrite {
                        tensor,
                        data: pattern(len_of(l, size_of(tensor).unwrap_or(8)), p.seed).into(),
                    }
                })
                .collect();
            let ops = p
                .ops
                .iter()
                .map(|op| {
                    let inputs: Vec<u64> = op.inputs.iter().map(|h| resolve(h, &pool)).collect();
                    let output = op.output.as_ref().map(|h| resolve(h, &pool));
                    if op.refs.is_empty() {
                        return proto::Op {
                            kind: op.kind.clone(),
                            inputs,
                            output,
                            ..Default::default()
                        };
                    }
                    let mut operands: Vec<_> = inputs.into_iter().map(tensor_operand).collect();
                    for &(i, j) in &op.refs {
                        let of = proto::Operand {
                            source: Some(proto::operand::Source::Op(j)),
                        };
                        match operands.len() {
                            0 => operands.push(of),
                            n => operands[i % n] = of,
                        }
                    }
                    proto::Op {
                        kind: op.kind.clone(),
                        output,
                        operands,
                        ..Default::default()
                    }
                })
                .collect();
            let reads: Vec<u64> = p.reads.iter().map(|h| resolve(h, &pool)).collect();
            let (wire_reads, read_operands) = if p.read_refs.is_empty() {
                (reads.clone(), vec![])
            } else {
                let refs = p.read_refs.iter().map(|&j| proto::Operand {
                    source: Some(proto::operand::Source::Op(j)),
                });
                let operands = reads.iter().copied().map(tensor_operand).chain(refs);
                (vec![], operands.collect())
            };
            let mut c = env.c();
            let r = env.rt.block_on(c.run(proto::RunRequest {
                accelerator: id,
                free: p.frees.iter().map(|h| resolve(h, &pool)).collect(),
                writes,
                ops,
                reads: wire_reads,
                read_operands,
                scratch: p.scratch,
            }));
            allowed("run", &r)?;
            // Which ops ran, by kind: all, or none (a program is checked whole before it runs).
            let ran = if r.is_ok() { p.ops.len() } else { 0 };
            for op in &p.ops[..ran] {
                let name = op
                    .kind
                    .as_ref()
                    .map(|k| convert::op_from(Some(k)).unwrap().name());
                count("op ran", name.unwrap_or("?"));
            }
            if let Err(s) = &r {
                let refused = s.message().strip_prefix("op ").map(|m| {
                    let kind = m.split(['(', ')']).nth(1).filter(|k| !k.contains(' '));
                    kind.unwrap_or("undecodable op").to_string()
                });
                count(
                    "refused",
                    refused.unwrap_or_else(|| "writes/frees/reads".into()),
                );
            }
            if let Ok(r) = r {
                let r = r.into_inner();
                let fresh = p.ops.iter().filter(|op| op.output.is_none()).count();
                prop_assert_eq!(r.outputs.len(), fresh);
                prop_assert_eq!(r.reads.len(), reads.len() + p.read_refs.len());
                for (bytes, t) in r.reads.iter().zip(&reads) {
                    prop_assert_eq!(Some(bytes.len()), size_of(*t));
                }
                for (bytes, j) in r.reads[reads.len()..].iter().zip(&p.read_refs) {
                    let output = r.outputs.iter().find(|o| o.op == *j);
                    let size = output.and_then(|o| meta_bytes(o.meta.as_ref()?));
                    prop_assert_eq!(Some(bytes.len()), size, "read of op {}", j);
                }
                if p.ops.iter().any(|op| !op.refs.is_empty()) {
                    count("op ran", "taking an op's output");
                }
            }
            env.detach(id)
        })
        .unwrap();
    env.finish();
}

fn tensor_operand(t: u64) -> proto::Operand {
    proto::Operand {
        source: Some(proto::operand::Source::Tensor(t)),
    }
}

/// The output shape an op's own (local) plan gives for `inputs`, if it gives one.
fn local_output(kind: &Kind, inputs: &[&eia::TensorDesc]) -> Option<eia::TensorDesc> {
    let op = convert::op_from(Some(kind)).ok()?;
    Some(op.plan(inputs).ok()?.output().clone())
}

/// ONNX's conv output size `[P, Q]` in exact (u128) arithmetic, or None where ONNX has no
/// output (zero stride or dilation, a kernel larger than the padded input, malformed lists).
/// Empty lists take ONNX's defaults.
fn conv_reference(c: &proto::ConvOp, x: &[u64], w: &[u64]) -> Option<[u128; 2]> {
    let or = |v: &Vec<u64>, d: &[u64]| if v.is_empty() { d.to_vec() } else { v.clone() };
    let c = &proto::ConvOp {
        strides: or(&c.strides, &[1, 1]),
        pads: or(&c.pads, &[0; 4]),
        dilations: or(&c.dilations, &[1, 1]),
        ..c.clone()
    };
    if c.strides.len() != 2 || c.dilations.len() != 2 || c.pads.len() != 4 {
        return None;
    }
    let mut out = [0u128; 2];
    for axis in 0..2 {
        let (input, kernel) = (x[2 + axis] as u128, w[2 + axis] as u128);
        let (stride, dilation) = (c.strides[axis] as u128, c.dilations[axis] as u128);
        if stride == 0 || dilation == 0 || kernel == 0 {
            return None;
        }
        let extent = dilation * (kernel - 1) + 1;
        let (begin, end) = match c.auto_pad.as_str() {
            "" | "NOTSET" => (c.pads[axis] as u128, c.pads[axis + 2] as u128),
            "VALID" => (0, 0),
            "SAME_UPPER" | "SAME_LOWER" => {
                let o = input.div_ceil(stride);
                let total = ((o.max(1) - 1) * stride + extent).saturating_sub(input);
                (total / 2, total - total / 2)
            }
            _ => return None,
        };
        let padded = input + begin + end;
        if padded < extent {
            return None;
        }
        out[axis] = (padded - extent) / stride + 1;
    }
    Some(out)
}

#[test]
fn single_ops_with_outputs_sized_by_their_plan() {
    // One op over well-shaped operands with random attributes; its output is allocated to the
    // shape the op's own plan computes (when small), so the attributes reach the server's
    // planning and the kernels rather than stopping at an output-shape mismatch. A conv the
    // server runs must have the output ONNX's formula gives in exact arithmetic.
    let env = Env::start();
    let strategy = (op_kind(), any::<u64>(), any::<u8>());
    runner()
        .run(&strategy, |(kind, pick, seed)| {
            let id = env.attach();
            let metas = family();
            let pool = env.alloc(id, &metas);
            let (inputs, output) = shaped_operands(&kind, pick);
            let index = |h: &Handle| match h {
                Handle::Family(i) => *i,
                _ => 0,
            };
            let descs: Vec<eia::TensorDesc> = metas
                .iter()
                .map(|m| convert::desc(Some(m)).unwrap())
                .collect();
            let inputs: Vec<usize> = if matches!(inputs.first(), Some(Handle::Pair(..))) {
                vec![0]
            } else {
                inputs.iter().map(index).collect()
            };
            let mut out_meta = metas[index(&output).max(5)].clone();
            let mut out = pool[index(&output).max(5)];
            if let Some(want) = kind.as_ref().and_then(|k| {
                local_output(k, &inputs.iter().map(|&i| &descs[i]).collect::<Vec<_>>())
            }) {
                if want.bytes() <= 1 << 20 {
                    out_meta = convert::meta(&want);
                    out = env.alloc(id, std::slice::from_ref(&out_meta))[0];
                    count("output", "sized by the plan");
                }
            }
            let mut c = env.c();
            let writes = inputs
                .iter()
                .map(|&i| proto::TensorWrite {
                    tensor: pool[i],
                    data: pattern(descs[i].bytes(), seed).into(),
                })
                .collect();
            let r = env.rt.block_on(c.run(proto::RunRequest {
                accelerator: id,
                writes,
                ops: vec![proto::Op {
                    kind: kind.clone(),
                    inputs: inputs.iter().map(|&i| pool[i]).collect(),
                    output: Some(out),
                    ..Default::default()
                }],
                reads: vec![out],
                ..Default::default()
            }));
            allowed("op", &r)?;
            let name = kind
                .as_ref()
                .map_or("no kind", |k| match convert::op_from(Some(k)) {
                    Ok(w) => w.name(),
                    Err(_) => "undecodable",
                });
            count(
                "op",
                format!("{name} {}", if r.is_ok() { "ran" } else { "refused" }),
            );
            if let (Ok(_), Some(Kind::Conv(conv))) = (&r, &kind) {
                let reference =
                    conv_reference(conv, &metas[inputs[0]].shape, &metas[inputs[1]].shape);
                let got = [out_meta.shape[2] as u128, out_meta.shape[3] as u128];
                prop_assert_eq!(reference, Some(got), "the server ran {:?}", conv);
            }
            env.detach(id)
        })
        .unwrap();
    env.finish();
}

#[test]
fn control_calls_with_random_tiers_and_ids() {
    let env = Env::start();
    let tier = || {
        prop_oneof![
            3 => prop::sample::select(vec!["fuzz", "tiny", "eia2.medium", "ml.small", "", "FUZZ", "fuzz\0"])
                .prop_map(String::from),
            1 => "\\PC{0,16}",
        ]
    };
    let strategy = (
        tier(),
        tier(),
        prop::collection::vec((0u8..5, prop::bool::weighted(0.3), any::<u64>()), 0..6),
        prop::collection::vec(small_meta(), 0..3),
    );
    runner()
        .run(&strategy, |(attach_tier, resize_tier, calls, hold)| {
            let mut c = env.c();
            let r = env.rt.block_on(c.attach(proto::AttachRequest {
                tier: attach_tier.clone(),
            }));
            allowed("attach", &r)?;
            let Ok(r) = r else { return env.idle() };
            let id = r.into_inner().accelerator;
            env.alloc(id, &hold);
            let r = env.rt.block_on(c.resize(proto::ResizeRequest {
                accelerator: id,
                tier: resize_tier,
            }));
            allowed("resize", &r)?;
            let mut detached = false;
            for (call, random, other) in calls {
                let acc = if random { other } else { id };
                let mine = acc == id;
                match call {
                    0 => allowed(
                        "heartbeat",
                        &env.rt
                            .block_on(c.heartbeat(proto::HeartbeatRequest { accelerator: acc })),
                    )?,
                    1 => allowed(
                        "usage",
                        &env.rt
                            .block_on(c.usage(proto::UsageRequest { accelerator: acc })),
                    )?,
                    2 => allowed("tiers", &env.rt.block_on(c.tiers(proto::TiersRequest {})))?,
                    3 => {
                        let r = env
                            .rt
                            .block_on(c.detach(proto::DetachRequest { accelerator: acc }));
                        allowed("detach", &r)?;
                        if mine {
                            prop_assert_eq!(r.is_ok(), !detached, "detach of {}", id);
                            if let Ok(r) = r {
                                prop_assert_eq!(r.into_inner().usage.unwrap().memory_used, 0);
                            }
                            detached = true;
                        }
                    }
                    _ => allowed(
                        "resize",
                        &env.rt.block_on(c.resize(proto::ResizeRequest {
                            accelerator: acc,
                            tier: "fuzz".into(),
                        })),
                    )?,
                }
            }
            if detached {
                env.idle()
            } else {
                env.detach(id)
            }
        })
        .unwrap();
    env.finish();
}

// ---------------------------------------------------------------------------------------------
// Raw and mutated bytes through prost, the conversions and the server.

/// Valid encodings of every request type, to mutate.
fn seeds() -> Vec<Vec<u8>> {
    let conv = proto::Op {
        kind: Some(Kind::Conv(proto::ConvOp {
            strides: vec![1, 2],
            pads: vec![0, 1, 0, 1],
            dilations: vec![1, 1],
            group: Some(1),
            auto_pad: "NOTSET".into(),
            kernel_shape: vec![3, 3],
            relu: true,
            clip: Some(proto::ClipOp {
                min: Some(0.0),
                max: Some(6.0),
            }),
            sum: false,
        })),
        inputs: vec![1, 2, 3],
        output: Some(4),
        ..Default::default()
    };
    let gemm = proto::Op {
        kind: Some(Kind::Gemm(proto::GemmOp {
            alpha: Some(1.0),
            beta: Some(0.5),
            trans_a: true,
            trans_b: false,
            relu: false,
            clip: None,
        })),
        inputs: vec![1, 2],
        output: Some(3),
        ..Default::default()
    };
    vec![
        proto::RunRequest {
            accelerator: 1,
            free: vec![9],
            writes: vec![proto::TensorWrite {
                tensor: 1,
                data: Bytes::from_static(&[0; 24]),
            }],
            ops: vec![conv, gemm],
            reads: vec![4],
            ..Default::default()
        }
        .encode_to_vec(),
        proto::AllocRequest {
            accelerator: 1,
            tensors: vec![meta("FP32", &[2, 3]), meta("FP16", &[4])],
        }
        .encode_to_vec(),
        proto::UploadChunk {
            header: Some(proto::UploadHeader {
                accelerator: 1,
                meta: Some(meta("FP16", &[2, 2])),
            }),
            data: Bytes::from_static(&[1; 8]),
        }
        .encode_to_vec(),
        proto::ResizeRequest {
            accelerator: 1,
            tier: "fuzz".into(),
        }
        .encode_to_vec(),
    ]
}

#[derive(Debug, Clone)]
enum Mutation {
    Flip(usize, u8),
    Insert(usize, u8),
    Delete(usize),
    Truncate(usize),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        any::<(usize, u8)>().prop_map(|(i, b)| Mutation::Flip(i, b)),
        any::<(usize, u8)>().prop_map(|(i, b)| Mutation::Insert(i, b)),
        any::<usize>().prop_map(Mutation::Delete),
        any::<usize>().prop_map(Mutation::Truncate),
    ]
}

fn mutate(mut bytes: Vec<u8>, mutations: &[Mutation]) -> Vec<u8> {
    for m in mutations {
        let n = bytes.len();
        match *m {
            Mutation::Flip(i, b) if n > 0 => bytes[i % n] ^= b,
            Mutation::Insert(i, b) => bytes.insert(i % (n + 1), b),
            Mutation::Delete(i) if n > 0 => {
                bytes.remove(i % n);
            }
            Mutation::Truncate(i) => bytes.truncate(i % (n + 1)),
            _ => {}
        }
    }
    bytes
}

fn raw_input() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..200),
        (
            prop::sample::select(seeds()),
            prop::collection::vec(mutation(), 1..6)
        )
            .prop_map(|(seed, m)| mutate(seed, &m)),
    ]
}

/// Decodes `bytes` as every request type; the ones that decode go through the conversions the
/// server applies (which must return, not panic). Returns the decoded requests worth sending.
fn decode_all(
    bytes: &[u8],
) -> (
    Option<proto::RunRequest>,
    Option<proto::AllocRequest>,
    Option<proto::UploadChunk>,
) {
    let _ = proto::AttachRequest::decode(bytes);
    let _ = proto::ResizeRequest::decode(bytes);
    let _ = proto::DetachRequest::decode(bytes);
    let _ = proto::HeartbeatRequest::decode(bytes);
    let _ = proto::UsageRequest::decode(bytes);
    let _ = proto::FreeRequest::decode(bytes);
    let _ = proto::DownloadRequest::decode(bytes);
    let _ = proto::TiersRequest::decode(bytes);
    let _ = proto::ServerLiveRequest::decode(bytes);
    let _ = proto::ServerReadyRequest::decode(bytes);
    let run = proto::RunRequest::decode(bytes).ok();
    if let Some(r) = &run {
        for op in &r.ops {
            if let Ok(op) = convert::op_from(op.kind.as_ref()) {
                let arity = op.arity();
                assert!(arity.start() <= arity.end() && !op.name().is_empty());
            }
        }
    }
    let alloc = proto::AllocRequest::decode(bytes).ok();
    if let Some(a) = &alloc {
        for m in &a.tensors {
            let _ = convert::desc(Some(m));
        }
    }
    let upload = proto::UploadChunk::decode(bytes).ok();
    if let Some(u) = &upload {
        let _ = convert::desc(u.header.as_ref().and_then(|h| h.meta.as_ref()));
    }
    // Decoding from a `Bytes` (what tonic hands the server) agrees with decoding from a slice.
    let shared = Bytes::copy_from_slice(bytes);
    // (Compared re-encoded: NaN attributes are not equal to themselves.)
    let again = proto::RunRequest::decode(shared.clone()).ok();
    assert_eq!(
        again.map(|m| m.encode_to_vec()),
        run.as_ref().map(Message::encode_to_vec)
    );
    let again = proto::UploadChunk::decode(shared).ok();
    assert_eq!(
        again.map(|m| m.encode_to_vec()),
        upload.as_ref().map(Message::encode_to_vec)
    );
    (run, alloc, upload)
}

#[test]
fn raw_and_mutated_bytes_decode_convert_and_serve() {
    let env = Env::start();
    runner()
        .run(&raw_input(), |bytes| {
            let (run, alloc, upload) = decode_all(&bytes);
            let id = env.attach();
            let pool = env.alloc(id, &[meta("FP32", &[2, 3]), meta("FP32", &[2, 3])]);
            let mut c = env.c();
            if let Some(mut r) = run {
                r.accelerator = id;
                // Aim some handles at real tensors.
                for (i, op) in r.ops.iter_mut().enumerate() {
                    if let Some(x) = op.inputs.first_mut() {
                        *x = pool[i % 2];
                    }
                    op.output = Some(pool[(i + 1) % 2]);
                }
                allowed("run", &env.rt.block_on(c.run(r)))?;
            }
            if let Some(mut a) = alloc {
                a.accelerator = id;
                allowed("alloc", &env.rt.block_on(c.alloc(a)))?;
            }
            if let Some(mut u) = upload {
                if let Some(h) = &mut u.header {
                    h.accelerator = id;
                }
                allowed(
                    "upload",
                    &env.rt.block_on(c.upload(tokio_stream::iter([u]))),
                )?;
            }
            env.detach(id)
        })
        .unwrap();
    env.finish();
}

// ---------------------------------------------------------------------------------------------
// Fixed cases: limits the strategies reach only by chance, and regressions.

#[test]
fn oversized_messages_and_quota_refusals() {
    let env = Env::start();
    let id = env.attach();
    let mut c = env.c();
    let t = env.alloc(id, &[meta("FP32", &[1 << 16])]);
    // A message over the server's limit: refused by tonic with OUT_OF_RANGE, connection intact.
    let big = env.rt.block_on(c.run(proto::RunRequest {
        accelerator: id,
        writes: vec![proto::TensorWrite {
            tensor: t[0],
            data: vec![0; MAX_MESSAGE + 1].into(),
        }],
        ..Default::default()
    }));
    assert_eq!(big.unwrap_err().code(), Code::OutOfRange);
    // An upload declaring more than the quota is refused on its first message.
    let r = env
        .rt
        .block_on(c.upload(tokio_stream::iter([proto::UploadChunk {
            header: Some(proto::UploadHeader {
                accelerator: id,
                meta: Some(meta("FP32", &[1 << 21])),
            }),
            data: vec![0; 16].into(),
        }])));
    assert_eq!(r.unwrap_err().code(), Code::ResourceExhausted);
    // Declared size overflowing usize / isize.
    for shape in [vec![u64::MAX], vec![1 << 62, 4], vec![1 << 32, 1 << 32]] {
        let r = env
            .rt
            .block_on(c.upload(tokio_stream::iter([proto::UploadChunk {
                header: Some(proto::UploadHeader {
                    accelerator: id,
                    meta: Some(meta("FP16", &shape)),
                }),
                data: Bytes::new(),
            }])));
        assert_eq!(r.unwrap_err().code(), Code::InvalidArgument, "{shape:?}");
    }
    env.detach(id).unwrap();
    env.finish();
}

/// Regression (found while fuzzing): conv pads or dilations whose sums overflow `usize` wrapped
/// around in the plan's arithmetic (release builds; debug builds panicked), so that pads of
/// `[u64::MAX, 0, 1, 0]` looked like no padding at all and ran. They are refused now.
#[test]
fn conv_attributes_that_overflow_the_plan_arithmetic() {
    let env = Env::start();
    let id = env.attach();
    let t = env.alloc(id, &family());
    let mut c = env.c();
    let conv =
        |w: usize, y: usize, pads: Vec<u64>, dilations: Vec<u64>, auto_pad: &str| proto::Op {
            kind: Some(Kind::Conv(proto::ConvOp {
                strides: vec![1, 1],
                pads,
                dilations,
                group: Some(1),
                auto_pad: auto_pad.into(),
                ..Default::default()
            })),
            inputs: vec![t[0], t[w]],
            output: Some(t[y]),
            ..Default::default()
        };
    let max = u64::MAX;
    for (op, attribute) in [
        // top pad u64::MAX, bottom pad 1: the padded height wrapped around to the input's.
        (conv(1, 5, vec![max, 0, 1, 0], vec![1, 1], ""), "pads"),
        (conv(1, 5, vec![0, max, 0, 1], vec![1, 1], "NOTSET"), "pads"),
        (conv(1, 7, vec![max, max, 2, 2], vec![1, 1], ""), "pads"),
        // dilation u64::MAX on a 2x2 kernel: the dilated extent wrapped around to 0.
        (conv(2, 7, vec![0; 4], vec![max, max], ""), "dilations"),
        (
            conv(2, 7, vec![0; 4], vec![max, 1], "SAME_UPPER"),
            "dilations",
        ),
        (conv(2, 7, vec![0; 4], vec![1, max], "VALID"), "dilations"),
    ] {
        let r = env.rt.block_on(c.run(proto::RunRequest {
            accelerator: id,
            ops: vec![op.clone()],
            ..Default::default()
        }));
        let s = r.expect_err("an overflowing conv attribute was accepted");
        assert_eq!(s.code(), Code::InvalidArgument, "{op:?}: {s:?}");
        assert!(s.message().contains(attribute), "{op:?}: {s:?}");
    }
    // The same refusal from the local API.
    let x = eia::TensorDesc::new(eia::DType::F32, &[1, 2, 3, 3]).unwrap();
    let w = eia::TensorDesc::new(eia::DType::F32, &[2, 2, 1, 1]).unwrap();
    let conv = eia::ops::Conv {
        pads: [usize::MAX, 0, 1, 0],
        ..Default::default()
    };
    let e = conv.plan(&x, &w, None, None).unwrap_err();
    assert!(
        matches!(e, eia::Error::Attribute { name: "pads", .. }),
        "{e}"
    );
    env.detach(id).unwrap();
    env.finish();
}

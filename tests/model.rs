//! ONNX models: loading (every node checked, all problems in one error), shape inference at a
//! batch size, constant folding, and inference on the CPU backend and on a metered accelerator,
//! checked against the same ops applied one by one. Models are built here with the ONNX
//! protobuf types (`eia::model::onnx::proto`).

use eia::model::onnx::proto::{
    self, attribute_proto::AttributeType, tensor_proto::DataType, tensor_shape_proto, type_proto,
    AttributeProto, GraphProto, ModelProto, NodeProto, OperatorSetIdProto, TensorProto,
    TensorShapeProto, TypeProto, ValueInfoProto,
};
use eia::ops::{BatchNorm, Clip, Conv, Flatten, Gemm, Op, Softmax};
use eia::{Backend, CpuBackend, DType, Error, HostTensor, LoadOptions, Model};
use prost::Message;
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

fn attr_int(name: &str, v: i64) -> AttributeProto {
    AttributeProto {
        name: Some(name.into()),
        r#type: Some(AttributeType::Int as i32),
        i: Some(v),
        ..Default::default()
    }
}

fn attr_ints(name: &str, v: &[i64]) -> AttributeProto {
    AttributeProto {
        name: Some(name.into()),
        r#type: Some(AttributeType::Ints as i32),
        ints: v.to_vec(),
        ..Default::default()
    }
}

fn attr_float(name: &str, v: f32) -> AttributeProto {
    AttributeProto {
        name: Some(name.into()),
        r#type: Some(AttributeType::Float as i32),
        f: Some(v),
        ..Default::default()
    }
}

fn node(
    op: &str,
    name: &str,
    inputs: &[&str],
    outputs: &[&str],
    attrs: Vec<AttributeProto>,
) -> NodeProto {
    NodeProto {
        op_type: Some(op.into()),
        name: Some(name.into()),
        input: inputs.iter().map(|s| s.to_string()).collect(),
        output: outputs.iter().map(|s| s.to_string()).collect(),
        attribute: attrs,
        ..Default::default()
    }
}

fn float_tensor(name: &str, t: &HostTensor) -> TensorProto {
    TensorProto {
        name: Some(name.into()),
        dims: t.shape().iter().map(|&d| d as i64).collect(),
        data_type: Some(DataType::Float as i32),
        float_data: t.data().to_f32_vec(),
        ..Default::default()
    }
}

/// A tensor value info; `None` dims are symbolic.
fn value_info(name: &str, elem: DataType, dims: &[Option<i64>]) -> ValueInfoProto {
    use tensor_shape_proto::{dimension::Value, Dimension};
    ValueInfoProto {
        name: Some(name.into()),
        r#type: Some(TypeProto {
            value: Some(type_proto::Value::TensorType(type_proto::Tensor {
                elem_type: Some(elem as i32),
                shape: Some(TensorShapeProto {
                    dim: dims
                        .iter()
                        .map(|d| Dimension {
                            value: Some(match d {
                                Some(v) => Value::DimValue(*v),
                                None => Value::DimParam("N".into()),
                            }),
                            ..Default::default()
                        })
                        .collect(),
                }),
            })),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn model(graph: GraphProto, opset: i64) -> Vec<u8> {
    ModelProto {
        ir_version: Some(8),
        opset_import: vec![OperatorSetIdProto {
            domain: Some(String::new()),
            version: Some(opset),
        }],
        graph: Some(graph),
        ..Default::default()
    }
    .encode_to_vec()
}

fn random(rng: &mut StdRng, shape: &[usize], lo: f32, hi: f32) -> HostTensor {
    let n = shape.iter().product();
    let v: Vec<f32> = (0..n).map(|_| rng.random_range(lo..hi)).collect();
    HostTensor::new(shape, v).unwrap()
}

/// A small CNN: Conv(3→4, 3x3, pad 1, bias) → BatchNorm → Identity → Dropout → Conv(4→2, 1x1)
/// → Softmax over channels, and a second output: the first conv's output through a MatMul
/// with a constant (`Constant` node) over its last axis. The batch dimension is symbolic.
struct Cnn {
    bytes: Vec<u8>,
    w1: HostTensor,
    b1: HostTensor,
    bn: [HostTensor; 4],
    w2: HostTensor,
    m: HostTensor,
}

fn cnn(rng: &mut StdRng) -> Cnn {
    let w1 = random(rng, &[4, 3, 3, 3], -0.5, 0.5);
    let b1 = random(rng, &[4], -0.5, 0.5);
    let bn = [
        random(rng, &[4], 0.5, 1.5),
        random(rng, &[4], -0.5, 0.5),
        random(rng, &[4], -0.5, 0.5),
        random(rng, &[4], 0.5, 1.5),
    ];
    let w2 = random(rng, &[2, 4, 1, 1], -0.5, 0.5);
    let m = random(rng, &[8, 5], -0.5, 0.5);
    let constant = NodeProto {
        attribute: vec![AttributeProto {
            name: Some("value".into()),
            r#type: Some(AttributeType::Tensor as i32),
            t: Some(float_tensor("", &m)),
            ..Default::default()
        }],
        ..node("Constant", "const_m", &[], &["m"], vec![])
    };
    let graph = GraphProto {
        name: Some("cnn".into()),
        node: vec![
            node(
                "Conv",
                "conv1",
                &["x", "w1", "b1"],
                &["c1"],
                vec![
                    attr_ints("pads", &[1, 1, 1, 1]),
                    attr_ints("kernel_shape", &[3, 3]),
                ],
            ),
            node(
                "BatchNormalization",
                "bn1",
                &["c1", "s", "bb", "mean", "var"],
                &["n1"],
                vec![attr_float("epsilon", 1e-3)],
            ),
            node("Identity", "id", &["n1"], &["i1"], vec![]),
            node(
                "Dropout",
                "drop",
                &["i1"],
                &["d1"],
                vec![attr_float("ratio", 0.5)],
            ),
            node("Conv", "conv2", &["d1", "w2"], &["c2"], vec![]),
            node(
                "Softmax",
                "softmax",
                &["c2"],
                &["probs"],
                vec![attr_int("axis", 1)],
            ),
            constant,
            node("MatMul", "mm", &["c1", "m"], &["proj"], vec![]),
        ],
        initializer: vec![
            float_tensor("w1", &w1),
            float_tensor("b1", &b1),
            float_tensor("s", &bn[0]),
            float_tensor("bb", &bn[1]),
            float_tensor("mean", &bn[2]),
            float_tensor("var", &bn[3]),
            float_tensor("w2", &w2),
        ],
        input: vec![value_info(
            "x",
            DataType::Float,
            &[None, Some(3), Some(8), Some(8)],
        )],
        output: vec![
            value_info("probs", DataType::Float, &[None, Some(2), Some(8), Some(8)]),
            value_info("proj", DataType::Float, &[None, Some(4), Some(8), Some(5)]),
        ],
        ..Default::default()
    };
    Cnn {
        bytes: model(graph, 13),
        w1,
        b1,
        bn,
        w2,
        m,
    }
}

/// The CNN's outputs computed op by op on the CPU backend.
fn cnn_by_hand(c: &Cnn, x: &HostTensor) -> Vec<HostTensor> {
    let cpu = CpuBackend::new();
    let up = |t: &HostTensor| cpu.upload(t).unwrap();
    let conv1 = Conv {
        pads: [1; 4],
        kernel_shape: Some([3, 3]),
        ..Conv::default()
    };
    let c1 = cpu
        .conv(&conv1, &up(x), &up(&c.w1), Some(&up(&c.b1)))
        .unwrap();
    let bn = c.bn.each_ref().map(up);
    let n1 = cpu
        .batch_norm(
            &BatchNorm { epsilon: 1e-3 },
            &c1,
            [&bn[0], &bn[1], &bn[2], &bn[3]],
        )
        .unwrap();
    let c2 = cpu.conv(&Conv::default(), &n1, &up(&c.w2), None).unwrap();
    let probs = cpu.softmax(&Softmax { axis: 1 }, &c2).unwrap();
    let proj = cpu.apply(&Op::MatMul, &[&c1, &up(&c.m)]).unwrap();
    vec![cpu.download(&probs).unwrap(), cpu.download(&proj).unwrap()]
}

fn seeded(test: &str) -> StdRng {
    let seed = rand::rng().random::<u64>();
    println!("{test}: seed {seed}");
    StdRng::seed_from_u64(seed)
}

#[test]
fn a_cnn_runs_as_its_ops_do_at_every_batch() {
    let mut rng = seeded("cnn");
    let c = cnn(&mut rng);
    for batch in [1, 3] {
        let m = Model::from_bytes(&c.bytes, LoadOptions { batch, fp16: false }).unwrap();
        assert_eq!(m.inputs().len(), 1);
        assert_eq!(m.inputs()[0].desc.shape(), &[batch, 3, 8, 8]);
        assert_eq!(m.outputs()[0].desc.shape(), &[batch, 2, 8, 8]);
        assert_eq!(m.outputs()[1].desc.shape(), &[batch, 4, 8, 5]);
        // Identity and Dropout are aliases, Constant a weight: five ops run.
        let names: Vec<&str> = m.ops().map(|o| o.name()).collect();
        assert_eq!(
            names,
            ["Conv", "BatchNormalization", "Conv", "Softmax", "MatMul"]
        );
        let b = batch as u64;
        let flops = 2 * b * 4 * 64 * 27
            + 2 * b * 4 * 64
            + 2 * b * 2 * 64 * 4
            + 5 * b * 128
            + 2 * b * 4 * 8 * 5 * 8;
        assert_eq!(m.flops(), flops);
        assert_eq!(
            m.weight_bytes(),
            4 * (108 + 4 + 16 + 8 + 40),
            "each initializer once"
        );
        let x = random(&mut rng, &[batch, 3, 8, 8], -1.0, 1.0);
        let cpu = CpuBackend::new();
        let session = m.session(&cpu).unwrap();
        let want = cnn_by_hand(&c, &x);
        for _ in 0..2 {
            let got = session.run(std::slice::from_ref(&x)).unwrap();
            assert_eq!(got.len(), 2);
            for (g, w) in got.iter().zip(&want) {
                assert_eq!(g.shape(), w.shape());
                assert_eq!(
                    g.data().to_f32_vec(),
                    w.data().to_f32_vec(),
                    "batch {batch}"
                );
            }
        }
    }
}

#[test]
fn fp16_loading_computes_in_fp16_within_its_precision() {
    let mut rng = seeded("fp16");
    let c = cnn(&mut rng);
    let m = Model::from_bytes(
        &c.bytes,
        LoadOptions {
            batch: 2,
            fp16: true,
        },
    )
    .unwrap();
    assert_eq!(m.inputs()[0].desc.dtype(), DType::F16);
    assert_eq!(m.weight_bytes(), 2 * (108 + 4 + 16 + 8 + 40));
    let x = random(&mut rng, &[2, 3, 8, 8], -1.0, 1.0);
    // FP32 input is converted to the model's FP16.
    let got = m
        .session(&CpuBackend::new())
        .unwrap()
        .run(std::slice::from_ref(&x))
        .unwrap();
    let want = cnn_by_hand(&c, &x);
    for (g, w) in got.iter().zip(&want) {
        assert_eq!(g.dtype(), DType::F16);
        let (g, w) = (g.data().to_f64_vec(), w.data().to_f64_vec());
        let err: f64 = g
            .iter()
            .zip(&w)
            .map(|(a, b)| (a - b).powi(2))
            .sum::<f64>()
            .sqrt();
        let norm: f64 = w.iter().map(|b| b * b).sum::<f64>().sqrt();
        assert!(err / norm < 1e-2, "relative error {}", err / norm);
    }
}

#[test]
fn a_metered_accelerator_runs_the_model_and_is_charged_its_flops() {
    let mut rng = seeded("metered");
    let c = cnn(&mut rng);
    let m = Model::from_bytes(&c.bytes, LoadOptions::default()).unwrap();
    let config = eia::DeviceConfig {
        // Room for the tier whatever this machine measures (compute only).
        overcommit: true,
        ..eia::DeviceConfig::default()
    };
    let device = eia::Device::new(CpuBackend::new(), config).unwrap();
    let accel = device.attach("eia2.large").unwrap();
    let x = random(&mut rng, &[1, 3, 8, 8], -1.0, 1.0);
    let session = m.session(&accel).unwrap();
    let got = session.run(std::slice::from_ref(&x)).unwrap();
    let want = cnn_by_hand(&c, &x);
    assert_eq!(got[0].data().to_f32_vec(), want[0].data().to_f32_vec());
    let usage = accel.usage();
    assert_eq!(usage.flops[DType::F32], m.flops());
    // The intermediates lent each other's storage for the inference (as on the CPU backend
    // itself) and have it back: the next inference is right, no memory was added.
    let x = random(&mut rng, &[1, 3, 8, 8], -1.0, 1.0);
    let got = session.run(std::slice::from_ref(&x)).unwrap();
    let want = cnn_by_hand(&c, &x);
    assert_eq!(got[0].data().to_f32_vec(), want[0].data().to_f32_vec());
    assert_eq!(accel.usage().memory_used, usage.memory_used);
}

#[test]
fn bad_files_are_one_clear_error() {
    let mut rng = seeded("bad");
    let c = cnn(&mut rng);
    let err = |bytes: &[u8]| match Model::from_bytes(bytes, LoadOptions::default()) {
        Err(Error::Model(m)) => m,
        other => panic!("expected a model error, got {other:?}"),
    };
    assert!(err(&c.bytes[..c.bytes.len() / 2]).contains("not an ONNX model"));
    assert!(err(b"\x7fELF\x02\x01\x01garbage").contains("not an ONNX model"));
    assert!(err(&[]).contains("no graph"));
    let e = Model::from_bytes(
        &c.bytes,
        LoadOptions {
            batch: 0,
            fp16: false,
        },
    );
    assert!(matches!(e, Err(Error::Model(m)) if m.contains("batch")));
    let e = Model::load("/nonexistent/model.onnx", LoadOptions::default());
    assert!(matches!(e, Err(Error::Model(m)) if m.contains("/nonexistent/model.onnx")));
}

/// A one-node graph `y = op(x)` for error cases.
fn graph(
    nodes: Vec<NodeProto>,
    inputs: Vec<ValueInfoProto>,
    inits: Vec<TensorProto>,
) -> GraphProto {
    GraphProto {
        node: nodes,
        input: inputs,
        initializer: inits,
        output: vec![value_info("y", DataType::Float, &[])],
        ..Default::default()
    }
}

fn load_err(graph: GraphProto, opset: i64) -> String {
    match Model::from_bytes(&model(graph, opset), LoadOptions::default()) {
        Err(Error::Model(m)) => m,
        other => panic!("expected a model error, got {other:?}"),
    }
}

#[test]
fn every_unsupported_node_is_listed_at_once() {
    let x = value_info("x", DataType::Float, &[None, Some(4)]);
    let m = load_err(
        graph(
            vec![
                node("Gelu", "g1", &["x"], &["a"], vec![]),
                node("Softmax", "ok", &["a"], &["b"], vec![]),
                NodeProto {
                    domain: Some("com.microsoft".into()),
                    ..node("FusedGemm", "fg", &["b"], &["c"], vec![])
                },
                node("Erf", "", &["c"], &["y"], vec![]),
            ],
            vec![x],
            vec![],
        ),
        13,
    );
    assert!(m.contains("3 nodes of 3 op types"), "{m}");
    for part in [
        "Gelu (1): 'g1'",
        "com.microsoft.FusedGemm (1): 'fg'",
        "Erf (1): #3",
    ] {
        assert!(m.contains(part), "{part} missing from: {m}");
    }
    assert!(!m.contains("'ok'"), "{m}");
}

#[test]
fn graph_errors_name_their_nodes() {
    let x = || value_info("x", DataType::Float, &[None, Some(4)]);
    let mut rng = seeded("graph_errors");
    // A missing initializer.
    let m = load_err(
        graph(
            vec![node("MatMul", "mm", &["x", "w"], &["y"], vec![])],
            vec![x()],
            vec![],
        ),
        13,
    );
    assert!(m.contains("'mm' (MatMul): input w is not"), "{m}");
    // A cycle.
    let m = load_err(
        graph(
            vec![
                node("MatMul", "a", &["x", "b_out"], &["a_out"], vec![]),
                node("Softmax", "b", &["a_out"], &["b_out"], vec![]),
                node("Softmax", "c", &["x"], &["y"], vec![]),
            ],
            vec![x()],
            vec![],
        ),
        13,
    );
    assert!(
        m.contains("cycle") && m.contains("'a'") && m.contains("'b'") && !m.contains("'c'"),
        "{m}"
    );
    // Shapes that do not chain, in two nodes: both reported.
    let w = random(&mut rng, &[5, 3], -1.0, 1.0);
    let m = load_err(
        graph(
            vec![
                node("MatMul", "mm1", &["x", "w"], &["y"], vec![]),
                node(
                    "Gemm",
                    "g",
                    &["x", "w"],
                    &["z"],
                    vec![attr_int("transB", 1)],
                ),
            ],
            vec![x()],
            vec![float_tensor("w", &w)],
        ),
        13,
    );
    assert!(
        m.contains("2 problems") && m.contains("'mm1' (MatMul)") && m.contains("'g' (Gemm)"),
        "{m}"
    );
    // A symbolic dimension other than the batch; an integer input.
    let m = load_err(
        graph(
            vec![node("Softmax", "s", &["x"], &["y"], vec![])],
            vec![
                value_info("x", DataType::Float, &[Some(1), None]),
                value_info("ids", DataType::Int64, &[Some(1)]),
            ],
            vec![],
        ),
        13,
    );
    assert!(
        m.contains("input x: dimension 1 is symbolic") && m.contains("input ids: is INT64"),
        "{m}"
    );
    // Unsupported attributes and opsets.
    let m = load_err(
        graph(
            vec![node(
                "Gemm",
                "g",
                &["x", "x"],
                &["y"],
                vec![attr_int("broadcast", 1)],
            )],
            vec![x()],
            vec![],
        ),
        13,
    );
    assert!(m.contains("attribute broadcast is not supported"), "{m}");
    let m = load_err(graph(vec![], vec![x()], vec![]), 5);
    assert!(m.contains("opset 5"), "{m}");
    let m = load_err(
        graph(
            vec![node(
                "Softmax",
                "s",
                &["x"],
                &["y"],
                vec![attr_int("axis", 0)],
            )],
            vec![x()],
            vec![],
        ),
        11,
    );
    assert!(m.contains("opset 11 Softmax over axis 0"), "{m}");
}

#[test]
fn inputs_are_checked_at_run_time() {
    let mut rng = seeded("inputs");
    let c = cnn(&mut rng);
    let m = Model::from_bytes(&c.bytes, LoadOptions::default()).unwrap();
    let cpu = CpuBackend::new();
    let s = m.session(&cpu).unwrap();
    let e = s.run(&[]).unwrap_err().to_string();
    assert!(e.contains("takes 1 inputs (x), got 0"), "{e}");
    let e = s
        .run(&[random(&mut rng, &[2, 3, 8, 8], 0.0, 1.0)])
        .unwrap_err()
        .to_string();
    assert!(e.contains("input x is [2, 3, 8, 8]"), "{e}");
    // No two tensors of this model share a descriptor: a buffer each (x, c1, n1, c2, probs,
    // proj).
    assert_eq!(
        m.peak_bytes(),
        m.weight_bytes() + 4 * (192 + 256 + 256 + 128 + 128 + 160)
    );
    let _ = (Gemm::default(), proto::ModelProto::default());
}

/// `x → Softmax ×6 → y`, every tensor `[batch, 16]`.
fn softmax_chain() -> Vec<u8> {
    let names = ["x", "s1", "s2", "s3", "s4", "s5", "y"];
    let nodes = names
        .windows(2)
        .enumerate()
        .map(|(i, w)| node("Softmax", &format!("sm{i}"), &[w[0]], &[w[1]], vec![]))
        .collect();
    model(
        GraphProto {
            node: nodes,
            input: vec![value_info("x", DataType::Float, &[None, Some(16)])],
            output: vec![value_info("y", DataType::Float, &[None, Some(16)])],
            ..Default::default()
        },
        13,
    )
}

#[test]
fn tensors_of_one_shape_share_buffers_when_their_lives_do_not_overlap() {
    let m = Model::from_bytes(
        &softmax_chain(),
        LoadOptions {
            batch: 4,
            fp16: false,
        },
    )
    .unwrap();
    // x, then two buffers alternating: each op reads one and writes the other (the output
    // never aliases its input), and x's buffer is reused once x is dead.
    assert_eq!(m.peak_bytes(), 2 * 4 * 16 * 4);
    let mut rng = seeded("chain");
    let x = random(&mut rng, &[4, 16], -3.0, 3.0);
    let cpu = CpuBackend::new();
    let mut want = cpu.upload(&x).unwrap();
    for _ in 0..6 {
        want = cpu.softmax(&Softmax::default(), &want).unwrap();
    }
    let want = cpu.download(&want).unwrap();
    let session = m.session(&cpu).unwrap();
    for _ in 0..3 {
        let got = session.run(std::slice::from_ref(&x)).unwrap();
        assert_eq!(got[0].data().to_f32_vec(), want.data().to_f32_vec());
    }
}

#[test]
fn a_remote_accelerator_runs_an_inference_in_one_program() {
    use eia::rpc::{ClientConfig, Connection, ServerConfig};
    let mut rng = seeded("remote");
    let c = cnn(&mut rng);
    let m = Model::from_bytes(
        &c.bytes,
        LoadOptions {
            batch: 2,
            fp16: false,
        },
    )
    .unwrap();
    let config = ServerConfig {
        device: eia::DeviceConfig {
            overcommit: true,
            ..eia::DeviceConfig::default()
        },
        ..ServerConfig::default()
    };
    let server =
        eia::rpc::spawn("127.0.0.1:0".parse().unwrap(), CpuBackend::new(), config).unwrap();
    let conn = Connection::connect(&server.url(false), ClientConfig::default()).unwrap();
    let remote = conn.attach("eia2.large").unwrap();
    let session = m.session(&remote).unwrap();
    let x = random(&mut rng, &[2, 3, 8, 8], -1.0, 1.0);
    let want = cnn_by_hand(&c, &x);
    for _ in 0..2 {
        let got = session.run(std::slice::from_ref(&x)).unwrap();
        for (g, w) in got.iter().zip(&want) {
            assert_eq!(g.data().to_f32_vec(), w.data().to_f32_vec());
        }
    }
    let usage = remote.usage().unwrap();
    assert_eq!(usage.ops, 2 * 5);
    assert_eq!(usage.flops[DType::F32], 2 * m.flops());
    // Weights and buffers (7 weights, 6 buffers), each charged at least MIN_TENSOR_CHARGE.
    let floor = eia::accelerator::MIN_TENSOR_CHARGE;
    assert!(usage.memory_used >= m.peak_bytes(), "{usage:?}");
    assert!(
        usage.memory_used <= m.peak_bytes() + 13 * floor,
        "{usage:?}"
    );
    // A bad input fails before anything is sent.
    assert!(session
        .run(&[random(&mut rng, &[1, 3, 8, 8], 0.0, 1.0)])
        .is_err());
}

/// `Conv → BatchNormalization → Softmax`: the BatchNormalization folds into the Conv (its
/// original weights are not kept); results stay within FP32's contract. (Relu fusion is
/// checked with the Relu op's own tests.)
#[test]
fn batch_norm_folds_into_conv_and_relu_into_its_producer() {
    let mut rng = seeded("fold");
    let w = random(&mut rng, &[6, 3, 3, 3], -0.5, 0.5);
    let b = random(&mut rng, &[6], -0.5, 0.5);
    let bn = [
        random(&mut rng, &[6], 0.5, 1.5),
        random(&mut rng, &[6], -0.5, 0.5),
        random(&mut rng, &[6], -0.5, 0.5),
        random(&mut rng, &[6], 0.5, 1.5),
    ];
    let graph = GraphProto {
        node: vec![
            node("Conv", "conv", &["x", "w", "b"], &["c"], vec![]),
            node(
                "BatchNormalization",
                "bn",
                &["c", "s", "bb", "m", "v"],
                &["n"],
                vec![attr_float("epsilon", 1e-3)],
            ),
            node("Softmax", "sm", &["n"], &["y"], vec![attr_int("axis", 3)]),
        ],
        initializer: [
            ("w", &w),
            ("b", &b),
            ("s", &bn[0]),
            ("bb", &bn[1]),
            ("m", &bn[2]),
            ("v", &bn[3]),
        ]
        .iter()
        .map(|(n, t)| float_tensor(n, t))
        .collect(),
        input: vec![value_info(
            "x",
            DataType::Float,
            &[Some(2), Some(3), Some(7), Some(7)],
        )],
        output: vec![value_info("y", DataType::Float, &[])],
        ..Default::default()
    };
    let m = Model::from_bytes(&model(graph, 13), LoadOptions::default()).unwrap();
    let names: Vec<&str> = m.ops().map(|o| o.name()).collect();
    assert_eq!(
        names,
        ["Conv", "Softmax"],
        "the BatchNormalization is folded"
    );
    assert_eq!(
        m.weight_bytes(),
        4 * (6 * 27 + 6),
        "only the folded weights are kept"
    );
    let x = random(&mut rng, &[2, 3, 7, 7], -1.0, 1.0);
    let cpu = CpuBackend::new();
    let up = |t: &HostTensor| cpu.upload(t).unwrap();
    let c = cpu
        .conv(&Conv::default(), &up(&x), &up(&w), Some(&up(&b)))
        .unwrap();
    let p = bn.each_ref().map(up);
    let n = cpu
        .batch_norm(
            &BatchNorm { epsilon: 1e-3 },
            &c,
            [&p[0], &p[1], &p[2], &p[3]],
        )
        .unwrap();
    let want = cpu
        .download(&cpu.softmax(&Softmax { axis: 3 }, &n).unwrap())
        .unwrap()
        .data()
        .to_f64_vec();
    let got = m.session(&cpu).unwrap().run(&[x]).unwrap()[0]
        .data()
        .to_f64_vec();
    let err: f64 = got
        .iter()
        .zip(&want)
        .map(|(a, b)| (a - b).powi(2))
        .sum::<f64>()
        .sqrt();
    let norm: f64 = want.iter().map(|b| b * b).sum::<f64>().sqrt();
    assert!(err / norm <= 1e-5, "relative error {}", err / norm);
}

/// `Conv → Clip` and `Gemm → Relu → Clip` fuse into their producers' epilogues (a Clip's bounds
/// as constant inputs at opset 13, as attributes at opset 7), and the model computes what its
/// ops compute one by one.
#[test]
fn clip_fuses_into_conv_and_gemm() {
    let mut rng = seeded("clip");
    let w = random(&mut rng, &[6, 3, 3, 3], -0.5, 0.5);
    let b = random(&mut rng, &[6], -0.5, 0.5);
    let g = random(&mut rng, &[150, 16], -0.5, 0.5);
    let x = random(&mut rng, &[1, 3, 7, 7], -1.0, 1.0);
    let clip1 = [0.0, 0.3];
    // The ops one by one; the last Clip's upper bound is half the largest output, so some
    // outputs reach it (16 ReLU outputs, all zero with probability 2⁻¹⁶).
    let cpu = CpuBackend::new();
    let up = |t: &HostTensor| cpu.upload(t).unwrap();
    let apply = |op: Op, x: &[&eia::Tensor<_>]| cpu.apply(&op, x).unwrap();
    let clip_op = |[lo, hi]: [f32; 2]| {
        Op::Clip(Clip {
            min: Some(lo),
            max: Some(hi),
        })
    };
    let c = apply(Op::Conv(Conv::default()), &[&up(&x), &up(&w), &up(&b)]);
    let d = apply(clip_op(clip1), &[&c]);
    let f = apply(Op::Flatten(Flatten::default()), &[&d]);
    let e = apply(Op::Gemm(Gemm::default()), &[&f, &up(&g)]);
    let r = apply(Op::Relu, &[&e]);
    let top = cpu
        .download(&r)
        .unwrap()
        .data()
        .to_f64_vec()
        .into_iter()
        .fold(0.0, f64::max);
    assert!(top > 0.0, "some output of the ReLU is positive");
    let clip2 = [-0.3, (top / 2.0) as f32];
    let want = cpu.download(&apply(clip_op(clip2), &[&r])).unwrap();
    let scalar = |v: f32| HostTensor::new(&[], vec![v]).unwrap();
    for opset in [7, 13] {
        let clip = |name: &str, x: &str, y: &str, [lo, hi]: [f32; 2]| {
            if opset < 11 {
                let attrs = vec![attr_float("min", lo), attr_float("max", hi)];
                node("Clip", name, &[x], &[y], attrs)
            } else {
                let bounds = [format!("{name}_lo"), format!("{name}_hi")];
                node("Clip", name, &[x, &bounds[0], &bounds[1]], &[y], vec![])
            }
        };
        let mut initializer = vec![float_tensor("w", &w), float_tensor("b", &b)];
        initializer.push(float_tensor("g", &g));
        if opset >= 11 {
            for (name, [lo, hi]) in [("clip1", clip1), ("clip2", clip2)] {
                initializer.push(float_tensor(&format!("{name}_lo"), &scalar(lo)));
                initializer.push(float_tensor(&format!("{name}_hi"), &scalar(hi)));
            }
        }
        let graph = GraphProto {
            node: vec![
                node("Conv", "conv", &["x", "w", "b"], &["c"], vec![]),
                clip("clip1", "c", "d", clip1),
                node("Flatten", "flat", &["d"], &["f"], vec![]),
                node("Gemm", "gemm", &["f", "g"], &["e"], vec![]),
                node("Relu", "relu", &["e"], &["r"], vec![]),
                clip("clip2", "r", "y", clip2),
            ],
            initializer,
            input: vec![value_info(
                "x",
                DataType::Float,
                &[Some(1), Some(3), Some(7), Some(7)],
            )],
            output: vec![value_info("y", DataType::Float, &[])],
            ..Default::default()
        };
        let m = Model::from_bytes(&model(graph, opset), LoadOptions::default()).unwrap();
        let nodes: Vec<(String, String)> = m
            .nodes()
            .map(|(name, kind, _)| (name.to_string(), kind))
            .collect();
        let want_nodes = [
            ("'conv'+'clip1'", "Conv+Clip"),
            ("'flat'", "Flatten"),
            ("'gemm'+'relu'+'clip2'", "Gemm+Relu+Clip"),
        ]
        .map(|(n, k)| (n.to_string(), k.to_string()));
        assert_eq!(nodes, want_nodes, "opset {opset}");

        let got = m
            .session(&cpu)
            .unwrap()
            .run(std::slice::from_ref(&x))
            .unwrap();
        assert_eq!(
            got[0].data().to_f64_vec(),
            want.data().to_f64_vec(),
            "opset {opset}"
        );
        let clipped = want
            .data()
            .to_f64_vec()
            .iter()
            .filter(|&&v| v == clip2[1] as f64)
            .count();
        assert!(clipped > 0, "some outputs reach the upper bound: {want:?}");
    }
}

/// `model` (encoded) with every initializer's data moved to files in `dir` as `place` says
/// (location, and whether to write offset/length), written as `dir/model.onnx`.
fn with_external_data(
    bytes: &[u8],
    dir: &std::path::Path,
    place: impl Fn(usize) -> (&'static str, bool),
) -> std::path::PathBuf {
    use eia::model::onnx::proto::{tensor_proto::DataLocation, StringStringEntryProto};
    let mut m = ModelProto::decode(bytes).unwrap();
    let mut files: std::collections::HashMap<&str, Vec<u8>> = Default::default();
    for (i, t) in m.graph.as_mut().unwrap().initializer.iter_mut().enumerate() {
        let raw: Vec<u8> = if t.float_data.is_empty() {
            t.raw_data
                .take()
                .unwrap_or_else(|| t.int64_data.iter().flat_map(|v| v.to_le_bytes()).collect())
        } else {
            t.float_data.iter().flat_map(|v| v.to_le_bytes()).collect()
        };
        t.float_data.clear();
        t.int64_data.clear();
        let (location, ranged) = place(i);
        let file = files.entry(location).or_default();
        let entry = |k: &str, v: String| StringStringEntryProto {
            key: Some(k.into()),
            value: Some(v),
        };
        t.external_data = vec![entry("location", location.into())];
        if ranged {
            t.external_data
                .push(entry("offset", file.len().to_string()));
            t.external_data.push(entry("length", raw.len().to_string()));
        }
        file.extend_from_slice(&raw);
        t.data_location = Some(DataLocation::External as i32);
    }
    std::fs::create_dir_all(dir).unwrap();
    for (location, data) in files {
        if !location.contains("..") && !location.starts_with('/') && location != "missing.bin" {
            std::fs::write(dir.join(location), data).unwrap();
        }
    }
    let path = dir.join("model.onnx");
    std::fs::write(&path, m.encode_to_vec()).unwrap();
    path
}

fn small_zoo_cnn() -> Vec<u8> {
    let mut g = eia::model::zoo::GraphBuilder::new(11);
    let x = g.conv("image", 3, 8, 3, 1, 1, 1);
    let x = g.relu(&x);
    let x = g.global_average_pool(&x);
    let x = g.flatten(&x);
    let y = g.linear(&x, 8, 5);
    g.finish("small", ("image", &[3, 10, 10]), &y)
}

/// Weights in external files (one shared file with offsets and lengths, and one file a tensor
/// reads whole) load from the model's path and compute exactly what the inline weights do;
/// from bytes alone they are a clear error.
#[test]
fn external_data_loads_from_beside_the_model() {
    let bytes = small_zoo_cnn();
    let dir = std::env::temp_dir().join(format!("eia-external-{}", std::process::id()));
    // The last initializer alone in its file, read whole (no offset or length).
    let n = ModelProto::decode(&bytes[..])
        .unwrap()
        .graph
        .unwrap()
        .initializer
        .len();
    let path = with_external_data(&bytes, &dir, |i| {
        if i + 1 == n {
            ("last.bin", false)
        } else {
            ("weights.bin", true)
        }
    });
    let options = LoadOptions::default();
    let inline = Model::from_bytes(&bytes, options).unwrap();
    let external = Model::load(&path, options).unwrap();
    let cpu = CpuBackend::new();
    let x = random(&mut seeded("external"), &[1, 3, 10, 10], -1.0, 1.0);
    let want = inline
        .session(&cpu)
        .unwrap()
        .run(std::slice::from_ref(&x))
        .unwrap();
    let got = external.session(&cpu).unwrap().run(&[x]).unwrap();
    assert_eq!(got[0].data().to_f32_vec(), want[0].data().to_f32_vec());
    assert_eq!(external.weight_bytes(), inline.weight_bytes());

    let err = Model::from_bytes(&std::fs::read(&path).unwrap(), options).unwrap_err();
    assert!(
        err.to_string().contains("load the model from its path"),
        "{err}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Every external-data problem — a location outside the model's directory, a missing file, a
/// range beyond the file — is listed in one error that names the tensors.
#[test]
fn bad_external_data_is_one_clear_error() {
    let bytes = small_zoo_cnn();
    let dir = std::env::temp_dir().join(format!("eia-bad-external-{}", std::process::id()));
    let path = with_external_data(&bytes, &dir, |i| match i {
        0 => ("../outside.bin", true),
        1 => ("/etc/hostname", false),
        2 => ("missing.bin", true),
        _ => ("weights.bin", true),
    });
    // Cut the shared file short: the last tensor's range runs past its end.
    let shared = dir.join("weights.bin");
    let len = std::fs::metadata(&shared).unwrap().len();
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(&shared)
        .unwrap();
    f.set_len(len - 4).unwrap();
    let err = Model::load(&path, LoadOptions::default())
        .unwrap_err()
        .to_string();
    for words in [
        "4 tensors with external data cannot be read",
        "\"../outside.bin\" must be a relative path inside the model's directory",
        "\"/etc/hostname\" must be a relative path inside",
        "missing.bin: No such file",
        "lies beyond the end of weights.bin",
    ] {
        assert!(err.contains(words), "{err}\nshould mention {words:?}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

/// eia's own ResNet-50 and MobileNetV2 (`eia zoo`) load with every BatchNormalization folded
/// into its Conv, every residual Add into the Conv before it (as its sum), every Relu into the
/// Conv before it and every Clip (ReLU6) into its Conv; a fused op's profile name lists its
/// nodes.
#[test]
fn the_zoo_models_fold_every_batch_norm_and_fuse_every_add_and_relu() {
    let kinds = |bytes: &[u8]| {
        let m = Model::from_bytes(bytes, LoadOptions::default()).unwrap();
        let mut kinds: std::collections::BTreeMap<String, usize> = Default::default();
        for (name, kind, _) in m.nodes() {
            if kind.contains('+') || kind == "Conv" {
                assert!(
                    name.contains("'+'"),
                    "{kind} {name}: fused nodes are listed"
                );
            }
            *kinds.entry(kind).or_default() += 1;
        }
        kinds
    };
    let r50 = kinds(&eia::model::zoo::resnet50(1));
    let count = |k: &std::collections::BTreeMap<String, usize>, kind: &str| {
        k.get(kind).copied().unwrap_or(0)
    };
    assert_eq!(count(&r50, "Conv+Relu"), 33, "{r50:?}");
    assert_eq!(count(&r50, "Conv"), 4, "{r50:?}");
    assert_eq!(count(&r50, "Conv+Add+Relu"), 16, "{r50:?}");
    let mv2 = kinds(&eia::model::zoo::mobilenet_v2(1));
    // ReLU6 after every depthwise and expansion conv, the stem and the last 1×1; the 17
    // projections are linear.
    assert_eq!(count(&mv2, "Conv(depthwise)+Clip"), 17, "{mv2:?}");
    assert_eq!(count(&mv2, "Conv+Clip"), 18, "{mv2:?}");
    // 7 projections, and 10 with the residual Add after them.
    assert_eq!(count(&mv2, "Conv"), 7, "{mv2:?}");
    assert_eq!(count(&mv2, "Conv+Add"), 10, "{mv2:?}");
    for k in [&r50, &mv2] {
        assert_eq!(count(k, "BatchNormalization"), 0, "{k:?}");
        assert!(!k.keys().any(|kind| kind.starts_with("Add")), "{k:?}");
        assert_eq!(count(k, "Relu"), 0, "{k:?}");
        assert_eq!(count(k, "Clip"), 0, "{k:?}");
    }
}

/// `Session::profile` runs what `Session::run` runs, op by op: the same outputs, one time per
/// op, each op's FLOPs summing to the model's — on the CPU and on a metered accelerator.
#[test]
fn a_profile_times_every_op_and_computes_what_a_run_does() {
    let mut rng = seeded("profile");
    let m = Model::from_bytes(
        &small_zoo_cnn(),
        LoadOptions {
            batch: 2,
            fp16: false,
        },
    )
    .unwrap();
    let x = random(&mut rng, &[2, 3, 10, 10], -1.0, 1.0);
    let device = eia::Device::new(
        CpuBackend::new(),
        eia::DeviceConfig {
            overcommit: true,
            ..eia::DeviceConfig::default()
        },
    )
    .unwrap();
    let accel = device.attach("eia2.large").unwrap();
    let cpu = CpuBackend::new();
    let check = |session_run: Vec<HostTensor>,
                 (got, nodes): (Vec<HostTensor>, Vec<eia::model::NodeTime>)| {
        assert_eq!(got.len(), session_run.len());
        for (g, w) in got.iter().zip(&session_run) {
            assert_eq!(g.data().to_f32_vec(), w.data().to_f32_vec());
        }
        let kinds: Vec<&str> = nodes.iter().map(|n| n.kind.as_str()).collect();
        assert_eq!(kinds, ["Conv+Relu", "GlobalAveragePool", "Flatten", "Gemm"]);
        assert_eq!(nodes.iter().map(|n| n.flops).sum::<u64>(), m.flops());
        assert!(nodes.iter().all(|n| n.time > std::time::Duration::ZERO));
    };
    let local = m.session(&cpu).unwrap();
    check(
        local.run(std::slice::from_ref(&x)).unwrap(),
        local.profile(std::slice::from_ref(&x)).unwrap(),
    );
    let metered = m.session(&accel).unwrap();
    check(
        metered.run(std::slice::from_ref(&x)).unwrap(),
        metered.profile(std::slice::from_ref(&x)).unwrap(),
    );
}

/// An inference on a local accelerator moves the input in and the outputs out once, runs each
/// op once and allocates nothing: after many inferences the accelerator has uploaded the
/// weights and one input per inference, downloaded one set of outputs per inference, and
/// never held more than the session's tensors.
#[test]
fn an_inference_on_an_accelerator_copies_and_allocates_nothing_extra() {
    let mut rng = seeded("accelerator copies");
    let m = Model::from_bytes(
        &small_zoo_cnn(),
        LoadOptions {
            batch: 4,
            fp16: false,
        },
    )
    .unwrap();
    let device = eia::Device::new(
        CpuBackend::new(),
        eia::DeviceConfig {
            overcommit: true,
            ..eia::DeviceConfig::default()
        },
    )
    .unwrap();
    let accel = device.attach("eia2.large").unwrap();
    let session = m.session(&accel).unwrap();
    let x = random(&mut rng, &[4, 3, 10, 10], -1.0, 1.0);
    let runs = 5u64;
    for _ in 0..runs {
        session.run(std::slice::from_ref(&x)).unwrap();
    }
    let usage = accel.usage();
    let bytes = |p: &eia::model::Port| p.desc.bytes() as u64;
    assert_eq!(usage.ops, runs * m.ops().count() as u64, "{usage:?}");
    assert_eq!(
        usage.bytes_uploaded,
        m.weight_bytes() + runs * m.inputs().iter().map(bytes).sum::<u64>(),
        "{usage:?}"
    );
    assert_eq!(
        usage.bytes_downloaded,
        runs * m.outputs().iter().map(bytes).sum::<u64>(),
        "{usage:?}"
    );
    let tensors = (m.ops().count() + 8) as u64;
    let floor = eia::accelerator::MIN_TENSOR_CHARGE;
    assert!(usage.memory_high_water >= m.peak_bytes(), "{usage:?}");
    assert!(
        usage.memory_high_water <= m.peak_bytes() + tensors * floor,
        "{usage:?}"
    );
}

/// `Conv → Add [→ Relu]` fuses into one Conv with a residual sum, whichever operand of the Add
/// the Conv is and wherever the other operand is made (here after the Conv: the fused Conv runs
/// where the Add ran), and the model computes what its ops compute one by one; an Add that
/// broadcasts stays an Add.
#[test]
fn residual_add_fuses_into_conv() {
    let mut rng = seeded("residual");
    let shape = [1, 4, 5, 6];
    let weights: Vec<HostTensor> = (0..4)
        .map(|_| random(&mut rng, &[4, 4, 1, 1], -0.5, 0.5))
        .collect();
    let b = random(&mut rng, &[4], -0.5, 0.5);
    let k = random(&mut rng, &[1, 4, 1, 1], -0.5, 0.5);
    let x = random(&mut rng, &shape, -1.0, 1.0);
    // The ops one by one.
    let cpu = CpuBackend::new();
    let up = |t: &HostTensor| cpu.upload(t).unwrap();
    let apply = |op: Op, x: &[&eia::Tensor<_>]| cpu.apply(&op, x).unwrap();
    let conv = Op::Conv(Conv::default());
    let add = Op::Add(Default::default());
    let c = apply(conv.clone(), &[&up(&x), &up(&weights[0]), &up(&b)]);
    let a = apply(conv.clone(), &[&up(&x), &up(&weights[1])]);
    let r = apply(Op::Relu, &[&apply(add.clone(), &[&c, &a])]);
    let d = apply(conv.clone(), &[&r, &up(&weights[2]), &up(&b)]);
    let t = apply(add.clone(), &[&r, &d]);
    let f = apply(conv, &[&t, &up(&weights[3])]);
    let want = cpu.download(&apply(add, &[&f, &up(&k)])).unwrap();

    let mut initializer: Vec<TensorProto> = weights
        .iter()
        .enumerate()
        .map(|(i, w)| float_tensor(&format!("w{i}"), w))
        .collect();
    initializer.push(float_tensor("b", &b));
    initializer.push(float_tensor("k", &k));
    let graph = GraphProto {
        node: vec![
            node("Conv", "conv_c", &["x", "w0", "b"], &["c"], vec![]),
            node("Conv", "conv_a", &["x", "w1"], &["a"], vec![]),
            node("Add", "add1", &["c", "a"], &["s"], vec![]),
            node("Relu", "relu1", &["s"], &["r"], vec![]),
            node("Conv", "conv_d", &["r", "w2", "b"], &["d"], vec![]),
            node("Add", "add2", &["r", "d"], &["t"], vec![]),
            node("Conv", "conv_f", &["t", "w3"], &["f"], vec![]),
            node("Add", "add3", &["f", "k"], &["y"], vec![]),
        ],
        initializer,
        input: vec![value_info(
            "x",
            DataType::Float,
            &shape.map(|d| Some(d as i64)),
        )],
        output: vec![value_info("y", DataType::Float, &[])],
        ..Default::default()
    };
    let m = Model::from_bytes(&model(graph, 13), LoadOptions::default()).unwrap();
    let nodes: Vec<(String, String)> = m
        .nodes()
        .map(|(name, kind, _)| (name.to_string(), kind))
        .collect();
    let want_nodes = [
        ("'conv_a'", "Conv"),
        ("'conv_c'+'add1'+'relu1'", "Conv+Add+Relu"),
        ("'conv_d'+'add2'", "Conv+Add"),
        ("'conv_f'", "Conv"),
        ("'add3'", "Add"),
    ]
    .map(|(n, k)| (n.to_string(), k.to_string()));
    assert_eq!(nodes, want_nodes);
    let got = m
        .session(&cpu)
        .unwrap()
        .run(std::slice::from_ref(&x))
        .unwrap();
    assert_eq!(got[0].data().to_f64_vec(), want.data().to_f64_vec());
}

//! Models eia builds itself, as ONNX files with seeded random weights — no download, no Python:
//! ResNet-50 (and any ResNet depth), MobileNetV2 and small graphs for tests. Weights are
//! He-scaled and every BatchNormalization has statistics near (0, 1), so activations stay
//! finite in FP16 through the whole network; the outputs are logits, not predictions.
//!
//! [`GraphBuilder`] is the small API they are written with: each method adds a node (and its
//! initializers) and returns the name of its output.

use prost::Message;
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

use super::onnx::proto::{
    attribute_proto::AttributeType, tensor_proto::DataType, tensor_shape_proto, type_proto,
    AttributeProto, GraphProto, ModelProto, NodeProto, OperatorSetIdProto, TensorProto,
    TensorShapeProto, TypeProto, ValueInfoProto,
};

/// The opset the zoo's models declare.
pub const OPSET: i64 = 17;

/// An ONNX attribute value.
pub enum Attr {
    Int(i64),
    Ints(Vec<i64>),
    Float(f32),
    Str(&'static str),
}

/// Builds one ONNX graph node by node.
pub struct GraphBuilder {
    rng: StdRng,
    nodes: Vec<NodeProto>,
    initializers: Vec<TensorProto>,
    names: usize,
}

impl GraphBuilder {
    /// A builder whose weights come from `seed`.
    pub fn new(seed: u64) -> Self {
        GraphBuilder {
            rng: StdRng::seed_from_u64(seed),
            nodes: Vec::new(),
            initializers: Vec::new(),
            names: 0,
        }
    }

    fn fresh(&mut self, prefix: &str) -> String {
        self.names += 1;
        format!("{prefix}_{}", self.names)
    }

    /// Adds a node `op_type(inputs) -> output` and returns the output's name.
    pub fn node(&mut self, op_type: &str, inputs: &[&str], attrs: Vec<(&str, Attr)>) -> String {
        let output = self.fresh(&op_type.to_lowercase());
        let attribute = attrs
            .into_iter()
            .map(|(name, v)| {
                let mut a = AttributeProto {
                    name: Some(name.into()),
                    ..Default::default()
                };
                let ty = match v {
                    Attr::Int(i) => {
                        a.i = Some(i);
                        AttributeType::Int
                    }
                    Attr::Ints(v) => {
                        a.ints = v;
                        AttributeType::Ints
                    }
                    Attr::Float(f) => {
                        a.f = Some(f);
                        AttributeType::Float
                    }
                    Attr::Str(s) => {
                        a.s = Some(s.as_bytes().to_vec());
                        AttributeType::String
                    }
                };
                a.r#type = Some(ty as i32);
                a
            })
            .collect();
        self.nodes.push(NodeProto {
            op_type: Some(op_type.into()),
            name: Some(output.clone()),
            input: inputs.iter().map(|s| s.to_string()).collect(),
            output: vec![output.clone()],
            attribute,
            ..Default::default()
        });
        output
    }

    /// Adds an FP32 initializer with values uniform in `[lo, hi)`; returns its name.
    pub fn weight(&mut self, shape: &[usize], lo: f32, hi: f32) -> String {
        let n: usize = shape.iter().product();
        let values = (0..n).map(|_| self.rng.random_range(lo..hi)).collect();
        self.constant(shape, values)
    }

    /// Adds an FP32 initializer with the given values; returns its name.
    pub fn constant(&mut self, shape: &[usize], values: Vec<f32>) -> String {
        let name = self.fresh("w");
        self.initializers.push(TensorProto {
            name: Some(name.clone()),
            dims: shape.iter().map(|&d| d as i64).collect(),
            data_type: Some(DataType::Float as i32),
            raw_data: Some(values.iter().flat_map(|v| v.to_le_bytes()).collect()),
            ..Default::default()
        });
        name
    }

    /// Adds an INT64 initializer (a shape, axes); returns its name.
    pub fn ints(&mut self, values: &[i64]) -> String {
        let name = self.fresh("i");
        self.initializers.push(TensorProto {
            name: Some(name.clone()),
            dims: vec![values.len() as i64],
            data_type: Some(DataType::Int64 as i32),
            int64_data: values.to_vec(),
            ..Default::default()
        });
        name
    }

    /// Conv `k×k`, `stride`, symmetric `pad`, `group`, He-uniform weights and a small bias.
    #[allow(clippy::too_many_arguments)]
    pub fn conv(
        &mut self,
        x: &str,
        c_in: usize,
        c_out: usize,
        k: usize,
        stride: usize,
        pad: usize,
        group: usize,
    ) -> String {
        let fan_in = (c_in / group * k * k) as f32;
        let a = (6.0 / fan_in).sqrt();
        let w = self.weight(&[c_out, c_in / group, k, k], -a, a);
        let b = self.weight(&[c_out], -0.1, 0.1);
        let (k, s, p, g) = (k as i64, stride as i64, pad as i64, group as i64);
        self.node(
            "Conv",
            &[x, &w, &b],
            vec![
                ("kernel_shape", Attr::Ints(vec![k, k])),
                ("strides", Attr::Ints(vec![s, s])),
                ("pads", Attr::Ints(vec![p, p, p, p])),
                ("group", Attr::Int(g)),
            ],
        )
    }

    /// BatchNormalization over `c` channels with mean near 0, variance near 1 and the given
    /// scale range.
    pub fn batch_norm(&mut self, x: &str, c: usize, scale: (f32, f32)) -> String {
        let s = self.weight(&[c], scale.0, scale.1);
        let b = self.weight(&[c], -0.1, 0.1);
        let m = self.weight(&[c], -0.1, 0.1);
        let v = self.weight(&[c], 0.8, 1.2);
        self.node(
            "BatchNormalization",
            &[x, &s, &b, &m, &v],
            vec![("epsilon", Attr::Float(1e-5))],
        )
    }

    pub fn relu(&mut self, x: &str) -> String {
        self.node("Relu", &[x], vec![])
    }

    /// Clip to `[lo, hi]` (ReLU6 with 0, 6), bounds as constant inputs (opset 11+).
    pub fn clip(&mut self, x: &str, lo: f32, hi: f32) -> String {
        let lo = self.constant(&[], vec![lo]);
        let hi = self.constant(&[], vec![hi]);
        self.node("Clip", &[x, &lo, &hi], vec![])
    }

    pub fn add(&mut self, a: &str, b: &str) -> String {
        self.node("Add", &[a, b], vec![])
    }

    pub fn max_pool(&mut self, x: &str, k: usize, stride: usize, pad: usize) -> String {
        let (k, s, p) = (k as i64, stride as i64, pad as i64);
        self.node(
            "MaxPool",
            &[x],
            vec![
                ("kernel_shape", Attr::Ints(vec![k, k])),
                ("strides", Attr::Ints(vec![s, s])),
                ("pads", Attr::Ints(vec![p, p, p, p])),
            ],
        )
    }

    pub fn global_average_pool(&mut self, x: &str) -> String {
        self.node("GlobalAveragePool", &[x], vec![])
    }

    pub fn flatten(&mut self, x: &str) -> String {
        self.node("Flatten", &[x], vec![("axis", Attr::Int(1))])
    }

    /// Gemm `x · Wᵀ + b` (the classifier layout exporters write: transB = 1).
    pub fn linear(&mut self, x: &str, c_in: usize, c_out: usize) -> String {
        let a = (6.0 / c_in as f32).sqrt();
        let w = self.weight(&[c_out, c_in], -a, a);
        let b = self.weight(&[c_out], -0.1, 0.1);
        self.node("Gemm", &[x, &w, &b], vec![("transB", Attr::Int(1))])
    }

    /// The encoded model: one FLOAT input `input` of shape `[N, dims…]` (symbolic batch), the
    /// given output, opset [`OPSET`].
    pub fn finish(self, name: &str, input: (&str, &[usize]), output: &str) -> Vec<u8> {
        let tensor = |n: &str, dims: Option<&[usize]>| {
            use tensor_shape_proto::{dimension::Value, Dimension};
            let mut dim = vec![Dimension {
                value: Some(Value::DimParam("N".into())),
                ..Default::default()
            }];
            dim.extend(dims.unwrap_or(&[]).iter().map(|&d| Dimension {
                value: Some(Value::DimValue(d as i64)),
                ..Default::default()
            }));
            ValueInfoProto {
                name: Some(n.into()),
                r#type: Some(TypeProto {
                    value: Some(type_proto::Value::TensorType(type_proto::Tensor {
                        elem_type: Some(DataType::Float as i32),
                        shape: dims.map(|_| TensorShapeProto { dim }),
                    })),
                    ..Default::default()
                }),
                ..Default::default()
            }
        };
        ModelProto {
            ir_version: Some(8),
            producer_name: Some("eia".into()),
            opset_import: vec![OperatorSetIdProto {
                domain: Some(String::new()),
                version: Some(OPSET),
            }],
            graph: Some(GraphProto {
                name: Some(name.into()),
                node: self.nodes,
                initializer: self.initializers,
                input: vec![tensor(input.0, Some(input.1))],
                output: vec![tensor(output, None)],
                ..Default::default()
            }),
            ..Default::default()
        }
        .encode_to_vec()
    }
}

/// A ResNet v1.5 of bottleneck blocks (`blocks` per stage: ResNet-50 is `[3, 4, 6, 3]`,
/// ResNet-101 `[3, 4, 23, 3]`, ResNet-152 `[3, 8, 36, 3]`) on `[N, 3, 224, 224]`, 1000
/// classes; seeded random weights.
pub fn resnet(blocks: [usize; 4], seed: u64) -> Vec<u8> {
    let mut g = GraphBuilder::new(seed);
    let x = g.conv("input", 3, 64, 7, 2, 3, 1);
    let x = g.batch_norm(&x, 64, (0.8, 1.2));
    let x = g.relu(&x);
    let mut x = g.max_pool(&x, 3, 2, 1);
    let mut c_in = 64;
    for (stage, &n) in blocks.iter().enumerate() {
        let width = 64 << stage;
        let c_out = width * 4;
        for block in 0..n {
            let stride = if block == 0 && stage > 0 { 2 } else { 1 };
            let y = g.conv(&x, c_in, width, 1, 1, 0, 1);
            let y = g.batch_norm(&y, width, (0.8, 1.2));
            let y = g.relu(&y);
            let y = g.conv(&y, width, width, 3, stride, 1, 1);
            let y = g.batch_norm(&y, width, (0.8, 1.2));
            let y = g.relu(&y);
            let y = g.conv(&y, width, c_out, 1, 1, 0, 1);
            // A small last scale keeps the residual stream's growth bounded over deep nets.
            let y = g.batch_norm(&y, c_out, (0.1, 0.3));
            let shortcut = if block == 0 {
                let s = g.conv(&x, c_in, c_out, 1, stride, 0, 1);
                g.batch_norm(&s, c_out, (0.8, 1.2))
            } else {
                x.clone()
            };
            let sum = g.add(&y, &shortcut);
            x = g.relu(&sum);
            c_in = c_out;
        }
    }
    let x = g.global_average_pool(&x);
    let x = g.flatten(&x);
    let logits = g.linear(&x, c_in, 1000);
    let name = format!("resnet{}", 2 + 3 * blocks.iter().sum::<usize>());
    g.finish(&name, ("input", &[3, 224, 224]), &logits)
}

/// ResNet-50 with seeded random weights.
pub fn resnet50(seed: u64) -> Vec<u8> {
    resnet([3, 4, 6, 3], seed)
}

/// MobileNetV2 (width 1.0) on `[N, 3, 224, 224]`, 1000 classes: inverted residual blocks of
/// 1×1 expansion, 3×3 depthwise and 1×1 projection convolutions with ReLU6 (Clip 0..6).
pub fn mobilenet_v2(seed: u64) -> Vec<u8> {
    let mut g = GraphBuilder::new(seed);
    let conv_bn = |g: &mut GraphBuilder, x: &str, c_in, c_out, k, s, group, relu6: bool| {
        let y = g.conv(x, c_in, c_out, k, s, k / 2, group);
        let y = g.batch_norm(&y, c_out, if relu6 { (0.8, 1.2) } else { (0.2, 0.5) });
        if relu6 {
            g.clip(&y, 0.0, 6.0)
        } else {
            y
        }
    };
    let mut x = conv_bn(&mut g, "input", 3, 32, 3, 2, 1, true);
    let mut c_in = 32;
    // (expansion t, channels c, repeats n, first stride s), from the paper.
    for (t, c, n, s) in [
        (1, 16, 1, 1),
        (6, 24, 2, 2),
        (6, 32, 3, 2),
        (6, 64, 4, 2),
        (6, 96, 3, 1),
        (6, 160, 3, 2),
        (6, 320, 1, 1),
    ] {
        for i in 0..n {
            let stride = if i == 0 { s } else { 1 };
            let hidden = c_in * t;
            let mut y = x.clone();
            if t != 1 {
                y = conv_bn(&mut g, &y, c_in, hidden, 1, 1, 1, true);
            }
            y = conv_bn(&mut g, &y, hidden, hidden, 3, stride, hidden, true);
            y = conv_bn(&mut g, &y, hidden, c, 1, 1, 1, false);
            x = if stride == 1 && c_in == c {
                g.add(&x, &y)
            } else {
                y
            };
            c_in = c;
        }
    }
    let x = conv_bn(&mut g, &x, c_in, 1280, 1, 1, 1, true);
    let x = g.global_average_pool(&x);
    let x = g.flatten(&x);
    let logits = g.linear(&x, 1280, 1000);
    g.finish("mobilenetv2", ("input", &[3, 224, 224]), &logits)
}

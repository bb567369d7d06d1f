//! The network accelerator on loopback: the op suite unchanged against a remote accelerator,
//! programs, auth refusals, ownership, leases, bad input statuses.

mod common;

use std::sync::OnceLock;
use std::time::Duration;

use eia::accelerator::{Capacity, DeviceConfig, Tiers, MIN_TENSOR_CHARGE};
use eia::ops::{Gemm, Op, Softmax};
use eia::rpc::{
    auth, ClientConfig, Connection, Program, RemoteAccelerator, ServerConfig, ServerHandle, Tokens,
};
use eia::{Backend, CpuBackend, DType, Error, HostTensor, PerDType};

const TIERS: &str = "[[tier]]\nname = \"big\"\nfp32_tflops = 50.0\nfp16_tflops = 50.0\nmemory_mib = 2048\n\n\
                     [[tier]]\nname = \"small\"\nfp32_tflops = 1.0\nfp16_tflops = 1.0\nmemory_mib = 1\n";

fn config() -> ServerConfig {
    ServerConfig {
        device: DeviceConfig {
            tiers: Tiers::with_toml("test", TIERS).unwrap(),
            capacity: Some(Capacity {
                tflops: PerDType::new(1e6, 1e6),
                memory: 1 << 40,
            }),
            ..DeviceConfig::default()
        },
        ..ServerConfig::default()
    }
}

fn start(config: ServerConfig) -> ServerHandle {
    eia::rpc::spawn("127.0.0.1:0".parse().unwrap(), CpuBackend::new(), config).unwrap()
}

/// One open server for the suite.
fn open_server() -> &'static str {
    static SERVER: OnceLock<(ServerHandle, String)> = OnceLock::new();
    &SERVER
        .get_or_init(|| {
            let s = start(config());
            let url = s.url(false);
            (s, url)
        })
        .1
}

fn remote(tier: &str) -> RemoteAccelerator {
    let conn = Connection::connect(open_server(), ClientConfig::default()).unwrap();
    conn.attach(tier).unwrap()
}

backend_suite!(remote("big"));

fn host(shape: &[usize], seed: f32) -> HostTensor {
    let len: usize = shape.iter().product();
    let v: Vec<f32> = (0..len).map(|i| (i as f32 * 0.37 + seed).sin()).collect();
    HostTensor::from_f32(DType::F32, shape, &v).unwrap()
}

fn remote_code(e: &Error) -> &str {
    match e {
        Error::Remote { code, .. } => code,
        other => panic!("expected a server status, got {other}"),
    }
}

#[test]
fn program_runs_many_ops_in_one_round_trip() {
    let acc = remote("big");
    let w = acc.upload(&host(&[16, 8], 0.3)).unwrap();
    let x = acc
        .alloc(&eia::TensorDesc::new(DType::F32, &[4, 16]).unwrap())
        .unwrap();
    let h = acc
        .alloc(&eia::TensorDesc::new(DType::F32, &[4, 8]).unwrap())
        .unwrap();
    let p = acc.alloc(h.desc()).unwrap();
    let input = host(&[4, 16], 1.1);
    let relu = Gemm {
        relu: true,
        ..Gemm::default()
    };
    let mut program = Program::new();
    program.write(&x, &input).unwrap();
    program.gemm(&relu, &x, &w, None, &h).unwrap();
    program.softmax(&Softmax::default(), &h, &p).unwrap();
    program.read(&p).unwrap();
    let out = acc.run(&program).unwrap();
    // The same on the local CPU backend.
    let cpu = CpuBackend::new();
    let up = |t: &HostTensor| cpu.upload(t).unwrap();
    let want = cpu
        .softmax(
            &Softmax::default(),
            &cpu.gemm(&relu, &up(&input), &up(&host(&[16, 8], 0.3)), None)
                .unwrap(),
        )
        .unwrap();
    assert_eq!(out, vec![cpu.download(&want).unwrap()]);
    let u = acc.usage().unwrap();
    assert_eq!((u.ops, u.flops[DType::F32]), (2, 2 * 4 * 8 * 16 + 5 * 32));
    // A bad op is refused locally with the same typed error as a local call.
    let e = program
        .gemm(&Gemm::default(), &x, &x, None, &h)
        .unwrap_err();
    assert!(matches!(e, Error::Shape { .. }), "{e}");
}

#[test]
fn tokens_are_checked_and_scoped() {
    let tokens = Tokens::from_toml(
        "tokens",
        &format!(
            "[[token]]\nname = \"alice\"\nsha256 = \"{}\"\ntiers = [\"small\"]\nmax_accelerators = 1\n\
             [[token]]\nname = \"bob\"\nsha256 = \"{}\"\ntiers = [\"*\"]\nmax_accelerators = 4\n",
            auth::hash("alice-secret"),
            auth::hash("bob-secret")
        ),
    )
    .unwrap();
    let server = start(ServerConfig {
        tokens: Some(tokens),
        ..config()
    });
    let url = server.url(false);
    let connect = |token: Option<&str>| {
        let cfg = ClientConfig {
            token: token.map(str::to_string),
            ..ClientConfig::default()
        };
        Connection::connect(&url, cfg).unwrap()
    };
    let anon = connect(None);
    assert!(anon.live().unwrap(), "health needs no token");
    assert_eq!(
        remote_code(&anon.attach("small").err().unwrap()),
        "Unauthenticated"
    );
    assert_eq!(
        remote_code(&connect(Some("wrong")).attach("small").err().unwrap()),
        "Unauthenticated"
    );
    let alice = connect(Some("alice-secret"));
    assert_eq!(
        remote_code(&alice.attach("big").err().unwrap()),
        "PermissionDenied"
    );
    assert_eq!(
        remote_code(&alice.attach("nope").err().unwrap()),
        "InvalidArgument"
    );
    let a = alice.attach("ml.small").unwrap();
    assert_eq!(
        remote_code(&alice.attach("small").err().unwrap()),
        "ResourceExhausted"
    );
    let t = a.upload(&host(&[8], 0.0)).unwrap();
    // Over the quota (1 MiB): RESOURCE_EXHAUSTED, and the first tensor is intact.
    let e = a.upload(&host(&[300, 1024], 0.0)).unwrap_err();
    assert_eq!(remote_code(&e), "ResourceExhausted");
    assert!(e.to_string().contains("quota"), "{e}");
    assert_eq!(a.download(&t).unwrap(), host(&[8], 0.0));
    // Bob cannot see or use alice's accelerator.
    let bob = connect(Some("bob-secret"));
    let b = bob.attach("big").unwrap();
    assert!(b.usage().is_ok());
    let rt = tokio::runtime::Runtime::new().unwrap();
    let status = rt.block_on(async {
        let mut c = eia::rpc::proto::accelerators_client::AcceleratorsClient::connect(url.clone())
            .await
            .unwrap();
        let mut req = tonic::Request::new(eia::rpc::proto::UsageRequest {
            accelerator: a.id(),
        });
        req.metadata_mut()
            .insert("authorization", "Bearer bob-secret".parse().unwrap());
        c.usage(req).await.unwrap_err()
    });
    // Another token's accelerator is indistinguishable from one that does not exist.
    assert_eq!(status.code(), tonic::Code::NotFound, "{status}");
}

/// A server whose device holds exactly one "small" accelerator (1 MiB), so a second attach
/// succeeds only once the first is detached.
fn one_slot_server(lease: Duration) -> ServerHandle {
    let mut cfg = config();
    cfg.device.capacity = Some(Capacity {
        tflops: PerDType::new(1.0, 1.0),
        memory: 1 << 20,
    });
    cfg.lease = lease;
    start(cfg)
}

#[test]
fn lease_expiry_detaches_and_frees() {
    let server = one_slot_server(Duration::from_millis(200));
    let url = server.url(false);
    // With heartbeats the accelerator outlives its lease several times over.
    let conn = Connection::connect(&url, ClientConfig::default()).unwrap();
    let acc = conn.attach("small").unwrap();
    let t = acc.upload(&host(&[64, 64], 0.5)).unwrap();
    std::thread::sleep(Duration::from_millis(700));
    assert_eq!(acc.download(&t).unwrap(), host(&[64, 64], 0.5));
    drop((t, acc)); // detaches
                    // A client that goes silent (no heartbeat) loses its accelerator after the lease.
    let silent = ClientConfig {
        heartbeat: false,
        ..ClientConfig::default()
    };
    let conn = Connection::connect(&url, silent).unwrap();
    let lost = conn.attach("small").unwrap();
    lost.upload(&host(&[64, 64], 0.5)).unwrap();
    assert_eq!(
        remote_code(&conn.attach("small").err().unwrap()),
        "ResourceExhausted"
    );
    std::thread::sleep(Duration::from_millis(600));
    assert_eq!(remote_code(&lost.usage().unwrap_err()), "NotFound");
    let again = conn.attach("small").unwrap();
    assert_eq!(again.usage().unwrap().memory_used, 0);
}

#[test]
fn a_client_killed_mid_upload_leaves_nothing_behind() {
    use eia::rpc::proto::{
        accelerators_client::AcceleratorsClient, AttachRequest, TensorMeta, UploadChunk,
        UploadHeader, UsageRequest,
    };
    let server = one_slot_server(Duration::from_secs(30));
    let url = server.url(false);
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let mut client = AcceleratorsClient::connect(url.clone()).await.unwrap();
        let id = client
            .attach(AttachRequest {
                tier: "small".into(),
            })
            .await
            .unwrap()
            .into_inner()
            .accelerator;
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        tx.send(UploadChunk {
            header: Some(UploadHeader {
                accelerator: id,
                meta: Some(TensorMeta {
                    datatype: "FP32".into(),
                    shape: vec![1024, 64],
                }),
            }),
            data: vec![0u8; 4096].into(),
        })
        .await
        .unwrap();
        let mut uploader = client.clone();
        let upload = tokio::spawn(async move {
            uploader
                .upload(tokio_stream::wrappers::ReceiverStream::new(rx))
                .await
        });
        tokio::time::sleep(Duration::from_millis(100)).await;
        upload.abort(); // the client dies mid-stream
        drop(tx);
        tokio::time::sleep(Duration::from_millis(100)).await;
        let usage = client
            .usage(UsageRequest { accelerator: id })
            .await
            .unwrap()
            .into_inner()
            .usage
            .unwrap();
        assert_eq!((usage.memory_used, usage.bytes_uploaded), (0, 0));
    });
}

#[test]
fn bad_input_gets_proper_statuses() {
    use eia::rpc::proto::{accelerators_client::AcceleratorsClient, *};
    let url = open_server().to_string();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let mut c = AcceleratorsClient::connect(url).await.unwrap();
        let id = c
            .attach(AttachRequest { tier: "big".into() })
            .await
            .unwrap()
            .into_inner()
            .accelerator;
        let meta = |dt: &str, shape: Vec<u64>| {
            Some(TensorMeta {
                datatype: dt.into(),
                shape,
            })
        };
        let status = c
            .alloc(AllocRequest {
                accelerator: id,
                tensors: vec![meta("FP64", vec![2]).unwrap()],
            })
            .await
            .unwrap_err();
        assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status}");
        let status = c
            .alloc(AllocRequest {
                accelerator: 999,
                tensors: vec![],
            })
            .await
            .unwrap_err();
        assert_eq!(status.code(), tonic::Code::NotFound, "{status}");
        let status = c
            .alloc(AllocRequest {
                accelerator: id,
                tensors: vec![meta("FP32", vec![u64::MAX, 4]).unwrap()],
            })
            .await
            .unwrap_err();
        assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status}");
        let t = c
            .alloc(AllocRequest {
                accelerator: id,
                tensors: vec![
                    meta("FP32", vec![2, 3]).unwrap(),
                    meta("FP32", vec![3, 2]).unwrap(),
                ],
            })
            .await
            .unwrap()
            .into_inner()
            .tensors;
        // Wrong byte length on a write.
        let status = c
            .run(RunRequest {
                accelerator: id,
                writes: vec![TensorWrite {
                    tensor: t[0],
                    data: vec![0; 5].into(),
                }],
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status}");
        // Shape mismatch inside a program names the op.
        let gemm = Op {
            kind: Some(op::Kind::Gemm(GemmOp {
                alpha: Some(1.0),
                beta: Some(1.0),
                ..Default::default()
            })),
            inputs: vec![t[0], t[0]],
            output: Some(t[1]),
            ..Default::default()
        };
        let status = c
            .run(RunRequest {
                accelerator: id,
                ops: vec![gemm],
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status}");
        assert!(status.message().starts_with("op 0 (Gemm)"), "{status}");
        // Unknown handle, aliasing, missing kind, wrong arity, bad conv attributes.
        for (op, want) in [
            (
                Op {
                    kind: Some(op::Kind::Softmax(SoftmaxOp { axis: Some(-1) })),
                    inputs: vec![77],
                    output: Some(t[1]),
                    ..Default::default()
                },
                tonic::Code::NotFound,
            ),
            (
                Op {
                    kind: Some(op::Kind::Softmax(SoftmaxOp { axis: Some(-1) })),
                    inputs: vec![t[1]],
                    output: Some(t[1]),
                    ..Default::default()
                },
                tonic::Code::InvalidArgument,
            ),
            (
                Op {
                    kind: None,
                    inputs: vec![t[0]],
                    output: Some(t[1]),
                    ..Default::default()
                },
                tonic::Code::InvalidArgument,
            ),
            (
                Op {
                    kind: Some(op::Kind::Matmul(MatMulOp {})),
                    inputs: vec![t[0]],
                    output: Some(t[1]),
                    ..Default::default()
                },
                tonic::Code::InvalidArgument,
            ),
            (
                Op {
                    kind: Some(op::Kind::Conv(ConvOp {
                        strides: vec![1],
                        ..Default::default()
                    })),
                    inputs: vec![t[0], t[0]],
                    output: Some(t[1]),
                    ..Default::default()
                },
                tonic::Code::InvalidArgument,
            ),
        ] {
            let status = c
                .run(RunRequest {
                    accelerator: id,
                    ops: vec![op],
                    ..Default::default()
                })
                .await
                .unwrap_err();
            assert_eq!(status.code(), want, "{status}");
        }
        // An upload longer than its header says.
        let chunk = UploadChunk {
            header: Some(UploadHeader {
                accelerator: id,
                meta: meta("FP16", vec![2]),
            }),
            data: vec![0; 6].into(),
        };
        let status = c.upload(tokio_stream::iter(vec![chunk])).await.unwrap_err();
        assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status}");
        // Free of an unknown tensor.
        let status = c
            .free(FreeRequest {
                accelerator: id,
                tensors: vec![12345],
            })
            .await
            .unwrap_err();
        assert_eq!(status.code(), tonic::Code::NotFound, "{status}");
        // The accelerator still works after all of that.
        let p = c
            .run(RunRequest {
                accelerator: id,
                reads: vec![t[0]],
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(p.reads[0].len(), 24);
    });
}

#[test]
fn tls_serves_and_refuses_plain_clients() {
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let (cert_pem, key_pem) = (cert.cert.pem(), cert.signing_key.serialize_pem());
    let server = start(ServerConfig {
        tls: Some((cert_pem.clone().into_bytes(), key_pem.into_bytes())),
        ..config()
    });
    let tls = ClientConfig {
        ca_pem: Some(cert_pem.into_bytes()),
        tls_domain: Some("localhost".into()),
        ..ClientConfig::default()
    };
    let conn = Connection::connect(&server.url(true), tls).unwrap();
    let acc = conn.attach("big").unwrap();
    let data = host(&[1024, 600], 0.9); // 2.4 MB: three upload chunks
    let t = acc.upload(&data).unwrap();
    assert_eq!(acc.download(&t).unwrap(), data);
    // A client that does not speak TLS fails at once (an HTTP/2 protocol error), not a hang.
    let plain = ClientConfig {
        connect_timeout: Duration::from_secs(2),
        ..ClientConfig::default()
    };
    let failed = Connection::connect(&server.url(false), plain).and_then(|c| c.live());
    let e = failed.expect_err("a plain client cannot talk to a TLS server");
    assert!(
        matches!(
            e,
            Error::Network(_) | Error::Unavailable { .. } | Error::Remote { .. }
        ),
        "{e}"
    );
}

#[test]
fn thirty_two_clients_at_once_each_get_their_own_rate() {
    // Two slow tiers, so 32 metered clients fit easily on the CPU device.
    let mut cfg = config();
    cfg.device.tiers = Tiers::with_toml(
        "slow",
        "[[tier]]\nname = \"s1\"\nfp32_tflops = 0.0002\nfp16_tflops = 0.0002\nmemory_mib = 8\n\
         [[tier]]\nname = \"s2\"\nfp32_tflops = 0.0004\nfp16_tflops = 0.0004\nmemory_mib = 8\n",
    )
    .unwrap();
    let server = start(cfg);
    let url = server.url(false);
    const N: usize = 128; // a 128³ GEMM: 21 ms on s1, 10.5 ms on s2
    let flops = 2.0 * (N * N * N) as f64;
    let results: Vec<(f64, f64)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..32)
            .map(|i| {
                let url = url.clone();
                s.spawn(move || {
                    let conn = Connection::connect(&url, ClientConfig::default()).unwrap();
                    let acc = conn.attach(if i % 2 == 0 { "s1" } else { "s2" }).unwrap();
                    let rate = acc.tier().flops_per_second(DType::F32);
                    let a = acc.upload(&host(&[N, N], i as f32)).unwrap();
                    let mut y = acc.alloc(a.desc()).unwrap();
                    let op = Gemm::default();
                    let warm = std::time::Instant::now();
                    while warm.elapsed() < Duration::from_millis(300) {
                        acc.gemm_into(&op, &a, &a, None, &mut y).unwrap();
                    }
                    let t = std::time::Instant::now();
                    let mut ops = 0;
                    while t.elapsed() < Duration::from_millis(1500) {
                        acc.gemm_into(&op, &a, &a, None, &mut y).unwrap();
                        ops += 1;
                    }
                    (ops as f64 * flops / t.elapsed().as_secs_f64(), rate)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    // Each client's rate as a fraction of its own tier. The meter guarantees the upper bound
    // whatever the load; how close to 1 they come depends on the cycles the machine has spare
    // (alone here: 0.999; with a compiler on both cores: 0.5–0.8), so the lower bound is
    // relative: no client is starved while the others run at their tier's share.
    let ratios: Vec<f64> = results.iter().map(|(got, rate)| got / rate).collect();
    let mut sorted = ratios.clone();
    sorted.sort_by(f64::total_cmp);
    let median = sorted[sorted.len() / 2];
    println!(
        "achieved/tier: median {median:.4}, min {:.4}, max {:.4}",
        sorted[0], sorted[31]
    );
    for (i, ratio) in ratios.iter().enumerate() {
        assert!(*ratio < 1.10, "client {i}: achieved/tier = {ratio:.4}");
        assert!(
            *ratio > 0.5 * median,
            "client {i}: achieved/tier = {ratio:.4}, median {median:.4}"
        );
    }
}

#[test]
fn metrics_endpoint_reports_each_accelerator() {
    use std::io::{Read, Write};
    let server = start(ServerConfig {
        metrics: Some("127.0.0.1:0".parse().unwrap()),
        ..config()
    });
    let conn = Connection::connect(&server.url(false), ClientConfig::default()).unwrap();
    let acc = conn.attach("big").unwrap();
    let x = acc.upload(&host(&[4, 8], 0.2)).unwrap();
    acc.softmax(&Softmax::default(), &x).unwrap();
    let refused = tokio::runtime::Runtime::new().unwrap().block_on(async {
        use eia::rpc::proto::{accelerators_client::AcceleratorsClient, FreeRequest};
        let mut c = AcceleratorsClient::connect(server.url(false))
            .await
            .unwrap();
        let free = FreeRequest {
            accelerator: acc.id(),
            tensors: vec![1],
        };
        c.free(free).await.unwrap_err()
    });
    assert_eq!(refused.code(), tonic::Code::NotFound);
    let mut http = std::net::TcpStream::connect(server.metrics_addr().unwrap()).unwrap();
    http.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    http.write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut text = String::new();
    http.read_to_string(&mut text).unwrap();
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    let id = acc.id();
    for line in [
        format!("eia_accelerator_ops_total{{accelerator=\"{id}\",device=\"0\",owner=\"anonymous\",tier=\"big\"}} 1"),
        format!("eia_accelerator_flops_total{{accelerator=\"{id}\",device=\"0\",dtype=\"FP32\",owner=\"anonymous\",tier=\"big\"}} 160"),
        format!("eia_accelerator_memory_bytes{{accelerator=\"{id}\",device=\"0\",owner=\"anonymous\",tier=\"big\"}} 1024"), // two tensors at the minimum charge
        "eia_accelerators_attached 1".to_string(),
        // The RPC histogram, by method and status: one Attach, one refused Free.
        "eia_rpc_duration_seconds_count{code=\"OK\",method=\"Attach\"} 1".to_string(),
        "eia_rpc_duration_seconds_count{code=\"NOT_FOUND\",method=\"Free\"} 1".to_string(),
    ] {
        assert!(text.contains(&line), "missing {line:?} in\n{text}");
    }
    let open = text
        .lines()
        .find_map(|l| l.strip_prefix("eia_connections_open "))
        .unwrap();
    assert!(open.parse::<u32>().unwrap() >= 1, "{open}");
    // Counters are counters, gauges gauges: every `_total` series and only those is a counter.
    let types: Vec<(&str, &str)> = text
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .map(|l| l.split_once(' ').unwrap())
        .collect();
    assert!(types.len() >= 15, "{types:?}");
    for (name, kind) in types {
        let want = if name.ends_with("_total") {
            "counter"
        } else if name.ends_with("_seconds") && name.starts_with("eia_rpc") {
            "histogram"
        } else {
            "gauge"
        };
        assert_eq!(kind, want, "{name}");
    }
}

#[test]
fn uploads_stream_in_chunks_and_a_refusal_stops_the_sender() {
    // 5 MiB: five chunks, copied one by one as they go (`upload`) or sliced from the caller's
    // buffer (`upload_owned`); both arrive intact.
    let acc = remote("big");
    let data = host(&[5, 1 << 18], 0.7);
    let t = acc.upload(&data).unwrap();
    assert_eq!(acc.download(&t).unwrap(), data);
    let owned = acc.upload_owned(data.clone()).unwrap();
    assert_eq!(acc.download(&owned).unwrap(), data);
    let empty = host(&[0, 3], 0.0);
    assert_eq!(acc.download(&acc.upload(&empty).unwrap()).unwrap(), empty);
    let u = acc.usage().unwrap();
    assert_eq!((u.bytes_uploaded, u.bytes_downloaded), (10 << 20, 10 << 20));
    // 64 MiB into a 1 MiB quota: refused on the header; the client stops copying and sending
    // at once (no hang on a full queue) and nothing is held.
    let small = remote("small");
    let started = std::time::Instant::now();
    let e = small.upload(&host(&[16, 1 << 20], 0.1)).unwrap_err();
    assert_eq!(remote_code(&e), "ResourceExhausted", "{e}");
    assert!(started.elapsed() < Duration::from_secs(10));
    assert_eq!(small.usage().unwrap().memory_used, 0);
    assert!(
        small.upload(&host(&[8], 0.0)).is_ok(),
        "the connection still works"
    );
}

/// A raw gRPC client on the open server with a fresh accelerator of tier "big".
fn raw() -> (
    tokio::runtime::Runtime,
    eia::rpc::proto::accelerators_client::AcceleratorsClient<tonic::transport::Channel>,
    u64,
) {
    use eia::rpc::proto::{accelerators_client::AcceleratorsClient, AttachRequest};
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (c, id) = rt.block_on(async {
        let mut c = AcceleratorsClient::connect(open_server().to_string())
            .await
            .unwrap();
        let id = c
            .attach(AttachRequest { tier: "big".into() })
            .await
            .unwrap()
            .into_inner()
            .accelerator;
        (c, id)
    });
    (rt, c, id)
}

fn f32_meta(shape: &[usize]) -> eia::rpc::proto::TensorMeta {
    eia::rpc::convert::meta(&eia::TensorDesc::new(DType::F32, shape).unwrap())
}

fn f32s(bytes: &[u8]) -> Vec<f32> {
    bytes
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
        .collect()
}

/// Issue 13 row 9: attributes a client leaves unset take their ONNX defaults (Gemm alpha =
/// beta = 1, Softmax axis -1, BatchNormalization epsilon 1e-5), not proto3's zeros.
#[test]
fn unset_attributes_take_onnx_defaults() {
    use eia::rpc::proto::{op::Kind, *};
    let (rt, mut c, id) = raw();
    let (a, b, cc) = (host(&[2, 3], 0.1), host(&[3, 2], 0.7), host(&[2, 2], 1.3));
    let x = host(&[1, 2, 3], 0.4);
    let ones = HostTensor::full(DType::F32, &[2], 1.0).unwrap();
    let zeros = HostTensor::full(DType::F32, &[2], 0.0).unwrap();
    let shapes: [&[usize]; 11] = [
        &[2, 3],
        &[3, 2],
        &[2, 2],
        &[2, 2], // 0-3: A, B, C, Gemm Y
        &[1, 2, 3],
        &[1, 2, 3], // 4-5: X, Softmax Y
        &[2],
        &[2],
        &[2],
        &[2],
        &[1, 2, 3], // 6-10: scale, bias, mean, var, BatchNorm Y
    ];
    let t = rt.block_on(async {
        c.alloc(AllocRequest {
            accelerator: id,
            tensors: shapes.iter().map(|s| f32_meta(s)).collect(),
        })
        .await
        .unwrap()
        .into_inner()
        .tensors
    });
    let data = [
        (0, &a),
        (1, &b),
        (2, &cc),
        (4, &x),
        (6, &ones),
        (7, &zeros),
        (8, &zeros),
        (9, &zeros),
    ];
    let writes = data
        .iter()
        .map(|(i, h)| TensorWrite {
            tensor: t[*i],
            data: h.as_bytes().to_vec().into(),
        })
        .collect();
    let op = |kind: Kind, inputs: &[usize], output: usize| Op {
        kind: Some(kind),
        inputs: inputs.iter().map(|&i| t[i]).collect(),
        output: Some(t[output]),
        ..Default::default()
    };
    let ops = vec![
        op(Kind::Gemm(GemmOp::default()), &[0, 1, 2], 3),
        op(Kind::Softmax(SoftmaxOp::default()), &[4], 5),
        op(
            Kind::BatchNorm(BatchNormOp::default()),
            &[4, 6, 7, 8, 9],
            10,
        ),
    ];
    let out = rt.block_on(async {
        c.run(RunRequest {
            accelerator: id,
            writes,
            ops,
            reads: vec![t[3], t[5], t[10]],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
    });
    let cpu = CpuBackend::new();
    let up = |t: &HostTensor| cpu.upload(t).unwrap();
    let (a, b, cc, x) = (up(&a), up(&b), up(&cc), up(&x));
    let (ones, zeros) = (up(&ones), up(&zeros));
    let want = [
        cpu.gemm(&Gemm::default(), &a, &b, Some(&cc)).unwrap(),
        cpu.softmax(&Softmax::default(), &x).unwrap(),
        cpu.batch_norm(
            &eia::ops::BatchNorm::default(),
            &x,
            [&ones, &zeros, &zeros, &zeros],
        )
        .unwrap(),
    ];
    for ((got, want), what) in out
        .reads
        .iter()
        .zip(&want)
        .zip(["Gemm", "Softmax", "BatchNorm"])
    {
        assert_eq!(
            f32s(got),
            want.storage().to_f32_vec(),
            "{what} with unset attributes"
        );
    }
}

/// Issue 13 row 10: a program is checked whole before anything runs — an unknown read, a bad
/// op after a good one, or an unknown free leaves every tensor as it was and charges nothing.
#[test]
fn a_refused_run_changes_nothing_and_charges_nothing() {
    use eia::rpc::proto::{op::Kind, *};
    let (rt, mut c, id) = raw();
    rt.block_on(async {
        let t = c
            .alloc(AllocRequest {
                accelerator: id,
                tensors: vec![f32_meta(&[2, 3]), f32_meta(&[2, 3]), f32_meta(&[3, 3])],
            })
            .await
            .unwrap()
            .into_inner()
            .tensors;
        let before = host(&[2, 3], 0.2);
        let write = |tensor: u64, h: &HostTensor| TensorWrite {
            tensor,
            data: h.as_bytes().to_vec().into(),
        };
        c.run(RunRequest {
            accelerator: id,
            writes: vec![write(t[0], &before), write(t[1], &before)],
            ..Default::default()
        })
        .await
        .unwrap();
        let softmax = Op {
            kind: Some(Kind::Softmax(SoftmaxOp { axis: Some(-1) })),
            inputs: vec![t[0]],
            output: Some(t[1]),
            ..Default::default()
        };
        let bad_gemm = Op {
            kind: Some(Kind::Gemm(GemmOp::default())),
            inputs: vec![t[0], t[0]],
            output: Some(t[2]),
            ..Default::default()
        };
        let refused = [
            (
                "an unknown read",
                RunRequest {
                    ops: vec![softmax.clone()],
                    reads: vec![t[1], 999_999],
                    ..Default::default()
                },
                tonic::Code::NotFound,
            ),
            (
                "a bad op after a good one",
                RunRequest {
                    ops: vec![softmax.clone(), bad_gemm],
                    ..Default::default()
                },
                tonic::Code::InvalidArgument,
            ),
            (
                "an unknown free",
                RunRequest {
                    free: vec![t[2], 999_999],
                    ops: vec![softmax.clone()],
                    ..Default::default()
                },
                tonic::Code::NotFound,
            ),
            (
                "an op on a tensor the program frees",
                RunRequest {
                    free: vec![t[0]],
                    ops: vec![softmax.clone()],
                    ..Default::default()
                },
                tonic::Code::NotFound,
            ),
        ];
        for (what, mut run, code) in refused {
            run.accelerator = id;
            run.writes = vec![write(t[0], &host(&[2, 3], 5.0))];
            let status = c.run(run).await.unwrap_err();
            assert_eq!(status.code(), code, "{what}: {status}");
            let read = c
                .run(RunRequest {
                    accelerator: id,
                    reads: vec![t[0], t[1]],
                    ..Default::default()
                })
                .await
                .unwrap_or_else(|s| panic!("{what}: a tensor was freed: {s}"))
                .into_inner();
            for got in &read.reads {
                assert_eq!(
                    f32s(got),
                    before.data().to_f32_vec(),
                    "{what}: a tensor changed"
                );
            }
            let usage = c
                .usage(UsageRequest { accelerator: id })
                .await
                .unwrap()
                .into_inner()
                .usage
                .unwrap();
            assert_eq!((usage.ops, usage.flops_fp32), (0, 0), "{what}: charged");
        }
    });
}

/// Issue 13: an op given no output gets one from the server (handle and meta in the reply),
/// and every read comes back with its datatype and shape.
#[test]
fn ops_may_ask_the_server_for_their_outputs() {
    use eia::rpc::proto::{op::Kind, *};
    let (rt, mut c, id) = raw();
    rt.block_on(async {
        let t = c
            .alloc(AllocRequest {
                accelerator: id,
                tensors: vec![f32_meta(&[2, 3]), f32_meta(&[3, 4])],
            })
            .await
            .unwrap()
            .into_inner()
            .tensors;
        let (a, b) = (host(&[2, 3], 0.5), host(&[3, 4], 0.9));
        let out = c
            .run(RunRequest {
                accelerator: id,
                writes: vec![
                    TensorWrite {
                        tensor: t[0],
                        data: a.as_bytes().to_vec().into(),
                    },
                    TensorWrite {
                        tensor: t[1],
                        data: b.as_bytes().to_vec().into(),
                    },
                ],
                ops: vec![
                    Op {
                        kind: Some(Kind::Matmul(MatMulOp {})),
                        inputs: vec![t[0], t[1]],
                        output: None,
                        ..Default::default()
                    },
                    Op {
                        kind: Some(Kind::Softmax(SoftmaxOp::default())),
                        inputs: vec![t[0]],
                        output: Some(t[0]),
                        ..Default::default()
                    },
                ],
                reads: vec![t[1]],
                ..Default::default()
            })
            .await
            .unwrap_err();
        // The second op aliases its input: refused, and the output the first would have had
        // was never allocated.
        assert_eq!(out.code(), tonic::Code::InvalidArgument, "{out}");
        let usage = c
            .usage(UsageRequest { accelerator: id })
            .await
            .unwrap()
            .into_inner()
            .usage
            .unwrap();
        // Two tensors of 24 and 48 bytes, each charged the minimum.
        assert_eq!(usage.memory_used, 2 * MIN_TENSOR_CHARGE);
        let out = c
            .run(RunRequest {
                accelerator: id,
                writes: vec![
                    TensorWrite {
                        tensor: t[0],
                        data: a.as_bytes().to_vec().into(),
                    },
                    TensorWrite {
                        tensor: t[1],
                        data: b.as_bytes().to_vec().into(),
                    },
                ],
                ops: vec![Op {
                    kind: Some(Kind::Matmul(MatMulOp {})),
                    inputs: vec![t[0], t[1]],
                    output: None,
                    ..Default::default()
                }],
                reads: vec![t[1]],
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(out.read_meta, vec![f32_meta(&[3, 4])]);
        assert_eq!(out.outputs.len(), 1);
        let y = &out.outputs[0];
        assert_eq!((y.op, y.meta.clone()), (0, Some(f32_meta(&[2, 4]))));
        let read = c
            .run(RunRequest {
                accelerator: id,
                reads: vec![y.tensor],
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        let cpu = CpuBackend::new();
        let want = cpu
            .matmul(&cpu.upload(&a).unwrap(), &cpu.upload(&b).unwrap())
            .unwrap();
        assert_eq!(f32s(&read.reads[0]), want.storage().to_f32_vec());
        assert_eq!(read.read_meta, vec![f32_meta(&[2, 4])]);
    });
}

/// The Rust client's side of server-allocated outputs: `Program::apply_new` and `run_all`.
#[test]
fn program_apply_new_returns_server_allocated_outputs() {
    use eia::ops::Op;
    let acc = remote("big");
    let (a, b) = (host(&[2, 3], 0.5), host(&[3, 4], 0.9));
    let (da, db) = (acc.upload(&a).unwrap(), acc.upload(&b).unwrap());
    let mut program = Program::new();
    program.apply_new(&Op::MatMul, &[&da, &db]).unwrap();
    program.read(&db).unwrap();
    let ran = acc.run_all(&program).unwrap();
    assert_eq!(ran.reads, vec![b.clone()]);
    assert_eq!(ran.allocated.len(), 1);
    let y = &ran.allocated[0];
    assert_eq!(y.shape(), &[2, 4]);
    let cpu = CpuBackend::new();
    let want = cpu
        .matmul(&cpu.upload(&a).unwrap(), &cpu.upload(&b).unwrap())
        .unwrap();
    assert_eq!(acc.download(y).unwrap(), cpu.download(&want).unwrap());
    // Validated locally first, with the local error.
    let e = program.apply_new(&Op::MatMul, &[&da, &da]).unwrap_err();
    assert!(matches!(e, Error::Shape { .. }), "{e}");
}

/// How many calls of `method` the server behind `metrics` has answered (its Prometheus
/// `eia_rpc_duration_seconds_count`, summed over status codes).
fn rpc_count(metrics: std::net::SocketAddr, method: &str) -> u64 {
    common::scrape(metrics)
        .lines()
        .filter(|l| l.starts_with("eia_rpc_duration_seconds_count{"))
        .filter(|l| l.contains(&format!("method=\"{method}\"")))
        .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap() as u64)
        .sum()
}

/// The seven ops of the Python test's chain, over X [2, 3, 8, 8], W [4, 3, 3, 3], B [4]:
/// each op's inputs as indices into [X, W, B, the ops' outputs...].
fn seven_ops() -> Vec<(eia::ops::Op, Vec<usize>)> {
    use eia::ops::{Conv, Flatten, MaxPool, Op};
    vec![
        (
            Op::Conv(Conv {
                pads: [1; 4],
                relu: true,
                ..Conv::default()
            }),
            vec![0, 1, 2],
        ),
        (
            Op::MaxPool(MaxPool {
                kernel_shape: [2, 2],
                strides: [2, 2],
                ..MaxPool::default()
            }),
            vec![3],
        ),
        (Op::Mul, vec![4, 4]),
        (Op::Sigmoid, vec![5]),
        (Op::GlobalAveragePool, vec![6]),
        (Op::Flatten(Flatten::default()), vec![7]),
        (Op::Softmax(Softmax { axis: 1 }), vec![8]),
    ]
}

/// Issue 17: a program of seven ops whose outputs the server allocates — each op taking the
/// one before it — is one Run call and no Alloc; every output comes back as a handle and equals
/// the same ops run locally on the CPU backend, bit for bit. The same ops in the two-call form
/// (Alloc the outputs, then Run into them) are timed beside it.
#[test]
fn seven_op_program_is_one_run_and_no_alloc() {
    let server = start(ServerConfig {
        metrics: Some("127.0.0.1:0".parse().unwrap()),
        ..config()
    });
    let metrics = server.metrics_addr().unwrap();
    let conn = Connection::connect(&server.url(false), ClientConfig::default()).unwrap();
    let acc = conn.attach("big").unwrap();
    let hosts = [
        host(&[2, 3, 8, 8], 0.3),
        host(&[4, 3, 3, 3], 1.7),
        host(&[4], 2.9),
    ];
    let inputs: Vec<_> = hosts.iter().map(|h| acc.upload(h).unwrap()).collect();
    let ops = seven_ops();
    // Locally, each op on the ones before it.
    let cpu = CpuBackend::new();
    let mut local: Vec<_> = hosts.iter().map(|h| cpu.upload(h).unwrap()).collect();
    for (op, x) in &ops {
        let y = cpu
            .apply(op, &x.iter().map(|&i| &local[i]).collect::<Vec<_>>())
            .unwrap();
        local.push(y);
    }
    let local: Vec<HostTensor> = local.iter().map(|t| cpu.download(t).unwrap()).collect();
    // The program; with `count`, the calls it took too (scraped before and after, untimed).
    let one_trip = |count: bool| {
        let mut program = Program::new();
        let mut made = Vec::new();
        for (op, x) in &ops {
            let x: Vec<eia::rpc::Operand> = x
                .iter()
                .map(|&i| match i.checked_sub(3) {
                    None => (&inputs[i]).into(),
                    Some(j) => made[j],
                })
                .collect();
            made.push(program.apply_new(op, &x).unwrap().into());
        }
        program.read(made[6]).unwrap();
        let calls = || ["Run", "Alloc", "Free"].map(|m| count.then(|| rpc_count(metrics, m)));
        let before = calls();
        let started = std::time::Instant::now();
        let ran = acc.run_all(&program).unwrap();
        let took = started.elapsed();
        let after = calls();
        let calls = [0, 1, 2].map(|i| after[i].zip(before[i]).map(|(a, b)| a - b));
        (ran, calls, took)
    };
    let (ran, calls, _) = one_trip(true);
    let [runs, allocs, frees] = calls.map(Option::unwrap);
    assert_eq!((runs, allocs, frees), (1, 0, 0), "Run, Alloc, Free calls");
    assert_eq!(ran.reads, vec![local[9].clone()]);
    assert_eq!(ran.allocated.len(), 7);
    for (i, y) in ran.allocated.iter().enumerate() {
        assert_eq!(acc.download(y).unwrap(), local[3 + i], "op {i}'s output");
    }
    let u = acc.usage().unwrap();
    assert_eq!(u.ops, 7);
    drop(ran);
    // The two-call form the client used before: Alloc every output, then Run into them.
    let two_trips = || {
        let started = std::time::Instant::now();
        let outputs = acc
            .alloc_all(
                &local[3..]
                    .iter()
                    .map(|h| h.desc().clone())
                    .collect::<Vec<_>>(),
            )
            .unwrap();
        let mut program = Program::new();
        let table: Vec<_> = inputs.iter().chain(&outputs).collect();
        for (i, (op, x)) in ops.iter().enumerate() {
            let x: Vec<_> = x.iter().map(|&j| table[j]).collect();
            program.apply(op, &x, &outputs[i]).unwrap();
        }
        program.read(&outputs[6]).unwrap();
        let reads = acc.run(&program).unwrap();
        (reads, started.elapsed())
    };
    acc.usage().unwrap(); // the dropped outputs freed, outside the timings
    let (reads, _) = two_trips();
    assert_eq!(reads, vec![local[9].clone()]);
    // Alternate the two, 20 times each, on the same server and tensors (the outputs dropped
    // before are freed between, outside the timings).
    let (mut one_ms, mut two_ms) = (Vec::new(), Vec::new());
    for _ in 0..20 {
        acc.usage().unwrap();
        one_ms.push(one_trip(false).2.as_secs_f64() * 1e3);
        acc.usage().unwrap();
        two_ms.push(two_trips().1.as_secs_f64() * 1e3);
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    println!(
        "7-op program on loopback, median of 20: one Run {:.3} ms; Alloc + Run {:.3} ms",
        median(&mut one_ms),
        median(&mut two_ms)
    );
}

/// Issue 17: an operand or read naming an op's output is checked with the whole program — the
/// op itself, a later op, an op that writes a given tensor, an index past the ops, an operand
/// naming nothing, handles and operands both given — and refused with INVALID_ARGUMENT naming
/// the op (or the read), before anything is written, allocated, run or charged.
#[test]
fn bad_references_to_op_outputs_are_refused_whole() {
    use eia::rpc::proto::{op::Kind, operand::Source, *};
    let (rt, mut c, id) = raw();
    rt.block_on(async {
        let t = c
            .alloc(AllocRequest {
                accelerator: id,
                tensors: vec![f32_meta(&[2, 3]), f32_meta(&[2, 3])],
            })
            .await
            .unwrap()
            .into_inner()
            .tensors;
        let before = host(&[2, 3], 0.2);
        let write = |h: &HostTensor| TensorWrite {
            tensor: t[0],
            data: h.as_bytes().to_vec().into(),
        };
        c.run(RunRequest {
            accelerator: id,
            writes: vec![write(&before)],
            ..Default::default()
        })
        .await
        .unwrap();
        let memory = |u: &Usage| u.memory_used;
        let usage = |c: &mut accelerators_client::AcceleratorsClient<_>| {
            let mut c = c.clone();
            async move {
                c.usage(UsageRequest { accelerator: id })
                    .await
                    .unwrap()
                    .into_inner()
                    .usage
                    .unwrap()
            }
        };
        let held = memory(&usage(&mut c).await);
        let tensor = |t: u64| Operand {
            source: Some(Source::Tensor(t)),
        };
        let of = |j: u32| Operand {
            source: Some(Source::Op(j)),
        };
        let relu = |operands: Vec<Operand>, output: Option<u64>| Op {
            kind: Some(Kind::Relu(ReluOp {})),
            operands,
            output,
            ..Default::default()
        };
        let fresh = relu(vec![tensor(t[0])], None);
        let cases = [
            (
                "op 1 (Relu): operand 0 names op 1, the op itself",
                vec![fresh.clone(), relu(vec![of(1)], None)],
                vec![],
                vec![],
            ),
            (
                "op 0 (Relu): operand 0 names op 1, a later op",
                vec![relu(vec![of(1)], None), fresh.clone()],
                vec![],
                vec![],
            ),
            (
                &*format!(
                    "op 1 (Relu): operand 0 names op 0, whose output is the given tensor {}",
                    t[1]
                ),
                vec![
                    relu(vec![tensor(t[0])], Some(t[1])),
                    relu(vec![of(0)], None),
                ],
                vec![],
                vec![],
            ),
            (
                "op 1 (Relu): operand 0 names op 7, but the program has 2 ops",
                vec![fresh.clone(), relu(vec![of(7)], None)],
                vec![],
                vec![],
            ),
            (
                "op 1 (Relu): operand 0 names op 4294967295",
                vec![fresh.clone(), relu(vec![of(u32::MAX)], None)],
                vec![],
                vec![],
            ),
            (
                "op 1 (Relu): operands[0] names neither a tensor nor an op",
                vec![fresh.clone(), relu(vec![Operand { source: None }], None)],
                vec![],
                vec![],
            ),
            (
                "op 1 (Relu): both inputs and operands given",
                vec![
                    fresh.clone(),
                    Op {
                        inputs: vec![t[0]],
                        ..relu(vec![of(0)], None)
                    },
                ],
                vec![],
                vec![],
            ),
            (
                "read 1 names op 1, but the program has 1 ops",
                vec![fresh.clone()],
                vec![],
                vec![of(0), of(1)],
            ),
            (
                &*format!(
                    "read 0 names op 0, whose output is the given tensor {}",
                    t[1]
                ),
                vec![relu(vec![tensor(t[0])], Some(t[1]))],
                vec![],
                vec![of(0)],
            ),
            (
                "both reads and read_operands given",
                vec![fresh.clone()],
                vec![t[0]],
                vec![of(0)],
            ),
        ];
        for (want, ops, reads, read_operands) in cases {
            let status = c
                .run(RunRequest {
                    accelerator: id,
                    writes: vec![write(&host(&[2, 3], 5.0))],
                    ops,
                    reads,
                    read_operands,
                    ..Default::default()
                })
                .await
                .unwrap_err();
            assert_eq!(
                status.code(),
                tonic::Code::InvalidArgument,
                "{want}: {status}"
            );
            assert!(status.message().starts_with(want), "{want}: {status}");
            let u = usage(&mut c).await;
            assert_eq!((u.ops, u.flops_fp32), (0, 0), "{want}: charged");
            assert_eq!(memory(&u), held, "{want}: allocated");
            let read = c
                .run(RunRequest {
                    accelerator: id,
                    reads: vec![t[0]],
                    ..Default::default()
                })
                .await
                .unwrap()
                .into_inner();
            assert_eq!(
                f32s(&read.reads[0]),
                before.data().to_f32_vec(),
                "{want}: written"
            );
        }
        // The same shapes, well referenced, run: each op takes the one before it, and the
        // reads name a tensor and an op's output.
        let out = c
            .run(RunRequest {
                accelerator: id,
                ops: vec![
                    fresh.clone(),
                    relu(vec![of(0)], None),
                    relu(vec![of(1)], Some(t[1])),
                ],
                read_operands: vec![of(1), tensor(t[1])],
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        let want: Vec<f32> = before
            .data()
            .to_f32_vec()
            .iter()
            .map(|v| v.max(0.0))
            .collect();
        assert_eq!(
            out.outputs.iter().map(|o| o.op).collect::<Vec<_>>(),
            vec![0, 1]
        );
        assert_eq!(
            out.reads.iter().map(|r| f32s(r)).collect::<Vec<_>>(),
            vec![want.clone(), want]
        );
        assert_eq!(out.read_meta, vec![f32_meta(&[2, 3]); 2]);
    });
}

/// Issue 17: the outputs a program has the server allocate count against the quota before any
/// op runs: a program they do not fit in fails whole (RESOURCE_EXHAUSTED), nothing stays
/// allocated, nothing ran; the same program made to fit then runs.
#[test]
fn program_over_the_quota_fails_whole() {
    use eia::ops::Op;
    let acc = remote("small"); // 1 MiB
    let x = acc.upload(&host(&[256, 256], 0.4)).unwrap(); // 256 KiB
    let held = acc.usage().unwrap().memory_used;
    let program = |n: usize| {
        let mut p = Program::new();
        let mut y = p.apply_new(&Op::Relu, &[&x]).unwrap();
        for _ in 1..n {
            y = p.apply_new(&Op::Sigmoid, &[y]).unwrap();
        }
        p.read(y).unwrap();
        p
    };
    // Four more 256 KiB outputs: 1.25 MiB in all.
    let e = acc.run_all(&program(4)).unwrap_err();
    assert_eq!(remote_code(&e), "ResourceExhausted", "{e}");
    assert!(e.to_string().contains("memory quota"), "{e}");
    let u = acc.usage().unwrap();
    assert_eq!((u.memory_used, u.ops), (held, 0), "something stayed or ran");
    let ran = acc.run_all(&program(2)).unwrap();
    assert_eq!(ran.allocated.len(), 2);
    assert_eq!(acc.usage().unwrap().ops, 2);
}

/// The bug of the client's batched frees: a client that drops tensors and then has a call
/// fail — refused by the server's check before its frees, refused after them (the quota), never
/// sent (over the message limit), or past its deadline with its frees done — loses none of the
/// frees it carried, and never sends one twice (the server refuses a free of a tensor it no
/// longer holds, and the whole call with it): the next call succeeds and leaves only the live
/// tensors charged. A Python `program()` on a remote accelerator runs through `run_all` too.
/// The program past its deadline runs on, and the server frees the output it allocated for it
/// when it ends (no one holds its handle).
#[test]
fn a_failed_call_keeps_the_frees_it_carried() {
    use eia::ops::Op;
    let mut cfg = config();
    // 1 MFLOPS: a Relu of 32768 elements is metered at about 33 ms.
    cfg.device.tiers = Tiers::with_toml(
        "test",
        "[[tier]]\nname = \"slow\"\nfp32_tflops = 0.000001\nfp16_tflops = 0.000001\nmemory_mib = 1\n",
    )
    .unwrap();
    let server = start(cfg);
    let client = ClientConfig {
        timeout: Duration::from_millis(500),
        chunk_bytes: 16 << 10,
        max_message_bytes: 64 << 10,
        ..ClientConfig::default()
    };
    let conn = Connection::connect(&server.url(false), client).unwrap();
    let acc = conn.attach("slow").unwrap();
    let x = acc.upload(&host(&[64, 64], 0.1)).unwrap();
    let big_desc = eia::TensorDesc::new(DType::F32, &[128, 256]).unwrap(); // 128 KiB
    let (a, b) = (acc.alloc(&big_desc).unwrap(), acc.alloc(&big_desc).unwrap());
    let base = acc.usage().unwrap().memory_used;
    let failing: [(&str, Program); 4] = [
        ("refused before its frees", {
            let mut p = Program::new();
            p.apply(&Op::Relu, &[&x], &x).unwrap(); // the server refuses: input is output
            p
        }),
        ("refused after its frees", {
            let mut p = Program::new();
            let mut y = p.apply_new(&Op::Relu, &[&a]).unwrap();
            for _ in 1..8 {
                y = p.apply_new(&Op::Relu, &[y]).unwrap(); // 1 MiB of outputs: over the quota
            }
            p
        }),
        ("never sent", {
            let mut p = Program::new();
            p.write(&a, &host(&[128, 256], 0.3)).unwrap(); // over the 64 KiB message limit
            p
        }),
        ("past its deadline", {
            let mut p = Program::new();
            p.apply_new(&Op::Relu, &[&a]).unwrap();
            for _ in 0..30 {
                p.apply(&Op::Relu, &[&a], &b).unwrap(); // about 1 s metered
            }
            p
        }),
    ];
    for (what, program) in failing {
        let dropped = [host(&[64, 64], 0.4), host(&[32, 32], 0.5)].map(|h| acc.upload(&h).unwrap());
        assert!(acc.usage().unwrap().memory_used > base, "{what}");
        drop(dropped);
        let e = acc.run(&program).expect_err(what);
        let ends = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let used = acc
                .usage()
                .unwrap_or_else(|u| panic!("{what} ({e}): the call after it failed: {u}"))
                .memory_used;
            if used == base {
                break;
            }
            assert!(
                std::time::Instant::now() < ends,
                "{what} ({e}): {} bytes still held",
                used - base
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    // Everything still works: a program that frees and allocates.
    drop(acc.upload(&host(&[64, 64], 0.6)).unwrap());
    let mut p = Program::new();
    let y = p.apply_new(&Op::Relu, &[&x]).unwrap();
    p.read(y).unwrap();
    let ran = acc.run_all(&p).unwrap();
    assert_eq!(ran.allocated.len(), 1);
    drop(ran);
    assert_eq!(acc.usage().unwrap().memory_used, base);
}

/// A program marked scratch (what a model's inference sends) lets the server write an output
/// into the storage of a tensor the program is done with. Here the pooled values land in the
/// input's storage (whose contents after the program are then unspecified, as documented); the
/// read is the same as unmarked, and every tensor has its own storage back at its own length.
#[test]
fn a_scratch_program_writes_into_storage_it_is_done_with_and_gives_it_back() {
    let acc = remote("big");
    let desc = |shape: &[usize]| eia::TensorDesc::new(DType::F32, shape).unwrap();
    let mut x = acc.alloc(&desc(&[1, 4, 4, 4])).unwrap();
    let mut a = acc.alloc(&desc(&[1, 4, 4, 4])).unwrap();
    let mut g = acc.alloc(&desc(&[1, 4, 1, 1])).unwrap();
    let mut c = acc.alloc(&desc(&[1, 4, 1, 1])).unwrap();
    let input = host(&[1, 4, 4, 4], 0.7);
    let run = |x: &_, a: &_, g: &_, c: &_, scratch: bool| {
        let mut p = Program::new();
        p.set_scratch(scratch);
        p.write(x, &input).unwrap();
        p.apply(&Op::Relu, &[x], a).unwrap();
        p.apply(&Op::GlobalAveragePool, &[a], g).unwrap();
        p.apply(&Op::Relu, &[g], c).unwrap();
        p.read(c).unwrap();
        acc.run(&p).unwrap()
    };
    let cpu = CpuBackend::new();
    let relu = cpu
        .apply(&Op::Relu, &[&cpu.upload(&input).unwrap()])
        .unwrap();
    let pooled = cpu.apply(&Op::GlobalAveragePool, &[&relu]).unwrap();
    let pooled = cpu.download(&pooled).unwrap();
    let plain = run(&x, &a, &g, &c, false);
    assert_eq!(
        plain,
        vec![pooled.clone()],
        "the pool's values are not negative"
    );
    assert_eq!(
        acc.download(&x).unwrap(),
        input,
        "unmarked, the input stays"
    );
    let memory = acc.usage().unwrap().memory_used;
    assert_eq!(run(&x, &a, &g, &c, true), plain);
    // The pool wrote into the input's storage, done with after the first op.
    let (xs, want) = (acc.download(&x).unwrap(), input.data().to_f32_vec());
    assert_eq!(xs.shape(), &[1, 4, 4, 4]);
    let xs = xs.data().to_f32_vec();
    assert_eq!(xs[..4], pooled.data().to_f32_vec()[..], "not lent");
    assert_eq!(xs[4..], want[4..]);
    // Every tensor usable as before: its own storage, its own length, its own charge.
    assert_eq!(acc.usage().unwrap().memory_used, memory);
    for (i, t) in [&mut x, &mut a, &mut g, &mut c].into_iter().enumerate() {
        let h = host(t.shape(), i as f32);
        acc.write(t, &h).unwrap();
        assert_eq!(acc.download(t).unwrap(), h);
    }
    assert_eq!(run(&x, &a, &g, &c, false), plain);
    assert_eq!(acc.download(&x).unwrap(), input);
}

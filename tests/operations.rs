//! Running the server as an operator does: grpc.health.v1 and readiness, a drain that lets a
//! call in flight finish while refusing attaches, usage records written at detach, the `eia
//! serve` binary stopping cleanly on SIGTERM, and settings that make no sense refused.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use eia::accelerator::{Capacity, DeviceConfig, Tiers};
use eia::ops::Gemm;
use eia::rpc::proto::{self, accelerators_client::AcceleratorsClient};
use eia::rpc::{ClientConfig, Connection, ServerConfig};
use eia::{Backend, CpuBackend, DType, HostTensor};
use tonic_health::pb::{health_check_response::ServingStatus, health_client::HealthClient};

/// "slow": a 64³ FP32 GEMM costs 1 s of accelerator time.
const TIERS: &str = "[[tier]]\nname = \"slow\"\nfp32_tflops = 0.000000524288\nfp16_tflops = 0.000000524288\nmemory_mib = 64\n";

fn config(usage_log: Option<std::path::PathBuf>) -> ServerConfig {
    ServerConfig {
        device: DeviceConfig {
            tiers: Tiers::with_toml("operations", TIERS).unwrap(),
            capacity: Some(Capacity {
                fp32_tflops: 1.0,
                fp16_tflops: 1.0,
                memory: 1 << 30,
            }),
            ..DeviceConfig::default()
        },
        usage_log,
        ..ServerConfig::default()
    }
}

fn health(rt: &tokio::runtime::Runtime, url: &str) -> ServingStatus {
    rt.block_on(async {
        let channel = tonic::transport::Channel::from_shared(url.to_string())
            .unwrap()
            .connect()
            .await
            .unwrap();
        let mut c = HealthClient::new(channel);
        let r = c
            .check(tonic_health::pb::HealthCheckRequest {
                service: String::new(),
            })
            .await
            .unwrap();
        r.into_inner().status()
    })
}

/// A call in flight on a new "slow" accelerator: its second GEMM waits out ~1 s of meter debt.
/// The thread hands the accelerator back, so a drain (not the client) detaches it.
fn call_in_flight(
    url: &str,
) -> std::thread::JoinHandle<(eia::Result<()>, eia::rpc::RemoteAccelerator)> {
    let acc = Connection::connect(url, ClientConfig::default())
        .unwrap()
        .attach("slow")
        .unwrap();
    let x = acc
        .upload(&HostTensor::full(DType::F32, &[64, 64], 0.5).unwrap())
        .unwrap();
    acc.gemm(&Gemm::default(), &x, &x, None).unwrap();
    let in_flight = std::thread::spawn(move || {
        let y = acc.gemm(&Gemm::default(), &x, &x, None).map(|_| ());
        (y, acc)
    });
    std::thread::sleep(Duration::from_millis(200));
    in_flight
}

#[test]
fn a_drain_finishes_calls_in_flight_refuses_attaches_and_records_usage() {
    let log = std::env::temp_dir().join(format!("eia-usage-{}.jsonl", std::process::id()));
    let _ = std::fs::remove_file(&log);
    let server = eia::rpc::spawn(
        "127.0.0.1:0".parse().unwrap(),
        CpuBackend::new(),
        config(Some(log.clone())),
    )
    .unwrap();
    let url = server.url(false);
    let rt = tokio::runtime::Runtime::new().unwrap();
    assert_eq!(health(&rt, &url), ServingStatus::Serving);

    let in_flight = call_in_flight(&url);

    let started = Instant::now();
    let drain = std::thread::spawn(move || server.drain(Duration::from_secs(10)));
    std::thread::sleep(Duration::from_millis(100));
    let mut c = rt
        .block_on(AcceleratorsClient::connect(url.clone()))
        .unwrap();
    let ready = rt
        .block_on(c.server_ready(proto::ServerReadyRequest {}))
        .unwrap()
        .into_inner()
        .ready;
    assert!(!ready, "not ready while draining");
    assert_eq!(health(&rt, &url), ServingStatus::NotServing);
    let refused = rt
        .block_on(c.attach(proto::AttachRequest {
            tier: "slow".into(),
        }))
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unavailable, "{refused:?}");

    let (finished, _acc) = in_flight.join().unwrap();
    finished.expect("the call in flight finishes");
    drain.join().unwrap().unwrap();
    println!("drain with one call in flight took {:?}", started.elapsed());

    let records = std::fs::read_to_string(&log).unwrap();
    let lines: Vec<serde_json::Value> = records
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 1, "{records}");
    assert_eq!(lines[0]["why"], "drain");
    assert_eq!(lines[0]["ops"], 2);
    assert_eq!(lines[0]["flops_fp32"], 2 * 2 * 64 * 64 * 64);
    let _ = std::fs::remove_file(&log);
}

#[test]
fn a_drain_cut_short_ends_waiting_calls_with_unavailable() {
    let server = eia::rpc::spawn(
        "127.0.0.1:0".parse().unwrap(),
        CpuBackend::new(),
        config(None),
    )
    .unwrap();
    let in_flight = call_in_flight(&server.url(false));
    server.drain(Duration::from_millis(50)).unwrap();
    let e = in_flight.join().unwrap().0.unwrap_err();
    assert!(
        e.to_string().contains("drained") || matches!(e, eia::Error::Network(_)),
        "{e}"
    );
}

#[test]
fn a_zero_lease_is_refused() {
    let e = eia::rpc::spawn(
        "127.0.0.1:0".parse().unwrap(),
        CpuBackend::new(),
        ServerConfig {
            lease: Duration::ZERO,
            ..config(None)
        },
    )
    .err()
    .unwrap();
    assert!(e.to_string().contains("lease"), "{e}");
}

#[test]
fn eia_serve_drains_and_exits_0_on_sigterm() {
    let mut serve = Command::new(env!("CARGO_BIN_EXE_eia"))
        .args(["serve", "--backend", "cpu", "--listen", "127.0.0.1:0"])
        .args(["--overcommit", "--log-format", "json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = BufReader::new(serve.stdout.take().unwrap());
    let mut line = String::new();
    while !line.contains("listening on") {
        line.clear();
        assert!(stdout.read_line(&mut line).unwrap() > 0, "eia serve exited");
    }
    let url = line
        .split_whitespace()
        .find(|w| w.starts_with("http://"))
        .unwrap()
        .to_string();
    let acc = Connection::connect(&url, ClientConfig::default())
        .unwrap()
        .attach("eia2.medium")
        .unwrap();
    drop(acc.upload(&HostTensor::full(DType::F32, &[8], 1.0).unwrap()));
    let started = Instant::now();
    let kill = Command::new("kill")
        .args(["-TERM", &serve.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let status = serve.wait().unwrap();
    let mut logs = String::new();
    std::io::Read::read_to_string(&mut serve.stderr.take().unwrap(), &mut logs).unwrap();
    println!("SIGTERM to exit: {:?}", started.elapsed());
    assert!(status.success(), "exit {status:?}\n{logs}");
    for event in [
        "\"serving\"",
        "\"attached\"",
        "\"stop signal: draining\"",
        "\"drain\"",
        "\"drained\"",
        "\"stopped\"",
    ] {
        assert!(logs.contains(event), "no {event} in\n{logs}");
    }
}

#[test]
fn a_stalled_upload_is_ended_and_its_memory_freed() {
    let server = eia::rpc::spawn(
        "127.0.0.1:0".parse().unwrap(),
        CpuBackend::new(),
        ServerConfig {
            stream_idle_timeout: Duration::from_millis(300),
            ..config(None)
        },
    )
    .unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let mut c = rt
        .block_on(AcceleratorsClient::connect(server.url(false)))
        .unwrap();
    let id = rt
        .block_on(c.attach(proto::AttachRequest {
            tier: "slow".into(),
        }))
        .unwrap()
        .into_inner()
        .accelerator;
    // The header and 1 KiB of a 4 MiB tensor, then nothing (the sender stays open).
    let (tx, rx) = tokio::sync::mpsc::channel::<proto::UploadChunk>(1);
    tx.try_send(proto::UploadChunk {
        header: Some(proto::UploadHeader {
            accelerator: id,
            meta: Some(proto::TensorMeta {
                datatype: "FP32".into(),
                shape: vec![1 << 20],
            }),
        }),
        data: vec![0u8; 1024].into(),
    })
    .unwrap();
    let started = Instant::now();
    let status = rt
        .block_on(c.upload(tokio_stream::wrappers::ReceiverStream::new(rx)))
        .unwrap_err();
    println!("stalled upload ended after {:?}", started.elapsed());
    assert_eq!(status.code(), tonic::Code::DeadlineExceeded, "{status:?}");
    let usage = rt
        .block_on(c.usage(proto::UsageRequest { accelerator: id }))
        .unwrap()
        .into_inner()
        .usage
        .unwrap();
    assert_eq!(usage.memory_used, 0, "the reservation was released");
    drop(tx);
}

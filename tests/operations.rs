//! Running the server as an operator does: grpc.health.v1 and readiness, a drain that lets a
//! call in flight finish while refusing attaches, usage records written at detach, the `eia
//! serve` binary stopping cleanly on SIGTERM, settings that make no sense refused, and the
//! accept loop under abuse: a flood of idle sockets past the file-descriptor limit or past
//! `--max-connections` neither spins a core nor keeps the server from serving once it ends.

use std::io::{BufRead, BufReader, Read};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use eia::accelerator::{Capacity, DeviceConfig, Tiers};
use eia::ops::Gemm;
use eia::rpc::proto::{self, accelerators_client::AcceleratorsClient};
use eia::rpc::{ClientConfig, Connection, ServerConfig};
use eia::{Backend, CpuBackend, DType, HostTensor, PerDType};
use tonic_health::pb::{health_check_response::ServingStatus, health_client::HealthClient};

mod common;

/// "slow": a 64³ FP32 GEMM costs 1 s of accelerator time.
const TIERS: &str = "[[tier]]\nname = \"slow\"\nfp32_tflops = 0.000000524288\nfp16_tflops = 0.000000524288\nmemory_mib = 64\n";

fn config(usage_log: Option<std::path::PathBuf>) -> ServerConfig {
    ServerConfig {
        device: DeviceConfig {
            tiers: Tiers::with_toml("operations", TIERS).unwrap(),
            capacity: Some(Capacity {
                tflops: PerDType::new(1.0, 1.0),
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
    assert!(e.to_string().contains("drained") || e.is_retryable(), "{e}");
}

/// A client's `grpc.health.v1` Watch stream never ends by itself; it must not hold a drained
/// server open (the drain returns, and `eia serve` exits, however long the client watches).
#[test]
fn a_health_watch_does_not_hold_a_drained_server_open() {
    let server = eia::rpc::spawn(
        "127.0.0.1:0".parse().unwrap(),
        CpuBackend::new(),
        config(None),
    )
    .unwrap();
    let url = server.url(false);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let mut watch = rt.block_on(async {
        let channel = tonic::transport::Channel::from_shared(url)
            .unwrap()
            .connect()
            .await
            .unwrap();
        HealthClient::new(channel)
            .watch(tonic_health::pb::HealthCheckRequest {
                service: String::new(),
            })
            .await
            .unwrap()
            .into_inner()
    });
    let first = rt.block_on(watch.message()).unwrap().unwrap();
    assert_eq!(first.status(), ServingStatus::Serving);
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || done_tx.send(server.drain(Duration::from_millis(100))));
    done_rx
        .recv_timeout(Duration::from_secs(30))
        .expect("the drain returns while a client still watches health")
        .unwrap();
    // The watcher saw NOT_SERVING, then its stream ended (or the connection went away).
    let mut seen = Vec::new();
    while let Ok(Some(m)) = rt.block_on(watch.message()) {
        seen.push(m.status());
    }
    assert_eq!(seen, [ServingStatus::NotServing], "after the drain began");
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

/// `eia serve` (CPU, loopback, any free port, overcommitted) with `args`, under a
/// file-descriptor limit if one is given; returns it, its gRPC URL and, with `--metrics`, its
/// metrics address. Its stdout is read to the "listening" lines; stderr (logs) is piped.
fn eia_serve(nofile: Option<u32>, args: &[&str]) -> (Child, String, Option<SocketAddr>) {
    let limit = nofile.map_or(String::new(), |n| format!("ulimit -n {n} && "));
    let mut serve = Command::new("sh")
        .arg("-c")
        .arg(format!("{limit}exec \"$0\" \"$@\""))
        .arg(env!("CARGO_BIN_EXE_eia"))
        .args(["serve", "--backend", "cpu", "--listen", "127.0.0.1:0"])
        .args(["--overcommit", "--log-format", "json"])
        .args(args)
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
    let metrics = args.contains(&"--metrics").then(|| {
        line.clear();
        stdout.read_line(&mut line).unwrap();
        let at = line.trim().strip_prefix("metrics: http://").unwrap();
        at.strip_suffix("/metrics").unwrap().parse().unwrap()
    });
    // Dropping the reader closes the pipe: the server's later lines fail, which it shrugs off
    // (`eia_serve_keeps_serving_when_its_stdout_closes`).
    (serve, url, metrics)
}

/// Seconds the threads of process `pid` have been runnable: running or waiting for a CPU
/// (`/proc/PID/task/*/schedstat`). A spinning thread is runnable all the time however loaded
/// the machine is, an idle one almost never.
fn runnable_seconds(pid: u32) -> f64 {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).unwrap();
    let ns: u64 = tasks
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("schedstat")).ok())
        .map(|s| {
            s.split_whitespace()
                .take(2)
                .map(|f| f.parse::<u64>().unwrap())
                .sum::<u64>()
        })
        .sum();
    ns as f64 / 1e9
}

/// Up to `n` idle sockets connected to the server at `url` (they send nothing): as many as
/// connect within 2 s each, once the server's backlog is full none do.
fn flood(url: &str, n: usize) -> Vec<TcpStream> {
    let addr: SocketAddr = url.strip_prefix("http://").unwrap().parse().unwrap();
    let sockets: Vec<TcpStream> = (0..n)
        .map_while(|_| TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok())
        .collect();
    for s in &sockets {
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    }
    sockets
}

/// Seconds until a new client attaches (each try bounded), at most `within`.
fn served_within(url: &str, within: Duration) -> Duration {
    let started = Instant::now();
    let config = ClientConfig {
        connect_timeout: Duration::from_secs(2),
        timeout: Duration::from_secs(2),
        ..ClientConfig::default()
    };
    loop {
        let tried = Connection::connect(url, config.clone()).and_then(|c| c.attach("eia2.medium"));
        match tried {
            Ok(acc) => {
                acc.detach().unwrap();
                return started.elapsed();
            }
            Err(e) => assert!(
                started.elapsed() < within,
                "not served after {within:?}: {e}"
            ),
        }
    }
}

/// The seconds the threads of `pid` are runnable over `seconds` of wall time.
fn runnable_over(pid: u32, seconds: f64) -> f64 {
    let before = runnable_seconds(pid);
    std::thread::sleep(Duration::from_secs_f64(seconds));
    runnable_seconds(pid) - before
}

#[test]
fn at_the_file_descriptor_limit_the_accept_loop_backs_off_and_recovers() {
    // 64 descriptors and the default --max-connections (1024): the flood reaches EMFILE.
    let (serve, url, _) = eia_serve(Some(64), &[]);
    let idle = flood(&url, 120);
    assert!(idle.len() > 64, "only {} sockets connected", idle.len());
    std::thread::sleep(Duration::from_millis(500));
    let busy = runnable_over(serve.id(), 3.0);
    println!(
        "{} idle sockets at the fd limit: runnable {busy:.2} s over 3 s",
        idle.len()
    );
    // A spinning accept loop is runnable all the time (3 s); backing off, next to never.
    assert!(busy < 1.0, "runnable {busy:.2} s over 3 s at the fd limit");
    drop(idle);
    // Still serving: it once exited here, its signal handlers registered after it listened and
    // the flood holding every descriptor they needed.
    let mut serve = serve;
    if let Some(status) = serve.try_wait().unwrap() {
        let logs = common::logs(&mut serve);
        panic!("eia serve exited at the fd limit: {status:?}\n{logs}");
    }
    let recovered = served_within(&url, Duration::from_secs(20));
    println!("served {recovered:?} after the flood closed");
    let (status, logs) = common::stop(serve);
    assert!(status.success(), "exit {status:?}\n{logs}");
    assert!(logs.contains("backing off"), "{logs}");
}

#[test]
fn beyond_max_connections_connections_wait_and_metrics_still_answer() {
    let (serve, url, metrics) = eia_serve(
        Some(256),
        &["--max-connections", "16", "--metrics", "127.0.0.1:0"],
    );
    let idle = flood(&url, 100);
    assert!(idle.len() > 16, "only {} sockets connected", idle.len());
    std::thread::sleep(Duration::from_millis(500));
    let busy = runnable_over(serve.id(), 2.0);
    println!(
        "{} idle sockets, 16 accepted: runnable {busy:.2} s over 2 s",
        idle.len()
    );
    assert!(
        busy < 1.0,
        "runnable {busy:.2} s over 2 s at the connection limit"
    );
    let text = common::scrape(metrics.unwrap());
    assert!(
        text.lines().any(|l| l == "eia_connections_open 16"),
        "{text}"
    );
    drop(idle);
    let recovered = served_within(&url, Duration::from_secs(20));
    println!("served {recovered:?} after the flood closed");
    let (status, logs) = common::stop(serve);
    assert!(status.success(), "exit {status:?}\n{logs}");
    assert!(logs.contains("at the connection limit"), "{logs}");
}

#[test]
fn a_silent_connection_is_closed_after_the_idle_timeout() {
    let (serve, url, _) = eia_serve(None, &["--connection-idle-timeout", "1"]);
    let mut silent = flood(&url, 1).pop().unwrap();
    let started = Instant::now();
    let mut byte = [0u8; 64];
    // The server may send its HTTP/2 settings first; then it closes the connection.
    while matches!(silent.read(&mut byte), Ok(n) if n > 0) {}
    let closed = started.elapsed();
    println!("a silent connection was closed after {closed:?}");
    assert!(
        closed >= Duration::from_millis(900) && closed < Duration::from_secs(8),
        "{closed:?}"
    );
    // A client that calls now and then is kept: its connection answers keepalive pings.
    let acc = Connection::connect(&url, ClientConfig::default())
        .unwrap()
        .attach("eia2.medium")
        .unwrap();
    std::thread::sleep(Duration::from_secs(2));
    acc.detach().unwrap();
    let (status, logs) = common::stop(serve);
    assert!(status.success(), "exit {status:?}\n{logs}");
}

#[test]
fn eia_serve_keeps_serving_when_its_stdout_closes() {
    // Nobody reads stdout: the pipe's read end is closed before the server prints its first
    // line, so every line it prints (listening, metrics, capacity) fails with EPIPE.
    let mut serve = Command::new(env!("CARGO_BIN_EXE_eia"))
        .args(["serve", "--backend", "cpu", "--listen", "127.0.0.1:0"])
        .args([
            "--overcommit",
            "--log-format",
            "json",
            "--metrics",
            "127.0.0.1:0",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(serve.stdout.take());
    // The address comes from the "serving" log event, which follows the lines printed.
    let mut logs = BufReader::new(serve.stderr.take().unwrap());
    let mut started = String::new();
    let addr = loop {
        let mut line = String::new();
        assert!(
            logs.read_line(&mut line).unwrap() > 0,
            "eia serve exited:\n{started}"
        );
        started.push_str(&line);
        let event: serde_json::Value = serde_json::from_str(&line).unwrap();
        if event["fields"]["message"] == "serving" {
            break event["fields"]["addr"].as_str().unwrap().to_string();
        }
    };
    // The three lines failed, were logged, and the server went on.
    assert_eq!(
        started.matches("cannot write to stdout").count(),
        3,
        "{started}"
    );
    let acc = Connection::connect(&format!("http://{addr}"), ClientConfig::default())
        .unwrap()
        .attach("eia2.medium")
        .unwrap();
    let x = acc
        .upload(&HostTensor::from_f32(DType::F32, &[2, 2], &[1.0, 2.0, 3.0, 4.0]).unwrap())
        .unwrap();
    let y = acc.gemm(&Gemm::default(), &x, &x, None).unwrap();
    let y = acc.download(&y).unwrap().data().to_f32_vec();
    assert_eq!(y, vec![7.0, 10.0, 15.0, 22.0]);
    acc.detach().unwrap();
    common::sigterm(&serve);
    let status = serve.wait().unwrap();
    let mut rest = String::new();
    logs.read_to_string(&mut rest).unwrap();
    assert!(status.success(), "exit {status:?}\n{rest}");
    assert!(
        !rest.contains("panicked") && rest.contains("\"stopped\""),
        "{rest}"
    );
}

#[test]
fn eia_serve_drains_and_exits_0_on_sigterm() {
    let (serve, url, _) = eia_serve(None, &[]);
    let acc = Connection::connect(&url, ClientConfig::default())
        .unwrap()
        .attach("eia2.medium")
        .unwrap();
    drop(acc.upload(&HostTensor::full(DType::F32, &[8], 1.0).unwrap()));
    let started = Instant::now();
    let (status, logs) = common::stop(serve);
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

//! The Kubernetes DaemonSet's container (deploy/kubernetes/daemonset.yaml) run by the real
//! `eia serve`: exactly its `args`, with the Secret files swapped for fixtures made the same
//! way (a token file of `eia token-hash` hashes, a PEM certificate and key), its addresses for
//! loopback ones and, on a machine without a GPU, `--backend=cuda` for the CPU. The server
//! must accept every flag, serve TLS with bearer tokens, answer what each probe asks — `GET
//! /metrics` (the DaemonSet's probes) and grpc.health.v1 for the service names of
//! components/grpc-probes-tls, without a token, as the kubelet asks — and on SIGTERM (what the
//! kubelet sends) drain and exit 0 within the manifest's drain timeout. deploy/validate.py
//! checks the manifests themselves against the Kubernetes schemas.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use eia::rpc::{ClientConfig, Connection};
use tonic::transport::{Certificate, Channel, ClientTlsConfig};
use tonic_health::pb::{
    health_check_response::ServingStatus, health_client::HealthClient, HealthCheckRequest,
};

mod common;

const DAEMONSET: &str = include_str!("../deploy/kubernetes/daemonset.yaml");
const GRPC_PROBES: &str =
    include_str!("../deploy/kubernetes/components/grpc-probes-tls/probes.json");
const SECRET: &str = "deploy-test-secret";

/// The container's `args`: the manifest keeps them on one `args:` line as a JSON-style list
/// (valid YAML), so they are read here as JSON.
fn manifest_args() -> Vec<String> {
    let lines: Vec<&str> = DAEMONSET
        .lines()
        .filter_map(|l| l.trim().strip_prefix("args:"))
        .collect();
    assert_eq!(lines.len(), 1, "one `args:` line in the DaemonSet");
    serde_json::from_str(lines[0].trim()).expect("the DaemonSet's args are one JSON-style list")
}

/// `--flag=value` → its value.
fn value<'a>(args: &'a [String], flag: &str) -> &'a str {
    let prefix = format!("{flag}=");
    let found: Vec<&str> = args
        .iter()
        .filter_map(|a| a.strip_prefix(&prefix))
        .collect();
    assert_eq!(found.len(), 1, "{flag}= once in {args:?}");
    found[0]
}

/// The gRPC probes' health service names (components/grpc-probes-tls/probes.json).
fn probe_services() -> Vec<String> {
    let patches: Vec<serde_json::Value> = serde_json::from_str(GRPC_PROBES).unwrap();
    let services: Vec<String> = patches
        .iter()
        .map(|p| p["value"]["grpc"]["service"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(services.len(), 3, "startup, readiness and liveness probes");
    services
}

fn health(rt: &tokio::runtime::Runtime, url: &str, ca: &str, service: &str) -> ServingStatus {
    rt.block_on(async {
        let tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(ca))
            .domain_name("localhost");
        let channel = Channel::from_shared(url.to_string())
            .unwrap()
            .tls_config(tls)
            .unwrap()
            .connect_timeout(Duration::from_secs(10))
            .connect()
            .await
            .unwrap();
        HealthClient::new(channel)
            .check(HealthCheckRequest {
                service: service.to_string(),
            })
            .await
            .unwrap_or_else(|s| panic!("health of {service:?}: {s}"))
            .into_inner()
            .status()
    })
}

#[test]
fn the_daemonsets_args_serve_tls_with_tokens_answer_the_probes_and_drain_on_sigterm() {
    let args = manifest_args();
    assert_eq!(args[0], "serve");
    let drain = Duration::from_secs_f64(value(&args, "--drain-timeout").parse().unwrap());

    // The Secrets' files, made as the README makes them.
    let dir = std::env::temp_dir().join(format!("eia-deploy-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let cert_pem = cert.cert.pem();
    let fixtures = [
        (
            "--tokens",
            "tokens.toml",
            format!(
                "[[token]]\nname = \"deploy\"\nsha256 = \"{}\"\ntiers = [\"*\"]\nmax_accelerators = 1\n",
                eia::rpc::auth::hash(SECRET)
            ),
        ),
        ("--tls-cert", "tls.crt", cert_pem.clone()),
        ("--tls-key", "tls.key", cert.signing_key.serialize_pem()),
    ];
    let mut run: Vec<String> = Vec::new();
    for a in &args {
        let (flag, _) = a.split_once('=').unwrap_or((a, ""));
        let swapped = match flag {
            "--listen" | "--metrics" => Some(format!("{flag}=127.0.0.1:0")),
            // On a machine without a GPU the CPU stands in (on a GPU machine, the GPU serves).
            "--backend" if eia::CudaBackend::device_count().map_or(true, |n| n == 0) => {
                Some("--backend=cpu".to_string())
            }
            _ => fixtures
                .iter()
                .find(|f| f.0 == flag)
                .map(|(_, file, text)| {
                    let path = dir.join(file);
                    std::fs::write(&path, text).unwrap();
                    format!("{flag}={}", path.display())
                }),
        };
        run.push(swapped.unwrap_or_else(|| a.clone()));
    }
    for (flag, _, _) in &fixtures {
        assert!(Path::new(value(&run, flag)).exists(), "{flag} swapped");
    }
    assert!(
        !run.iter().any(|a| a.contains("/etc/")),
        "every path of the manifest swapped: {run:?}"
    );

    let started = Instant::now();
    let mut serve = Command::new(env!("CARGO_BIN_EXE_eia"))
        .args(&run)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = BufReader::new(serve.stdout.take().unwrap());
    let (mut url, mut metrics) = (None, None::<SocketAddr>);
    let mut line = String::new();
    while url.is_none() || metrics.is_none() {
        line.clear();
        assert!(
            stdout.read_line(&mut line).unwrap() > 0,
            "eia serve exited: {run:?}"
        );
        for word in line.split_whitespace() {
            if word.starts_with("https://") {
                url = Some(word.to_string());
            }
            if let Some(at) = word.strip_prefix("http://") {
                metrics = Some(at.strip_suffix("/metrics").unwrap().parse().unwrap());
            }
        }
    }
    let (url, metrics) = (url.unwrap(), metrics.unwrap());
    // Keep reading: a closed pipe would make the server's next line to stdout fail.
    std::thread::spawn(move || std::io::copy(&mut stdout, &mut std::io::sink()));
    println!(
        "serving after {:?}: {url}, metrics {metrics}",
        started.elapsed()
    );

    // The DaemonSet's probes: GET /metrics on the metrics port.
    let scraped = common::scrape(metrics);
    assert!(scraped.starts_with("HTTP/1.1 200"), "{scraped}");
    // components/grpc-probes-tls: each probe's service SERVING, over TLS, with no token.
    let rt = tokio::runtime::Runtime::new().unwrap();
    let services = probe_services();
    for service in &services {
        assert_eq!(
            health(&rt, &url, &cert_pem, service),
            ServingStatus::Serving,
            "{service:?}"
        );
    }
    assert!(services.iter().any(|s| s == "eia.v1.Accelerators"));

    // The token file is in force: no token is refused; the token is let in (on a device too
    // slow for the tier, admission — not authentication — refuses it).
    let client = |token: Option<&str>| ClientConfig {
        token: token.map(str::to_string),
        ca_pem: Some(cert_pem.clone().into_bytes()),
        tls_domain: Some("localhost".into()),
        heartbeat: false,
        ..ClientConfig::default()
    };
    let refused = Connection::connect(&url, client(None))
        .and_then(|c| c.attach("eia1.medium"))
        .err()
        .expect("an attach without a token is refused");
    assert!(
        refused.to_string().to_lowercase().contains("token"),
        "{refused}"
    );
    match Connection::connect(&url, client(Some(SECRET))).and_then(|c| c.attach("eia1.medium")) {
        Ok(acc) => drop(acc.detach().unwrap()),
        Err(e) => assert!(
            e.to_string().contains("ResourceExhausted: device capacity"),
            "{e}"
        ),
    }

    // SIGTERM, as the kubelet sends it: a drain, then exit 0 within the drain timeout.
    let term = Instant::now();
    let (status, logs) = common::stop(serve);
    let stopped = term.elapsed();
    println!("SIGTERM to exit: {stopped:?}");
    assert!(status.success(), "{status}: {logs}");
    assert!(
        stopped < drain,
        "{stopped:?} against --drain-timeout {drain:?}"
    );
    assert!(logs.contains("drained"), "{logs}");
    let _ = std::fs::remove_dir_all(&dir);
}

//! A loopback fleet: three `eia serve` processes with pinned capacities (no overcommit, so the
//! servers' admission is exact) and 24 clients of one [`Fleet`] attaching a mix of two tiers,
//! one after another so placement is deterministic. Placement must spread them by free
//! capacity. Then, mid-run, one server gets SIGTERM (drains, exits 0) and another SIGKILL:
//! every plain client either finishes or gets the retryable [`eia::Error::Unavailable`] naming
//! its host; every model session keeps answering correctly, moving to another host within one
//! lease period; and once the clients are gone the survivor holds nothing.
//!
//! Prints the placement table (tiers per host against capacity) and each session's failover
//! time (signal → first good inference elsewhere).

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use eia::accelerator::Load;
use eia::model::zoo::GraphBuilder;
use eia::ops::Gemm;
use eia::rpc::{ClientConfig, Connection, Fleet, RemoteAccelerator};
use eia::{Backend, CpuBackend, DType, HostTensor, LoadOptions, Model, PerDType};

mod common;
use common::serve::Serve;

/// Seconds without a call before a server detaches an accelerator.
const LEASE: Duration = Duration::from_secs(3);
/// Seconds a drain waits for calls in flight.
const DRAIN_S: &str = "1";
/// Two tiers; one "unit" is 1 GFLOPS FP32 / 2 GFLOPS FP16.
const TIERS: &str = "[[tier]]\nname = \"f.huge\"\nfp32_tflops = 0.03\nfp16_tflops = 0.06\nmemory_mib = 16\n\
                     [[tier]]\nname = \"f.small\"\nfp32_tflops = 0.001\nfp16_tflops = 0.002\nmemory_mib = 16\n\
                     [[tier]]\nname = \"f.large\"\nfp32_tflops = 0.002\nfp16_tflops = 0.004\nmemory_mib = 32\n";
/// Tier FP32 TFLOPS by name (FP16 is twice).
const RATES: [(&str, f64); 2] = [("f.small", 0.001), ("f.large", 0.002)];
/// Each server's FP32 TFLOPS (FP16 twice): 24, 20 and 16 units.
const CAPACITY: [f64; 3] = [0.024, 0.020, 0.016];
const CLIENTS: usize = 24;
/// Every fourth client runs a model session (all f.small); the others run GEMMs.
const SESSION_EVERY: usize = 4;
/// The whole test's bound.
const BUDGET: Duration = Duration::from_secs(50);

/// Starts `eia serve` on a free port with FP32 capacity `fp32` TFLOPS (FP16: twice that).
fn start(dir: &Path, n: usize, fp32: f64) -> Serve {
    let mut args: Vec<OsString> = ["--listen", "127.0.0.1:0", "--drain-timeout", DRAIN_S]
        .iter()
        .map(OsString::from)
        .collect();
    for (flag, value) in [
        ("--lease", LEASE.as_secs().to_string()),
        ("--capacity-fp32", fp32.to_string()),
        ("--capacity-fp16", (2.0 * fp32).to_string()),
    ] {
        args.extend([flag.into(), value.into()]);
    }
    args.extend(["--tiers".into(), dir.join("tiers.toml").into_os_string()]);
    Serve::start(dir, n, &args)
}

/// A small MLP: `[N, 64] → Gemm 64 → Relu → Gemm 10`.
fn mlp() -> Vec<u8> {
    let mut g = GraphBuilder::new(7);
    let h = g.linear("input", 64, 64);
    let h = g.relu(&h);
    let y = g.linear(&h, 64, 10);
    g.finish("mlp", ("input", &[64]), &y)
}

fn rel_err(got: &HostTensor, want: &HostTensor) -> f64 {
    assert_eq!(got.shape(), want.shape());
    let (g, w) = (got.data().to_f32_vec(), want.data().to_f32_vec());
    let num: f64 = g
        .iter()
        .zip(&w)
        .map(|(a, b)| (*a as f64 - *b as f64).powi(2))
        .sum();
    let den: f64 = w.iter().map(|b| (*b as f64).powi(2)).sum();
    (num / den).sqrt()
}

/// What happened to one client.
#[derive(Debug, Default)]
struct Log {
    /// Good results (each checked against the CPU backend).
    good: usize,
    /// (when, host it ran on) of each good result.
    runs: Vec<(Instant, String)>,
    /// Retryable errors seen (when, message).
    errors: Vec<(Instant, String)>,
    /// Whether it ran until told to stop.
    finished: bool,
}

/// A plain client: GEMMs (FP32 and FP16 in turn) until `stop`, or until its host fails.
fn plain(acc: RemoteAccelerator, stop: &AtomicBool, seed: u64) -> Log {
    let cpu = CpuBackend::new();
    let mut rng = common::rng(&format!("fleet plain client {seed}"));
    let mut log = Log::default();
    let host = acc.host().to_string();
    let mut i = 0;
    while !stop.load(SeqCst) {
        let dtype = if i % 2 == 0 { DType::F32 } else { DType::F16 };
        i += 1;
        let a = common::random(&mut rng, dtype, &[16, 16], -1.0, 1.0);
        let b = common::random(&mut rng, dtype, &[16, 16], -1.0, 1.0);
        let want = cpu
            .download(
                &cpu.gemm(
                    &Gemm::default(),
                    &cpu.upload(&a).unwrap(),
                    &cpu.upload(&b).unwrap(),
                    None,
                )
                .unwrap(),
            )
            .unwrap();
        let got = (|| {
            let (x, y) = (acc.upload(&a)?, acc.upload(&b)?);
            acc.download(&acc.gemm(&Gemm::default(), &x, &y, None)?)
        })();
        match got {
            Ok(got) => {
                assert!(rel_err(&got, &want) <= common::tolerance(dtype));
                log.good += 1;
                log.runs.push((Instant::now(), host.clone()));
            }
            Err(e) => {
                assert!(
                    e.is_retryable() && e.to_string().contains(&host),
                    "a plain client on {host} got {e:?}"
                );
                log.errors.push((Instant::now(), e.to_string()));
                return log;
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    acc.detach().unwrap();
    log.finished = true;
    log
}

#[test]
fn a_fleet_places_by_capacity_and_sessions_survive_a_drain_and_a_kill() {
    let started = Instant::now();
    let dir = std::env::temp_dir().join(format!("eia-fleet-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("tiers.toml"), TIERS).unwrap();
    let mut servers: Vec<Serve> = CAPACITY
        .iter()
        .enumerate()
        .map(|(n, &c)| start(&dir, n, c))
        .collect();
    let spec = servers
        .iter()
        .map(|s| s.url.as_str())
        .collect::<Vec<_>>()
        .join(",");
    let config = ClientConfig {
        connect_timeout: Duration::from_secs(2),
        timeout: Duration::from_secs(20),
        ..ClientConfig::default()
    };
    let fleet = Fleet::connect(&spec, config).unwrap();
    let model = Model::from_bytes(&mlp(), LoadOptions::default()).unwrap();
    let cpu = CpuBackend::new();
    let reference = model.session(&cpu).unwrap();

    // Attach one after another: small, large, small, … (every SESSION_EVERY-th a session).
    let mut accels = Vec::new();
    let mut sessions = Vec::new();
    let mut placement: BTreeMap<String, Vec<&str>> = BTreeMap::new();
    for i in 0..CLIENTS {
        let tier = RATES[i % 2].0;
        if i % SESSION_EVERY == 0 {
            let s = model.fleet_session(&fleet, tier).unwrap();
            placement.entry(s.host().unwrap()).or_default().push(tier);
            sessions.push(s);
        } else {
            let a = fleet.attach(tier).unwrap();
            placement
                .entry(a.host().to_string())
                .or_default()
                .push(tier);
            accels.push(a);
        }
    }
    println!("placement ({CLIENTS} clients; 1 unit = 1 FP32 / 2 FP16 GFLOPS; admitted and free as each server's Capacity says):");
    println!(
        "{:<28} {:>8} {:>6} {:>6} {:>9} {:>6}",
        "host", "capacity", "small", "large", "admitted", "free"
    );
    let mut free = Vec::new();
    for (s, cap) in servers.iter().zip(CAPACITY) {
        let tiers = placement.get(&s.url).cloned().unwrap_or_default();
        let admitted: f64 = tiers
            .iter()
            .map(|t| RATES.iter().find(|(n, _)| n == t).unwrap().1)
            .sum();
        let count = |name: &str| tiers.iter().filter(|t| **t == name).count();
        let reported = capacity(&s.url);
        assert_eq!(reported.accelerators, tiers.len(), "{}", s.url);
        assert!(
            (reported.admitted_tflops[DType::F32] - admitted).abs() < 1e-9,
            "{}",
            s.url
        );
        assert!(
            (reported.admitted_tflops[DType::F16] - 2.0 * admitted).abs() < 1e-9,
            "{}",
            s.url
        );
        let left = reported.free_tflops(DType::F32);
        println!(
            "{:<28} {:>8.0} {:>6} {:>6} {:>9.0} {:>6.0}",
            s.url,
            reported.capacity.tflops[DType::F32] * 1e3,
            count("f.small"),
            count("f.large"),
            reported.admitted_tflops[DType::F32] * 1e3,
            left * 1e3
        );
        assert!((reported.capacity.tflops[DType::F32] - cap).abs() < 1e-12);
        assert!(
            admitted <= cap + 1e-9,
            "{} admitted over its capacity",
            s.url
        );
        free.push(left);
    }
    // Placement by free capacity levels what is left free: no host is fuller than another by
    // more than the largest tier.
    let spread = free.iter().cloned().fold(f64::MIN, f64::max)
        - free.iter().cloned().fold(f64::MAX, f64::min);
    assert!(
        spread <= RATES[1].1 + 1e-9,
        "placement did not follow free capacity: free {free:?}"
    );

    // A tier no host has room for, and one no host offers: every host is named, with why.
    let e = fleet.attach("f.huge").err().unwrap();
    assert!(e.is_retryable(), "full hosts may have room later: {e}");
    println!("refused everywhere: {e}");
    let e = fleet.attach("f.none").err().unwrap();
    assert!(!e.is_retryable(), "{e}");
    for s in &servers {
        assert!(e.to_string().contains(&s.url), "{e}");
    }
    println!("refused everywhere: {e}");

    // Which sessions are on which server, before the signals.
    let on = |url: &str| -> Vec<usize> {
        sessions
            .iter()
            .enumerate()
            .filter(|(_, s)| s.host().as_deref() == Some(url))
            .map(|(i, _)| i)
            .collect()
    };
    let (drained, killed, survivor) = (0, 1, 2);
    let on_drained = on(&servers[drained].url);
    let on_killed = on(&servers[killed].url);
    assert!(
        !on_drained.is_empty() && !on_killed.is_empty(),
        "sessions on every host"
    );

    let stop = AtomicBool::new(false);
    let signals: Mutex<[Option<Instant>; 2]> = Mutex::new([None, None]);
    let input = HostTensor::new(
        &[1, 64],
        (0..64)
            .map(|i| (i as f32 * 0.37).sin())
            .collect::<Vec<f32>>(),
    )
    .unwrap();
    let want = reference.run(std::slice::from_ref(&input)).unwrap();
    let (plain_logs, session_logs) = std::thread::scope(|scope| {
        let plain_threads: Vec<_> = accels
            .into_iter()
            .enumerate()
            .map(|(i, a)| {
                let stop = &stop;
                scope.spawn(move || plain(a, stop, i as u64))
            })
            .collect();
        let session_threads: Vec<_> = sessions
            .iter()
            .map(|s| {
                let (stop, input, want) = (&stop, &input, &want);
                scope.spawn(move || {
                    let mut log = Log::default();
                    while !stop.load(SeqCst) {
                        match s.run(std::slice::from_ref(input)) {
                            Ok(got) => {
                                assert!(rel_err(&got[0], &want[0]) <= 1e-5);
                                log.good += 1;
                                log.runs.push((Instant::now(), s.host().unwrap()));
                            }
                            Err(e) => {
                                assert!(e.is_retryable(), "a session got {e:?}");
                                log.errors.push((Instant::now(), e.to_string()));
                            }
                        }
                        std::thread::sleep(Duration::from_millis(20));
                    }
                    log
                })
            })
            .collect();

        std::thread::sleep(Duration::from_millis(1500));
        // SIGTERM: the server drains and exits 0.
        lock(&signals)[0] = Some(Instant::now());
        servers[drained].signal("-TERM");
        let status = servers[drained].wait(Duration::from_secs(20));
        assert!(status.success(), "a drained server exits 0: {status}");
        std::thread::sleep(Duration::from_millis(1000));
        // SIGKILL mid-run.
        lock(&signals)[1] = Some(Instant::now());
        servers[killed].signal("-KILL");
        servers[killed].wait(Duration::from_secs(10));
        // Let every session answer from the survivor, within a lease period and a margin.
        std::thread::sleep(LEASE + Duration::from_secs(1));
        stop.store(true, SeqCst);
        let plain: Vec<Log> = plain_threads
            .into_iter()
            .map(|t| t.join().unwrap())
            .collect();
        let sessions: Vec<Log> = session_threads
            .into_iter()
            .map(|t| t.join().unwrap())
            .collect();
        (plain, sessions)
    });
    let [term_at, kill_at] = lock(&signals).map(Option::unwrap);

    // Plain clients: finished (on the survivor) or the one retryable error (on the others).
    let finished = plain_logs.iter().filter(|l| l.finished).count();
    let failed = plain_logs.iter().filter(|l| !l.errors.is_empty()).count();
    assert_eq!(finished + failed, plain_logs.len());
    println!(
        "plain clients: {finished} finished, {failed} ended with a retryable error naming their host, \
         {} GEMMs checked",
        plain_logs.iter().map(|l| l.good).sum::<usize>()
    );
    for l in plain_logs.iter().filter(|l| !l.errors.is_empty()).take(2) {
        println!("  e.g. {}", l.errors[0].1);
    }

    // Sessions: each one moved away from a signalled host, and answers from the survivor.
    println!("failover (signal -> first good inference elsewhere), lease {LEASE:?}:");
    let failover = |i: usize, at: Instant, from: &str| -> Duration {
        let log = &session_logs[i];
        let (when, host) = log
            .runs
            .iter()
            .find(|(t, h)| *t > at && h != from)
            .unwrap_or_else(|| panic!("session {i} never answered away from {from}: {log:?}"));
        let took = when.duration_since(at);
        println!(
            "  session {i}: {from} -> {host} in {:.0} ms ({} failed inferences)",
            took.as_secs_f64() * 1e3,
            log.errors.iter().filter(|(t, _)| *t > at).count()
        );
        took
    };
    for &i in &on_drained {
        let took = failover(i, term_at, &servers[drained].url);
        assert!(
            took <= LEASE,
            "session {i} took {took:?} to leave the draining host"
        );
    }
    for &i in &on_killed {
        let took = failover(i, kill_at, &servers[killed].url);
        assert!(
            took <= LEASE,
            "session {i} took {took:?} to leave the killed host"
        );
    }
    for (i, log) in session_logs.iter().enumerate() {
        let last = &log.runs.last().unwrap().1;
        assert_eq!(
            last, &servers[survivor].url,
            "session {i} ends on the survivor"
        );
        assert!(
            log.errors.len() <= 2,
            "session {i}: at most one failed inference per failure: {:?}",
            log.errors
        );
        for (_, e) in &log.errors {
            println!("  session {i} error: {e}");
        }
    }
    let moves: usize = sessions.iter().map(|s| s.moves()).sum();
    println!(
        "sessions: {} inferences checked, {moves} moves",
        session_logs.iter().map(|l| l.good).sum::<usize>()
    );

    // Nothing held on the survivor once the clients are gone.
    drop(sessions);
    let s = &servers[survivor];
    let held = capacity(&s.url);
    assert_eq!(
        (held.accelerators, held.admitted_memory, held.used_memory),
        (0, 0, 0),
        "the survivor holds nothing: {held:?}"
    );
    assert_eq!(held.admitted_tflops, PerDType::new(0.0, 0.0));
    assert_eq!(s.metric("eia_accelerators_attached"), 0.0);
    println!("fleet test took {:.1} s", started.elapsed().as_secs_f64());
    assert!(
        started.elapsed() < BUDGET,
        "the fleet test is bounded by {BUDGET:?}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// The load of the one device of the server at `url`, from its Capacity RPC.
fn capacity(url: &str) -> Load {
    let c = Connection::connect(url, ClientConfig::default())
        .unwrap()
        .capacity()
        .unwrap();
    assert_eq!(c.devices.len(), 1);
    c.devices[0].load.clone()
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[test]
fn a_list_or_a_name_both_reach_the_servers() {
    let dir = std::env::temp_dir().join(format!("eia-fleet-name-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("tiers.toml"), TIERS).unwrap();
    let server = start(&dir, 0, 0.004);
    let port = server.url.rsplit(':').next().unwrap();
    // "localhost" resolves to 127.0.0.1 (and perhaps ::1, where nothing listens: skipped).
    let fleet =
        Fleet::connect(&format!("http://localhost:{port}"), ClientConfig::default()).unwrap();
    let a = fleet.attach("f.small").unwrap();
    assert_eq!(a.host(), server.url);
    drop(a);
    let _ = std::fs::remove_dir_all(&dir);
}

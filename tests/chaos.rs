//! Chaos on loopback: 32 clients against the `eia serve` binary (a child process) while some of
//! them are killed mid-upload, one sends pathological requests, and the server is stopped with
//! SIGTERM in the middle of the run and restarted on the same port.
//!
//! - 25 workers run programs of real ops (GEMM + ReLU + Softmax, Conv + GlobalAveragePool,
//!   broadcast Mul + Sigmoid; FP32 or FP16) on fresh random inputs through the crate's
//!   [`RemoteAccelerator`] and check every result against the CPU backend. When the server goes
//!   away under them they must get a clear status (UNAVAILABLE or NOT_FOUND, never a wrong
//!   result, never a call past its deadline), re-attach to the restarted server, find their old
//!   accelerator NOT_FOUND there, and run programs again.
//! - 6 clients, on each server, attach, upload a whole tensor, start a 4 MiB upload and die in
//!   the middle of it once the server holds its reservation: half abort the upload (the stream
//!   is reset, the connection stays), half drop their whole runtime (the connection closes).
//!   The reservation must be released at once; the accelerator and its tensor are left for the
//!   lease to reclaim.
//! - 1 client, on each server, sends pathological requests (bad shapes, huge declared sizes,
//!   unknown handles, an op that is its own input, empty and oversized programs, malformed
//!   upload streams…): each gets the status it should, and nothing of its accelerator changes.
//!
//! Afterwards, once the leases have run out, the device holds no memory (`/metrics`), both
//! servers exited 0 on SIGTERM, neither logged a panic, and every accelerator a client was
//! given has exactly one usage record (`--usage-log`). A summary line gives the counts.
//!
//! Every wait is bounded: a call has a deadline, and the test fails naming what it waited for.

mod common;
use common::serve::Serve;

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::Path;
use std::process::ExitStatus;
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use eia::ops::{Conv, Gemm, Op, Softmax};
use eia::rpc::proto::{self, accelerators_client::AcceleratorsClient, op::Kind};
use eia::rpc::{ClientConfig, Connection, Program, RemoteAccelerator};
use eia::{Backend, CpuBackend, DType, HostTensor, TensorDesc};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use tonic::transport::Channel;
use tonic::Code;

const WORKERS: usize = 25;
const KILLED: usize = 6;
/// Workers, killed clients and the pathological one.
const CLIENTS: usize = WORKERS + KILLED + 1;
/// Short, so that the leak check does not wait long.
const LEASE_S: &str = "2";
const DRAIN_S: &str = "3";
const MAX_MESSAGE_MIB: usize = 2;
/// Fast (the meter never waits long), 64 MiB of memory.
const TIERS: &str =
    "[[tier]]\nname = \"chaos\"\nfp32_tflops = 1000.0\nfp16_tflops = 1000.0\nmemory_mib = 64\n";
/// Each call's deadline.
const CALL: Duration = Duration::from_secs(20);
/// The whole run's: past it, the test fails naming what it was waiting for.
const BUDGET: Duration = Duration::from_secs(150);
/// The statuses a worker may see while the server drains, stops and restarts.
const WORKER_STATUSES: [&str; 2] = ["Unavailable", "NotFound"];
/// What the killed clients upload before they die: 4 MiB, of which 1 MiB is sent.
const BIG: [u64; 1] = [1 << 20];
const SENT_CHUNKS: usize = 4;
const CHUNK: usize = 256 << 10;

/// Starts `eia serve` on `listen` (`127.0.0.1:0`: any free port) and waits until it listens.
fn start(dir: &Path, n: usize, listen: &str) -> Serve {
    let mut args: Vec<OsString> = ["--listen", listen, "--overcommit"]
        .iter()
        .chain(&["--lease", LEASE_S, "--drain-timeout", DRAIN_S])
        .map(OsString::from)
        .collect();
    args.extend([
        "--max-message-mib".into(),
        MAX_MESSAGE_MIB.to_string().into(),
    ]);
    args.extend(["--tiers".into(), dir.join("tiers.toml").into_os_string()]);
    args.extend([
        "--usage-log".into(),
        dir.join("usage.jsonl").into_os_string(),
    ]);
    Serve::start(dir, n, &args)
}

/// SIGTERM, then its exit status and how long it took to exit (the drain).
fn terminate(server: &mut Serve) -> (ExitStatus, Duration) {
    let started = Instant::now();
    server.signal("-TERM");
    (server.wait(Duration::from_secs(30)), started.elapsed())
}

/// Who was given an accelerator.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Role {
    Worker,
    Killed,
    Pathological,
}

/// What every client shares with the test: the server's URL, which server is up, progress, and
/// the tally the checks and the summary read.
struct Shared {
    url: String,
    /// 1 until the first server has exited, then 2 (set before the second one starts).
    generation: AtomicU8,
    deadline: Instant,
    /// Per worker, programs checked.
    progress: Vec<AtomicUsize>,
    /// Killed and pathological clients done with their round on the first server.
    first_rounds: AtomicUsize,
    checked: AtomicUsize,
    kills: AtomicUsize,
    stale_not_found: AtomicUsize,
    refused_connects: AtomicUsize,
    /// Error statuses seen, by who saw them and code, and the first message of each.
    statuses: Mutex<BTreeMap<String, (usize, String)>>,
    /// Every accelerator a client was given: id, server (generation), role.
    attached: Mutex<Vec<(u64, u8, Role)>>,
    /// Broken guarantees.
    failures: Mutex<Vec<String>>,
}

impl Shared {
    fn generation(&self) -> u8 {
        self.generation.load(SeqCst)
    }

    fn fail(&self, what: String) {
        eprintln!("chaos failure: {what}");
        self.failures.lock().unwrap().push(what);
    }

    fn count(&self, who: &str, code: &str, message: &str) {
        let mut statuses = self.statuses.lock().unwrap();
        let seen = statuses
            .entry(format!("{who} {code}"))
            .or_insert_with(|| (0, message.to_string()));
        seen.0 += 1;
    }

    fn attached(&self, id: u64, generation: u8, role: Role) {
        self.attached.lock().unwrap().push((id, generation, role));
    }

    fn late(&self) -> bool {
        Instant::now() > self.deadline
    }
}

/// The gRPC code of a client error (`Network(...)` for a transport error without one; a host
/// that could not answer is `Unavailable` naming it, its message led by the code).
fn code(e: &eia::Error) -> String {
    match e {
        eia::Error::Remote { code, .. } => code.clone(),
        eia::Error::Network(m) | eia::Error::Unavailable { msg: m, .. } => {
            [Code::Unavailable, Code::Cancelled, Code::DeadlineExceeded]
                .into_iter()
                .find(|c| m.starts_with(c.description()))
                .map_or_else(|| format!("Network({m})"), |c| format!("{c:?}"))
        }
        other => format!("{other}"),
    }
}

#[test]
fn clients_survive_kills_pathological_programs_and_a_restart() {
    let started = Instant::now();
    let seed: u64 = common::rng("chaos").random();
    let dir = std::env::temp_dir().join(format!("eia-chaos-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("tiers.toml"), TIERS).unwrap();

    let mut first = start(&dir, 1, "127.0.0.1:0");
    let shared = Arc::new(Shared {
        url: first.url.clone(),
        generation: AtomicU8::new(1),
        deadline: started + BUDGET,
        progress: (0..WORKERS).map(|_| AtomicUsize::new(0)).collect(),
        first_rounds: AtomicUsize::new(0),
        checked: AtomicUsize::new(0),
        kills: AtomicUsize::new(0),
        stale_not_found: AtomicUsize::new(0),
        refused_connects: AtomicUsize::new(0),
        statuses: Mutex::new(BTreeMap::new()),
        attached: Mutex::new(Vec::new()),
        failures: Mutex::new(Vec::new()),
    });
    let cpu = CpuBackend::new();
    let mut clients: Vec<JoinHandle<()>> = Vec::new();
    for i in 0..WORKERS {
        let (s, cpu) = (Arc::clone(&shared), cpu.clone());
        let rng = StdRng::seed_from_u64(seed ^ (i as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15));
        clients.push(spawn(&shared, format!("worker {i}"), move || {
            worker(i, &s, &cpu, rng)
        }));
    }
    for k in 0..KILLED {
        let s = Arc::clone(&shared);
        clients.push(spawn(&shared, format!("killed client {k}"), move || {
            for generation in 1..=2 {
                if !wait_for_generation(&s, generation) {
                    return;
                }
                if let Err(e) = killed_mid_upload(k, generation, &s) {
                    s.fail(format!("killed client {k} on server {generation}: {e}"));
                }
                if generation == 1 {
                    s.first_rounds.fetch_add(1, SeqCst);
                }
            }
        }));
    }
    {
        let s = Arc::clone(&shared);
        clients.push(spawn(&shared, "pathological client".into(), move || {
            for generation in 1..=2 {
                if !wait_for_generation(&s, generation) {
                    return;
                }
                if let Err(e) = pathological(generation, &s) {
                    s.fail(format!("pathological client on server {generation}: {e}"));
                }
                if generation == 1 {
                    s.first_rounds.fetch_add(1, SeqCst);
                }
            }
        }));
    }
    assert_eq!(clients.len(), CLIENTS);

    // SIGTERM once every worker has checked programs and the other clients have done their
    // round on the first server; the workers keep running programs through the drain.
    wait_until(&shared, "the first server's round", || {
        shared.progress.iter().all(|p| p.load(SeqCst) >= 2)
            && shared.first_rounds.load(SeqCst) == KILLED + 1
    });
    let (exit, drain) = terminate(&mut first);
    assert!(exit.success(), "first server: {exit}\n{}", first.logs());
    shared.generation.store(2, SeqCst);
    let mut second = start(&dir, 2, &first.addr);
    assert_eq!(second.url, shared.url, "restarted on the same port");

    wait_until(&shared, "every client to finish", || {
        clients.iter().all(|c| c.is_finished())
    });
    for c in clients {
        c.join().unwrap();
    }

    // The killed clients' accelerators (and tensors) go when their leases run out.
    let held = second.metric("eia_device_memory_in_use_bytes");
    let waited = Instant::now();
    while second.metric("eia_accelerators_attached") != 0.0
        || second.metric("eia_device_memory_in_use_bytes") != 0.0
    {
        assert!(
            waited.elapsed() < Duration::from_secs(20),
            "accelerators or memory still held 20 s after the clients finished (lease {LEASE_S} s):\n{}",
            common::scrape(second.metrics)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let leaked = second.metric("eia_device_memory_in_use_bytes");
    let (exit2, _) = terminate(&mut second);
    assert!(exit2.success(), "second server: {exit2}\n{}", second.logs());

    let failures = shared.failures.lock().unwrap().clone();
    assert!(
        failures.is_empty(),
        "{} broken guarantees:\n{}",
        failures.len(),
        failures.join("\n")
    );
    for server in [&first, &second] {
        let logs = server.logs();
        assert!(!logs.contains("panicked"), "a panic was logged:\n{logs}");
    }
    let records = usage_records(&dir.join("usage.jsonl"), &shared);
    let attached = shared.attached.lock().unwrap().clone();
    let examples = shared.statuses.lock().unwrap().clone();
    let statuses: BTreeMap<&String, usize> = examples.iter().map(|(k, v)| (k, v.0)).collect();
    let kills = shared.kills.load(SeqCst);
    assert_eq!(kills, 2 * KILLED, "every killed client died mid-upload");
    assert!(
        shared.stale_not_found.load(SeqCst) >= WORKERS,
        "every worker found its old accelerator NOT_FOUND on the restarted server"
    );
    assert_eq!(leaked, 0.0);
    println!(
        "chaos: {CLIENTS} clients ({WORKERS} workers, {KILLED} killed per server, 1 pathological), \
         {kills} kills, 1 restart (drain {:.2} s), {} accelerators attached, {} results checked, \
         {} stale handles NOT_FOUND, {} refused connects, errors by status {statuses:?}, \
         usage records {records:?}, {held} bytes held before the leases ran out, \
         bytes leaked = {leaked}, {:.1} s",
        drain.as_secs_f64(),
        attached.len(),
        shared.checked.load(SeqCst),
        shared.stale_not_found.load(SeqCst),
        shared.refused_connects.load(SeqCst),
        started.elapsed().as_secs_f64()
    );
    for (status, (_, message)) in &examples {
        println!("  {status}, e.g. {message}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// A client thread; a panic in it (a wrong result) is a failure the test reports at once.
fn spawn(s: &Arc<Shared>, name: String, f: impl FnOnce() + Send + 'static) -> JoinHandle<()> {
    let s = Arc::clone(s);
    std::thread::Builder::new()
        .name(name.clone())
        .spawn(move || {
            if let Err(panic) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
                let msg = panic
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| panic.downcast_ref::<&str>().map(|m| m.to_string()))
                    .unwrap_or_default();
                s.fail(format!("{name} panicked: {msg}"));
            }
        })
        .unwrap()
}

/// Waits for `done`, failing at once on a broken guarantee or when the budget runs out.
fn wait_until(s: &Shared, what: &str, mut done: impl FnMut() -> bool) {
    while !done() {
        let failures = s.failures.lock().unwrap().clone();
        assert!(
            failures.is_empty(),
            "while waiting for {what}:\n{}",
            failures.join("\n")
        );
        assert!(!s.late(), "waited {BUDGET:?} for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Waits until server `generation` is the one running (false, with a failure, past the budget).
fn wait_for_generation(s: &Shared, generation: u8) -> bool {
    while s.generation() < generation {
        if s.late() {
            s.fail(format!("server {generation} never came"));
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    true
}

/// Reads the usage log: every accelerator a client was given has exactly one record; the
/// killed clients' accelerators on the second server were reclaimed by their lease. Returns
/// the records counted by why.
fn usage_records(path: &Path, s: &Shared) -> BTreeMap<String, usize> {
    let text = std::fs::read_to_string(path).unwrap();
    let mut why: BTreeMap<u64, Vec<String>> = BTreeMap::new();
    for line in text.lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        why.entry(v["accelerator"].as_u64().unwrap())
            .or_default()
            .push(v["why"].as_str().unwrap().to_string());
    }
    for (id, generation, role) in s.attached.lock().unwrap().iter() {
        let records = why.get(id).cloned().unwrap_or_default();
        assert_eq!(
            records.len(),
            1,
            "{role:?} accelerator {id} (server {generation}): usage records {records:?}"
        );
        if (*role, *generation) == (Role::Killed, 2) {
            assert_eq!(records[0], "lease expired", "killed accelerator {id}");
        }
    }
    let mut counts = BTreeMap::new();
    for w in why.values().flatten() {
        *counts.entry(w.clone()).or_default() += 1;
    }
    counts
}

// ---------------------------------------------------------------------------------------------
// Workers: programs through the crate's client, checked against the CPU backend.

fn worker(i: usize, s: &Shared, cpu: &CpuBackend, mut rng: StdRng) {
    let dtype = [DType::F32, DType::F16][i % 2];
    let config = ClientConfig {
        chunk_bytes: 16 << 10, // uploads of a few KiB stream in several chunks
        connect_timeout: Duration::from_secs(2),
        timeout: CALL,
        ..ClientConfig::default()
    };
    let who = "worker";
    let mut conn: Option<Arc<Connection>> = None;
    let mut current: Option<(RemoteAccelerator, u8)> = None;
    // Accelerators attached on the first server, checked on the second.
    let mut stale = Vec::new();
    let mut after_restart = 0;
    while after_restart < 2 {
        if s.late() {
            s.fail(format!("worker {i} not done within the budget"));
            return;
        }
        let Some((acc, _)) = &current else {
            let c = match &conn {
                Some(c) => Arc::clone(c),
                None => match Connection::connect(&s.url, config.clone()) {
                    Ok(c) => {
                        conn = Some(Arc::clone(&c));
                        c
                    }
                    Err(_) => {
                        s.refused_connects.fetch_add(1, SeqCst);
                        std::thread::sleep(Duration::from_millis(50));
                        continue;
                    }
                },
            };
            let generation = s.generation();
            match c.attach("chaos") {
                Ok(acc) => {
                    s.attached(acc.id(), generation, Role::Worker);
                    current = Some((acc, generation));
                }
                Err(e) => {
                    expect_clear(s, who, &e, &WORKER_STATUSES);
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
            continue;
        };
        // A call that starts after the first server exited can only reach the second.
        let generation = s.generation();
        match program(acc, cpu, &mut rng, dtype) {
            Ok(n) => {
                s.checked.fetch_add(n, SeqCst);
                s.progress[i].fetch_add(1, SeqCst);
                if generation == 2 {
                    after_restart += 1;
                }
            }
            Err(e) => {
                expect_clear(s, who, &e, &WORKER_STATUSES);
                let (acc, attached_on) = current.take().unwrap();
                if attached_on == 1 {
                    stale.push(acc);
                }
            }
        }
    }
    // The restarted server knows nothing of the first one's accelerators.
    for old in stale {
        let mut tries = 0;
        loop {
            match old.usage() {
                Ok(_) => {
                    s.fail(format!(
                        "worker {i}: accelerator {} of the first server answered on the second",
                        old.id()
                    ));
                    break;
                }
                Err(e) if code(&e) == "NotFound" => {
                    s.stale_not_found.fetch_add(1, SeqCst);
                    break;
                }
                Err(e) if code(&e) == "Unavailable" && tries < 50 => {
                    tries += 1;
                    std::thread::sleep(Duration::from_millis(100));
                }
                Err(e) => {
                    s.fail(format!("worker {i}: a stale accelerator got {e}"));
                    break;
                }
            }
        }
    }
    if let Some((acc, _)) = current {
        if let Err(e) = acc.detach() {
            s.fail(format!("worker {i}: detach on the second server: {e}"));
        }
    }
}

/// An error a client saw: counted, and a failure unless its status is one of `allowed`.
fn expect_clear(s: &Shared, who: &str, e: &eia::Error, allowed: &[&str]) {
    let c = code(e);
    s.count(who, &c, &e.to_string());
    if !allowed.contains(&c.as_str()) {
        s.fail(format!("{who}: {c} is not a clear status here: {e}"));
    }
}

/// The result the CPU backend computes for `op` on `inputs`.
fn on_cpu(cpu: &CpuBackend, op: &Op, inputs: &[&HostTensor]) -> eia::Result<HostTensor> {
    let x = inputs
        .iter()
        .map(|h| cpu.upload(h))
        .collect::<eia::Result<Vec<_>>>()?;
    cpu.download(&cpu.apply(op, &x.iter().collect::<Vec<_>>())?)
}

fn check(what: &str, got: &HostTensor, want: &HostTensor) {
    common::assert_close(what, got, &common::f64s(want), want.shape());
}

/// One random program on `acc`, every result checked against the CPU backend; returns how
/// many tensors were checked.
fn program(
    acc: &RemoteAccelerator,
    cpu: &CpuBackend,
    rng: &mut StdRng,
    dtype: DType,
) -> eia::Result<usize> {
    fn r(rng: &mut StdRng, lo: usize, hi: usize) -> usize {
        rng.random_range(lo..hi)
    }
    match r(rng, 0, 3) {
        // GEMM (+ bias, fused ReLU) then Softmax, in one round trip.
        0 => {
            let (b, k, n) = (r(rng, 1, 9), r(rng, 8, 97), r(rng, 4, 65));
            let axis = r(rng, 0, 2) as i64;
            let x = common::random(rng, dtype, &[b, k], -1.0, 1.0);
            let w = common::random(rng, dtype, &[k, n], -1.0, 1.0);
            let c = common::random(rng, dtype, &[n], -1.0, 1.0);
            let gemm = Op::Gemm(Gemm {
                relu: true,
                ..Gemm::default()
            });
            let softmax = Op::Softmax(Softmax { axis });
            let wd = acc.upload(&w)?;
            let cd = acc.upload_owned(c.clone())?;
            let xd = acc.alloc(x.desc())?;
            let h = acc.alloc(&TensorDesc::new(dtype, &[b, n])?)?;
            let y = acc.alloc(h.desc())?;
            let mut p = Program::new();
            p.write(&xd, &x)?
                .apply(&gemm, &[&xd, &wd, &cd], &h)?
                .apply(&softmax, &[&h], &y)?
                .read(&h)?
                .read(&y)?;
            let got = acc.run(&p)?;
            let want_h = on_cpu(cpu, &gemm, &[&x, &w, &c])?;
            check("gemm", &got[0], &want_h);
            check("softmax", &got[1], &on_cpu(cpu, &softmax, &[&want_h])?);
            Ok(2)
        }
        // Conv (+ bias, maybe ReLU) into an output the server allocates, then a global pool.
        1 => {
            let (n, c, h, w, o) = (
                r(rng, 1, 3),
                r(rng, 1, 5),
                r(rng, 3, 13),
                r(rng, 3, 13),
                r(rng, 1, 9),
            );
            let conv = Op::Conv(Conv {
                pads: [1, 1, 1, 1],
                relu: r(rng, 0, 2) == 1,
                ..Conv::default()
            });
            let x = common::random(rng, dtype, &[n, c, h, w], -1.0, 1.0);
            let k = common::random(rng, dtype, &[o, c, 3, 3], -1.0, 1.0);
            let bias = common::random(rng, dtype, &[o], -1.0, 1.0);
            let xd = acc.upload_owned(x.clone())?;
            let kd = acc.upload(&k)?;
            let bd = acc.upload(&bias)?;
            let mut p = Program::new();
            p.apply_new(&conv, &[&xd, &kd, &bd])?;
            let ran = acc.run_all(&p)?;
            let y = &ran.allocated[0];
            let pooled = acc.apply(&Op::GlobalAveragePool, &[y])?;
            let want_y = on_cpu(cpu, &conv, &[&x, &k, &bias])?;
            check("conv", &acc.download(y)?, &want_y);
            let want_p = on_cpu(cpu, &Op::GlobalAveragePool, &[&want_y])?;
            check("global average pool", &acc.download(&pooled)?, &want_p);
            Ok(2)
        }
        // Broadcast Mul then Sigmoid, one op per call.
        _ => {
            let (rows, cols) = (r(rng, 1, 65), r(rng, 1, 257));
            let a = common::random(rng, dtype, &[rows, cols], -2.0, 2.0);
            let b = common::random(rng, dtype, &[cols], -2.0, 2.0);
            let (ad, bd) = (acc.upload(&a)?, acc.upload(&b)?);
            let m = acc.apply(&Op::Mul, &[&ad, &bd])?;
            let y = acc.apply(&Op::Sigmoid, &[&m])?;
            let want = on_cpu(cpu, &Op::Sigmoid, &[&on_cpu(cpu, &Op::Mul, &[&a, &b])?])?;
            check("mul, sigmoid", &acc.download(&y)?, &want);
            Ok(1)
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Raw gRPC clients (the killed and the pathological ones).

type Raw = AcceleratorsClient<Channel>;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// `call`, or an error naming `what` past the call deadline.
async fn within<T>(
    what: &str,
    call: impl std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
) -> Result<T, String> {
    match tokio::time::timeout(CALL, call).await {
        Ok(Ok(r)) => Ok(r.into_inner()),
        Ok(Err(s)) => Err(format!("{what}: {:?}: {}", s.code(), s.message())),
        Err(_) => Err(format!("{what}: no answer within {CALL:?}")),
    }
}

/// `call`'s outcome (OK or its status), or an error naming `what` past the call deadline.
async fn answer<T>(
    what: &str,
    call: impl std::future::Future<Output = Result<T, tonic::Status>>,
) -> Result<Result<(), tonic::Status>, String> {
    tokio::time::timeout(CALL, call)
        .await
        .map(|r| r.map(|_| ()))
        .map_err(|_| format!("{what}: no answer within {CALL:?}"))
}

/// A client of the server running now (retrying while it starts).
async fn connect(s: &Shared) -> Result<Raw, String> {
    loop {
        match tokio::time::timeout(CALL, AcceleratorsClient::connect(s.url.clone())).await {
            Ok(Ok(c)) => {
                return Ok(c
                    .max_decoding_message_size(64 << 20)
                    .max_encoding_message_size(64 << 20))
            }
            _ if !s.late() => {
                s.refused_connects.fetch_add(1, SeqCst);
                tokio::time::sleep(Duration::from_millis(50)).await
            }
            r => return Err(format!("cannot connect to {}: {:?}", s.url, r.map(|_| ()))),
        }
    }
}

async fn attach(c: &mut Raw, s: &Shared, generation: u8, role: Role) -> Result<u64, String> {
    let id = within(
        "attach",
        c.attach(proto::AttachRequest {
            tier: "chaos".into(),
        }),
    )
    .await?
    .accelerator;
    s.attached(id, generation, role);
    Ok(id)
}

async fn memory_used(c: &mut Raw, id: u64) -> Result<u64, String> {
    let usage = within("usage", c.usage(proto::UsageRequest { accelerator: id })).await?;
    Ok(usage.usage.ok_or("usage without a body")?.memory_used)
}

/// Polls the accelerator's memory in use until `done` says so (10 s at most).
async fn memory_until(
    c: &mut Raw,
    id: u64,
    what: &str,
    done: impl Fn(u64) -> bool,
) -> Result<(), String> {
    let started = Instant::now();
    loop {
        let used = memory_used(c, id).await?;
        if done(used) {
            return Ok(());
        }
        if started.elapsed() > Duration::from_secs(10) {
            return Err(format!("{what}: still {used} bytes in use after 10 s"));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn meta(datatype: &str, shape: &[u64]) -> Option<proto::TensorMeta> {
    Some(proto::TensorMeta {
        datatype: datatype.into(),
        shape: shape.to_vec(),
    })
}

fn header(id: u64, datatype: &str, shape: &[u64]) -> Option<proto::UploadHeader> {
    Some(proto::UploadHeader {
        accelerator: id,
        meta: meta(datatype, shape),
    })
}

/// A client that attaches, uploads a whole tensor, then dies in the middle of a 4 MiB upload
/// once the server holds its reservation. The reservation must be released at once; the
/// accelerator and the whole tensor stay until the lease runs out.
fn killed_mid_upload(k: usize, generation: u8, s: &Shared) -> Result<(), String> {
    let victim = runtime();
    let (mut c, id, base, tx, upload) = victim.block_on(async {
        let mut c = connect(s).await?;
        let id = attach(&mut c, s, generation, Role::Killed).await?;
        let whole = proto::UploadChunk {
            header: header(id, "FP32", &[256]),
            data: vec![7u8; 1024].into(),
        };
        within("upload", c.upload(tokio_stream::iter([whole]))).await?;
        let base = memory_used(&mut c, id).await?;
        let (tx, rx) = tokio::sync::mpsc::channel(SENT_CHUNKS);
        for i in 0..SENT_CHUNKS {
            let chunk = proto::UploadChunk {
                header: if i == 0 {
                    header(id, "FP32", &BIG)
                } else {
                    None
                },
                data: vec![i as u8; CHUNK].into(),
            };
            tx.send(chunk).await.map_err(|e| e.to_string())?;
        }
        let mut uploader = c.clone();
        let upload = tokio::spawn(async move {
            uploader
                .upload(tokio_stream::wrappers::ReceiverStream::new(rx))
                .await
        });
        // Mid-upload: the server holds the reservation and is waiting for the rest.
        let want = base + BIG[0] * 4;
        memory_until(&mut c, id, "the reservation", |used| used >= want).await?;
        Ok::<_, String>((c, id, base, tx, upload))
    })?;
    s.kills.fetch_add(1, SeqCst);
    if k.is_multiple_of(2) {
        // The upload stream is reset; the connection stays.
        upload.abort();
        victim.block_on(memory_until(&mut c, id, "after the reset", |u| u == base))?;
        drop(tx);
    } else {
        // The whole client goes: its runtime, its connections.
        drop((upload, c, victim));
        drop(tx);
        let probe = runtime();
        probe.block_on(async {
            let mut c = connect(s).await?;
            memory_until(&mut c, id, "after the connection closed", |u| u == base).await
        })?;
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// The pathological client.

fn op(kind: Kind, inputs: &[u64], output: Option<u64>) -> proto::Op {
    proto::Op {
        kind: Some(kind),
        inputs: inputs.to_vec(),
        output,
        ..Default::default()
    }
}

fn f32_bytes(v: &[f32]) -> bytes::Bytes {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// Pathological requests on a fresh accelerator holding three tensors: each gets the status it
/// should, the accelerator's memory does not change, and a well-formed program on the same
/// tensors then gives the right answer.
fn pathological(generation: u8, s: &Shared) -> Result<(), String> {
    let rt = runtime();
    rt.block_on(async {
        let mut c = connect(s).await?;
        let id = attach(&mut c, s, generation, Role::Pathological).await?;
        let alloc = proto::AllocRequest {
            accelerator: id,
            tensors: vec![
                meta("FP32", &[4, 8]).unwrap(),
                meta("FP32", &[8, 4]).unwrap(),
                meta("FP32", &[4, 4]).unwrap(),
            ],
        };
        let t = within("alloc", c.alloc(alloc)).await?.tensors;
        let (a, b, y) = (t[0], t[1], t[2]);
        let base = memory_used(&mut c, id).await?;
        let run = |ops: Vec<proto::Op>| proto::RunRequest {
            accelerator: id,
            ops,
            ..Default::default()
        };
        let gemm = || Kind::Gemm(proto::GemmOp::default());
        let relu = || Kind::Relu(proto::ReluOp {});
        let unknown = a ^ b ^ y ^ 1;
        let too_big = (MAX_MESSAGE_MIB << 20) + 1;
        use Code::{
            InvalidArgument as Invalid, NotFound, Ok as Fine, OutOfRange, ResourceExhausted,
        };
        let programs: Vec<(&str, proto::RunRequest, &[Code])> = vec![
            ("an empty program", run(vec![]), &[Fine]),
            (
                "an op without a kind",
                run(vec![proto::Op {
                    kind: None,
                    inputs: vec![a],
                    output: Some(y),
                    ..Default::default()
                }]),
                &[Invalid],
            ),
            (
                "a GEMM of mismatched shapes",
                run(vec![op(gemm(), &[a, a], Some(y))]),
                &[Invalid],
            ),
            (
                "an output of the wrong shape",
                run(vec![op(relu(), &[a], Some(y))]),
                &[Invalid],
            ),
            (
                "an unknown input handle",
                run(vec![op(gemm(), &[a, unknown], Some(y))]),
                &[NotFound],
            ),
            (
                "an unknown output handle",
                run(vec![op(gemm(), &[a, b], Some(unknown))]),
                &[NotFound],
            ),
            (
                "an op that is its own input",
                run(vec![op(relu(), &[y], Some(y))]),
                &[Invalid],
            ),
            (
                "a tensor freed and used",
                proto::RunRequest {
                    free: vec![y],
                    ..run(vec![op(gemm(), &[a, b], Some(y))])
                },
                &[NotFound],
            ),
            (
                "a write of the wrong length",
                proto::RunRequest {
                    writes: vec![proto::TensorWrite {
                        tensor: a,
                        data: vec![0; 3].into(),
                    }],
                    ..run(vec![])
                },
                &[Invalid],
            ),
            (
                "a write over the message limit",
                proto::RunRequest {
                    writes: vec![proto::TensorWrite {
                        tensor: a,
                        data: vec![0; too_big].into(),
                    }],
                    ..run(vec![])
                },
                &[OutOfRange],
            ),
            (
                "a Sum of nothing",
                run(vec![op(Kind::Sum(proto::SumOp {}), &[], Some(y))]),
                &[Invalid],
            ),
            (
                "a conv of stride 0",
                run(vec![op(
                    Kind::Conv(proto::ConvOp {
                        strides: vec![0, 0],
                        ..Default::default()
                    }),
                    &[a, b],
                    Some(y),
                )]),
                &[Invalid],
            ),
            (
                "a reshape with two -1",
                run(vec![op(
                    Kind::Reshape(proto::ReshapeOp {
                        shape: vec![-1, -1],
                        allowzero: false,
                    }),
                    &[a],
                    None,
                )]),
                &[Invalid],
            ),
            (
                "a concat on axis 99",
                run(vec![op(
                    Kind::Concat(proto::ConcatOp { axis: Some(99) }),
                    &[a, b],
                    None,
                )]),
                &[Invalid],
            ),
            (
                "10,000 ops, the last naming an unknown tensor",
                {
                    let mut ops = vec![op(gemm(), &[a, b], Some(y)); 9_999];
                    ops.push(op(relu(), &[unknown], None));
                    run(ops)
                },
                &[NotFound],
            ),
            (
                "another accelerator's id",
                proto::RunRequest {
                    accelerator: id ^ 1,
                    ..run(vec![op(gemm(), &[a, b], Some(y))])
                },
                &[NotFound],
            ),
        ];
        let mut seen = Vec::new();
        let mut expect = |what: &str, got: Result<(), tonic::Status>, allowed: &[Code]| {
            let code = got.as_ref().err().map_or(Fine, |st| st.code());
            let message = got.as_ref().err().map_or("", |st| st.message());
            s.count("pathological", &format!("{code:?}"), message);
            if !allowed.contains(&code) {
                seen.push(format!("{what}: {got:?}, expected one of {allowed:?}"));
            }
        };
        for (what, program, allowed) in programs {
            expect(what, answer(what, c.run(program)).await?, allowed);
        }
        for (what, shape, datatype, allowed) in [
            (
                "an alloc of 2^62 elements",
                vec![1u64 << 31, 1 << 31],
                "FP32",
                &[Invalid, ResourceExhausted][..],
            ),
            (
                "an alloc whose size overflows",
                vec![u64::MAX, 2],
                "FP16",
                &[Invalid][..],
            ),
            (
                "an alloc of an unknown datatype",
                vec![4],
                "INT8",
                &[Invalid][..],
            ),
        ] {
            let alloc = proto::AllocRequest {
                accelerator: id,
                tensors: vec![meta(datatype, &shape).unwrap()],
            };
            expect(what, answer(what, c.alloc(alloc)).await?, allowed);
        }
        let chunk = |header, data: Vec<u8>| proto::UploadChunk {
            header,
            data: data.into(),
        };
        let uploads: Vec<(&str, Vec<proto::UploadChunk>, &[Code])> = vec![
            (
                "an upload declaring 4 TiB",
                vec![chunk(header(id, "FP32", &[1 << 40]), vec![0; 16])],
                &[ResourceExhausted],
            ),
            ("an upload with no messages", vec![], &[Invalid]),
            (
                "an upload without a header",
                vec![chunk(None, vec![0; 16])],
                &[Invalid],
            ),
            (
                "an upload with two headers",
                vec![
                    chunk(header(id, "FP32", &[4]), vec![0; 8]),
                    chunk(header(id, "FP32", &[4]), vec![0; 8]),
                ],
                &[Invalid],
            ),
            (
                "an upload past its size",
                vec![
                    chunk(header(id, "FP32", &[4]), vec![0; 12]),
                    chunk(None, vec![0; 12]),
                ],
                &[Invalid],
            ),
            (
                "an upload short of its size",
                vec![chunk(header(id, "FP32", &[4]), vec![0; 12])],
                &[Invalid],
            ),
            (
                "an upload to an unknown accelerator",
                vec![chunk(header(id ^ 1, "FP32", &[4]), vec![0; 16])],
                &[NotFound],
            ),
        ];
        for (what, chunks, allowed) in uploads {
            let r = answer(what, c.upload(tokio_stream::iter(chunks))).await?;
            expect(what, r, allowed);
        }
        let what = "a download of an unknown tensor";
        let download = proto::DownloadRequest {
            accelerator: id,
            tensor: unknown,
        };
        let r = answer(what, async {
            let mut stream = c.download(download).await?.into_inner();
            while stream.message().await?.is_some() {}
            Ok(())
        });
        expect(what, r.await?, &[NotFound]);
        let what = "a free naming an unknown tensor";
        let free = proto::FreeRequest {
            accelerator: id,
            tensors: vec![a, unknown],
        };
        expect(what, answer(what, c.free(free)).await?, &[NotFound]);
        if !seen.is_empty() {
            return Err(seen.join("\n"));
        }

        // Nothing changed: the same memory, and the tensors still compute.
        let used = memory_used(&mut c, id).await?;
        if used != base {
            return Err(format!("memory in use went from {base} to {used} bytes"));
        }
        let (xa, xb): (Vec<f32>, Vec<f32>) = (
            (0..32).map(|i| i as f32 / 8.0 - 2.0).collect(),
            (0..32).map(|i| 1.5 - i as f32 / 16.0).collect(),
        );
        let ran = within(
            "a well-formed program",
            c.run(proto::RunRequest {
                accelerator: id,
                writes: vec![
                    proto::TensorWrite {
                        tensor: a,
                        data: f32_bytes(&xa),
                    },
                    proto::TensorWrite {
                        tensor: b,
                        data: f32_bytes(&xb),
                    },
                ],
                ops: vec![op(gemm(), &[a, b], Some(y))],
                reads: vec![y],
                ..Default::default()
            }),
        )
        .await?;
        let cpu = CpuBackend::new();
        let ha = HostTensor::from_f32(DType::F32, &[4, 8], &xa).map_err(|e| e.to_string())?;
        let hb = HostTensor::from_f32(DType::F32, &[8, 4], &xb).map_err(|e| e.to_string())?;
        let want =
            on_cpu(&cpu, &Op::Gemm(Gemm::default()), &[&ha, &hb]).map_err(|e| e.to_string())?;
        let got = HostTensor::from_bytes(DType::F32, &[4, 4], &ran.reads[0])
            .map_err(|e| e.to_string())?;
        check(
            "the well-formed program after the pathological ones",
            &got,
            &want,
        );
        within("detach", c.detach(proto::DetachRequest { accelerator: id })).await?;
        Ok(())
    })
}

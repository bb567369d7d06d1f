//! A host of several devices on loopback: placement across them, the Capacity RPC against
//! attaches, resizes and detaches, draining, what Capacity does not reveal, and `eia serve
//! --cpu-devices` / `--devices`.

use std::process::Command;
use std::time::{Duration, Instant};

use eia::accelerator::{Capacity, Device, DeviceConfig, Pool, Tiers};
use eia::ops::Gemm;
use eia::rpc::capacity::ServerCapacity;
use eia::rpc::{auth, ClientConfig, Connection, ServerConfig, ServerHandle, Tokens};
use eia::{Backend, CpuBackend, DType, Error, HostTensor, PerDType};

mod common;
use common::serve::Serve;

const GIB: u64 = 1 << 30;

/// Built-in tiers on 3 devices of 2 FP32 / 16 FP16 TFLOPS and 8 GiB each: two eia2.medium
/// (1, 8, 2 GiB) or one eia2.large (2, 16, 4 GiB) fit on a device, an eia2.xlarge nowhere.
fn pool(n: usize, tiers: Tiers) -> Pool<CpuBackend> {
    let config = DeviceConfig {
        tiers,
        capacity: Some(Capacity {
            tflops: PerDType::new(2.0, 16.0),
            memory: 8 * GIB,
        }),
        ..DeviceConfig::default()
    };
    let devices = (0..n)
        .map(|_| Device::new(CpuBackend::with_threads(1).unwrap(), config.clone()).unwrap())
        .collect();
    Pool::new(devices).unwrap()
}

fn start(pool: Pool<CpuBackend>, config: ServerConfig) -> ServerHandle {
    eia::rpc::spawn_pool("127.0.0.1:0".parse().unwrap(), pool, config).unwrap()
}

fn connect(url: &str, token: Option<&str>) -> std::sync::Arc<Connection> {
    let config = ClientConfig {
        token: token.map(str::to_string),
        ..ClientConfig::default()
    };
    Connection::connect(url, config).unwrap()
}

/// Each device's (accelerators, admitted FP32, admitted FP16, admitted memory).
fn admitted(c: &ServerCapacity) -> Vec<(usize, f64, f64, u64)> {
    c.devices
        .iter()
        .map(|d| {
            let l = &d.load;
            (
                l.accelerators,
                l.admitted_tflops[DType::F32],
                l.admitted_tflops[DType::F16],
                l.admitted_memory,
            )
        })
        .collect()
}

fn tier<'a>(c: &'a ServerCapacity, name: &str) -> &'a eia::rpc::capacity::TierAdmission {
    c.tiers.iter().find(|t| t.tier == name).unwrap()
}

#[test]
fn capacity_agrees_with_attaches_resizes_and_detaches() {
    let server = start(pool(3, Tiers::builtin()), ServerConfig::default());
    let conn = connect(&server.url(false), None);
    let c = conn.capacity().unwrap();
    assert!(c.ready && !c.draining && !c.overcommit);
    assert_eq!(c.devices.len(), 3);
    for (i, d) in c.devices.iter().enumerate() {
        assert_eq!((d.load.index, d.backend.as_str()), (i, "cpu"));
        assert_eq!(d.load.capacity.tflops[DType::F32], 2.0);
        assert_eq!(
            (d.load.free_tflops(DType::F32), d.load.free_memory()),
            (2.0, 8 * GIB)
        );
        assert!(d.admits.contains(&"eia2.large".to_string()));
        assert!(!d.admits.contains(&"eia2.xlarge".to_string()));
    }
    assert_eq!(admitted(&c), vec![(0, 0.0, 0.0, 0); 3]);
    assert_eq!(
        (
            tier(&c, "eia2.medium").admissible,
            tier(&c, "eia2.medium").device
        ),
        (true, Some(0))
    );
    assert!(!tier(&c, "eia2.xlarge").admissible && tier(&c, "eia2.xlarge").device.is_none());

    // Six eia2.medium spread over the devices by headroom (ties: lowest index); Capacity
    // predicts each one's device and agrees after each.
    let mut held = Vec::new();
    for k in 0..6 {
        let before = conn.capacity().unwrap();
        let predicted = tier(&before, "eia2.medium").device.unwrap();
        assert_eq!(predicted, k % 3, "attach {k}");
        held.push(conn.attach("eia2.medium").unwrap());
        let after = conn.capacity().unwrap();
        let mut want = admitted(&before);
        let d = &mut want[predicted];
        *d = (d.0 + 1, d.1 + 1.0, d.2 + 8.0, d.3 + 2 * GIB);
        assert_eq!(admitted(&after), want, "attach {k}");
        for d in &after.devices {
            assert!(d.load.admitted_tflops[DType::F32] <= d.load.capacity.tflops[DType::F32]);
        }
    }
    let full = conn.capacity().unwrap();
    assert_eq!(admitted(&full), vec![(2, 2.0, 16.0, 4 * GIB); 3]);
    assert!(full.devices.iter().all(|d| d.admits.is_empty()));
    assert!(!full.admits("eia2.medium"));

    // Every device is full: a resize to eia2.large cannot fit on held[0]'s device (0); it is
    // refused with RESOURCE_EXHAUSTED and changes nothing.
    let e = held[0].resize("eia2.large").unwrap_err();
    assert!(
        matches!(&e, Error::Remote { code, msg } if code == "ResourceExhausted" && msg.contains("does not fit")),
        "{e}"
    );
    assert_eq!(conn.capacity().unwrap(), full);
    assert_eq!(held[0].tier().name(), "eia2.medium");
    assert_eq!(held[0].usage().unwrap().tier, "eia2.medium");

    // Detaching held[3] (device 0) frees its rate there; held[0] then resizes to eia2.large on
    // device 0 — its own device, the only one with room.
    held.remove(3).detach().unwrap();
    let freed = conn.capacity().unwrap();
    assert_eq!(admitted(&freed)[0], (1, 1.0, 8.0, 2 * GIB));
    assert_eq!(tier(&freed, "eia2.medium").device, Some(0));
    held[0].resize("eia2.large").unwrap();
    let resized = conn.capacity().unwrap();
    assert_eq!(admitted(&resized)[0], (1, 2.0, 16.0, 4 * GIB));
    assert_eq!(admitted(&resized)[1..], admitted(&freed)[1..]);

    // Memory held by tensors shows as used on the device it is on.
    let x = held[1]
        .upload(&HostTensor::full(DType::F32, &[256, 256], 0.5).unwrap())
        .unwrap();
    let used = conn.capacity().unwrap().devices[1].load.used_memory;
    assert!(used >= 256 * 256 * 4, "{used}");
    drop(x);
    for a in held {
        a.detach().unwrap();
    }
    let after = conn.capacity().unwrap();
    assert_eq!(admitted(&after), vec![(0, 0.0, 0.0, 0); 3]);
    assert!(after.devices.iter().all(|d| d.load.used_memory == 0));
}

#[test]
fn placement_fills_every_device_before_refusing_mixed_tiers() {
    // Tiers of 1, 2 and 3 FP32 TFLOPS on 3 devices of 4: 4 + 2 + 2 + 1 + 1 + 1 + 1 = 12.
    let tiers = Tiers::with_toml(
        "fleet",
        "[[tier]]\nname = \"one\"\nfp32_tflops = 1.0\nfp16_tflops = 1.0\nmemory_mib = 1\n\
         [[tier]]\nname = \"two\"\nfp32_tflops = 2.0\nfp16_tflops = 2.0\nmemory_mib = 1\n\
         [[tier]]\nname = \"three\"\nfp32_tflops = 3.0\nfp16_tflops = 3.0\nmemory_mib = 1\n",
    )
    .unwrap();
    let config = DeviceConfig {
        tiers,
        capacity: Some(Capacity {
            tflops: PerDType::new(4.0, 4.0),
            memory: GIB,
        }),
        ..DeviceConfig::default()
    };
    let devices = (0..3)
        .map(|_| Device::new(CpuBackend::with_threads(1).unwrap(), config.clone()).unwrap())
        .collect();
    let server = start(Pool::new(devices).unwrap(), ServerConfig::default());
    let conn = connect(&server.url(false), None);
    let mut held = Vec::new();
    // The largest first (as a fleet would place them), each where it has most room.
    for t in ["three", "three", "three", "one", "one", "one"] {
        held.push(conn.attach(t).unwrap());
        for d in conn.capacity().unwrap().devices {
            assert!(d.load.admitted_tflops[DType::F32] <= 4.0, "{d:?}");
        }
    }
    let c = conn.capacity().unwrap();
    assert_eq!(
        admitted(&c).iter().map(|d| d.1).collect::<Vec<_>>(),
        [4.0; 3]
    );
    let e = conn.attach("one").err().unwrap().to_string();
    assert!(e.contains("fits on none of the 3 devices"), "{e}");
    // Small first: they spread, so a "two" still fits after six "one"s.
    for a in held.drain(..) {
        a.detach().unwrap();
    }
    for _ in 0..6 {
        held.push(conn.attach("one").unwrap());
    }
    assert_eq!(
        admitted(&conn.capacity().unwrap())
            .iter()
            .map(|d| d.0)
            .collect::<Vec<_>>(),
        [2, 2, 2]
    );
    for _ in 0..3 {
        held.push(conn.attach("two").unwrap());
    }
    assert!(!conn.capacity().unwrap().admits("one"));
}

#[test]
fn concurrent_attaches_fill_every_device_and_none_past_its_capacity() {
    // Room for 2 eia2.medium on each of 3 devices; 12 clients attach at once.
    let server = start(pool(3, Tiers::builtin()), ServerConfig::default());
    let url = server.url(false);
    let results: Vec<_> = std::thread::scope(|s| {
        let clients: Vec<_> = (0..12)
            .map(|_| {
                let url = url.clone();
                s.spawn(move || connect(&url, None).attach("eia2.medium"))
            })
            .collect();
        clients.into_iter().map(|c| c.join().unwrap()).collect()
    });
    let (held, refused): (Vec<_>, Vec<_>) = results.into_iter().partition(Result::is_ok);
    assert_eq!((held.len(), refused.len()), (6, 6));
    for e in refused {
        let e = e.err().unwrap();
        assert!(
            matches!(&e, Error::Remote { code, msg } if code == "ResourceExhausted" && msg.contains("fits on none of the 3 devices")),
            "{e}"
        );
    }
    let c = connect(&url, None).capacity().unwrap();
    assert_eq!(admitted(&c), vec![(2, 2.0, 16.0, 4 * GIB); 3]);
}

#[test]
fn draining_shows_in_capacity() {
    // "slow": a 64³ FP32 GEMM costs 1 s of accelerator time.
    let tiers = Tiers::with_toml(
        "fleet",
        "[[tier]]\nname = \"slow\"\nfp32_tflops = 0.000000524288\nfp16_tflops = 0.000000524288\nmemory_mib = 64\n",
    )
    .unwrap();
    let server = start(pool(2, tiers), ServerConfig::default());
    let url = server.url(false);
    let conn = connect(&url, None);
    let acc = conn.attach("slow").unwrap();
    let x = acc
        .upload(&HostTensor::full(DType::F32, &[64, 64], 0.5).unwrap())
        .unwrap();
    acc.gemm(&Gemm::default(), &x, &x, None).unwrap();
    // The second GEMM waits out the first one's meter debt: a call in flight.
    let in_flight = std::thread::spawn(move || {
        let y = acc.gemm(&Gemm::default(), &x, &x, None).map(|_| ());
        (y, acc)
    });
    std::thread::sleep(Duration::from_millis(200));
    assert!(conn.capacity().unwrap().ready);
    let drain = std::thread::spawn(move || server.drain(Duration::from_secs(5)));
    let started = Instant::now();
    let seen = loop {
        let c = conn.capacity().unwrap();
        if c.draining {
            break c;
        }
        assert!(started.elapsed() < Duration::from_secs(5), "no drain seen");
        std::thread::sleep(Duration::from_millis(5));
    };
    assert!(!seen.ready);
    assert!(seen
        .tiers
        .iter()
        .all(|t| !t.admissible && t.device.is_none()));
    assert_eq!(
        seen.devices
            .iter()
            .map(|d| d.load.accelerators)
            .sum::<usize>(),
        1
    );
    let (ran, _acc) = in_flight.join().unwrap();
    ran.unwrap();
    drain.join().unwrap().unwrap();
}

#[test]
fn capacity_reveals_no_tenant_and_needs_a_token() {
    let tokens = Tokens::from_toml(
        "tokens",
        &format!(
            "[[token]]\nname = \"alice\"\nsha256 = \"{}\"\ntiers = [\"*\"]\nmax_accelerators = 1\n\
             [[token]]\nname = \"mallory\"\nsha256 = \"{}\"\ntiers = [\"eia2.medium\"]\nmax_accelerators = 4\n",
            auth::hash("alice-secret"),
            auth::hash("mallory-secret")
        ),
    )
    .unwrap();
    let server = start(
        pool(2, Tiers::builtin()),
        ServerConfig {
            tokens: Some(tokens),
            ..ServerConfig::default()
        },
    );
    let url = server.url(false);
    let e = connect(&url, None).capacity().unwrap_err();
    assert!(
        matches!(&e, Error::Remote { code, .. } if code == "Unauthenticated"),
        "{e}"
    );
    let e = connect(&url, Some("wrong")).capacity().unwrap_err();
    assert!(
        matches!(&e, Error::Remote { code, .. } if code == "Unauthenticated"),
        "{e}"
    );

    let alice = connect(&url, Some("alice-secret"));
    let a = alice.attach("eia2.large").unwrap();
    let t = a
        .upload(&HostTensor::full(DType::F32, &[32, 32], 1.0).unwrap())
        .unwrap();
    // Alice is at her limit: nothing is admissible for her, though the server has room.
    let mine = alice.capacity().unwrap();
    assert!(mine.tiers.iter().all(|t| !t.admissible));
    assert!(mine.devices[1].admits.contains(&"eia2.large".to_string()));

    let mallory = connect(&url, Some("mallory-secret"));
    let seen = mallory.capacity().unwrap();
    // The load shows (one accelerator of 2 FP32 TFLOPS on device 0), nothing of whose it is.
    assert_eq!(admitted(&seen)[0], (1, 2.0, 16.0, 4 * GIB));
    let text = format!("{seen:?}");
    for secret in [
        a.id().to_string(),
        format!("{:x}", a.id()),
        "alice".to_string(),
        auth::hash("alice-secret"),
    ] {
        assert!(!text.contains(&secret), "{secret} in {text}");
    }
    // Mallory's own answer: only the tier her token may attach is admissible.
    for t in &seen.tiers {
        assert_eq!(t.admissible, t.tier == "eia2.medium", "{t:?}");
    }
    assert_eq!(tier(&seen, "eia2.medium").device, Some(1));
    drop(t);
    a.detach().unwrap();
}

/// `eia serve --cpu-devices 3`: three devices of a third of the configured capacity each;
/// attaches spread over them.
#[test]
fn eia_serve_splits_the_cpu_and_places_attaches() {
    let dir = std::env::temp_dir().join(format!("eia-fleet-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut serve = Serve::start(
        &dir,
        0,
        &[
            "--listen",
            "127.0.0.1:0",
            "--cpu-devices",
            "3",
            "--capacity-fp32",
            "3",
            "--capacity-fp16",
            "24",
        ],
    );
    // The device lines follow the address lines `Serve::start` waits for.
    let started = Instant::now();
    let printed = loop {
        let printed = std::fs::read_to_string(dir.join("serve-0.out")).unwrap();
        if printed.lines().filter(|l| l.starts_with("device ")).count() == 3 {
            break printed;
        }
        assert!(started.elapsed() < Duration::from_secs(30), "{printed}");
        std::thread::sleep(Duration::from_millis(20));
    };
    let lines: Vec<_> = printed
        .lines()
        .filter(|l| l.starts_with("eia serve") || l.starts_with("device "))
        .collect();
    assert!(lines[0].contains("3 devices"), "{lines:?}");
    for (i, l) in lines[1..].iter().enumerate() {
        assert!(
            l.starts_with(&format!(
                "device {i}: cpu, capacity (configured): 1.000 FP32 TFLOPS, 8.000 FP16 TFLOPS"
            )),
            "{l}"
        );
    }
    let url = &serve.url;
    let conn = connect(url, None);
    let held: Vec<_> = (0..3)
        .map(|_| conn.attach("eia2.medium").unwrap())
        .collect();
    let c = conn.capacity().unwrap();
    assert_eq!(
        admitted(&c).iter().map(|d| d.0).collect::<Vec<_>>(),
        [1, 1, 1]
    );
    assert!(
        !c.admits("eia2.medium"),
        "each device's 1 FP32 TFLOPS is taken"
    );
    drop(held);
    serve.signal("-TERM");
    assert!(
        serve.wait(Duration::from_secs(30)).success(),
        "{}",
        serve.logs()
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn eia_serve_refuses_a_missing_gpu() {
    let out = Command::new(env!("CARGO_BIN_EXE_eia"))
        .args(["serve", "--listen", "127.0.0.1:0", "--devices", "0,999"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--devices"), "{err}");
    assert!(
        err.contains("GPU 999") || err.contains("cannot serve GPU 0"),
        "names the GPU it cannot serve: {err}"
    );
}

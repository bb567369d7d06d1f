//! An `eia serve` child process for the tests that run the binary as operators do: CPU backend,
//! metrics on a free loopback port, JSON logs to a file; killed (SIGKILL) if the test ends while
//! it runs.

use std::ffi::OsStr;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// A running `eia serve`.
pub struct Serve {
    pub child: Child,
    /// `http://HOST:PORT` it serves on.
    pub url: String,
    /// `HOST:PORT` (what `--listen` takes to restart on the same port).
    pub addr: String,
    pub metrics: SocketAddr,
    log: PathBuf,
}

impl Serve {
    /// Starts `eia serve --backend cpu --metrics 127.0.0.1:0 --log-format json` plus `args`
    /// (which name `--listen`), stdout to `dir/serve-{n}.out` and logs to `dir/serve-{n}.log`,
    /// and waits (up to 30 s) until it prints where it listens and serves metrics.
    pub fn start<S: AsRef<OsStr>>(dir: &Path, n: usize, args: &[S]) -> Serve {
        let out = dir.join(format!("serve-{n}.out"));
        let log = dir.join(format!("serve-{n}.log"));
        let child = Command::new(env!("CARGO_BIN_EXE_eia"))
            .args(["serve", "--backend", "cpu"])
            .args(["--metrics", "127.0.0.1:0", "--log-format", "json"])
            .args(args)
            .stdout(std::fs::File::create(&out).unwrap())
            .stderr(std::fs::File::create(&log).unwrap())
            .stdin(Stdio::null())
            .spawn()
            .unwrap();
        let mut serve = Serve {
            child,
            url: String::new(),
            addr: String::new(),
            metrics: "127.0.0.1:0".parse().unwrap(),
            log,
        };
        let started = Instant::now();
        loop {
            let text = std::fs::read_to_string(&out).unwrap();
            let url = |marker: &str| {
                text.lines()
                    .filter(|l| l.contains(marker))
                    .flat_map(|l| l.split_whitespace())
                    .find(|w| w.starts_with("http://"))
                    .map(str::to_string)
            };
            if let (Some(url), Some(metrics)) = (url("listening on"), url("/metrics")) {
                serve.addr = url.trim_start_matches("http://").to_string();
                serve.url = url;
                serve.metrics = metrics
                    .trim_start_matches("http://")
                    .trim_end_matches("/metrics")
                    .parse()
                    .unwrap();
                return serve;
            }
            if let Some(status) = serve.child.try_wait().unwrap() {
                panic!(
                    "eia serve exited ({status}) before listening:\n{}",
                    serve.logs()
                );
            }
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "eia serve did not listen within 30 s:\n{}",
                serve.logs()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Its logs so far.
    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Sends it `signal` (`-TERM`, `-KILL`).
    pub fn signal(&self, signal: &str) {
        let sent = Command::new("kill")
            .args([signal, &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(sent.success());
    }

    /// Waits (up to `within`) for it to exit.
    pub fn wait(&mut self, within: Duration) -> ExitStatus {
        let started = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                started.elapsed() < within,
                "eia serve still running after {within:?}:\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// A metric without labels from `/metrics`.
    pub fn metric(&self, name: &str) -> f64 {
        let text = super::scrape(self.metrics);
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or_else(|| panic!("no {name} in /metrics:\n{text}"))
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

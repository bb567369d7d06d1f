//! A fleet: one client, many `eia serve` hosts. [`Fleet::connect`] takes a comma-separated list
//! of server URLs, or a URL whose host name resolves to many addresses (what a Kubernetes
//! headless Service gives: one per pod), or both; names are resolved with tokio's resolver and
//! resolved again whenever no host can attach. [`Fleet::attach`] attaches an accelerator on the
//! host where its tier fits best and returns a plain [`RemoteAccelerator`].
//!
//! Each connected host's `grpc.health.v1` status is checked every [`HEALTH_EVERY`] (a unary
//! Check: a Watch stream would hold a draining server's graceful shutdown open): a host that
//! says it is draining, or fails two checks running, is skipped by attaches until it says
//! SERVING again, and a fleet [`crate::model::FleetSession`] leaves it before its next
//! inference. A call
//! on an accelerator whose host died or drained fails with [`Error::Unavailable`] naming the
//! host (retryable); every call has the [`ClientConfig`] deadlines, so none hangs.

use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tonic::codegen::http::Uri;
use tonic_health::pb::{health_check_response::ServingStatus, health_client::HealthClient};

use super::client::{ClientConfig, Connection, RemoteAccelerator};
use crate::accelerator::tier::canonical;
use crate::accelerator::Tier;
use crate::error::{Error, Result};
use crate::sync::lock;

/// How often a connected host's health is checked.
pub const HEALTH_EVERY: Duration = Duration::from_millis(250);

/// Many servers, one client: attaches go where the tier fits best.
pub struct Fleet {
    targets: Vec<Target>,
    config: ClientConfig,
    /// Runs the resolver.
    runtime: tokio::runtime::Runtime,
    hosts: Mutex<Vec<Arc<Host>>>,
}

/// One entry of the fleet's spec: a URL whose host is an address or a name to resolve.
#[derive(Debug, Clone)]
struct Target {
    url: String,
    scheme: String,
    host: String,
    port: u16,
    /// The host is a name (resolved to each of its addresses), not an IP address.
    name: bool,
}

/// One server of the fleet: its URL, its connection once made, and its health.
struct Host {
    url: String,
    /// The name a resolved address answers TLS for (its DNS name).
    tls_domain: Option<String>,
    /// Its connection and tiers, once connected.
    conn: Mutex<Option<(Arc<Connection>, Vec<Tier>)>>,
    /// Whether its health checks say SERVING (true until a connection says otherwise).
    serving: Arc<AtomicBool>,
}

impl Fleet {
    /// A fleet of the servers in `spec`: URLs (`http://host:port`, or `https://` with
    /// `config.ca_pem`) separated by commas; a host name stands for every address it resolves
    /// to. Nothing is connected yet; a name that resolves to nothing is an error.
    pub fn connect(spec: &str, config: ClientConfig) -> Result<Arc<Fleet>> {
        let targets = spec
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(target)
            .collect::<Result<Vec<_>>>()?;
        if targets.is_empty() {
            return Err(Error::Network(format!(
                "no server URL in {spec:?} (give http://HOST:PORT, comma-separated)"
            )));
        }
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| Error::Network(format!("cannot start the resolver: {e}")))?;
        let fleet = Fleet {
            targets,
            config,
            runtime,
            hosts: Mutex::new(Vec::new()),
        };
        fleet.resolve()?;
        Ok(Arc::new(fleet))
    }

    /// The URLs of its hosts, as last resolved.
    pub fn hosts(&self) -> Vec<String> {
        lock(&self.hosts).iter().map(|h| h.url.clone()).collect()
    }

    /// Whether the host at `url` is serving as far as its health checks say (a host never
    /// connected counts as serving; one not in the fleet does not).
    pub fn serving(&self, url: &str) -> bool {
        lock(&self.hosts)
            .iter()
            .find(|h| h.url == url)
            .is_some_and(|h| h.serving.load(Ordering::Acquire))
    }

    /// Resolves every name again; keeps the connections of hosts still listed. Fails only if
    /// no host at all is left.
    fn resolve(&self) -> Result<()> {
        let mut urls: Vec<(String, Option<String>)> = Vec::new();
        let mut failures = Vec::new();
        for t in &self.targets {
            if !t.name {
                urls.push((t.url.clone(), None));
                continue;
            }
            let lookup = tokio::net::lookup_host((t.host.as_str(), t.port));
            let found = self.runtime.block_on(async {
                tokio::time::timeout(self.config.connect_timeout, lookup).await
            });
            match found {
                Ok(Ok(addrs)) => {
                    let before = urls.len();
                    for a in addrs {
                        let ip = match a.ip() {
                            IpAddr::V4(ip) => ip.to_string(),
                            IpAddr::V6(ip) => format!("[{ip}]"),
                        };
                        let url = format!("{}://{ip}:{}", t.scheme, a.port());
                        if !urls.iter().any(|(u, _)| *u == url) {
                            urls.push((url, Some(t.host.clone())));
                        }
                    }
                    if urls.len() == before {
                        failures.push(format!("{} resolves to no address", t.host));
                    }
                }
                Ok(Err(e)) => failures.push(format!("cannot resolve {}: {e}", t.host)),
                Err(_) => failures.push(format!(
                    "cannot resolve {} within {:?}",
                    t.host, self.config.connect_timeout
                )),
            }
        }
        if urls.is_empty() {
            return Err(Error::Network(format!(
                "no server address: {}",
                failures.join("; ")
            )));
        }
        let mut hosts = lock(&self.hosts);
        let old = std::mem::take(&mut *hosts);
        *hosts = urls
            .into_iter()
            .map(|(url, tls_domain)| {
                old.iter()
                    .find(|h| h.url == url)
                    .cloned()
                    .unwrap_or_else(|| {
                        Arc::new(Host {
                            url,
                            tls_domain,
                            conn: Mutex::new(None),
                            serving: Arc::new(AtomicBool::new(true)),
                        })
                    })
            })
            .collect();
        Ok(())
    }

    /// Attaches an accelerator of the tier called `tier` on the host where it fits best.
    /// Every host is asked its capacity at once (each answer bounded by the connect timeout);
    /// hosts that are draining, unreachable or cannot admit the tier are skipped, the others
    /// tried by headroom for the tier — how many more of it the device the server would place it
    /// on could admit ([`crate::accelerator::Load::headroom`]) — most first, then servers
    /// without the Capacity RPC in list order, until one admits it. When none does, names are
    /// resolved again and the new hosts tried; then the error is [`Error::NoHost`], listing
    /// every host and why it refused.
    pub fn attach(&self, tier: &str) -> Result<RemoteAccelerator> {
        let names = self.targets.iter().any(|t| t.name);
        let mut refusals = Vec::new();
        for round in 0..1 + usize::from(names) {
            if round > 0 {
                if let Err(e) = self.resolve() {
                    refusals.push(Refusal::retry("resolver", e.to_string()));
                    break;
                }
                refusals.clear();
            }
            let hosts = lock(&self.hosts).clone();
            let offers: Vec<Offer> = std::thread::scope(|scope| {
                let asks: Vec<_> = hosts
                    .iter()
                    .map(|h| scope.spawn(|| self.offer(h, tier)))
                    .collect();
                asks.into_iter()
                    .zip(&hosts)
                    .map(|(ask, h)| {
                        ask.join().unwrap_or_else(|_| {
                            Offer::Refused(Refusal::retry(&h.url, "asking its capacity panicked"))
                        })
                    })
                    .collect()
            });
            let mut ranked = Vec::new();
            let mut unranked = Vec::new();
            for (host, offer) in hosts.iter().zip(offers) {
                match offer {
                    Offer::Headroom(conn, room) => ranked.push((room, host, conn)),
                    Offer::Unknown(conn) => unranked.push((host, conn)),
                    Offer::Refused(r) => refusals.push(r),
                }
            }
            // Most headroom first; a stable sort keeps list order among equals (to a millionth
            // of an accelerator: servers sum rates in no fixed order, so equal loads differ in
            // their last bits).
            ranked.sort_by(|a, b| (b.0 * 1e6).round().total_cmp(&(a.0 * 1e6).round()));
            let order = ranked.into_iter().map(|(_, h, c)| (h, c)).chain(unranked);
            for (host, conn) in order {
                match conn.attach(tier) {
                    Ok(a) => return Ok(a),
                    Err(e) => refusals.push(Refusal::from_error(&host.url, e)),
                }
            }
        }
        Err(Error::NoHost {
            tier: tier.to_string(),
            retryable: refusals.iter().any(|r| r.retryable),
            refusals: refusals
                .into_iter()
                .map(|r| format!("{}: {}", r.host, r.why))
                .collect(),
        })
    }

    /// What `host` offers for `tier`: how much room (from its Capacity), that it cannot say
    /// (a server without the RPC), or why it will not take it.
    fn offer(&self, host: &Host, tier: &str) -> Offer {
        if !host.serving.load(Ordering::Acquire) {
            return Offer::Refused(Refusal::retry(&host.url, "draining or gone (its health)"));
        }
        let (conn, tiers) = match self.connection(host) {
            Ok(c) => c,
            Err(e) => return Offer::Refused(Refusal::from_error(&host.url, e)),
        };
        let capacity = match conn.capacity_within(Some(self.config.connect_timeout)) {
            Ok(c) => c,
            Err(Error::Remote { code, .. }) if code == "Unimplemented" => {
                return Offer::Unknown(conn)
            }
            Err(e) => return Offer::Refused(Refusal::from_error(&host.url, e)),
        };
        let name = canonical(tier);
        let refuse = |why: String, retryable| {
            Offer::Refused(Refusal {
                host: host.url.clone(),
                why,
                retryable,
            })
        };
        if capacity.draining || !capacity.ready {
            host.serving.store(false, Ordering::Release);
            return refuse("draining (its Capacity)".into(), true);
        }
        let (Some(t), Some(admission)) = (
            tiers.iter().find(|t| canonical(t.name()) == name),
            capacity.tiers.iter().find(|a| canonical(&a.tier) == name),
        ) else {
            let offered: Vec<&str> = tiers.iter().map(Tier::name).collect();
            return refuse(
                format!("offers no tier {tier} (it offers {})", offered.join(", ")),
                false,
            );
        };
        let device = admission
            .device
            .and_then(|i| capacity.devices.iter().find(|d| d.load.index == i));
        match device {
            Some(d) if admission.admissible => Offer::Headroom(conn, d.load.headroom(t)),
            _ => {
                let free = |dtype| {
                    capacity
                        .devices
                        .iter()
                        .map(|d| d.load.free_tflops(dtype))
                        .fold(0.0, f64::max)
                };
                refuse(
                    format!(
                        "cannot admit {} now (its Capacity: most free on a device {} FP32 / {} FP16 TFLOPS)",
                        t.name(),
                        free(crate::DType::F32),
                        free(crate::DType::F16)
                    ),
                    true,
                )
            }
        }
    }

    /// The host's connection and tiers, fetched (and its health followed) on first use.
    fn connection(&self, host: &Host) -> Result<(Arc<Connection>, Vec<Tier>)> {
        let mut conn = lock(&host.conn);
        if let Some((c, tiers)) = &*conn {
            return Ok((Arc::clone(c), tiers.clone()));
        }
        let config = ClientConfig {
            tls_domain: self.config.tls_domain.clone().or(host.tls_domain.clone()),
            ..self.config.clone()
        };
        let c = Connection::connect(&host.url, config)?;
        let tiers = c.tiers()?;
        let serving = Arc::clone(&host.serving);
        let deadline = self.config.connect_timeout;
        c.spawn(|channel| follow(HealthClient::new(channel), serving, deadline));
        *conn = Some((Arc::clone(&c), tiers.clone()));
        Ok((c, tiers))
    }
}

/// What a host offers for a tier.
enum Offer {
    /// Room for this many more accelerators of the tier on the device it would land on.
    Headroom(Arc<Connection>, f64),
    /// A server without the Capacity RPC: tried after the others.
    Unknown(Arc<Connection>),
    Refused(Refusal),
}

/// Follows a host's health, checked every [`HEALTH_EVERY`] (each check bounded by `deadline`):
/// `serving` is false from its first answer other than SERVING (a drain) or its second failed
/// check running (gone), true again from its next SERVING.
async fn follow(
    mut health: HealthClient<tonic::transport::Channel>,
    serving: Arc<AtomicBool>,
    deadline: Duration,
) {
    let mut failed = 0;
    loop {
        let mut request = tonic::Request::new(tonic_health::pb::HealthCheckRequest {
            service: String::new(),
        });
        request.set_timeout(deadline);
        match health.check(request).await {
            Ok(r) => {
                failed = 0;
                let up = r.into_inner().status() == ServingStatus::Serving;
                serving.store(up, Ordering::Release);
            }
            Err(_) => {
                failed += 1;
                if failed >= 2 {
                    serving.store(false, Ordering::Release);
                }
            }
        }
        tokio::time::sleep(HEALTH_EVERY).await;
    }
}

/// Why one host did not attach.
struct Refusal {
    host: String,
    why: String,
    /// Whether it may attach later (unreachable, draining, full) rather than never (unknown
    /// tier, token refused).
    retryable: bool,
}

impl Refusal {
    fn retry(host: &str, why: impl Into<String>) -> Refusal {
        Refusal {
            host: host.to_string(),
            why: why.into(),
            retryable: true,
        }
    }

    fn from_error(host: &str, e: Error) -> Refusal {
        let retryable = match &e {
            Error::Network(_) | Error::Unavailable { .. } | Error::Capacity(_) => true,
            Error::Remote { code, .. } => code == "ResourceExhausted",
            _ => false,
        };
        let why = match e {
            Error::Unavailable { msg, .. } => format!("unavailable: {msg}"),
            e => e.to_string(),
        };
        Refusal {
            host: host.to_string(),
            why,
            retryable,
        }
    }
}

/// One URL of a fleet's spec.
fn target(url: &str) -> Result<Target> {
    let bad = |why: &str| Error::Network(format!("bad server URL {url:?}: {why}"));
    let uri: Uri = url.parse().map_err(|e| bad(&format!("{e}")))?;
    let scheme = uri
        .scheme_str()
        .filter(|s| matches!(*s, "http" | "https"))
        .ok_or_else(|| bad("give http://HOST:PORT or https://HOST:PORT"))?
        .to_string();
    let host = uri.host().ok_or_else(|| bad("no host"))?;
    let port = uri
        .port_u16()
        .unwrap_or(if scheme == "https" { 443 } else { 80 });
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    Ok(Target {
        url: format!("{scheme}://{host}:{port}"),
        name: bare.parse::<IpAddr>().is_err(),
        host: bare.to_string(),
        scheme,
        port,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_addresses_or_names() {
        let t = target("http://127.0.0.1:8470").unwrap();
        assert!(!t.name);
        assert_eq!(t.url, "http://127.0.0.1:8470");
        let t = target("https://eia.default.svc:8470").unwrap();
        assert!(t.name);
        assert_eq!((t.host.as_str(), t.port), ("eia.default.svc", 8470));
        let t = target("http://[::1]:9").unwrap();
        assert!(!t.name && t.host == "::1");
        for bad in ["127.0.0.1:8470", "ftp://x:1", "http://"] {
            assert!(target(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_name_stands_for_each_address_and_a_bad_spec_is_refused() {
        let fleet = Fleet::connect(
            "http://localhost:1, http://127.0.0.1:2",
            ClientConfig::default(),
        )
        .unwrap();
        let hosts = fleet.hosts();
        assert!(
            hosts.contains(&"http://127.0.0.1:1".to_string()),
            "{hosts:?}"
        );
        assert!(
            hosts.contains(&"http://127.0.0.1:2".to_string()),
            "{hosts:?}"
        );
        assert!(Fleet::connect(" , ", ClientConfig::default()).is_err());
        let e = Fleet::connect("http://no-such-host.invalid:1", ClientConfig::default())
            .err()
            .unwrap();
        assert!(e.to_string().contains("no-such-host.invalid"), "{e}");
    }

    #[test]
    fn when_no_host_attaches_every_host_and_its_reason_is_named() {
        let config = ClientConfig {
            connect_timeout: Duration::from_secs(2),
            ..ClientConfig::default()
        };
        // Ports nothing listens on (bound, then closed).
        let free = || {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let (a, b) = (free(), free());
        let fleet = Fleet::connect(
            &format!("http://127.0.0.1:{a},http://127.0.0.1:{b}"),
            config,
        )
        .unwrap();
        let e = fleet.attach("eia2.medium").err().unwrap();
        assert!(e.is_retryable(), "{e}");
        let text = e.to_string();
        for port in [a, b] {
            assert!(text.contains(&format!("127.0.0.1:{port}")), "{text}");
        }
    }
}

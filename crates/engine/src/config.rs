//! [`EngineBuilder`]: what an engine is built with.

use std::net::SocketAddr;
use std::time::Duration;

use cloudproxy_params::{HttpProxy, ProxyServer};
use cloudproxy_proto::AppId;
use cloudproxy_proto::session::SilenceDetection;
use cloudproxy_transport::dial::DialPolicy;

use crate::credential::Credential;
use crate::engine::Engine;
use crate::error::EngineError;
use crate::ladder::RungMemory;
use cloudproxy_transport::http_proxy::ProxyEnv;
use cloudproxy_transport::tls::TlsTrust;

/// Everything fixed at build time.
#[derive(Debug, Clone)]
pub(crate) struct Config {
    pub(crate) app_id: AppId,
    pub(crate) credential: Credential,
    pub(crate) edge_tcp: SocketAddr,
    pub(crate) edge_udp: SocketAddr,
    pub(crate) default_server: ProxyServer,
    pub(crate) direct_timeout: Duration,
    pub(crate) handshake_timeout: Duration,
    pub(crate) keepalive_interval: Duration,
    pub(crate) keepalive_timeout: Duration,
    pub(crate) reconnect_timeout: Duration,
    pub(crate) silence: Option<SilenceDetection>,
    pub(crate) dial: DialPolicy,
    pub(crate) dns_timeout: Duration,
    pub(crate) udp_probe_timeout: Duration,
    pub(crate) media_queue: usize,
    /// What the proxy's TLS certificate is checked against.
    pub(crate) tls_trust: TlsTrust,
    /// The HTTP proxy of the builder.
    pub(crate) http_proxy: Option<HttpProxy>,
    /// `HTTPS_PROXY` and `NO_PROXY`, read at build time (empty when the
    /// builder said not to).
    pub(crate) proxy_env: ProxyEnv,
    /// Which rung won last, per network (shared by the engine's joins).
    pub(crate) rungs: RungMemory,
}

/// Builds an [`Engine`]: the app id and credential the proxy knows the app
/// by, and the media network's addresses. Every other setting has a
/// documented default.
///
/// ```
/// use std::time::Duration;
/// use cloudproxy_engine::{Credential, Engine};
///
/// let credential: Credential = "5e3a9c0d41b2f7e6a8c9d0e1f2a3b4c5".parse()?;
/// let engine = Engine::builder("my-app", credential)
///     .media_network("198.51.100.1:7000".parse()?, "198.51.100.1:7000".parse()?)
///     .default_proxy_domain("proxy.example.com")
///     .direct_timeout(Duration::from_secs(2))
///     .build()?;
/// assert_eq!(engine.parameter("rtc.enable_proxy").as_deref(), Some("false"));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone)]
#[must_use = "call build() to get an Engine"]
pub struct EngineBuilder {
    app_id: String,
    credential: Credential,
    media_network: Option<(SocketAddr, SocketAddr)>,
    default_domain: String,
    direct_timeout: Duration,
    handshake_timeout: Duration,
    keepalive: (Duration, Duration),
    reconnect_timeout: Duration,
    silence: Option<SilenceDetection>,
    dial: DialPolicy,
    dns_timeout: Duration,
    udp_probe_timeout: Duration,
    media_queue: usize,
    tls_trust: TlsTrust,
    http_proxy: Option<HttpProxy>,
    proxy_from_env: bool,
}

impl EngineBuilder {
    pub(crate) fn new(app_id: String, credential: Credential) -> Self {
        Self {
            app_id,
            credential,
            media_network: None,
            default_domain: cloudproxy_params::DEFAULT_PROXY_DOMAIN.to_owned(),
            direct_timeout: Duration::from_secs(3),
            handshake_timeout: Duration::from_secs(10),
            keepalive: (Duration::from_secs(15), Duration::from_secs(45)),
            reconnect_timeout: Duration::from_secs(30),
            silence: Some(SilenceDetection::default()),
            dial: DialPolicy::default(),
            dns_timeout: Duration::from_secs(2),
            udp_probe_timeout: Duration::from_secs(2),
            media_queue: 256,
            tls_trust: TlsTrust::default(),
            http_proxy: None,
            proxy_from_env: true,
        }
    }

    /// The media network's message (TCP) and media (UDP) addresses. Required.
    /// Through the proxy these are the relay's destinations, so the proxy's
    /// allowlist must allow them.
    pub fn media_network(mut self, tcp: SocketAddr, udp: SocketAddr) -> Self {
        self.media_network = Some((tcp, udp));
        self
    }

    /// The domain of the default proxy server `[1, <domain>, 0]`, used when
    /// the proxy is enabled and no `rtc.proxy_server` was set. Default: the
    /// guide's `ap-proxy.agora.io`.
    pub fn default_proxy_domain(mut self, domain: impl Into<String>) -> Self {
        self.default_domain = domain.into();
        self
    }

    /// How long the direct path may take to join before `ProxyMode::Auto`
    /// falls back to the proxy (and before `ProxyMode::Off` gives up).
    /// Default 3 s.
    pub fn direct_timeout(mut self, timeout: Duration) -> Self {
        self.direct_timeout = timeout;
        self
    }

    /// How long the media network may take to answer a `Join` through the
    /// proxy. Default 10 s.
    pub fn handshake_timeout(mut self, timeout: Duration) -> Self {
        self.handshake_timeout = timeout;
        self
    }

    /// A `Ping` goes out after `interval` without sending anything; the
    /// connection counts as lost (and is re-established) after `timeout`
    /// without receiving anything. Defaults 15 s and 45 s
    /// (`docs/protocol.md` §9.5); `interval` must be shorter than `timeout`.
    pub fn keepalive(mut self, interval: Duration, timeout: Duration) -> Self {
        self.keepalive = (interval, timeout);
        self
    }

    /// Early detection of a relay or edge that goes silent mid-call without
    /// closing (black-holed, crashed host, dead route): the silence is
    /// suspected after `suspect_after` when the edge should have spoken (a
    /// message sent waits for its acknowledgement, or the edge had been
    /// talking often), confirmed by a `Ping` that gets no answer within
    /// `probe_timeout`, and the connection is re-established through the
    /// next node ([`StateReason::RelaySilent`](crate::StateReason::RelaySilent)).
    /// An idle call is never suspected: it stays on the keepalive timeout.
    /// `None` turns it off. Default
    /// [`SilenceDetection::SUSPECT_AFTER`] (700 ms) and
    /// [`SilenceDetection::PROBE_TIMEOUT`] (800 ms): a silent node is left
    /// 1.5 s after its last word, plus the reconnect. Shorter thresholds
    /// detect sooner but mistake a congested path for a dead one more often.
    pub fn silence_detection(mut self, detection: Option<SilenceDetection>) -> Self {
        self.silence = detection;
        self
    }

    /// How long the engine keeps trying to re-establish a lost connection
    /// before it reports `Failed`. Default 30 s, the edge's member linger
    /// time: within it the membership resumes without losing a message.
    pub fn reconnect_timeout(mut self, timeout: Duration) -> Self {
        self.reconnect_timeout = timeout;
        self
    }

    /// How proxy addresses are raced (stagger, per-attempt and overall
    /// timeouts). Default: 250 ms stagger, 3 s per attempt, 10 s in all, so a
    /// dead address costs at most one stagger when it refuses and one
    /// attempt timeout when it drops packets.
    pub fn dial_policy(mut self, policy: DialPolicy) -> Self {
        self.dial = policy;
        self
    }

    /// Deadline for resolving a type-1 proxy server name. Default 2 s.
    pub fn dns_timeout(mut self, timeout: Duration) -> Self {
        self.dns_timeout = timeout;
        self
    }

    /// How long the proxy's UDP relay may stay silent before UDP counts as
    /// blocked (then media falls back to TCP, or `ForceUdp` fails).
    /// Default 2 s.
    pub fn udp_probe_timeout(mut self, timeout: Duration) -> Self {
        self.udp_probe_timeout = timeout;
        self
    }

    /// What the proxy's TLS certificate (on the TLS rungs) is checked
    /// against: the system roots by default; a pinned certificate
    /// fingerprint or a private CA for private deployments
    /// (`TlsTrust::from_pin("AB:CD:…")`, `TlsTrust::pinned_ca_pem(pem)`).
    /// The parameter `rtc.proxy_tls_pin` replaces it.
    pub fn tls_trust(mut self, trust: TlsTrust) -> Self {
        self.tls_trust = trust;
        self
    }

    /// An explicit HTTP proxy for the last rung of the ladder (TLS through
    /// `CONNECT`), e.g. `HttpProxy::parse("http://user:pw@proxy:3128")`.
    /// Without it the engine uses `HTTPS_PROXY` / `https_proxy` unless the
    /// proxy server matches `NO_PROXY` (see
    /// [`EngineBuilder::http_proxy_from_env`]). The parameter
    /// `rtc.http_proxy` replaces it.
    pub fn http_proxy(mut self, proxy: HttpProxy) -> Self {
        self.http_proxy = Some(proxy);
        self
    }

    /// Whether `HTTPS_PROXY` / `https_proxy` and `NO_PROXY` / `no_proxy` are
    /// read at [`build`](Self::build) when no HTTP proxy is given. Default
    /// true.
    pub fn http_proxy_from_env(mut self, read: bool) -> Self {
        self.proxy_from_env = read;
        self
    }

    /// Checks the settings and builds the engine. Needs no runtime; the
    /// engine's calls must run inside a tokio runtime.
    ///
    /// # Errors
    /// [`EngineError::InvalidConfig`] naming the setting: an app id the
    /// protocol cannot carry (1–64 printable ASCII characters, no space), an
    /// empty credential, no media network, an invalid default domain, or a
    /// keepalive interval not shorter than its timeout, or an `HTTPS_PROXY`
    /// that is not an `http://[user:password@]host:port` URL.
    pub fn build(self) -> Result<Engine, EngineError> {
        let app_id = AppId::new(self.app_id.clone()).map_err(|e| EngineError::InvalidConfig {
            what: "app_id",
            expected: "1 to 64 printable ASCII characters without spaces",
            found: format!("{:?} ({e})", self.app_id),
        })?;
        if self.credential.is_empty() {
            return Err(EngineError::InvalidConfig {
                what: "credential",
                expected: "the app secret (non-empty)",
                found: "an empty credential".into(),
            });
        }
        let Some((edge_tcp, edge_udp)) = self.media_network else {
            return Err(EngineError::InvalidConfig {
                what: "media_network",
                expected: "the media network's TCP and UDP addresses",
                found: "none (call EngineBuilder::media_network)".into(),
            });
        };
        let default_server = ProxyServer::domain(self.default_domain.clone(), 0).map_err(|e| {
            EngineError::InvalidConfig {
                what: "default_proxy_domain",
                expected: "a host name",
                found: format!("{:?} ({e})", self.default_domain),
            }
        })?;
        let (keepalive_interval, keepalive_timeout) = self.keepalive;
        if keepalive_interval.is_zero() || keepalive_interval >= keepalive_timeout {
            return Err(EngineError::InvalidConfig {
                what: "keepalive",
                expected: "a non-zero interval shorter than the timeout",
                found: format!("interval {keepalive_interval:?}, timeout {keepalive_timeout:?}"),
            });
        }
        let proxy_env = if self.proxy_from_env {
            ProxyEnv::from_process()
        } else {
            ProxyEnv::default()
        };
        if let Some(url) = &proxy_env.https_proxy {
            cloudproxy_transport::http_proxy::HttpProxy::parse(url).map_err(|e| {
                EngineError::InvalidConfig {
                    what: "HTTPS_PROXY (environment)",
                    expected: "http://[user:password@]host:port",
                    found: e.to_string(),
                }
            })?;
        }
        Ok(Engine::from_config(Config {
            app_id,
            credential: self.credential,
            edge_tcp,
            edge_udp,
            default_server,
            direct_timeout: self.direct_timeout,
            handshake_timeout: self.handshake_timeout,
            keepalive_interval,
            keepalive_timeout,
            reconnect_timeout: self.reconnect_timeout,
            silence: self.silence,
            dial: self.dial,
            dns_timeout: self.dns_timeout,
            udp_probe_timeout: self.udp_probe_timeout,
            media_queue: self.media_queue.max(1),
            tls_trust: self.tls_trust,
            http_proxy: self.http_proxy,
            proxy_env,
            rungs: RungMemory::default(),
        }))
    }
}

//! The connection: one TLS channel per hsmd endpoint (one daemon, or the replicas of a
//! cluster), shared by the service clients, and the retry policy of the typed calls.
//!
//! A tonic `Channel` multiplexes calls over one HTTP/2 connection and is cheap to clone,
//! so the accessors hand out fresh generated clients over the channel of the endpoint in
//! use. The typed convenience methods live in `calls.rs`; they retry as `retry.rs` says
//! (the raw generated clients do not), and a retry after a connection failure or
//! UNAVAILABLE goes to the next endpoint.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

use crate::error::ClientError;
use crate::profile::{Profile, ProfileError};
use crate::retry::{self, Idempotency, RetryNotice, RetryPolicy, Route};
use crate::v1::audit_service_client::AuditServiceClient;
use crate::v1::certificate_service_client::CertificateServiceClient;
use crate::v1::image_signing_service_client::ImageSigningServiceClient;
use crate::v1::key_service_client::KeyServiceClient;
use crate::v1::signing_policy_service_client::SigningPolicyServiceClient;
use crate::v1::token_service_client::TokenServiceClient;

/// How long to wait for TCP + TLS + HTTP/2 set-up before giving up.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Called before each retry (e.g. to print it).
pub type RetryObserver = Arc<dyn Fn(&RetryNotice) + Send + Sync>;

/// A connection to hsmd: one daemon, or several replicas of one cluster (the profile's
/// `endpoints`). Clone it freely: clones share the channels, the endpoint in use and the
/// retry counter.
///
/// **Fail-over.** The client holds one channel per endpoint, each connecting lazily (on
/// its first call) and reconnecting by itself. It starts on the *first* endpoint, not a
/// random one: the order is the operator's preference (the nearest replica first, say),
/// and every client behaves the same, which keeps logs, tests and `hsmctl -v` easy to
/// follow; spreading clients over replicas is a load balancer's job, or that of
/// profiles listing the replicas in different orders. It stays on an endpoint while
/// calls succeed. When a typed call's try fails and [`retry::route`] sends the retry
/// elsewhere (connection refused, TLS handshake failure, connection lost, UNAVAILABLE;
/// not RATE_LIMITED, which stays), the client moves to the next endpoint, round robin,
/// for this call and every later one (of all clones), and retries there after the usual
/// backoff. Calls that are not idempotent move only when their try surely never
/// reached a server ([`Idempotency`]).
#[derive(Clone)]
pub struct Client {
    replicas: Arc<Replicas>,
    retry: RetryPolicy,
    retries: Arc<AtomicU64>,
    observer: Option<RetryObserver>,
}

/// The endpoints of a client and the one in use.
struct Replicas {
    /// Never empty.
    slots: Vec<Replica>,
    /// Index into `slots` of the endpoint calls go to.
    current: AtomicUsize,
}

/// One endpoint and its channel.
struct Replica {
    endpoint: String,
    channel: Channel,
}

impl Replicas {
    fn new(slots: Vec<Replica>, current: usize) -> Replicas {
        assert!(!slots.is_empty(), "a client needs at least one endpoint");
        Replicas {
            current: AtomicUsize::new(current % slots.len()),
            slots,
        }
    }

    fn current(&self) -> usize {
        self.current.load(Ordering::Acquire)
    }

    /// Moves on from `from` (the endpoint a failed try used) to the next one and returns
    /// the endpoint now in use. When another call has already moved on from `from`, its
    /// choice stands: concurrent failures on one dead endpoint skip it once, not once each.
    fn move_on(&self, from: usize) -> usize {
        let next = (from + 1) % self.slots.len();
        match self
            .current
            .compare_exchange(from, next, Ordering::AcqRel, Ordering::Acquire)
        {
            Ok(_) => next,
            Err(now) => now,
        }
    }
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("endpoints", &self.endpoints())
            .field("endpoint", &self.endpoint())
            .field("retry", &self.retry)
            .field("retries", &self.retries())
            .finish_non_exhaustive()
    }
}

impl Client {
    /// Connects to the profile's endpoints ([`Profile::endpoint_list`]) over mutual TLS:
    /// the server certificate must chain to `ca_cert` and carry `server_name`;
    /// `client_cert`/`client_key` identify us.
    ///
    /// The first endpoint that accepts a connection is connected at once (so an
    /// unreachable hsmd is reported here, as [`ClientError::Connect`], and not after the
    /// retries of the first call); the client starts there. The other endpoints connect
    /// when a fail-over first needs them. Use [`Client::connect_lazy`] to connect nothing
    /// up front.
    pub async fn connect(profile: &Profile) -> Result<Client, ClientError> {
        let endpoints = endpoints(profile).await?;
        let mut failures = Vec::new();
        let mut connected = None;
        for (i, (name, endpoint)) in endpoints.iter().enumerate() {
            match endpoint.connect().await {
                Ok(channel) => {
                    connected = Some((i, channel));
                    break;
                }
                Err(e) => failures.push(ClientError::connect(name, &e)),
            }
        }
        let Some((start, channel)) = connected else {
            return Err(all_failed(failures));
        };
        let mut first = Some(channel);
        let slots = endpoints
            .into_iter()
            .enumerate()
            .map(|(i, (name, endpoint))| {
                let connected = if i == start { first.take() } else { None };
                Replica {
                    channel: connected.unwrap_or_else(|| endpoint.connect_lazy()),
                    endpoint: name,
                }
            })
            .collect();
        Ok(Client::from_replicas(Replicas::new(slots, start)).with_retry(profile.retry.clone()))
    }

    /// Like [`Client::connect`], but connects nothing up front: every endpoint's channel
    /// connects on its first call (an unreachable endpoint then shows as UNAVAILABLE on
    /// the call, and is failed over from). Only the profile's PEM files are read.
    pub async fn connect_lazy(profile: &Profile) -> Result<Client, ClientError> {
        let slots = endpoints(profile)
            .await?
            .into_iter()
            .map(|(name, endpoint)| Replica {
                channel: endpoint.connect_lazy(),
                endpoint: name,
            })
            .collect();
        Ok(Client::from_replicas(Replicas::new(slots, 0)).with_retry(profile.retry.clone()))
    }

    /// Wraps an existing channel (e.g. one built with custom settings), with the
    /// default retry policy. Its [`Client::endpoint`] is empty.
    pub fn from_channel(channel: Channel) -> Client {
        Client::from_channels([(String::new(), channel)])
    }

    /// Wraps existing channels, one per endpoint (named for retry notices and
    /// [`Client::endpoint`]), in fail-over order, with the default retry policy. The
    /// client starts on the first.
    ///
    /// # Panics
    ///
    /// When `channels` is empty.
    pub fn from_channels(channels: impl IntoIterator<Item = (String, Channel)>) -> Client {
        let slots = channels
            .into_iter()
            .map(|(endpoint, channel)| Replica { endpoint, channel })
            .collect();
        Client::from_replicas(Replicas::new(slots, 0))
    }

    fn from_replicas(replicas: Replicas) -> Client {
        Client {
            replicas: Arc::new(replicas),
            retry: RetryPolicy::default(),
            retries: Arc::default(),
            observer: None,
        }
    }

    /// Sets the retry policy of the typed calls.
    pub fn with_retry(mut self, policy: RetryPolicy) -> Client {
        self.retry = policy;
        self
    }

    /// Calls `observer` before every retry.
    pub fn with_retry_observer(mut self, observer: RetryObserver) -> Client {
        self.observer = Some(observer);
        self
    }

    /// The retry policy of the typed calls.
    pub fn retry_policy(&self) -> &RetryPolicy {
        &self.retry
    }

    /// Retries made so far by this client and its clones.
    pub fn retries(&self) -> u64 {
        self.retries.load(Ordering::Relaxed)
    }

    /// Every endpoint of this client, in fail-over order.
    pub fn endpoints(&self) -> Vec<&str> {
        let slots = &self.replicas.slots;
        slots.iter().map(|r| r.endpoint.as_str()).collect()
    }

    /// The endpoint calls go to now.
    pub fn endpoint(&self) -> &str {
        &self.replica().endpoint
    }

    fn replica(&self) -> &Replica {
        &self.replicas.slots[self.replicas.current()]
    }

    /// Runs one call under the retry policy: `f` makes a fresh try each time it is
    /// called (e.g. `|| { let mut c = client.keys(); let r = req.clone(); async move {
    /// c.sign(r).await } }`), over the endpoint in use when it is called, which a retry
    /// may have moved on; `call` names it for observers, and decides its
    /// [`Idempotency`] ([`Idempotency::of_call`]: `CreateKey` and `RotateKey` are not
    /// idempotent, everything else is; use [`Client::with_retries_as`] to say otherwise).
    pub async fn with_retries<T, F, Fut>(&self, call: &'static str, f: F) -> Result<T, ClientError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, tonic::Status>>,
    {
        self.with_retries_as(call, Idempotency::of_call(call), f)
            .await
    }

    /// [`Client::with_retries`] for a call whose idempotency the caller knows (a
    /// CreateKey with an idempotency token is [`Idempotency::Idempotent`]).
    pub async fn with_retries_as<T, F, Fut>(
        &self,
        call: &'static str,
        idempotency: Idempotency,
        mut f: F,
    ) -> Result<T, ClientError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, tonic::Status>>,
    {
        let notify = |n: &RetryNotice| {
            self.retries.fetch_add(1, Ordering::Relaxed);
            if let Some(o) = &self.observer {
                o(n);
            }
        };
        // The endpoint the latest try went to (f picks its channel when called).
        let used = AtomicUsize::new(self.replicas.current());
        let go = |route: Route| {
            let from = used.load(Ordering::Relaxed);
            let to = match route {
                Route::Same => return None,
                Route::Next => self.replicas.move_on(from),
            };
            (to != from).then(|| self.replicas.slots[to].endpoint.clone())
        };
        let tries = || {
            used.store(self.replicas.current(), Ordering::Relaxed);
            f()
        };
        retry::run_routed(&self.retry, call, idempotency, &notify, &go, tries)
            .await
            .map_err(ClientError::from)
    }

    /// The channel of the endpoint in use.
    pub fn channel(&self) -> &Channel {
        &self.replica().channel
    }

    /// A KeyService client over the channel of the endpoint in use.
    pub fn keys(&self) -> KeyServiceClient<Channel> {
        KeyServiceClient::new(self.channel().clone())
    }

    /// An AuditService client over the channel of the endpoint in use.
    pub fn audit(&self) -> AuditServiceClient<Channel> {
        AuditServiceClient::new(self.channel().clone())
    }

    /// A TokenService client over the channel of the endpoint in use.
    pub fn token(&self) -> TokenServiceClient<Channel> {
        TokenServiceClient::new(self.channel().clone())
    }

    /// A CertificateService client over the channel of the endpoint in use.
    pub fn certs(&self) -> CertificateServiceClient<Channel> {
        CertificateServiceClient::new(self.channel().clone())
    }

    /// A SigningPolicyService client (image signature policies) over the channel of the
    /// endpoint in use.
    pub fn policies(&self) -> SigningPolicyServiceClient<Channel> {
        SigningPolicyServiceClient::new(self.channel().clone())
    }

    /// An ImageSigningService client (signing and verifying images) over the channel of
    /// the endpoint in use.
    pub fn images(&self) -> ImageSigningServiceClient<Channel> {
        ImageSigningServiceClient::new(self.channel().clone())
    }
}

/// The connect error when no endpoint could be reached: the one endpoint's error as it
/// was, or every endpoint's in one.
fn all_failed(mut failures: Vec<ClientError>) -> ClientError {
    if failures.len() == 1 {
        return failures.remove(0);
    }
    let mut endpoints = Vec::new();
    let mut details = Vec::new();
    for failure in failures {
        match failure {
            ClientError::Connect { endpoint, detail } => {
                details.push(format!("{endpoint}: {detail}"));
                endpoints.push(endpoint);
            }
            other => return other,
        }
    }
    ClientError::Connect {
        endpoint: format!("any of {}", endpoints.join(", ")),
        detail: details.join("; "),
    }
}

/// The tonic endpoints of a profile ([`Profile::endpoint_list`], each named as written),
/// with the TLS settings and certificates they share loaded.
async fn endpoints(profile: &Profile) -> Result<Vec<(String, Endpoint)>, ClientError> {
    // tonic builds its rustls config with ring itself, but anything else in the
    // process using rustls needs a default provider; installing twice is harmless.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let uris = profile
        .endpoint_list()
        .into_iter()
        .map(|name| Ok((name, endpoint_uri(name)?)))
        .collect::<Result<Vec<_>, ProfileError>>()?;
    let ca = read_pem("ca_cert", &profile.ca_cert).await?;
    let cert = read_pem("client_cert", &profile.client_cert).await?;
    let key = read_pem("client_key", &profile.client_key).await?;
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca))
        .identity(Identity::from_pem(cert, key))
        .domain_name(profile.server_name.clone());
    let mut out = Vec::new();
    for (name, uri) in uris {
        let endpoint = Endpoint::from_shared(uri)
            .and_then(|e| e.connect_timeout(CONNECT_TIMEOUT).tls_config(tls.clone()))
            .map_err(|e| ClientError::connect(name, &e))?;
        out.push((name.to_string(), endpoint));
    }
    Ok(out)
}

/// Normalizes an endpoint: `host:port` gets `https://`; `http://` is refused because
/// hsmd only speaks TLS.
fn endpoint_uri(endpoint: &str) -> Result<String, ProfileError> {
    let bad = |problem: &str| ProfileError::Endpoint {
        endpoint: endpoint.to_string(),
        problem: problem.to_string(),
    };
    let uri = match endpoint.split_once("://") {
        None => format!("https://{endpoint}"),
        Some(("https", _)) => endpoint.to_string(),
        Some(_) => return Err(bad("hsmd only speaks TLS: use https://host:port")),
    };
    if uri.len() <= "https://".len() {
        return Err(bad("no host"));
    }
    Ok(uri)
}

async fn read_pem(what: &'static str, path: &std::path::Path) -> Result<Vec<u8>, ProfileError> {
    tokio::fs::read(path)
        .await
        .map_err(|source| ProfileError::ReadPem {
            what,
            path: path.to_path_buf(),
            source,
        })
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;
    use std::sync::atomic::AtomicU32;

    use tokio_stream::wrappers::TcpListenerStream;
    use tonic::transport::Server;
    use tonic::{Code, Request, Response, Status};
    use tonic_types::{ErrorDetails, StatusExt};

    use super::*;
    use crate::v1::token_service_server::{TokenService, TokenServiceServer};
    use crate::v1::{GetTokenInfoRequest, GetTokenInfoResponse};

    /// A stand-in hsmd replica: answers GetTokenInfo with its label, after refusing its
    /// first `failures` calls with `error`.
    #[derive(Clone)]
    struct Mock {
        label: &'static str,
        calls: Arc<AtomicU32>,
        failures: u32,
        error: fn() -> Status,
    }

    impl Mock {
        fn healthy(label: &'static str) -> Mock {
            Mock::failing(label, 0, || Status::internal("unused"))
        }

        fn failing(label: &'static str, failures: u32, error: fn() -> Status) -> Mock {
            Mock {
                label,
                calls: Arc::default(),
                failures,
                error,
            }
        }

        fn calls(&self) -> u32 {
            self.calls.load(Ordering::SeqCst)
        }
    }

    #[tonic::async_trait]
    impl TokenService for Mock {
        async fn get_token_info(
            &self,
            _: Request<GetTokenInfoRequest>,
        ) -> Result<Response<GetTokenInfoResponse>, Status> {
            if self.calls.fetch_add(1, Ordering::SeqCst) < self.failures {
                return Err((self.error)());
            }
            Ok(Response::new(GetTokenInfoResponse {
                label: self.label.into(),
                ..Default::default()
            }))
        }
    }

    fn with_reason(code: Code, reason: &str) -> Status {
        let details = ErrorDetails::with_error_info(
            reason,
            "hsmd",
            std::collections::HashMap::<String, String>::new(),
        );
        Status::with_error_details(code, "refused", details)
    }

    /// Serves `mock` on a loopback port (plaintext, as the image calls' test does) and
    /// returns its endpoint.
    async fn serve(mock: Mock) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = Server::builder()
            .add_service(TokenServiceServer::new(mock))
            .serve_with_incoming(TcpListenerStream::new(listener));
        tokio::spawn(server);
        format!("http://{addr}")
    }

    /// An endpoint nobody listens on: a port bound, then let go.
    async fn refused() -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        format!("http://{addr}")
    }

    /// A TCP forwarder to `to` on a loopback port, and the task that runs it: aborting
    /// the task closes its listener and every connection through it at once (a replica
    /// killed mid-session).
    async fn proxy(to: &str) -> (String, tokio::task::JoinHandle<()>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let to = to.trim_start_matches("http://").to_string();
        let task = tokio::spawn(async move {
            let mut connections = tokio::task::JoinSet::new();
            while let Ok((mut inbound, _)) = listener.accept().await {
                let to = to.clone();
                connections.spawn(async move {
                    if let Ok(mut outbound) = tokio::net::TcpStream::connect(to).await {
                        // No Nagle delays: calls go through at once, as without a proxy.
                        let _ = (inbound.set_nodelay(true), outbound.set_nodelay(true));
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
            }
        });
        (format!("http://{addr}"), task)
    }

    /// A client over lazy channels to `endpoints`, with quick retries, recording its
    /// retry notices.
    fn client_for(endpoints: &[&String]) -> (Client, Arc<Mutex<Vec<RetryNotice>>>) {
        let channels = endpoints.iter().map(|e| {
            let channel = Endpoint::from_shared(e.to_string()).unwrap().connect_lazy();
            (e.to_string(), channel)
        });
        let notices = Arc::new(Mutex::new(Vec::new()));
        let seen = notices.clone();
        let client = Client::from_channels(channels)
            .with_retry(RetryPolicy {
                max_attempts: 4,
                initial_delay_ms: 1,
                max_delay_ms: 5,
                ..Default::default()
            })
            .with_retry_observer(Arc::new(move |n: &RetryNotice| {
                seen.lock().unwrap().push(n.clone());
            }));
        (client, notices)
    }

    /// GetTokenInfo as a caller-named call (for idempotency by name).
    async fn token_call(client: &Client, call: &'static str) -> Result<String, ClientError> {
        let info = client
            .with_retries(call, || {
                let mut c = client.token();
                async move { c.get_token_info(GetTokenInfoRequest {}).await }
            })
            .await?;
        Ok(info.into_inner().label)
    }

    #[tokio::test]
    async fn a_refused_connect_is_told_apart_by_its_source() {
        let closed = refused().await;
        let (client, _) = client_for(&[&closed]);
        let status = client
            .token()
            .get_token_info(GetTokenInfoRequest {})
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::Unavailable, "{status:?}");
        assert!(retry::failed_before_sending(&status), "{status:?}");
    }

    #[tokio::test]
    async fn fails_over_from_a_refused_port_to_the_next_replica() {
        let closed = refused().await;
        let b = Mock::healthy("b");
        let b_at = serve(b.clone()).await;
        let (client, notices) = client_for(&[&closed, &b_at]);
        assert_eq!(client.endpoint(), closed, "starts on the first");

        assert_eq!(client.token_info().await.unwrap().label, "b");
        assert_eq!(client.endpoint(), b_at);
        assert_eq!(client.retries(), 1);
        {
            let notices = notices.lock().unwrap();
            assert_eq!(notices.len(), 1);
            assert_eq!(notices[0].call, "GetTokenInfo");
            assert_eq!(notices[0].code, Code::Unavailable);
            assert_eq!(notices[0].moved_to.as_deref(), Some(b_at.as_str()));
        }

        // Later calls, and clones, go straight to the replica that answered.
        let clone = client.clone();
        assert_eq!(clone.token_info().await.unwrap().label, "b");
        assert_eq!((client.retries(), b.calls()), (1, 2));

        // A call that is not idempotent moves too: its try never reached a server.
        let (fresh, _) = client_for(&[&closed, &b_at]);
        assert_eq!(token_call(&fresh, "CreateKey").await.unwrap(), "b");
        assert_eq!(fresh.retries(), 1);
    }

    #[tokio::test]
    async fn a_replica_lost_mid_session_is_failed_over_under_load() {
        let (a, b) = (Mock::healthy("a"), Mock::healthy("b"));
        let (a_at, b_at) = (serve(a.clone()).await, serve(b.clone()).await);
        let (via_proxy, replica_a) = proxy(&a_at).await;
        let (client, notices) = client_for(&[&via_proxy, &b_at]);
        assert_eq!(client.token_info().await.unwrap().label, "a");

        // Eight callers of 25 calls each; replica A goes away while they run (once they
        // have had 8 answers from it).
        let callers: Vec<_> = (0..8)
            .map(|_| {
                let client = client.clone();
                tokio::spawn(async move {
                    for _ in 0..25 {
                        client.token_info().await?;
                        tokio::time::sleep(Duration::from_millis(1)).await;
                    }
                    Ok::<_, ClientError>(())
                })
            })
            .collect();
        let answered_by_a = async {
            while a.calls() < 1 + 8 {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        };
        tokio::time::timeout(Duration::from_secs(10), answered_by_a)
            .await
            .expect("the callers reach A");
        replica_a.abort();
        for caller in callers {
            caller
                .await
                .unwrap()
                .expect("every call answered, by A or B");
        }
        assert_eq!(client.endpoint(), b_at);
        assert!(b.calls() > 0);
        // A call answered by A whose answer died with the proxy is answered again by B.
        let made = 1 + 8 * 25;
        assert!(a.calls() + b.calls() >= made);
        let notices = notices.lock().unwrap();
        assert!(notices.iter().all(|n| n.moved_to.as_deref() == Some(&b_at)));
    }

    #[tokio::test]
    async fn unavailable_answers_move_idempotent_calls_only() {
        let a = Mock::failing("a", u32::MAX, || {
            with_reason(Code::Unavailable, "AUDIT_UNAVAILABLE")
        });
        let b = Mock::healthy("b");
        let (a_at, b_at) = (serve(a.clone()).await, serve(b.clone()).await);

        let (client, notices) = client_for(&[&a_at, &b_at]);
        assert_eq!(client.token_info().await.unwrap().label, "b");
        assert_eq!((a.calls(), b.calls()), (1, 1));
        assert_eq!(
            notices.lock().unwrap()[0].moved_to.as_deref(),
            Some(b_at.as_str())
        );

        // CreateKey without a token: A answered, so it may have made the key; the error
        // is returned, not sent again anywhere.
        let (client, _) = client_for(&[&a_at, &b_at]);
        let err = token_call(&client, "CreateKey").await.unwrap_err();
        assert_eq!(err.code(), Some(Code::Unavailable));
        assert_eq!(err.reason_str(), Some("AUDIT_UNAVAILABLE"));
        assert_eq!((a.calls(), b.calls()), (2, 1));
        assert_eq!(client.retries(), 0);
        assert_eq!(client.endpoint(), a_at);
    }

    #[tokio::test]
    async fn rate_limited_calls_stay_on_their_replica() {
        let a = Mock::failing("a", 2, || {
            with_reason(Code::ResourceExhausted, "RATE_LIMITED")
        });
        let b = Mock::healthy("b");
        let (a_at, b_at) = (serve(a.clone()).await, serve(b.clone()).await);
        let (client, notices) = client_for(&[&a_at, &b_at]);
        assert_eq!(client.token_info().await.unwrap().label, "a");
        assert_eq!((a.calls(), b.calls()), (3, 0));
        assert_eq!(client.retries(), 2);
        assert!(notices.lock().unwrap().iter().all(|n| n.moved_to.is_none()));
    }

    #[tokio::test]
    async fn round_robin_skips_a_dead_replica_once_and_wraps() {
        let (x, y) = (refused().await, refused().await);
        let c = Mock::healthy("c");
        let c_at = serve(c.clone()).await;
        let (client, _) = client_for(&[&x, &y, &c_at]);
        assert_eq!(client.token_info().await.unwrap().label, "c");
        assert_eq!(client.retries(), 2);

        let replicas = &client.replicas;
        assert_eq!(replicas.current(), 2);
        assert_eq!(replicas.move_on(2), 0, "wraps to the first");
        // A second failure seen on endpoint 2 (by a concurrent call) does not skip 0.
        assert_eq!(replicas.move_on(2), 0);
        assert_eq!(replicas.move_on(0), 1);
    }

    #[test]
    fn unreachable_endpoints_are_named_in_one_error() {
        let err = |e: &str| ClientError::Connect {
            endpoint: e.into(),
            detail: "transport error: refused".into(),
        };
        let one = all_failed(vec![err("https://a:1")]);
        assert_eq!(
            one.to_string(),
            "cannot connect to https://a:1: transport error: refused"
        );
        let two = all_failed(vec![err("https://a:1"), err("https://b:2")]);
        assert_eq!(
            two.to_string(),
            "cannot connect to any of https://a:1, https://b:2: https://a:1: transport \
             error: refused; https://b:2: transport error: refused"
        );
    }

    #[test]
    fn endpoint_gets_https_and_refuses_plaintext() {
        assert_eq!(
            endpoint_uri("127.0.0.1:40123").unwrap(),
            "https://127.0.0.1:40123"
        );
        assert_eq!(
            endpoint_uri("https://localhost:1").unwrap(),
            "https://localhost:1"
        );
        assert!(endpoint_uri("http://127.0.0.1:1").is_err());
        assert!(endpoint_uri("https://").is_err());
    }
}

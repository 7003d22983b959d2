//! A TCP proxy that breaks the network on demand, for fault-injection tests.
//!
//! Stopping or crashing the server ([`TestPostgres`](super::TestPostgres))
//! tests what happens when PostgreSQL goes away; [`FaultProxy`] tests what
//! happens when the *network* does: connections cut mid-session, a server
//! that refuses new connections, and a silent half-open path where neither
//! side gets an error.

use std::fmt;
use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Big enough that a query or a result row crosses in one read, small enough
/// that at most this much is held in the proxy when a blackhole starts.
const CHUNK: usize = 16 * 1024;

/// A TCP proxy on `127.0.0.1` between a PostgreSQL client and its server,
/// whose connections can be cut, refused or silenced while a test runs.
///
/// Point clients at it with [`proxied_url`](Self::proxied_url). Dropping the
/// proxy stops it listening and closes every connection it carries.
///
/// ```no_run
/// # async fn f() -> Result<(), Box<dyn std::error::Error>> {
/// use pgwake::testing::{fresh_database, FaultProxy};
/// use pgwake::ConnectionConfig;
///
/// let database = fresh_database().await?;
/// let port = database.config().postgres_config().get_ports()[0];
/// let proxy = FaultProxy::start(([127, 0, 0, 1], port).into()).await?;
/// let client = ConnectionConfig::from_url(&proxy.proxied_url(database.url()))?
///     .connect()
///     .await?;
/// proxy.drop_connections();
/// assert!(client.simple_query("SELECT 1").await.is_err());
/// # Ok(()) }
/// ```
///
/// Each setting applies from the moment its method returns; there is no
/// per-connection control.
pub struct FaultProxy {
    local_addr: SocketAddr,
    shared: Arc<Shared>,
    accept_task: JoinHandle<()>,
}

/// State the accept loop and every connection task read; the proxy's methods
/// write it.
struct Shared {
    upstream: SocketAddr,
    refuse_new: AtomicBool,
    /// Set before the last `kill` bump, so that a connection subscribing too
    /// late to see that bump still knows to close.
    shut_down: AtomicBool,
    /// Bumped to close every open connection. A counter rather than a flag
    /// because connections opened after a bump must live on.
    kill: watch::Sender<u64>,
    /// A watch rather than an atomic so that paused pumps sleep until it
    /// changes instead of polling.
    blackhole: watch::Sender<bool>,
    /// Bumped to silence, for good, every connection open at that moment;
    /// each connection knows the epoch it was accepted in.
    silence: watch::Sender<u64>,
    accepted: AtomicU64,
    open: AtomicUsize,
}

impl FaultProxy {
    /// Listens on `127.0.0.1:0` and forwards every accepted connection to
    /// `upstream`.
    ///
    /// The accept loop and the connections run as tasks on the current tokio
    /// runtime (a current-thread runtime, as `#[actix_rt::test]` gives, is
    /// enough). The upstream connection is made per accepted connection, so
    /// `upstream` need not be reachable yet.
    ///
    /// # Errors
    /// When no local port can be bound.
    ///
    /// # Panics
    /// When called outside a tokio runtime.
    ///
    /// ```
    /// # actix_rt::System::new().block_on(async {
    /// use pgwake::testing::FaultProxy;
    ///
    /// // Nothing needs to listen upstream until a client connects.
    /// let proxy = FaultProxy::start(([127, 0, 0, 1], 5432).into()).await?;
    /// assert_ne!(proxy.port(), 5432);
    /// # Ok::<(), std::io::Error>(()) }).unwrap();
    /// ```
    pub async fn start(upstream: SocketAddr) -> io::Result<FaultProxy> {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await?;
        let local_addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            upstream,
            refuse_new: AtomicBool::new(false),
            shut_down: AtomicBool::new(false),
            kill: watch::channel(0).0,
            blackhole: watch::channel(false).0,
            silence: watch::channel(0).0,
            accepted: AtomicU64::new(0),
            open: AtomicUsize::new(0),
        });
        let accept_task = tokio::spawn(accept_loop(listener, Arc::clone(&shared)));
        tracing::debug!(%local_addr, %upstream, "fault proxy listening");
        Ok(FaultProxy {
            local_addr,
            shared,
            accept_task,
        })
    }

    /// The address clients connect to (always on `127.0.0.1`).
    ///
    /// ```
    /// # actix_rt::System::new().block_on(async {
    /// let proxy = pgwake::testing::FaultProxy::start(([127, 0, 0, 1], 5432).into()).await?;
    /// assert!(proxy.local_addr().ip().is_loopback());
    /// assert_eq!(proxy.local_addr().port(), proxy.port());
    /// # Ok::<(), std::io::Error>(()) }).unwrap();
    /// ```
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The port clients connect to.
    ///
    /// ```
    /// # actix_rt::System::new().block_on(async {
    /// let proxy = pgwake::testing::FaultProxy::start(([127, 0, 0, 1], 5432).into()).await?;
    /// let url = format!("host=127.0.0.1 port={} user=postgres", proxy.port());
    /// # Ok::<(), std::io::Error>(()) }).unwrap();
    /// ```
    pub fn port(&self) -> u16 {
        self.local_addr.port()
    }

    /// Rewrites a PostgreSQL URL so it points at the proxy instead of its own
    /// host and port; user, password, database and options are kept.
    ///
    /// ```
    /// # fn f(proxy: &pgwake::testing::FaultProxy) {
    /// let url = proxy.proxied_url("postgres://app:pw@127.0.0.1:5432/orders?sslmode=disable");
    /// assert_eq!(url, format!("postgres://app:pw@127.0.0.1:{}/orders?sslmode=disable", proxy.port()));
    /// # }
    /// ```
    ///
    /// A `key=value` connection string gets `host` and `port` appended, which
    /// override any earlier ones.
    pub fn proxied_url(&self, url: &str) -> String {
        let proxy = format!("127.0.0.1:{}", self.port());
        let Some(scheme_end) = url.find("://") else {
            return format!("{url} host=127.0.0.1 port={}", self.port());
        };
        let (scheme, rest) = url.split_at(scheme_end + 3);
        let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
        let (authority, after) = rest.split_at(authority_end);
        // The last '@' ends the user part: a host cannot contain one, an
        // unencoded password might.
        let userinfo = authority
            .rfind('@')
            .map(|at| &authority[..=at])
            .unwrap_or("");
        format!("{scheme}{userinfo}{proxy}{after}")
    }

    /// Closes every open proxied connection at once: the client and the
    /// server both see their socket closed (EOF), as when a NAT or firewall
    /// between them forgets the connection and the next packet gets a reset.
    ///
    /// Connections accepted afterwards work normally.
    ///
    /// ```
    /// # async fn example(proxy: &pgwake::testing::FaultProxy, url: &str) -> Result<(), Box<dyn std::error::Error>> {
    /// let client = pgwake::ConnectionConfig::from_url(&proxy.proxied_url(url))?.connect().await?;
    /// proxy.drop_connections();
    /// assert!(client.simple_query("SELECT 1").await.is_err());
    /// # Ok(()) }
    /// ```
    pub fn drop_connections(&self) {
        tracing::debug!(
            open = self.open_connections(),
            "fault proxy dropping connections"
        );
        self.shared.kill.send_modify(|epoch| *epoch += 1);
    }

    /// While `true`, new connections are accepted and closed at once, before
    /// any byte is exchanged, so connecting fails quickly, as against a server
    /// that is down. Open connections are not affected. `false` restores
    /// normal service.
    ///
    /// ```
    /// # use tokio::io::AsyncReadExt;
    /// # actix_rt::System::new().block_on(async {
    /// let proxy = pgwake::testing::FaultProxy::start(([127, 0, 0, 1], 5432).into()).await?;
    /// proxy.set_refuse_new(true);
    /// let mut socket = tokio::net::TcpStream::connect(proxy.local_addr()).await?;
    /// assert_eq!(socket.read(&mut [0; 1]).await?, 0); // closed at once
    /// proxy.set_refuse_new(false);
    /// # Ok::<(), std::io::Error>(()) }).unwrap();
    /// ```
    pub fn set_refuse_new(&self, refuse: bool) {
        tracing::debug!(refuse, "fault proxy refuse_new");
        self.shared.refuse_new.store(refuse, Ordering::SeqCst);
    }

    /// While `true`, no byte is forwarded in either direction, on open
    /// connections and on connections accepted meanwhile, yet every socket
    /// stays open: a half-open network path, where the client sees silence,
    /// not an error, and waits for as long as its own timeouts allow.
    ///
    /// Bytes are **held, not discarded**: the proxy stops reading, so what
    /// either side sends waits in the kernel's socket buffers (its writes
    /// succeed until those buffers fill, then block, as over a dead link),
    /// plus at most one chunk the proxy had already read. `false` resumes
    /// forwarding and delivers all of it in order, as TCP retransmission
    /// would once a link comes back. A connection accepted while blackholed
    /// reaches the server only when the blackhole lifts, so the server does
    /// not time out a startup message that cannot arrive. A close by either
    /// side is also held until then.
    ///
    /// ```
    /// # async fn example(proxy: &pgwake::testing::FaultProxy, url: &str) -> Result<(), Box<dyn std::error::Error>> {
    /// use std::time::Duration;
    ///
    /// let client = pgwake::ConnectionConfig::from_url(&proxy.proxied_url(url))?.connect().await?;
    /// proxy.set_blackhole(true);
    /// let query = tokio::time::timeout(Duration::from_millis(200), client.simple_query("SELECT 1"));
    /// assert!(query.await.is_err()); // silence, not an error: timed out
    /// proxy.set_blackhole(false);
    /// # Ok(()) }
    /// ```
    pub fn set_blackhole(&self, blackhole: bool) {
        tracing::debug!(blackhole, "fault proxy blackhole");
        self.shared.blackhole.send_replace(blackhole);
    }

    /// Silences, for good, every connection open now: no byte crosses them
    /// again in either direction, yet their sockets stay open, so neither
    /// side gets an error. Connections accepted afterwards work normally.
    /// This is what a NAT, load balancer or proxy that lost its state after
    /// a partition does to old connections while new ones get through: the
    /// case where only a client-side deadline ends the wait.
    ///
    /// ```
    /// # async fn example(proxy: &pgwake::testing::FaultProxy, url: &str) -> Result<(), Box<dyn std::error::Error>> {
    /// use std::time::Duration;
    ///
    /// let old = pgwake::ConnectionConfig::from_url(&proxy.proxied_url(url))?.connect().await?;
    /// proxy.silence_open_connections();
    /// let query = tokio::time::timeout(Duration::from_millis(200), old.simple_query("SELECT 1"));
    /// assert!(query.await.is_err()); // silence, not an error
    /// let new = pgwake::ConnectionConfig::from_url(&proxy.proxied_url(url))?.connect().await?;
    /// new.simple_query("SELECT 1").await?; // new connections work
    /// # Ok(()) }
    /// ```
    pub fn silence_open_connections(&self) {
        tracing::debug!(
            open = self.open_connections(),
            "fault proxy silencing open connections"
        );
        self.shared.silence.send_modify(|epoch| *epoch += 1);
    }

    /// Connections accepted since the proxy started, refused ones included.
    ///
    /// ```
    /// # use tokio::io::AsyncReadExt;
    /// # actix_rt::System::new().block_on(async {
    /// let proxy = pgwake::testing::FaultProxy::start(([127, 0, 0, 1], 5432).into()).await?;
    /// proxy.set_refuse_new(true);
    /// let mut socket = tokio::net::TcpStream::connect(proxy.local_addr()).await?;
    /// socket.read(&mut [0; 1]).await?; // refused: closed at once
    /// assert_eq!((proxy.accepted_connections(), proxy.open_connections()), (1, 0));
    /// # Ok::<(), std::io::Error>(()) }).unwrap();
    /// ```
    pub fn accepted_connections(&self) -> u64 {
        self.shared.accepted.load(Ordering::SeqCst)
    }

    /// Connections being proxied now (refused ones never count).
    ///
    /// ```
    /// # async fn example(proxy: &pgwake::testing::FaultProxy, url: &str) -> Result<(), Box<dyn std::error::Error>> {
    /// let client = pgwake::ConnectionConfig::from_url(&proxy.proxied_url(url))?.connect().await?;
    /// assert_eq!(proxy.open_connections(), 1);
    /// drop(client);
    /// # Ok(()) }
    /// ```
    pub fn open_connections(&self) -> usize {
        self.shared.open.load(Ordering::SeqCst)
    }
}

impl fmt::Debug for FaultProxy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FaultProxy")
            .field("local_addr", &self.local_addr)
            .field("upstream", &self.shared.upstream)
            .field("refuse_new", &self.shared.refuse_new.load(Ordering::SeqCst))
            .field("blackhole", &*self.shared.blackhole.borrow())
            .field("accepted", &self.accepted_connections())
            .field("open", &self.open_connections())
            .finish()
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.accept_task.abort();
        self.shared.shut_down.store(true, Ordering::SeqCst);
        self.shared.kill.send_modify(|epoch| *epoch += 1);
        tracing::debug!(local_addr = %self.local_addr, "fault proxy stopped");
    }
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    loop {
        let (client, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(err) => {
                // Out of file descriptors and the like: retrying at once
                // would spin, giving up would hide the failure as a refusal.
                tracing::debug!(error = %err, "fault proxy accept failed");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        shared.accepted.fetch_add(1, Ordering::SeqCst);
        if shared.refuse_new.load(Ordering::SeqCst) {
            tracing::debug!(%peer, "fault proxy refused a connection");
            drop(client);
            continue;
        }
        // Subscribed here, not in the task, so a drop_connections() made
        // before the task first runs still closes this connection.
        let kill = shared.kill.subscribe();
        let open = OpenGuard::new(Arc::clone(&shared));
        tracing::debug!(%peer, "fault proxy accepted a connection");
        tokio::spawn(serve(client, peer, kill, open));
    }
}

/// Counts a connection as open for exactly as long as its task (or, when the
/// runtime goes away first, its unpolled future) exists.
struct OpenGuard(Arc<Shared>);

impl OpenGuard {
    fn new(shared: Arc<Shared>) -> Self {
        shared.open.fetch_add(1, Ordering::SeqCst);
        Self(shared)
    }
}

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::SeqCst);
    }
}

async fn serve(
    client: TcpStream,
    peer: SocketAddr,
    mut kill: watch::Receiver<u64>,
    open: OpenGuard,
) {
    if open.0.shut_down.load(Ordering::SeqCst) {
        return;
    }
    let shared = Arc::clone(&open.0);
    tokio::select! {
        // Ok (drop_connections) or Err (proxy gone): close either way.
        _ = kill.changed() => tracing::debug!(%peer, "fault proxy closed a connection"),
        result = forward(client, &shared) => match result {
            Ok(()) => tracing::debug!(%peer, "proxied connection ended"),
            Err(err) => tracing::debug!(%peer, error = %err, "proxied connection failed"),
        },
    }
    // Returning drops both sockets, which is what closes them, and `open`,
    // which stops counting the connection.
}

async fn forward(mut client: TcpStream, shared: &Shared) -> io::Result<()> {
    // Accepted in this epoch: silenced by any later bump.
    let epoch = *shared.silence.borrow();
    let mut blackhole = shared.blackhole.subscribe();
    wait_while_blackholed(&mut blackhole).await?;
    let mut server = TcpStream::connect(shared.upstream).await?;
    // The protocol is request/response in small messages: Nagle would add
    // latency to every round trip the tests measure.
    client.set_nodelay(true)?;
    server.set_nodelay(true)?;
    let (client_read, client_write) = client.split();
    let (server_read, server_write) = server.split();
    tokio::try_join!(
        pump(
            client_read,
            server_write,
            Pause::new(shared.blackhole.subscribe(), shared, epoch)
        ),
        pump(
            server_read,
            client_write,
            Pause::new(blackhole, shared, epoch)
        ),
    )?;
    Ok(())
}

/// Copies one direction until EOF, which it passes on as a write shutdown so
/// the other direction can still finish (the client's Terminate, then the
/// server's close).
async fn pump(
    mut from: impl AsyncRead + Unpin,
    mut to: impl AsyncWrite + Unpin,
    mut pause: Pause,
) -> io::Result<()> {
    let mut buffer = vec![0; CHUNK];
    loop {
        // Not reading while blackholed is what makes the peer's writes
        // neither fail nor arrive: they queue in the kernel, as on a dead link.
        pause.wait().await?;
        let read = from.read(&mut buffer).await?;
        // The read may have been waiting when the blackhole started.
        pause.wait().await?;
        if read == 0 {
            return to.shutdown().await;
        }
        to.write_all(&buffer[..read]).await?;
    }
}

/// What stops one direction of a connection: the blackhole while it lasts,
/// or a silencing of the connection's epoch for good.
struct Pause {
    blackhole: watch::Receiver<bool>,
    silence: watch::Receiver<u64>,
    epoch: u64,
}

impl Pause {
    fn new(blackhole: watch::Receiver<bool>, shared: &Shared, epoch: u64) -> Self {
        Self {
            blackhole,
            silence: shared.silence.subscribe(),
            epoch,
        }
    }

    async fn wait(&mut self) -> io::Result<()> {
        if *self.silence.borrow_and_update() > self.epoch {
            // Silenced: hold the sockets open until the connection is killed.
            std::future::pending::<()>().await;
        }
        wait_while_blackholed(&mut self.blackhole).await
    }
}

async fn wait_while_blackholed(blackhole: &mut watch::Receiver<bool>) -> io::Result<()> {
    while *blackhole.borrow_and_update() {
        blackhole
            .changed()
            .await
            .map_err(|_| io::Error::other("fault proxy stopped"))?;
    }
    Ok(())
}

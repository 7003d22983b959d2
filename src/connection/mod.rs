//! Opening connections: a URL parsed once, pgwake's defaults applied, and a
//! printable form that never contains a password.
//!
//! Every connection pgwake opens (migrator, listeners, pool, CLI) goes through
//! [`ConnectionConfig`], so a bad URL is rejected in one place with one error,
//! and every log line names the server by [`ConnectionConfig::redacted`].
//!
//! ```
//! use pgwake::ConnectionConfig;
//!
//! let config = ConnectionConfig::from_url("postgres://app:s3cret@db.internal:5433/orders").unwrap();
//! assert_eq!(config.redacted(), "postgres://app@db.internal:5433/orders");
//! assert!(!format!("{config:?}").contains("s3cret"));
//! ```

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio_postgres::config::{Host, TargetSessionAttrs};
use tokio_postgres::tls::MakeTlsConnect;
use tokio_postgres::{AsyncMessage, Client, Socket};

use crate::error::ConnectError;

mod options;
mod tls;

pub use tls::SslMode;

/// How long a connection attempt may take when the URL does not say
/// (`connect_timeout=SECONDS`): long enough for a busy server, short enough
/// that an unreachable host is reported instead of hanging.
///
/// ```
/// use pgwake::connection::DEFAULT_CONNECT_TIMEOUT;
///
/// let config = pgwake::ConnectionConfig::from_url("postgres://db.internal/orders").unwrap();
/// assert_eq!(config.connect_timeout(), DEFAULT_CONNECT_TIMEOUT);
/// ```
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Silence after which TCP keepalive probes start, unless the URL says.
///
/// ```
/// assert_eq!(pgwake::connection::DEFAULT_KEEPALIVES_IDLE, std::time::Duration::from_secs(30));
/// ```
pub const DEFAULT_KEEPALIVES_IDLE: Duration = Duration::from_secs(30);

/// How long sent data may stay unacknowledged before the connection is
/// dropped (`TCP_USER_TIMEOUT`, Linux), unless the URL says.
///
/// ```
/// assert_eq!(pgwake::connection::DEFAULT_TCP_USER_TIMEOUT, std::time::Duration::from_secs(30));
/// ```
pub const DEFAULT_TCP_USER_TIMEOUT: Duration = Duration::from_secs(30);

/// The stream type of every connection pgwake opens: TLS or not, as the URL says.
type Stream = <tokio_postgres_rustls::MakeRustlsConnect as MakeTlsConnect<Socket>>::Stream;

/// A connection whose messages (notifications included) the caller polls,
/// or that the caller drives as a future until it closes.
///
/// ```
/// use futures::future::poll_fn;
/// use pgwake::connection::RawConnection;
/// use tokio_postgres::AsyncMessage;
///
/// /// The next notification's payload; `None` for anything else or at the end.
/// async fn next_payload(connection: &mut RawConnection) -> Option<String> {
///     match poll_fn(|cx| connection.poll_message(cx)).await? {
///         Ok(AsyncMessage::Notification(notification)) => Some(notification.payload().to_string()),
///         _ => None,
///     }
/// }
/// ```
pub struct RawConnection(tokio_postgres::Connection<Socket, Stream>);

impl RawConnection {
    /// Polls for the next message from the server (a notification, a
    /// notice), driving the connection meanwhile; `None` once it is closed.
    pub fn poll_message(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<AsyncMessage, tokio_postgres::Error>>> {
        self.0.poll_message(cx)
    }
}

impl Future for RawConnection {
    type Output = Result<(), tokio_postgres::Error>;

    /// Drives the connection until it closes, dropping notifications.
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.0).poll(cx)
    }
}

impl fmt::Debug for RawConnection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("RawConnection")
    }
}

/// A parsed connection string: what to connect to, how (TLS, which of several
/// hosts), and how to name it in logs.
///
/// Accepts both forms libpq accepts: `postgres://user:password@host:port/db?opt=v`
/// and `host=... user=... dbname=...`, with libpq's TLS options (`sslmode`
/// from `disable` to `verify-full`, `sslrootcert` as a file or `system`,
/// `sslcert`/`sslkey`, `sslsni`) and several hosts (`host1:5432,host2:5432`).
/// Its `Debug` and [`redacted`](Self::redacted) forms never show the password.
///
/// ```
/// let config = pgwake::ConnectionConfig::from_url("host=db.internal port=5433 user=app password=s3cret dbname=orders").unwrap();
/// assert_eq!(config.to_string(), "postgres://app@db.internal:5433/orders");
/// ```
#[derive(Clone)]
pub struct ConnectionConfig {
    postgres: tokio_postgres::Config,
    tls: tls::TlsSettings,
    redacted: String,
}

impl ConnectionConfig {
    /// Parses `url`, applying [`DEFAULT_CONNECT_TIMEOUT`] when the URL sets
    /// none, and TCP settings that notice a dead peer within about a minute
    /// instead of the operating system's two hours: keepalives after
    /// [`DEFAULT_KEEPALIVES_IDLE`] of silence every 10 s, 3 probes, and a
    /// [`DEFAULT_TCP_USER_TIMEOUT`] on unacknowledged data (Linux). A URL's
    /// own `keepalives_idle` or `tcp_user_timeout` wins.
    ///
    /// TLS follows libpq's `sslmode` (default `prefer`); the files the URL
    /// names (`sslrootcert`, `sslcert`, `sslkey`) are read here, so a
    /// missing one is reported now rather than at each connect. Sessions
    /// must accept writes: `target_session_attrs` defaults to `read-write`,
    /// so of several hosts the writable one is used, and a standby (or a
    /// server still recovering) counts as unreachable until it is promoted.
    ///
    /// ```
    /// use std::time::Duration;
    /// let config = pgwake::ConnectionConfig::from_url("postgres://h/db").unwrap();
    /// let tcp = config.postgres_config();
    /// assert_eq!(tcp.get_keepalives_idle(), pgwake::connection::DEFAULT_KEEPALIVES_IDLE);
    /// assert_eq!(tcp.get_tcp_user_timeout(), Some(&pgwake::connection::DEFAULT_TCP_USER_TIMEOUT));
    /// let config = pgwake::ConnectionConfig::from_url("postgres://h/db?tcp_user_timeout=5").unwrap();
    /// assert_eq!(config.postgres_config().get_tcp_user_timeout(), Some(&Duration::from_secs(5)));
    /// ```
    ///
    /// # Errors
    /// [`ConnectError::InvalidUrl`] naming what is wrong, without echoing the
    /// URL; [`ConnectError::Tls`] when its TLS settings cannot be honoured
    /// (an unsupported `sslmode`, a file that cannot be read).
    ///
    /// ```
    /// let err = pgwake::ConnectionConfig::from_url("postgres://u:pw@host:notaport/db").unwrap_err();
    /// assert!(err.to_string().contains("port"));
    /// assert!(!err.to_string().contains("pw"));
    /// ```
    pub fn from_url(url: &str) -> Result<Self, ConnectError> {
        let invalid = |reason: String| ConnectError::InvalidUrl { reason };
        let split = options::split_own_options(url).map_err(invalid)?;
        let mut postgres: tokio_postgres::Config =
            split
                .rest
                .parse()
                .map_err(|err: tokio_postgres::Error| ConnectError::InvalidUrl {
                    reason: crate::error::ErrorChain(&err).to_string(),
                })?;
        if postgres.get_hosts().is_empty() {
            // libpq's default; tokio-postgres refuses a config without a host.
            postgres.host("localhost");
        }
        let (session_options, tls_options): (Vec<_>, Vec<_>) = split
            .own
            .into_iter()
            .partition(|(name, _)| name == "target_session_attrs");
        postgres.target_session_attrs(target_session_attrs(&session_options).map_err(invalid)?);
        let unix_sockets_only = postgres
            .get_hosts()
            .iter()
            .all(|host| !matches!(host, Host::Tcp(_)));
        let tls = tls::tls_settings(&tls_options, unix_sockets_only)
            .map_err(|reason| ConnectError::Tls { reason })?;
        postgres.ssl_mode(tls.driver_mode);
        if postgres.get_connect_timeout().is_none() {
            postgres.connect_timeout(DEFAULT_CONNECT_TIMEOUT);
        }
        // tokio-postgres' defaults, which only a URL that sets nothing keeps.
        if postgres.get_keepalives_idle() == Duration::from_secs(2 * 60 * 60) {
            postgres.keepalives_idle(DEFAULT_KEEPALIVES_IDLE);
        }
        if postgres.get_keepalives_interval().is_none() {
            postgres.keepalives_interval(Duration::from_secs(10));
        }
        if postgres.get_keepalives_retries().is_none() {
            postgres.keepalives_retries(3);
        }
        if postgres.get_tcp_user_timeout().is_none() {
            postgres.tcp_user_timeout(DEFAULT_TCP_USER_TIMEOUT);
        }
        let redacted = redact(&postgres);
        Ok(Self {
            postgres,
            tls,
            redacted,
        })
    }

    /// How this connection uses TLS (`sslmode`).
    ///
    /// ```
    /// use pgwake::connection::SslMode;
    /// let config = pgwake::ConnectionConfig::from_url("postgres://db.internal/app?sslmode=require").unwrap();
    /// assert_eq!(config.ssl_mode(), SslMode::Require);
    /// ```
    pub fn ssl_mode(&self) -> SslMode {
        self.tls.mode
    }

    /// The TLS connector for this URL, for pools built on
    /// [`postgres_config`](Self::postgres_config).
    pub(crate) fn tls_connector(&self) -> tokio_postgres_rustls::MakeRustlsConnect {
        self.tls.connector.clone()
    }

    /// The same server and credentials, announced to the server as
    /// `application_name` (visible in `pg_stat_activity`).
    ///
    /// ```
    /// let config = pgwake::ConnectionConfig::from_url("postgres://app@db.internal/orders").unwrap();
    /// let billing = config.with_application_name("billing");
    /// assert_eq!(billing.postgres_config().get_application_name(), Some("billing"));
    /// ```
    pub fn with_application_name(&self, application_name: &str) -> Self {
        let mut copy = self.clone();
        copy.postgres.application_name(application_name);
        copy
    }

    /// The underlying `tokio-postgres` configuration (for building pools).
    /// Its `ssl_mode` is what the driver is told (`require` for the verify
    /// modes); verification is done by pgwake's TLS connector, so connect
    /// through [`connect`](Self::connect), not with this and `NoTls`.
    ///
    /// ```
    /// let config = pgwake::ConnectionConfig::from_url("postgres://app@db.internal:5433/orders").unwrap();
    /// assert_eq!(config.postgres_config().get_ports(), [5433]);
    /// ```
    pub fn postgres_config(&self) -> &tokio_postgres::Config {
        &self.postgres
    }

    /// The database name, when the URL names one.
    ///
    /// ```
    /// use pgwake::ConnectionConfig;
    ///
    /// assert_eq!(ConnectionConfig::from_url("postgres://db.internal/orders").unwrap().dbname(), Some("orders"));
    /// assert_eq!(ConnectionConfig::from_url("postgres://db.internal").unwrap().dbname(), None);
    /// ```
    pub fn dbname(&self) -> Option<&str> {
        self.postgres.get_dbname()
    }

    /// How long [`connect`](Self::connect) waits before giving up.
    ///
    /// ```
    /// let config = pgwake::ConnectionConfig::from_url("postgres://db.internal/orders?connect_timeout=3").unwrap();
    /// assert_eq!(config.connect_timeout(), std::time::Duration::from_secs(3));
    /// ```
    pub fn connect_timeout(&self) -> Duration {
        self.postgres
            .get_connect_timeout()
            .copied()
            .unwrap_or(DEFAULT_CONNECT_TIMEOUT)
    }

    /// `postgres://user@host:port/db`: safe to log, never holds the password.
    ///
    /// ```
    /// let config = pgwake::ConnectionConfig::from_url("postgres://app:s3cret@db.internal:5433/orders?password=other").unwrap();
    /// assert_eq!(config.redacted(), "postgres://app@db.internal:5433/orders");
    /// ```
    pub fn redacted(&self) -> &str {
        &self.redacted
    }

    /// Opens one connection and drives it on the current tokio runtime until
    /// the returned client is dropped or the server goes away.
    ///
    /// The whole attempt (TCP, TLS negotiation, authentication) is bounded by
    /// [`connect_timeout`](Self::connect_timeout), not just the socket connect,
    /// so a server that accepts but never answers is reported too.
    ///
    /// # Errors
    /// [`ConnectError::Timeout`] or [`ConnectError::Refused`]; both name the
    /// server by its redacted URL.
    ///
    /// ```
    /// # async fn example() -> Result<(), Box<dyn std::error::Error>> {
    /// let config = pgwake::ConnectionConfig::from_url("postgres://app@localhost/orders")?;
    /// let client = config.connect().await?;
    /// client.simple_query("SELECT 1").await?;
    /// # Ok(()) }
    /// ```
    pub async fn connect(&self) -> Result<Client, ConnectError> {
        let (client, connection) = self.connect_raw().await?;
        let server = self.redacted.clone();
        tokio::spawn(async move {
            if let Err(err) = connection.await {
                tracing::debug!(%server, error = %err, "connection closed with an error");
            }
        });
        Ok(client)
    }

    /// Like [`connect`](Self::connect), but hands back the connection for
    /// the caller to drive: a listener polls it itself to receive
    /// notifications, and drops it to disconnect.
    ///
    /// # Errors
    /// As [`connect`](Self::connect).
    ///
    /// ```
    /// # async fn example() -> Result<(), Box<dyn std::error::Error>> {
    /// let config = pgwake::ConnectionConfig::from_url("postgres://app@localhost/orders")?;
    /// let (client, connection) = config.connect_raw().await?;
    /// tokio::spawn(connection); // or poll it yourself, to receive notifications
    /// client.simple_query("SELECT 1").await?;
    /// # Ok(()) }
    /// ```
    pub async fn connect_raw(&self) -> Result<(Client, RawConnection), ConnectError> {
        let timeout = self.connect_timeout();
        let attempt = self.postgres.connect(self.tls.connector.clone());
        match tokio::time::timeout(timeout, attempt).await {
            Err(_) => Err(ConnectError::Timeout {
                server: self.redacted.clone(),
                timeout,
            }),
            Ok(Err(source)) => Err(ConnectError::Refused {
                server: self.redacted.clone(),
                source,
            }),
            Ok(Ok((client, connection))) => Ok((client, RawConnection(connection))),
        }
    }
}

impl fmt::Debug for ConnectionConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("ConnectionConfig")
            .field(&self.redacted)
            .finish()
    }
}

impl fmt::Display for ConnectionConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted)
    }
}

/// pgwake writes, so a session must accept writes: `read-write` unless the
/// URL says `any` (for a proxy that answers `SHOW transaction_read_only`
/// wrongly, say).
fn target_session_attrs(options: &[(String, String)]) -> Result<TargetSessionAttrs, String> {
    match options.last().map(|(_, value)| value.as_str()) {
        None | Some("read-write") => Ok(TargetSessionAttrs::ReadWrite),
        Some("any") => Ok(TargetSessionAttrs::Any),
        Some(_) => Err(
            "target_session_attrs must be read-write (the default: pgwake writes) \
                        or any"
                .into(),
        ),
    }
}

/// Rebuilds a URL from the parsed parts that identify the server, so that
/// nothing typed into the password (or an option holding one) can appear.
fn redact(config: &tokio_postgres::Config) -> String {
    let ports = config.get_ports();
    let hosts: Vec<String> = config
        .get_hosts()
        .iter()
        .enumerate()
        .map(|(index, host)| {
            let name = match host {
                Host::Tcp(name) => name.clone(),
                Host::Unix(path) => path.display().to_string(),
            };
            match ports.get(index).or_else(|| ports.first()) {
                Some(port) => format!("{name}:{port}"),
                None => name,
            }
        })
        .collect();
    let user = config
        .get_user()
        .map(|user| format!("{user}@"))
        .unwrap_or_default();
    let dbname = config.get_dbname().unwrap_or("");
    format!("postgres://{user}{}/{dbname}", hosts.join(","))
}

/// Returns `url` with its database name replaced by `dbname`, in whichever
/// form (URL or `key=value`) it was written.
#[cfg(any(test, feature = "testing"))]
pub(crate) fn with_dbname(url: &str, dbname: &str) -> String {
    let Some(scheme_end) = url.find("://") else {
        // key=value form: a later key overrides an earlier one.
        return format!("{url} dbname={dbname}");
    };
    let rest = &url[scheme_end + 3..];
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, after) = rest.split_at(authority_end);
    let query = after.find('?').map(|at| &after[at..]).unwrap_or("");
    format!("{}{authority}/{dbname}{query}", &url[..scheme_end + 3])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacted_form_drops_password_from_url_and_options() {
        let config =
            ConnectionConfig::from_url("postgres://u:hunter2@h1:1,h2:2/db?password=other").unwrap();
        assert_eq!(config.redacted(), "postgres://u@h1:1,h2:2/db");
        assert!(!format!("{config:?}").contains("hunter2"));
    }

    #[test]
    fn key_value_form_is_redacted_too() {
        let config =
            ConnectionConfig::from_url("host=h port=5 user=u password=hunter2 dbname=d").unwrap();
        assert_eq!(config.redacted(), "postgres://u@h:5/d");
    }

    #[test]
    fn dbname_is_replaced_in_both_forms() {
        assert_eq!(
            with_dbname("postgres://u:p@h:5/a?x=1", "b"),
            "postgres://u:p@h:5/b?x=1"
        );
        assert_eq!(with_dbname("postgres://h", "b"), "postgres://h/b");
        assert_eq!(
            with_dbname("postgresql://h?x=1", "b"),
            "postgresql://h/b?x=1"
        );
        assert_eq!(
            with_dbname("host=h dbname=a", "b"),
            "host=h dbname=a dbname=b"
        );
    }

    #[test]
    fn url_without_timeout_gets_the_default() {
        let config = ConnectionConfig::from_url("postgres://h/db").unwrap();
        assert_eq!(config.connect_timeout(), DEFAULT_CONNECT_TIMEOUT);
        let config = ConnectionConfig::from_url("postgres://h/db?connect_timeout=3").unwrap();
        assert_eq!(config.connect_timeout(), Duration::from_secs(3));
    }
}

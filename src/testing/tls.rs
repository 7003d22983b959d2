//! TLS for a throwaway cluster: a generated CA, a server certificate it
//! signs, and a client certificate, so tests can connect with every
//! `sslmode` and authenticate by certificate.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, Certificate, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};

use super::{TestPostgres, TestPostgresError};

/// The role [`TestPostgres::enable_tls`] creates that may log in only with
/// the client certificate ([`TestTls::client_cert_file`]), over TLS.
pub const CERT_USER: &str = "pgwake_cert";

/// The role [`TestPostgres::enable_tls`] creates that the server refuses
/// over plaintext (pg_hba `hostnossl ... reject`), to tell whether a
/// connection really was encrypted.
pub const TLS_ONLY_USER: &str = "pgwake_tls_only";

/// The certificates of a cluster with TLS on; the files are removed when
/// this is dropped.
///
/// The server's certificate names `localhost` only, deliberately: connect to
/// `localhost` with `sslmode=verify-full`, or to `127.0.0.1` to see a host
/// name check fail (and `verify-ca` pass).
///
/// ```no_run
/// # async fn f() -> Result<(), Box<dyn std::error::Error>> {
/// let server = pgwake::testing::TestPostgres::new()?;
/// let tls = server.enable_tls().await?;
/// let url = tls.url(&server, "postgres"); // sslmode=verify-full, the generated CA
/// let client = pgwake::ConnectionConfig::from_url(&url)?.connect().await?;
/// let row = client.query_one("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()", &[]).await?;
/// assert!(row.get::<_, bool>(0));
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct TestTls {
    dir: PathBuf,
}

impl TestTls {
    /// The CA that signed the server's and the client's certificates (PEM),
    /// for `sslrootcert`.
    pub fn ca_file(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    /// A CA that signed nothing here, for `sslrootcert` in a test of an
    /// untrusted server.
    pub fn unrelated_ca_file(&self) -> PathBuf {
        self.dir.join("unrelated-ca.pem")
    }

    /// The client certificate of [`CERT_USER`] (PEM), for `sslcert`.
    pub fn client_cert_file(&self) -> PathBuf {
        self.dir.join("client.pem")
    }

    /// The client certificate's key (PEM, unencrypted), for `sslkey`.
    pub fn client_key_file(&self) -> PathBuf {
        self.dir.join("client-key.pem")
    }

    /// `postgres://postgres@localhost:PORT/DBNAME?sslmode=verify-full&sslrootcert=CA`.
    pub fn url(&self, server: &TestPostgres, dbname: &str) -> String {
        format!(
            "postgres://postgres@localhost:{}/{dbname}?sslmode=verify-full&sslrootcert={}",
            server.port(),
            self.ca_file().display()
        )
    }
}

impl Drop for TestTls {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl TestPostgres {
    /// Turns TLS on: generates a CA and a server certificate for
    /// `localhost` (rcgen), installs them in the data directory, sets `ssl =
    /// on` and reloads. Plaintext connections keep working, except for
    /// [`TLS_ONLY_USER`]; [`CERT_USER`] logs in with the client certificate.
    /// Survives [`restart`](Self::restart).
    ///
    /// # Errors
    /// [`TestPostgresError::Io`] writing the files,
    /// [`TestPostgresError::Database`] when the server refuses the settings.
    ///
    /// ```no_run
    /// # async fn f() -> Result<(), pgwake::testing::TestPostgresError> {
    /// let server = pgwake::testing::TestPostgres::new()?;
    /// let tls = server.enable_tls().await?;
    /// println!("trust {}", tls.ca_file().display());
    /// # Ok(()) }
    /// ```
    pub async fn enable_tls(&self) -> Result<TestTls, TestPostgresError> {
        let dir = super::scratch::private_dir("pgwake-tls", None)
            .map_err(|(context, source)| TestPostgresError::Io { context, source })?;
        let tls = TestTls { dir };
        let generated = generate().map_err(|err| TestPostgresError::Command {
            command: "generating test certificates (rcgen)".into(),
            detail: err.to_string(),
        })?;
        write(&tls.ca_file(), &generated.ca)?;
        write(&tls.unrelated_ca_file(), &generated.unrelated_ca)?;
        write(&tls.client_cert_file(), &generated.client_cert)?;
        write(&tls.client_key_file(), &generated.client_key)?;
        let data_dir = self.data_dir();
        write_owned_by_server(&data_dir, "server.crt", &generated.server_cert)?;
        write_owned_by_server(&data_dir, "server.key", &generated.server_key)?;
        write_owned_by_server(&data_dir, "root.crt", &generated.ca)?;
        let hba = data_dir.join("pg_hba.conf");
        let rules = std::fs::read_to_string(&hba).map_err(|source| TestPostgresError::Io {
            context: format!("reading {}", hba.display()),
            source,
        })?;
        // First match wins: these go before initdb's `trust` lines.
        let rules = format!(
            "hostssl all {CERT_USER} 127.0.0.1/32 cert\n\
             hostnossl all {CERT_USER} 127.0.0.1/32 reject\n\
             hostnossl all {TLS_ONLY_USER} 127.0.0.1/32 reject\n{rules}"
        );
        write_owned_by_server(&data_dir, "pg_hba.conf", &rules)?;
        let client = crate::ConnectionConfig::from_url(&format!("{}?sslmode=disable", self.url()))?
            .connect()
            .await?;
        // One statement per query: ALTER SYSTEM refuses a transaction block,
        // which a multi-statement query is.
        let statements = [
            "ALTER SYSTEM SET ssl = on".to_string(),
            "ALTER SYSTEM SET ssl_cert_file = 'server.crt'".into(),
            "ALTER SYSTEM SET ssl_key_file = 'server.key'".into(),
            "ALTER SYSTEM SET ssl_ca_file = 'root.crt'".into(),
            format!(
                "DO $$ BEGIN
                   CREATE ROLE {CERT_USER} LOGIN SUPERUSER;
                   CREATE ROLE {TLS_ONLY_USER} LOGIN SUPERUSER;
                 EXCEPTION WHEN duplicate_object THEN NULL; END $$"
            ),
            "SELECT pg_reload_conf()".into(),
        ];
        for statement in statements {
            client.batch_execute(&statement).await.map_err(|source| {
                TestPostgresError::Database {
                    context: "turning TLS on",
                    source,
                }
            })?;
        }
        // A reload applies asynchronously; a bad setting only shows in the log.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        loop {
            let on: String = client
                .query_one("SHOW ssl", &[])
                .await
                .and_then(|row| row.try_get(0))
                .map_err(|source| TestPostgresError::Database {
                    context: "checking that TLS is on",
                    source,
                })?;
            if on == "on" {
                return Ok(tls);
            }
            if std::time::Instant::now() > deadline {
                return Err(TestPostgresError::StartFailed {
                    reason: "ssl is still off 30 s after the reload".into(),
                    log: self.log_file(),
                    log_tail: String::new(),
                });
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }
}

struct Generated {
    ca: String,
    unrelated_ca: String,
    server_cert: String,
    server_key: String,
    client_cert: String,
    client_key: String,
}

fn generate() -> Result<Generated, rcgen::Error> {
    let (ca, ca_key) = certificate_authority("pgwake test CA")?;
    let (unrelated_ca, _) = certificate_authority("pgwake unrelated CA")?;
    let (server_cert, server_key) = signed(
        vec!["localhost".into()],
        "localhost",
        ExtendedKeyUsagePurpose::ServerAuth,
        &ca,
        &ca_key,
    )?;
    let (client_cert, client_key) = signed(
        Vec::new(),
        CERT_USER,
        ExtendedKeyUsagePurpose::ClientAuth,
        &ca,
        &ca_key,
    )?;
    Ok(Generated {
        ca: ca.pem(),
        unrelated_ca: unrelated_ca.pem(),
        server_cert,
        server_key,
        client_cert,
        client_key,
    })
}

fn certificate_authority(name: &str) -> Result<(Certificate, KeyPair), rcgen::Error> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let key = KeyPair::generate()?;
    Ok((params.self_signed(&key)?, key))
}

fn signed(
    names: Vec<String>,
    common_name: &str,
    purpose: ExtendedKeyUsagePurpose,
    ca: &Certificate,
    ca_key: &KeyPair,
) -> Result<(String, String), rcgen::Error> {
    let mut params = CertificateParams::new(names)?;
    params
        .distinguished_name
        .push(DnType::CommonName, common_name);
    params.extended_key_usages = vec![purpose];
    let key = KeyPair::generate()?;
    let cert = params.signed_by(&key, ca, ca_key)?;
    Ok((cert.pem(), key.serialize_pem()))
}

fn write(path: &Path, contents: &str) -> Result<(), TestPostgresError> {
    std::fs::write(path, contents).map_err(|source| TestPostgresError::Io {
        context: format!("writing {}", path.display()),
        source,
    })
}

/// Writes a file the server reads, owned like its data directory and
/// private to it (the server refuses a key others can read).
fn write_owned_by_server(
    data_dir: &Path,
    name: &str,
    contents: &str,
) -> Result<(), TestPostgresError> {
    let path = data_dir.join(name);
    let failed = |context: &str| {
        let context = format!("{context} {}", path.display());
        move |source| TestPostgresError::Io { context, source }
    };
    write(&path, contents)?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
        .map_err(failed("chmod"))?;
    let owner = std::fs::metadata(data_dir).map_err(failed("reading the owner of"))?;
    std::os::unix::fs::chown(&path, Some(owner.uid()), Some(owner.gid()))
        .map_err(failed("chown"))?;
    Ok(())
}

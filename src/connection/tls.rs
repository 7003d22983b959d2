//! TLS as libpq does it (`sslmode`, `sslrootcert`, `sslcert`, `sslkey`,
//! `sslsni`), on rustls, for every connection pgwake opens.
//!
//! A setting pgwake cannot honour is refused when the URL is parsed; nothing
//! is ever downgraded to less than the URL asks for.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};
use tokio_postgres_rustls::MakeRustlsConnect;

/// libpq's `sslmode`: whether a connection is encrypted, and how much of the
/// server's certificate is checked.
///
/// ```
/// use pgwake::connection::SslMode;
/// use pgwake::ConnectionConfig;
///
/// // libpq's default, and pgwake's.
/// assert_eq!(ConnectionConfig::from_url("postgres://db.internal/app").unwrap().ssl_mode(), SslMode::Prefer);
/// let config = ConnectionConfig::from_url("postgres://db.internal/app?sslmode=verify-full&sslrootcert=system").unwrap();
/// assert_eq!(config.ssl_mode(), SslMode::VerifyFull);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum SslMode {
    /// Plaintext only.
    Disable,
    /// TLS when the server offers it, plaintext when it does not. The
    /// certificate is checked only when a root certificate is configured
    /// (`sslrootcert`, or `~/.postgresql/root.crt` exists), as in libpq.
    Prefer,
    /// TLS or no connection; the certificate is checked as for `Prefer`.
    Require,
    /// TLS, and a certificate signed by a trusted root, for any host name.
    VerifyCa,
    /// TLS, a certificate signed by a trusted root and issued for the host
    /// connected to: the only mode that stops a man in the middle.
    VerifyFull,
}

impl SslMode {
    fn parse(value: &str) -> Result<Self, String> {
        match value {
            "disable" => Ok(SslMode::Disable),
            "prefer" => Ok(SslMode::Prefer),
            "require" => Ok(SslMode::Require),
            "verify-ca" => Ok(SslMode::VerifyCa),
            "verify-full" => Ok(SslMode::VerifyFull),
            "allow" => Err(
                "sslmode=allow (plaintext first, TLS only if the server insists) is \
                            not supported: use sslmode=prefer, or disable"
                    .into(),
            ),
            _ => Err(
                "sslmode must be one of disable, prefer, require, verify-ca, verify-full".into(),
            ),
        }
    }

    fn verifies_chain(self) -> bool {
        matches!(self, SslMode::VerifyCa | SslMode::VerifyFull)
    }

    /// What tokio-postgres is told: it knows no verification, which the
    /// connector does.
    fn driver_mode(self) -> tokio_postgres::config::SslMode {
        match self {
            SslMode::Disable => tokio_postgres::config::SslMode::Disable,
            SslMode::Prefer => tokio_postgres::config::SslMode::Prefer,
            SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => {
                tokio_postgres::config::SslMode::Require
            }
        }
    }
}

/// Where trusted roots come from.
enum Roots {
    File(PathBuf),
    /// The operating system's store (`sslrootcert=system`, libpq 16).
    System,
}

/// The TLS half of a connection string, ready to connect with.
#[derive(Clone)]
pub(super) struct TlsSettings {
    pub(super) mode: SslMode,
    pub(super) driver_mode: tokio_postgres::config::SslMode,
    pub(super) connector: MakeRustlsConnect,
}

/// Reads the TLS options taken out of a connection string (see
/// `options.rs`) and loads the files they name. `unix_sockets_only`: libpq
/// ignores `sslmode` for Unix-domain sockets, which carry no TLS.
pub(super) fn tls_settings(
    options: &[(String, String)],
    unix_sockets_only: bool,
) -> Result<TlsSettings, String> {
    let mut mode = None;
    let mut roots = None;
    let mut cert = None;
    let mut key = None;
    let mut sni = true;
    for (name, value) in options {
        match name.as_str() {
            "sslmode" => mode = Some(SslMode::parse(value)?),
            "sslrootcert" if value == "system" => roots = Some(Roots::System),
            "sslrootcert" => roots = Some(Roots::File(PathBuf::from(value))),
            "sslcert" => cert = Some(PathBuf::from(value)),
            "sslkey" => key = Some(PathBuf::from(value)),
            "sslsni" => {
                sni = match value.as_str() {
                    "1" => true,
                    "0" => false,
                    _ => return Err("sslsni must be 0 or 1".into()),
                }
            }
            other => {
                return Err(format!(
                    "{other} is not supported by pgwake (rustls): remove it, and use an \
                     unencrypted key file for sslkey"
                ))
            }
        }
    }
    let mode = match (mode, &roots) {
        // libpq 16: the system's roots are for public CAs, so only a full
        // check means anything; it refuses weaker modes the same way.
        (None, Some(Roots::System)) => SslMode::VerifyFull,
        (Some(mode), Some(Roots::System)) if mode != SslMode::VerifyFull => {
            return Err(format!(
                "sslrootcert=system needs sslmode=verify-full (it is {mode:?}): a public CA \
                 signs certificates for anyone, so only the host-name check authenticates"
            ))
        }
        (mode, _) => mode.unwrap_or(SslMode::Prefer),
    };
    let roots = roots.or_else(|| default_root_file().map(Roots::File));
    if mode.verifies_chain() && roots.is_none() {
        return Err(format!(
            "sslmode={} needs trusted roots: set sslrootcert=/path/to/ca.pem (or \
             sslrootcert=system for the operating system's), or create ~/.postgresql/root.crt",
            if mode == SslMode::VerifyCa {
                "verify-ca"
            } else {
                "verify-full"
            }
        ));
    }
    let client_identity = match (cert, key) {
        (None, None) => None,
        (Some(cert), Some(key)) => Some((load_certificates(&cert)?, load_key(&key)?)),
        _ => return Err("sslcert and sslkey go together: set both, or neither".into()),
    };
    // ring, not rustls' preferred aws-lc-rs: it builds with no C toolchain
    // beyond cc, quickly. Deprecated only for lacking post-quantum key
    // exchange, which PostgreSQL's OpenSSL 3.0 to 3.4 does not offer either.
    #[allow(deprecated)]
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier: Arc<dyn ServerCertVerifier> = match (mode, roots) {
        (SslMode::Disable, _) | (_, None) => Arc::new(AnyCertificate(provider.clone())),
        (mode, Some(roots)) => {
            let roots = Arc::new(load_roots(&roots)?);
            let webpki = WebPkiServerVerifier::builder_with_provider(roots, provider.clone())
                .build()
                .map_err(|err| format!("the trusted roots cannot be used: {err}"))?;
            if mode == SslMode::VerifyFull {
                webpki
            } else {
                Arc::new(ChainOnly(webpki))
            }
        }
    };
    let builder = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|err| format!("rustls: {err}"))?
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    let mut config = match client_identity {
        None => builder.with_no_client_auth(),
        Some((certs, key)) => builder
            .with_client_auth_cert(certs, key)
            .map_err(|err| format!("sslcert and sslkey cannot be used together: {err}"))?,
    };
    config.enable_sni = sni;
    let driver_mode = if unix_sockets_only {
        tokio_postgres::config::SslMode::Disable
    } else {
        mode.driver_mode()
    };
    Ok(TlsSettings {
        mode,
        driver_mode,
        connector: MakeRustlsConnect::new(config),
    })
}

/// libpq's default root file, used when it exists.
fn default_root_file() -> Option<PathBuf> {
    let path = PathBuf::from(std::env::var_os("HOME")?).join(".postgresql/root.crt");
    path.is_file().then_some(path)
}

fn load_roots(roots: &Roots) -> Result<RootCertStore, String> {
    let mut store = RootCertStore::empty();
    match roots {
        Roots::File(path) => {
            for cert in load_certificates(path)? {
                store.add(cert).map_err(|err| {
                    format!(
                        "sslrootcert {} holds an unusable certificate: {err}",
                        path.display()
                    )
                })?;
            }
        }
        Roots::System => {
            let found = rustls_native_certs::load_native_certs();
            store.add_parsable_certificates(found.certs);
            if store.is_empty() {
                return Err(
                    "sslrootcert=system: no trusted roots were found in the operating system's \
                     store (Debian: apt-get install ca-certificates)"
                        .into(),
                );
            }
        }
    }
    Ok(store)
}

fn load_certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let unreadable = |err: &dyn std::fmt::Display| {
        format!("cannot read certificates from {}: {err}", path.display())
    };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|err| unreadable(&err))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|err| unreadable(&err))?;
    if certs.is_empty() {
        return Err(format!("{} holds no PEM certificate", path.display()));
    }
    Ok(certs)
}

fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, String> {
    PrivateKeyDer::from_pem_file(path).map_err(|err| {
        format!(
            "cannot read a private key from {} (PEM, unencrypted): {err}",
            path.display()
        )
    })
}

/// `prefer`/`require` without roots: encrypted, not authenticated, as in
/// libpq. The handshake's signatures are still checked, so the session key
/// belongs to whoever holds the certificate's key.
#[derive(Debug)]
struct AnyCertificate(Arc<CryptoProvider>);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// `verify-ca`: the chain must lead to a trusted root; the name is not
/// checked. webpki checks the chain before the name, so a name error means
/// the chain passed.
#[derive(Debug)]
struct ChainOnly(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
        {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(pairs: &[(&str, &str)]) -> Result<TlsSettings, String> {
        let options: Vec<(String, String)> = pairs
            .iter()
            .map(|(name, value)| (name.to_string(), value.to_string()))
            .collect();
        tls_settings(&options, false)
    }

    #[test]
    fn modes_map_to_the_drivers_and_default_to_prefer() {
        use tokio_postgres::config::SslMode as Driver;
        let cases = [
            ("disable", SslMode::Disable, Driver::Disable),
            ("prefer", SslMode::Prefer, Driver::Prefer),
            ("require", SslMode::Require, Driver::Require),
        ];
        for (value, mode, driver) in cases {
            let parsed = settings(&[("sslmode", value)]).unwrap();
            assert_eq!((parsed.mode, parsed.driver_mode), (mode, driver), "{value}");
        }
        assert_eq!(settings(&[]).unwrap().mode, SslMode::Prefer);
    }

    #[test]
    fn unix_sockets_carry_no_tls_whatever_the_mode() {
        let options = [("sslmode".to_string(), "require".to_string())];
        let parsed = tls_settings(&options, true).unwrap();
        assert_eq!(parsed.driver_mode, tokio_postgres::config::SslMode::Disable);
    }

    #[test]
    fn what_cannot_be_honoured_is_refused() {
        for (pairs, expected) in [
            (vec![("sslmode", "allow")], "not supported"),
            (vec![("sslmode", "verify")], "must be one of"),
            (vec![("sslsni", "yes")], "0 or 1"),
            (vec![("sslpassword", "x")], "not supported"),
            (vec![("sslcrl", "/x")], "not supported"),
            (vec![("sslcert", "/x")], "go together"),
            (
                vec![("sslmode", "require"), ("sslrootcert", "system")],
                "needs sslmode=verify-full",
            ),
            (
                vec![("sslrootcert", "/nonexistent/pgwake-ca.pem")],
                "/nonexistent/pgwake-ca.pem",
            ),
        ] {
            let err = settings(&pairs)
                .err()
                .unwrap_or_else(|| panic!("{pairs:?} accepted"));
            assert!(err.contains(expected), "{pairs:?}: {err}");
        }
    }

    #[test]
    fn verification_without_roots_says_how_to_give_them() {
        if default_root_file().is_some() {
            return; // this machine's libpq default would be used
        }
        for mode in ["verify-ca", "verify-full"] {
            let err = settings(&[("sslmode", mode)]).err().unwrap();
            assert!(err.contains("sslrootcert="), "{err}");
        }
    }

    #[test]
    fn system_roots_imply_a_full_check() {
        let parsed = settings(&[("sslrootcert", "system")]);
        // A machine without CA certificates reports that instead.
        match parsed {
            Ok(parsed) => assert_eq!(parsed.mode, SslMode::VerifyFull),
            Err(err) => assert!(err.contains("no trusted roots"), "{err}"),
        }
    }
}

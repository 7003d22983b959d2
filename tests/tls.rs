//! TLS as libpq does it, against a real server with `ssl = on` and generated
//! certificates (`TestPostgres::enable_tls`): every `sslmode`, root and
//! client certificates, refusals that are final, and a runtime whose every
//! connection (pool, listeners, notifier, migrator, CLI) must be encrypted.

use std::time::Duration;

use pgwake::testing::{TestPostgres, TestTls, CERT_USER, TLS_ONLY_USER};
use pgwake::workflow::{
    Activities, ActivityContext, ActivityError, Client, StartOptions, WorkflowContext,
    WorkflowError, Workflows,
};
use pgwake::{ConnectError, ConnectionConfig, ListenerState, Runtime, RuntimeConfig};

const WAIT: Duration = Duration::from_secs(60);

async fn tls_server() -> (TestPostgres, TestTls) {
    let server = TestPostgres::new().unwrap();
    let tls = server.enable_tls().await.unwrap();
    (server, tls)
}

/// `postgres://USER@HOST:PORT/postgres?OPTIONS`.
fn url(server: &TestPostgres, user: &str, host: &str, options: &str) -> String {
    format!(
        "postgres://{user}@{host}:{}/postgres?{options}",
        server.port()
    )
}

/// Whether the session `url` opens is encrypted, by the server's account.
async fn encrypted(url: &str) -> Result<bool, ConnectError> {
    let client = ConnectionConfig::from_url(url)?.connect().await?;
    let row = client
        .query_one(
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            &[],
        )
        .await
        .unwrap();
    Ok(row.get(0))
}

#[actix_rt::test]
async fn every_sslmode_connects_as_libpq_would() {
    let (server, tls) = tls_server().await;
    let ca = tls.ca_file().display().to_string();
    let verify_full = format!("sslmode=verify-full&sslrootcert={ca}");
    assert!(
        encrypted(&url(&server, "postgres", "localhost", &verify_full))
            .await
            .unwrap()
    );
    assert!(encrypted(&tls.url(&server, "postgres")).await.unwrap());
    // verify-ca checks the chain, not the name: 127.0.0.1 is not in the certificate.
    let verify_ca = format!("sslmode=verify-ca&sslrootcert={ca}");
    assert!(
        encrypted(&url(&server, "postgres", "127.0.0.1", &verify_ca))
            .await
            .unwrap()
    );
    for mode in ["require", "prefer"] {
        let options = format!("sslmode={mode}");
        assert!(
            encrypted(&url(&server, "postgres", "127.0.0.1", &options))
                .await
                .unwrap(),
            "{mode}"
        );
    }
    // No sslmode: libpq's default, prefer.
    assert!(encrypted(&format!(
        "postgres://postgres@127.0.0.1:{}/postgres",
        server.port()
    ))
    .await
    .unwrap());
    assert!(
        !encrypted(&url(&server, "postgres", "127.0.0.1", "sslmode=disable"))
            .await
            .unwrap()
    );
    // The server refuses this user in plaintext; over TLS it is let in.
    let refused = encrypted(&url(&server, TLS_ONLY_USER, "127.0.0.1", "sslmode=disable"))
        .await
        .unwrap_err();
    assert!(refused.to_string().contains("no encryption"), "{refused}");
    assert!(
        encrypted(&url(&server, TLS_ONLY_USER, "localhost", &verify_full))
            .await
            .unwrap()
    );
    // The key=value form, with a quoted path.
    let key_value = format!(
        "host=localhost port={} user={TLS_ONLY_USER} dbname=postgres sslmode=verify-full sslrootcert='{ca}'",
        server.port()
    );
    assert!(encrypted(&key_value).await.unwrap());
}

#[actix_rt::test]
async fn certificates_that_do_not_check_out_are_refused_for_good() {
    let (server, tls) = tls_server().await;
    let ca = tls.ca_file().display().to_string();
    // A name the certificate does not hold.
    let wrong_name = encrypted(&url(
        &server,
        "postgres",
        "127.0.0.1",
        &format!("sslmode=verify-full&sslrootcert={ca}"),
    ))
    .await
    .unwrap_err();
    assert!(!wrong_name.is_transient(), "{wrong_name}");
    assert!(
        wrong_name.to_string().contains("certificate"),
        "{wrong_name}"
    );
    // A server signed by a CA we do not trust.
    let untrusted = encrypted(&url(
        &server,
        "postgres",
        "localhost",
        &format!(
            "sslmode=verify-ca&sslrootcert={}",
            tls.unrelated_ca_file().display()
        ),
    ))
    .await
    .unwrap_err();
    assert!(!untrusted.is_transient(), "{untrusted}");
    assert!(untrusted.to_string().contains("certificate"), "{untrusted}");
    // require with a root file checks the chain too, as in libpq.
    let untrusted_require = encrypted(&url(
        &server,
        "postgres",
        "localhost",
        &format!(
            "sslmode=require&sslrootcert={}",
            tls.unrelated_ca_file().display()
        ),
    ))
    .await
    .unwrap_err();
    assert!(!untrusted_require.is_transient(), "{untrusted_require}");

    // Certificate authentication: the client certificate is the password.
    let verify_full = format!("sslmode=verify-full&sslrootcert={ca}");
    let without = encrypted(&url(&server, CERT_USER, "localhost", &verify_full))
        .await
        .unwrap_err();
    assert!(!without.is_transient(), "{without}");
    let with_certificate = format!(
        "{verify_full}&sslcert={}&sslkey={}",
        tls.client_cert_file().display(),
        tls.client_key_file().display()
    );
    let client =
        ConnectionConfig::from_url(&url(&server, CERT_USER, "localhost", &with_certificate))
            .unwrap()
            .connect()
            .await
            .unwrap();
    let user: String = client
        .query_one("SELECT current_user::text", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(user, CERT_USER);

    // A runtime on an untrusted server fails at start instead of retrying.
    let untrusted_url = url(
        &server,
        "postgres",
        "localhost",
        &format!(
            "sslmode=verify-full&sslrootcert={}",
            tls.unrelated_ca_file().display()
        ),
    );
    let started = Runtime::builder(RuntimeConfig::new(untrusted_url))
        .activity_worker(Activities::new().worker(["default"]))
        .start()
        .await;
    match started {
        Ok(runtime) => {
            runtime.shutdown(Duration::from_secs(5)).await;
            panic!("a runtime started on a server whose certificate is not trusted");
        }
        Err(err) => assert!(err.to_string().contains("certificate"), "{err}"),
    }

    // Files that cannot be used are reported when the URL is parsed.
    let missing = ConnectionConfig::from_url(&url(
        &server,
        "postgres",
        "localhost",
        "sslmode=verify-full&sslrootcert=/nonexistent/ca.pem",
    ))
    .unwrap_err();
    assert!(matches!(missing, ConnectError::Tls { .. }), "{missing}");
    assert!(
        missing.to_string().contains("/nonexistent/ca.pem"),
        "{missing}"
    );
}

#[actix_rt::test]
async fn a_server_without_tls_is_refused_by_require_and_used_in_plaintext_by_prefer() {
    let server = TestPostgres::new().unwrap();
    let refused = encrypted(&url(&server, "postgres", "127.0.0.1", "sslmode=require"))
        .await
        .unwrap_err();
    assert!(!refused.is_transient(), "{refused}");
    assert!(refused.to_string().contains("TLS"), "{refused}");
    assert!(
        !encrypted(&url(&server, "postgres", "127.0.0.1", "sslmode=prefer"))
            .await
            .unwrap()
    );
}

#[actix_rt::test]
async fn a_runtime_whose_every_connection_must_be_encrypted_runs_a_workflow() {
    let (server, tls) = tls_server().await;
    let database = server.create_empty_database().await.unwrap();
    // The server refuses this user in plaintext: every connection below,
    // whoever opens it, is encrypted or fails.
    let url = format!(
        "postgres://{TLS_ONLY_USER}@localhost:{}/{}?sslmode=verify-full&sslrootcert={}",
        server.port(),
        database.name(),
        tls.ca_file().display()
    );
    let mut migrator = ConnectionConfig::from_url(&url)
        .unwrap()
        .connect()
        .await
        .unwrap();
    pgwake::migrate::up(&mut migrator, None).await.unwrap();

    let workflows =
        Workflows::new().register("greet", |ctx: WorkflowContext, name: String| async move {
            ctx.sleep(Duration::from_millis(50)).await?;
            let greeting: String = ctx.activity("greet", &name).await?;
            Ok::<_, WorkflowError>(greeting)
        });
    let activities =
        Activities::new().register("greet", |_: ActivityContext, name: String| async move {
            Ok::<_, ActivityError>(format!("hello, {name}"))
        });
    let runtime = Runtime::builder(RuntimeConfig::new(url.clone()))
        .workflow_worker(workflows.worker(["default"]))
        .activity_worker(activities.worker(["default"]))
        .start()
        .await
        .unwrap();
    let client = Client::new(runtime.store().clone());
    client
        .start("greet", "greet-1", &"tls", StartOptions::default())
        .await
        .unwrap();
    let greeting: String = client.result("greet-1", WAIT).await.unwrap();
    assert_eq!(greeting, "hello, tls");
    let health = runtime.health();
    assert!(
        health
            .listeners
            .iter()
            .all(|listener| listener.state == ListenerState::Listening),
        "{health:?}"
    );
    let plaintext: i64 = migrator
        .query_one(
            "SELECT count(*) FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid) \
             WHERE a.datname = current_database() AND NOT s.ssl",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(plaintext, 0);
    runtime.shutdown(Duration::from_secs(5)).await;

    // The command line opens its connections the same way.
    #[cfg(feature = "cli")]
    {
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_pgwake"))
            .args(["migrate", "status"])
            .env("DATABASE_URL", &url)
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
}

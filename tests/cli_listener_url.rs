//! `pgwake work --listener-url` (or `PGWAKE_LISTENER_URL`): the listeners
//! connect there while the pool stays on `DATABASE_URL`, which is how the
//! command runs with notifications behind PgBouncer in transaction mode.

mod support;

use std::process::{Command, Output};
use std::time::Duration;

use pgwake::testing::fresh_database;
use tokio_postgres::config::Host;

fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// A port nothing listens on: a command that gets past its checks fails to
/// connect, quickly.
fn closed_url() -> String {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    format!("postgres://postgres@127.0.0.1:{port}/x?connect_timeout=2")
}

#[test]
fn a_malformed_listener_url_is_refused_by_name_without_its_password() {
    let malformed = [
        "postgres://app:hunter2@db:notaport/x",
        "host=db password=hunter2 port=notaport",
        "postgres://app:hunter2@db/x?sslmode=bogus",
    ];
    for url in malformed {
        for from_env in [false, true] {
            let mut command = Command::new(env!("CARGO_BIN_EXE_pgwake"));
            command
                .args(["work", "--queue", "q"])
                .env("DATABASE_URL", closed_url())
                .env("RUST_LOG", "pgwake=info");
            if from_env {
                command.env("PGWAKE_LISTENER_URL", url);
            } else {
                command
                    .args(["--listener-url", url])
                    .env_remove("PGWAKE_LISTENER_URL");
            }
            let output = command.output().expect("run pgwake");
            let text = text(&output);
            let case = format!("{url:?} (from the environment: {from_env})");
            assert_eq!(output.status.code(), Some(1), "{case}: {text}");
            assert!(
                text.contains("--listener-url (or PGWAKE_LISTENER_URL) is refused"),
                "{case} names the flag: {text}"
            );
            assert!(
                text.contains("not valid") || text.contains("TLS settings"),
                "{case} says what is wrong: {text}"
            );
            assert!(
                !text.contains("hunter2"),
                "{case} hides the password: {text}"
            );
            assert!(
                !text.contains("could not connect") && !text.contains("error connecting"),
                "{case} was refused before connecting: {text}"
            );
        }
    }
}

/// The listener URL differs from `DATABASE_URL` by its role, so that
/// `pg_stat_activity` tells which URL each connection came from.
#[actix_rt::test]
async fn work_connects_its_listeners_to_the_listener_url_and_its_pool_to_the_database_url() {
    let database = fresh_database().await.unwrap();
    let admin = support::connect(database.url()).await;
    let role = format!("{}_listener", database.name());
    admin
        .batch_execute(&format!("CREATE ROLE {role} LOGIN"))
        .await
        .unwrap();
    let server = database.config().postgres_config().clone();
    let host = match server.get_hosts().first() {
        Some(Host::Tcp(name)) => name.clone(),
        Some(Host::Unix(dir)) => dir.display().to_string(),
        None => "localhost".to_string(),
    };
    let port = server.get_ports().first().copied().unwrap_or(5432);
    let database_user = server.get_user().unwrap_or("postgres").to_string();
    let listener_url = format!(
        "host={host} port={port} user={role} dbname={}",
        database.name()
    );

    let mut worker = support::WorkProcess::start(
        env!("CARGO_BIN_EXE_pgwake"),
        &[
            "work",
            "--queue",
            "listener-url",
            "--listener-url",
            &listener_url,
        ],
        &[("DATABASE_URL", database.url())],
    );
    let connections_by_role = || {
        let admin = &admin;
        let name = database.name().to_string();
        async move {
            admin
                .query(
                    "SELECT application_name, usename::text FROM pg_stat_activity \
                     WHERE datname = $1 AND application_name LIKE 'pgwake-%' \
                     ORDER BY 1, 2",
                    &[&name],
                )
                .await
                .unwrap()
                .into_iter()
                .map(|row| (row.get::<_, String>(0), row.get::<_, String>(1)))
                .collect::<Vec<_>>()
        }
    };
    support::eventually(
        Duration::from_secs(20),
        "both listeners connected, as the listener URL's role",
        || async {
            let listeners = connections_by_role()
                .await
                .into_iter()
                .filter(|(application, user)| {
                    application.starts_with("pgwake-listener:") && *user == role
                })
                .count();
            listeners >= 2
        },
    )
    .await;
    let connections = connections_by_role().await;
    assert!(
        worker.child.try_wait().unwrap().is_none(),
        "the worker still runs: {}",
        worker.log()
    );
    for (application, user) in &connections {
        if application.starts_with("pgwake-listener:") {
            assert_eq!(user, &role, "{connections:?}");
        }
        if application == "pgwake-worker" || application == "pgwake-store" {
            assert_eq!(user, &database_user, "{connections:?}");
        }
    }
    assert!(
        connections
            .iter()
            .any(|(application, _)| application == "pgwake-worker"),
        "the pool is on DATABASE_URL: {connections:?}"
    );
    drop(worker);
    // The role is the server's, not the database's: do not leave it behind
    // on a shared server. Its backends may take a moment to end.
    support::eventually(Duration::from_secs(10), "the role dropped", || async {
        admin
            .batch_execute(&format!("DROP ROLE IF EXISTS {role}"))
            .await
            .is_ok()
    })
    .await;
}

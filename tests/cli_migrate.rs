//! `pgwake migrate` as a user runs it, bad input included.

use std::process::{Command, Output};

use pgwake::testing::fresh_empty_database;

fn pgwake(args: &[&str], database_url: Option<&str>) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_pgwake"));
    command
        .args(args)
        .env_remove("DATABASE_URL")
        .env("RUST_LOG", "debug");
    if let Some(url) = database_url {
        command.env("DATABASE_URL", url);
    }
    command.output().expect("run pgwake")
}

fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

#[actix_rt::test]
async fn migrate_up_status_down_round_trip() {
    let database = fresh_empty_database().await.unwrap();
    let url = Some(database.url());
    let status = pgwake(&["migrate", "status"], url);
    assert!(status.status.success(), "{}", text(&status));
    assert!(text(&status).contains("version: none"), "{}", text(&status));

    let up = pgwake(&["migrate", "up"], url);
    assert!(up.status.success(), "{}", text(&up));
    let newest = pgwake::migrate::newest_version().to_string();
    assert!(text(&up).contains(&format!("-> {newest}")), "{}", text(&up));

    let again = pgwake(&["migrate", "up"], url);
    assert!(text(&again).contains("nothing to do"), "{}", text(&again));

    let down = pgwake(&["migrate", "down", "--all"], url);
    assert!(down.status.success(), "{}", text(&down));
    assert!(text(&pgwake(&["migrate", "status"], url)).contains("version: none"));
}

#[test]
fn a_missing_database_url_says_how_to_give_one() {
    let output = pgwake(&["migrate", "status"], None);
    assert!(!output.status.success());
    assert!(
        text(&output).contains("--database-url"),
        "{}",
        text(&output)
    );
}

#[test]
fn a_malformed_url_is_refused_without_echoing_it() {
    let output = pgwake(
        &[
            "--database-url",
            "postgres://app:hunter2@db:notaport/x",
            "migrate",
            "up",
        ],
        None,
    );
    assert!(!output.status.success());
    let text = text(&output);
    assert!(text.contains("database URL is not valid"), "{text}");
    assert!(text.contains("port"), "says what is wrong: {text}");
    assert!(!text.contains("hunter2"), "password leaked: {text}");
}

#[test]
fn a_refused_connection_names_the_server_but_not_the_password() {
    let closed_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("postgres://app:hunter2@127.0.0.1:{closed_port}/x");
    let output = pgwake(&["migrate", "status"], Some(&url));
    assert!(!output.status.success());
    let text = text(&output);
    assert!(
        text.contains(&format!(
            "could not connect to postgres://app@127.0.0.1:{closed_port}/x"
        )),
        "{text}"
    );
    assert!(!text.contains("hunter2"), "password leaked: {text}");
}

#[test]
fn a_server_that_never_answers_times_out_with_a_clear_message() {
    // Accepts TCP connections (the kernel does, from the backlog) and never
    // speaks: a half-dead host. Bounded by the URL's connect_timeout.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = silent.local_addr().unwrap().port();
    let url = format!("postgres://app:hunter2@127.0.0.1:{port}/x?connect_timeout=1");
    let started = std::time::Instant::now();
    let output = pgwake(&["migrate", "up"], Some(&url));
    assert!(!output.status.success());
    let text = text(&output);
    assert!(text.contains("within 1s"), "{text}");
    assert!(text.contains("reachable"), "says what to check: {text}");
    assert!(!text.contains("hunter2"), "password leaked: {text}");
    assert!(
        started.elapsed() < std::time::Duration::from_secs(30),
        "the timeout was honoured"
    );
    drop(silent);
}

#[actix_rt::test]
async fn an_unknown_version_is_refused() {
    let database = fresh_empty_database().await.unwrap();
    for args in [
        ["migrate", "up", "--to", "77"].as_slice(),
        ["migrate", "force", "77"].as_slice(),
    ] {
        let output = pgwake(args, Some(database.url()));
        assert!(!output.status.success());
        assert!(
            text(&output).contains("there is no migration 77"),
            "{}",
            text(&output)
        );
    }
}

#[actix_rt::test]
async fn a_dirty_database_names_the_command_that_fixes_it() {
    let database = fresh_empty_database().await.unwrap();
    assert!(
        pgwake(&["migrate", "up", "--to", "1"], Some(database.url()))
            .status
            .success()
    );
    let client = pgwake::ConnectionConfig::from_url(database.url())
        .unwrap()
        .connect()
        .await
        .unwrap();
    client
        .batch_execute("UPDATE schema_migrations SET version = 2, dirty = true")
        .await
        .unwrap();

    let output = pgwake(&["migrate", "up"], Some(database.url()));
    assert!(!output.status.success());
    assert!(
        text(&output).contains("pgwake migrate force"),
        "{}",
        text(&output)
    );
    let status = pgwake(&["migrate", "status"], Some(database.url()));
    assert!(text(&status).contains("dirty"), "{}", text(&status));

    assert!(pgwake(&["migrate", "force", "1"], Some(database.url()))
        .status
        .success());
    assert!(pgwake(&["migrate", "up"], Some(database.url()))
        .status
        .success());
}

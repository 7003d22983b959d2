//! The throwaway cluster itself: data survives restarts, nothing outlives it.

use std::path::Path;
use std::time::Duration;

use pgwake::testing::TestPostgres;
use pgwake::ConnectionConfig;

#[actix_rt::test]
async fn restart_keeps_data_and_port() {
    let mut server = TestPostgres::new().expect("start a throwaway server");
    let url = server.url();
    let client = ConnectionConfig::from_url(&url)
        .unwrap()
        .connect()
        .await
        .unwrap();
    client
        .batch_execute("CREATE TABLE kept (v int); INSERT INTO kept VALUES (42)")
        .await
        .unwrap();
    drop(client);

    server.restart().expect("restart");
    assert_eq!(server.url(), url, "restart keeps the port");

    let client = ConnectionConfig::from_url(&url)
        .unwrap()
        .connect()
        .await
        .unwrap();
    let row = client.query_one("SELECT v FROM kept", &[]).await.unwrap();
    assert_eq!(row.get::<_, i32>(0), 42);
}

#[actix_rt::test]
async fn crash_then_start_recovers_flushed_data() {
    let mut server = TestPostgres::new().expect("start a throwaway server");
    let client = ConnectionConfig::from_url(&server.url())
        .unwrap()
        .connect()
        .await
        .unwrap();
    client
        .batch_execute("CREATE TABLE kept (v int); INSERT INTO kept VALUES (7)")
        .await
        .unwrap();
    // synchronous_commit is off: make the commit's WAL reach the disk, as
    // the WAL writer would within a fraction of a second.
    client.batch_execute("CHECKPOINT").await.unwrap();
    drop(client);

    server.crash().unwrap();
    assert!(!server.is_running());
    server.start().unwrap();

    let client = ConnectionConfig::from_url(&server.url())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let row = client.query_one("SELECT v FROM kept", &[]).await.unwrap();
    assert_eq!(row.get::<_, i32>(0), 7);
}

#[test]
fn drop_stops_the_server_and_removes_its_directory() {
    let server = TestPostgres::new().expect("start a throwaway server");
    let pid = server
        .postmaster_pid()
        .expect("a running postmaster has a pid");
    let data_dir = server.data_dir();
    assert!(Path::new(&format!("/proc/{pid}")).exists());

    drop(server);

    assert!(
        !Path::new(&format!("/proc/{pid}")).exists(),
        "postmaster {pid} still running"
    );
    assert!(!data_dir.exists(), "{} still exists", data_dir.display());
}

#[test]
fn a_panicking_test_still_stops_its_server() {
    let (pid_sender, pid_receiver) = std::sync::mpsc::channel();
    let outcome = std::thread::spawn(move || {
        let server = TestPostgres::new().expect("start a throwaway server");
        pid_sender.send(server.postmaster_pid().unwrap()).unwrap();
        panic!("the test fails while holding the server");
    })
    .join();
    assert!(outcome.is_err());
    let pid = pid_receiver.recv_timeout(Duration::from_secs(1)).unwrap();
    assert!(
        !Path::new(&format!("/proc/{pid}")).exists(),
        "postmaster {pid} outlived the panic"
    );
}

#[actix_rt::test]
async fn fresh_databases_are_migrated_and_independent() {
    let first = pgwake::testing::fresh_database().await.unwrap();
    let second = pgwake::testing::fresh_database().await.unwrap();
    assert_ne!(first.name(), second.name());

    let client = first.config().connect().await.unwrap();
    pgwake::migrate::check(&client)
        .await
        .expect("fresh databases are at the newest version");
    client
        .batch_execute(
            "INSERT INTO instances (instance_id, execution_id, state) VALUES ('i', 'e', 0)",
        )
        .await
        .unwrap();

    let other = second.config().connect().await.unwrap();
    let count: i64 = other
        .query_one("SELECT count(*) FROM instances", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(count, 0);
}

//! `FaultProxy` between a client and a real PostgreSQL: each fault it
//! injects is seen by the client the way the real network fault would be.

use std::future::Future;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use pgwake::testing::{fresh_database, FaultProxy, TestDatabase};
use pgwake::{ConnectError, ConnectionConfig};
use tokio_postgres::Client;

/// Generous, because CI machines stall; only reached when a test fails.
const DEADLINE: Duration = Duration::from_secs(10);

/// How long a blackholed query must stay unanswered to count as hanging.
const SILENCE: Duration = Duration::from_millis(500);

async fn upstream_of(database: &TestDatabase) -> SocketAddr {
    let config = database.config();
    let postgres = config.postgres_config();
    let host = match &postgres.get_hosts()[0] {
        tokio_postgres::config::Host::Tcp(host) => host.clone(),
        other => panic!("the test server is not on TCP: {other:?}"),
    };
    let port = postgres.get_ports().first().copied().unwrap_or(5432);
    let mut addresses = tokio::net::lookup_host(format!("{host}:{port}"))
        .await
        .unwrap();
    addresses
        .find(SocketAddr::is_ipv4)
        .expect("the test server has an IPv4 address")
}

async fn proxy_for(database: &TestDatabase) -> FaultProxy {
    FaultProxy::start(upstream_of(database).await)
        .await
        .unwrap()
}

async fn connect(proxy: &FaultProxy, database: &TestDatabase) -> Result<Client, ConnectError> {
    ConnectionConfig::from_url(&proxy.proxied_url(database.url()))
        .unwrap()
        .connect()
        .await
}

async fn select_one(client: &Client) -> Result<i32, tokio_postgres::Error> {
    Ok(client.query_one("SELECT 1", &[]).await?.get(0))
}

/// Polls `condition` until it holds, failing the test after [`DEADLINE`].
async fn eventually<F, Fut>(what: &str, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let start = Instant::now();
    while !condition().await {
        assert!(
            start.elapsed() < DEADLINE,
            "{what}: still not true after {DEADLINE:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[actix_rt::test]
async fn queries_pass_through_the_proxy() {
    let database = fresh_database().await.unwrap();
    let proxy = proxy_for(&database).await;

    let client = connect(&proxy, &database).await.unwrap();

    assert_eq!(select_one(&client).await.unwrap(), 1);
    assert_eq!(proxy.accepted_connections(), 1);
    assert_eq!(proxy.open_connections(), 1);
}

#[actix_rt::test]
async fn proxied_url_points_at_the_proxy_and_keeps_the_rest() {
    let database = fresh_database().await.unwrap();
    let proxy = proxy_for(&database).await;

    let proxied = ConnectionConfig::from_url(&proxy.proxied_url(database.url())).unwrap();

    let original = database.config();
    assert_eq!(proxied.postgres_config().get_ports(), [proxy.port()]);
    assert_eq!(proxied.dbname(), original.dbname());
    assert_eq!(
        proxied.postgres_config().get_user(),
        original.postgres_config().get_user()
    );
    assert_eq!(
        proxy.proxied_url("postgres://u:p@db.example:6543/orders?sslmode=disable"),
        format!(
            "postgres://u:p@127.0.0.1:{}/orders?sslmode=disable",
            proxy.port()
        )
    );
    assert_eq!(
        proxy.proxied_url("postgresql://db.example"),
        format!("postgresql://127.0.0.1:{}", proxy.port())
    );
}

#[actix_rt::test]
async fn drop_connections_breaks_open_clients_but_not_new_ones() {
    let database = fresh_database().await.unwrap();
    let proxy = proxy_for(&database).await;
    let victim = connect(&proxy, &database).await.unwrap();
    select_one(&victim).await.unwrap();

    proxy.drop_connections();

    eventually("the dropped client notices", || async {
        victim.is_closed() || select_one(&victim).await.is_err()
    })
    .await;
    eventually("the proxy counts no open connection", || async {
        proxy.open_connections() == 0
    })
    .await;
    let survivor = connect(&proxy, &database).await.unwrap();
    assert_eq!(select_one(&survivor).await.unwrap(), 1);
    assert_eq!(proxy.accepted_connections(), 2);
    assert_eq!(proxy.open_connections(), 1);
}

#[actix_rt::test]
async fn refuse_new_makes_connecting_fail_fast_until_lifted() {
    let database = fresh_database().await.unwrap();
    let proxy = proxy_for(&database).await;
    let established = connect(&proxy, &database).await.unwrap();

    proxy.set_refuse_new(true);
    let start = Instant::now();
    let refused = connect(&proxy, &database).await;

    assert!(
        matches!(refused, Err(ConnectError::Refused { .. })),
        "expected a refusal, got {refused:?}"
    );
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "refusal took {:?}, as long as a timeout",
        start.elapsed()
    );
    assert_eq!(
        select_one(&established).await.unwrap(),
        1,
        "refusing new connections leaves open ones alone"
    );

    proxy.set_refuse_new(false);
    let client = connect(&proxy, &database).await.unwrap();
    assert_eq!(select_one(&client).await.unwrap(), 1);
    assert_eq!(proxy.accepted_connections(), 3);
}

#[actix_rt::test]
async fn blackhole_makes_queries_hang_without_error_and_delivers_them_when_lifted() {
    let database = fresh_database().await.unwrap();
    let proxy = proxy_for(&database).await;
    let client = connect(&proxy, &database).await.unwrap();
    select_one(&client).await.unwrap();

    proxy.set_blackhole(true);
    let mut query = Box::pin(select_one(&client));

    assert!(
        tokio::time::timeout(SILENCE, &mut query).await.is_err(),
        "a blackholed query must neither complete nor fail"
    );
    assert!(!client.is_closed(), "a blackhole is silent, not a close");
    let attempt = tokio::time::timeout(SILENCE, connect(&proxy, &database)).await;
    assert!(
        attempt.is_err(),
        "connecting through a blackhole must hang, got {attempt:?}"
    );
    assert_eq!(
        proxy.open_connections(),
        2,
        "the abandoned attempt's close is held by the blackhole too"
    );

    proxy.set_blackhole(false);
    let held = tokio::time::timeout(DEADLINE, &mut query).await;
    assert_eq!(
        held.expect("the held query is answered once the blackhole lifts")
            .unwrap(),
        1
    );
    let fresh = connect(&proxy, &database).await.unwrap();
    assert_eq!(select_one(&fresh).await.unwrap(), 1);
    eventually("the abandoned attempt's close is delivered", || async {
        proxy.open_connections() == 2
    })
    .await;
    assert_eq!(proxy.accepted_connections(), 3);
}

#[actix_rt::test]
async fn dropping_the_proxy_closes_its_connections_and_stops_listening() {
    let database = fresh_database().await.unwrap();
    let proxy = proxy_for(&database).await;
    let client = connect(&proxy, &database).await.unwrap();
    select_one(&client).await.unwrap();
    let url = proxy.proxied_url(database.url());

    drop(proxy);

    eventually("the client notices the proxy is gone", || async {
        client.is_closed() || select_one(&client).await.is_err()
    })
    .await;
    let after = ConnectionConfig::from_url(&url).unwrap().connect().await;
    assert!(after.is_err(), "nothing listens any more, got {after:?}");
}

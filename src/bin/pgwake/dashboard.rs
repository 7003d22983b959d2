//! `pgwake dashboard`: the web dashboard served alone, until SIGINT or
//! SIGTERM (actix-web's server stops gracefully on either).

use std::net::SocketAddr;

use actix_web::{App, HttpServer};
use clap::Args;
use pgwake::dashboard::{self, DashboardOptions};
use pgwake::{Store, StoreOptions};

#[derive(Debug, Args)]
pub(crate) struct DashboardArgs {
    /// Where to listen. Loopback by default: anyone who can reach the port
    /// can read every payload (and act, without --read-only); put a token
    /// or a proxy with authentication in front before binding elsewhere.
    #[arg(long, default_value = "127.0.0.1:9090")]
    bind: SocketAddr,
    /// A token every request must carry (`Authorization: Bearer <token>`,
    /// or `?token=<token>` once, which sets a cookie).
    #[arg(
        long,
        env = "PGWAKE_DASHBOARD_TOKEN",
        hide_env_values = true,
        value_name = "TOKEN"
    )]
    access_token: Option<String>,
    /// Show no actions (cancel, signal, retry, remove) and refuse them.
    #[arg(long)]
    read_only: bool,
}

pub(crate) async fn run(url: &str, args: DashboardArgs) -> Result<(), String> {
    let mut store_options = StoreOptions::default();
    // A few operators' page loads at a time; the workers keep their pools.
    store_options.pool_size = 4;
    let store = Store::connect(url, store_options)
        .await
        .map_err(|e| e.to_string())?;
    let mut options = DashboardOptions::new().read_only(args.read_only);
    if let Some(token) = args.access_token.filter(|token| !token.is_empty()) {
        options = options.access_token(token);
    }
    if !args.bind.ip().is_loopback() && options.access_token.is_none() {
        tracing::warn!(
            bind = %args.bind,
            "the dashboard listens beyond loopback without an access token: anyone who reaches \
             it can read every payload"
        );
    }
    let server = HttpServer::new(move || {
        App::new().service(dashboard::scope("/", store.clone(), options.clone()))
    })
    .workers(1)
    .bind(args.bind)
    .map_err(|e| format!("cannot listen on {}: {e}", args.bind))?;
    for address in server.addrs() {
        tracing::info!(
            url = %format!("http://{address}/"),
            read_only = args.read_only,
            "dashboard listening"
        );
    }
    server
        .run()
        .await
        .map_err(|e| format!("the dashboard's server failed: {e}"))
}

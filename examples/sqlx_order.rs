//! An application that writes with sqlx starts a workflow in the same
//! transaction as its own row: the order and its workflow commit together
//! or not at all. `pgwake_start_workflow` (migration 7, docs/sql.md) writes
//! the rows pgwake's Rust client would write; the insert triggers announce
//! them when the transaction commits, and a pgwake runtime in this same
//! process runs the workflow.
//!
//! ```sh
//! cargo run --example sqlx_order                       # a throwaway PostgreSQL
//! DATABASE_URL=postgres://... cargo run --example sqlx_order
//! ```

use std::time::Duration;

use pgwake::testing::TestPostgres;
use pgwake::workflow::{
    Activities, ActivityContext, ActivityError, Client, WorkflowContext, WorkflowError, Workflows,
};
use pgwake::{Runtime, RuntimeConfig, RuntimeHandle};
use serde::{Deserialize, Serialize};
use sqlx::postgres::PgPoolOptions;
use sqlx::types::Json;
use sqlx::{PgPool, Row};

/// The queue the order workflows and their activities run on.
pub const QUEUE: &str = "orders";

/// What the application stores, and the workflow's input.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Order {
    /// The order's id: also the workflow's instance id.
    pub id: String,
    /// What was ordered.
    pub sku: String,
    /// Its price.
    pub cents: i64,
}

/// The workflow: charge the order, then report the receipt.
async fn fulfil(ctx: WorkflowContext, order: Order) -> Result<String, WorkflowError> {
    let receipt: String = ctx.activity("charge", &(order.id, order.cents)).await?;
    Ok(format!("{} shipped, {receipt}", order.sku))
}

async fn charge(_: ActivityContext, (id, cents): (String, i64)) -> Result<String, ActivityError> {
    Ok(format!("{cents} cents charged for {id}"))
}

/// The workflows this application registers.
pub fn workflows() -> Workflows {
    Workflows::new().register("fulfil", fulfil)
}

/// The activities this application registers.
pub fn activities() -> Activities {
    Activities::new().register("charge", charge)
}

/// The application's own table.
pub async fn create_orders_table(pool: &PgPool) -> Result<(), sqlx::Error> {
    sqlx::query(
        "CREATE TABLE IF NOT EXISTS orders (
           id text PRIMARY KEY,
           sku text NOT NULL,
           cents bigint NOT NULL,
           placed_at timestamptz NOT NULL DEFAULT now())",
    )
    .execute(pool)
    .await?;
    Ok(())
}

/// Inserts `order` and starts its workflow in one sqlx transaction, and
/// returns the workflow's execution id. Nothing is visible to anyone (and no
/// worker is woken) until the commit; if anything fails (an order id used
/// before, a workflow of that id still running), neither the order nor its
/// workflow exists.
pub async fn place_order(pool: &PgPool, order: &Order) -> Result<String, sqlx::Error> {
    let mut tx = pool.begin().await?;
    sqlx::query("INSERT INTO orders (id, sku, cents) VALUES ($1, $2, $3)")
        .bind(&order.id)
        .bind(&order.sku)
        .bind(order.cents)
        .execute(&mut *tx)
        .await?;
    // The workflow's instance id is the order's id; its input is the order,
    // as JSON (what `Client::start("fulfil", &order.id, &order, ..)` stores).
    let execution_id: String =
        sqlx::query_scalar("SELECT pgwake_start_workflow($1, 'fulfil', $2, $3)")
            .bind(&order.id)
            .bind(Json(order))
            .bind(QUEUE)
            .fetch_one(&mut *tx)
            .await?;
    tx.commit().await?;
    Ok(execution_id)
}

/// Starts a pgwake runtime for this application's workflows and activities.
pub async fn start_runtime(url: &str) -> Result<RuntimeHandle, Box<dyn std::error::Error>> {
    Ok(Runtime::builder(RuntimeConfig::new(url))
        .workflow_worker(workflows().worker([QUEUE]))
        .activity_worker(activities().worker([QUEUE]))
        .start()
        .await?)
}

/// The whole example on the database at `url`: migrate, create the orders
/// table, run a runtime, place an order with sqlx, and wait for its
/// workflow's result, which is returned.
pub async fn run(url: &str) -> Result<String, Box<dyn std::error::Error>> {
    let mut connection = pgwake::ConnectionConfig::from_url(url)?.connect().await?;
    pgwake::migrate::up(&mut connection, None).await?;

    let pool = PgPoolOptions::new().max_connections(2).connect(url).await?;
    create_orders_table(&pool).await?;
    let runtime = start_runtime(url).await?;

    let order = Order {
        id: format!("order-{}", uuid::Uuid::new_v4().simple()),
        sku: "sku-7".to_string(),
        cents: 1250,
    };
    let execution_id = place_order(&pool, &order).await?;
    let placed: i64 = sqlx::query("SELECT count(*) FROM orders WHERE id = $1")
        .bind(&order.id)
        .fetch_one(&pool)
        .await?
        .get(0);
    println!(
        "order {} placed ({placed} row), its workflow is execution {execution_id}",
        order.id
    );

    let client = Client::new(runtime.store().clone());
    let result: String = client.result(&order.id, Duration::from_secs(30)).await?;
    println!("workflow result: {result}");
    runtime.shutdown(Duration::from_secs(5)).await;
    pool.close().await;
    Ok(result)
}

#[actix_rt::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Keep the throwaway server alive until the end of main.
    let (_server, url) = match std::env::var("DATABASE_URL") {
        Ok(url) if !url.is_empty() => (None, url),
        _ => {
            println!("DATABASE_URL is not set: starting a throwaway PostgreSQL");
            let server = TestPostgres::new()?;
            let url = server.url();
            (Some(server), url)
        }
    };
    run(&url).await?;
    Ok(())
}

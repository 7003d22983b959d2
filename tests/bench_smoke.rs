//! Every `pgwake bench` scenario runs with tiny sizes and writes JSON of the
//! documented shape. Shape only: speed is measured by the benchmarks
//! themselves, never asserted in tests.

use std::path::PathBuf;
use std::process::Command;

use serde_json::Value;

fn bench(args: &[&str]) -> Value {
    // One folder per scenario (each runs once, tests run in parallel),
    // removed once read: nothing is left in the temporary directory.
    let dir = std::env::temp_dir().join(format!(
        "pgwake-bench-smoke-{}-{}",
        std::process::id(),
        args[0]
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let json: PathBuf = dir.join(format!("{}.json", args[0]));
    let output = Command::new(env!("CARGO_BIN_EXE_pgwake"))
        .arg("bench")
        .args(args)
        .arg("--json")
        .arg(&json)
        .env_remove("DATABASE_URL")
        .env("RUST_LOG", "warn")
        .output()
        .expect("run pgwake bench");
    assert!(
        output.status.success(),
        "pgwake bench {args:?} failed:\n{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    let written = std::fs::read_to_string(&json).unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    let document: Value = serde_json::from_str(&written).unwrap();
    assert_eq!(document["scenario"], args[0]);
    assert!(document["config"].is_object(), "{document}");
    document["results"].clone()
}

fn assert_numbers(value: &Value, path: &str, keys: &[&str]) {
    for key in keys {
        assert!(
            value[key].is_number(),
            "{path}.{key} is not a number in {value}"
        );
    }
}

#[test]
fn latency_writes_percentiles_per_mode_and_the_steady_variant() {
    let results = bench(&[
        "latency",
        "--samples",
        "5",
        "--warmup",
        "2",
        "--poll-samples",
        "2",
        "--rate",
        "50",
        "--steady-samples",
        "10",
    ]);
    for mode in ["local", "remote", "poll"] {
        assert_numbers(
            &results[mode],
            mode,
            &["p50_ms", "p90_ms", "p99_ms", "max_ms"],
        );
    }
    assert!(results["poll_over_remote_p50"].is_number());
    assert_numbers(
        &results["steady"],
        "steady",
        &["rate", "p50_ms", "p95_ms", "p99_ms"],
    );
}

#[test]
fn throughput_writes_the_three_rates() {
    let results = bench(&[
        "throughput",
        "--tasks",
        "200",
        "--workers",
        "2",
        "--batch",
        "10",
        "--mixed-seconds",
        "1",
    ]);
    assert_numbers(
        &results,
        "results",
        &[
            "tasks_per_sec",
            "batch_tasks_per_sec",
            "mixed_tasks_per_sec",
        ],
    );
}

#[test]
fn idle_writes_statements_per_second_with_notifications_on_and_off() {
    let results = bench(&["idle", "--workers", "4", "--seconds", "1", "--settle", "1"]);
    for mode in ["notify_on", "notify_off"] {
        assert_numbers(&results[mode], mode, &["statements_per_sec"]);
    }
}

#[test]
fn notify_cost_writes_four_variants_for_each_producer_count() {
    let results = bench(&["notify-cost", "--seconds", "0.3", "--rounds", "1"]);
    for producers in ["producers_1", "producers_4", "producers_16"] {
        assert_numbers(
            &results[producers],
            producers,
            &["no_trigger", "row_trigger", "statement_trigger", "deferred"],
        );
    }
}

#[test]
fn recovery_writes_both_outage_figures() {
    // No settling between outages: only the figures' presence is checked.
    let results = bench(&["recovery", "--repeats", "1", "--settle", "0"]);
    assert_numbers(
        &results,
        "results",
        &["killed_listener_ms", "server_restart_ms"],
    );
}

#[test]
fn workflow_writes_the_rate_step_percentiles_and_replay_costs() {
    let results = bench(&["workflow", "--workflows", "20", "--replay-seconds", "0.05"]);
    assert_numbers(&results, "results", &["workflows_per_sec"]);
    assert!(
        results["workflows_per_sec"].as_f64().unwrap() > 0.0,
        "{results}"
    );
    assert_numbers(&results["step"], "step", &["p50_ms", "p99_ms"]);
    assert!(
        results["step"]["p50_ms"].as_f64() <= results["step"]["p99_ms"].as_f64(),
        "{results}"
    );
    let replay = &results["replay"];
    assert_numbers(replay, "replay", &["uncached_ms_per_task_1000"]);
    assert!(
        replay["uncached_ms_per_task_1000"].as_f64().unwrap() > 0.0,
        "{results}"
    );
    // No cached executor yet: its figures are written, as null.
    for key in ["cached_ms_per_task_10", "cached_ms_per_task_1000"] {
        assert!(
            replay
                .get(key)
                .is_some_and(|v| v.is_null() || v.is_number()),
            "replay.{key} is missing in {results}"
        );
    }
}

#[test]
fn scale_writes_the_three_figures_for_the_empty_and_the_populated_database_each_round() {
    let results = bench(&[
        "scale",
        "--finished",
        "200",
        "--backlog",
        "300",
        "--leased",
        "30",
        "--timers",
        "50",
        "--claims",
        "20",
        "--wakes",
        "20",
        "--drain",
        "500",
        "--rounds",
        "2",
    ]);
    for database in ["empty", "populated"] {
        let figures = &results[database];
        let rounds = figures["rounds"].as_array().expect("each round's figures");
        assert_eq!(rounds.len(), 2, "{database}: {results}");
        assert_numbers(
            figures,
            database,
            &["claim_p50_ms", "wake_p50_ms", "tasks_per_sec"],
        );
        for key in ["claim_p50_ms", "wake_p50_ms", "tasks_per_sec"] {
            assert!(
                figures[key].as_f64().unwrap() > 0.0,
                "{database}.{key} is not positive in {results}"
            );
        }
    }
}

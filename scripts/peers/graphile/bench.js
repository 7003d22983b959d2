// graphile-worker 0.17 benchmark, the peer of `pgwake bench throughput` / `pgwake bench latency`.
// Adapted from the shared reference benchmark of graphile-worker 0.17.
//
//   node bench.js throughput [n=20000] [concurrency=16] [tuned=1]
//     The drain: n no-op jobs bulk-inserted first (addJobs, 1000 per call), then a runner
//     with `concurrency` workers, timed from just before run() until the jobs table is empty.
//   node bench.js latency [n=300] [gapMs=20] [concurrency=4] [tuned=0]
//     Latency from just before addJob to the start of the job, one job every gapMs, on a
//     running worker (after 20 warm-up jobs).
//
// tuned=1 is graphile's tuned preset: a local queue of 500 jobs and batched completion
// (localQueue.size=500, completeJobBatchDelay=0, failJobBatchDelay=0).
// Connects to DATABASE_URL; prints one JSON line on stdout.
"use strict";
const { run, runMigrations, makeWorkerUtils, Logger } = require("graphile-worker");
const { performance } = require("perf_hooks");
const { Pool } = require("pg");

const connectionString = process.env.DATABASE_URL;
if (!connectionString) {
  console.error("bench.js: set DATABASE_URL (postgres://USER@HOST:PORT/DATABASE)");
  process.exit(2);
}
const TIMEOUT_MS = 300_000;
const GRAPHILE_VERSION = require("graphile-worker/package.json").version;
const logger = new Logger(() => (level, msg) => { if (level === "error") console.error(msg); });
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const pct = (a, p) => a[Math.min(a.length - 1, Math.ceil((p / 100) * a.length) - 1)];
const TUNED = { worker: { localQueue: { size: 500 }, completeJobBatchDelay: 0, failJobBatchDelay: 0 } };
const presetFor = (tuned) => (tuned ? { preset: TUNED } : {});

function deadline(what, since) {
  if (performance.now() - since > TIMEOUT_MS) throw new Error(`${what}: not done after ${TIMEOUT_MS / 1000} s`);
}

async function latency(n, gap, concurrency, tuned) {
  await runMigrations({ connectionString, logger });
  const lat = [];
  const taskList = { lat: async (payload) => { lat.push(performance.now() - payload.t0); } };
  const runner = await run({ connectionString, concurrency, taskList, logger, noHandleSignals: true, ...presetFor(tuned) });
  const utils = await makeWorkerUtils({ connectionString, logger });
  try {
    await sleep(1000);
    const warm = 20;
    for (let i = 0; i < n + warm; i++) {
      if (i === warm) { await sleep(500); lat.length = 0; }
      const t0 = performance.now();
      await utils.addJob("lat", { t0 });
      await sleep(gap);
    }
    const since = performance.now();
    while (lat.length < n) { deadline("latency", since); await sleep(10); }
    const s = [...lat].sort((a, b) => a - b);
    console.log(JSON.stringify({ peer: "graphile-worker", version: GRAPHILE_VERSION, mode: "latency", n, gap, concurrency, tuned: !!tuned,
      p50: +pct(s, 50).toFixed(2), p90: +pct(s, 90).toFixed(2), p99: +pct(s, 99).toFixed(2), max: +s[s.length - 1].toFixed(2),
      mean: +(s.reduce((a, b) => a + b, 0) / s.length).toFixed(2) }));
  } finally {
    await utils.release(); await runner.stop();
  }
}

async function throughput(n, concurrency, tuned) {
  await runMigrations({ connectionString, logger });
  const pool = new Pool({ connectionString, max: 2 });
  const remaining = async () => +(await pool.query("select count(*) from graphile_worker._private_jobs")).rows[0].count;
  await pool.query("delete from graphile_worker._private_jobs");
  const utils = await makeWorkerUtils({ connectionString, logger });
  let runner;
  try {
    // 1. bulk insert, before any worker runs
    const tIns = performance.now();
    for (let i = 0; i < n; i += 1000) {
      const specs = [];
      for (let j = i; j < Math.min(n, i + 1000); j++) specs.push({ identifier: "noop", payload: { j } });
      await utils.addJobs(specs);
    }
    const insMs = performance.now() - tIns;
    if ((await remaining()) !== n) throw new Error(`expected ${n} jobs queued before the drain`);

    // 2. the drain: from the runner's start until the jobs table is empty
    let done = 0, tLastExec = 0;
    const taskList = { noop: async () => { if (++done === n) tLastExec = performance.now(); } };
    const t0 = performance.now();
    runner = await run({ connectionString, concurrency, taskList, logger, noHandleSignals: true, ...presetFor(tuned) });
    while (done < n) { deadline("drain", t0); await sleep(5); }
    // completions are batched: wait until the database agrees every job is done (deleted)
    while ((await remaining()) > 0) { deadline("drain", t0); await sleep(5); }
    const t1 = performance.now();
    console.log(JSON.stringify({ peer: "graphile-worker", version: GRAPHILE_VERSION, mode: "throughput", n, concurrency, tuned: !!tuned,
      insert_jobs_per_s: Math.round(n / (insMs / 1000)), exec_jobs_per_s: Math.round(n / ((tLastExec - t0) / 1000)),
      drained_jobs_per_s: Math.round(n / ((t1 - t0) / 1000)), drain_s: +((t1 - t0) / 1000).toFixed(3) }));
  } finally {
    if (runner) await runner.stop();
    await utils.release(); await pool.end();
  }
}

const [mode, a, b, c, d] = process.argv.slice(2);
let job;
if (mode === "latency") job = latency(+(a || 300), +(b || 20), +(c || 4), +(d || 0));
else if (mode === "throughput" || mode === undefined) job = throughput(+(a || 20000), +(b || 16), +(c ?? 1));
else { console.error("usage: node bench.js throughput [n] [concurrency] [tuned=1] | latency [n] [gapMs] [concurrency] [tuned=0]"); process.exit(2); }
job.then(() => process.exit(0)).catch((e) => { console.error(e && e.stack ? e.stack : e); process.exit(1); });

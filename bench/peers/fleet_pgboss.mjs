// bench/peers/fleet_pgboss.mjs: the workload of bench/fleet on pg-boss, a
// PostgreSQL job queue (SKIP LOCKED, optional LISTEN/NOTIFY).
//
//   node fleet_pgboss.mjs worker URL CONCURRENCY STEP_MS   a worker process
//   node fleet_pgboss.mjs submit URL RUNS                  queue RUNS runs
//   node fleet_pgboss.mjs pickup URL SAMPLES               one run at a time
//
// pg-boss has jobs, not workflows with checkpointed steps, so a run of 3
// durable steps is the idiomatic chain of 3 jobs: the job of step i waits
// STEP_MS milliseconds, then sends the job of step i + 1 and completes
// (each completion is the step's durable record).  The queue "bench" has
// notify on and the instance listens (useListenNotify), its best setting
// for pickup; a worker fetches in batches (burstWhenBatchFull) with enough
// fetch loops to keep CONCURRENCY jobs running.  Other settings are
// pg-boss's defaults.
//
// Output and the pickup record are as in fleet_dbos.mjs: "ready cpu=S",
// then "cpu=S" on SIGTERM; a first step whose data carries t0 records
// now - t0 into bench_pickup.
import { PgBoss } from 'pg-boss';
import pg from 'pg';
import { nowMs, sleep, serving, pickupLoop, main } from './fleet_common.mjs';

const QUEUE = 'bench';

async function boss(url, listen) {
  const b = new PgBoss({ connectionString: url, useListenNotify: listen, max: 10 });
  b.on('error', (e) => console.error(`pg-boss: ${e && e.message}`));
  await b.start();
  if (!(await b.getQueue(QUEUE))) await b.createQueue(QUEUE, { notify: true });
  return b;
}

async function worker(url, a1, a2) {
  const concurrency = Number(a1);
  const stepMs = Number(a2);
  const side = new pg.Pool({ connectionString: url, max: 2 });
  const b = await boss(url, true);
  const batchSize = Math.max(1, Math.min(32, concurrency));
  const loops = Math.max(1, Math.ceil(concurrency / batchSize));
  async function one(job) {
    const d = job.data;
    if (d.step === 1 && d.t0 !== undefined) {
      const ms = nowMs() - d.t0;
      await side.query('INSERT INTO bench_pickup (system, ms) VALUES ($1, $2)', ['pgboss', ms]);
    }
    await sleep(stepMs);
    if (d.step < 3) await b.send(QUEUE, { run: d.run, step: d.step + 1 });
  }
  await b.work(QUEUE, { batchSize, localConcurrency: loops, burstWhenBatchFull: true },
    async (jobs) => { await Promise.all(jobs.map(one)); });
  serving();
}

async function submit(url, a1) {
  const runs = Number(a1);
  const b = await boss(url, false);
  for (let i = 0; i < runs; i += 500) {
    const jobs = [];
    for (let j = i; j < Math.min(runs, i + 500); j++) jobs.push({ data: { run: j, step: 1 } });
    await b.insert(QUEUE, jobs);
  }
  await b.stop({ graceful: false, wait: true });
}

async function pickup(url, a1) {
  const b = await boss(url, false);
  let i = 0;
  await pickupLoop(url, 'pgboss', Number(a1), (t0) => b.send(QUEUE, { run: -1 - i++, step: 1, t0 }));
  await b.stop({ graceful: false, wait: true });
}

main('fleet_pgboss.mjs', 'worker URL CONCURRENCY STEP_MS | submit URL RUNS | pickup URL SAMPLES',
  { worker, submit, pickup });

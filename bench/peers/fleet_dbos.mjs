// bench/peers/fleet_dbos.mjs: the workload of bench/fleet on DBOS Transact
// (@dbos-inc/dbos-sdk, v5 API), the peer of agenthost's fleet.
//
//   node fleet_dbos.mjs worker URL CONCURRENCY STEP_MS   a worker process
//   node fleet_dbos.mjs submit URL RUNS                  enqueue RUNS runs
//   node fleet_dbos.mjs pickup URL SAMPLES               one run at a time
//
// A run is a workflow of 3 steps (DBOS.runStep, each checkpointed in the
// system database), each step waiting STEP_MS milliseconds and returning a
// number.  Runs are enqueued by a DBOSClient on the queue "bench" (the way
// another process hands work to DBOS workers) and dequeued by the workers,
// whose queue lets CONCURRENCY workflows run at once in each process.
// Every other setting is DBOS's default (the queue is polled every second).
//
// A worker prints "ready cpu=S" once launched and, on SIGTERM, "cpu=S" (its
// process CPU seconds, user + system) and exits.  A run whose input carries
// t0 (process.hrtime in ms, the same monotonic clock as every process on
// the machine) records now - t0 at the workflow's start into bench_pickup,
// on a connection of its own, outside the timed part; pickup submits one
// run, waits until that row is there, and submits the next.
import { DBOS, DBOSClient } from '@dbos-inc/dbos-sdk';
import pg from 'pg';
import { nowMs, sleep, serving, pickupLoop, main } from './fleet_common.mjs';

async function worker(url, a1, a2) {
  const concurrency = Number(a1);
  const stepMs = Number(a2);
  const side = new pg.Pool({ connectionString: url, max: 2 });
  async function step(i) {
    await sleep(stepMs);
    return i;
  }
  async function benchRun(input) {
    if (input && input.t0 !== undefined) {
      const ms = nowMs() - input.t0;
      await DBOS.runStep(() => side.query('INSERT INTO bench_pickup (system, ms) VALUES ($1, $2)',
        ['dbos', ms]), { name: 'pickup' });
    }
    let sum = 0;
    for (let i = 1; i <= 3; i++) sum += await DBOS.runStep(() => step(i), { name: 'step' + i });
    return sum;
  }
  DBOS.registerWorkflow(benchRun, { name: 'bench_run' });
  DBOS.setConfig({ name: 'bench', systemDatabaseUrl: url, logLevel: 'error' });
  await DBOS.launch();
  await DBOS.registerQueue('bench', { workerConcurrency: concurrency });
  serving();
}

const OPTS = { queueName: 'bench', workflowName: 'bench_run' };

async function submit(url, a1) {
  const runs = Number(a1);
  const c = await DBOSClient.create({ systemDatabaseUrl: url });
  let next = 0;
  async function lane() {
    while (next < runs) {
      next++;
      await c.enqueue(OPTS, {});
    }
  }
  await Promise.all(Array.from({ length: 16 }, lane));
  await c.destroy();
}

async function pickup(url, a1) {
  const c = await DBOSClient.create({ systemDatabaseUrl: url });
  await pickupLoop(url, 'dbos', Number(a1), (t0) => c.enqueue(OPTS, { t0 }));
  await c.destroy();
}

main('fleet_dbos.mjs', 'worker URL CONCURRENCY STEP_MS | submit URL RUNS | pickup URL SAMPLES',
  { worker, submit, pickup });

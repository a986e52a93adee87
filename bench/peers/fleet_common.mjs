// bench/peers/fleet_common.mjs: what the fleet peers (fleet_dbos.mjs,
// fleet_pgboss.mjs) share: the clocks, the worker's output protocol, the
// pickup loop and the command line.
import pg from 'pg';

// The machine's monotonic clock in ms (uv_hrtime, as ah.clock reads it).
export const nowMs = () => Number(process.hrtime.bigint()) / 1e6;
export const cpu = () => { const u = process.cpuUsage(); return (u.user + u.system) / 1e6; };
export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

// A worker is ready: "ready cpu=S" now, "cpu=S" and exit 0 on SIGTERM.
export function serving() {
  process.on('SIGTERM', () => {
    process.stdout.write(`cpu=${cpu().toFixed(3)}\n`, () => process.exit(0));
  });
  process.stdout.write(`ready cpu=${cpu().toFixed(3)}\n`);
}

// Submits SAMPLES runs one at a time (submit(t0) sends one whose input
// carries t0), each once the previous one's pickup is in bench_pickup,
// with 20 ms between.
export async function pickupLoop(url, system, samples, submit) {
  const db = new pg.Client({ connectionString: url });
  await db.connect();
  const count = async () =>
    Number((await db.query('SELECT count(*) AS n FROM bench_pickup WHERE system = $1', [system])).rows[0].n);
  let have = await count();
  for (let i = 0; i < samples; i++) {
    await submit(nowMs());
    const deadline = Date.now() + 30000;
    while ((await count()) <= have) {
      if (Date.now() > deadline) throw new Error('pickup: the run was not started within 30 s');
      await sleep(2);
    }
    have++;
    await sleep(20);
  }
  await db.end();
}

// Runs modes[argv mode] with (url, a1, a2), exiting 2 on a usage error and
// 1 when it fails.
export function main(name, usage, modes) {
  const [mode, url, a1, a2] = process.argv.slice(2);
  if (!modes[mode] || !url) {
    console.error(`usage: ${name} ${usage}`);
    process.exit(2);
  }
  modes[mode](url, a1, a2).catch((e) => {
    console.error(`${name} ${mode}: ${e && e.stack ? e.stack : e}`);
    process.exit(1);
  });
}

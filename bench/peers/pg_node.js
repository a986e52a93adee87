// bench/peers/pg_node.js: bench/pg's workloads done the node-postgres way.
//
//   node bench/peers/pg_node.js URL MODE N CONCURRENCY POOL
//
//   select    CONCURRENCY async loops of pool.query of the point SELECT by
//             primary key until N queries have returned
//   insert    CONCURRENCY async loops of pool.query of the single-row INSERT
//             (each its own transaction) until N rows are in
//   copy      N rows into bench_bulk through pg-copy-streams (COPY FROM
//             STDIN, text format), written as a stream with backpressure
//   pipeline  N rows into bench_bulk in one transaction, the single-row
//             INSERT awaited row by row on one client (node-postgres has no
//             pipelining: it sends a query once the previous one returned)
//
// Queries use the extended protocol with parameters (node-postgres's
// default: unnamed statements).  The pool has POOL connections, opened
// before the timed window.  CPU is process.cpuUsage() over the window.
// Prints: client=node-postgres mode=MODE n=N seconds=S per_s=R cpu=CPU
'use strict';

const path = require('path');
const { Pool } = require(path.join(__dirname, '..', 'node_modules', 'pg'));
const { from: copyFrom } = require(path.join(__dirname, '..', 'node_modules', 'pg-copy-streams'));

const BODY = 'x'.repeat(64);

async function main() {
  const [url, mode, nS, concS, poolS] = process.argv.slice(2);
  const modes = ['select', 'insert', 'copy', 'pipeline'];
  if (!url || !modes.includes(mode) || !nS || !concS || !poolS) {
    process.stderr.write('usage: pg_node.js URL select|insert|copy|pipeline N CONCURRENCY POOL\n');
    process.exit(2);
  }
  const n = parseInt(nS, 10), conc = parseInt(concS, 10), size = parseInt(poolS, 10);
  const pool = new Pool({ connectionString: url, max: size, min: size });
  // Open every connection before the window.
  await Promise.all(Array.from({ length: size }, () => pool.query('SELECT pg_sleep(0.05)')));
  if (mode === 'insert') await pool.query('TRUNCATE bench_rows');
  if (mode === 'copy' || mode === 'pipeline') await pool.query('TRUNCATE bench_bulk');

  let done = 0;
  async function workers(fn) {
    const loops = [];
    for (let w = 1; w <= conc; w++) {
      loops.push((async () => {
        while (done < n) {
          done += 1;
          await fn(done, w);
        }
      })());
    }
    await Promise.all(loops);
  }

  const t0 = process.hrtime.bigint();
  const c0 = process.cpuUsage();
  if (mode === 'select') {
    await workers(async (i) => {
      const k = (i % 10000) + 1;
      const r = await pool.query('SELECT id, name, value FROM bench_items WHERE id = $1', [k]);
      if (r.rows[0].id !== k) throw new Error('wrong row');
    });
  } else if (mode === 'insert') {
    await workers((i, w) => pool.query('INSERT INTO bench_rows(agent, step, body) VALUES ($1, $2, $3)', [w, i, BODY]));
  } else if (mode === 'copy') {
    const client = await pool.connect();
    try {
      await new Promise((resolve, reject) => {
        const stream = client.query(copyFrom('COPY bench_bulk(agent, step, body) FROM STDIN'));
        stream.on('error', reject);
        stream.on('finish', resolve);
        let i = 0;
        const write = () => {
          let ok = true;
          while (i < n && ok) {
            i += 1;
            ok = stream.write(`${i % 64}\t${i}\t${BODY}\n`);
          }
          if (i < n) stream.once('drain', write);
          else stream.end();
        };
        write();
      });
    } finally {
      client.release();
    }
  } else {
    const client = await pool.connect();
    try {
      await client.query('BEGIN');
      for (let i = 1; i <= n; i++) {
        await client.query('INSERT INTO bench_bulk(agent, step, body) VALUES ($1, $2, $3)', [i % 64, i, BODY]);
      }
      await client.query('COMMIT');
    } finally {
      client.release();
    }
  }
  const secs = Number(process.hrtime.bigint() - t0) / 1e9;
  const cu = process.cpuUsage(c0);
  const cpu = (cu.user + cu.system) / 1e6;
  let got = n;
  if (mode === 'insert') got = Number((await pool.query('SELECT count(*) AS c FROM bench_rows')).rows[0].c);
  else if (mode !== 'select') got = Number((await pool.query('SELECT count(*) AS c FROM bench_bulk')).rows[0].c);
  await pool.end();
  if (got !== n) throw new Error(`expected ${n} rows, found ${got}`);
  console.log(`client=node-postgres mode=${mode} n=${n} seconds=${secs.toFixed(4)} per_s=${(n / secs).toFixed(1)} cpu=${cpu.toFixed(4)}`);
}

main().catch((e) => { process.stderr.write(String(e && e.stack || e) + '\n'); process.exit(1); });

-- agenthost.fleet.sql: the fleet's schema and every statement it runs.
--
-- One place for the SQL, so that the protocol can be read (and reviewed
-- against docs/fleet.md) without the Lua around it.  Each statement is a
-- template in which {S} stands for the fleet's schema, an identifier that
-- fleet.open validated (lower-case letters, digits and underscores) and
-- quotes; every value is a bound parameter.  Batches of rows travel as one
-- JSON parameter read with jsonb_to_recordset, so that a statement carries
-- any number of runs' writes in one round trip whatever the binding does
-- with arrays.
--
-- The state machine of a run (docs/fleet.md has the table):
--
--   queued  --claim-->  running  --handler returned-->          done
--                          |     --error, attempts left-->      queued (run_at = backoff)
--                          |     --error, no attempts left-->   dead
--                          |     --error, retryable = false-->  failed
--                          |     --cancel reached the task-->   cancelled
--                          |     --long sleep / event wait-->   waiting (run_at = wake time)
--                          |     --lease expired (crash)-->     queued, or dead on the last attempt
--                          |     --graceful release-->          queued (the attempt refunded)
--   queued, waiting --cancel-->  cancelled
--   waiting --event sent / wake time reached--> claimable like queued
--
-- Fencing: every claim increments runs.token and names the worker.  Every
-- write a worker makes for a run it holds names the token it claimed with
-- and its own id, and checks, under a lock on the run row, that the run is
-- still 'running', held by it with that token; a worker whose lease
-- expired (and whose run was taken by another) writes nothing.  The worker
-- id matters besides the token because a claim is committed without
-- waiting for the disk: one lost in a server crash gives the next claim
-- the same token again, but never the same worker.  Locks on several run rows are always taken in id order, so the
-- statements of the protocol cannot deadlock with each other.

local M = {}

M.VERSION = 1

-- The schema, created (IF NOT EXISTS) by fleet.open under an advisory
-- lock, so that workers starting together do not race.
M.schema = {
  [[CREATE SCHEMA IF NOT EXISTS {S}]],
  [[CREATE TABLE IF NOT EXISTS {S}.meta (
      version integer NOT NULL)]],
  [[CREATE TABLE IF NOT EXISTS {S}.runs (
      id               bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
      kind             text NOT NULL,
      key              text UNIQUE,
      input            jsonb,
      state            text NOT NULL DEFAULT 'queued' CHECK (state IN
                         ('queued', 'running', 'waiting', 'done', 'failed', 'dead', 'cancelled')),
      priority         integer NOT NULL DEFAULT 0,
      run_at           timestamptz NOT NULL DEFAULT now(),
      attempts         integer NOT NULL DEFAULT 0,
      max_attempts     integer NOT NULL DEFAULT 5 CHECK (max_attempts >= 1),
      token            bigint NOT NULL DEFAULT 0,
      worker           text,
      lease_until      timestamptz,
      cancel_requested boolean NOT NULL DEFAULT false,
      waiting_for      text,
      result           jsonb,
      error            jsonb,
      created_at       timestamptz NOT NULL DEFAULT now(),
      started_at       timestamptz,
      finished_at      timestamptz)]],
  -- The queue: what a claim reads, in the order it takes runs.
  [[CREATE INDEX IF NOT EXISTS runs_ready ON {S}.runs (priority DESC, run_at, id)
      WHERE state IN ('queued', 'waiting')]],
  -- The queue of one kind, for the claims of kinds with a fleet-wide limit.
  [[CREATE INDEX IF NOT EXISTS runs_kind_ready ON {S}.runs (kind, priority DESC, run_at, id)
      WHERE state IN ('queued', 'waiting')]],
  -- Leases, for the sweep that takes back the runs of dead workers.
  [[CREATE INDEX IF NOT EXISTS runs_leases ON {S}.runs (lease_until) WHERE state = 'running']],
  -- Running runs by kind, for the fleet-wide limits.
  [[CREATE INDEX IF NOT EXISTS runs_running ON {S}.runs (kind) WHERE state = 'running']],
  [[CREATE TABLE IF NOT EXISTS {S}.steps (
      run_id     bigint NOT NULL REFERENCES {S}.runs (id) ON DELETE CASCADE,
      name       text NOT NULL,
      output     jsonb,
      token      bigint NOT NULL,
      created_at timestamptz NOT NULL DEFAULT now(),
      PRIMARY KEY (run_id, name))]],
  [[CREATE TABLE IF NOT EXISTS {S}.events (
      id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
      run_id      bigint NOT NULL REFERENCES {S}.runs (id) ON DELETE CASCADE,
      name        text NOT NULL,
      payload     jsonb,
      created_at  timestamptz NOT NULL DEFAULT now(),
      consumed_by text)]],
  [[CREATE INDEX IF NOT EXISTS events_open ON {S}.events (run_id, name, id)
      WHERE consumed_by IS NULL]],
  [[CREATE TABLE IF NOT EXISTS {S}.workers (
      id           text PRIMARY KEY,
      host         text,
      pid          integer,
      kinds        text,
      concurrency  integer,
      started_at   timestamptz NOT NULL DEFAULT now(),
      heartbeat_at timestamptz NOT NULL DEFAULT now(),
      lease_s      double precision NOT NULL)]],
  [[CREATE TABLE IF NOT EXISTS {S}.limits (
      kind        text PRIMARY KEY,
      max_running integer NOT NULL CHECK (max_running >= 0))]],
}

M.lock_schema = [[SELECT pg_advisory_xact_lock(hashtext($1::text))]]
M.version = [[SELECT version FROM {S}.meta]]
M.set_version = [[INSERT INTO {S}.meta (version) VALUES ($1::integer)]]

-- ---- clients -----------------------------------------------------------------

-- Inserts a run; with a key that exists, inserts nothing (the caller then
-- reads the existing run's id with submit_existing, in a new statement,
-- which sees a concurrent submitter's committed row).  Wakes the workers
-- when the run is due now; inside the caller's transaction the
-- notification goes out at its commit, or never.
M.submit = [[
WITH ins AS (
  INSERT INTO {S}.runs (kind, key, input, priority, run_at, max_attempts)
  VALUES ($1::text, $2::text, $3::text::jsonb, $4::integer,
          now() + make_interval(secs => $5::float8), $6::integer)
  ON CONFLICT (key) DO NOTHING
  RETURNING id, run_at <= now() AS due),
wake AS (SELECT pg_notify($7::text, 'new') FROM ins WHERE due)
SELECT id, (SELECT count(*) FROM wake) AS woken FROM ins]]

M.submit_existing = [[SELECT id FROM {S}.runs WHERE key = $1::text]]

M.status = [[
SELECT id, kind, key, state, priority, attempts, max_attempts, worker, cancel_requested,
       waiting_for, input::text AS input, result::text AS result, error::text AS error,
       extract(epoch FROM created_at)::float8 AS created_at,
       extract(epoch FROM run_at)::float8 AS run_at,
       extract(epoch FROM started_at)::float8 AS started_at,
       extract(epoch FROM finished_at)::float8 AS finished_at,
       extract(epoch FROM lease_until)::float8 AS lease_until
FROM {S}.runs WHERE id = $1::bigint]]

M.list = [[
SELECT id, kind, key, state, priority, attempts, max_attempts, worker, waiting_for,
       error::text AS error,
       extract(epoch FROM created_at)::float8 AS created_at,
       extract(epoch FROM run_at)::float8 AS run_at,
       extract(epoch FROM finished_at)::float8 AS finished_at
FROM {S}.runs
WHERE ($1::text IS NULL OR state = $1::text) AND ($2::text IS NULL OR kind = $2::text)
  AND id > $3::bigint
ORDER BY id LIMIT $4::integer]]

M.steps_of = [[
SELECT name, output::text AS output, token, extract(epoch FROM created_at)::float8 AS created_at
FROM {S}.steps WHERE run_id = $1::bigint ORDER BY created_at, name]]

-- Cancels a run: one that waits is cancelled at once; one that runs is
-- marked, and its worker (told by the notification, or by its next
-- heartbeat) cancels the handler's task and records 'cancelled'.
M.cancel = [[
WITH u AS (
  UPDATE {S}.runs SET
    cancel_requested = true,
    state = CASE WHEN state IN ('queued', 'waiting') THEN 'cancelled' ELSE state END,
    finished_at = CASE WHEN state IN ('queued', 'waiting') THEN now() ELSE finished_at END,
    error = CASE WHEN state IN ('queued', 'waiting')
                 THEN '{"kind":"cancelled","message":"cancelled before it ran to the end"}'::jsonb
                 ELSE error END
  WHERE id = $1::bigint AND state IN ('queued', 'waiting', 'running')
  RETURNING id, state),
n AS (SELECT pg_notify($2::text, CASE WHEN state = 'cancelled' THEN 'done:' ELSE 'cancel:' END || id)
      FROM u)
SELECT state, (SELECT count(*) FROM n) AS notified FROM u]]

-- Sending an event: the run row is locked first (send_lock), then the
-- event stored and a parked run waiting for it made due (send), in one
-- transaction; a run that parks takes the same lock before it looks for
-- events (park_lock), so an event is never missed between the two.
M.send_lock = [[SELECT state, waiting_for FROM {S}.runs WHERE id = $1::bigint FOR UPDATE]]
M.send = [[
WITH e AS (
  INSERT INTO {S}.events (run_id, name, payload) VALUES ($1::bigint, $2::text, $3::text::jsonb)
  RETURNING id),
w AS (
  UPDATE {S}.runs SET run_at = now()
  WHERE id = $1::bigint AND state = 'waiting' AND waiting_for = $2::text
  RETURNING id),
n1 AS (SELECT pg_notify($4::text, 'event:' || $1::bigint) FROM e),
n2 AS (SELECT pg_notify($5::text, 'new') FROM w)
SELECT (SELECT id FROM e) AS event, (SELECT count(*) FROM w) AS woken,
       (SELECT count(*) FROM n1) + (SELECT count(*) FROM n2) AS notified]]

M.set_limit = [[
WITH u AS (
  INSERT INTO {S}.limits (kind, max_running) VALUES ($1::text, $2::integer)
  ON CONFLICT (kind) DO UPDATE SET max_running = EXCLUDED.max_running RETURNING kind)
SELECT pg_notify($3::text, 'limits') FROM u]]
M.clear_limit = [[
WITH d AS (DELETE FROM {S}.limits WHERE kind = $1::text RETURNING kind)
SELECT pg_notify($2::text, 'limits') FROM d]]
M.limits = [[SELECT kind, max_running FROM {S}.limits]]

-- ---- workers -----------------------------------------------------------------

M.register = [[
INSERT INTO {S}.workers (id, host, pid, kinds, concurrency, lease_s)
VALUES ($1::text, $2::text, $3::integer, $4::text, $5::integer, $6::float8)
ON CONFLICT (id) DO UPDATE SET heartbeat_at = now()]]

M.deregister = [[DELETE FROM {S}.workers WHERE id = $1::text]]

-- The runs a claim returns.  Steps are read only for a run claimed before
-- (token > 1): a fresh run has none, and costs no extra lookup.
local CLAIMED = [[
RETURNING r.id, r.kind, r.key, r.input::text AS input, r.token, r.attempts, r.max_attempts,
  r.cancel_requested,
  CASE WHEN r.token > 1 THEN
    (SELECT json_object_agg(s.name, s.output)::text FROM {S}.steps s WHERE s.run_id = r.id)
  END AS steps,
  extract(epoch FROM clock_timestamp())::float8 AS db_now]]

-- Claims up to $2 due runs of the kinds in $1 (a JSON array), best
-- priority first, then oldest: the index runs_ready is read in order and
-- the scan stops after $2 rows that no other claimer holds.  The commit
-- does not wait for the disk (synchronous_commit off for this transaction
-- only): a claim lost in a server crash leaves the run queued with its old
-- token, and the worker that believed it held it is fenced off by worker
-- and token at its first write.
M.claim = [[
WITH nosync AS (SELECT set_config('synchronous_commit', 'off', true)),
c AS (
  SELECT id FROM {S}.runs
  WHERE state IN ('queued', 'waiting') AND run_at <= now()
    AND kind = ANY (ARRAY(SELECT jsonb_array_elements_text($1::text::jsonb)))
  ORDER BY priority DESC, run_at, id
  LIMIT $2::integer
  FOR UPDATE SKIP LOCKED)
UPDATE {S}.runs r SET state = 'running', worker = $3::text, token = r.token + 1,
  attempts = r.attempts + 1, lease_until = now() + make_interval(secs => $4::float8),
  started_at = coalesce(r.started_at, now()), waiting_for = NULL
FROM c, nosync WHERE r.id = c.id
]] .. CLAIMED

-- A kind with a fleet-wide limit is claimed in a transaction that first
-- locks its limits row (claim_limit_lock, which also reads the limit), so
-- that claimers of that kind count the running runs one after the other;
-- claim_limited, a new statement, sees every claim committed before.
M.claim_limit_lock = [[
SELECT max_running, set_config('synchronous_commit', 'off', true) AS nosync
FROM {S}.limits WHERE kind = $1::text FOR UPDATE]]
M.claim_limited = [[
WITH c AS (
  SELECT id FROM {S}.runs
  WHERE state IN ('queued', 'waiting') AND run_at <= now() AND kind = $1::text
  ORDER BY kind, priority DESC, run_at, id
  LIMIT greatest(0, least($2::integer,
          $5::integer - (SELECT count(*) FROM {S}.runs WHERE kind = $1::text AND state = 'running')))
  FOR UPDATE SKIP LOCKED)
UPDATE {S}.runs r SET state = 'running', worker = $3::text, token = r.token + 1,
  attempts = r.attempts + 1, lease_until = now() + make_interval(secs => $4::float8),
  started_at = coalesce(r.started_at, now()), waiting_for = NULL
FROM c WHERE r.id = c.id
]] .. CLAIMED

-- Step checkpoints of any number of runs ($1: [{run_id, token, name,
-- output}]): stored only for runs still held by worker $2 with that token,
-- under a
-- share lock on each (taken in id order) that a sweep or a claim cannot
-- pass.  Returns the rows stored; a row missing from the answer was not
-- stored (the lease was lost, or the step name was used twice).
M.steps = [[
WITH w AS (
  SELECT * FROM jsonb_to_recordset($1::text::jsonb)
    AS w(run_id bigint, token bigint, name text, output jsonb)),
own AS (
  SELECT r.id, r.token FROM {S}.runs r
  WHERE r.id IN (SELECT run_id FROM w) AND r.state = 'running' AND r.worker = $2::text
  ORDER BY r.id FOR SHARE OF r),
ins AS (
  INSERT INTO {S}.steps (run_id, name, output, token)
  SELECT w.run_id, w.name, w.output, w.token FROM w JOIN own ON own.id = w.run_id AND own.token = w.token
  ON CONFLICT (run_id, name) DO NOTHING
  RETURNING run_id, name)
SELECT run_id, name FROM ins]]

-- The end of an attempt for any number of runs ($1: [{id, token, state,
-- result, error, delay, refund, waiting_for}]): done, failed, dead,
-- cancelled, or back to queued/waiting (retry with a delay, a release, a
-- park until run_at).  refund gives the attempt back (a release or a park
-- is not a failure).  Waiters hear 'done:ID' for the final states.
M.finish = [[
WITH w AS (
  SELECT * FROM jsonb_to_recordset($1::text::jsonb)
    AS w(id bigint, token bigint, state text, result jsonb, error jsonb, delay float8,
         refund boolean, waiting_for text)),
own AS (
  SELECT r.id FROM {S}.runs r JOIN w ON w.id = r.id AND w.token = r.token
  WHERE r.state = 'running' AND r.worker = $4::text ORDER BY r.id FOR UPDATE OF r),
u AS (
  UPDATE {S}.runs r SET state = w.state, result = w.result, error = coalesce(w.error, r.error),
    run_at = CASE WHEN w.state IN ('queued', 'waiting')
                  THEN now() + make_interval(secs => coalesce(w.delay, 0)) ELSE r.run_at END,
    attempts = r.attempts - CASE WHEN w.refund THEN 1 ELSE 0 END,
    waiting_for = w.waiting_for,
    finished_at = CASE WHEN w.state IN ('done', 'failed', 'dead', 'cancelled') THEN now() END,
    worker = NULL, lease_until = NULL
  FROM w, own WHERE r.id = w.id AND own.id = w.id
  RETURNING r.id, r.state),
n AS (SELECT pg_notify($2::text, 'done:' || id) FROM u
      WHERE state IN ('done', 'failed', 'dead', 'cancelled')),
q AS (SELECT pg_notify($3::text, 'new') FROM (SELECT 1 FROM u WHERE state = 'queued' LIMIT 1) z)
SELECT id, state, (SELECT count(*) FROM n) + (SELECT count(*) FROM q) AS notified FROM u]]

-- A park waiting for an event: the run row locked first (as send does),
-- then, in a new statement that sees every event sent before the lock, the
-- run parked until $4 seconds from now, or made due at once when its event
-- is already there.
M.park_lock = [[
SELECT id FROM {S}.runs WHERE id = $1::bigint AND token = $2::bigint AND state = 'running'
  AND worker = $3::text
FOR UPDATE]]
M.park_event = [[
UPDATE {S}.runs SET state = 'waiting', waiting_for = $3::text, worker = NULL, lease_until = NULL,
  attempts = attempts - 1,
  run_at = CASE WHEN EXISTS (SELECT 1 FROM {S}.events e WHERE e.run_id = $1::bigint
                              AND e.name = $3::text AND e.consumed_by IS NULL)
                THEN now() ELSE now() + make_interval(secs => $4::float8) END
WHERE id = $1::bigint AND token = $2::bigint AND state = 'running'
RETURNING id, run_at <= now() AS due]]

-- Takes the oldest unconsumed event called $3 of run $1 (held with token
-- $2) and stores it as step $4, in one statement.
M.take_event = [[
WITH own AS (
  SELECT id FROM {S}.runs WHERE id = $1::bigint AND token = $2::bigint AND state = 'running'
    AND worker = $5::text
  FOR SHARE),
e AS (
  SELECT ev.id, ev.payload FROM {S}.events ev, own
  WHERE ev.run_id = own.id AND ev.name = $3::text AND ev.consumed_by IS NULL
  ORDER BY ev.id LIMIT 1 FOR UPDATE OF ev SKIP LOCKED),
c AS (
  UPDATE {S}.events ev SET consumed_by = $4::text FROM e WHERE ev.id = e.id RETURNING ev.payload),
s AS (
  INSERT INTO {S}.steps (run_id, name, output, token)
  SELECT $1::bigint, $4::text, jsonb_build_array(c.payload), $2::bigint FROM c
  RETURNING 1)
SELECT (SELECT count(*) FROM own) AS owned, (SELECT count(*) FROM s) AS taken,
       (SELECT jsonb_build_array(payload)::text FROM c) AS output]]

-- The heartbeat of a worker: its row, and the leases of the runs it holds
-- ($2: [{id, token}]), renewed in id order, committed without waiting for
-- the disk (a renewal lost in a server crash only shortens a lease).  Returns the runs renewed (a
-- run missing from the answer is no longer this worker's) and whether each
-- was asked to cancel, and the database's clock.
M.heartbeat = [[
WITH nosync AS (SELECT set_config('synchronous_commit', 'off', true)),
hb AS (UPDATE {S}.workers SET heartbeat_at = now() WHERE id = $1::text RETURNING id),
h AS (
  SELECT * FROM jsonb_to_recordset($2::text::jsonb) AS h(id bigint, token bigint)),
held AS (
  SELECT r.id FROM {S}.runs r JOIN h ON h.id = r.id AND h.token = r.token
  WHERE r.state = 'running' AND r.worker = $1::text ORDER BY r.id FOR NO KEY UPDATE OF r),
renew AS (
  UPDATE {S}.runs r SET lease_until = now() + make_interval(secs => $3::float8)
  FROM held WHERE r.id = held.id
  RETURNING r.id, r.cancel_requested)
SELECT id, cancel_requested, (SELECT count(*) FROM hb) AS registered,
       extract(epoch FROM clock_timestamp())::float8 AS db_now
FROM renew
UNION ALL
SELECT NULL, NULL, (SELECT count(*) FROM hb), extract(epoch FROM clock_timestamp())::float8
FROM nosync]]

-- Takes back the runs whose lease expired (their worker died or stalled),
-- committed without waiting for the disk (a take-back lost in a crash is
-- done again by the next sweep):
-- due again at once, or dead when that was the last attempt, or
-- cancelled when that was asked.  Returns how many, and how long until the
-- next lease expires (NULL when none runs), so that the sweeper can come
-- back just then.
M.sweep = [[
WITH nosync AS (SELECT set_config('synchronous_commit', 'off', true)),
x AS (
  SELECT id FROM {S}.runs WHERE state = 'running' AND lease_until < now()
  ORDER BY id LIMIT 1000 FOR UPDATE SKIP LOCKED),
u AS (
  UPDATE {S}.runs r SET
    state = CASE WHEN r.cancel_requested THEN 'cancelled'
                 WHEN r.attempts >= r.max_attempts THEN 'dead' ELSE 'queued' END,
    error = CASE WHEN r.cancel_requested OR r.attempts < r.max_attempts THEN r.error
                 ELSE jsonb_build_object('kind', 'lease_expired', 'message',
                   'the worker ' || coalesce(r.worker, '?') ||
                   ' stopped renewing its lease on the last attempt') END,
    finished_at = CASE WHEN r.cancel_requested OR r.attempts >= r.max_attempts
                       THEN now() END,
    worker = NULL, lease_until = NULL, run_at = now()
  FROM x WHERE r.id = x.id
  RETURNING r.id, r.state),
n AS (SELECT pg_notify($1::text, 'done:' || id) FROM u WHERE state <> 'queued'),
q AS (SELECT pg_notify($2::text, 'new') FROM (SELECT 1 FROM u WHERE state = 'queued' LIMIT 1) z)
SELECT (SELECT count(*) FROM u) AS taken, (SELECT count(*) FROM n) + (SELECT count(*) FROM q) AS notified,
  (SELECT extract(epoch FROM min(lease_until) - now())::float8 FROM {S}.runs
   WHERE state = 'running') AS next_expiry,
  (SELECT count(*) FROM {S}.workers WHERE heartbeat_at < now() - make_interval(secs => 3 * lease_s)) AS stale
FROM nosync]]

-- Workers that stopped without deregistering (killed), once their leases
-- are long gone: removed so that status shows the living.
M.forget_workers = [[
DELETE FROM {S}.workers WHERE heartbeat_at < now() - make_interval(secs => 3 * lease_s)]]

-- ---- status ------------------------------------------------------------------

M.report_states = [[
SELECT state, count(*) AS n FROM {S}.runs GROUP BY state ORDER BY state]]
M.report_queue = [[
SELECT count(*) FILTER (WHERE run_at <= now() AND state = 'queued') AS due,
       count(*) FILTER (WHERE run_at > now() AND state = 'queued') AS delayed,
       count(*) FILTER (WHERE state = 'waiting') AS waiting,
       extract(epoch FROM now() - min(run_at) FILTER (WHERE run_at <= now()))::float8 AS oldest_due_s
FROM {S}.runs WHERE state IN ('queued', 'waiting')]]
M.report_kinds = [[
SELECT r.kind, count(*) FILTER (WHERE r.state IN ('queued', 'waiting')) AS queued,
       count(*) FILTER (WHERE r.state = 'running') AS running, max(l.max_running) AS max_running
FROM {S}.runs r LEFT JOIN {S}.limits l ON l.kind = r.kind
WHERE r.state IN ('queued', 'waiting', 'running')
GROUP BY r.kind ORDER BY r.kind]]
M.report_workers = [[
SELECT w.id, w.host, w.pid, w.kinds, w.concurrency,
       extract(epoch FROM now() - w.heartbeat_at)::float8 AS heartbeat_age,
       w.heartbeat_at > now() - make_interval(secs => w.lease_s) AS alive,
       count(r.id) AS leases,
       extract(epoch FROM min(r.lease_until) - now())::float8 AS next_expiry
FROM {S}.workers w LEFT JOIN {S}.runs r ON r.worker = w.id AND r.state = 'running'
GROUP BY w.id ORDER BY w.started_at, w.id]]
M.report_orphans = [[
SELECT count(*) AS n FROM {S}.runs r
WHERE r.state = 'running' AND NOT EXISTS (SELECT 1 FROM {S}.workers w WHERE w.id = r.worker)]]

-- Puts the quoted schema into a template.
function M.render(template, schema_ident)
  return (template:gsub("{S}", schema_ident))
end

return M

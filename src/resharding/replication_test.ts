import assert from "node:assert/strict";
import { type PgCluster, startPostgres } from "../../tests/harness/mod.ts";
import { type Change, type Relation, type StreamedChange, UNCHANGED } from "./changes.ts";
import { PgConn, PgError, type ServerLogin } from "./pg_conn.ts";
import { createSlot, dropSlot, ReplicationStream, slotLag } from "./replication.ts";
import { ReshardingError } from "./shards.ts";

async function source(
  settings: Record<string, string | number> = {},
): Promise<{ pg: PgCluster; login: ServerLogin; sql: PgConn }> {
  const pg = await startPostgres({
    settings: { wal_level: "logical", max_replication_slots: 10, max_wal_senders: 10, ...settings },
    roles: [{ name: "app", password: "pw", auth: "scram", superuser: true }],
    hba: ["host replication app 127.0.0.1/32 scram-sha-256"],
  });
  const login = { host: pg.host, port: pg.port, user: "app", password: "pw", database: "postgres" };
  const sql = await PgConn.connect(login);
  return { pg, login, sql };
}

/** Resolves with `promise`, or fails after `ms` saying what was awaited. */
async function within<T>(promise: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  try {
    return await Promise.race([
      promise,
      new Promise<never>((_, reject) => {
        timer = setTimeout(() => reject(new Error(`timed out waiting for ${what}`)), ms);
      }),
    ]);
  } finally {
    clearTimeout(timer);
  }
}

/** Reads up to and including the `commits`-th Commit. */
async function readTransactions(
  stream: ReplicationStream,
  commits: number,
): Promise<StreamedChange[]> {
  const out: StreamedChange[] = [];
  let seen = 0;
  while (seen < commits) {
    const next = await within(stream.next(), 20_000, `commit ${seen + 1} of ${commits}`);
    assert.ok(next !== null, "the stream ended early");
    out.push(next);
    if (next.change.kind === "commit") seen++;
  }
  return out;
}

/** The changes without Begin, Commit and Relation, each with its table's name. */
function dataChanges(changes: StreamedChange[]): [string, Change][] {
  const tables = new Map<number, string>();
  const out: [string, Change][] = [];
  for (const { change } of changes) {
    if (change.kind === "relation") tables.set(change.oid, change.name);
    else if (change.kind === "insert" || change.kind === "update" || change.kind === "delete") {
      out.push([tables.get(change.relation) ?? "?", change]);
    } else if (change.kind === "truncate") {
      out.push([change.relations.map((oid) => tables.get(oid) ?? "?").join(","), change]);
    }
  }
  return out;
}

/** The first column of every insert: the ids a stream delivered, in order. */
function insertedIds(changes: StreamedChange[]): number[] {
  return changes.flatMap(({ change }) => change.kind === "insert" ? [Number(change.tuple[0])] : []);
}

function commitsOf(changes: StreamedChange[]): Extract<Change, { kind: "commit" }>[] {
  return changes.flatMap(({ change }) => change.kind === "commit" ? [change] : []);
}

Deno.test("replication: inserts, updates (non-key, key, unchanged TOAST), deletes, truncate and REPLICA IDENTITY FULL, one transaction at a time", async () => {
  const { pg, login, sql } = await source();
  await using _pg = pg;
  try {
    await sql.query(`
      CREATE TABLE items (id int PRIMARY KEY, note text, doc text);
      ALTER TABLE items ALTER COLUMN doc SET STORAGE EXTERNAL;
      CREATE TABLE logs (a int, b text);
      ALTER TABLE logs REPLICA IDENTITY FULL;
      CREATE TABLE hidden (id int PRIMARY KEY);
      CREATE PUBLICATION pub FOR TABLE items, logs;`);
    const slot = await createSlot(login, { name: "s_all" });
    slot.conn.close();
    assert.equal(slot.name, "s_all");
    assert.equal(slot.snapshot, null);
    const big = "toast".repeat(2000);
    await sql.query(`
      BEGIN;
      INSERT INTO items VALUES (1, NULL, '${big}'), (2, 'two', 'small');
      INSERT INTO logs VALUES (1, 'one'), (1, 'one');
      INSERT INTO hidden VALUES (1);
      COMMIT;`);
    await sql.query(`
      BEGIN;
      UPDATE items SET note = 'n' WHERE id = 1;
      UPDATE items SET id = 3 WHERE id = 2;
      COMMIT;`);
    await sql.query(`BEGIN; UPDATE logs SET b = 'uno'; DELETE FROM logs; COMMIT;`);
    await sql.query("INSERT INTO hidden VALUES (2)"); // not published: no transaction at all
    await sql.query("DELETE FROM items WHERE id = 3");
    await sql.query("TRUNCATE items");

    const stream = await ReplicationStream.start(login, { slot: "s_all", publication: "pub" });
    try {
      const changes = await readTransactions(stream, 5);
      assert.deepEqual(dataChanges(changes), [
        ["items", { kind: "insert", relation: oidOf(changes, "items"), tuple: ["1", null, big] }],
        ["items", {
          kind: "insert",
          relation: oidOf(changes, "items"),
          tuple: ["2", "two", "small"],
        }],
        ["logs", { kind: "insert", relation: oidOf(changes, "logs"), tuple: ["1", "one"] }],
        ["logs", { kind: "insert", relation: oidOf(changes, "logs"), tuple: ["1", "one"] }],
        ["items", {
          kind: "update",
          relation: oidOf(changes, "items"),
          old: null,
          oldKind: null,
          tuple: ["1", "n", UNCHANGED],
        }],
        ["items", {
          kind: "update",
          relation: oidOf(changes, "items"),
          old: ["2", null, null],
          oldKind: "K",
          tuple: ["3", "two", "small"],
        }],
        ...[0, 1].map((): [string, Change] => ["logs", {
          kind: "update",
          relation: oidOf(changes, "logs"),
          old: ["1", "one"],
          oldKind: "O",
          tuple: ["1", "uno"],
        }]),
        ...[0, 1].map((): [string, Change] => ["logs", {
          kind: "delete",
          relation: oidOf(changes, "logs"),
          old: ["1", "uno"],
          oldKind: "O",
        }]),
        ["items", {
          kind: "delete",
          relation: oidOf(changes, "items"),
          old: ["3", null, null],
          oldKind: "K",
        }],
        ["items", {
          kind: "truncate",
          relations: [oidOf(changes, "items")],
          cascade: false,
          restartIdentity: false,
        }],
      ]);
      const items = changes.find(({ change }) => change.kind === "relation")?.change as Relation;
      assert.deepEqual(items.columns.map((c) => [c.name, c.key]), [
        ["id", true],
        ["note", false],
        ["doc", false],
      ]);
      // Transactions in commit order, each Begin naming its Commit, positions increasing.
      let begin: Extract<Change, { kind: "begin" }> | null = null;
      let last = 0n;
      for (const { lsn, change } of changes) {
        assert.ok(lsn > 0n && lsn >= last, "positions go forward");
        last = lsn;
        if (change.kind === "begin") begin = change;
        if (change.kind === "commit") {
          assert.equal(change.commitLsn, begin?.finalLsn);
          assert.equal(lsn, change.endLsn, "a Commit's position is its record's end");
          assert.ok(change.endLsn > change.commitLsn);
          assert.ok(change.commitLsn >= slot.consistentPoint);
        }
      }
      assert.equal(stream.received, last);
    } finally {
      await stream.close();
    }
    assert.equal(await dropSlot(login, "s_all"), true);
  } finally {
    sql.close();
  }
});

function oidOf(changes: StreamedChange[], table: string): number {
  for (const { change } of changes) {
    if (change.kind === "relation" && change.name === table) return change.oid;
  }
  throw new Error(`no Relation for ${table}`);
}

Deno.test("createSlot: the exported snapshot has exactly what the slot does not stream; a temporary slot goes with its connection", async () => {
  const { pg, login, sql } = await source();
  await using _pg = pg;
  try {
    await sql.query(`
      CREATE TABLE t (id int PRIMARY KEY);
      INSERT INTO t SELECT generate_series(1, 3);
      CREATE PUBLICATION pub FOR ALL TABLES;`);
    const slot = await createSlot(login, { name: "with_snapshot", exportSnapshot: true });
    await sql.query("INSERT INTO t VALUES (4), (5)");
    assert.ok(slot.snapshot);
    const reader = await PgConn.connect(login);
    try {
      await reader.query("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY");
      await reader.execute("SET TRANSACTION SNAPSHOT '" + slot.snapshot + "'", []);
      const r = await reader.query("SELECT array_agg(id ORDER BY id) FROM t");
      assert.deepEqual(r.rows, [["{1,2,3}"]]);
      await reader.query("COMMIT");
    } finally {
      reader.close();
    }
    slot.conn.close();
    const stream = await ReplicationStream.start(login, {
      slot: "with_snapshot",
      publication: "pub",
    });
    try {
      assert.deepEqual(insertedIds(await readTransactions(stream, 1)), [4, 5]);
    } finally {
      await stream.close();
    }

    // An existing name is refused.
    await assert.rejects(
      createSlot(login, { name: "with_snapshot" }),
      (e) => e instanceof PgError && e.code === "42710",
    );

    const temp = await createSlot(login, { name: "temp", temporary: true, exportSnapshot: true });
    assert.ok(temp.snapshot);
    const row = await sql.query(
      "SELECT temporary, active_pid FROM pg_replication_slots WHERE slot_name = 'temp'",
    );
    assert.deepEqual(row.rows, [["t", String(temp.conn.pid)]]);
    temp.conn.close();
    await within(
      (async () => {
        while (
          (await sql.query("SELECT 1 FROM pg_replication_slots WHERE slot_name = 'temp'")).rows
            .length
        ) {
          await new Promise((r) => setTimeout(r, 50));
        }
      })(),
      10_000,
      "the temporary slot to go",
    );
  } finally {
    sql.close();
  }
});

Deno.test("ReplicationStream: closed and started again, it resumes after the confirmed position (none lost, none repeated)", async () => {
  const { pg, login, sql } = await source();
  await using _pg = pg;
  try {
    await sql.query("CREATE TABLE t (id int PRIMARY KEY); CREATE PUBLICATION pub FOR ALL TABLES");
    (await createSlot(login, { name: "resume" })).conn.close();
    for (let id = 1; id <= 6; id++) await sql.query(`INSERT INTO t VALUES (${id})`);

    // Reads three, confirms two.
    const first = await ReplicationStream.start(login, { slot: "resume", publication: "pub" });
    const read1 = await readTransactions(first, 3);
    assert.deepEqual(insertedIds(read1), [1, 2, 3]);
    const [, second] = commitsOf(read1);
    first.confirm(second.endLsn);
    first.confirm(second.commitLsn); // never back
    assert.equal(first.confirmed, second.endLsn);
    await first.close();
    assert.equal((await slotLag(login, "resume")).confirmedFlush, second.endLsn);

    // The unconfirmed third comes again, then the rest.
    const again = await ReplicationStream.start(login, { slot: "resume", publication: "pub" });
    const read2 = await readTransactions(again, 4);
    assert.deepEqual(insertedIds(read2), [3, 4, 5, 6]);
    const commits = commitsOf(read2);
    again.confirm(commits[1].endLsn); // through 4
    await again.close();

    // A start position past the confirmed one skips what came before it.
    const skip = await ReplicationStream.start(login, {
      slot: "resume",
      publication: "pub",
      startLsn: commits[2].endLsn, // after 5
    });
    const read3 = await readTransactions(skip, 1);
    assert.deepEqual(insertedIds(read3), [6]);
    const sixth = commitsOf(read3)[0].endLsn;
    skip.confirm(sixth);
    await skip.close();

    // A start position before the confirmed one does not bring confirmed changes back.
    await sql.query("INSERT INTO t VALUES (7)");
    const early = await ReplicationStream.start(login, {
      slot: "resume",
      publication: "pub",
      startLsn: 1n,
    });
    // Its status updates never move the slot back to where it was asked to start.
    await early.sendStatus();
    await new Promise((r) => setTimeout(r, 500));
    assert.equal((await slotLag(login, "resume")).confirmedFlush, sixth);
    assert.deepEqual(insertedIds(await readTransactions(early, 1)), [7]);
    await early.close();
    assert.equal((await slotLag(login, "resume")).confirmedFlush, sixth);
  } finally {
    sql.close();
  }
});

Deno.test("ReplicationStream: restarted again and again (closed idle or mid-read) while a writer commits, every row arrives exactly once", async () => {
  const { pg, login, sql } = await source();
  await using _pg = pg;
  try {
    await sql.query("CREATE TABLE t (id int PRIMARY KEY); CREATE PUBLICATION pub FOR ALL TABLES");
    (await createSlot(login, { name: "busy" })).conn.close();
    const writer = await PgConn.connect(login);
    const total = 300;
    const writing = (async () => {
      for (let id = 1; id <= total; id += 3) {
        // Some transactions of one row, some of two.
        if (id % 2) await writer.query(`INSERT INTO t VALUES (${id}), (${id + 1})`);
        else await writer.query(`INSERT INTO t VALUES (${id}); INSERT INTO t VALUES (${id + 1})`);
        await writer.query(`INSERT INTO t VALUES (${id + 2})`);
      }
    })();
    const seen: number[] = [];
    let restarts = 0;
    try {
      while (seen.length < total) {
        const stream = await ReplicationStream.start(login, { slot: "busy", publication: "pub" });
        restarts++;
        try {
          // A few transactions per session; what was read after the last commit is dropped.
          let pending: number[] = [];
          let commits = 0;
          while (commits < 7 && seen.length < total) {
            const next = await within(stream.next(), 20_000, "a change");
            assert.ok(next);
            const { change } = next;
            if (change.kind === "insert") pending.push(Number(change.tuple[0]));
            if (change.kind === "commit") {
              seen.push(...pending);
              pending = [];
              stream.confirm(change.endLsn);
              commits++;
            }
          }
        } finally {
          if (restarts % 2) await stream.close();
          else {
            // Closed while a next() is pending: no waiting for the source to end the stream, so
            // the next start may find the slot still held, or its position not yet moved.
            const last = stream.next().catch(() => null);
            await stream.close();
            await last;
          }
        }
      }
      await writing;
    } finally {
      writer.close();
    }
    assert.ok(restarts > 10);
    assert.deepEqual(seen, Array.from({ length: total }, (_, i) => i + 1));
  } finally {
    sql.close();
  }
});

Deno.test("ReplicationStream: confirmations reach the source on their own, an idle stream shows no lag, and it outlives wal_sender_timeout, read or not", async () => {
  const { pg, login, sql } = await source({ wal_sender_timeout: "2s" });
  await using _pg = pg;
  try {
    await sql.query(`
      CREATE TABLE t (id int PRIMARY KEY);
      CREATE TABLE unpublished (id int);
      CREATE PUBLICATION pub FOR TABLE t;`);
    (await createSlot(login, { name: "lag" })).conn.close();
    await sql.query("INSERT INTO t VALUES (1)");
    await sql.query("INSERT INTO t VALUES (2)");
    const before = await slotLag(login, "lag");
    assert.equal(before.active, false);
    // Counted from the insert position: commits not yet flushed (synchronous_commit = off) count.
    assert.ok(before.lagBytes > 0n);

    const stream = await ReplicationStream.start(login, { slot: "lag", publication: "pub" });
    try {
      const changes = await readTransactions(stream, 1);
      const end = commitsOf(changes)[0].endLsn;
      stream.confirm(end);
      // next() is not called: the status update goes out by itself.
      await waitFor(async () => (await slotLag(login, "lag")).confirmedFlush === end, "confirm");
      assert.equal((await slotLag(login, "lag")).active, true);

      // Read the second, confirm it; then WAL the stream has nothing to send for: keepalives
      // carry the idle stream to the WAL's end.
      const more = await readTransactions(stream, 1);
      stream.confirm(commitsOf(more)[0].endLsn);
      const reading = stream.next();
      await sql.query("INSERT INTO unpublished SELECT generate_series(1, 1000)");
      assert.ok((await slotLag(login, "lag")).lagBytes > 0n);
      await waitFor(async () => (await slotLag(login, "lag")).lagBytes === 0n, "no lag");
      // Idle for longer than wal_sender_timeout, then a change still arrives.
      await new Promise((r) => setTimeout(r, 4_000));
      await sql.query("INSERT INTO t VALUES (3)");
      let next = await within(reading, 20_000, "the insert after idling");
      while (next?.change.kind !== "insert") next = await within(stream.next(), 20_000, "insert");
      assert.deepEqual(next.change.tuple, ["3"]);
      // No next() for longer than wal_sender_timeout (an applier busy on a slow destination):
      // the source's keepalives go unread, the stream's own status updates keep it alive.
      await new Promise((r) => setTimeout(r, 5_000));
      await sql.query("INSERT INTO t VALUES (4)");
      next = await within(stream.next(), 20_000, "a change after not reading");
      while (next?.change.kind !== "insert") next = await within(stream.next(), 20_000, "insert");
      assert.deepEqual(next.change.tuple, ["4"]);
    } finally {
      await stream.close();
    }
  } finally {
    sql.close();
  }
});

async function waitFor(check: () => Promise<boolean>, what: string): Promise<void> {
  const deadline = Date.now() + 20_000;
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

Deno.test("dropSlot: a missing slot is no error, an active one is taken from its walsender; slotLag of a missing slot is a ReshardingError", async () => {
  const { pg, login, sql } = await source();
  await using _pg = pg;
  try {
    await sql.query("CREATE TABLE t (id int PRIMARY KEY); CREATE PUBLICATION pub FOR ALL TABLES");
    assert.equal(await dropSlot(login, "nothing_here"), false);
    (await createSlot(login, { name: "held" })).conn.close();
    const stream = await ReplicationStream.start(login, { slot: "held", publication: "pub" });
    const reading = stream.next().then(
      (v) => ({ ok: v }),
      (e) => ({ error: e }),
    );
    assert.equal((await slotLag(login, "held")).active, true);
    await assert.rejects(stream.next(), /while another is pending/);
    // A second stream of the slot waits for the first to let go, for busyWaitMs.
    await assert.rejects(
      ReplicationStream.start(login, { slot: "held", publication: "pub", busyWaitMs: 300 }),
      (e) => e instanceof PgError && e.code === "55006",
    );
    const second = ReplicationStream.start(login, { slot: "held", publication: "pub" });
    await new Promise((r) => setTimeout(r, 500));
    await stream.close();
    assert.deepEqual(await reading, { ok: null }, "close() ends a pending next() with null");
    const stream2 = await within(second, 20_000, "the second stream");
    const reading2 = stream2.next().then(
      (v) => ({ ok: v }),
      (e) => ({ error: e }),
    );
    assert.equal(await dropSlot(login, "held"), true);
    const outcome = await within(reading2, 20_000, "the stream to end");
    assert.ok(
      "error" in outcome && outcome.error instanceof PgError,
      "the stream reports the loss",
    );
    await stream2.close();
    const left = await sql.query("SELECT count(*) FROM pg_replication_slots");
    assert.deepEqual(left.rows, [["0"]]);
    await assert.rejects(slotLag(login, "held"), ReshardingError);
    // A replication login works for both too.
    const repl = { ...login, params: { replication: "database" } };
    (await createSlot(repl, { name: "again" })).conn.close();
    assert.equal((await slotLag(repl, "again")).active, false);
    assert.equal(await dropSlot(repl, "again"), true);
    await assert.rejects(
      ReplicationStream.start(login, { slot: "again", publication: "pub" }),
      (e) => e instanceof PgError && e.code === "42704",
    );
    (await createSlot(login, { name: "nopub" })).conn.close();
    await assert.rejects(
      ReplicationStream.start(login, { slot: "nopub", publication: "missing" }),
      (e) => e instanceof ReshardingError && /publication "missing" does not exist/.test(e.message),
    );
  } finally {
    sql.close();
  }
});

Deno.test("replication: a role with REPLICATION (not a superuser) and an ordinary pg_hba.conf line does all of it", async () => {
  await using pg = await startPostgres({
    settings: { wal_level: "logical", max_replication_slots: 4, max_wal_senders: 4 },
    roles: [
      { name: "app", password: "pw", auth: "scram", superuser: true },
      { name: "rep", password: "pw", auth: "scram" },
    ],
  });
  const admin = { host: pg.host, port: pg.port, user: "app", password: "pw", database: "postgres" };
  const login = { ...admin, user: "rep" };
  const sql = await PgConn.connect(admin);
  try {
    await sql.query(`
      ALTER ROLE rep REPLICATION;
      CREATE TABLE t (id int PRIMARY KEY);
      CREATE PUBLICATION pub FOR ALL TABLES;`);
    (await createSlot(login, { name: "least" })).conn.close();
    await sql.query("INSERT INTO t VALUES (1)");
    const stream = await ReplicationStream.start(login, { slot: "least", publication: "pub" });
    const read = await readTransactions(stream, 1);
    assert.deepEqual(insertedIds(read), [1]);
    stream.confirm(commitsOf(read)[0].endLsn);
    assert.equal((await slotLag(login, "least")).active, true);
    // Its own walsender, still streaming, is terminated by the drop.
    assert.equal(await dropSlot(login, "least"), true);
    await assert.rejects(within(stream.next(), 20_000, "the stream to fail"), PgError);
    await stream.close();
  } finally {
    sql.close();
  }
});

Deno.test("ReplicationStream: values in text form (user types, bytea, arrays, NULL and '', UTF-8), a 5 MB value, and 20000 rows in one transaction", async () => {
  const { pg, login, sql } = await source();
  await using _pg = pg;
  try {
    await sql.query(`
      CREATE TYPE mood AS ENUM ('sad', 'ok');
      CREATE TABLE v (id int PRIMARY KEY, m mood, b bytea, a int[], t text, j jsonb);
      CREATE TABLE many (id int PRIMARY KEY, pad text);
      CREATE PUBLICATION pub FOR ALL TABLES;`);
    (await createSlot(login, { name: "values" })).conn.close();
    await sql.query(`
      INSERT INTO v VALUES
        (1, 'ok', '\\x00ff', '{1,NULL,3}', '', '{"k": "é"}'),
        (2, NULL, NULL, NULL, NULL, NULL),
        (3, 'sad', '', '{}', 'héllo 🐘 "quoted" \\ back', 'null');`);
    await sql.query("INSERT INTO v (id, t) VALUES (4, repeat('0123456789', 500000))");
    await sql.query(
      "INSERT INTO many SELECT g, repeat('x', 100) FROM generate_series(1, 20000) g",
    );
    const stream = await ReplicationStream.start(login, { slot: "values", publication: "pub" });
    try {
      const changes = await readTransactions(stream, 3);
      // The enum's Type message comes before the table's Relation.
      const kinds = changes.map(({ change }) => change.kind === "other" ? change.tag : change.kind);
      assert.deepEqual(kinds.slice(0, 3), ["begin", 0x59, "relation"]);
      const rows = changes.flatMap(({ change }) => change.kind === "insert" ? [change.tuple] : []);
      assert.deepEqual(rows.slice(0, 3), [
        ["1", "ok", "\\x00ff", "{1,NULL,3}", "", '{"k": "é"}'],
        ["2", null, null, null, null, null],
        ["3", "sad", "\\x", "{}", 'héllo 🐘 "quoted" \\ back', "null"],
      ]);
      assert.equal(rows[3][4], "0123456789".repeat(500000));
      assert.equal(rows.length, 4 + 20000);
      assert.deepEqual(rows.at(-1), ["20000", "x".repeat(100)]);
    } finally {
      await stream.close();
    }
  } finally {
    sql.close();
  }
});

/**
 * Reads until the stream ends or fails, confirming every commit as an applier would (a source
 * shutting down waits for its walsenders' consumers to confirm everything sent).
 */
async function drain(stream: ReplicationStream): Promise<{ ids: number[]; error: unknown }> {
  const ids: number[] = [];
  let pending: number[] = [];
  try {
    for (;;) {
      const next = await within(stream.next(), 30_000, "the stream to end");
      if (next === null) return { ids, error: null };
      const { change } = next;
      if (change.kind === "insert") pending.push(Number(change.tuple[0]));
      if (change.kind === "commit") {
        ids.push(...pending);
        pending = [];
        stream.confirm(change.endLsn);
      }
    }
  } catch (error) {
    return { ids, error };
  }
}

/**
 * The ids of the transactions a stream sends until it has sent `last`: whole transactions, in
 * order, each id once.
 */
async function idsThrough(stream: ReplicationStream, last: number): Promise<number[]> {
  const ids: number[] = [];
  while (!ids.includes(last)) {
    const read = await readTransactions(stream, 1);
    ids.push(...insertedIds(read));
    stream.confirm(commitsOf(read)[0].endLsn);
  }
  return ids;
}

/** `ids` are `from`, `from + 1`, ... `to` for some `from` ≤ `atMost`. */
function assertRunUpTo(ids: number[], options: { to: number; atMost: number }): void {
  const from = ids[0];
  assert.ok(from <= options.atMost, `${ids} starts after ${options.atMost}`);
  assert.deepEqual(ids, Array.from({ length: options.to - from + 1 }, (_, i) => from + i));
}

Deno.test("ReplicationStream: the source stopped or killed mid-stream ends the stream; a new one loses no change", async () => {
  const { pg, login, sql: first } = await source();
  await using _pg = pg;
  first.close();
  const insert = async (id: number): Promise<void> => {
    const c = await PgConn.connect(login);
    try {
      // Durable at commit: a crash must not take the row with it.
      await c.query(`SET synchronous_commit = on; INSERT INTO t VALUES (${id})`);
    } finally {
      c.close();
    }
  };
  const setup = await PgConn.connect(login);
  await setup.query("CREATE TABLE t (id int PRIMARY KEY); CREATE PUBLICATION pub FOR ALL TABLES");
  setup.close();
  (await createSlot(login, { name: "survive" })).conn.close();
  for (const id of [1, 2, 3]) await insert(id);

  const s1 = await ReplicationStream.start(login, { slot: "survive", publication: "pub" });
  const read1 = await readTransactions(s1, 2);
  assert.deepEqual(insertedIds(read1), [1, 2]);
  s1.confirm(commitsOf(read1)[1].endLsn);
  // A fast shutdown: the walsender sends what is left and, once it is all confirmed, ends the
  // stream (a CommandComplete, then it hangs up): next() returns null.
  const draining1 = drain(s1);
  await pg.stop();
  const end1 = await draining1;
  assert.equal(end1.error, null);
  assert.deepEqual(end1.ids, [3]);
  await s1.close();
  await pg.start();

  // PostgreSQL before 17 writes a slot's confirmed position to disk only now and then (not at a
  // shutdown checkpoint): a restarted source may send confirmed transactions again, in order,
  // but it loses none.
  await insert(4);
  const s2 = await ReplicationStream.start(login, { slot: "survive", publication: "pub" });
  let end2: { ids: number[]; error: unknown } = { ids: [], error: null };
  try {
    assertRunUpTo(await idsThrough(s2, 4), { to: 4, atMost: 4 });
    await s2.sendStatus();
    await insert(5);
    const draining2 = drain(s2);
    await pg.kill();
    end2 = await draining2;
    assert.ok(end2.error instanceof PgError, `a crash is an error: ${end2.error}`);
  } finally {
    await s2.close();
  }
  await pg.start();
  await insert(6);
  const s3 = await ReplicationStream.start(login, { slot: "survive", publication: "pub" });
  try {
    assertRunUpTo(await idsThrough(s3, 6), { to: 6, atMost: end2.ids.includes(5) ? 6 : 5 });
  } finally {
    await s3.close();
  }
});

Deno.test("createSlot: a source without wal_level = logical, or out of slots, is refused with PostgreSQL's reason", async () => {
  await using plain = await startPostgres({
    settings: { wal_level: "replica" },
    roles: [{ name: "app", password: "pw", auth: "scram", superuser: true }],
  });
  const login = {
    host: plain.host,
    port: plain.port,
    user: "app",
    password: "pw",
    database: "postgres",
  };
  await assert.rejects(
    createSlot(login, { name: "s" }),
    (e) => e instanceof PgError && e.code === "55000" && /wal_level/.test(e.message),
  );
  await using few = await startPostgres({
    settings: { wal_level: "logical", max_replication_slots: 1, max_wal_senders: 4 },
    roles: [{ name: "app", password: "pw", auth: "scram", superuser: true }],
  });
  const login2 = { ...login, port: few.port };
  (await createSlot(login2, { name: "one" })).conn.close();
  await assert.rejects(
    createSlot(login2, { name: "two" }),
    (e) =>
      e instanceof PgError && e.code === "53400" &&
      /max_replication_slots/.test(e.fields.hint ?? ""),
  );
});

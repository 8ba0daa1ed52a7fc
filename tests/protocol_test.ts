/**
 * Wire-protocol pass-through: the same exchanges run straight against PostgreSQL and through the
 * proxy must produce the same backend messages, byte for byte — simple and extended queries,
 * pipelining, transactions, COPY in every direction and format, very large values, FunctionCall,
 * asynchronous notifications (session mode) — and pgbench runs through it without a failure.
 *
 * One cluster and one proxy serve every step; users pick the pool: `tx` (transaction mode,
 * pool_size 2), `tx1` (transaction mode, pool_size 1) and `sess` (session mode).
 */

import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import {
  dumpLogsOnFailure,
  pgbench,
  type PgCluster,
  type PgTarget,
  type ProxyProcess,
  psql,
  sleep,
  startPostgres,
  startProxy,
} from "./harness/mod.ts";
import {
  type BackendMessage,
  concat,
  dataRow,
  dataRowRaw,
  errorFields,
  fe,
  fingerprint,
  int4,
  notification,
  summary,
  WireClient,
  type WireTarget,
} from "./wire.ts";

const PASSWORD = "proto-test-pw";
const USERS = ["tx", "tx1", "sess"];

const decoder = new TextDecoder();

function md5(data: Uint8Array | string): string {
  return createHash("md5").update(data).digest("hex");
}

function sha256(data: Uint8Array | string): string {
  return createHash("sha256").update(data).digest("hex");
}

interface Env {
  pg: PgCluster;
  proxy: ProxyProcess;
}

function direct(env: Env, user: string): WireTarget {
  return { host: env.pg.host, port: env.pg.port, user, password: PASSWORD, database: "app" };
}

function viaProxy(env: Env, user: string): WireTarget {
  return { host: env.proxy.host, port: env.proxy.port, user, password: PASSWORD, database: "app" };
}

function pgTarget(t: WireTarget): PgTarget {
  return { host: t.host, port: t.port, user: t.user, password: t.password, database: t.database };
}

/** Runs `fn` with a fresh connection to `target`, closing it afterwards. */
async function withClient<T>(target: WireTarget, fn: (c: WireClient) => Promise<T>): Promise<T> {
  const c = await WireClient.connect(target);
  try {
    return await fn(c);
  } finally {
    await c.close();
  }
}

/**
 * Runs the same exchange directly against PostgreSQL and through the proxy, asserts that the
 * backend messages are identical (types and payloads), and returns their summary.
 */
async function sameBothWays(
  env: Env,
  user: string,
  exchange: (c: WireClient) => Promise<BackendMessage[]>,
): Promise<string[]> {
  const expected = await withClient(direct(env, user), exchange);
  const actual = await withClient(viaProxy(env, user), exchange);
  assert.deepEqual(summary(actual), summary(expected), "message sequence differs from direct");
  assert.deepEqual(fingerprint(actual), fingerprint(expected), "message payloads differ");
  return summary(actual);
}

/** Rows of a simple query run straight on the cluster, as user postgres. */
async function directRows(env: Env, sql: string): Promise<string[][]> {
  return await env.pg.sql(sql, { database: "app" });
}

/** Races `p` against a timer: "pending" when it has not settled within `ms`. */
async function settledWithin<T>(p: Promise<T>, ms: number): Promise<T | "pending"> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const t = new Promise<"pending">((resolve) => {
    timer = setTimeout(() => resolve("pending"), ms);
  });
  try {
    return await Promise.race([p, t]);
  } finally {
    clearTimeout(timer);
  }
}

/** Runs `fn` in the background without ever leaving a rejection unhandled; `join` rethrows. */
function background(fn: () => Promise<void>): { join(): Promise<void> } {
  let failure: { error: unknown } | null = null;
  const done = fn().catch((error) => {
    failure = { error };
  });
  return {
    async join() {
      await done;
      if (failure) throw failure.error;
    },
  };
}

Deno.test("protocol pass-through", async (t) => {
  await using pg = await startPostgres({
    roles: USERS.map((name) => ({ name, password: PASSWORD, auth: "scram" as const })),
    databases: ["app"],
  });
  await pg.sql(
    [
      "create table items (id int primary key, v text)",
      "insert into items select i, 'item ' || i from generate_series(1, 10) i",
      "create table copy_t (id int, name text, note text)",
      "create table copy_bin (id int, r real, b bytea, ts timestamptz, a int[], n numeric, j jsonb)",
      "create table tx_t (id serial primary key, who text, v text)",
      "grant all on all tables in schema public to public",
      "grant all on all sequences in schema public to public",
    ].join(";"),
    { database: "app" },
  );
  await using proxy = await startProxy({
    config: {
      general: { checkout_timeout: 10_000 },
      databases: [{ name: "app", host: pg.host, port: pg.port }],
    },
    users: {
      users: [
        { name: "tx", password: PASSWORD, database: "app", pool_size: 2 },
        { name: "tx1", password: PASSWORD, database: "app", pool_size: 1 },
        {
          name: "sess",
          password: PASSWORD,
          database: "app",
          pool_size: 2,
          pooler_mode: "session",
        },
      ],
    },
  });
  const env: Env = { pg, proxy };
  const step = (name: string, fn: () => Promise<void>) =>
    t.step(name, () => dumpLogsOnFailure(proxy, fn));

  // -------------------------------------------------------------------------------------------
  await step(
    "simple query: multi-statement results in order, empty query, error midway",
    async () => {
      const multi = await sameBothWays(
        env,
        "tx",
        (c) =>
          c.simple("select 1 as a; select 'x' as b, 2 as c; select generate_series(1, 3) as g"),
      );
      assert.deepEqual(multi, [
        "T",
        "D 1",
        "C SELECT 1",
        "T",
        "D x|2",
        "C SELECT 1",
        "T",
        "D 1",
        "D 2",
        "D 3",
        "C SELECT 3",
        "Z I",
      ]);

      assert.deepEqual(await sameBothWays(env, "tx", (c) => c.simple("")), ["I", "Z I"]);
      assert.deepEqual(await sameBothWays(env, "tx", (c) => c.simple(";")), ["I", "Z I"]);

      // The error aborts the rest of the string, and the implicit transaction around it: the
      // insert before the error is rolled back, the statement after it never runs.
      const errored = await sameBothWays(env, "tx", async (c) => [
        ...await c.simple(
          "insert into tx_t (who, v) values ('multi', 'x'); select 1/0; " +
            "insert into tx_t (who, v) values ('multi', 'y')",
        ),
        ...await c.simple("select count(*) from tx_t where who = 'multi'"),
      ]);
      assert.deepEqual(errored, [
        "C INSERT 0 1",
        "E 22012",
        "Z I",
        "T",
        "D 0",
        "C SELECT 1",
        "Z I",
      ]);
    },
  );

  await step("NOTICE reaches the client (raw 'N' and psql)", async () => {
    const notice = await sameBothWays(
      env,
      "tx",
      (c) => c.simple("DO $$ BEGIN RAISE NOTICE 'hi'; END $$"),
    );
    assert.deepEqual(notice, ["N 00000", "C DO", "Z I"]);
    await withClient(viaProxy(env, "tx"), async (c) => {
      const msgs = await c.simple("DO $$ BEGIN RAISE NOTICE 'hello %', 42; END $$");
      assert.equal(errorFields(msgs[0].body).M, "hello 42");
    });
    const out = await psql(
      pgTarget(viaProxy(env, "tx")),
      "DO $$ BEGIN RAISE NOTICE 'hi from psql'; END $$",
    );
    assert.equal(out.code, 0, out.stderr);
    assert.match(out.stderr, /NOTICE:\s+hi from psql/);
  });

  // -------------------------------------------------------------------------------------------
  await step("extended protocol: unnamed statement and portal, describe, execute", async () => {
    const basic = await sameBothWays(env, "tx", async (c) => {
      await c.send(
        fe.parse("", "select $1::int + 1 as x, $2::text as t", [23, 25]),
        fe.bind("", "", ["41", "héllo ✓"]),
        fe.describe("P", ""),
        fe.execute("", 0),
        fe.sync(),
      );
      return await c.untilReady();
    });
    assert.deepEqual(basic, ["1", "2", "T", "D 42|héllo ✓", "C SELECT 1", "Z I"]);

    const described = await sameBothWays(env, "tx", async (c) => {
      await c.send(
        fe.parse("", "select id, v from items where id = $1"),
        fe.describe("S", ""),
        fe.sync(),
        fe.parse("", "insert into tx_t (who) values ($1)"),
        fe.describe("S", ""),
        fe.sync(),
      );
      return await c.untilReady(2);
    });
    assert.deepEqual(described, ["1", "t", "T", "Z I", "1", "t", "n", "Z I"]);

    // Binary parameters and results.
    const binary = await sameBothWays(env, "tx", async (c) => {
      await c.send(
        fe.parse("", "select $1::int4 * 2 as doubled"),
        fe.bind("", "", [int4(21)], { paramFormats: [1], resultFormats: [1] }),
        fe.execute("", 0),
        fe.sync(),
      );
      return await c.untilReady();
    });
    assert.deepEqual(binary.map((s) => s.slice(0, 1)), ["1", "2", "D", "C", "Z"]);
  });

  await step("extended protocol: row limit, PortalSuspended, Flush without Sync", async () => {
    const limited = await sameBothWays(env, "tx", async (c) => {
      await c.send(
        fe.parse("", "select generate_series(1, 5) as g"),
        fe.bind("", ""),
        fe.describe("P", ""),
        fe.execute("", 2),
        fe.execute("", 2),
        fe.execute("", 2),
        fe.sync(),
      );
      return await c.untilReady();
    });
    assert.deepEqual(limited, [
      "1",
      "2",
      "T",
      "D 1",
      "D 2",
      "s",
      "D 3",
      "D 4",
      "s",
      "D 5",
      "C SELECT 1",
      "Z I",
    ]);

    // Flush: the responses so far arrive without a Sync; the portal then continues.
    const flushed = await sameBothWays(env, "tx1", async (c) => {
      await c.send(
        fe.parse("", "select generate_series(1, 5) as g"),
        fe.bind("", ""),
        fe.execute("", 2),
        fe.flush(),
      );
      const first = await c.until("s", 5_000);
      await c.send(fe.execute("", 0), fe.flush());
      const second = await c.until("C", 5_000);
      // Nothing else may be pending before the Sync.
      assert.equal(await c.hasMessageWithin(200), false);
      await c.send(fe.sync());
      return [...first, ...second, ...await c.untilReady()];
    });
    assert.deepEqual(flushed, [
      "1",
      "2",
      "D 1",
      "D 2",
      "s",
      "D 3",
      "D 4",
      "D 5",
      "C SELECT 3",
      "Z I",
    ]);
  });

  await step("extended protocol: Close, errors in Parse/Bind skip to Sync", async () => {
    const closed = await sameBothWays(env, "tx", async (c) => {
      await c.send(
        fe.parse("", "select 7 as seven"),
        fe.bind("", ""),
        fe.execute("", 0),
        fe.close("P", ""),
        fe.close("S", ""),
        // The unnamed statement is gone: binding it again fails.
        fe.bind("", ""),
        fe.sync(),
      );
      return await c.untilReady();
    });
    assert.deepEqual(closed, ["1", "2", "D 7", "C SELECT 1", "3", "3", "E 26000", "Z I"]);

    const bindError = await sameBothWays(env, "tx", async (c) => {
      await c.send(
        fe.parse("", "select $1::int as n"),
        fe.bind("", "", ["not a number"]),
        fe.describe("P", ""),
        fe.execute("", 0),
        fe.sync(),
        // Wrong number of parameters.
        fe.bind("", "", []),
        fe.execute("", 0),
        fe.sync(),
        fe.bind("", "", ["5"]),
        fe.execute("", 0),
        fe.sync(),
      );
      return await c.untilReady(3);
    });
    assert.deepEqual(bindError, [
      "1",
      "E 22P02",
      "Z I",
      "E 08P01",
      "Z I",
      "2",
      "D 5",
      "C SELECT 1",
      "Z I",
    ]);

    const parseError = await sameBothWays(env, "tx", async (c) => {
      await c.send(
        fe.parse("", "selec 1"),
        fe.bind("", ""),
        fe.execute("", 0),
        fe.sync(),
        fe.parse("", "select 'ok'"),
        fe.bind("", ""),
        fe.execute("", 0),
        fe.sync(),
      );
      return await c.untilReady(2);
    });
    assert.deepEqual(parseError, ["E 42601", "Z I", "1", "2", "D ok", "C SELECT 1", "Z I"]);
  });

  // -------------------------------------------------------------------------------------------
  /** 50 requests: even ones simple queries, odd ones Parse/Bind/Execute/Sync. */
  function pipeline(tag: string, n = 50): Uint8Array[] {
    const msgs: Uint8Array[] = [];
    for (let i = 0; i < n; i++) {
      if (i % 2 === 0) msgs.push(fe.query(`select '${tag}' as tag, ${i} as i`));
      else {
        msgs.push(
          fe.parse("", "select $1::text as tag, $2::int as i"),
          fe.bind("", "", [tag, String(i)]),
          fe.execute("", 0),
          fe.sync(),
        );
      }
    }
    return msgs;
  }

  function checkPipelined(msgs: BackendMessage[], tag: string, n = 50): void {
    assert.equal(msgs.filter((m) => m.type === "Z").length, n);
    assert.equal(msgs.filter((m) => m.type === "E").length, 0, summary(msgs).join(" "));
    const rows = msgs.filter((m) => m.type === "D").map((m) => dataRow(m.body));
    assert.deepEqual(rows, Array.from({ length: n }, (_, i) => [tag, String(i)]));
  }

  await step("pipelining: 50 requests in one write, answers in order", async () => {
    const s = await sameBothWays(env, "tx", async (c) => {
      await c.send(...pipeline("p"));
      return await c.untilReady(50);
    });
    assert.equal(s.filter((x) => x === "Z I").length, 50);
    await withClient(viaProxy(env, "tx"), async (c) => {
      await c.send(...pipeline("q"));
      checkPipelined(await c.untilReady(50), "q");
      // No stray message after the 50th ReadyForQuery.
      assert.equal(await c.hasMessageWithin(200), false);
    });
  });

  await step("messages split across many small writes are reassembled", async () => {
    const bytes = concat(pipeline("split", 20));
    const s = await sameBothWays(env, "tx", async (c) => {
      for (let o = 0; o < bytes.length; o += 3) {
        await c.send(bytes.subarray(o, o + 3));
        if (o % 90 === 0) await sleep(1);
      }
      const out = await c.untilReady(20);
      checkPipelined(out, "split", 20);
      return out;
    });
    assert.equal(s.length, 20 * 4 + 10 * 1);
  });

  await step("pipelining with pool_size 1: another client interleaves", async () => {
    const a = await WireClient.connect(viaProxy(env, "tx1"));
    const b = await WireClient.connect(viaProxy(env, "tx1"));
    // B keeps the single server busy with its own requests while A pipelines, in one write
    // and then in bursts that B can slip between.
    let bDone = 0;
    const bLoop = background(async () => {
      for (let i = 0; i < 40; i++) {
        const rows = await b.rows(`select 'b' as tag, ${i} as i, pg_backend_pid()`);
        assert.deepEqual(rows[0].slice(0, 2), ["b", String(i)]);
        bDone++;
      }
    });
    try {
      await a.send(...pipeline("a"));
      checkPipelined(await a.untilReady(50), "a");
      const bursts = pipeline("a2");
      const perBurst = bursts.length / 5;
      for (let k = 0; k < 5; k++) {
        await a.send(...bursts.slice(k * perBurst, (k + 1) * perBurst));
        await sleep(10);
      }
      checkPipelined(await a.untilReady(50), "a2");
      await bLoop.join();
      assert.equal(bDone, 40);
      // One server for both.
      const [[pa]] = await a.rows("select pg_backend_pid()");
      const [[pb]] = await b.rows("select pg_backend_pid()");
      assert.equal(pa, pb);
    } finally {
      await a.close();
      await b.close();
      await bLoop.join().catch(() => {});
    }
  });

  await step("a Flush after the Sync does not pin the server (pool_size 1)", async () => {
    await withClient(viaProxy(env, "tx1"), async (a) => {
      await a.send(fe.query("select 1"), fe.flush());
      assert.deepEqual(summary(await a.untilReady()), ["T", "D 1", "C SELECT 1", "Z I"]);
      // A has nothing outstanding: B must get the only server at once.
      await withClient(viaProxy(env, "tx1"), async (b) => {
        const r = await settledWithin(b.rows("select 2"), 2_000);
        assert.deepEqual(r, [["2"]], "B was blocked by an idle client after Query+Flush");
      });
    });
  });

  // -------------------------------------------------------------------------------------------
  await step("transactions keep their server; clients take turns between them", async () => {
    // pool_size 2, three busy clients: inside A's transaction the backend never changes.
    const a = await WireClient.connect(viaProxy(env, "tx"));
    const others = await Promise.all([1, 2].map(() => WireClient.connect(viaProxy(env, "tx"))));
    let running = true;
    let otherQueries = 0;
    const loops = others.map((c) =>
      background(async () => {
        while (running) {
          await c.rows("select pg_backend_pid()");
          otherQueries++;
        }
      })
    );
    try {
      assert.deepEqual(summary(await a.simple("BEGIN")), ["C BEGIN", "Z T"]);
      const pids = new Set<string | null>();
      for (let i = 0; i < 20; i++) {
        pids.add((await a.rows("select pg_backend_pid()"))[0][0]);
        await sleep(2);
      }
      const duringTransaction = otherQueries;
      assert.deepEqual(summary(await a.simple("COMMIT")), ["C COMMIT", "Z I"]);
      running = false;
      for (const l of loops) await l.join();
      assert.equal(pids.size, 1, `backend changed inside a transaction: ${[...pids]}`);
      assert.ok(duringTransaction > 0, "the other clients made no progress meanwhile");
    } finally {
      running = false;
      await a.close();
      for (const c of others) await c.close();
      for (const l of loops) await l.join().catch(() => {});
    }

    // pool_size 1: two clients alternate whole transactions on the one server.
    const clients = await Promise.all(
      ["x", "y"].map(() => WireClient.connect(viaProxy(env, "tx1"))),
    );
    try {
      const results = await Promise.all(clients.map(async (c, k) => {
        const who = `turns-${k}`;
        for (let i = 0; i < 10; i++) {
          const msgs = [
            ...await c.simple("BEGIN"),
            ...await c.simple(`insert into tx_t (who, v) values ('${who}', '${i}')`),
            ...await c.simple(`select count(*) from tx_t where who = '${who}'`),
            ...await c.simple("COMMIT"),
          ];
          assert.deepEqual(summary(msgs), [
            "C BEGIN",
            "Z T",
            "C INSERT 0 1",
            "Z T",
            "T",
            `D ${i + 1}`,
            "C SELECT 1",
            "Z T",
            "C COMMIT",
            "Z I",
          ]);
        }
        return who;
      }));
      assert.equal(results.length, 2);
    } finally {
      for (const c of clients) await c.close();
    }
  });

  await step("transactions: isolation on pool_size 1, ROLLBACK, failed transaction", async () => {
    const a = await WireClient.connect(viaProxy(env, "tx1"));
    const b = await WireClient.connect(viaProxy(env, "tx1"));
    try {
      await a.simple("BEGIN");
      await a.simple("insert into tx_t (who, v) values ('iso', 'uncommitted')");
      // B needs the only server, which A's transaction holds: B waits, and never runs inside
      // A's transaction (it would see the uncommitted row).
      const bCount = b.rows("select count(*) from tx_t where who = 'iso'");
      assert.equal(await settledWithin(bCount, 500), "pending");
      assert.deepEqual(summary(await a.simple("COMMIT")), ["C COMMIT", "Z I"]);
      assert.deepEqual(await bCount, [["1"]]);

      // ROLLBACK.
      const rolled = [
        ...await a.simple("BEGIN"),
        ...await a.simple("insert into tx_t (who, v) values ('rb', 'gone')"),
        ...await a.simple("ROLLBACK"),
        ...await a.simple("select count(*) from tx_t where who = 'rb'"),
      ];
      assert.deepEqual(summary(rolled), [
        "C BEGIN",
        "Z T",
        "C INSERT 0 1",
        "Z T",
        "C ROLLBACK",
        "Z I",
        "T",
        "D 0",
        "C SELECT 1",
        "Z I",
      ]);

      // A failed transaction stays on its server in state E until ROLLBACK.
      const failed1 = [
        ...await a.simple("BEGIN"),
        ...await a.simple("select 1/0"),
        ...await a.simple("select 1"),
      ];
      assert.deepEqual(summary(failed1), ["C BEGIN", "Z T", "E 22012", "Z E", "E 25P02", "Z E"]);
      const bWait = b.rows("select 'b got in'");
      assert.equal(await settledWithin(bWait, 300), "pending");
      assert.deepEqual(summary(await a.simple("ROLLBACK")), ["C ROLLBACK", "Z I"]);
      assert.deepEqual(await bWait, [["b got in"]]);
    } finally {
      await a.close();
      await b.close();
    }
    // Same statuses straight from PostgreSQL.
    const s = await sameBothWays(env, "tx", async (c) => [
      ...await c.simple("BEGIN"),
      ...await c.simple("select 1/0"),
      ...await c.simple("select 1"),
      ...await c.simple("ROLLBACK"),
      ...await c.simple("BEGIN; select 1/0"),
      ...await c.simple("COMMIT"),
    ]);
    assert.deepEqual(s, [
      "C BEGIN",
      "Z T",
      "E 22012",
      "Z E",
      "E 25P02",
      "Z E",
      "C ROLLBACK",
      "Z I",
      "C BEGIN",
      "E 22012",
      "Z E",
      "C ROLLBACK",
      "Z I",
    ]);
  });

  // -------------------------------------------------------------------------------------------
  await step("COPY FROM STDIN with psql (text and csv, 10k rows) and COPY TO STDOUT", async () => {
    const proxyT = pgTarget(viaProxy(env, "tx"));
    const directT = pgTarget(direct(env, "tx"));
    const text = Array.from(
      { length: 10_000 },
      (_, i) => `${i}\tname ${i} ✓\t${i % 7 === 0 ? "\\N" : `tab\\there ${i}`}`,
    ).join("\n") + "\n";
    const r1 = await psql(proxyT, "COPY copy_t FROM STDIN", { stdin: text });
    assert.equal(r1.code, 0, r1.stderr);
    assert.match(r1.stdout, /COPY 10000/);
    const csv = Array.from(
      { length: 10_000 },
      (_, i) => `${10_000 + i},"quoted, ""name"" ${i}","multi\nline ${i}"`,
    ).join("\n") + "\n";
    const r2 = await psql(proxyT, "COPY copy_t FROM STDIN (FORMAT csv)", { stdin: csv });
    assert.equal(r2.code, 0, r2.stderr);
    assert.match(r2.stdout, /COPY 10000/);
    assert.deepEqual(
      await directRows(
        env,
        "select count(*), count(note), md5(string_agg(id || name || coalesce(note, '-'), ',' order by id)) from copy_t",
      ),
      [[
        "20000",
        String(20_000 - Math.ceil(10_000 / 7)),
        md5(
          [
            ...Array.from(
              { length: 10_000 },
              (_, i) => `${i}name ${i} ✓${i % 7 === 0 ? "-" : `tab\there ${i}`}`,
            ),
            ...Array.from(
              { length: 10_000 },
              (_, i) => `${10_000 + i}quoted, "name" ${i}multi\nline ${i}`,
            ),
          ].join(","),
        ),
      ]],
    );
    for (const sql of ["COPY copy_t TO STDOUT", "COPY copy_t TO STDOUT (FORMAT csv, HEADER)"]) {
      const [viaP, viaD] = await Promise.all([psql(proxyT, sql), psql(directT, sql)]);
      assert.equal(viaP.code, 0, viaP.stderr);
      assert.ok(viaD.stdout.length > 400_000);
      assert.equal(viaP.stdout, viaD.stdout);
    }
  });

  await step("COPY TO STDOUT of ~20 MB streams intact", async () => {
    const sql =
      "COPY (select i, repeat(md5(i::text), 4), i * 1.5 from generate_series(1, 140000) i) TO STDOUT";
    const viaP = await psql(pgTarget(viaProxy(env, "tx")), sql);
    const viaD = await psql(pgTarget(direct(env, "tx")), sql);
    assert.equal(viaP.code, 0, viaP.stderr);
    assert.ok(viaD.stdout.length > 20_000_000, `only ${viaD.stdout.length} bytes`);
    assert.equal(viaP.stdout.length, viaD.stdout.length);
    assert.equal(sha256(viaP.stdout), sha256(viaD.stdout));
  });

  await step("CopyFail aborts the COPY; the connection stays usable", async () => {
    const s = await sameBothWays(env, "tx1", async (c) => {
      const out = [...await c.simple("select count(*) from copy_t where id >= 900000")];
      await c.send(fe.query("COPY copy_t FROM STDIN"));
      out.push(...await c.until("G"));
      await c.send(fe.copyData("900001\tdoomed\t\\N\n"), fe.copyFail("client says no"));
      const failed = await c.untilReady();
      assert.equal(errorFields(failed[0].body).M, "COPY from stdin failed: client says no");
      out.push(...failed);
      out.push(...await c.simple("select count(*) from copy_t where id >= 900000"));
      return out;
    });
    assert.deepEqual(s, [
      "T",
      "D 0",
      "C SELECT 1",
      "Z I",
      "G",
      "E 57014",
      "Z I",
      "T",
      "D 0",
      "C SELECT 1",
      "Z I",
    ]);
  });

  await step("bad COPY data: the error ends COPY, later CopyData is ignored", async () => {
    const s = await sameBothWays(env, "tx1", async (c) => {
      await c.send(fe.query("COPY copy_t FROM STDIN"));
      const out = await c.until("G");
      await c.send(fe.copyData("700001\tok\t\\N\n"), fe.copyData("not-a-number\tbad\t\\N\n"));
      out.push(...await c.untilReady());
      // The client did not notice yet and goes on: PostgreSQL ignores copy messages outside COPY.
      await c.send(fe.copyData("700002\tlate\t\\N\n"), fe.copyDone());
      assert.equal(await c.hasMessageWithin(300), false);
      out.push(...await c.simple("select count(*) from copy_t where id >= 700000 and id < 800000"));
      return out;
    });
    assert.deepEqual(s, ["G", "E 22P02", "Z I", "T", "D 0", "C SELECT 1", "Z I"]);
    const bad = Array.from({ length: 5000 }, (_, i) => `${i}\tx\ty`).join("\n") + "\nboom\n" +
      Array.from({ length: 5000 }, (_, i) => `${i}\tx\ty`).join("\n") + "\n";
    const r = await psql(pgTarget(viaProxy(env, "tx1")), "COPY copy_t FROM STDIN", { stdin: bad });
    assert.notEqual(r.code, 0);
    assert.match(r.stderr, /invalid input syntax for type integer: "boom"/);
    await withClient(viaProxy(env, "tx1"), async (c) => {
      const rows = await settledWithin(
        c.rows("select count(*) from copy_t where name = 'x'"),
        5_000,
      );
      assert.deepEqual(rows, [["0"]]);
    });
  });

  await step("COPY over the extended protocol (Sync sent before the data)", async () => {
    const out = await sameBothWays(env, "tx", async (c) => {
      await c.send(
        fe.parse("", "COPY (select generate_series(1, 3)) TO STDOUT"),
        fe.bind("", ""),
        fe.execute("", 0),
        fe.sync(),
      );
      return await c.untilReady();
    });
    assert.deepEqual(out, ["1", "2", "H", "d", "d", "d", "c", "C COPY 3", "Z I"]);

    // As tokio-postgres does it: Bind/Execute/Sync, then the data, CopyDone and another Sync.
    // PostgreSQL ignores the Sync that arrives during copy-in, so there is one ReadyForQuery.
    const s = await sameBothWays(env, "tx1", async (c) => {
      await c.send(
        fe.parse("", "COPY copy_t FROM STDIN"),
        fe.bind("", ""),
        fe.execute("", 0),
        fe.sync(),
      );
      const out = await c.until("G");
      await c.send(fe.copyData("800001\text\t\\N\n800002\text\t\\N\n"), fe.copyDone(), fe.sync());
      out.push(...await c.untilReady());
      assert.equal(await c.hasMessageWithin(300), false);
      out.push(...await c.simple("delete from copy_t where id in (800001, 800002)"));
      return out;
    });
    assert.deepEqual(s, ["1", "2", "G", "C COPY 2", "Z I", "C DELETE 2", "Z I"]);
    // The single server of tx1 must be free again for another client.
    await withClient(viaProxy(env, "tx1"), async (a) => {
      await a.send(fe.parse("", "COPY copy_t FROM STDIN"), fe.bind("", ""), fe.execute("", 0));
      await a.send(fe.sync());
      await a.until("G");
      await a.send(fe.copyData("800003\text\t\\N\n"), fe.copyDone(), fe.sync());
      assert.deepEqual(summary(await a.untilReady()), ["C COPY 1", "Z I"]);
      await withClient(viaProxy(env, "tx1"), async (b) => {
        const r = await settledWithin(b.rows("delete from copy_t where id = 800003"), 2_000);
        assert.notEqual(r, "pending", "the server stayed pinned to the idle COPY client");
      });
    });
  });

  await step("binary COPY round trip", async () => {
    await withClient(viaProxy(env, "tx"), async (c) => {
      const src = "select i, (i / 3.0)::real, decode(md5(i::text), 'hex'), " +
        "'2024-01-01 00:00:00+00'::timestamptz + i * interval '1 minute', array[i, -i, null], " +
        "i * 1.000001, jsonb_build_object('i', i, 's', 'ü' || i) from generate_series(1, 20000) i";
      await c.send(fe.query(`COPY (${src}) TO STDOUT (FORMAT binary)`));
      const msgs = await c.untilReady();
      assert.equal(msgs[0].type, "H");
      assert.deepEqual(summary(msgs.slice(-3)), ["c", "C COPY 20000", "Z I"]);
      const data = concat(msgs.filter((m) => m.type === "d").map((m) => m.body));
      assert.ok(data.length > 1_000_000);
      // Same bytes as straight from PostgreSQL.
      const directData = await withClient(direct(env, "tx"), async (d) => {
        const dm = await d.simple(`COPY (${src}) TO STDOUT (FORMAT binary)`);
        return concat(dm.filter((m) => m.type === "d").map((m) => m.body));
      });
      assert.equal(sha256(data), sha256(directData));
      // Back in, in odd-sized CopyData chunks.
      await c.send(fe.query("COPY copy_bin FROM STDIN (FORMAT binary)"));
      assert.deepEqual(summary(await c.until("G")), ["G"]);
      const chunks: Uint8Array[] = [];
      for (let o = 0; o < data.length; o += 7919) {
        chunks.push(fe.copyData(data.subarray(o, Math.min(o + 7919, data.length))));
      }
      await c.send(...chunks, fe.copyDone());
      assert.deepEqual(summary(await c.untilReady()), ["C COPY 20000", "Z I"]);
      const [[a]] = await c.rows(`select md5(string_agg(x::text, ',' order by 1)) from (${src}) x`);
      const [[b]] = await c.rows("select md5(string_agg(x::text, ',' order by 1)) from copy_bin x");
      assert.equal(b, a);
    });
  });

  // -------------------------------------------------------------------------------------------
  await step("large values: 50 MB text and bytea results, 20 MB query and parameter", async () => {
    // 100 000 distinct blocks of 512 bytes: a lost, repeated or misplaced piece changes the md5.
    const textSql = "select string_agg(md5(i::text) || repeat(chr(65 + i % 26), 480), '') as x " +
      "from generate_series(1, 100000) i";
    const byteaSql = "select string_agg(sha512(int4send(i)) || " +
      "convert_to(repeat(chr(65 + i % 26), 448), 'UTF8'), ''::bytea) as x " +
      "from generate_series(1, 100000) i";
    const [[tMd5, tLen]] = await directRows(
      env,
      `select md5(x), octet_length(x) from (${textSql}) s`,
    );
    const [[bMd5, bLen]] = await directRows(
      env,
      `select md5(x), octet_length(x) from (${byteaSql}) s`,
    );
    assert.equal(tLen, "51200000");
    assert.equal(bLen, "51200000");
    await withClient(viaProxy(env, "tx"), async (c) => {
      const textMsgs = await c.simple(textSql, 60_000);
      assert.deepEqual(summary(textMsgs).filter((s) => !s.startsWith("D")), [
        "T",
        "C SELECT 1",
        "Z I",
      ]);
      const t = dataRowRaw(textMsgs[1].body)[0]!;
      assert.equal(t.length, Number(tLen));
      assert.equal(md5(t), tMd5);

      await c.send(
        fe.parse("", byteaSql),
        fe.bind("", "", [], { resultFormats: [1] }),
        fe.execute("", 0),
        fe.sync(),
      );
      const binMsgs = await c.untilReady(1, 60_000);
      const b = dataRowRaw(binMsgs.find((m) => m.type === "D")!.body)[0]!;
      assert.equal(b.length, Number(bLen));
      assert.equal(md5(b), bMd5);

      // A 20 MB query string and a 20 MB Bind parameter.
      const raw = crypto.getRandomValues(new Uint8Array(65536));
      const big = new Uint8Array(20 << 20);
      for (let i = 0; i < big.length; i++) big[i] = 97 + (raw[i & 65535] + (i >> 16)) % 26;
      const bigText = decoder.decode(big);
      const q = await c.simple(`select length(q), md5(q) from (select '${bigText}'::text as q) s`);
      assert.deepEqual(summary(q).filter((s) => !s.startsWith("D")), ["T", "C SELECT 1", "Z I"]);
      assert.deepEqual(dataRow(q[1].body), [String(big.length), md5(big)]);
      await c.send(
        fe.parse("", "select length($1), md5($1)", [25]),
        fe.bind("", "", [big]),
        fe.execute("", 0),
        fe.sync(),
      );
      const p = await c.untilReady(1, 60_000);
      assert.deepEqual(summary(p), [
        "1",
        "2",
        `D ${big.length}|${md5(big)}`,
        "C SELECT 1",
        "Z I",
      ]);
    });
  });

  // -------------------------------------------------------------------------------------------
  await step("FunctionCall", async () => {
    const [[int4pl, int4div, backendPid]] = await directRows(
      env,
      "select 'int4pl'::regproc::oid, 'int4div'::regproc::oid, 'pg_backend_pid'::regproc::oid",
    );
    const s = await sameBothWays(env, "tx", async (c) => {
      await c.send(fe.functionCall(Number(int4pl), [int4(40), int4(2)], 1));
      const out = await c.untilReady();
      await c.send(fe.functionCall(Number(int4pl), [int4(-7), int4(3)], 0));
      out.push(...await c.untilReady());
      await c.send(fe.functionCall(Number(int4div), [int4(1), int4(0)], 1));
      out.push(...await c.untilReady());
      out.push(...await c.simple("BEGIN"));
      await c.send(fe.functionCall(Number(int4pl), [int4(1), null], 1));
      out.push(...await c.untilReady());
      out.push(...await c.simple("COMMIT"));
      return out;
    });
    assert.deepEqual(s, [
      "V",
      "Z I",
      "V",
      "Z I",
      "E 22012",
      "Z I",
      "C BEGIN",
      "Z T",
      "V",
      "Z T",
      "C COMMIT",
      "Z I",
    ]);
    await withClient(viaProxy(env, "tx"), async (c) => {
      await c.send(fe.functionCall(Number(int4pl), [int4(40), int4(2)], 1));
      const [v] = await c.untilReady();
      assert.equal(v.type, "V");
      assert.deepEqual([...v.body], [0, 0, 0, 4, 0, 0, 0, 42]);
      await c.send(fe.functionCall(Number(int4pl), [int4(-7), int4(3)], 0));
      const [v2] = await c.untilReady();
      assert.equal(decoder.decode(v2.body.subarray(4)), "-4");
    });
    // The call runs on the server the client holds.
    await withClient(viaProxy(env, "tx1"), async (c) => {
      await c.simple("BEGIN");
      const [[pid]] = await c.rows("select pg_backend_pid()");
      await c.send(fe.functionCall(Number(backendPid), [], 0));
      const [v] = await c.untilReady();
      assert.equal(decoder.decode(v.body.subarray(4)), pid);
      await c.simple("COMMIT");
    });
  });

  // -------------------------------------------------------------------------------------------
  await step("LISTEN/NOTIFY in session mode delivers NotificationResponse", async () => {
    await withClient(viaProxy(env, "sess"), async (listener) => {
      assert.deepEqual(summary(await listener.simple("LISTEN ch")), ["C LISTEN", "Z I"]);
      // From a direct connection, while the listener sits idle.
      await withClient(direct(env, "tx"), async (n) => {
        assert.deepEqual(summary(await n.simple("NOTIFY ch, 'hello ✓'")), ["C NOTIFY", "Z I"]);
        const a = await listener.next(5_000);
        assert.equal(a.type, "A");
        assert.deepEqual(notification(a.body), {
          pid: n.backendPid,
          channel: "ch",
          payload: "hello ✓",
        });
      });
      // From another proxy client, several in order.
      await withClient(viaProxy(env, "tx"), async (n) => {
        await n.simple("select pg_notify('ch', 'one'); select pg_notify('ch', 'two')");
        await n.simple("NOTIFY other, 'not for us'");
        await n.simple("NOTIFY ch, 'three'");
      });
      const got: string[] = [];
      for (let i = 0; i < 3; i++) {
        const m = await listener.next(5_000);
        assert.equal(m.type, "A");
        got.push(notification(m.body).payload);
      }
      assert.deepEqual(got, ["one", "two", "three"]);
      // Its own NOTIFY arrives with its query's answer.
      const own = await listener.simple("NOTIFY ch, 'self'");
      assert.deepEqual(summary(own), ["C NOTIFY", "A", "Z I"]);
      assert.equal(notification(own[1].body).payload, "self");
      assert.equal(await listener.hasMessageWithin(200), false);
    });
  });

  // -------------------------------------------------------------------------------------------
  await step("pgbench -M simple and -M extended, 10 clients, no failures", async () => {
    const target = pgTarget(viaProxy(env, "tx"));
    const init = await pgbench(target, ["-i", "-s", "1", "-q"]);
    assert.equal(init.code, 0, init.stderr);
    for (const mode of ["simple", "extended"]) {
      const r = await pgbench(target, ["-n", "-M", mode, "-c", "10", "-j", "2", "-t", "100"], {
        timeoutMs: 60_000,
      });
      assert.equal(r.code, 0, `${mode}: ${r.stderr}\n${r.stdout}`);
      assert.equal(r.processed, 1000, r.stdout);
      assert.equal(r.failed ?? 0, 0, r.stdout);
    }
    // TPC-B bookkeeping adds up: no statement ran in another client's transaction or twice.
    const [[accounts, branches, tellers, history, n]] = await directRows(
      env,
      "select (select sum(abalance) from pgbench_accounts), (select sum(bbalance) from pgbench_branches), " +
        "(select sum(tbalance) from pgbench_tellers), (select sum(delta) from pgbench_history), " +
        "(select count(*) from pgbench_history)",
    );
    assert.equal(n, "2000");
    assert.equal(accounts, history);
    assert.equal(branches, history);
    assert.equal(tellers, history);
  });

  // -------------------------------------------------------------------------------------------
  await step("a pipelined Query discarded by an extended-protocol error", async () => {
    // After an error PostgreSQL discards everything up to Sync, including a Query: the request
    // produces one ReadyForQuery, not two. The pool_size 1 server must be free afterwards.
    const s = await sameBothWays(env, "tx1", async (c) => {
      await c.send(fe.parse("", "selec 1"), fe.query("select 'discarded'"), fe.sync());
      const out = await c.untilReady();
      assert.equal(await c.hasMessageWithin(300), false);
      return out;
    });
    assert.deepEqual(s, ["E 42601", "Z I"]);
    await withClient(viaProxy(env, "tx1"), async (a) => {
      await a.send(fe.parse("", "selec 1"), fe.query("select 'discarded'"), fe.sync());
      await a.untilReady();
      await withClient(viaProxy(env, "tx1"), async (b) => {
        const r = await settledWithin(b.rows("select 'b'"), 2_000);
        assert.deepEqual(r, [["b"]], "the server stayed pinned to an idle client");
      });
    });
  });
});

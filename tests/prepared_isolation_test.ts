/**
 * Prepared statements shared between clients (transaction mode, `prepared_statements =
 * "extended"`) never give a client a wrong or stale answer, through the drivers that found the
 * problems (issue #18). Every pool has one or two servers, so clients share them and their
 * `__pgdog_<n>` statements.
 *
 * - A statement described before a table change: postgres.js gets the new rows (after
 *   PostgreSQL's 0A000, which it answers by preparing again), never the old description's
 *   decoding of them, on the same server or another; at the protocol level, after a Describe of
 *   the statement or of a portal, the exchange equals PostgreSQL's.
 * - A statement parsed after the change: psycopg (`prepare=True`) and npm:pg named queries get no
 *   0A000; postgres.js, preparing again after 42804, gets a statement planned anew.
 * - DEALLOCATE: psycopg's, over the extended protocol (a small `prepared_max`, and DEALLOCATE ALL
 *   after DROP) concern only that client; among other statements and over the extended protocol
 *   the exchange equals PostgreSQL's; one that still runs on a server (a server-side name, a
 *   function) leaves pgdog preparing its statements again.
 *
 * Where it is cheap, the same scenario also runs straight against PostgreSQL and must give the
 * same answer: what PostgreSQL shows a client is the reference.
 *
 * `ISO_ONLY=<regex>` runs only the steps whose names match.
 */

import assert from "node:assert/strict";
import {
  connectPg,
  connectPostgresJs,
  dumpLogsOnFailure,
  type PgTarget,
  psycopgAvailable,
  runPsycopg,
  startPostgres,
  startProxy,
} from "./harness/mod.ts";
import { type BackendMessage, errorFields, fe, summary, WireClient } from "./wire.ts";

const PASSWORD = "isolation-test-pw";

/** Users (all in transaction mode): name -> pool size. */
const USERS: Record<string, number> = {
  pjs_shape: 1,
  pjs_shape2: 2,
  wire_shape: 1,
  pjs_assign: 1,
  psy_fresh: 1,
  node_fresh: 1,
  psy_evict: 1,
  psy_all: 1,
  wire_dealloc: 1,
  wire_resync: 1,
};

/** A readable summary of messages: errors with SQLSTATE and message, the rest by `summary`. */
function detail(msgs: BackendMessage[]): string[] {
  const plain = summary(msgs);
  return msgs.map((m, i) => {
    if (m.type !== "E") return plain[i];
    const f = errorFields(m.body);
    return `E ${f.C} ${f.M}`;
  });
}

Deno.test("prepared statements shared between clients stay isolated", async (t) => {
  const hasPsycopg = await psycopgAvailable();
  await using pgc = await startPostgres({
    roles: Object.keys(USERS).map((name) => ({
      name,
      password: PASSWORD,
      auth: "scram" as const,
    })),
    databases: ["app"],
  });
  await pgc.sql(
    "grant all on schema public to public; alter default privileges grant all on tables to public",
    { database: "app" },
  );
  await using proxy = await startProxy({
    config: {
      general: { checkout_timeout: 20_000 },
      databases: [{ name: "app", host: pgc.host, port: pgc.port }],
    },
    users: {
      users: Object.entries(USERS).map(([name, pool_size]) => ({
        name,
        password: PASSWORD,
        database: "app",
        pool_size,
      })),
    },
  });
  const direct = (user: string): PgTarget => ({
    host: pgc.host,
    port: pgc.port,
    user,
    password: PASSWORD,
    database: "app",
  });
  const via = (user: string): PgTarget =>
    proxy.target({ user, password: PASSWORD, database: "app" });
  const only = Deno.env.get("ISO_ONLY");
  const step = (name: string, fn: () => Promise<void>, ignore = false) =>
    t.step({
      name,
      ignore: ignore || (only !== undefined && !new RegExp(only).test(name)),
      fn: () => dumpLogsOnFailure(proxy, fn),
    });

  // -------------------------------------------------------------------------------------------
  // Item 1: a statement described before a schema change.

  /**
   * L describes `select x from <table>` (int), M replaces the table (int[]) and reads it twice, then
   * L reads it again: PostgreSQL makes L describe again (0A000, which postgres.js answers by
   * preparing again), so L sees the array.
   */
  async function shapeChange(target: PgTarget, table: string): Promise<unknown> {
    const l = connectPostgresJs(target);
    const m = connectPostgresJs(target);
    try {
      await l.unsafe(`create table ${table} (x int)`);
      await l`insert into ${l(table)} values (1)`;
      assert.deepEqual([...await l`select x from ${l(table)}`], [{ x: 1 }]);
      await m.unsafe(`drop table ${table}; create table ${table} (x int[])`, [], {
        prepare: false,
      });
      await m`insert into ${m(table)} values (${"{1,2,3}"})`;
      assert.deepEqual([...await m`select x from ${m(table)}`], [{ x: [1, 2, 3] }]);
      assert.deepEqual([...await m`select x from ${m(table)}`], [{ x: [1, 2, 3] }]);
      return [...await l`select x from ${l(table)}`];
    } finally {
      await l.end();
      await m.end();
    }
  }

  await step("postgres.js: a statement described before a schema change (one server)", async () => {
    assert.deepEqual(await shapeChange(direct("pjs_shape"), "shape_direct"), [{ x: [1, 2, 3] }]);
    assert.deepEqual(await shapeChange(via("pjs_shape"), "shape_proxy"), [{ x: [1, 2, 3] }]);
  });

  await step("postgres.js: the server that prepares it again is another one", async () => {
    // L describes the statement on one server; after the change, L's next use lands on the other
    // server (the first is held by a transaction), where pgdog prepares it for the first time.
    const l = connectPostgresJs(via("pjs_shape2"));
    const holder = await connectPg(via("pjs_shape2"));
    try {
      await pgc.sql("create table shape2 (x int); insert into shape2 values (1)", {
        database: "app",
      });
      const [first] = await l`select x, pg_backend_pid() as pid from shape2`;
      assert.equal(first.x, 1);
      await pgc.sql(
        "drop table shape2; create table shape2 (x int[]); insert into shape2 values ('{1,2,3}')",
        { database: "app" },
      );
      await holder.query("begin");
      const held = (await holder.query("select pg_backend_pid() as pid")).rows[0].pid;
      assert.equal(held, first.pid, "the transaction did not take L's first server");
      const [again] = await l`select x, pg_backend_pid() as pid from shape2`;
      assert.notEqual(again.pid, first.pid);
      assert.deepEqual(again.x, [1, 2, 3]);
      await holder.query("commit");
    } finally {
      await l.end();
      await holder.end();
    }
  });

  /**
   * The same at the protocol level: L described its statement (or, as pgjdbc does, the portal of
   * its first run, keeping that description) and gets PostgreSQL's 0A000 (inside a transaction,
   * which it aborts), while M, which parsed it after the change, reads the array.
   */
  async function describedThenChanged(
    target: PgTarget,
    options: { table: string; portal: boolean },
  ): Promise<string[]> {
    const { table, portal } = options;
    const l = await WireClient.connect(target);
    const m = await WireClient.connect(target);
    const out: BackendMessage[] = [];
    const rt = async (c: WireClient, ...msgs: Uint8Array[]) => {
      await c.send(...msgs);
      out.push(...await c.untilReady());
    };
    const sql = `select x from ${table}`;
    try {
      await l.simple(`create table ${table} (x int); insert into ${table} values (1)`);
      if (portal) {
        await rt(l, fe.parse("s", sql), fe.sync());
        await rt(l, fe.bind("", "s"), fe.describe("P", ""), fe.execute(""), fe.sync());
      } else {
        await rt(l, fe.parse("s", sql), fe.describe("S", "s"), fe.sync());
        await rt(l, fe.bind("", "s"), fe.execute(""), fe.sync());
      }
      out.push(
        ...await m.simple(
          `drop table ${table}; create table ${table} (x int[]); ` +
            `insert into ${table} values ('{1,2,3}')`,
        ),
      );
      await rt(m, fe.parse("m", sql), fe.describe("S", "m"), fe.sync());
      await rt(m, fe.bind("", "m"), fe.execute(""), fe.sync());
      out.push(...await l.simple("begin"));
      await rt(l, fe.bind("", "s"), fe.execute(""), fe.sync());
      const error = out[out.length - 2];
      assert.equal(error.type, "E");
      assert.equal(errorFields(error.body).R, "RevalidateCachedQuery");
      out.push(...await l.simple("rollback"));
      return detail(out);
    } finally {
      await l.close();
      await m.close();
    }
  }

  await step("raw protocol: the client that described it gets PostgreSQL's 0A000", async () => {
    for (const portal of [false, true]) {
      const name = portal ? "portal" : "statement";
      const expected = await describedThenChanged(direct("wire_shape"), {
        table: `described_${name}_direct`,
        portal,
      });
      const actual = await describedThenChanged(via("wire_shape"), {
        table: `described_${name}_proxy`,
        portal,
      });
      assert.deepEqual(actual, expected, `described: ${name}`);
      assert.ok(expected.includes("E 0A000 cached plan must not change result type"));
      assert.ok(expected.includes("D {1,2,3}"), expected.join("\n"));
    }
  });

  // -------------------------------------------------------------------------------------------
  // Item 2: a client whose statement was prepared after the change must not see it as stale.

  const psycopgFresh = (table: string) => `
a = psycopg.connect(DSN)
b = psycopg.connect(DSN)
q = "select * from ${table} where id = %s"
a.execute("create table ${table} (id int primary key, v text)")
a.execute("insert into ${table} values (1, 'one')")
a.commit()
first = a.execute(q, (1,), prepare=True).fetchall()
a.commit()
a.execute("alter table ${table} add column c int default 7")
a.commit()
rows = b.execute(q, (1,), prepare=True).fetchall()
b.commit()
again = b.execute(q, (1,), prepare=True).fetchall()
b.commit()
print(json.dumps({"first": first, "rows": rows, "again": again}))
`;

  await step("psycopg prepare=True: a client that never prepared it gets no 0A000", async () => {
    const expected = {
      first: [[1, "one"]],
      rows: [[1, "one", 7]],
      again: [[1, "one", 7]],
    };
    assert.deepEqual(await runPsycopg(direct("psy_fresh"), psycopgFresh("fresh_direct")), expected);
    assert.deepEqual(await runPsycopg(via("psy_fresh"), psycopgFresh("fresh_proxy")), expected);
  }, !hasPsycopg);

  await step("npm:pg named query: a client that never prepared it gets no 0A000", async () => {
    await pgc.sql(
      "create table pg_fresh (id int primary key, v text); insert into pg_fresh values (1, 'one')",
      {
        database: "app",
      },
    );
    const run = (c: Awaited<ReturnType<typeof connectPg>>) =>
      c.query({ name: "fresh", text: "select * from pg_fresh where id = $1", values: [1] });
    const x = await connectPg(via("node_fresh"));
    try {
      assert.deepEqual((await run(x)).rows, [{ id: 1, v: "one" }]);
    } finally {
      await x.end();
    }
    await pgc.sql("alter table pg_fresh add column c int default 7", { database: "app" });
    const y = await connectPg(via("node_fresh"));
    try {
      assert.deepEqual((await run(y)).rows, [{ id: 1, v: "one", c: 7 }]);
      assert.deepEqual((await run(y)).rows, [{ id: 1, v: "one", c: 7 }]);
    } finally {
      await y.end();
    }
  });

  /**
   * postgres.js prepares again under a new name after `transformAssignedExpr` (and
   * `RevalidateCachedQuery`) errors: that new Parse must be planned against the current table.
   */
  async function assignAfterAlter(target: PgTarget, table: string): Promise<unknown> {
    const l = connectPostgresJs(target);
    try {
      await l.unsafe(`create table ${table} (name text)`);
      await l`insert into ${l(table)} (name) values (${"1"})`;
      await pgc.sql(`alter table ${table} alter column name type int using name::int`, {
        database: "app",
      });
      await l`insert into ${l(table)} (name) values (${"2"})`;
      return [...await l`select name from ${l(table)} order by name`];
    } finally {
      await l.end();
    }
  }

  await step("postgres.js: preparing again after 42804 gets a statement planned anew", async () => {
    const expected = [{ name: 1 }, { name: 2 }];
    assert.deepEqual(await assignAfterAlter(direct("pjs_assign"), "assign_direct"), expected);
    assert.deepEqual(await assignAfterAlter(via("pjs_assign"), "assign_proxy"), expected);
  });

  // -------------------------------------------------------------------------------------------
  // Item 3: DEALLOCATE, in every protocol, concerns only the client that sends it.

  const psycopgEvict = `
a = psycopg.connect(DSN, autocommit=True)
b = psycopg.connect(DSN, autocommit=True)
a.prepared_max = 2
out = []
for i in range(6):
    out.append(a.execute("select %s::int + " + str(i), (i,), prepare=True).fetchone()[0])
    out.append(b.execute("select %s::int * 2", (i,), prepare=True).fetchone()[0])
names = [r[0] for r in a.execute("select name from pg_prepared_statements order by name", prepare=False)]
print(json.dumps({"out": out, "names": len(names) > 0}))
`;

  await step("psycopg prepared_max: DEALLOCATE over the extended protocol", async () => {
    const r = await runPsycopg<{ out: number[] }>(via("psy_evict"), psycopgEvict);
    assert.deepEqual(r.out, [0, 0, 2, 2, 4, 4, 6, 6, 8, 8, 10, 10]);
  }, !hasPsycopg);

  const psycopgDeallocateAll = `
a = psycopg.connect(DSN, autocommit=True)
b = psycopg.connect(DSN, autocommit=True)
out = []
out.append(a.execute("select %s::int + 1", (1,), prepare=True).fetchone()[0])
out.append(b.execute("select %s::int + 2", (1,), prepare=True).fetchone()[0])
out.append(b.execute("select %s::int + 3", (1,), prepare=True).fetchone()[0])
# psycopg drops its statements after DROP (DEALLOCATE ALL, sent after the next statement).
a.execute("create table psy_all_t (x int)")
a.execute("drop table psy_all_t")
out.append(a.execute("select %s::int + 1", (2,), prepare=True).fetchone()[0])
out.append(b.execute("select %s::int + 2", (2,), prepare=True).fetchone()[0])
out.append(b.execute("select %s::int + 3", (2,), prepare=True).fetchone()[0])
out.append(a.execute("select %s::int + 1", (3,), prepare=True).fetchone()[0])
print(json.dumps(out))
`;

  await step("psycopg: DEALLOCATE ALL after DROP leaves other clients' statements", async () => {
    const r = await runPsycopg(via("psy_all"), psycopgDeallocateAll);
    assert.deepEqual(r, [2, 3, 4, 3, 4, 5, 4]);
  }, !hasPsycopg);

  /** The exchange of the DEALLOCATE step, run straight against PostgreSQL and through pgdog. */
  async function deallocateExchange(c: WireClient): Promise<string[]> {
    const out: BackendMessage[] = [];
    const rt = async (...msgs: Uint8Array[]) => {
      await c.send(...msgs);
      out.push(...await c.untilReady());
    };
    const run = (name: string) => rt(fe.bind("", name), fe.execute(""), fe.sync());
    await rt(
      fe.parse("a", "select 1 as one"),
      fe.parse("b", "select 2 as two"),
      fe.parse("c", "select 3 as three"),
      fe.parse("MiXed", "select 4 as four"),
      fe.sync(),
    );
    // Among other statements in a simple query.
    out.push(...await c.simple("select 1 as x; DEALLOCATE a; do $$ begin end $$; select 2 as y"));
    await run("a");
    await run("b");
    out.push(...await c.simple("DEALLOCATE nope; select 1"));
    await rt(fe.parse("f", "select 8 as eight"), fe.sync());
    out.push(...await c.simple("select 1; DEALLOCATE f; DEALLOCATE f; select 2"));
    await run("f");
    out.push(...await c.simple('select 5 as z; DEALLOCATE PREPARE "MiXed"'));
    await run("MiXed");
    // Extended protocol: unnamed statement, as psycopg sends it.
    await rt(
      fe.parse("", "DEALLOCATE b"),
      fe.bind("", ""),
      fe.describe("P", ""),
      fe.execute(""),
      fe.sync(),
    );
    await run("b");
    await rt(fe.parse("", "DEALLOCATE b"), fe.bind("", ""), fe.execute(""), fe.sync());
    await rt(fe.parse("", "deallocate prepare c"), fe.describe("S", ""), fe.sync());
    await rt(fe.bind("", ""), fe.execute(""), fe.sync());
    await run("c");
    // A named statement of DEALLOCATE ALL, run later.
    await rt(fe.parse("d", "select 6 as six"), fe.parse("all", "DEALLOCATE ALL"), fe.sync());
    await run("d");
    await rt(fe.bind("", "all"), fe.execute(""), fe.sync());
    await run("d");
    // Inside a transaction an unknown name aborts it.
    out.push(...await c.simple("begin"));
    await rt(fe.parse("", "DEALLOCATE nope"), fe.bind("", ""), fe.execute(""), fe.sync());
    out.push(...await c.simple("select 1"));
    out.push(...await c.simple("rollback"));
    // In a failed transaction DEALLOCATE fails too, and frees nothing.
    await rt(fe.parse("e", "select 7 as seven"), fe.sync());
    out.push(...await c.simple("begin"));
    out.push(...await c.simple("select 1/0"));
    out.push(...await c.simple("DEALLOCATE e"));
    out.push(...await c.simple("DEALLOCATE ALL"));
    await rt(fe.parse("", "DEALLOCATE e"), fe.bind("", ""), fe.execute(""), fe.sync());
    out.push(...await c.simple("rollback"));
    await run("e");
    return detail(out);
  }

  await step("DEALLOCATE among other statements and over the extended protocol", async () => {
    const expected = await (async () => {
      const c = await WireClient.connect(direct("wire_dealloc"));
      try {
        return await deallocateExchange(c);
      } finally {
        await c.close();
      }
    })();
    // Another client of the same server keeps its statement throughout.
    const other = await WireClient.connect(via("wire_dealloc"));
    const c = await WireClient.connect(via("wire_dealloc"));
    try {
      await other.send(fe.parse("mine", "select 42 as mine"), fe.sync());
      await other.untilReady();
      assert.deepEqual(await deallocateExchange(c), expected);
      await other.send(fe.bind("", "mine"), fe.execute(""), fe.sync());
      assert.deepEqual(detail(await other.untilReady()), ["2", "D 42", "C SELECT 1", "Z I"]);
    } finally {
      await c.close();
      await other.close();
    }
    assert.ok(
      expected.includes("C DEALLOCATE") && expected.includes("C DEALLOCATE ALL"),
      expected.join("\n"),
    );
  });

  await step("a DEALLOCATE that still runs on a server: pgdog prepares again", async () => {
    await pgc.sql(
      "create function dealloc_all() returns int language plpgsql as " +
        "$$ begin execute 'deallocate all'; return 1; end $$",
      { database: "app" },
    );
    const a = await WireClient.connect(via("wire_resync"));
    const b = await WireClient.connect(via("wire_resync"));
    const run = async () => {
      await a.send(fe.bind("", "s"), fe.execute(""), fe.sync());
      return detail(await a.untilReady());
    };
    try {
      await a.send(fe.parse("s", "select 7 as seven"), fe.sync());
      await a.untilReady();
      assert.deepEqual(await run(), ["2", "D 7", "C SELECT 1", "Z I"]);
      // A server-side name typed by a client, among other statements: it runs on the server.
      const [name] = await b.rows("select name from pg_prepared_statements");
      assert.match(String(name[0]), /^__pgdog_/);
      assert.deepEqual(
        summary(await b.simple(`select 1; deallocate "${name[0]}"`)),
        ["T", "D 1", "C SELECT 1", "C DEALLOCATE", "Z I"],
      );
      assert.deepEqual(await run(), ["2", "D 7", "C SELECT 1", "Z I"]);
      // Inside a function pgdog sees nothing: the first use after it fails, then pgdog knows.
      assert.deepEqual(await b.rows("select dealloc_all()"), [["1"]]);
      const after = await run();
      if (after[0] !== "2") {
        assert.match(after[0], /^E 26000 prepared statement "__pgdog_\d+" does not exist$/);
        assert.deepEqual(await run(), ["2", "D 7", "C SELECT 1", "Z I"]);
      }
      assert.deepEqual(await run(), ["2", "D 7", "C SELECT 1", "Z I"]);
    } finally {
      await a.close();
      await b.close();
    }
  });
});

/**
 * Each client keeps its own session in transaction mode, whichever server it lands on: startup
 * parameters, SET / RESET / RESET ALL / set_config / DISCARD ALL with PostgreSQL's transaction
 * semantics, custom settings, SET ROLE and statement_timeout; the ParameterStatus messages a
 * client receives are those PostgreSQL would send it, never those of pgdog's own syncs. Then
 * pinning (advisory locks, `SET pgdog.pin`) and the cleanup of a server its pinned client left,
 * LISTEN in transaction mode, and RESET ALL / DISCARD ALL in session mode.
 *
 * One cluster. The main proxy has users `mix` (pool_size 2: 20 clients with different settings
 * interleaved), `ps` (pool_size 1: two clients take turns on one server, so every switch between
 * them needs a sync) and `sessm` (session mode); a second proxy with a short checkout_timeout
 * serves `pin` (pool_size 1), so a client that should be blocked fails with 53300 quickly.
 */

import assert from "node:assert/strict";
import pg from "pg";
import postgres from "postgres";
import {
  codeOf,
  dumpLogsOnFailure,
  failure,
  type PgTarget,
  psql,
  row,
  sleep,
  startPostgres,
  startProxy,
  waitUntil,
} from "./harness/mod.ts";
import { type BackendMessage, dataRow, errorFields, fe, summary, WireClient } from "./wire.ts";

const PASSWORD = "session-test-pw";
const ROLES = ["mix", "ps", "sessm", "pin"];
const CLIENTS = 20;

const ZONES = [
  "Asia/Tokyo",
  "Europe/Paris",
  "America/New_York",
  "Australia/Sydney",
  "Africa/Cairo",
  "America/Denver",
  "Asia/Kolkata",
  "Europe/Moscow",
  "America/Sao_Paulo",
  "Pacific/Auckland",
  "Asia/Singapore",
  "Europe/London",
  "America/Chicago",
  "Asia/Dubai",
  "Europe/Berlin",
  "America/Los_Angeles",
  "Asia/Shanghai",
  "Africa/Johannesburg",
  "America/Anchorage",
  "Pacific/Honolulu",
];

// ---------------------------------------------------------------------------------------------
// Helpers

interface PgOptions {
  applicationName?: string;
  options?: string;
}

/** npm:pg with optional startup parameters (application_name, options=-c ...). */
async function openPg(target: PgTarget, opts: PgOptions = {}): Promise<pg.Client> {
  const client = new pg.Client({
    host: target.host,
    port: target.port,
    user: target.user,
    password: target.password,
    database: target.database,
    connectionTimeoutMillis: 20_000,
    application_name: opts.applicationName,
    options: opts.options,
    ssl: false,
  });
  client.on("error", () => {});
  await client.connect();
  return client;
}

/** ParameterStatus messages among `msgs`, as sorted "name=value". */
function paramStatus(msgs: BackendMessage[]): string[] {
  return msgs.filter((m) => m.type === "S").map((m) => {
    const [name, value] = new TextDecoder().decode(m.body).split("\0");
    return `${name}=${value}`;
  }).sort();
}

/** The first ErrorResponse among `msgs`, or undefined. */
function errorOf(msgs: BackendMessage[]): Record<string, string> | undefined {
  const e = msgs.find((m) => m.type === "E");
  return e ? errorFields(e.body) : undefined;
}

/** Closes everything opened through it at the end of the scope. */
class Closer implements AsyncDisposable {
  readonly #all: Array<() => Promise<unknown>> = [];

  add<T extends { end(): Promise<unknown> } | WireClient>(c: T): T {
    this.#all.push(() => c instanceof WireClient ? c.close() : c.end());
    return c;
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await Promise.all(this.#all.map((f) => f().catch(() => {})));
    this.#all.length = 0;
  }
}

// ---------------------------------------------------------------------------------------------

Deno.test("session state", async (t) => {
  await using cluster = await startPostgres({
    settings: { max_connections: 40 },
    roles: ROLES.map((name) => ({ name, password: PASSWORD, auth: "scram" as const })),
    databases: ["app"],
  });
  await cluster.sql(
    [
      "create role reader nologin",
      "grant reader to ps",
      "create table public.who (name text)",
      "insert into public.who values ('public')",
      "grant select on public.who to public",
      `do $$ begin for i in 0..${CLIENTS - 1} loop
         execute format('create schema s%s', i);
         execute format('create table s%s.who (name text)', i);
         execute format('insert into s%s.who values (%L)', i, 'c' || i);
         execute format('grant usage on schema s%s to public', i);
         execute format('grant select on s%s.who to public', i);
       end loop; end $$`,
      // Changes a setting where pgdog cannot see it (inside a function).
      "create function hidden_work_mem() returns text language sql " +
      "as $$ select set_config('work_mem', '7MB', false) $$",
      "create table pin_t (x int)",
      "grant all on pin_t to pin",
    ].join(";\n"),
    { database: "app" },
  );
  await using proxy = await startProxy({
    config: {
      general: { checkout_timeout: 20_000 },
      databases: [{ name: "app", host: cluster.host, port: cluster.port }],
    },
    users: {
      users: [
        { name: "mix", password: PASSWORD, database: "app", pool_size: 2 },
        { name: "ps", password: PASSWORD, database: "app", pool_size: 1 },
        {
          name: "sessm",
          password: PASSWORD,
          database: "app",
          pool_size: 2,
          pooler_mode: "session",
        },
      ],
    },
  });
  const via = (user: string): PgTarget =>
    proxy.target({ user, password: PASSWORD, database: "app" });
  const direct = (user: string): PgTarget => ({
    host: cluster.host,
    port: cluster.port,
    user,
    password: PASSWORD,
    database: "app",
  });
  const superuser = { ...direct("postgres"), password: undefined };
  const admin = await openPg(superuser);
  const step = (name: string, fn: () => Promise<void>) =>
    t.step(name, () => dumpLogsOnFailure(proxy, fn));

  try {
    await step(
      "SET, RESET, RESET ALL, SET LOCAL, set_config, DISCARD ALL: PostgreSQL's rules, per client",
      () => settingsSemantics(via("ps")),
    );

    await step(
      "ParameterStatus: the same as from PostgreSQL for a client's own changes, none for syncs",
      () => parameterStatusChecks(via("ps"), direct("ps")),
    );

    await step(
      "20 clients with their own search_path, TimeZone and application_name over pool_size 2",
      () => twentyClients(via("mix"), admin),
    );

    await step(
      "a request right behind RESET, RESET ALL or SET ... TO DEFAULT sees the startup value",
      async () => {
        await resetThenQuery(via("ps"), "transaction mode");
        await resetThenQuery(via("sessm"), "session mode");
      },
    );

    await step(
      "a SET sent right after another SET's answer is not lost when the server moves on",
      () => setRightBehindSet(via("ps"), superuser),
    );

    await step("LISTEN in transaction mode: 0A000, the connection stays usable", async () => {
      await using closer = new Closer();
      const c = closer.add(await openPg(via("ps")));
      const err = await failure(c.query("listen some_channel"));
      assert.ok(err, "LISTEN succeeded in transaction mode");
      assert.equal(codeOf(err), "0A000", String(err));
      assert.match(err.message, /LISTEN is not supported in transaction pooling mode/);
      assert.equal((await row(c, "select 41 + 1 as v")).v, 42);
      // Over the extended protocol too (a named statement), and NOTIFY is fine.
      const err2 = await failure(c.query({ name: "lst", text: "LISTEN other_channel" }));
      assert.equal(codeOf(err2), "0A000", String(err2));
      await c.query("notify some_channel, 'hello'");
      assert.equal((await row(c, "select 43 as v")).v, 43);
      // Inside a transaction the error aborts it, as any error does in PostgreSQL.
      await c.query("begin");
      const err3 = await failure(c.query("listen some_channel"));
      assert.equal(codeOf(err3), "0A000", String(err3));
      const next = await failure(c.query("select 1"));
      assert.equal(codeOf(next), "25P02", `after LISTEN failed in a transaction: ${next}`);
      await c.query("rollback");
      assert.equal((await row(c, "select 44 as v")).v, 44);
      // psql reports it too.
      const r = await psql(via("ps"), "LISTEN some_channel");
      assert.notEqual(r.code, 0);
      assert.match(r.stderr, /LISTEN is not supported in transaction pooling mode/);
    });

    await step(
      "session mode: SET persists; RESET ALL and DISCARD ALL return to the startup parameters",
      () => sessionMode(via("sessm")),
    );

    // Pinning needs a short checkout_timeout: a client that should be blocked fails fast.
    await using pinProxy = await startProxy({
      config: {
        general: { checkout_timeout: 1000 },
        databases: [{ name: "app", host: cluster.host, port: cluster.port }],
      },
      users: { users: [{ name: "pin", password: PASSWORD, database: "app", pool_size: 1 }] },
    });
    await t.step(
      "pinning: advisory locks and SET pgdog.pin keep the server; a pinned client leaves it clean",
      (t) =>
        dumpLogsOnFailure(
          pinProxy,
          () =>
            pinning(
              t,
              pinProxy.target({ user: "pin", password: PASSWORD, database: "app" }),
              admin,
              superuser,
            ),
        ),
    );
  } finally {
    await admin.end();
  }
});

// ---------------------------------------------------------------------------------------------
// SET and friends, with a second client switching the one server back and forth

const PROBE =
  "select current_setting('TimeZone') as tz, current_setting('application_name') as app, " +
  "current_setting('search_path') as sp, current_setting('statement_timeout') as st, " +
  "current_setting('DateStyle') as ds, current_setting('myapp.tenant', true) as tenant, " +
  "current_user::text as cu, (select name from who) as who, pg_backend_pid() as pid";

interface Probe {
  tz: string;
  app: string;
  sp: string;
  st: string;
  ds: string;
  tenant: string | null;
  cu: string;
  who: string;
}

async function probe(c: pg.Client): Promise<Probe & { pid: number }> {
  return (await c.query(PROBE)).rows[0];
}

async function settingsSemantics(target: PgTarget): Promise<void> {
  await using closer = new Closer();
  const a = closer.add(
    await openPg(target, {
      applicationName: "A0",
      options:
        "-c search_path=s1 -c statement_timeout=12345 -c TimeZone=Asia/Tokyo -c DateStyle=German -c myapp.tenant=t0",
    }),
  );
  const b = closer.add(await openPg(target, { applicationName: "B0" }));
  const startA: Probe = {
    tz: "Asia/Tokyo",
    app: "A0",
    sp: "s1",
    st: "12345ms",
    ds: "German, DMY",
    tenant: "t0",
    cu: "ps",
    who: "c1",
  };
  const startB = {
    tz: "UTC",
    app: "B0",
    sp: '"$user", public',
    st: "0",
    ds: "ISO, MDY",
    cu: "ps",
    who: "public",
  };
  const pids = new Set<number>();
  /** B uses the server, then A's settings must be `expected` (over its startup values). */
  const check = async (what: string, expected: Partial<Probe>) => {
    const pb = await probe(b);
    const { pid: pidB, tenant: tenantB, ...restB } = pb;
    assert.deepEqual(restB, startB, `B after "${what}"`);
    assert.ok(tenantB === null || tenantB === "", `B sees A's myapp.tenant (${tenantB})`);
    const { pid: pidA, ...restA } = await probe(a);
    assert.deepEqual(restA, { ...startA, ...expected }, `A after "${what}"`);
    pids.add(pidA).add(pidB);
  };
  const show = async (c: pg.Client, name: string) =>
    (await c.query(`select current_setting('${name}', true) as v`)).rows[0].v;

  await check("login", {});
  await a.query("set timezone = 'Europe/Paris'");
  await check("SET", { tz: "Europe/Paris" });

  await a.query("begin");
  await a.query("set timezone = 'America/Denver'");
  assert.equal(await show(a, "TimeZone"), "America/Denver");
  await a.query("commit");
  await check("SET in a committed transaction", { tz: "America/Denver" });

  await a.query("begin");
  await a.query("set timezone = 'Africa/Cairo'");
  await a.query("set application_name = 'rolled-back'");
  await a.query("rollback");
  await check("SET in a rolled back transaction", { tz: "America/Denver" });

  await a.query("begin");
  await a.query("set timezone = 'Africa/Cairo'");
  assert.equal(codeOf(await failure(a.query("select 1/0"))), "22012");
  await a.query("rollback");
  await check("SET in a failed transaction", { tz: "America/Denver" });

  await a.query("begin");
  await a.query("savepoint sp1");
  await a.query("set timezone = 'Europe/London'");
  await a.query("rollback to savepoint sp1");
  await a.query("commit");
  await check("SET undone by ROLLBACK TO SAVEPOINT", { tz: "America/Denver" });
  await a.query("begin");
  await a.query("savepoint sp1");
  await a.query("set timezone = 'Europe/London'");
  await a.query("release savepoint sp1");
  await a.query("commit");
  await check("SET kept by RELEASE SAVEPOINT", { tz: "Europe/London" });

  await a.query("begin");
  await a.query("set local timezone = 'Australia/Sydney'");
  await a.query("set local application_name = 'local-app'");
  assert.equal(await show(a, "TimeZone"), "Australia/Sydney");
  assert.equal(await show(a, "application_name"), "local-app");
  await a.query("commit");
  await check("SET LOCAL", { tz: "Europe/London" });
  // SET LOCAL outside a transaction block does nothing beyond its statement (WARNING in PG).
  await a.query("set local timezone = 'Australia/Sydney'");
  await check("SET LOCAL outside a transaction", { tz: "Europe/London" });

  await a.query("select set_config('TimeZone', 'Asia/Kolkata', false)");
  await check("set_config(..., false)", { tz: "Asia/Kolkata" });
  await a.query("begin");
  await a.query("select set_config('TimeZone', 'Europe/Moscow', true)");
  assert.equal(await show(a, "TimeZone"), "Europe/Moscow");
  await a.query("commit");
  await check("set_config(..., true) in a transaction", { tz: "Asia/Kolkata" });
  await a.query("select set_config('TimeZone', 'Europe/Moscow', true)");
  await check("set_config(..., true) alone", { tz: "Asia/Kolkata" });
  // Over the extended protocol: unnamed and named statements.
  await a.query({
    text: "select set_config('application_name', $1, false)",
    values: ["A-ext"],
  });
  await check("set_config over the extended protocol", { tz: "Asia/Kolkata", app: "A-ext" });
  await a.query({
    name: "set_tz",
    text: "select set_config('timezone', $1, false)",
    values: ["America/Chicago"],
  });
  await check("set_config in a named prepared statement", { tz: "America/Chicago", app: "A-ext" });

  await a.query("reset timezone");
  await check("RESET timezone (startup value)", { app: "A-ext" });
  await a.query("reset application_name");
  await check("RESET application_name (startup value)", {});

  await a.query(
    "set application_name = 'A1'; set search_path = s2; set statement_timeout = '7s'; " +
      "set datestyle = 'ISO, YMD'; set timezone = 'Europe/Berlin'",
  );
  const changed: Partial<Probe> = {
    app: "A1",
    sp: "s2",
    who: "c2",
    st: "7s",
    ds: "ISO, YMD",
    tz: "Europe/Berlin",
  };
  await check("several SETs in one query", changed);
  await a.query("reset search_path");
  await check("RESET search_path", { ...changed, sp: "s1", who: "c1" });
  await a.query("reset all");
  await check("RESET ALL", {});

  // One request: a second one sent right behind it is the business of setRightBehindSet.
  await a.query(
    "set application_name = 'A2'; set timezone = 'Europe/Berlin'; set search_path to s3, public",
  );
  await check("SET again", { app: "A2", tz: "Europe/Berlin", sp: "s3, public", who: "c3" });
  await a.query("discard all");
  await check("DISCARD ALL", {});

  // Custom settings.
  await a.query("set myapp.tenant = 'x'");
  await check("SET myapp.tenant", { tenant: "x" });
  await a.query("begin");
  await a.query("set myapp.tenant = 'y'");
  await a.query("rollback");
  await check("SET myapp.tenant rolled back", { tenant: "x" });
  await a.query("select set_config('myapp.other', 'o1', false)");
  await check("set_config('myapp.other')", { tenant: "x" });
  assert.equal(await show(a, "myapp.other"), "o1");
  assert.ok([null, ""].includes(await show(b, "myapp.other")), "B sees A's myapp.other");
  await a.query("reset myapp.tenant");
  await check("RESET myapp.tenant (startup value)", {});
  assert.equal(await show(a, "myapp.other"), "o1");

  // SET ROLE.
  await a.query("set role reader");
  await check("SET ROLE", { cu: "reader" });
  await a.query("begin");
  await a.query("reset role");
  assert.equal((await row(a, "select current_user::text as u")).u, "ps");
  await a.query("rollback");
  await check("RESET ROLE rolled back", { cu: "reader" });
  await a.query("reset role");
  await check("RESET ROLE", {});
  await a.query("begin");
  await a.query("set role reader");
  await a.query("commit");
  await check("SET ROLE in a committed transaction", { cu: "reader" });
  await a.query("discard all");
  await check("DISCARD ALL after SET ROLE", {});

  // statement_timeout applies to the client that set it, and only to it.
  await a.query("set statement_timeout = '300ms'");
  const started = Date.now();
  const slowB = await b.query("select pg_sleep(0.6) as s");
  assert.equal(slowB.rowCount, 1);
  assert.ok(Date.now() - started >= 550, "B's pg_sleep(0.6) did not sleep");
  const err = await failure(a.query("select pg_sleep(0.6)"));
  assert.equal(codeOf(err), "57014", `A's statement_timeout did not apply: ${err}`);
  assert.match(err!.message, /statement timeout/);
  assert.equal((await b.query("select pg_sleep(0.6) as s")).rowCount, 1);
  await check("SET statement_timeout", { st: "300ms" });
  await a.query("reset statement_timeout");
  await check("RESET statement_timeout", {});
  assert.equal((await a.query("select pg_sleep(0.4) as s")).rowCount, 1);

  assert.equal(pids.size, 1, `pool_size 1 used ${pids.size} server connections`);
}

// ---------------------------------------------------------------------------------------------
// ParameterStatus

async function parameterStatusChecks(proxied: PgTarget, straight: PgTarget): Promise<void> {
  const startup = {
    application_name: "A0",
    TimeZone: "Asia/Tokyo",
    DateStyle: "SQL, DMY",
  };
  const script = [
    "select 1",
    "set application_name = 'A1'",
    "set application_name = 'A1'",
    "begin",
    "set application_name = 'A2'",
    "rollback",
    "set timezone = 'Europe/Paris'",
    "begin",
    "set local timezone = 'UTC'",
    "commit",
    "select set_config('application_name', 'A3', false)",
    "set datestyle = 'ISO, YMD'",
    "reset application_name",
    "set timezone = 'Europe/Berlin'",
    "reset all",
    "set application_name = 'A4'",
    "set timezone = 'Asia/Dubai'",
    "discard all",
    "select 2",
  ];
  /** Per statement: the ParameterStatus messages A got, and its settings afterwards. */
  const run = async (target: PgTarget, interleave: WireClient | null) => {
    await using closer = new Closer();
    const a = closer.add(await WireClient.connect({ ...target, params: startup }));
    const out: string[] = [];
    let inTransaction = false;
    for (const sql of script) {
      if (interleave && !inTransaction) {
        // Another client with other settings uses the server first (pool_size 1).
        const msgs = await interleave.simple("select current_setting('application_name')");
        assert.deepEqual(paramStatus(msgs), [], "B received ParameterStatus it did not cause");
        assert.deepEqual(
          msgs.filter((m) => m.type === "D").map((m) => dataRow(m.body)),
          [["B0"]],
          `B's own query, before A's "${sql}": ${summary(msgs).join(", ")}`,
        );
      }
      const msgs = await a.simple(sql);
      if (sql === "begin") inTransaction = true;
      if (sql === "commit" || sql === "rollback") inTransaction = false;
      assert.equal(errorOf(msgs), undefined, `${sql}: ${JSON.stringify(errorOf(msgs))}`);
      const values = await a.rows(
        "select current_setting('application_name'), current_setting('TimeZone'), " +
          "current_setting('DateStyle')",
      );
      out.push(`${sql} -> [${paramStatus(msgs).join(", ")}] ${values[0].join("|")}`);
    }
    return { login: [...a.parameters].map(([k, v]) => `${k}=${v}`).sort(), out };
  };
  const reference = await run(straight, null);
  await using closer = new Closer();
  const b = closer.add(
    await WireClient.connect({
      ...proxied,
      params: { application_name: "B0", TimeZone: "America/Denver", DateStyle: "Postgres, MDY" },
    }),
  );
  const got = await run(proxied, b);
  const reported = (x: string[]) =>
    x.filter((kv) => /^(application_name|TimeZone|DateStyle)=/.test(kv));
  assert.deepEqual(reported(got.login), reported(reference.login));
  assert.deepEqual(got.out, reference.out);
}

// ---------------------------------------------------------------------------------------------
// The key test: 20 clients, pool_size 2

/** Runs a query and returns its rows as text arrays. */
type Runner = (sql: string, params?: number[]) => Promise<(string | null)[][]>;

interface Worker {
  index: number;
  kind: string;
  run: Runner;
  /** ParameterStatus messages the last query brought (raw protocol clients only). */
  lastStatus: () => string[];
}

async function twentyClients(target: PgTarget, admin: pg.Client): Promise<void> {
  await using closer = new Closer();
  const expected: Array<{ who: string; tz: string; app: string }> = [];
  const workers: Worker[] = [];
  for (let i = 0; i < CLIENTS; i++) {
    const own = { who: `c${i}`, tz: ZONES[i], app: `app-${i}` };
    expected.push(own);
    // Half get their settings at startup, half with SET (or set_config) after connecting.
    const atStartup = i % 2 === 0;
    const kind = ["wire", "pg", "postgres.js", "pg-named"][Math.floor(i / 2) % 4];
    let worker: Worker;
    if (kind === "wire") {
      const w = closer.add(
        await WireClient.connect({
          ...target,
          params: atStartup
            ? { application_name: own.app, TimeZone: own.tz, options: `-c search_path=s${i}` }
            : {},
        }),
      );
      let status: string[] = [];
      worker = {
        index: i,
        kind,
        run: async (text, params = []) => {
          const sql = text.replace(/\$(\d+)/g, (_, n) => String(params[Number(n) - 1]));
          const msgs = await w.simple(sql);
          status = paramStatus(msgs);
          const e = errorOf(msgs);
          if (e) throw new Error(`${sql}: ${e.C} ${e.M}`);
          return msgs.filter((m) => m.type === "D").map((m) => dataRow(m.body));
        },
        lastStatus: () => status,
      };
    } else if (kind === "postgres.js") {
      const sql = postgres({
        host: target.host,
        port: target.port,
        user: target.user,
        password: target.password,
        database: target.database,
        prepare: true,
        max: 1,
        ssl: false,
        connect_timeout: 20,
        onnotice: () => {},
        connection: atStartup
          ? { application_name: own.app, TimeZone: own.tz, search_path: `s${i}` }
          : {},
      });
      closer.add({ end: () => sql.end({ timeout: 5 }) });
      worker = {
        index: i,
        kind,
        run: async (text, params = []) => {
          const rows = await sql.unsafe(text, params, { prepare: true }).values();
          return rows.map((r: unknown[]) => r.map((v) => v === null ? null : String(v)));
        },
        lastStatus: () => [],
      };
    } else {
      const c = closer.add(
        await openPg(
          target,
          atStartup
            ? { applicationName: own.app, options: `-c search_path=s${i} -c TimeZone=${own.tz}` }
            : {},
        ),
      );
      const named = kind === "pg-named";
      let n = 0;
      worker = {
        index: i,
        kind,
        run: async (text, params = []) => {
          const q = named && params.length > 0
            ? { name: `q${text.length}_${n++ % 3}`, text, values: params, rowMode: "array" }
            : { text, values: params.length > 0 ? params : undefined, rowMode: "array" };
          const r = await c.query(q as pg.QueryConfig);
          return (r.rows as unknown[][]).map((r) => r.map((v) => v === null ? null : String(v)));
        },
        lastStatus: () => [],
      };
    }
    if (!atStartup) {
      if (i % 4 === 1) {
        await worker.run(`set search_path = s${i}`);
        await worker.run(`set timezone = '${own.tz}'`);
        await worker.run(`set application_name = '${own.app}'`);
      } else {
        await worker.run(
          `select set_config('search_path', 's${i}', false), set_config('TimeZone', '${own.tz}', false), ` +
            `set_config('application_name', '${own.app}', false)`,
        );
      }
    }
    workers.push(worker);
  }

  const CHECK = "select name, current_setting('TimeZone'), current_setting('application_name'), " +
    "pg_backend_pid()::text from who";
  const CHECK_P =
    "select name, current_setting('TimeZone'), current_setting('application_name'), " +
    "pg_backend_pid()::text, $1::int::text from who";
  const ITERATIONS = 110;
  const mismatches: string[] = [];
  const pids = new Set<string>();
  let transactions = 0;
  let stop = false;
  const fail = (w: Worker, what: string, got: unknown, want: unknown) => {
    if (mismatches.length < 20) {
      mismatches.push(
        `client ${w.index} (${w.kind}) ${what}: got ${JSON.stringify(got)}, want ${
          JSON.stringify(want)
        }`,
      );
    }
    if (mismatches.length >= 20) stop = true;
  };
  const verify = (w: Worker, rows: (string | null)[][], want: typeof expected[0], what: string) => {
    if (rows.length !== 1) return fail(w, what, rows, "one row");
    const [who, tz, app, pid] = rows[0];
    pids.add(pid!);
    const got = { who, tz, app };
    if (who !== want.who || tz !== want.tz || app !== want.app) fail(w, what, got, want);
  };
  const noStatus = (w: Worker, what: string) => {
    const s = w.lastStatus();
    if (s.length > 0) fail(w, `${what}: ParameterStatus it did not cause`, s, []);
  };

  const loop = async (w: Worker) => {
    const own = expected[w.index];
    let rnd = w.index * 7919 + 17;
    const next = () => (rnd = (rnd * 1103515245 + 12345) % 2147483648) % 100;
    for (let it = 0; it < ITERATIONS && !stop; it++) {
      const r = next();
      if (r < 35) {
        verify(w, await w.run(CHECK), own, "single statement");
        noStatus(w, "single statement");
        transactions++;
      } else if (r < 45) {
        verify(w, await w.run(CHECK_P, [it]), own, "single statement with a parameter");
        transactions++;
      } else if (r < 55) {
        const tz = await w.run("show timezone");
        if (tz[0]?.[0] !== own.tz) fail(w, "show timezone", tz[0]?.[0], own.tz);
        noStatus(w, "show timezone");
        transactions++;
      } else if (r < 75) {
        await w.run("begin");
        verify(w, await w.run(CHECK), own, "in BEGIN...COMMIT");
        verify(w, await w.run(CHECK_P, [it]), own, "in BEGIN...COMMIT, with a parameter");
        noStatus(w, "in BEGIN...COMMIT");
        await w.run("commit");
        transactions++;
      } else if (r < 85) {
        await w.run("begin");
        await w.run("set local timezone = 'UTC'");
        await w.run("set local search_path = public");
        await w.run(`set local application_name = 'local-${w.index}'`);
        verify(
          w,
          await w.run(CHECK),
          { who: "public", tz: "UTC", app: `local-${w.index}` },
          "after SET LOCAL",
        );
        await w.run("commit");
        verify(w, await w.run(CHECK), own, "after a transaction with SET LOCAL");
        transactions += 2;
      } else if (r < 92) {
        await w.run("begin");
        await w.run("set timezone = 'UTC'");
        await w.run("set search_path = public");
        await w.run("set application_name = 'rolled-back'");
        await w.run("rollback");
        verify(w, await w.run(CHECK), own, "after a rolled back SET");
        transactions += 2;
      } else {
        // A new application_name for the rest of the run, SET in three different ways.
        const app = `app-${w.index}-${it}`;
        if (r < 95) await w.run(`set application_name = '${app}'`);
        else if (r < 98) await w.run(`select set_config('application_name', '${app}', false)`);
        else {
          await w.run("begin");
          await w.run(`set application_name = '${app}'`);
          await w.run("commit");
        }
        if (w.kind === "wire") {
          const s = w.lastStatus();
          if (r < 98 && !s.includes(`application_name=${app}`)) {
            fail(w, "ParameterStatus for its own SET application_name", s, app);
          }
        }
        own.app = app;
        verify(w, await w.run(CHECK), own, "after changing application_name");
        transactions += 2;
      }
    }
  };
  const started = Date.now();
  await Promise.all(workers.map(loop));
  const elapsed = Date.now() - started;
  assert.deepEqual(mismatches, []);
  assert.ok(transactions >= 2000, `only ${transactions} transactions`);
  assert.equal(pids.size, 2, `${pids.size} server connections for pool_size 2: ${[...pids]}`);
  const servers = await admin.query(
    "select count(*)::int as n from pg_stat_activity where usename = 'mix' and backend_type = 'client backend'",
  );
  assert.ok(servers.rows[0].n <= 2, `${servers.rows[0].n} server connections for pool_size 2`);
  console.log(
    `20 clients: ${transactions} transactions in ${elapsed} ms over ${pids.size} servers`,
  );
}

// ---------------------------------------------------------------------------------------------
// Session mode

async function sessionMode(target: PgTarget): Promise<void> {
  await using closer = new Closer();
  const s = closer.add(
    await openPg(target, {
      applicationName: "S0",
      options: "-c TimeZone=Asia/Tokyo -c search_path=s3 -c statement_timeout=4321",
    }),
  );
  const other = closer.add(await openPg(target));
  const start = { tz: "Asia/Tokyo", app: "S0", sp: "s3", st: "4321ms", who: "c3" };
  const check = async (what: string, want: Partial<typeof start>) => {
    const { tz, app, sp, st, who } = await probe(s);
    assert.deepEqual({ tz, app, sp, st, who }, { ...start, ...want }, what);
    const o = await probe(other);
    assert.deepEqual([o.tz, o.app, o.who], ["UTC", "", "public"], `the other client, ${what}`);
  };
  await check("login", {});
  const changed = { tz: "Europe/Paris", app: "S1", sp: "s4", st: "9s", who: "c4" };
  await s.query(
    "set timezone = 'Europe/Paris'; set application_name = 'S1'; set search_path = s4; " +
      "set statement_timeout = '9s'",
  );
  await check("SET", changed);
  await s.query("begin");
  await s.query("select 1");
  await s.query("commit");
  await check("SET, after a transaction", changed);
  await s.query("begin");
  await s.query("set timezone = 'Africa/Cairo'");
  await s.query("rollback");
  await check("SET rolled back", changed);
  await s.query("reset timezone");
  await check("RESET timezone", { ...changed, tz: "Asia/Tokyo" });
  await s.query("reset all");
  await check("RESET ALL", {});
  await s.query("set timezone = 'Europe/Paris'; set application_name = 'S2'; set search_path = s4");
  await check("SET again", { tz: "Europe/Paris", app: "S2", sp: "s4", who: "c4" });
  await s.query("discard all");
  await check("DISCARD ALL", {});
}

// ---------------------------------------------------------------------------------------------
// Pinning (pool_size 1, checkout_timeout 1000)

/** Two clients on the pin pool: A pins (or not), B shows whether the one server is free. */
class PinPair implements AsyncDisposable {
  readonly closer = new Closer();
  a!: pg.Client;
  b!: pg.Client;

  constructor(
    readonly target: PgTarget,
    readonly admin: pg.Client,
    readonly superuser: PgTarget,
  ) {}

  async open(): Promise<this> {
    this.a = this.closer.add(await openPg(this.target));
    this.b = this.closer.add(await openPg(this.target));
    return this;
  }

  async pidOf(c: pg.Client): Promise<number> {
    return (await row(c, "select pg_backend_pid() as p")).p as number;
  }

  /** B cannot get the one server: 53300 after checkout_timeout. */
  async blocked(why: string): Promise<void> {
    const started = Date.now();
    const err = await failure(this.b.query("select 1"));
    const waited = Date.now() - started;
    assert.ok(err, `B got the server although ${why}`);
    assert.equal(codeOf(err), "53300", `${why}: ${err}`);
    assert.ok(waited >= 900 && waited < 5000, `B failed after ${waited} ms`);
  }

  /** B gets the server. */
  async free(why: string): Promise<void> {
    const err = await failure(this.b.query("select 1"));
    assert.equal(err, null, `B could not get the server ${why}: ${err}`);
  }

  /** Advisory locks held by the pool's server connections, straight from pg_locks. */
  async advisoryLocks(): Promise<number> {
    return (await this.admin.query(
      "select count(*)::int as n from pg_locks l join pg_stat_activity a using (pid) " +
        "where l.locktype = 'advisory' and a.usename = 'pin'",
    )).rows[0].n;
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.closer[Symbol.asyncDispose]();
  }
}

async function pinning(
  t: Deno.TestContext,
  target: PgTarget,
  admin: pg.Client,
  superuser: PgTarget,
): Promise<void> {
  const step = (name: string, fn: (p: PinPair) => Promise<void>) =>
    t.step(name, async () => {
      await using pair = await new PinPair(target, admin, superuser).open();
      await pair.free("before the step");
      await fn(pair);
      // Whatever happened, nothing is left behind once the clients are gone.
      await pair.closer[Symbol.asyncDispose]();
      assert.ok(
        await waitUntil(async () => (await pair.advisoryLocks()) === 0, 5000),
        "an advisory lock outlived its client",
      );
    });

  await step(
    "pg_advisory_lock pins until pg_advisory_unlock; then the server is cleaned",
    async (p) => {
      const { a, b } = p;
      const pid = await p.pidOf(a);
      assert.equal((await row(a, "select pg_advisory_lock(1)::text as r")).r, "");
      await a.query("create temp table pinned_tmp (x int)");
      await a.query("insert into pinned_tmp values (1)");
      for (let i = 0; i < 3; i++) {
        await a.query("begin");
        await a.query("insert into pinned_tmp values (2)");
        await a.query("commit");
        assert.equal(await p.pidOf(a), pid);
      }
      assert.equal((await row(a, "select count(*)::int as n from pinned_tmp")).n, 4);
      await p.blocked("A holds an advisory lock");
      assert.equal(await p.advisoryLocks(), 1);
      assert.equal((await row(a, "select pg_advisory_unlock(1) as r")).r, true);
      // The temporary table pins on its own.
      await p.blocked("A still has a temporary table");
      assert.equal(await p.advisoryLocks(), 0);
      await a.query("drop table pinned_tmp");
      await a.query("create temp table pinned_tmp (x int) on commit drop"); // pins nothing
      await p.free("after pg_advisory_unlock and dropping the temporary table");
      assert.equal(
        (await row(b, "select to_regclass('pg_temp.pinned_tmp')::text as r")).r,
        null,
        "the temp table A created while pinned is visible to B",
      );
    },
  );

  await step("several locks: one unlock is not enough, pg_advisory_unlock_all is", async (p) => {
    await p.a.query("select pg_advisory_lock(1), pg_advisory_lock_shared(2)");
    await p.a.query("select pg_advisory_unlock(1)");
    await p.blocked("A still holds a shared advisory lock");
    await p.a.query("select pg_advisory_unlock_all()");
    await p.free("after pg_advisory_unlock_all");
  });

  await step("pg_try_advisory_lock pins only when it gets the lock", async (p) => {
    await admin.query("select pg_advisory_lock(5)");
    try {
      assert.equal((await row(p.a, "select pg_try_advisory_lock(5) as r")).r, false);
      await p.free("after a failed pg_try_advisory_lock");
    } finally {
      await admin.query("select pg_advisory_unlock(5)");
    }
    assert.equal((await row(p.a, "select pg_try_advisory_lock(6) as r")).r, true);
    await p.blocked("A got pg_try_advisory_lock(6)");
    await p.a.query("select pg_advisory_unlock(6)");
    await p.free("after unlocking 6");
  });

  await step("pg_advisory_xact_lock does not pin; a session lock survives ROLLBACK", async (p) => {
    const { a } = p;
    await a.query("begin");
    await a.query("select pg_advisory_xact_lock(7)");
    await a.query("commit");
    await p.free("after a transaction with pg_advisory_xact_lock");
    await a.query("select pg_advisory_xact_lock(7)");
    await p.free("after pg_advisory_xact_lock alone");
    await a.query("begin");
    await a.query("select pg_advisory_lock(8)");
    await a.query("rollback");
    await p.blocked("a session-level lock taken in a rolled back transaction is still held");
    assert.equal((await row(a, "select pg_advisory_unlock(8) as r")).r, true);
    await p.free("after unlocking 8");
  });

  await step("a lock taken right after a SET pins all the same", async (p) => {
    for (let i = 0; i < 3; i++) {
      // Sent as soon as the SET's answer is in, while pgdog may still be reading the SET back.
      await p.a.query(`set application_name = 'locker-${i}'`);
      await p.a.query(`select pg_advisory_lock(${10 + i})`);
      await p.blocked(`A took pg_advisory_lock(${10 + i}) right after a SET (round ${i})`);
      await p.a.query(`select pg_advisory_unlock(${10 + i})`);
      await p.free(`after unlocking ${10 + i}`);
    }
  });

  await step("a lock taken while pgdog reads back a SET pins all the same", async (p) => {
    const stall = await stallReadBacks(p.superuser);
    let lock: Promise<unknown>;
    try {
      await p.a.query("set application_name = 'stalled'");
      lock = p.a.query("select pg_advisory_lock(20)");
      await sleep(200);
    } finally {
      await stall.release();
    }
    await lock;
    await p.blocked("A took pg_advisory_lock(20) while pgdog read back its SET");
    assert.equal((await row(p.a, "select pg_advisory_unlock(20) as r")).r, true);
    await p.free("after unlocking 20");
  });

  await step("SET pgdog.pin TO true / false", async (p) => {
    const { a, b } = p;
    await a.query("set pgdog.pin to true");
    const pid = await p.pidOf(a);
    await a.query("create temp table manual_tmp (x int)");
    await a.query("insert into manual_tmp values (1)");
    await p.blocked("A set pgdog.pin to true");
    assert.equal((await row(a, "select count(*)::int as n from manual_tmp")).n, 1);
    assert.equal(await p.pidOf(a), pid);
    await a.query("set pgdog.pin to false");
    await p.blocked("A still has a temporary table");
    await a.query("discard temp");
    await p.free("after SET pgdog.pin TO false and DISCARD TEMP");
    assert.equal(
      (await row(b, "select to_regclass('pg_temp.manual_tmp')::text as r")).r,
      null,
      "the temp table A created while pinned by hand is visible to B",
    );
  });

  await step("a client that disconnects while pinned leaves a clean server", async (p) => {
    const { a } = p;
    await a.query("select pg_advisory_lock(42)");
    await a.query("select hidden_work_mem()"); // a setting pgdog cannot see
    assert.equal((await row(a, "show work_mem")).work_mem, "7MB");
    await a.query("create temp table gone_tmp (x int)");
    await a.query("insert into pin_t values (42)");
    const pidA = await p.pidOf(a);
    await p.blocked("A holds an advisory lock");
    await a.end();
    assert.ok(
      await waitUntil(async () => (await p.advisoryLocks()) === 0, 5000),
      "the advisory lock of the client that left is still held",
    );
    const r = await row(
      p.b,
      "select pg_backend_pid() as pid, current_setting('work_mem') as wm, " +
        "to_regclass('pg_temp.gone_tmp')::text as tmp, (select count(*)::int from pin_t) as n",
    );
    assert.equal(r.pid, pidA, "the next client got another server (the pinned one was closed?)");
    assert.notEqual(r.wm, "7MB", "the setting of the client that left is still there");
    assert.equal(r.tmp, null, "the temp table of the client that left is still there");
    assert.equal(r.n, 1, "the committed insert of the client that left is lost");
    const busy = await admin.query(
      "select count(*)::int as n from pg_stat_activity where usename = 'pin' and state <> 'idle'",
    );
    assert.equal(busy.rows[0].n, 0);
  });
}

// ---------------------------------------------------------------------------------------------
// A request that follows a RESET at once (pipelined, or sent as soon as the RESET's answer is in)

async function resetThenQuery(target: PgTarget, mode: string): Promise<void> {
  await using closer = new Closer();
  const a = closer.add(
    await WireClient.connect({
      ...target,
      params: { TimeZone: "Asia/Tokyo", application_name: "A0" },
    }),
  );
  const resets = ["reset timezone", "reset all", "set timezone to default", "discard all"];
  for (const reset of resets) {
    // Sent one after the other, as a driver does.
    await a.rows("set timezone = 'Europe/Paris'");
    await a.rows(reset);
    assert.deepEqual(
      await a.rows("show timezone"),
      [["Asia/Tokyo"]],
      `${mode}: SHOW right after "${reset}"`,
    );
    // Pipelined in one write.
    await a.rows("set timezone = 'Europe/Paris'");
    await a.send(fe.query(reset), fe.query("show timezone"));
    const msgs = await a.untilReady(2);
    assert.equal(errorOf(msgs), undefined, summary(msgs).join(", "));
    assert.deepEqual(
      msgs.filter((m) => m.type === "D").map((m) => dataRow(m.body)),
      [["Asia/Tokyo"]],
      `${mode}: SHOW pipelined behind "${reset}"`,
    );
  }
}

// ---------------------------------------------------------------------------------------------
// Two changes in quick succession, then another client takes the server (pool_size 1)

/**
 * Holds pgdog's read-back of session settings (it reads pg_catalog.pg_settings) until released:
 * a superuser connection locks that view. Makes "a request arrives while pgdog still reads back
 * the previous one" happen every time instead of by timing.
 */
async function stallReadBacks(superuser: PgTarget): Promise<{ release(): Promise<void> }> {
  const c = await openPg(superuser);
  await c.query("begin");
  await c.query("lock table pg_catalog.pg_settings in access exclusive mode");
  return {
    async release() {
      await c.query("commit");
      await c.end();
    },
  };
}

async function setRightBehindSet(target: PgTarget, superuser: PgTarget): Promise<void> {
  await using closer = new Closer();
  const a = closer.add(await WireClient.connect(target));
  const b = closer.add(await WireClient.connect({ ...target, params: { application_name: "B0" } }));
  const probeA = async () =>
    (await a.rows(
      "select current_setting('application_name'), current_setting('search_path'), " +
        "current_setting('TimeZone'), (select name from who)",
    ))[0].join("|");
  const lost: string[] = [];
  // As drivers do: each sent as soon as the previous answer is in.
  for (let i = 0; i < 20; i++) {
    await a.rows(`set application_name = 'a-${i}'`);
    await a.rows(`set search_path = s${i % CLIENTS}`);
    await a.rows(`select set_config('TimeZone', '${ZONES[i % CLIENTS]}', false)`);
    assert.deepEqual(await b.rows("show search_path"), [['"$user", public']]);
    const want = [`a-${i}`, `s${i % CLIENTS}`, ZONES[i % CLIENTS], `c${i % CLIENTS}`].join("|");
    const got = await probeA();
    if (got !== want) lost.push(`round ${i}: got ${got}, want ${want}`);
  }
  // The same, made certain: the second SET reaches pgdog while it reads back the first.
  await a.rows("reset all");
  // The next request waits for RESET ALL's read-back: it must be over before the stall begins.
  await a.rows("select 1");
  const stall = await stallReadBacks(superuser);
  try {
    await a.rows("set application_name = 'stalled-1'");
    await a.send(fe.query("set search_path = s5"));
    await sleep(200);
  } finally {
    await stall.release();
  }
  const answer = await a.untilReady(1);
  assert.equal(errorOf(answer), undefined, summary(answer).join(", "));
  assert.deepEqual(await b.rows("show search_path"), [['"$user", public']]);
  const got = await probeA();
  if (got !== "stalled-1|s5|UTC|c5") {
    lost.push(`stalled read-back: got ${got}, want stalled-1|s5|UTC|c5`);
  }
  assert.deepEqual(lost, []);
}

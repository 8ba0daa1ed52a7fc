import assert from "node:assert/strict";
import { type RoleSpec, startPostgres } from "../../tests/harness/mod.ts";
import { resolveConfig } from "../config/load.ts";
import type { PartialConfig } from "../config/types.ts";
import { PgConn, type ServerLogin } from "./pg_conn.ts";
import { RowPlacer } from "./placement.ts";
import { PluginSet } from "../plugin/mod.ts";
import {
  type ReshardingDatabase,
  reshardingDatabase,
  ReshardingError,
  sharedShards,
} from "./shards.ts";
import {
  copyTable,
  copyTableWithRetry,
  type PublicationTable,
  publicationTables,
  TableCopyError,
  type TableCopyResult,
} from "./table_copy.ts";

const USER = "app";
const PASSWORD = "pw";

/**
 * The test schema. items: sharded by a nullable bigint tenant, with a TOASTed column and a
 * generated one (not copied); people: sharded by a uuid key; odd: sharded by a numeric key (no
 * binary decoding: binary falls back to text) with an array; countries: on every shard. hp_*:
 * hash-partitioned parents for satisfies_hash_partition, PostgreSQL's own check of placement.
 */
const SCHEMA = `
  CREATE TABLE items (id bigint PRIMARY KEY, tenant bigint, v text, big text,
                      g int GENERATED ALWAYS AS (length(v)) STORED);
  CREATE TABLE people (id uuid PRIMARY KEY, name varchar(40));
  CREATE TABLE odd (id numeric PRIMARY KEY, tags text[], note text);
  CREATE TABLE countries (code text PRIMARY KEY, name text);
  CREATE TABLE hp_bigint (k bigint) PARTITION BY HASH (k);
  CREATE TABLE hp_uuid (k uuid) PARTITION BY HASH (k);
  CREATE TABLE hp_numeric (k bigint) PARTITION BY HASH (k);
`;

/** Rows for the source: `n` items (every 10th with a NULL tenant, every 100th TOASTed). */
function rowsSql(from: number, to: number): string {
  return `
    INSERT INTO items (id, tenant, v, big)
      SELECT i, CASE WHEN i % 10 = 0 THEN NULL ELSE i * 7919 % 1000 END, 'v' || i || E'\\t\\\\x',
             CASE WHEN i % 100 = 1 THEN (SELECT string_agg(md5(i::text || j::text), '')
                                         FROM generate_series(1, 4000) j) END
        FROM generate_series(${from}, ${to}) i;
    INSERT INTO people SELECT md5('p' || i)::uuid, 'person ' || i FROM generate_series(${from}, ${to}) i;
    INSERT INTO odd SELECT i, ARRAY['a' || i, NULL], E'line\\nbreak' FROM generate_series(${from}, ${to}) i;
  `;
}

async function onDb(login: ServerLogin, sql: string): Promise<(string | null)[][]> {
  const c = await PgConn.connect(login);
  try {
    return (await c.query(sql)).rows;
  } finally {
    c.close();
  }
}

interface Cluster {
  login(database: string): ServerLogin;
  port: number;
}

function database(
  cluster: Cluster,
  options: {
    name: string;
    shards: string[];
    /** More [[sharded_tables]] (items' rule is replaced by one for "items"). */
    tables?: NonNullable<PartialConfig["sharded_tables"]>;
    schemas?: NonNullable<PartialConfig["sharded_schemas"]>;
    plugins?: unknown[];
  },
): ReshardingDatabase {
  const { config } = resolveConfig({
    databases: options.shards.map((db, shard) => ({
      name: options.name,
      host: "127.0.0.1",
      port: cluster.port,
      database_name: db,
      shard,
    })),
    users: [{ name: USER, database: options.name, password: PASSWORD }],
    sharded_tables: [
      ...(options.tables ?? []),
      { database: options.name, name: "items", column: "tenant" },
      { database: options.name, name: "people", column: "id", data_type: "uuid" as const },
      { database: options.name, name: "odd", column: "id" },
    ].filter((t, i, all) => all.findIndex((u) => u.name === t.name) === i),
    sharded_schemas: options.schemas,
    ...(options.plugins ? { plugins: options.plugins } as never : {}),
  });
  return reshardingDatabase(config, options.name);
}

const SORTED: Record<string, string> = {
  items: "SELECT id, tenant, v, md5(big), g FROM items ORDER BY id",
  people: "SELECT * FROM people ORDER BY id",
  odd: "SELECT * FROM odd ORDER BY id",
  countries: "SELECT * FROM countries ORDER BY code",
};

/** The rows of `table` over all shards of `db`, sorted. */
async function unionOf(db: ReshardingDatabase, table: string): Promise<string> {
  const all: (string | null)[][] = [];
  for (const s of db.shards) all.push(...await onDb(s.primary, SORTED[table]));
  all.sort((a, b) => {
    const [x, y] = [a[0]!, b[0]!];
    return table === "items" || table === "odd"
      ? Number(x) - Number(y)
      : x < y
      ? -1
      : x > y
      ? 1
      : 0;
  });
  return JSON.stringify(all);
}

/** Rows on each shard of `db` that PostgreSQL's hash partitioning would put elsewhere. */
async function misplaced(db: ReshardingDatabase): Promise<number> {
  const n = db.shards.length;
  let bad = 0;
  for (const s of db.shards) {
    const [[count]] = await onDb(
      s.primary,
      `SELECT (SELECT count(*) FROM items
                WHERE NOT satisfies_hash_partition('hp_bigint'::regclass, ${n}, ${s.shard}, tenant))
            + (SELECT count(*) FROM people
                WHERE NOT satisfies_hash_partition('hp_uuid'::regclass, ${n}, ${s.shard}, id))
            + (SELECT count(*) FROM odd
                WHERE NOT satisfies_hash_partition('hp_numeric'::regclass, ${n}, ${s.shard},
                                                   id::bigint))`,
    );
    bad += Number(count);
  }
  return bad;
}

async function withCluster(
  databases: string[],
  body: (cluster: Cluster) => Promise<void>,
  options: { roles?: RoleSpec[] } = {},
): Promise<void> {
  await using pg = await startPostgres({
    roles: [
      { name: USER, password: PASSWORD, auth: "scram", superuser: true },
      ...options.roles ?? [],
    ],
    databases,
  });
  const cluster: Cluster = {
    port: pg.port,
    login: (database) => ({
      host: pg.host,
      port: pg.port,
      user: USER,
      password: PASSWORD,
      database,
    }),
  };
  for (const db of databases) await onDb(cluster.login(db), SCHEMA);
  await body(cluster);
}

/** Copies every table of `publication` from each source shard to `destination`. */
async function copyAll(
  source: ReshardingDatabase,
  destination: ReshardingDatabase,
  options: { format: "binary" | "text"; publication?: string },
): Promise<Map<string, TableCopyResult[]>> {
  const placer = new RowPlacer(destination, { plugins: null });
  const shared = sharedShards(source, destination);
  const results = new Map<string, TableCopyResult[]>();
  for (const s of source.shards) {
    const tables = await publicationTables(s.primary, options.publication ?? "pub");
    for (const table of tables) {
      const r = await copyTable({
        source: s.primary,
        snapshot: null,
        table,
        destination,
        placer,
        shared,
        sourceShard: s.shard,
        format: options.format,
      });
      results.set(table.name, [...results.get(table.name) ?? [], r]);
    }
  }
  return results;
}

Deno.test("publicationTables: FOR ALL TABLES, FOR TABLE with a column list; no dropped or generated columns", async () => {
  await withCluster(["src"], async (cluster) => {
    const login = cluster.login("src");
    await onDb(
      login,
      `ALTER TABLE odd DROP COLUMN note;
       CREATE SCHEMA "Other"; CREATE TABLE "Other"."T x" ("Id" int);
       CREATE PUBLICATION pub FOR ALL TABLES;
       CREATE PUBLICATION part FOR TABLE items (id, tenant), countries;
       CREATE PUBLICATION other FOR TABLES IN SCHEMA "Other";`,
    );
    const all = await publicationTables(login, "pub");
    assert.deepEqual(
      all.map((t) => `${t.schema}.${t.name}`),
      ["Other.T x", "public.countries", "public.items", "public.odd", "public.people"],
    );
    const items = all.find((t) => t.name === "items")!;
    assert.deepEqual(items.columns, [
      { name: "id", type: "bigint", typeOid: 20 },
      { name: "tenant", type: "bigint", typeOid: 20 },
      { name: "v", type: "text", typeOid: 25 },
      { name: "big", type: "text", typeOid: 25 },
    ]);
    assert.deepEqual(all.find((t) => t.name === "odd")!.columns.map((c) => c.name), ["id", "tags"]);
    assert.deepEqual(all.find((t) => t.name === "people")!.columns[1], {
      name: "name",
      type: "character varying(40)",
      typeOid: 1043,
    });
    const some = await publicationTables(login, "part");
    assert.deepEqual(
      some.map((t) => [t.name, t.columns.map((c) => c.name)]),
      [["countries", ["code", "name"]], ["items", ["id", "tenant"]]],
    );
    assert.deepEqual(await publicationTables(login, "other"), [
      { schema: "Other", name: "T x", columns: [{ name: "Id", type: "integer", typeOid: 23 }] },
    ]);
    await assert.rejects(publicationTables(login, "nope"), ReshardingError);
  });
});

for (const format of ["text", "binary"] as const) {
  Deno.test(`copyTable (${format}): 1 → 2 shards, every row on its key's shard, TOAST, NULL keys`, async () => {
    await withCluster(["src", "d0", "d1"], async (cluster) => {
      const src = cluster.login("src");
      await onDb(
        src,
        rowsSql(1, 3000) + `INSERT INTO countries VALUES ('fr', 'France'), ('de', NULL);
         CREATE PUBLICATION pub FOR ALL TABLES`,
      );
      const source = database(cluster, { name: "source", shards: ["src"] });
      const destination = database(cluster, { name: "dest", shards: ["d0", "d1"] });
      const results = await copyAll(source, destination, { format });
      assert.equal(results.get("items")![0].rows, 3000);
      assert.equal(results.get("items")![0].format, format);
      // A numeric key cannot be decoded from binary: that table goes as text.
      assert.equal(results.get("odd")![0].format, "text");
      assert.equal(results.get("people")![0].format, format);
      assert.ok(results.get("items")![0].bytes > 30 * 128 * 1000);
      const sourceDb = { ...source };
      for (const table of ["items", "people", "odd"]) {
        assert.equal(await unionOf(destination, table), await unionOf(sourceDb, table), table);
      }
      const countries = await onDb(src, SORTED.countries);
      for (const s of destination.shards) {
        assert.deepEqual(await onDb(s.primary, SORTED.countries), countries);
      }
      assert.equal(await misplaced(destination), 0);
      // Both shards got rows, NULL keys on shard 0, countries on both.
      for (const s of destination.shards) {
        const [[items, nulls, countries]] = await onDb(
          s.primary,
          "SELECT count(*), count(*) FILTER (WHERE tenant IS NULL), (SELECT count(*) FROM countries) FROM items",
        );
        assert.ok(Number(items) > 1000, `shard ${s.shard}: ${items} items`);
        assert.equal(Number(nulls), s.shard === 0 ? 300 : 0);
        assert.equal(Number(countries), 2);
      }
      // The TOASTed values arrived whole.
      const [[toasted]] = await onDb(
        destination.shards[0].primary,
        "SELECT count(*) FROM items WHERE length(big) = 128000",
      );
      assert.ok(Number(toasted) > 5);
    });
  });
}

Deno.test("copyTable: 2 → 3 shards from a snapshot, tables on every shard copied once", async () => {
  await withCluster(["s0", "s1", "d0", "d1", "d2"], async (cluster) => {
    const source = database(cluster, { name: "source", shards: ["s0", "s1"] });
    const destination = database(cluster, { name: "dest", shards: ["d0", "d1", "d2"] });
    // The source as the router placed its rows: load everything on each shard, then keep each
    // shard's own.
    for (const s of source.shards) {
      await onDb(
        s.primary,
        rowsSql(1, 2000) + `INSERT INTO countries VALUES ('fr', 'France'), ('it', 'Italy');
         DELETE FROM items WHERE NOT satisfies_hash_partition('hp_bigint'::regclass, 2, ${s.shard}, tenant);
         DELETE FROM people WHERE NOT satisfies_hash_partition('hp_uuid'::regclass, 2, ${s.shard}, id);
         DELETE FROM odd WHERE NOT satisfies_hash_partition('hp_numeric'::regclass, 2, ${s.shard}, id::bigint);
         CREATE PUBLICATION pub FOR ALL TABLES`,
      );
    }
    const expected: Record<string, string> = {};
    for (const t of ["items", "people", "odd"]) expected[t] = await unionOf(source, t);
    // A snapshot taken before more rows arrive on shard 1: those are not copied.
    const holder = await PgConn.connect(source.shards[1].primary);
    try {
      const [[snapshot]] = (await holder.query(
        "BEGIN ISOLATION LEVEL REPEATABLE READ; SELECT pg_export_snapshot()",
      )).rows;
      await onDb(
        source.shards[1].primary,
        "INSERT INTO items VALUES (100001, 1, 'late', NULL); DELETE FROM people",
      );
      const placer = new RowPlacer(destination, { plugins: null });
      const shared = sharedShards(source, destination);
      assert.deepEqual(shared, [-1, -1, -1]);
      const progress: [number, number][] = [];
      for (const s of source.shards) {
        for (const table of await publicationTables(s.primary, "pub")) {
          const r = await copyTable({
            source: s.primary,
            snapshot: s.shard === 1 ? snapshot : null,
            table,
            destination,
            placer,
            shared,
            sourceShard: s.shard,
            format: "binary",
            onProgress: (rows, bytes) => progress.push([rows, bytes]),
          });
          if (table.name === "countries") assert.equal(r.rows, s.shard === 0 ? 2 : 0);
        }
      }
      assert.ok(progress.length > 0 && progress.every(([r, b]) => r >= 0 && b >= 0));
    } finally {
      holder.close();
    }
    for (const t of ["items", "people", "odd"]) {
      assert.equal(await unionOf(destination, t), expected[t], t);
    }
    assert.equal(await misplaced(destination), 0);
    for (const s of destination.shards) {
      const [[countries]] = await onDb(s.primary, "SELECT count(*) FROM countries");
      assert.equal(countries, "2");
    }
  });
});

Deno.test("copyTable: growing in place 2 → 4 copies only the rows that move; a row moving to another kept shard is refused", async () => {
  await withCluster(["s0", "s1", "n2", "n3"], async (cluster) => {
    const source = database(cluster, { name: "source", shards: ["s0", "s1"] });
    for (const s of source.shards) {
      await onDb(
        s.primary,
        rowsSql(1, 2000) + `INSERT INTO countries VALUES ('fr', 'France');
         DELETE FROM items WHERE NOT satisfies_hash_partition('hp_bigint'::regclass, 2, ${s.shard}, tenant);
         DELETE FROM people WHERE NOT satisfies_hash_partition('hp_uuid'::regclass, 2, ${s.shard}, id);
         DELETE FROM odd WHERE NOT satisfies_hash_partition('hp_numeric'::regclass, 2, ${s.shard}, id::bigint);
         -- A NULL key on shard 1 (loaded there directly): it stays where it is.
         INSERT INTO items SELECT 900000 + ${s.shard}, NULL, 'null key', NULL;
         CREATE PUBLICATION pub FOR ALL TABLES`,
      );
    }
    const before: Record<string, string> = {};
    for (const t of ["items", "people", "odd"]) before[t] = await unionOf(source, t);
    const destination = database(cluster, { name: "dest", shards: ["s0", "s1", "n2", "n3"] });
    assert.deepEqual(sharedShards(source, destination), [0, 1, -1, -1]);
    const results = await copyAll(source, destination, { format: "binary" });
    // Half the rows stay (h mod 4 is h mod 2, or that + 2).
    const items = results.get("items")!;
    const rows = items[0].rows + items[1].rows;
    const kept = items[0].kept + items[1].kept;
    assert.ok(kept > rows / 3 && kept < rows, `${kept} kept of ${rows}`);
    // The kept shards are untouched; the new ones hold the moved rows; together (moved rows
    // dropped from their old shards, as cleanup after cutover does) they are the source.
    for (const s of [0, 1]) {
      const [[count]] = await onDb(destination.shards[s].primary, "SELECT count(*) FROM items");
      const [[was]] = await onDb(source.shards[s].primary, "SELECT count(*) FROM items");
      assert.equal(count, was);
    }
    for (const s of destination.shards) {
      await onDb(
        s.primary,
        `DELETE FROM items WHERE NOT satisfies_hash_partition('hp_bigint'::regclass, 4, ${s.shard}, tenant)
                             AND tenant IS NOT NULL;
         DELETE FROM people WHERE NOT satisfies_hash_partition('hp_uuid'::regclass, 4, ${s.shard}, id);
         DELETE FROM odd WHERE NOT satisfies_hash_partition('hp_numeric'::regclass, 4, ${s.shard}, id::bigint)`,
      );
    }
    for (const t of ["items", "people", "odd"]) {
      assert.equal(await unionOf(destination, t), before[t], t);
    }
    for (const s of [2, 3]) {
      const [[countries]] = await onDb(
        destination.shards[s].primary,
        "SELECT count(*) FROM countries",
      );
      assert.equal(countries, "1");
    }

    // 2 → 3 reusing both shards: some rows of shard 0 belong on shard 1.
    const three = database(cluster, { name: "three", shards: ["s0", "s1", "n2"] });
    const table = (await publicationTables(source.shards[0].primary, "pub")).find((t) =>
      t.name === "items"
    )!;
    await assert.rejects(
      copyTable({
        source: source.shards[0].primary,
        snapshot: null,
        table,
        destination: three,
        placer: new RowPlacer(three, { plugins: null }),
        shared: sharedShards(source, three),
        sourceShard: 0,
        format: "text",
      }),
      (e) => e instanceof ReshardingError && /rows may only move to new shards/.test(e.message),
    );
  });
});

Deno.test("copyTableWithRetry: retried after a failure; a partly committed attempt is truncated first", async () => {
  await withCluster(["src", "d0", "d1"], async (cluster) => {
    await onDb(cluster.login("src"), rowsSql(1, 500) + "CREATE PUBLICATION pub FOR ALL TABLES");
    const source = database(cluster, { name: "source", shards: ["src"] });
    const destination = database(cluster, { name: "dest", shards: ["d0", "d1"] });
    const table = (await publicationTables(source.shards[0].primary, "pub")).find((t) =>
      t.name === "items"
    ) as PublicationTable;
    // Shard 1 refuses the first commit (a deferred trigger that fires even for replicas):
    // shard 0 has committed by then.
    await onDb(
      destination.shards[1].primary,
      `CREATE TABLE fail_once (n int); INSERT INTO fail_once VALUES (1);
       CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS $$
       BEGIN
         IF EXISTS (SELECT FROM fail_once) THEN RAISE EXCEPTION 'refused at commit'; END IF;
         RETURN NULL;
       END $$;
       CREATE CONSTRAINT TRIGGER refuse AFTER INSERT ON items DEFERRABLE INITIALLY DEFERRED
         FOR EACH ROW EXECUTE FUNCTION refuse();
       ALTER TABLE items ENABLE ALWAYS TRIGGER refuse;`,
    );
    // Shard 0 has a foreign key to items (NOT VALID, as schema sync creates them): TRUNCATE
    // refuses, the retry deletes instead.
    await onDb(
      destination.shards[0].primary,
      `CREATE TABLE refs (item bigint);
       ALTER TABLE refs ADD FOREIGN KEY (item) REFERENCES items (id) NOT VALID`,
    );
    const failures: unknown[] = [];
    const options = {
      source: source.shards[0].primary,
      snapshot: null,
      table,
      destination,
      placer: new RowPlacer(destination, { plugins: null }),
      shared: [-1, -1],
      sourceShard: 0,
      format: "binary" as const,
      attempts: 3,
      minDelayMs: 10,
    };
    const r = await copyTableWithRetry({
      ...options,
      onRetry: async (_attempt, e) => {
        failures.push(e);
        await onDb(destination.shards[1].primary, "DELETE FROM fail_once");
      },
    });
    assert.equal(r.rows, 500);
    assert.equal(failures.length, 1);
    assert.ok(failures[0] instanceof TableCopyError);
    assert.deepEqual(failures[0].committed, [0, 1]);
    assert.match(failures[0].message, /refused at commit/);
    // No duplicates (the primary key would have refused them): shard 0 was emptied first.
    assert.equal(await unionOf(destination, "items"), await unionOf(source, "items"));

    // Attempts run out: the last failure is thrown, saying where it happened.
    for (const s of destination.shards) await onDb(s.primary, "DELETE FROM items");
    await onDb(destination.shards[1].primary, "INSERT INTO fail_once VALUES (1)");
    let retries = 0;
    await assert.rejects(
      copyTableWithRetry({
        ...options,
        onRetry: () => {
          retries++;
        },
      }),
      (e) =>
        e instanceof TableCopyError &&
        e.message.startsWith(`destination shard 1 (127.0.0.1:${cluster.port}/d1): refused`),
    );
    assert.equal(retries, 2);
    await onDb(destination.shards[1].primary, "DELETE FROM fail_once");

    // A table the destination lacks is not retried: its schema must be created first.
    await onDb(source.shards[0].primary, "CREATE TABLE only_here (id bigint)");
    const onlyHere = (await publicationTables(source.shards[0].primary, "pub")).find((t) =>
      t.name === "only_here"
    )!;
    await assert.rejects(
      copyTableWithRetry({
        ...options,
        table: onlyHere,
        onRetry: () => {
          retries++;
        },
      }),
      (e) =>
        e instanceof ReshardingError &&
        /^destination shard 0 .*only_here.*SCHEMA_SYNC/.test(e.message),
    );
    assert.equal(retries, 2);

    // Stopped: no retry, the abort's reason.
    const stop = new AbortController();
    stop.abort(new Error("stopped by the operator"));
    await assert.rejects(
      copyTableWithRetry({ ...options, signal: stop.signal }),
      /stopped by the operator/,
    );
  });
});

Deno.test("copyTable: binary falls back to text for types without binary I/O or with OIDs in it; partitioned roots; identity columns", async () => {
  await withCluster(["src", "d0", "d1"], async (cluster) => {
    const types = `
      CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy');
      CREATE TYPE pair AS (a int, b text);
      CREATE TABLE feelings (id bigint PRIMARY KEY, moods mood[], p pair,
                             n bigint GENERATED ALWAYS AS IDENTITY, acl aclitem[]);
      CREATE TABLE nums (id bigint PRIMARY KEY, a int[], m mood, at timestamptz);
      CREATE TABLE parts (id bigint, v text) PARTITION BY RANGE (id);
      CREATE TABLE parts_1 PARTITION OF parts FOR VALUES FROM (0) TO (500);
      CREATE TABLE parts_2 PARTITION OF parts FOR VALUES FROM (500) TO (MAXVALUE);`;
    // Each database's types get their own OIDs (the counter is the cluster's).
    for (const db of ["d1", "d0", "src"]) await onDb(cluster.login(db), types);
    await onDb(
      cluster.login("src"),
      `INSERT INTO feelings (id, moods, p)
         SELECT i, ARRAY['sad', 'happy']::mood[], ROW(i, 'b' || i)::pair FROM generate_series(1, 1000) i;
       UPDATE feelings SET acl = ARRAY[makeaclitem('app'::regrole, 'app'::regrole, 'SELECT', false)]
        WHERE id % 2 = 0;
       INSERT INTO nums SELECT i, ARRAY[i, NULL], 'ok', '2026-01-01' FROM generate_series(1, 1000) i;
       INSERT INTO parts SELECT i, 'v' || i FROM generate_series(1, 1000) i;
       CREATE PUBLICATION pr FOR TABLE feelings, nums, parts WITH (publish_via_partition_root = true)`,
    );
    const tables = ["feelings", "nums", "parts"].map((name) => ({
      database: "dest",
      name,
      column: "id",
    }));
    const source = database(cluster, { name: "source", shards: ["src"] });
    const destination = database(cluster, { name: "dest", shards: ["d0", "d1"], tables });
    const results = await copyAll(source, destination, { format: "binary", publication: "pr" });
    assert.deepEqual(
      [...results].map(([name, [r]]) => [name, r.format, r.rows]),
      [["feelings", "text", 1000], ["nums", "binary", 1000], ["parts", "binary", 1000]],
    );
    for (const [table, order] of [["feelings", "id"], ["nums", "id"], ["parts", "id"]]) {
      const all: (string | null)[][] = [];
      for (const s of destination.shards) {
        all.push(...await onDb(s.primary, `SELECT * FROM ${table} ORDER BY ${order}`));
        const [[bad]] = await onDb(
          s.primary,
          `SELECT count(*) FROM ${table}
            WHERE NOT satisfies_hash_partition('hp_bigint'::regclass, 2, ${s.shard}, id)`,
        );
        assert.equal(bad, "0");
      }
      all.sort((a, b) => Number(a[0]) - Number(b[0]));
      const expected = await onDb(cluster.login("src"), `SELECT * FROM ${table} ORDER BY ${order}`);
      assert.deepEqual(all, expected, table);
    }
  });
});

Deno.test("copyTable: a plugin hasher places the rows; stopping mid-copy commits nothing", async () => {
  await withCluster(["src", "d0", "d1"], async (cluster) => {
    await onDb(cluster.login("src"), rowsSql(1, 3000) + "CREATE PUBLICATION pub FOR ALL TABLES");
    const source = database(cluster, { name: "source", shards: ["src"] });
    const destination = database(cluster, {
      name: "dest",
      shards: ["d0", "d1"],
      tables: [{ database: "dest", name: "items", column: "tenant", hasher: "plugin:dir" }],
      plugins: [{
        name: "dir",
        path: new URL("../../tests/plugins/directives.ts", import.meta.url).pathname,
        timeout: 10_000,
      }],
    });
    const { config } = resolveConfig({
      databases: [{ name: "x", host: "127.0.0.1" }],
      plugins: [{
        name: "dir",
        path: new URL("../../tests/plugins/directives.ts", import.meta.url).pathname,
        timeout: 10_000,
      }],
    } as never);
    const plugins = await PluginSet.start(config.plugins);
    try {
      const table = (await publicationTables(source.shards[0].primary, "pub")).find((t) =>
        t.name === "items"
      )!;
      const options = {
        source: source.shards[0].primary,
        snapshot: null,
        table,
        destination,
        placer: new RowPlacer(destination, { plugins }),
        shared: [-1, -1],
        sourceShard: 0,
        format: "binary" as const,
      };
      // Stopped at the first progress report: nothing is committed anywhere.
      const stop = new AbortController();
      await assert.rejects(
        copyTable({
          ...options,
          signal: stop.signal,
          onProgress: () => stop.abort(new Error("stopped")),
        }),
        /stopped/,
      );
      for (const s of destination.shards) {
        assert.deepEqual(await onDb(s.primary, "SELECT count(*) FROM items"), [["0"]]);
      }
      const r = await copyTable(options);
      assert.equal(r.rows, 3000);
      // The directives plugin's shard hook: the key modulo the shard count (NULL: shard 0).
      for (const s of destination.shards) {
        const [[count, wrong]] = await onDb(
          s.primary,
          `SELECT count(*), count(*) FILTER (WHERE coalesce(tenant % 2, 0) <> ${s.shard}) FROM items`,
        );
        assert.ok(Number(count) > 1000);
        assert.equal(wrong, "0");
      }
      assert.equal(await unionOf(destination, "items"), await unionOf(source, "items"));
    } finally {
      await plugins.close();
    }
  });
});

Deno.test("copyTableWithRetry: a destination connection lost midway is retried without emptying the table", async () => {
  await withCluster(["src", "d0", "d1"], async (cluster) => {
    await onDb(cluster.login("src"), rowsSql(1, 2000) + "CREATE PUBLICATION pub FOR ALL TABLES");
    const source = database(cluster, { name: "source", shards: ["src"] });
    const destination = database(cluster, { name: "dest", shards: ["d0", "d1"] });
    const table = (await publicationTables(source.shards[0].primary, "pub")).find((t) =>
      t.name === "items"
    )!;
    // A row another source shard copied already; the retry must keep it.
    await onDb(destination.shards[0].primary, "INSERT INTO items VALUES (-1, 2, 'other', NULL)");
    // Shard 1's first COPY ends its own connection at its first row (a sequence is not rolled back).
    await onDb(
      destination.shards[1].primary,
      `CREATE SEQUENCE kills;
       CREATE FUNCTION die() RETURNS trigger LANGUAGE plpgsql AS $$
       BEGIN
         IF nextval('kills') = 1 THEN PERFORM pg_terminate_backend(pg_backend_pid()); END IF;
         RETURN NEW;
       END $$;
       CREATE TRIGGER die BEFORE INSERT ON items FOR EACH ROW EXECUTE FUNCTION die();
       ALTER TABLE items ENABLE ALWAYS TRIGGER die;`,
    );
    const failures: unknown[] = [];
    const r = await copyTableWithRetry({
      source: source.shards[0].primary,
      snapshot: null,
      table,
      destination,
      placer: new RowPlacer(destination, { plugins: null }),
      shared: [-1, -1],
      sourceShard: 0,
      format: "text",
      attempts: 2,
      minDelayMs: 10,
      onRetry: (_attempt, e) => {
        failures.push(e);
      },
    });
    assert.equal(r.rows, 2000);
    assert.equal(failures.length, 1);
    assert.ok(failures[0] instanceof TableCopyError);
    assert.deepEqual(failures[0].committed, []);
    const copied = JSON.parse(await unionOf(destination, "items"));
    assert.deepEqual(copied[0], ["-1", "2", "other", null, "5"]);
    assert.equal(JSON.stringify(copied.slice(1)), await unionOf(source, "items"));
  });
});

Deno.test("copyTable: a destination shard refusing a row fails the copy early, not at the end", async () => {
  await withCluster(["src", "d0", "d1"], async (cluster) => {
    await onDb(cluster.login("src"), rowsSql(1, 20000) + "CREATE PUBLICATION pub FOR ALL TABLES");
    const source = database(cluster, { name: "source", shards: ["src"] });
    const destination = database(cluster, { name: "dest", shards: ["d0", "d1"] });
    const table = (await publicationTables(source.shards[0].primary, "pub")).find((t) =>
      t.name === "items"
    )!;
    // The first row is there already (a copy run twice without emptying the destination).
    for (const s of destination.shards) {
      await onDb(s.primary, "INSERT INTO items VALUES (1, 1, 'there', NULL)");
    }
    let read = 0;
    await assert.rejects(
      copyTable({
        source: source.shards[0].primary,
        snapshot: null,
        table,
        destination,
        placer: new RowPlacer(destination, { plugins: null }),
        shared: [-1, -1],
        sourceShard: 0,
        format: "binary",
        onProgress: (rows) => read = rows,
      }),
      (e) => e instanceof TableCopyError && /duplicate key/.test(e.message),
    );
    assert.ok(read < 20000, `${read} rows read before the failure was noticed`);
  });
});

Deno.test("copyTable: a [[sharded_schemas]] schema's tables go to its shard only", async () => {
  await withCluster(["s0", "s1", "n2", "n3", "n4"], async (cluster) => {
    const tenants = `CREATE SCHEMA a; CREATE SCHEMA b;
      CREATE TABLE a.notes (id int PRIMARY KEY, v text); CREATE TABLE b.notes (id int PRIMARY KEY, v text);`;
    for (const db of ["s0", "s1", "n2", "n3", "n4"]) await onDb(cluster.login(db), tenants);
    const schemas = (database: string, a: number, b: number) => [
      { database, name: "a", shard: a },
      { database, name: "b", shard: b },
    ];
    // The source: schema a on shard 0, b on shard 1; the destination grows in place and moves a
    // to the new shard 2.
    await onDb(
      cluster.login("s0"),
      "INSERT INTO a.notes SELECT i, 'a' || i FROM generate_series(1, 100) i;" +
        "CREATE PUBLICATION pub FOR ALL TABLES",
    );
    await onDb(
      cluster.login("s1"),
      "INSERT INTO b.notes SELECT i, 'b' || i FROM generate_series(1, 50) i;" +
        "CREATE PUBLICATION pub FOR ALL TABLES",
    );
    const source = database(cluster, {
      name: "source",
      shards: ["s0", "s1"],
      schemas: schemas("source", 0, 1),
    });
    const destination = database(cluster, {
      name: "dest",
      shards: ["s0", "s1", "n2"],
      schemas: schemas("dest", 2, 1),
    });
    const results = await copyAll(source, destination, { format: "binary" });
    assert.deepEqual(results.get("notes")!.map((r) => r.rows), [100, 0, 0, 0]);
    const count = async (db: string, table: string) =>
      (await onDb(cluster.login(db), `SELECT count(*) FROM ${table}`))[0][0];
    assert.deepEqual(
      [await count("n2", "a.notes"), await count("n2", "b.notes"), await count("s1", "b.notes")],
      ["100", "0", "50"],
    );
    // Into a new cluster: each schema on its own shard, nowhere else.
    const fresh = database(cluster, {
      name: "fresh",
      shards: ["n3", "n4"],
      schemas: schemas("fresh", 1, 0),
    });
    await copyAll(source, fresh, { format: "text" });
    assert.deepEqual(
      [
        await count("n3", "a.notes"),
        await count("n3", "b.notes"),
        await count("n4", "a.notes"),
        await count("n4", "b.notes"),
      ],
      ["0", "50", "100", "0"],
    );
    // Moving b from kept shard 1 to kept shard 0 is refused.
    const swapped = database(cluster, {
      name: "swapped",
      shards: ["s0", "s1", "n2"],
      schemas: schemas("swapped", 2, 0),
    });
    const b = (await publicationTables(cluster.login("s1"), "pub")).find((t) => t.schema === "b")!;
    await assert.rejects(
      copyTable({
        source: cluster.login("s1"),
        snapshot: null,
        table: b,
        destination: swapped,
        placer: new RowPlacer(swapped, { plugins: null }),
        shared: sharedShards(source, swapped),
        sourceShard: 1,
        format: "text",
      }),
      (e) => e instanceof ReshardingError && /destination shard 0/.test(e.message),
    );
  });
});

Deno.test("copyTable: a destination user that may not set session_replication_role is told what it needs", async () => {
  await withCluster(["src", "d0"], async (cluster) => {
    await onDb(cluster.login("src"), rowsSql(1, 10) + "CREATE PUBLICATION pub FOR ALL TABLES");
    await onDb(cluster.login("d0"), "GRANT ALL ON ALL TABLES IN SCHEMA public TO plain");
    const source = database(cluster, { name: "source", shards: ["src"] });
    const dest = database(cluster, { name: "dest", shards: ["d0"] });
    const plain: ReshardingDatabase = {
      ...dest,
      shards: dest.shards.map((s) => ({ ...s, primary: { ...s.primary, user: "plain" } })),
    };
    const table = (await publicationTables(source.shards[0].primary, "pub")).find((t) =>
      t.name === "items"
    )!;
    const options = {
      source: source.shards[0].primary,
      snapshot: null,
      table,
      destination: plain,
      placer: new RowPlacer(plain, { plugins: null }),
      shared: [-1],
      sourceShard: 0,
      format: "text" as const,
    };
    await assert.rejects(
      copyTable(options),
      (e) => e instanceof ReshardingError && /must be a superuser/.test(e.message),
    );
    // PostgreSQL 15 lets a superuser grant just that parameter.
    await onDb(cluster.login("d0"), "GRANT SET ON PARAMETER session_replication_role TO plain");
    assert.equal((await copyTable(options)).rows, 10);
  }, { roles: [{ name: "plain", password: PASSWORD, auth: "scram" }] });
});

Deno.test("copyTable (text): dates, floats and intervals survive other DateStyle, extra_float_digits and IntervalStyle settings; statement_timeout does not apply", async () => {
  await withCluster(["src", "d0"], async (cluster) => {
    await onDb(
      cluster.login("src"),
      `CREATE TABLE dated (id bigint PRIMARY KEY, d date, f float8, i interval, t timestamptz);
       INSERT INTO dated VALUES (1, '2026-01-02', 0.1 + 0.2, '1 day 02:03:04', '2026-01-02 03:04:05+00'),
                                (2, '2026-12-31', 1e-300, '-1 month', NULL);
       INSERT INTO dated SELECT i, '2026-01-01', i / 7.0, NULL, NULL FROM generate_series(3, 100000) i;
       CREATE PUBLICATION pub FOR TABLE dated;
       ALTER DATABASE src SET DateStyle = 'SQL, DMY'; ALTER DATABASE src SET extra_float_digits = 0;
       ALTER DATABASE src SET IntervalStyle = 'sql_standard';
       ALTER DATABASE src SET statement_timeout = '5ms'`,
    );
    await onDb(
      cluster.login("d0"),
      `CREATE TABLE dated (id bigint PRIMARY KEY, d date, f float8, i interval, t timestamptz);
       ALTER DATABASE d0 SET DateStyle = 'SQL, MDY'; ALTER DATABASE d0 SET IntervalStyle = 'iso_8601';
       ALTER DATABASE d0 SET statement_timeout = '5ms'`,
    );
    const source = database(cluster, { name: "source", shards: ["src"] });
    const dest = database(cluster, { name: "dest", shards: ["d0"] });
    const [table] = await publicationTables(source.shards[0].primary, "pub");
    await copyTable({
      source: source.shards[0].primary,
      snapshot: null,
      table,
      destination: dest,
      placer: new RowPlacer(dest, { plugins: null }),
      shared: [-1],
      sourceShard: 0,
      format: "text",
    });
    const read = "SET DateStyle = ISO; SET extra_float_digits = 3; SET IntervalStyle = postgres; " +
      "SET statement_timeout = 0; " +
      "SELECT * FROM dated ORDER BY id";
    assert.deepEqual(
      await onDb(dest.shards[0].primary, read),
      await onDb(source.shards[0].primary, read),
    );
  });
});

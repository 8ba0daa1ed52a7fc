import assert from "node:assert/strict";
import { startPostgres } from "../../tests/harness/mod.ts";
import { PgConn, PgError } from "./pg_conn.ts";

Deno.test("PgConn: queries, parameters, errors, COPY both ways, a replication connection", async () => {
  await using pg = await startPostgres({
    settings: { wal_level: "logical", max_replication_slots: 4, max_wal_senders: 4 },
    roles: [{ name: "app", password: "pw", auth: "scram", superuser: true }],
    hba: ["host replication app 127.0.0.1/32 scram-sha-256"],
  });
  const login = { host: pg.host, port: pg.port, user: "app", password: "pw", database: "postgres" };
  const c = await PgConn.connect(login);
  try {
    const r = await c.query(
      "CREATE TABLE t (id int PRIMARY KEY, v text); SELECT 1 AS one, NULL AS n",
    );
    assert.deepEqual(r.columns, ["one", "n"]);
    assert.deepEqual(r.rows, [["1", null]]);
    assert.deepEqual(r.tags, ["CREATE TABLE", "SELECT 1"]);
    const e = await c.execute("INSERT INTO t VALUES ($1, $2) RETURNING v", ["1", "a\tb"]);
    assert.deepEqual(e.rows, [["a\tb"]]);
    await assert.rejects(
      c.execute("INSERT INTO t VALUES ($1, $2)", ["1", null]),
      (err) => err instanceof PgError && err.code === "23505",
    );
    // Still usable after an error.
    await c.copyIn("COPY t FROM STDIN");
    await c.copyData(new TextEncoder().encode("2\tx\n3\t\\N\n"));
    assert.equal(await c.copyDone(), "COPY 2");
    await c.copyIn("COPY t FROM STDIN");
    await c.copyData(new TextEncoder().encode("nope\n"));
    await assert.rejects(c.copyDone(), (err) => err instanceof PgError && err.code === "22P02");
    let text = "";
    const tag = await c.copyOut("COPY (SELECT * FROM t ORDER BY id) TO STDOUT", (d) => {
      text += new TextDecoder().decode(d);
    });
    assert.equal(tag, "COPY 3");
    assert.equal(text, "1\ta\tb\n2\tx\n3\t\\N\n".replace("a\tb", "a\\tb"));
  } finally {
    c.close();
  }
  const repl = await PgConn.connect({ ...login, params: { replication: "database" } });
  try {
    const id = await repl.query("IDENTIFY_SYSTEM");
    assert.equal(id.columns[0], "systemid");
    assert.equal(id.rows[0][3], "postgres");
  } finally {
    repl.close();
  }
});

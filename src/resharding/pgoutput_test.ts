import assert from "node:assert/strict";
import { startPostgres } from "../../tests/harness/mod.ts";
import { type Change, parseLsn, type Relation, UNCHANGED } from "./changes.ts";
import { PgConn } from "./pg_conn.ts";
import { decodePgoutput, PgoutputError } from "./pgoutput.ts";

/** Builds a pgoutput message byte by byte (big-endian, as PostgreSQL sends it). */
class Bytes {
  readonly #parts: number[] = [];
  byte(b: number | string): this {
    this.#parts.push(typeof b === "string" ? b.charCodeAt(0) : b);
    return this;
  }
  int16(v: number): this {
    this.#parts.push((v >> 8) & 0xff, v & 0xff);
    return this;
  }
  int32(v: number): this {
    this.#parts.push((v >>> 24) & 0xff, (v >>> 16) & 0xff, (v >>> 8) & 0xff, v & 0xff);
    return this;
  }
  int64(v: bigint): this {
    const u = BigInt.asUintN(64, v);
    return this.int32(Number(u >> 32n)).int32(Number(u & 0xffffffffn));
  }
  cstring(s: string): this {
    for (const b of new TextEncoder().encode(s)) this.#parts.push(b);
    this.#parts.push(0);
    return this;
  }
  text(s: string): this {
    const bytes = new TextEncoder().encode(s);
    this.byte("t").int32(bytes.length);
    for (const b of bytes) this.#parts.push(b);
    return this;
  }
  build(): Uint8Array {
    return Uint8Array.from(this.#parts);
  }
}

Deno.test("pgoutput: Begin and Commit carry LSNs, times and an unsigned xid", () => {
  const begin = new Bytes().byte("B").int64(0x1_0000_0040n).int64(123456789n).int32(0xfffffffe)
    .build();
  assert.deepEqual(decodePgoutput(begin), {
    kind: "begin",
    finalLsn: 0x1_0000_0040n,
    commitTime: 123456789n,
    xid: 0xfffffffe,
  });
  const commit = new Bytes().byte("C").byte(0).int64(0x10n).int64(0x38n).int64(-5n).build();
  assert.deepEqual(decodePgoutput(commit), {
    kind: "commit",
    commitLsn: 0x10n,
    endLsn: 0x38n,
    commitTime: -5n,
  });
});

Deno.test("pgoutput: Relation with key flags, typmods and an empty namespace (pg_catalog)", () => {
  const msg = new Bytes().byte("R").int32(0x80000001).cstring("").cstring("tbl").byte("f").int16(2)
    .byte(1).cstring("id").int32(20).int32(-1)
    .byte(0).cstring("naïve").int32(1043).int32(14)
    .build();
  assert.deepEqual(decodePgoutput(msg), {
    kind: "relation",
    oid: 0x80000001,
    schema: "pg_catalog",
    name: "tbl",
    replicaIdentity: "f",
    columns: [
      { name: "id", typeOid: 20, typmod: -1, key: true },
      { name: "naïve", typeOid: 1043, typmod: 14, key: false },
    ],
  });
});

Deno.test("pgoutput: Insert, Update (none, K, O), Delete (K, O) with NULL, unchanged and text values", () => {
  const ins = new Bytes().byte("I").int32(16384).byte("N").int16(3)
    .text("1").byte("n").text("é\t\n").build();
  assert.deepEqual(decodePgoutput(ins), {
    kind: "insert",
    relation: 16384,
    tuple: ["1", null, "é\t\n"],
  });
  const upd = new Bytes().byte("U").int32(7).byte("N").int16(2).text("").byte("u").build();
  assert.deepEqual(decodePgoutput(upd), {
    kind: "update",
    relation: 7,
    old: null,
    oldKind: null,
    tuple: ["", UNCHANGED],
  });
  const updKey = new Bytes().byte("U").int32(7).byte("K").int16(2).text("1").byte("n")
    .byte("N").int16(2).text("2").text("x").build();
  assert.deepEqual(decodePgoutput(updKey), {
    kind: "update",
    relation: 7,
    old: ["1", null],
    oldKind: "K",
    tuple: ["2", "x"],
  });
  const updFull = new Bytes().byte("U").int32(7).byte("O").int16(1).text("a")
    .byte("N").int16(1).text("b").build();
  const full = decodePgoutput(updFull);
  assert.equal(full.kind === "update" && full.oldKind, "O");
  const del = new Bytes().byte("D").int32(9).byte("K").int16(1).text("5").build();
  assert.deepEqual(decodePgoutput(del), {
    kind: "delete",
    relation: 9,
    old: ["5"],
    oldKind: "K",
  });
  const delFull = new Bytes().byte("D").int32(9).byte("O").int16(1).byte("n").build();
  assert.deepEqual(decodePgoutput(delFull), {
    kind: "delete",
    relation: 9,
    old: [null],
    oldKind: "O",
  });
});

Deno.test("pgoutput: Truncate options, and Origin, Type, Message as other", () => {
  const t = new Bytes().byte("T").int32(2).byte(3).int32(1).int32(0xffffff00).build();
  assert.deepEqual(decodePgoutput(t), {
    kind: "truncate",
    relations: [1, 0xffffff00],
    cascade: true,
    restartIdentity: true,
  });
  const plain = new Bytes().byte("T").int32(1).byte(0).int32(1).build();
  assert.deepEqual(decodePgoutput(plain), {
    kind: "truncate",
    relations: [1],
    cascade: false,
    restartIdentity: false,
  });
  const only = new Bytes().byte("T").int32(1).byte(2).int32(1).build();
  const o = decodePgoutput(only);
  assert.ok(o.kind === "truncate" && !o.cascade && o.restartIdentity);
  assert.deepEqual(decodePgoutput(new Bytes().byte("O").int64(1n).cstring("x").build()), {
    kind: "other",
    tag: 0x4f,
  });
  assert.deepEqual(
    decodePgoutput(new Bytes().byte("Y").int32(1).cstring("s").cstring("t").build()),
    { kind: "other", tag: 0x59 },
  );
});

Deno.test("pgoutput: malformed messages are PgoutputErrors", () => {
  const bad: [string, Uint8Array][] = [
    ["empty", new Uint8Array(0)],
    ["unknown tag", new Bytes().byte("Z").build()],
    ["truncated Begin", new Bytes().byte("B").int64(1n).build()],
    ["trailing bytes", new Bytes().byte("C").byte(0).int64(1n).int64(2n).int64(3n).byte(0).build()],
    ["binary value", new Bytes().byte("I").int32(1).byte("N").int16(1).byte("b").int32(0).build()],
    [
      "text longer than the message",
      new Bytes().byte("I").int32(1).byte("N").int16(1).byte("t").int32(9).build(),
    ],
    ["unterminated name", new Bytes().byte("R").int32(1).byte("p").byte("x").build()],
    ["Insert without N", new Bytes().byte("I").int32(1).byte("K").int16(0).build()],
    ["Delete without K or O", new Bytes().byte("D").int32(1).byte("N").int16(0).build()],
    [
      "Update with two old tuples",
      new Bytes().byte("U").int32(1).byte("K").int16(0).byte("O").int16(0).build(),
    ],
    [
      "bad replica identity",
      new Bytes().byte("R").int32(1).cstring("s").cstring("t").byte("x").int16(0).build(),
    ],
    ["streamed transaction", new Bytes().byte("S").int32(1).byte(1).build()],
  ];
  for (const [what, msg] of bad) {
    assert.throws(() => decodePgoutput(msg), PgoutputError, what);
  }
});

Deno.test("pgoutput: decodes what PostgreSQL 15 sends for inserts, updates, deletes, truncate and TOAST", async () => {
  await using pg = await startPostgres({
    settings: { wal_level: "logical", max_replication_slots: 4, max_wal_senders: 4 },
    roles: [{ name: "app", password: "pw", auth: "scram", superuser: true }],
  });
  const c = await PgConn.connect({
    host: pg.host,
    port: pg.port,
    user: "app",
    password: "pw",
    database: "postgres",
  });
  try {
    await c.query(`
      CREATE TABLE items (id int PRIMARY KEY, note text, doc text);
      ALTER TABLE items ALTER COLUMN doc SET STORAGE EXTERNAL;
      CREATE TABLE logs (a int, b text);
      ALTER TABLE logs REPLICA IDENTITY FULL;
      CREATE PUBLICATION pub FOR ALL TABLES;`);
    await c.query("SELECT pg_create_logical_replication_slot('s', 'pgoutput')");
    const big = "x".repeat(5000);
    await c.query(`
      BEGIN;
      INSERT INTO items VALUES (1, NULL, '${big}'), (2, 'two', 'small');
      INSERT INTO logs VALUES (1, 'one');
      COMMIT;`);
    for (
      const sql of [
        "UPDATE items SET note = 'n' WHERE id = 1",
        "UPDATE items SET id = 3 WHERE id = 2",
        "UPDATE logs SET b = 'uno'",
        "DELETE FROM items WHERE id = 3",
        "DELETE FROM logs",
        "TRUNCATE items, logs RESTART IDENTITY",
      ]
    ) await c.query(sql);
    const r = await c.query(
      `SELECT lsn, data FROM pg_logical_slot_peek_binary_changes('s', NULL, NULL,
         'proto_version', '1', 'publication_names', 'pub')`,
    );
    const changes: Change[] = r.rows.map(([, hex]) => {
      const bytes = Uint8Array.from(
        (hex ?? "").slice(2).match(/../g) ?? [],
        (h) => parseInt(h, 16),
      );
      return decodePgoutput(bytes);
    });
    const kinds = changes.map((ch) => ch.kind);
    assert.deepEqual(kinds, [
      "begin",
      "relation",
      "insert",
      "insert",
      "relation",
      "insert",
      "commit",
      "begin",
      "update",
      "commit",
      "begin",
      "update",
      "commit",
      "begin",
      "update",
      "commit",
      "begin",
      "delete",
      "commit",
      "begin",
      "delete",
      "commit",
      // TRUNCATE gives the tables new files: their Relation messages come again.
      "begin",
      "relation",
      "relation",
      "truncate",
      "commit",
    ]);
    const items = changes[1] as Relation;
    const logs = changes[4] as Relation;
    assert.equal(items.schema, "public");
    assert.equal(items.name, "items");
    assert.equal(items.replicaIdentity, "d");
    assert.deepEqual(items.columns.map((col) => [col.name, col.typeOid, col.key]), [
      ["id", 23, true],
      ["note", 25, false],
      ["doc", 25, false],
    ]);
    assert.equal(logs.replicaIdentity, "f");
    assert.ok(logs.columns.every((col) => col.key));
    assert.deepEqual(changes[2], { kind: "insert", relation: items.oid, tuple: ["1", null, big] });
    // A non-key update leaves the TOASTed value out.
    assert.deepEqual(changes[8], {
      kind: "update",
      relation: items.oid,
      old: null,
      oldKind: null,
      tuple: ["1", "n", UNCHANGED],
    });
    // A key update carries the old key.
    assert.deepEqual(changes[11], {
      kind: "update",
      relation: items.oid,
      old: ["2", null, null],
      oldKind: "K",
      tuple: ["3", "two", "small"],
    });
    assert.deepEqual(changes[14], {
      kind: "update",
      relation: logs.oid,
      old: ["1", "one"],
      oldKind: "O",
      tuple: ["1", "uno"],
    });
    assert.deepEqual(changes[17], {
      kind: "delete",
      relation: items.oid,
      old: ["3", null, null],
      oldKind: "K",
    });
    assert.deepEqual(changes[20], {
      kind: "delete",
      relation: logs.oid,
      old: ["1", "uno"],
      oldKind: "O",
    });
    const trunc = changes[25];
    assert.ok(trunc.kind === "truncate");
    assert.deepEqual(new Set(trunc.relations), new Set([items.oid, logs.oid]));
    assert.equal(trunc.restartIdentity, true);
    assert.equal(trunc.cascade, false);
    // Begin's final LSN is its Commit's LSN, and Commit's end is past it.
    const begin = changes[0];
    const commit = changes[6];
    assert.ok(begin.kind === "begin" && commit.kind === "commit");
    assert.equal(begin.finalLsn, commit.commitLsn);
    assert.ok(commit.endLsn > commit.commitLsn);
    assert.ok(begin.xid > 0);
    // The SQL interface shows a Commit at its end (where a consumer resumes after it).
    assert.equal(parseLsn(r.rows[6][0] ?? ""), commit.endLsn);
  } finally {
    c.close();
  }
});

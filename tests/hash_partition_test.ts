/**
 * The sharding hash against real PostgreSQL: for bigint, text and uuid keys and moduli 2, 3, 4
 * and 12, PostgreSQL's own `PARTITION BY HASH` routing must put every row in the partition whose
 * remainder is `shardForX(key, modulus)`. Also compares the raw 64-bit hashes with the SQL
 * functions `hashint8extended`, `hashtextextended` and `uuid_hash_extended`, and the text input
 * rules of parseBigint/parseUuid with PostgreSQL's int8 and uuid input functions.
 *
 * Everything runs in one psql session on one cluster (COPY from stdin, set-based inserts, one
 * result set), so the whole test takes a few seconds. Checking the actual partition of each row
 * makes `satisfies_hash_partition` unnecessary: it evaluates the same partition constraint.
 */

import assert from "node:assert/strict";
import { psql, startPostgres } from "./harness/mod.ts";
import {
  HASH_PARTITION_SEED,
  hashBytesExtended,
  hashInt8Extended,
  parseBigint,
  parseUuid,
  shardForBigint,
  shardForText,
  shardForUuid,
} from "../src/sharding/mod.ts";

const MODULI = [2, 3, 4, 12];
const ROWS = 10_000;
const INT64_MIN = -(1n << 63n);
const INT64_MAX = (1n << 63n) - 1n;
/** Seeds for the raw-hash comparison: PostgreSQL's partition seed, zero (no seeding mix), another. */
const SEEDS = [BigInt.asIntN(64, HASH_PARTITION_SEED), 0n, -1234567890123456789n];

/** A small seeded PRNG (xorshift32), so a failure can be reproduced with the printed seed. */
function rng(seed: number): () => number {
  let x = seed >>> 0 || 1;
  return () => {
    x ^= x << 13;
    x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5;
    x >>>= 0;
    return x;
  };
}

const SEED = Number(Deno.env.get("HASH_TEST_SEED") ?? Date.now() % 0xffffffff);
const next = rng(SEED);
const below = (n: number): number => next() % n;
const pick = <T>(items: readonly T[]): T => items[below(items.length)];

function randomBigint(): bigint {
  switch (below(6)) {
    case 0:
      return BigInt(below(2001) - 1000); // small, around zero
    case 1:
      return BigInt(next() | 0); // int4 range
    case 2: // full int8 range
      return BigInt.asIntN(64, (BigInt(next()) << 32n) | BigInt(next()));
    case 3: // near a power of two, either sign
      return (below(2) ? 1n : -1n) * ((1n << BigInt(below(63))) + BigInt(below(5) - 2));
    case 4:
      return BigInt(Math.floor((next() / 0x1_0000_0000) * 2 ** 53) * (below(2) ? 1 : -1));
    default:
      return pick([0n, 1n, -1n, INT64_MIN, INT64_MAX, INT64_MIN + 1n, INT64_MAX - 1n]);
  }
}

const ALPHABETS = [
  "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 -_.,:;'\"!?@#$%&*()[]{}",
  "éèêëàâäçñöüßÉÀÇøåæœÿ",
  "日本語中文한국어漢字東京北京서울",
  "🐘🚀😀🎉👍🏽🇫🇷❤️",
  "\t\n\r\\",
];

function randomText(): string {
  const kind = below(10);
  let length: number;
  if (kind < 5) length = below(30);
  else if (kind < 8) length = pick([11, 12, 13, 23, 24, 25, 35, 36, 37, 47, 48, 49]);
  else length = 100 + below(2000);
  // Mostly one alphabet per string, sometimes a mix.
  const mixed = below(3) === 0;
  let alphabet = [...pick(ALPHABETS)];
  let out = "";
  for (let i = 0; i < length; i++) {
    if (mixed) alphabet = [...pick(ALPHABETS)];
    out += pick(alphabet);
  }
  return out;
}

function randomUuidBytes(): Uint8Array {
  const bytes = new Uint8Array(16);
  for (let i = 0; i < 16; i += 4) {
    const w = next();
    bytes[i] = w;
    bytes[i + 1] = w >>> 8;
    bytes[i + 2] = w >>> 16;
    bytes[i + 3] = w >>> 24;
  }
  return bytes;
}

function hex(bytes: Uint8Array): string {
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

function uuidText(bytes: Uint8Array): string {
  const h = hex(bytes);
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
}

/** The same uuid in one of the text forms uuid_in accepts, or as raw bytes. */
function uuidInput(bytes: Uint8Array, i: number): string | Uint8Array {
  const canonical = uuidText(bytes);
  switch (i % 5) {
    case 0:
      return canonical;
    case 1:
      return canonical.toUpperCase();
    case 2:
      return hex(bytes);
    case 3:
      return `{${canonical}}`;
    default:
      return bytes;
  }
}

/** COPY text format: escape backslash, tab, newline and carriage return. */
function copyEscape(value: string): string {
  return value.replace(
    /[\\\t\n\r]/g,
    (c) => ({ "\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r" })[c]!,
  );
}

function copyBlock(table: string, rows: string[][]): string {
  return `copy ${table} from stdin;\n${
    rows.map((r) => r.map(copyEscape).join("\t")).join("\n")
  }\n\\.\n`;
}

const TYPES = ["bigint", "text", "uuid"] as const;
type KeyType = typeof TYPES[number];

function partitionDdl(type: KeyType, modulus: number): string {
  const parent = `h_${type}_${modulus}`;
  let sql = `create table ${parent} (id int, k ${type}) partition by hash (k);\n`;
  for (let r = 0; r < modulus; r++) {
    sql += `create table ${parent}_r${r} partition of ${parent} ` +
      `for values with (modulus ${modulus}, remainder ${r});\n`;
  }
  return sql + `insert into ${parent} select id, k from v_${type};\n`;
}

/** Strings whose acceptance by int8in / uuid_in is compared with parseBigint / parseUuid. */
const INT8_INPUTS = [
  "0",
  "-0",
  "+0",
  "42",
  " 42",
  "42 ",
  "\t\n 42 \r\n",
  "+42",
  "-42",
  "- 42",
  "+-42",
  "",
  " ",
  "+",
  "-",
  "1_000",
  "0x1F",
  "0o17",
  "0b101",
  "1.5",
  "1e3",
  "00000000000000000000000000042",
  "9223372036854775807",
  "9223372036854775808",
  "-9223372036854775808",
  "-9223372036854775809",
  "18446744073709551616",
  "12 34",
  "42abc",
];
const UUID_INPUTS = [
  "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11",
  "A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11",
  "{a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11}",
  "a0eebc999c0b4ef8bb6d6bb9bd380a11",
  "a0ee-bc99-9c0b-4ef8-bb6d-6bb9-bd38-0a11",
  "{a0eebc999c0b4ef8bb6d6bb9bd380a11}",
  "a0eebc99-9c0b4ef8-bb6d6bb9-bd380a11",
  "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a1",
  "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a111",
  "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11-",
  "-a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11",
  "a0e-ebc99-9c0b-4ef8-bb6d-6bb9bd380a11",
  "a0eebc99--9c0b-4ef8-bb6d-6bb9bd380a11",
  " a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11",
  "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11 ",
  "{a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11",
  "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11}",
  "(a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11)",
  "g0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11",
  "",
];

Deno.test("sharding hash = PostgreSQL PARTITION BY HASH (bigint, text, uuid; moduli 2, 3, 4, 12)", async (t) => {
  // Values: fixed edge cases first, then random ones.
  const bigints: bigint[] = [
    0n,
    1n,
    -1n,
    2n,
    -2n,
    100n,
    -100n,
    32767n,
    -32768n,
    2147483647n,
    -2147483648n,
    2n ** 32n - 1n,
    2n ** 32n,
    -(2n ** 32n),
    2n ** 53n,
    -(2n ** 53n),
    INT64_MAX,
    INT64_MIN,
  ];
  while (bigints.length < ROWS) bigints.push(randomBigint());
  const texts: string[] = [
    "",
    "a",
    " ",
    "apples",
    "us-east-1",
    "hello world",
    "é",
    "日本",
    "🐘",
    "naïve café",
    "12345678901",
    "123456789012",
    "1234567890123",
    "x".repeat(5000),
    "\\",
    "\t\n",
    "\\N",
  ];
  while (texts.length < ROWS) texts.push(randomText());
  const uuids: Uint8Array[] = [new Uint8Array(16), new Uint8Array(16).fill(0xff)];
  while (uuids.length < ROWS) uuids.push(randomUuidBytes());

  let script = "create table v_bigint (id int, k bigint);\n" +
    "create table v_text (id int, k text);\n" +
    "create table v_uuid (id int, k uuid);\n" +
    "create table inputs (id int, kind text, v text);\n" +
    copyBlock("v_bigint", bigints.map((v, i) => [String(i), String(v)])) +
    copyBlock("v_text", texts.map((v, i) => [String(i), v])) +
    copyBlock("v_uuid", uuids.map((v, i) => [String(i), uuidText(v)])) +
    copyBlock("inputs", [
      ...INT8_INPUTS.map((v, i) => [String(i), "int8", v]),
      ...UUID_INPUTS.map((v, i) => [String(i), "uuid", v]),
    ]);
  for (const type of TYPES) for (const m of MODULI) script += partitionDdl(type, m);
  script += `
create function try_int8(t text) returns text language plpgsql as $$
begin return t::int8::text; exception when others then return 'ERROR'; end $$;
create function try_uuid(t text) returns text language plpgsql as $$
begin return t::uuid::text; exception when others then return 'ERROR'; end $$;
`;
  // One result set: kind, id, then the facts to check.
  const selects: string[] = [];
  for (const type of TYPES) {
    for (const m of MODULI) {
      selects.push(`select 'part', '${type}', id, tableoid::regclass::text from h_${type}_${m}`);
    }
  }
  selects.push(
    `select 'hash', 'bigint', id, concat_ws(',', k::text, ${
      SEEDS.map((s) => `hashint8extended(k, ${s})`).join(", ")
    }) from v_bigint`,
    `select 'hash', 'text', id, concat_ws(',', encode(convert_to(k, 'UTF8'), 'hex'), ${
      SEEDS.map((s) => `hashtextextended(k, ${s})`).join(", ")
    }) from v_text`,
    `select 'hash', 'uuid', id, concat_ws(',', k::text, ${
      SEEDS.map((s) => `uuid_hash_extended(k, ${s})`).join(", ")
    }) from v_uuid`,
    `select 'input', kind, id, case kind when 'int8' then try_int8(v) else try_uuid(v) end from inputs`,
  );
  script += selects.join("\nunion all\n") + ";\n";

  await using pg = await startPostgres();
  const started = performance.now();
  const result = await psql(
    { host: pg.host, port: pg.port, user: "postgres", database: "postgres" },
    "",
    { stdin: script, extraArgs: ["-q", "-F", "\t"], timeoutMs: 120_000 },
  );
  assert.equal(result.code, 0, result.stderr);
  const elapsed = performance.now() - started;

  const partitions: Record<KeyType, Map<number, Map<number, number>>> = {
    bigint: new Map(),
    text: new Map(),
    uuid: new Map(),
  };
  const hashes: Record<KeyType, Map<number, string[]>> = {
    bigint: new Map(),
    text: new Map(),
    uuid: new Map(),
  };
  const inputs = { int8: new Map<number, string>(), uuid: new Map<number, string>() };
  for (const line of result.stdout.split("\n")) {
    if (line === "") continue;
    const [kind, type, idText, value] = line.split("\t");
    const id = Number(idText);
    if (kind === "part") {
      const match = /^h_(\w+?)_(\d+)_r(\d+)$/.exec(value);
      assert.ok(match, `partition name ${value}`);
      const modulus = Number(match[2]);
      const byId = partitions[type as KeyType];
      if (!byId.has(id)) byId.set(id, new Map());
      byId.get(id)!.set(modulus, Number(match[3]));
    } else if (kind === "hash") {
      hashes[type as KeyType].set(id, value.split(","));
    } else {
      inputs[type as "int8" | "uuid"].set(id, value);
    }
  }

  /** Compare every row's partition with shardFor(value, modulus). */
  function checkPartitions<T>(
    type: KeyType,
    values: T[],
    shardFor: (value: T, index: number, modulus: number) => number,
    show: (value: T) => string,
  ): void {
    assert.equal(partitions[type].size, values.length, `${type}: rows read back`);
    let checked = 0;
    const mismatches: string[] = [];
    values.forEach((value, i) => {
      const actual = partitions[type].get(i);
      assert.ok(actual && actual.size === MODULI.length, `${type} #${i}: in every table`);
      for (const m of MODULI) {
        const ours = shardFor(value, i, m);
        if (ours !== actual.get(m)) {
          mismatches.push(`${show(value)} mod ${m}: PostgreSQL ${actual.get(m)}, ours ${ours}`);
        }
        checked++;
      }
    });
    assert.deepEqual(mismatches.slice(0, 20), [], `seed ${SEED}: ${mismatches.length} mismatches`);
    assert.equal(checked, values.length * MODULI.length);
  }

  await t.step(`bigint: ${ROWS} values x 4 moduli (seed ${SEED})`, () => {
    checkPartitions("bigint", bigints, (v, _i, m) => shardForBigint(v, m), String);
  });

  await t.step(`text: ${ROWS} values x 4 moduli`, () => {
    checkPartitions("text", texts, (v, _i, m) => shardForText(v, m), (v) => JSON.stringify(v));
  });

  await t.step(`uuid: ${ROWS} values x 4 moduli (text forms and raw bytes)`, () => {
    checkPartitions("uuid", uuids, (v, i, m) => shardForUuid(uuidInput(v, i), m), uuidText);
  });

  /** Compare every value's stored form and its raw hashes (all seeds) with PostgreSQL's. */
  function checkHashes<T>(
    type: KeyType,
    values: T[],
    show: (value: T) => string,
    hash: (value: T, seed: bigint) => bigint,
  ): void {
    const mismatches: string[] = [];
    values.forEach((value, i) => {
      const row = hashes[type].get(i);
      assert.ok(row, `${type} #${i} read back`);
      const [stored, ...pgHashes] = row;
      assert.equal(stored, show(value), `${type} #${i} round-trips through COPY`);
      SEEDS.forEach((seed, s) => {
        const ours = BigInt.asIntN(64, hash(value, seed));
        if (String(ours) !== pgHashes[s]) {
          mismatches.push(
            `${type} ${stored} seed ${seed}: PostgreSQL ${pgHashes[s]}, ours ${ours}`,
          );
        }
      });
    });
    assert.deepEqual(mismatches.slice(0, 20), [], `${type}: ${mismatches.length} mismatches`);
  }

  await t.step(
    "raw 64-bit hashes equal hashint8extended/hashtextextended/uuid_hash_extended",
    () => {
      const encoder = new TextEncoder();
      checkHashes("bigint", bigints, String, hashInt8Extended);
      checkHashes(
        "text",
        texts,
        (v) => hex(encoder.encode(v)),
        (v, seed) => hashBytesExtended(encoder.encode(v), seed),
      );
      checkHashes("uuid", uuids, uuidText, hashBytesExtended);
    },
  );

  await t.step("parseBigint and parseUuid accept exactly what int8in and uuid_in accept", () => {
    INT8_INPUTS.forEach((text, i) => {
      const pgValue = inputs.int8.get(i);
      const ours = parseBigint(text);
      assert.equal(ours === null ? "ERROR" : String(ours), pgValue, `int8 ${JSON.stringify(text)}`);
    });
    UUID_INPUTS.forEach((text, i) => {
      const pgValue = inputs.uuid.get(i);
      const ours = parseUuid(text);
      assert.equal(
        ours === null ? "ERROR" : uuidText(ours),
        pgValue,
        `uuid ${JSON.stringify(text)}`,
      );
    });
  });

  console.log(
    `  PostgreSQL side (COPY ${3 * ROWS} rows, 12 partitioned tables, read back): ${
      Math.round(elapsed)
    } ms`,
  );
});

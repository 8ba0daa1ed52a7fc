/**
 * Schema sync for resharding: the source's schema, taken with `pg_dump --schema-only` of its
 * shard 0, applied to every new destination shard in two phases around the data copy, and the
 * sequences moved past the source's values at cutover.
 *
 * - `pre` (before the copy): schemas, extensions, types, functions, tables, sequences, views,
 *   primary keys and unique constraints, publications, and foreign keys added `NOT VALID` (the
 *   copy and the replicated changes run with `session_replication_role = replica`, so they are
 *   not checked row by row).
 * - `post` (once the copy is done): secondary indexes (`CONCURRENTLY` where PostgreSQL allows
 *   it, so replicated writes go on), then `VALIDATE CONSTRAINT` of those foreign keys, then
 *   triggers, rules, policies, comments, privileges and the rest.
 * - `cutover`: every sequence set past its greatest value over the source's shards, on every
 *   destination shard.
 *
 * Statements are split and classified with PostgreSQL's own parser (libpg-query). A statement
 * whose object already exists counts as done, so a phase can be run again. Growing in place,
 * destination shards that are source shards already have the schema and are left alone (but
 * for sequences at cutover).
 *
 * @module
 */

import { loadModule, parseSync } from "libpg-query";
import { PgConn, PgError } from "./pg_conn.ts";
import type { ServerLogin } from "../backend/connect.ts";
import { type ReshardingDatabase, ReshardingError, sharedShards } from "./shards.ts";

/** When a schema sync runs. */
export type SchemaSyncPhase = "pre" | "post" | "cutover";

/**
 * Where a statement is: `pending` (not run yet, or a dry run), `running`, `done`, `exists` (its
 * object was already there), `error` (failed; see `error`).
 */
export type SchemaSyncState = "pending" | "running" | "done" | "exists" | "error";

/** One statement on one destination shard (a row of `SHOW SCHEMA_SYNC`). */
export interface SchemaSyncRow {
  /** The destination database (its `[[databases]] name`). */
  database: string;
  /** The user schema sync connects as. */
  user: string;
  /** The destination shard. */
  shard: number;
  /**
   * What the statement makes: schema, extension, type, function, table, sequence, view, owner,
   * primary_key, unique, foreign_key, publication, index, validate, constraint, trigger, rule,
   * policy, statistics, comment, grant, other.
   */
  kind: string;
  sync_state: SchemaSyncState;
  /** When it started (null while pending). */
  started_at: Date | null;
  /** How long it ran (so far). */
  elapsed_ms: number;
  /** The table (or sequence, view) it is about, if any. */
  table_schema: string | null;
  table_name: string | null;
  sql: string;
  /** The server's message when it failed. */
  error: string | null;
}

/** Options of {@linkcode schemaSync}. */
export interface SchemaSyncOptions {
  source: ReshardingDatabase;
  destination: ReshardingDatabase;
  /** The publication on the source: only its tables (and what they need) are synced. */
  publication: string;
  phase: SchemaSyncPhase;
  /** Per destination shard, the source shard it is (growing in place) or -1; computed if unset. */
  shared?: number[];
  /**
   * Called with each row when it is planned (pending), when its statement starts and when it
   * ends: the same object each time, updated in place.
   */
  onStatement?: (row: SchemaSyncRow) => void;
  /** Plan only: the rows, all pending, nothing changed on the destination. */
  dryRun?: boolean;
  /** Go on after a statement fails (its row says `error`) instead of stopping. */
  ignoreErrors?: boolean;
  /** The pg_dump binary ("pg_dump" on PATH unless set). */
  pgDump?: string;
  /** Stops the phase: pg_dump is killed, a running statement cancelled, the rest not run. */
  signal?: AbortSignal;
}

/**
 * Runs one phase of the schema sync from `source` to `destination` and returns its rows
 * (ordered by shard, then as run). Throws ReshardingError naming the shard, the statement and
 * the server's message when a statement fails (unless `ignoreErrors`).
 */
export async function schemaSync(options: SchemaSyncOptions): Promise<SchemaSyncRow[]> {
  const { source, destination } = options;
  if (options.signal?.aborted) throw stopped(options);
  if (options.phase === "cutover") return await syncSequences(options);
  const shared = options.shared ?? sharedShards(source, destination);
  const sourceLogin = source.shards[0]?.primary;
  if (!sourceLogin) throw new ReshardingError(`database "${source.name}" has no shards`);
  const excluded = await unpublishedTables(sourceLogin, options.publication, source.name);
  const dump = await dumpSchema(sourceLogin, { pgDump: options.pgDump, signal: options.signal });
  if (options.signal?.aborted) throw stopped(options);
  const plan = await planSchema(dump, { excluded });
  const statements = options.phase === "pre" ? plan.pre : plan.post;
  const targets = destination.shards.filter((s) => (shared[s.shard] ?? -1) < 0);
  const perShard = targets.map((s) => ({
    login: s.primary,
    rows: statements.map((st) => newRow(destination, s.shard, st)),
  }));
  const rows = perShard.flatMap((p) => p.rows);
  for (const row of rows) options.onStatement?.(row);
  if (options.dryRun) return rows;
  const stop = { failed: false };
  const results = await Promise.allSettled(
    perShard.map((p) =>
      runStatements(p.login, { statements, rows: p.rows, session: plan.session, stop, options })
    ),
  );
  const failure = results.find((r) => r.status === "rejected");
  if (failure) throw (failure as PromiseRejectedResult).reason;
  return rows;
}

/** One statement of the dump as a phase runs it. */
export interface PlannedStatement {
  sql: string;
  kind: string;
  table: { schema: string; name: string } | null;
  /** Built CONCURRENTLY: an invalid index left by a failed build is dropped and built again. */
  concurrentIndex?: { schema: string; name: string };
}

/** A dump split into its phases. */
export interface SchemaPlan {
  /** Session settings (`SET ...`) every phase's connection runs first. */
  session: string[];
  pre: PlannedStatement[];
  post: PlannedStatement[];
}

// deno-lint-ignore no-explicit-any
type Node = any;

/**
 * Splits a plain `pg_dump --schema-only` script into the `pre` and `post` phases. Statements
 * that name a table in `excluded` ("schema.name", tables left out of the publication) are
 * dropped, and so are subscriptions and comments on extensions.
 */
export async function planSchema(
  dump: string,
  options: { excluded?: ReadonlySet<string> } = {},
): Promise<SchemaPlan> {
  const excluded = options.excluded ?? new Set<string>();
  const statements = await splitDump(withoutMetaCommands(dump));
  const session: string[] = [];
  const pre: PlannedStatement[] = [];
  const indexes: PlannedStatement[] = [];
  const validations: PlannedStatement[] = [];
  const rest: PlannedStatement[] = [];
  const partitioned = new Set<string>();
  const constraintIndexes = new Set<string>();
  const referenced = referencedKeys(statements);
  for (const { type, node, sql } of statements) {
    if (type === "VariableSetStmt" || (type === "SelectStmt" && /set_config/.test(sql))) {
      session.push(sql);
      continue;
    }
    if (type === "CreateSubscriptionStmt" || type === "AlterSubscriptionStmt") continue;
    // CREATE EXTENSION sets the same comment, and only the extension's owner may set it again.
    if (type === "CommentStmt" && node.objtype === "OBJECT_EXTENSION") continue;
    if (namesExcluded(type, node, excluded)) continue;
    const table = tableOf(type, node);
    const st = (kind: string, text = sql): PlannedStatement => ({ sql: text, kind, table });
    switch (type) {
      case "CreateSchemaStmt":
        pre.push(st("schema"));
        break;
      case "CreateExtensionStmt":
      case "AlterExtensionStmt":
        pre.push(st("extension"));
        break;
      case "CreateEnumStmt":
      case "CompositeTypeStmt":
      case "CreateRangeStmt":
      case "CreateDomainStmt":
      case "AlterEnumStmt":
        pre.push(st("type"));
        break;
      case "DefineStmt":
        pre.push(st(node.kind === "OBJECT_TYPE" ? "type" : "function"));
        break;
      case "CreateFunctionStmt":
        pre.push(st("function"));
        break;
      case "CreateStmt":
        if (node.partspec) partitioned.add(key(node.relation));
        pre.push(st("table"));
        break;
      case "CreateForeignTableStmt":
        pre.push(st("table"));
        break;
      case "CreateSeqStmt":
      case "AlterSeqStmt":
        pre.push(st("sequence"));
        break;
      case "ViewStmt":
      case "CreateTableAsStmt":
        pre.push(st("view"));
        break;
      case "AlterOwnerStmt":
        pre.push(st("owner"));
        break;
      case "CreatePublicationStmt":
      case "AlterPublicationStmt":
        pre.push(st("publication"));
        break;
      case "IndexStmt": {
        const index = { schema: node.relation.schemaname ?? "public", name: node.idxname };
        const columns = (node.indexParams ?? []).map((p: Node) => p.IndexElem?.name ?? "");
        if (
          node.unique && !node.whereClause && referenced.has(`${key(node.relation)}(${columns})`)
        ) {
          // A foreign key made in pre references it: a foreign key needs its unique index first.
          pre.push(st("unique"));
        } else if (!node.concurrent && node.relation.inh && !partitioned.has(key(node.relation))) {
          indexes.push({
            ...st(
              "index",
              sql.replace(/^CREATE (UNIQUE )?INDEX /i, "CREATE $1INDEX CONCURRENTLY "),
            ),
            concurrentIndex: index.name ? index : undefined,
          });
        } else {
          indexes.push(st("index"));
        }
        break;
      }
      case "CreateTrigStmt":
      case "CreateEventTrigStmt":
        rest.push(st("trigger"));
        break;
      case "RuleStmt":
        rest.push(st("rule"));
        break;
      case "CreatePolicyStmt":
        rest.push(st("policy"));
        break;
      case "CreateStatsStmt":
        rest.push(st("statistics"));
        break;
      case "CommentStmt":
        rest.push(st("comment"));
        break;
      case "GrantStmt":
      case "GrantRoleStmt":
      case "AlterDefaultPrivilegesStmt":
        rest.push(st("grant"));
        break;
      case "SecLabelStmt":
        rest.push(st("other"));
        break;
      case "AlterTableStmt": {
        const cmd = node.cmds?.[0]?.AlterTableCmd ?? {};
        const sub: string = cmd.subtype ?? "";
        const constraint = cmd.def?.Constraint;
        if (node.objtype === "OBJECT_INDEX" && sub === "AT_AttachPartition") {
          // Attaching a partition's primary key or unique index belongs with the constraint.
          if (constraintIndexes.has(key(node.relation))) pre.push(st("primary_key"));
          else indexes.push(st("index"));
        } else if (sub === "AT_AddConstraint" && constraint) {
          const name = { ...node.relation, relname: constraint.conname };
          if (constraint.contype === "CONSTR_PRIMARY" || constraint.contype === "CONSTR_UNIQUE") {
            if (constraint.conname) constraintIndexes.add(key(name));
            pre.push(st(constraint.contype === "CONSTR_PRIMARY" ? "primary_key" : "unique"));
          } else if (constraint.contype === "CONSTR_FOREIGN") {
            if (partitioned.has(key(node.relation))) {
              // PostgreSQL before 18 refuses NOT VALID on partitioned tables: made after the copy.
              validations.push(st("foreign_key"));
            } else if (constraint.skip_validation) {
              pre.push(st("foreign_key")); // NOT VALID on the source as well
            } else {
              pre.push(st("foreign_key", `${sql.replace(/;\s*$/, "")} NOT VALID`));
              const only = node.relation.inh ? "" : "ONLY ";
              validations.push(
                st(
                  "validate",
                  `ALTER TABLE ${only}${qualified(node.relation)} VALIDATE CONSTRAINT ${
                    ident(constraint.conname)
                  }`,
                ),
              );
            }
          } else {
            rest.push(st("constraint"));
          }
        } else if (sub === "AT_AddIdentity") {
          pre.push(st("sequence"));
        } else if (sub === "AT_ChangeOwner") {
          pre.push(st("owner"));
        } else if (
          sub === "AT_EnableRowSecurity" || sub === "AT_ForceRowSecurity" ||
          sub === "AT_DisableRowSecurity" || sub === "AT_NoForceRowSecurity"
        ) {
          rest.push(st("policy"));
        } else if (/^AT_(Enable|Disable)(Always|Replica)?Trig/.test(sub)) {
          rest.push(st("trigger"));
        } else if (/^AT_(Enable|Disable)(Always|Replica)?Rule/.test(sub)) {
          rest.push(st("rule"));
        } else if (sub === "AT_ReplicaIdentity" || sub === "AT_ClusterOn") {
          rest.push(st("other"));
        } else {
          pre.push(st("table"));
        }
        break;
      }
      default:
        pre.push(st("other"));
    }
  }
  return { session, pre, post: [...indexes, ...validations, ...rest] };
}

/** The columns foreign keys reference, as "schema.table(a,b)". */
function referencedKeys(statements: DumpStatement[]): Set<string> {
  const keys = new Set<string>();
  for (const { type, node } of statements) {
    if (type !== "AlterTableStmt") continue;
    for (const cmd of node.cmds ?? []) {
      const c = cmd.AlterTableCmd?.def?.Constraint;
      if (c?.contype !== "CONSTR_FOREIGN" || !c.pktable || !c.pk_attrs) continue;
      const columns = c.pk_attrs.map((a: Node) => a.String?.sval ?? "");
      keys.add(`${key(c.pktable)}(${columns})`);
    }
  }
  return keys;
}

/** One statement of the dump: its parse tree's node type, the node, its text. */
interface DumpStatement {
  type: string;
  node: Node;
  sql: string;
}

/** Where pg_dump's plain format starts an object: its `-- Name: ...` comment header. */
const TOC_ENTRY = /^--\n-- (?:Data for )?Name: /gm;

/**
 * The dump's statements. Each object pg_dump wrote is parsed on its own, giving the event loop
 * a turn every few milliseconds: one parse of a schema of thousands of tables would stall every
 * client of pgdog for the better part of a second.
 */
async function splitDump(text: string): Promise<DumpStatement[]> {
  await loadModule();
  const starts = [0, ...[...text.matchAll(TOC_ENTRY)].map((m) => m.index!), text.length];
  const out: DumpStatement[] = [];
  const encoder = new TextEncoder();
  const decoder = new TextDecoder();
  let pending = "";
  let slice = performance.now();
  for (let i = 0; i + 1 < starts.length; i++) {
    pending += text.slice(starts[i], starts[i + 1]);
    let tree: Node;
    try {
      tree = parseSync(pending);
    } catch (e) {
      // A header inside a function's body, say: parse it together with what follows.
      if (i + 2 < starts.length) continue;
      throw new ReshardingError(`pg_dump's output could not be parsed: ${(e as Error).message}`);
    }
    // The parser's offsets count UTF-8 bytes.
    const bytes = encoder.encode(pending);
    for (const raw of tree.stmts ?? []) {
      const at = raw.stmt_location ?? 0;
      const sql = decoder.decode(bytes.subarray(at, at + (raw.stmt_len || bytes.length - at)))
        .replace(/^(\s|--[^\n]*\n)+/, "").trim();
      const [type, node] = Object.entries(raw.stmt)[0] as [string, Node];
      out.push({ type, node, sql });
    }
    pending = "";
    if (performance.now() - slice > 10) {
      await new Promise((resolve) => setTimeout(resolve, 0));
      slice = performance.now();
    }
  }
  return out;
}

/**
 * The plain dump without psql's meta-commands: pg_dump 15.14 and later wrap the script in
 * `\restrict KEY` ... `\unrestrict KEY`, which is not SQL.
 */
function withoutMetaCommands(dump: string): string {
  const m = /^\\restrict (\S+)$/m.exec(dump);
  if (!m) return dump;
  return dump.replace(m[0], "").replace(`\\unrestrict ${m[1]}`, "");
}

/** Whether a statement names a table left out of the publication. */
function namesExcluded(type: string, node: Node, excluded: ReadonlySet<string>): boolean {
  if (excluded.size === 0) return false;
  let found = false;
  const walk = (n: Node): void => {
    if (found || n === null || typeof n !== "object") return;
    if (Array.isArray(n)) return n.forEach(walk);
    if (typeof n.relname === "string" && excluded.has(key(n))) {
      found = true;
      return;
    }
    for (const v of Object.values(n)) walk(v);
  };
  walk(node);
  if (found) return true;
  // Names given as lists of strings: comments on tables and columns, sequences' owners.
  const names = (list: Node): string[] =>
    (list?.List?.items ?? list ?? []).map((i: Node) => i?.String?.sval ?? "");
  if (
    type === "CommentStmt" && (node.objtype === "OBJECT_TABLE" || node.objtype === "OBJECT_COLUMN")
  ) {
    const parts = names(node.object);
    const [schema, name] = node.objtype === "OBJECT_COLUMN" ? parts.slice(-3) : parts.slice(-2);
    return excluded.has(`${schema}.${name}`);
  }
  if (type === "AlterSeqStmt") {
    for (const o of node.options ?? []) {
      if (o.DefElem?.defname !== "owned_by") continue;
      const parts = names(o.DefElem.arg);
      if (parts.length >= 3 && excluded.has(`${parts.at(-3)}.${parts.at(-2)}`)) return true;
    }
  }
  return false;
}

/** The table (or sequence, view) a statement is about, for its row. */
function tableOf(type: string, node: Node): { schema: string; name: string } | null {
  const rel = type === "CreatePolicyStmt"
    ? node.table
    : type === "CreateSeqStmt" || type === "AlterSeqStmt"
    ? node.sequence
    : type === "ViewStmt"
    ? node.view
    : type === "CreateTableAsStmt"
    ? node.into?.rel
    : node.relation;
  if (rel && typeof rel.relname === "string") {
    return { schema: rel.schemaname ?? "public", name: rel.relname };
  }
  return null;
}

function key(rel: { schemaname?: string; relname: string }): string {
  return `${rel.schemaname ?? "public"}.${rel.relname}`;
}

/** An identifier, quoted. */
function ident(name: string): string {
  return `"${name.replaceAll('"', '""')}"`;
}

function qualified(rel: { schemaname?: string; relname: string }): string {
  return `${ident(rel.schemaname ?? "public")}.${ident(rel.relname)}`;
}

function newRow(db: ReshardingDatabase, shard: number, st: PlannedStatement): SchemaSyncRow {
  return {
    database: db.name,
    user: db.user,
    shard,
    kind: st.kind,
    sync_state: "pending",
    started_at: null,
    elapsed_ms: 0,
    table_schema: st.table?.schema ?? null,
    table_name: st.table?.name ?? null,
    sql: st.sql,
    error: null,
  };
}

/** SQLSTATEs that say the object is already there (a phase run again). */
const ALREADY_EXISTS = new Set(["42P07", "42710", "42P06", "42723", "42P04", "42701"]);

function alreadyExists(e: PgError): boolean {
  return ALREADY_EXISTS.has(e.code) ||
    (e.code === "55000" && /already an identity column/.test(e.message)) ||
    (e.code === "42809" && /already a partition/.test(e.message)) ||
    (e.code === "42P16" && /multiple primary keys/.test(e.message));
}

/** Runs a phase's statements on one destination shard, in order. */
async function runStatements(
  login: ServerLogin,
  work: {
    statements: PlannedStatement[];
    rows: SchemaSyncRow[];
    session: string[];
    stop: { failed: boolean };
    options: SchemaSyncOptions;
  },
): Promise<void> {
  const { rows, statements, stop, options } = work;
  const { signal } = options;
  let conn: PgConn;
  try {
    conn = await connect(login);
  } catch (e) {
    stop.failed = true;
    throw new ReshardingError(
      `schema sync: cannot connect to ${login.host}:${login.port}/${login.database}: ${
        (e as Error).message
      }`,
    );
  }
  // Stopped: the statement running now is cancelled (a long index build, a wait for a lock).
  const cancel = () => void cancelBackend(login, conn.pid);
  signal?.addEventListener("abort", cancel, { once: true });
  try {
    if (work.session.length) await conn.query(work.session.join(";\n"));
    for (let i = 0; i < statements.length; i++) {
      if (stop.failed) return;
      if (signal?.aborted) {
        stop.failed = true;
        throw stopped(options);
      }
      const row = rows[i];
      const started = Date.now();
      row.sync_state = "running";
      row.started_at = new Date(started);
      options.onStatement?.(row);
      try {
        await runOne(conn, statements[i]);
        row.sync_state = "done";
      } catch (e) {
        if (!(e instanceof PgError)) {
          stop.failed = true;
          row.sync_state = "error";
          row.error = (e as Error).message;
          throw e;
        }
        if (signal?.aborted) {
          stop.failed = true;
          row.sync_state = "error";
          row.error = "stopped";
          throw stopped(options);
        }
        if (alreadyExists(e)) {
          row.sync_state = "exists";
        } else {
          row.sync_state = "error";
          row.error = e.message;
          if (!options.ignoreErrors || e.code === "08006") {
            stop.failed = true;
            throw new ReshardingError(
              `schema sync (${options.phase}) failed on shard ${row.shard} of "${row.database}": ` +
                `${e.message} [${e.code}]${e.fields.detail ? ` (${e.fields.detail})` : ""}${
                  e.code === "42704" && /^role /.test(e.message)
                    ? " (roles are not synced: create them on the destination first)"
                    : ""
                }, in: ${row.sql.slice(0, 300)}`,
            );
          }
        }
      } finally {
        row.elapsed_ms = Date.now() - started;
        options.onStatement?.(row);
      }
    }
  } finally {
    signal?.removeEventListener("abort", cancel);
    conn.close();
  }
}

/** A connection for schema sync (named so in pg_stat_activity). */
function connect(login: ServerLogin): Promise<PgConn> {
  return PgConn.connect({
    ...login,
    params: { ...login.params, application_name: "pgdog_schema_sync" },
  });
}

/** Cancels what backend `pid` runs (best effort). */
async function cancelBackend(login: ServerLogin, pid: number): Promise<void> {
  try {
    const conn = await connect(login);
    try {
      await conn.execute("SELECT pg_cancel_backend($1)", [String(pid)]);
    } finally {
      conn.close();
    }
  } catch {
    // Gone already, or unreachable: the statement ends with the connection.
  }
}

function stopped(options: SchemaSyncOptions): ReshardingError {
  return new ReshardingError(`schema sync (${options.phase}) stopped`);
}

/** Runs one statement; a concurrent index that a failed build left invalid is built again. */
async function runOne(conn: PgConn, st: PlannedStatement): Promise<void> {
  try {
    await conn.query(st.sql);
  } catch (e) {
    if (!(e instanceof PgError) || e.code !== "42P07" || !st.concurrentIndex) throw e;
    const { schema, name } = st.concurrentIndex;
    const valid = await conn.execute(
      "SELECT i.indisvalid FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid " +
        "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = $1 AND c.relname = $2",
      [schema, name],
    );
    if (valid.rows[0]?.[0] !== "f") throw e;
    await conn.query(`DROP INDEX CONCURRENTLY IF EXISTS ${ident(schema)}.${ident(name)}`);
    await conn.query(st.sql);
  }
}

/**
 * Tables of the source ("schema.name") that the publication leaves out; partitions and
 * partitioned parents of published tables count as published.
 */
async function unpublishedTables(
  login: ServerLogin,
  publication: string,
  database: string,
): Promise<Set<string>> {
  const conn = await connect(login);
  try {
    const pub = await conn.execute("SELECT 1 FROM pg_publication WHERE pubname = $1", [
      publication,
    ]);
    if (pub.rows.length === 0) {
      throw new ReshardingError(
        `publication "${publication}" does not exist on shard 0 of "${database}" ` +
          `(CREATE PUBLICATION ${ident(publication)} FOR ALL TABLES)`,
      );
    }
    const r = await conn.execute(
      `WITH pub AS (
         SELECT format('%I.%I', schemaname, tablename)::regclass AS rel
         FROM pg_publication_tables WHERE pubname = $1
       ), related AS (
         SELECT rel::oid AS relid FROM pub
         UNION SELECT a.relid::oid FROM pub, pg_partition_ancestors(pub.rel) a
         UNION SELECT t.relid::oid FROM pub, pg_partition_tree(pub.rel) t
       )
       SELECT n.nspname, c.relname FROM pg_class c
       JOIN pg_namespace n ON n.oid = c.relnamespace
       WHERE c.relkind IN ('r', 'p') AND n.nspname NOT IN ('pg_catalog', 'information_schema')
         AND n.nspname NOT LIKE 'pg\\_toast%' AND c.oid NOT IN (SELECT relid FROM related)`,
      [publication],
    );
    return new Set(r.rows.map(([schema, name]) => `${schema}.${name}`));
  } finally {
    conn.close();
  }
}

/** The schema of `login`'s database as `pg_dump --schema-only` prints it. */
export async function dumpSchema(
  login: ServerLogin,
  options: { pgDump?: string; signal?: AbortSignal } = {},
): Promise<string> {
  const program = options.pgDump ?? "pg_dump";
  const env: Record<string, string> = {
    PGHOST: login.host,
    PGPORT: String(login.port),
    PGUSER: login.user,
    PGDATABASE: login.database,
    PGSSLMODE: sslMode(login),
    PGCONNECT_TIMEOUT: "10",
    PGAPPNAME: "pgdog_schema_sync",
  };
  if (login.password !== undefined) env.PGPASSWORD = login.password;
  let out: Deno.CommandOutput;
  try {
    out = await new Deno.Command(program, {
      args: [
        "--schema-only",
        "--no-subscriptions",
        "--no-tablespaces",
        "--exclude-schema=pgdog_resharding",
      ],
      env,
      clearEnv: true,
      signal: options.signal,
      stdin: "null",
      stdout: "piped",
      stderr: "piped",
    }).output();
  } catch (e) {
    if (options.signal?.aborted) throw new ReshardingError("schema sync stopped (pg_dump killed)");
    if (e instanceof Deno.errors.NotFound) {
      throw new ReshardingError(
        `schema sync runs ${program}, which is not installed (or not on PATH)`,
      );
    }
    if (e instanceof Deno.errors.NotCapable || e instanceof Deno.errors.PermissionDenied) {
      throw new ReshardingError(
        `pgdog may not run ${program}: start it with --allow-run=deno,pg_dump (deno task start does)`,
      );
    }
    throw e;
  }
  if (options.signal?.aborted) throw new ReshardingError("schema sync stopped (pg_dump killed)");
  if (!out.success) {
    const why = new TextDecoder().decode(out.stderr).trim();
    throw new ReshardingError(
      `pg_dump of ${login.host}:${login.port}/${login.database} failed: ${
        why || `exit ${out.code}`
      }`,
    );
  }
  return new TextDecoder().decode(out.stdout);
}

function sslMode(login: ServerLogin): string {
  switch (login.tls?.mode) {
    case undefined:
      return "disable";
    case "verify_ca":
      return "verify-ca";
    case "verify_full":
      return "verify-full";
    default:
      return "prefer";
  }
}

/** A sequence's position: its last value, or null when never used. */
interface SequenceState {
  schema: string;
  name: string;
  last: bigint | null;
  ascending: boolean;
}

/** A shard's sequences; throws when the user may not read one (its value would look unused). */
async function readSequences(login: ServerLogin, where: string): Promise<SequenceState[]> {
  const conn = await connect(login);
  try {
    const r = await conn.query(
      "SELECT s.schemaname, s.sequencename, s.last_value, s.increment_by > 0, " +
        "has_sequence_privilege(c.oid, 'SELECT') FROM pg_sequences s " +
        "JOIN pg_namespace n ON n.nspname = s.schemaname " +
        "JOIN pg_class c ON c.relnamespace = n.oid AND c.relname = s.sequencename " +
        "WHERE s.schemaname NOT IN ('pg_catalog', 'information_schema', 'pgdog_resharding') " +
        "ORDER BY 1, 2",
    );
    const denied = r.rows.find((row) => row[4] !== "t");
    if (denied) {
      const name = `${ident(denied[0]!)}.${ident(denied[1]!)}`;
      throw new ReshardingError(
        `schema sync (cutover): ${login.user} may not read sequence ${name} on ${where} ` +
          `(GRANT SELECT, UPDATE ON SEQUENCE ${name} TO ${ident(login.user)})`,
      );
    }
    return r.rows.map(([schema, name, last, up]) => ({
      schema: schema!,
      name: name!,
      last: last === null ? null : BigInt(last),
      ascending: up === "t",
    }));
  } finally {
    conn.close();
  }
}

/** Cutover: each destination shard's sequences set past their greatest value on the source. */
async function syncSequences(options: SchemaSyncOptions): Promise<SchemaSyncRow[]> {
  const { source, destination } = options;
  const furthest = new Map<string, bigint>();
  const further = (s: SequenceState, a: bigint, b: bigint): bigint =>
    s.ascending ? (a > b ? a : b) : (a < b ? a : b);
  for (const shard of source.shards) {
    for (
      const s of await readSequences(shard.primary, `shard ${shard.shard} of "${source.name}"`)
    ) {
      if (s.last === null) continue;
      const k = `${s.schema}.${s.name}`;
      const seen = furthest.get(k);
      furthest.set(k, seen === undefined ? s.last : further(s, seen, s.last));
    }
  }
  const rows: SchemaSyncRow[] = [];
  let failure: unknown = null;
  for (const shard of destination.shards) {
    const sequences = await readSequences(
      shard.primary,
      `shard ${shard.shard} of "${destination.name}"`,
    );
    const planned: { row: SchemaSyncRow; sql: string }[] = [];
    for (const s of sequences) {
      const k = `${s.schema}.${s.name}`;
      const from = furthest.get(k);
      if (from === undefined) continue;
      const value = s.last === null ? from : further(s, from, s.last);
      const sql = `SELECT setval(${
        literal(`${ident(s.schema)}.${ident(s.name)}`)
      }, ${value}, true)`;
      const row = newRow(destination, shard.shard, {
        sql,
        kind: "sequence",
        table: { schema: s.schema, name: s.name },
      });
      rows.push(row);
      planned.push({ row, sql });
      options.onStatement?.(row);
    }
    if (options.dryRun || planned.length === 0) continue;
    try {
      await runStatements(shard.primary, {
        statements: planned.map((p) => ({ sql: p.sql, kind: "sequence", table: null })),
        rows: planned.map((p) => p.row),
        session: [],
        stop: { failed: false },
        options,
      });
    } catch (e) {
      failure = e;
      break;
    }
  }
  if (failure) throw failure;
  return rows;
}

/** A string literal. */
function literal(text: string): string {
  return `'${text.replaceAll("'", "''")}'`;
}

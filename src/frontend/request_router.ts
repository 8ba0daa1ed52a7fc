/**
 * Routing one client request: the host role it needs (primary or replica), and on a sharded
 * database the shards it runs on, returned as a value ({@linkcode ShardRoute}) for the client to
 * act on (take that shard's server, or run the request on several). Asks the route plugins
 * (which may block, rewrite or route it), reads column orders from the catalog and plugin
 * hashers when a decision needs them. The pure parts (what is held back, the role, the shards
 * from a decision) are src/router/request_route.ts, which `pgdog route` uses too.
 *
 * @module
 */

import { decodeText, type ErrorFields, Msg, queryMessage, TxStatus } from "../protocol/messages.ts";
import { SqlState } from "../protocol/sqlstate.ts";
import { bindValues, scanRequest } from "../protocol/frontend_messages.ts";
import type { MessageBuffer } from "../net/message_buffer.ts";
import type { Server } from "../backend/server.ts";
import { ClientFacingError, type Pool } from "../backend/pool.ts";
import type { Cluster } from "../backend/databases.ts";
import { learnAggregates, learnColumnOrders } from "../backend/catalog.ts";
import {
  type Analysis,
  ANALYZE_MAX,
  ANALYZE_ON_LOOP_MAX,
  type QueryRouter,
} from "../router/mod.ts";
import { mayAffectSession } from "../router/scan.ts";
import { mayCallUniqueId } from "../router/unique_id_calls.ts";
import type { UniqueIdGenerator } from "../sharding/unique_id.ts";
import { chooseRole, parseRole, type ReadWriteStrategy, type Role } from "../router/route.ts";
import { crossShardDisabled, shardsFor } from "../router/request_route.ts";
import { changesTables, createsTemporaryTable } from "../router/columns.ts";
import {
  type BindValues,
  decideShard,
  isSessionControl,
  searchPathSet,
  type ShardDecision,
  type ShardingConfig,
  type ShardLookup,
  type ShardSession,
} from "../router/shard.ts";
import type { CopyInRoute } from "../router/shard_keys.ts";
import type { PluginSet, RouteVerdict } from "../plugin/mod.ts";
import { errorMessage, log, logEnabled } from "../log.ts";
import { rewrittenParse, routeContextJson } from "./plugin_context.ts";
import { bindStatementName, type ClientStatements, describedName, parseQuery } from "./prepared.ts";
import type { SessionState } from "./session.ts";
import type { Forwarder } from "./forward.ts";
import type { LocalAnswers } from "./local_answers.ts";
import type { RoutedMessage } from "./routed_message.ts";
import type { ShardTransaction } from "./shard_transaction.ts";
import { type MergePlan, PASS_THROUGH } from "../cross_shard/plan.ts";
import type { KeyUpdatePlan, SplitInsertPlan } from "../router/split_insert_plan.ts";
import { NonDeterministicRewrite } from "./non_deterministic_run.ts";
import { askPluginHashers } from "./plugin_hashers.ts";
import { executeLimits } from "./insert_split.ts";
import type { SplitRun } from "./split_request.ts";

/** Where a request on a sharded database runs: the value routing returns. */
export interface ShardRoute {
  /** The shards, ascending where there are several; one shard: its server takes the request. */
  shards: number[];
  /** Writes to omnisharded tables: every shard runs it, the client sees one shard's answer. */
  omniWrite: boolean;
  /** COPY TO of several shards in text or CSV with HEADER: only the first header line is sent. */
  copyHeader?: boolean;
  /** COPY FROM STDIN on several shards: the rows are split among them (copy_in_run.ts). */
  copyIn?: CopyInRoute;
  /** The request runs nothing (Parse, Describe) and opens no transaction on its shard. */
  outsideTransaction: boolean;
  /** A cross-shard statement whose answers pgdog merges by this plan. */
  merge: MergePlan | null;
  /** A multi-row INSERT split by shard: each shard runs its own statement (see insert_split.ts). */
  splitInsert: SplitInsertPlan | null;
  /** An UPDATE of a row's sharding key that moves it to another shard (see key_move.ts). */
  keyUpdate: KeyUpdatePlan | null;
}

/** What routing reads of the client (and the few things it asks it to do). */
export interface RouterClient {
  readonly id: number;
  readonly user: string;
  readonly database: string;
  readonly cluster: Cluster | null;
  readonly sharding: ShardingConfig | null;
  readonly router: QueryRouter;
  /** The routing plugins (null when none is configured). */
  readonly plugins: PluginSet | null;
  /** `pgdog.unique_id()`. */
  readonly uniqueIdGenerator: UniqueIdGenerator;
  readonly strategy: ReadWriteStrategy;
  /** Statements are parsed to route them. */
  readonly routing: boolean;
  readonly renaming: boolean;
  /** `pgdog.role` from the startup packet. */
  readonly startupRole: Role | null;
  readonly closed: boolean;
  readonly server: Server | null;
  /** The attached server got a Flush and no Sync since. */
  readonly unsynced: boolean;
  readonly deferredBegin: Uint8Array | null;
  /** The split request running, if any. */
  readonly split: SplitRun | null;
  readonly session: SessionState;
  readonly statements: ClientStatements;
  readonly rbuf: MessageBuffer;
  readonly msg: RoutedMessage;
  readonly forwarder: Forwarder;
  readonly txn: ShardTransaction;
  readonly local: LocalAnswers;
  txStatus(): number;
  /** DDL passed through: the database's column orders are read again everywhere. */
  tablesChanged(): void;
  /** Fails the other shards' parts of a multi-shard transaction that failed on one. */
  abortEverywhere(): Promise<void>;
  /** The gate (PAUSE, MAINTENANCE, RELOAD) would let a new transaction through as it is. */
  gateOpen(): boolean;
  /** Waits at the gate; false when the client was told to go (and closed). */
  atGate(): Promise<boolean>;
}

/** One client's request routing. */
export class RequestRouter {
  readonly #client: RouterClient;

  constructor(client: RouterClient) {
    this.#client = client;
  }

  /**
   * A large Query, Parse or Bind: its statement is parsed off the event loop now (by the parse
   * worker; the query router keeps the answer for the synchronous calls that follow).
   */
  async prepareLarge(type: number, buf: Uint8Array, p: number, end: number): Promise<void> {
    const c = this.#client;
    // Short texts are analyzed on the event loop; texts beyond ANALYZE_MAX are not parsed at all.
    if (end - p <= ANALYZE_ON_LOOP_MAX || end - p > 4 * ANALYZE_MAX) return;
    // Without routing, only pgdog.unique_id() calls matter (and they mention pgdog).
    if (!c.routing && (type !== Msg.Query || !mayAffectSession(buf, p + 5, end - 1))) return;
    const router = c.router;
    const sql = type === Msg.Query
      ? decodeText(buf, p + 5, end - 1)
      : type === Msg.Parse
      ? parseQuery(buf, p, end)
      : c.forwarder.uniqueIdRun(bindStatementName(buf, p, end), p);
    if (sql === null || !router.needsPreparing(sql)) return;
    if (!c.routing && !mayCallUniqueId(sql)) return;
    await router.prepare(sql, {
      uniqueIds: type === Msg.Query ? () => c.uniqueIdGenerator.nextText() : undefined,
      // Sharded: a multi-statement query is cut where the statements of the text as written end.
      rawTree: c.plugins?.needsTree === true ||
        (c.sharding !== null && type === Msg.Query),
    });
  }

  /** A new request: what a plugin chose for the last one no longer stands. */
  newRequest(): void {
    this.#pluginRole = null;
  }

  /**
   * The host a request starting with this message needs. Without routing (no replicas), the
   * primary; otherwise the statement decides, unless a comment, SET pgdog.role or the startup
   * parameter says otherwise.
   */
  role(type: number, buf: Uint8Array, p: number, end: number): Role {
    const c = this.#client;
    if (this.#pluginRole !== null) return this.#pluginRole;
    const override = parseRole(c.session.pgdogLocal.get("role")) ??
      parseRole(c.session.pgdog.get("role")) ??
      c.startupRole;
    if (!c.routing) return override ?? "primary";
    return chooseRole(this.analysisOf(type, buf, p, end), {
      override,
      strategy: c.strategy,
      deferredBegin: c.deferredBegin !== null,
    });
  }

  /** The analysis of the statement a message runs, when routing can know it. */
  analysisOf(type: number, buf: Uint8Array, p: number, end: number): Analysis | null {
    const c = this.#client;
    if (type === Msg.Query) {
      return c.msg.analysis ?? c.router.analyze(decodeText(buf, p + 5, end - 1));
    } else if (type === Msg.Parse) {
      return c.msg.analysis;
    } else if (type === Msg.Bind) {
      const name = bindStatementName(buf, p, end);
      const run = c.forwarder.uniqueIdRun(name, p);
      if (run !== null) return c.router.analyze(run);
      return this.#statementAnalysis(name);
    } else if (type === Msg.Describe && buf[p + 5] === 0x53) {
      return this.#statementAnalysis(describedName(buf, p, end));
    }
    return null;
  }

  /** The analysis of a prepared statement (named `""`: the unnamed one). */
  #statementAnalysis(name: string): Analysis | null {
    const c = this.#client;
    if (name === "") return c.forwarder.unnamedAnalysis;
    const stmt = c.statements.get(name);
    if (stmt === undefined) return null;
    // Prepared while routing was off (a RELOAD has sharded the database since): analyzed now.
    if (stmt.analysis === null && c.routing) {
      stmt.analysis = c.router.analyze(stmt.query);
    }
    return stmt.analysis;
  }

  /**
   * The shards of the request starting with this message (the whole request is buffered), or
   * "done" when routing answered it (a statement that can't run sharded, a lookup or plugin
   * error, a block), or "go" when the database is no longer sharded (a RELOAD while deciding).
   * Keeps the transaction's bookkeeping on the way: a failed multi-shard transaction fails
   * everywhere, SET LOCAL search_path and savepoints join what is replayed on later shards.
   */
  async shardRoute(
    type: number,
    buf: Uint8Array,
    p: number,
    end: number,
  ): Promise<ShardRoute | "go" | "done"> {
    const c = this.#client;
    const config = c.sharding!;
    let analysis = this.analysisOf(type, buf, p, end);
    const { bind, executes, limited } = this.#requestAt(type, buf, p, end);
    if (!c.txn.empty) await c.abortEverywhere();
    if (c.closed) return "done";
    const inTxn = c.txStatus() !== TxStatus.Idle;
    const tx = analysis?.info.transaction;
    const ownTxn = inTxn || c.deferredBegin !== null;
    if (!ownTxn || tx === "commit" || tx === "rollback" || tx === "begin") {
      this.#nonDeterministic.transactionOver();
    }
    const set = analysis ? searchPathSet(analysis) : null;
    if (set !== null && inTxn) c.txn.searchPath = set;
    const session = this.shardSession();
    const runs = analysis !== null && (type === Msg.Query || executes);
    let lookup: ShardLookup | null = null;
    let decision: ShardDecision;
    if (!runs) decision = { target: { kind: "any" }, reason: "nothing to run", omniWrite: false };
    else {
      lookup = { found: [], pluginShards: new Map(), missing: [] };
      const decided = await this.#decideShard(analysis!, { config, session, bind, lookup }, type);
      if (decided === null) return "done";
      decision = decided;
    }
    const plugins = c.plugins;
    if (runs && plugins !== null && plugins.routes) {
      const t = decision.target;
      const verdict = await this.#askPlugins(type, buf, p, end, {
        analysis: analysis!,
        bind,
        shard: t.kind === "one" ? t.shard : t.kind === "any" ? null : "all",
        keys: lookup!.found,
      });
      if (c.closed) return "done";
      const next = this.#applyVerdict(verdict, type, buf, p, end);
      if (next === "done") return "done";
      if (next !== null && next !== analysis) {
        analysis = next;
        lookup = { found: [], pluginShards: new Map(), missing: [] };
        const decided = await this.#decideShard(analysis, { config, session, bind, lookup }, type);
        if (decided === null) return "done";
        decision = decided;
      }
      if (verdict.shard !== undefined) {
        decision = {
          target: verdict.shard === "all" ? { kind: "all" } : { kind: "one", shard: verdict.shard },
          reason: `plugin ${verdict.by.shard}`,
          omniWrite: false,
          unsupported: verdict.shard === "all" ? decision.unsupported : undefined,
        };
      }
    }
    if (c.server === null && c.txn.empty && !c.gateOpen()) {
      // RELOAD or MAINTENANCE came while deciding: decide again by what is in force after it.
      if (!(await c.atGate())) return "done";
      return c.sharding === null ? "go" : await this.shardRoute(type, buf, p, end);
    }
    if (decision.unsupported) {
      c.local.answerError({
        severity: "ERROR",
        code: SqlState.FeatureNotSupported,
        message: decision.unsupported,
      }, type === Msg.Query);
      return "done";
    }
    const rewritten = decision.splitInsert ?? decision.keyUpdate;
    // Its RETURNING rows are put together from several shards at the end: an Execute asking for
    // no more rows than it returns suspends the portal, which outside a transaction ends at the
    // request's Sync (the rows asked for are the whole answer); in one, a later Execute could ask
    // for the rest, which pgdog can't give yet.
    const limits = limited
      ? executeLimits(buf, type === Msg.Bind ? p : c.rbuf.start, c.rbuf.end)
      : { maxRows: 0, executes: 0 };
    const maxRows = limits.maxRows;
    if (
      maxRows > 0 &&
      ((decision.splitInsert?.returning === true && maxRows <= decision.splitInsert.rowCount) ||
        ((decision.keyUpdate?.returning ?? null) !== null && maxRows <= 1)) &&
      // (Outside a transaction it runs as a split request of its own, in pgdog's implicit
      // transaction; a pipeline cut into several may execute the portal again.)
      (c.split?.implicit !== true || c.split.ends.length > 1 || limits.executes > 1)
    ) {
      c.local.answerError({
        severity: "ERROR",
        code: SqlState.FeatureNotSupported,
        message: `the write to ${rewritten!.table} runs on several shards, and its RETURNING ` +
          `rows fetched ${maxRows} at a time (a cursor or fetch size: Execute with max rows) ` +
          "inside a transaction or executed again are not supported: execute it for all its " +
          "rows (max rows 0)",
      }, type === Msg.Query);
      return "done";
    }
    if (
      rewritten && c.txStatus() === TxStatus.Idle && c.txn.prelude.length === 0 &&
      c.deferredBegin === null
    ) {
      // A split INSERT or a row's move runs in a transaction on its shards (split_request.ts
      // opens it): never as independent commits.
      c.local.answerError({
        severity: "ERROR",
        code: SqlState.FeatureNotSupported,
        message: `the write to ${rewritten.table} runs on several shards, and pgdog could not ` +
          "run it in a transaction: send it as a statement of its own",
      }, type === Msg.Query);
      return "done";
    }
    const held = c.txn.heldShards(c.cluster!, c.server);
    const control = analysis !== null && isSessionControl(analysis);
    const picked = shardsFor(decision, {
      shards: config.shards,
      held,
      control,
      failed: c.txStatus() === TxStatus.Failed,
    });
    const shards = picked === "any" ? [c.txn.anyShard(c.cluster!, config.shards)] : picked;
    const disabled = crossShardDisabled(decision, { config, shards: shards.length, control });
    if (disabled !== null) {
      c.local.answerError({ severity: "ERROR", ...disabled }, type === Msg.Query);
      return "done";
    }
    if (shards.length > 1 && runs && config.nonDeterministic && analysis!.info.write) {
      const error = await this.#nonDeterministic.rewrite(c, {
        type,
        buf,
        p,
        end,
        bufferEnd: c.rbuf.end,
        shard: shards[0],
        inTransaction: ownTxn,
        everyShardAlike: decision.omniWrite,
      });
      if (c.closed) return "done";
      // (Inside a transaction a simple query goes on as one raising the error on its shards.)
      if (error !== null && this.#refuse(error, type)) return "done";
    }
    if (logEnabled("debug")) {
      log.debug(`client ${c.id}: shards ${shards.join(",")} (${decision.reason})`);
    }
    if (analysis) {
      if (shards.length === 1) analysis.entry.direct++;
      else analysis.entry.multi++;
    }
    if (set !== null && inTxn && type === Msg.Query) {
      c.txn.prelude.push(buf.slice(p, end));
    } else if (
      !inTxn && type === Msg.Query && control && (tx === "begin" || tx === "begin_read_only")
    ) {
      // A BEGIN sent to the servers held (session mode): shards reached later start as it did.
      c.txn.opener = buf.slice(p, end);
    }
    if (control && inTxn && runs && analysis!.info.transaction === "savepoint") {
      c.txn.noteSavepoint(analysis!, false);
    }
    return {
      shards,
      omniWrite: decision.omniWrite,
      copyHeader: decision.copyHeader,
      copyIn: shards.length > 1 ? decision.copyIn : undefined,
      merge: shards.length <= 1
        ? null
        : decision.merge ?? (limited && decision.concatenates && !decision.omniWrite &&
            isSelect(analysis)
          // Fetched in parts: the merge gives at most the rows asked for, as one server would.
          ? PASS_THROUGH
          : null),
      splitInsert: shards.length > 1 ? decision.splitInsert ?? null : null,
      keyUpdate: shards.length > 1 ? decision.keyUpdate ?? null : null,
      // A request that runs nothing (Parse, Describe) must not open the held-back transaction on
      // the shard it happens to use: the transaction's first statement picks its shards.
      outsideTransaction: !runs && held.length === 0,
    };
  }

  /**
   * decideShard, with the column orders (INSERT without a column list, read from shard 0's
   * catalog), the database's own aggregates (a statement for several shards calling functions
   * routing doesn't know) and the answers of plugin hashers (`hasher = "plugin:<name>"`) it needs:
   * asked after a pass finds them missing, then it decides again. Null when a lookup failed (the
   * client has its error). DDL makes the database's column orders and aggregates be read again.
   */
  async #decideShard(
    analysis: Analysis,
    options: {
      config: ShardingConfig;
      session: ShardSession;
      bind: BindValues | null;
      lookup: ShardLookup;
    },
    type: number,
  ): Promise<ShardDecision | null> {
    const c = this.#client;
    const { config, session, lookup } = options;
    const bind = options.bind ?? undefined;
    const cluster = c.cluster!;
    const ddl = changesTables(analysis);
    if (ddl) {
      // Forgotten now and again when the transaction ends (reads meanwhile see the old tables).
      cluster.columns.clear();
      c.tablesChanged();
      this.ddlInTransaction = true;
      this.#tempTables ||= createsTemporaryTable(analysis);
    }
    const names = { user: c.user, searchPath: session.searchPath };
    // Others' column orders may not be this session's (its temporary tables hide theirs).
    const ownTables = this.ddlInTransaction || this.#tempTables;
    lookup.columns = ownTables ? undefined : (table) => cluster.columns.get(table, names);
    lookup.missingColumns = [];
    lookup.aggregates = ownTables ? undefined : cluster.columns.aggregates;
    lookup.missingAggregates = false;
    let decision = decideShard(analysis, { config, session, bind, lookup });
    // The database's own aggregates matter to a statement for several shards.
    const several = decision.target.kind === "all" || decision.target.kind === "some";
    // With DDL in the same query, the catalog can't tell yet: decideShard's refusal stands.
    if ((lookup.missingColumns.length > 0 || (lookup.missingAggregates && several)) && !ddl) {
      const catalog = {
        cluster,
        held: this.#catalogServer(),
        ownTables,
        timeoutMs: cluster.settings.checkoutTimeout,
      };
      try {
        if (lookup.missingColumns.length > 0) {
          lookup.columns = await learnColumnOrders(lookup.missingColumns, { ...names, ...catalog });
        }
        if (lookup.missingAggregates && several) {
          lookup.aggregates = await learnAggregates(catalog);
        }
      } catch (e) {
        if (!(e instanceof ClientFacingError)) throw e;
        c.local.answerError(e.fields, type === Msg.Query);
        return null;
      }
      lookup.found = [];
      lookup.missing = [];
      lookup.missingColumns = [];
      lookup.missingAggregates = false;
      decision = decideShard(analysis, { config, session, bind, lookup });
    }
    if (lookup.missing.length === 0) return decision;
    try {
      await askPluginHashers(c.plugins, lookup, { shards: config.shards, database: c.database });
    } catch (e) {
      this.#answerPluginError(errorMessage(e), type);
      return null;
    }
    lookup.found = [];
    lookup.missing = [];
    return decideShard(analysis, { config, session, bind, lookup });
  }

  /** The session's manual routing and search_path, as shard decisions see them. */
  shardSession(): ShardSession {
    const c = this.#client;
    return {
      shard: c.session.pgdogLocal.get("shard") ?? c.session.pgdog.get("shard"),
      shardingKey: c.session.pgdogLocal.get("sharding_key") ??
        c.session.pgdog.get("sharding_key"),
      searchPath: c.txn.searchPath ?? c.session.params.get("search_path"),
    };
  }

  /** DDL ran in the open transaction: column orders are read again once it ends. */
  ddlInTransaction = false;
  /** `[rewrite] non_deterministic_functions = "rewrite"`, with the transaction's instant. */
  readonly #nonDeterministic = new NonDeterministicRewrite();

  /** The client's transaction ended (however: pgdog's own multi-shard COMMIT included). */
  transactionOver(): void {
    this.#nonDeterministic.transactionOver();
  }
  /** The session has created temporary tables. */
  #tempTables = false;

  /** The client's own server on shard 0, if it holds one with nothing outstanding (catalog reads). */
  #catalogServer(): Server | null {
    const c = this.#client;
    const server = c.server !== null && c.cluster!.shardOf(c.server.owner as Pool) === 0
      ? c.server
      : c.txn.parked.get(0) ?? null;
    return server !== null && server.queue.length === 0 &&
        !(server === c.server && c.unsynced)
      ? server
      : null;
  }

  /** The role a plugin chose for the request being routed (it beats comments and SET). */
  #pluginRole: Role | null = null;

  /**
   * Asks the route plugins about the request starting with this message, without sharding.
   * "done" when they answered it (blocked, or failed with on_error = error).
   */
  async routePlugins(
    type: number,
    buf: Uint8Array,
    p: number,
    end: number,
  ): Promise<"go" | "done"> {
    const c = this.#client;
    const analysis = this.analysisOf(type, buf, p, end);
    if (analysis === null) return "go";
    const { bind, executes } = this.#requestAt(type, buf, p, end);
    if (type !== Msg.Query && !executes) return "go";
    const verdict = await this.#askPlugins(type, buf, p, end, {
      analysis,
      bind,
      shard: null,
      keys: [],
    });
    if (c.closed) return "done";
    return this.#applyVerdict(verdict, type, buf, p, end) === "done" ? "done" : "go";
  }

  /** What the (buffered) request starting with this message binds, and whether it executes. */
  #requestAt(
    type: number,
    buf: Uint8Array,
    p: number,
    end: number,
  ): { bind: BindValues | null; executes: boolean; limited: boolean } {
    const c = this.#client;
    const request = scanRequest(buf, type === Msg.Bind ? p : c.rbuf.start, c.rbuf.end);
    return {
      bind: type === Msg.Bind ? bindValues(buf, p, end) : request.bind,
      executes: request.executes || type === Msg.Execute,
      limited: request.limited,
    };
  }

  /** The statement's text: the message's own, or the prepared statement's a Bind runs. */
  #statementSql(type: number, buf: Uint8Array, p: number, end: number, analysis: Analysis): string {
    const c = this.#client;
    if (type === Msg.Query) return decodeText(buf, p + 5, end - 1);
    if (type === Msg.Parse) return parseQuery(buf, p, end);
    if (type === Msg.Bind) {
      const name = bindStatementName(buf, p, end);
      if (name === "") return c.forwarder.unnamedSql ?? analysis.entry.query;
      return c.statements.get(name)?.query ?? analysis.entry.query;
    }
    return analysis.entry.query;
  }

  /** Calls every route plugin with this statement's context and merges their answers. */
  #askPlugins(
    type: number,
    buf: Uint8Array,
    p: number,
    end: number,
    found: {
      analysis: Analysis;
      bind: BindValues | null;
      shard: number | "all" | null;
      keys: ShardLookup["found"];
    },
  ): Promise<RouteVerdict> {
    const c = this.#client;
    const plugins = c.plugins!;
    const { analysis } = found;
    const sql = this.#statementSql(type, buf, p, end, analysis);
    const shards = c.cluster!.shards.length;
    const replicas = c.cluster!.hasReplicas;
    const applicationName = c.session.params.get("application_name") ?? "";
    return plugins.route({
      sql,
      shape: analysis.entry.query,
      user: c.user,
      database: c.database,
      applicationName,
      shards,
      replicas,
      context: () =>
        routeContextJson({
          sql,
          treeJson: plugins.needsTree ? c.router.treeJson(analysis, sql) : "null",
          bind: found.bind,
          tablesJson: analysis.entry.tablesJson ??= JSON.stringify(analysis.info.tables),
          keys: found.keys,
          write: analysis.info.write,
          inTransaction: c.txStatus() !== TxStatus.Idle,
          shards,
          replicas,
          role: this.role(type, buf, p, end),
          shard: found.shard,
          user: c.user,
          database: c.database,
          applicationName,
        }),
    });
  }

  /**
   * Acts on the plugins' verdict: an error or a block answers the request ("done"); a rewrite
   * replaces the message (the new statement's analysis is returned); a role is kept for #route.
   */
  #applyVerdict(
    verdict: RouteVerdict,
    type: number,
    buf: Uint8Array,
    p: number,
    end: number,
  ): "done" | Analysis | null {
    const c = this.#client;
    if (verdict.error !== undefined) {
      return this.#answerPluginError(verdict.error, type) ? "done" : null;
    }
    if (verdict.block !== undefined) {
      const fields: ErrorFields = {
        severity: "ERROR",
        code: SqlState.InsufficientPrivilege,
        message: verdict.block,
        detail: `blocked by plugin "${verdict.by.block}"`,
      };
      return this.#refuse(fields, type) ? "done" : null;
    }
    if (verdict.role !== undefined) this.#pluginRole = verdict.role;
    const current = this.analysisOf(type, buf, p, end);
    if (verdict.rewrite === undefined) return current;
    const sql = verdict.rewrite;
    const unnamedOrSession = type === Msg.Parse &&
      (!c.renaming || buf.indexOf(0, p + 5) === p + 5);
    if (type !== Msg.Query && !unnamedOrSession) {
      const why = `plugin "${verdict.by.rewrite}": a rewrite can't change a named prepared ` +
        "statement (only simple queries and unnamed statements)";
      if (c.plugins?.onError(verdict.by.rewrite!) === "error") {
        return this.#answerPluginError(why, type) ? "done" : null;
      }
      log.warn(`${why}; ignored`);
      return current;
    }
    if (logEnabled("debug")) {
      log.debug(`client ${c.id}: plugin ${verdict.by.rewrite} rewrote the statement: ${sql}`);
    }
    const analysis = c.router.analyze(sql);
    const msg = c.msg;
    if (type === Msg.Query) {
      msg.substitute = queryMessage(sql);
      msg.analysis = analysis;
    } else {
      msg.substitute = rewrittenParse(buf, p, end, sql);
      msg.analysis = analysis;
      if (buf.indexOf(0, p + 5) === p + 5) {
        c.forwarder.unnamedAnalysis = analysis;
        c.forwarder.unnamedSql = sql;
      }
    }
    return analysis;
  }

  /** A request fails with a plugin's error (SQLSTATE 58000); see #refuse. */
  #answerPluginError(message: string, type: number): boolean {
    return this.#refuse({ severity: "ERROR", code: SqlState.SystemError, message }, type);
  }

  /**
   * Refuses the request starting with a message of `type`, as PostgreSQL reports errors. True
   * when answered here; false when a simple query inside a transaction must go on to the server,
   * replaced by one that raises the error there (so the transaction fails as it would).
   */
  #refuse(fields: ErrorFields, type: number): boolean {
    const c = this.#client;
    if (type === Msg.Query) return c.local.refuseQuery(fields);
    c.local.answerError(fields, false);
    return true;
  }
}

/** A plain SELECT (not SELECT INTO). */
function isSelect(analysis: Analysis | null): boolean {
  const stmts = analysis?.info.ast?.stmts ?? [];
  const select = stmts.length === 1 ? stmts[0].stmt?.SelectStmt : undefined;
  return select !== undefined && (select as { intoClause?: unknown }).intoClause === undefined;
}

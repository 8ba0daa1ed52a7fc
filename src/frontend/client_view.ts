/**
 * The client as the parts of its request handling see it (local answers, routing, forwarding,
 * split requests, fan-out, checkout, lost servers, session bookkeeping): one view of its state
 * for all of them, holding the request-handling state they share and the parts themselves.
 *
 * @module
 */

import type { ErrorFields, MessageBuilder } from "../protocol/messages.ts";
import type { MessageBuffer } from "../net/message_buffer.ts";
import type { SocketWriter } from "../net/writer.ts";
import type { Server } from "../backend/server.ts";
import type { Pool } from "../backend/pool.ts";
import type { Cluster } from "../backend/databases.ts";
import type { Analysis, QueryRouter } from "../router/mod.ts";
import type { Role } from "../router/route.ts";
import type { SessionScan } from "../router/scan.ts";
import type { ShardingConfig, ShardSession } from "../router/shard.ts";
import type { PluginSet } from "../plugin/mod.ts";
import type { UniqueIdGenerator } from "../sharding/unique_id.ts";
import type { FanOutSender } from "./fan_out.ts";
import { LocalAnswers, type LocalClient } from "./local_answers.ts";
import { RequestRouter, type RouterClient } from "./request_router.ts";
import { type ForwardClient, Forwarder } from "./forward.ts";
import { type SplitClient, type SplitHost, type SplitRun, SplitRunner } from "./split_request.ts";
import { type LostServerClient, LostServers } from "./lost_server.ts";
import { Checkout, type CheckoutClient } from "./checkout.ts";
import { type BookkeepingClient, SessionBookkeeping } from "./session_bookkeeping.ts";
import type { ReportedParameters } from "./reported_parameters.ts";
import type { SessionState } from "./session.ts";
import type { ClientStatements, PreparedCache } from "./prepared.ts";
import { ShardTransaction } from "./shard_transaction.ts";
import { RoutedMessage } from "./routed_message.ts";
import { OutBatch } from "./out_batch.ts";

/** What the parts of a client's request handling read and change of it. */
export type ClientParts =
  & LocalClient
  & RouterClient
  & ForwardClient
  & SplitClient
  & SplitHost
  & FanOutSender
  & LostServerClient
  & CheckoutClient
  & BookkeepingClient;

/** The client's own fields the view reads (and the few it sets). */
export interface ViewedClient {
  readonly id: number;
  readonly user: string;
  readonly database: string;
  readonly cluster: Cluster | null;
  readonly pool: Pool | null;
  /** The attached server. */
  readonly server: Server | null;
  readonly session: SessionState;
  readonly statements: ClientStatements;
  readonly rbuf: MessageBuffer;
  readonly closed: boolean;
  writer: SocketWriter;
  state: "login" | "idle" | "waiting" | "active";
  queries: number;
}

/** What the view needs of the proxy around the client. */
export interface ViewHost {
  readonly settings: { prepared_statements_limit: number; cross_shard_buffer_limit: number };
  readonly prepared: PreparedCache;
  readonly router: QueryRouter;
  readonly plugins: PluginSet | null;
  readonly uniqueIds: UniqueIdGenerator;
  readonly routing: { read_write_strategy: "conservative" | "aggressive" };
  tablesChanged(database: string): void;
}

/** What the parts ask the client itself to do. */
export interface ClientActions {
  send(): Promise<void>;
  closeBatch(): Promise<void>;
  settle(): Promise<void>;
  endImplicit(commit: boolean, options?: { explicit?: boolean }): Promise<ErrorFields | null>;
  txStatus(): number;
  transactionOver(): void;
  answer(bytes: Uint8Array, dropped?: () => void): void;
  abortEverywhere(): Promise<void>;
  gateOpen(): boolean;
  atGate(): Promise<boolean>;
  /** The server whose state answers for the client's (the first leg's during a fan-out). */
  leadServer(): Server | null;
  /** Sets the attached server aside while another shard is used. */
  park(server: Server): void;
  attach(server: Server, fresh: boolean): void;
  releaseIfUnpinned(): void;
  terminate(fields: ErrorFields): void;
  end(): void;
}

/** One client as its request handling sees it. */
export class ClientView implements ClientParts {
  readonly #client: ViewedClient;
  readonly #host: ViewHost;
  readonly #actions: ClientActions;
  /** Sharded databases: how statements find their shard (null otherwise). */
  sharding: ShardingConfig | null = null;
  /** Parse queries to route them (the database has replicas, or query_parser = on). */
  routing = false;
  sessionMode = false;
  /** Rename prepared statements (transaction mode with prepared_statements = extended). */
  renaming = false;
  /** `pgdog.role` from the startup packet. */
  startupRole: Role | null = null;
  /** A plain BEGIN held back so the transaction's first statement can choose its host. */
  deferredBegin: Uint8Array | null = null;
  skipUntilSync = false;
  /** Between a request's first message and its Sync (sharded routing decides once per request). */
  inRequest = false;
  /** The attached server got a Flush and no Sync since: its batch is still open. */
  unsynced = false;
  /** The message being handled, and what handling it decided (reused for every message). */
  readonly msg: RoutedMessage = new RoutedMessage();
  /** What the batch collects for the server. */
  readonly out: OutBatch = new OutBatch();
  /** The transaction's servers on other shards, and what is replayed on each shard it reaches. */
  readonly txn: ShardTransaction = new ShardTransaction();
  /** What pgdog answers itself. */
  readonly local: LocalAnswers;
  /** Routes requests: their role, and their shards. */
  readonly requests: RequestRouter;
  /** Forwards messages to servers, rewriting prepared statements. */
  readonly forwarder: Forwarder;
  /** Runs requests cut into statements that run one by one (see planSplit). */
  readonly splits: SplitRunner;
  /** Requests kept to re-run, and what a lost server means to the client. */
  readonly lost: LostServers;
  /** Takes servers for requests, and brings their settings to the client's. */
  readonly checkout: Checkout;
  /** What statements change of the session, pgdog's own settings, reported parameters. */
  readonly book: SessionBookkeeping;

  constructor(client: ViewedClient, options: { host: ViewHost; actions: ClientActions }) {
    this.#client = client;
    this.#host = options.host;
    this.#actions = options.actions;
    this.local = new LocalAnswers(this);
    this.requests = new RequestRouter(this);
    this.forwarder = new Forwarder(this);
    this.splits = new SplitRunner(this);
    this.lost = new LostServers(this);
    this.checkout = new Checkout(this);
    this.book = new SessionBookkeeping(this);
  }

  get id(): number {
    return this.#client.id;
  }
  get user(): string {
    return this.#client.user;
  }
  get database(): string {
    return this.#client.database;
  }
  get cluster(): Cluster | null {
    return this.#client.cluster;
  }
  get pool(): Pool | null {
    return this.#client.pool;
  }
  get closed(): boolean {
    return this.#client.closed;
  }
  get session(): SessionState {
    return this.#client.session;
  }
  get statements(): ClientStatements {
    return this.#client.statements;
  }
  get rbuf(): MessageBuffer {
    return this.#client.rbuf;
  }
  get writer(): SocketWriter {
    return this.#client.writer;
  }
  set writer(writer: SocketWriter) {
    this.#client.writer = writer;
  }
  set state(state: "idle" | "waiting") {
    this.#client.state = state;
  }
  /** The server whose state answers for the client's (see ClientActions.leadServer). */
  get server(): Server | null {
    return this.#actions.leadServer();
  }
  /** The attached server. */
  get attached(): Server | null {
    return this.#client.server;
  }
  get router(): QueryRouter {
    return this.#host.router;
  }
  get plugins(): PluginSet | null {
    return this.#host.plugins;
  }
  get prepared(): PreparedCache {
    return this.#host.prepared;
  }
  get uniqueIdGenerator(): UniqueIdGenerator {
    return this.#host.uniqueIds;
  }
  get strategy(): "conservative" | "aggressive" {
    return this.#host.routing.read_write_strategy;
  }
  get statementsLimit(): number {
    return this.#host.settings.prepared_statements_limit;
  }
  /** `cross_shard_buffer_limit`: bytes of rows pgdog may hold for one statement. */
  get crossShardBufferLimit(): number {
    return this.#host.settings.cross_shard_buffer_limit;
  }
  get shardCount(): number {
    return this.#client.cluster!.shards.length;
  }
  get split(): SplitRun | null {
    return this.splits.current;
  }
  get prelude(): Uint8Array[] {
    return this.txn.prelude;
  }
  get reported(): ReportedParameters {
    return this.book.reported;
  }
  set holdRest(hold: boolean) {
    this.book.holdRest = hold;
  }

  send(): Promise<void> {
    return this.#actions.send();
  }
  closeBatch(): Promise<void> {
    return this.#actions.closeBatch();
  }
  settle(): Promise<void> {
    return this.#actions.settle();
  }
  async useShard(n: number): Promise<boolean> {
    const attached = this.#client.server;
    if (attached !== null) this.#actions.park(attached);
    this.checkout.shard = n;
    return await this.checkout.acquire("primary");
  }
  endImplicit(commit: boolean, options?: { explicit?: boolean }): Promise<ErrorFields | null> {
    // The transaction ends here (pgdog's own multi-shard COMMIT included): its instant too.
    this.requests.transactionOver();
    return this.#actions.endImplicit(commit, options);
  }
  txStatus(): number {
    return this.#actions.txStatus();
  }
  transactionOver(): void {
    this.#actions.transactionOver();
  }
  setPgdog(setting: [string, string, boolean]): void {
    this.book.setPgdog(setting);
  }
  answer(bytes: Uint8Array, dropped?: () => void): void {
    this.#actions.answer(bytes, dropped);
  }
  resetSession(b: MessageBuilder): void {
    this.book.resetSession(b);
  }
  tablesChanged(): void {
    this.#host.tablesChanged(this.#client.database);
  }
  abortEverywhere(): Promise<void> {
    return this.#actions.abortEverywhere();
  }
  gateOpen(): boolean {
    return this.#actions.gateOpen();
  }
  atGate(): Promise<boolean> {
    return this.#actions.atGate();
  }
  noteScan(scan: SessionScan, server: Server): void {
    this.book.noteScan(scan, server);
  }
  countQuery(server: Server): void {
    this.#client.queries++;
    server.queries++;
  }
  shardSession(): ShardSession {
    return this.requests.shardSession();
  }
  statementAnalysis(name: string): Analysis | null {
    return name === ""
      ? this.forwarder.unnamedAnalysis
      : this.#client.statements.get(name)?.analysis ?? null;
  }
  heldShards(): number[] {
    return this.txn.heldShards(this.#client.cluster!, this.#client.server);
  }
  answerLocally(type: number, buf: Uint8Array, p: number, end: number): boolean {
    return this.local.answerLocally(type, buf, p, end);
  }
  forward(msg: RoutedMessage, server: Server, out: OutBatch): boolean {
    return this.forwarder.forward(msg, server, out);
  }
  syncParams(server: Server, out: OutBatch): void {
    this.checkout.syncParams(server, out);
  }
  acquire(role: Role): Promise<boolean> {
    return this.checkout.acquire(role);
  }
  attach(server: Server, fresh: boolean): void {
    this.#actions.attach(server, fresh);
  }
  releaseIfUnpinned(): void {
    this.#actions.releaseIfUnpinned();
  }
  terminate(fields: ErrorFields): void {
    this.#actions.terminate(fields);
  }
  end(): void {
    this.#actions.end();
  }
}

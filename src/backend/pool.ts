/**
 * A pool of server connections for one (user, database, host). It never opens more than
 * `pool_size` connections, hands idle ones out last-in first-out, queues clients first-in
 * first-out when none is free, and keeps `min_pool_size`, `idle_timeout` and `server_lifetime`
 * in its periodic {@linkcode Pool.maintain}.
 *
 * @module
 */

import { log } from "../log.ts";
import { SqlState } from "../protocol/sqlstate.ts";
import type { ErrorFields } from "../protocol/messages.ts";
import { connectServer, ServerConnectError, type ServerLogin } from "./connect.ts";
import type { Server, ServerOwner } from "./server.ts";
import { cleanServer } from "./cleanup.ts";

/** What a pool has done since start (SHOW STATS). */
export interface PoolTotals {
  transactions: number;
  queries: number;
  /** Server checkouts. */
  assignments: number;
  received: number;
  sent: number;
  xactTimeMs: number;
  queryTimeMs: number;
  waitTimeMs: number;
  errors: number;
}

/** Settings of one pool, resolved from user > database > general. */
export interface PoolConfig {
  pool_size: number;
  min_pool_size: number;
  pooler_mode: "transaction" | "session";
  checkout_timeout: number;
  connect_timeout: number;
  idle_timeout: number;
  server_lifetime: number;
  rollback_timeout: number;
}

/** An error a client should see, as an ErrorResponse. */
export class ClientFacingError extends Error {
  readonly fields: ErrorFields;
  constructor(fields: ErrorFields) {
    super(fields.message);
    this.name = "ClientFacingError";
    this.fields = fields;
  }
}

/**
 * Ends a wait for a server early (a cancel, or the client leaving): a lighter AbortSignal for the
 * checkout path, where one is made for every request that has to wait.
 */
export class WaitAbort {
  /** Set once {@linkcode WaitAbort.abort} was called. */
  aborted = false;
  /** What the wait rejects with. */
  reason: unknown = undefined;
  #listener: ((reason: unknown) => void) | null = null;

  /** Ends the wait (once); it rejects with `reason`. */
  abort(reason: unknown): void {
    if (this.aborted) return;
    this.aborted = true;
    this.reason = reason;
    const listener = this.#listener;
    this.#listener = null;
    listener?.(reason);
  }

  /** Part of the pool: `listener` runs when aborted (at once when it is already). */
  onAbort(listener: (reason: unknown) => void): void {
    if (this.aborted) listener(this.reason);
    else this.#listener = listener;
  }
}

interface Waiter {
  resolve: (s: Server) => void;
  reject: (e: unknown) => void;
  since: number;
  done: boolean;
}

let nextPoolId = 1;

/** Server connections for one (user, database, host). */
export class Pool implements ServerOwner {
  readonly id: number = nextPoolId++;
  readonly login: ServerLogin;
  config: PoolConfig;
  /** The logical database and user clients name. */
  readonly database: string;
  readonly user: string;
  /** Open connections: idle, checked out, or being cleaned. */
  readonly servers: Set<Server> = new Set();
  /** Idle, clean connections; the most recently used last. */
  readonly idle: Server[] = [];
  /** The most recent connect failure. */
  lastError: ServerConnectError | null = null;
  closed = false;
  /** ParameterStatus lists shown at login, keyed by the client's session parameters. */
  readonly loginParams: Map<string, Array<[string, string]>> = new Map();
  /** Checkouts served, and connect errors, since start. */
  checkouts = 0;
  /** Time clients waited for a server, summed (ms). */
  waitTimeMs = 0;
  /** Counters of servers already closed, kept for SHOW STATS. */
  readonly #retired = {
    transactions: 0,
    queries: 0,
    xactTimeMs: 0,
    queryTimeMs: 0,
    received: 0,
    sent: 0,
  };
  errors = 0;

  #waiters: Waiter[] = [];
  #head = 0;
  #live = 0;
  #total = 0;
  #connecting = 0;
  #connectFailures = 0;
  #nextConnectAt = 0;

  constructor(options: { database: string; user: string; login: ServerLogin; config: PoolConfig }) {
    this.database = options.database;
    this.user = options.user;
    this.login = options.login;
    this.config = options.config;
  }

  /** Human-readable identity for logs. */
  get label(): string {
    return `pool ${this.user}@${this.login.host}:${this.login.port}/${this.database}`;
  }

  #reconnectBefore = 0;

  /** RECONNECT: idle connections close now, busy ones when they come back; new ones replace them. */
  reconnect(): void {
    this.#reconnectBefore = Date.now();
    for (const s of this.idle.splice(0)) s.close("RECONNECT");
    this.#grow();
  }

  /** Counters since start, over open and closed servers (SHOW STATS). */
  totals(): PoolTotals {
    const t: PoolTotals = {
      ...this.#retired,
      assignments: this.checkouts,
      waitTimeMs: this.waitTimeMs,
      errors: this.errors,
    };
    for (const s of this.servers) {
      t.transactions += s.transactions;
      t.queries += s.queries;
      t.xactTimeMs += s.xactTimeMs;
      t.queryTimeMs += s.queryTimeMs;
      t.received += s.bytesReceived;
      t.sent += s.writer.bytesWritten;
    }
    return t;
  }

  /** Connections open or being opened. */
  get total(): number {
    return this.#total;
  }

  /** Clients waiting for a connection. */
  get waiting(): number {
    return this.#live;
  }

  /** Connections checked out (attached to clients or being cleaned). */
  get active(): number {
    return this.servers.size - this.idle.length;
  }

  /** How long the longest-waiting client has waited, in ms. */
  maxWait(now: number = Date.now()): number {
    for (let i = this.#head; i < this.#waiters.length; i++) {
      if (!this.#waiters[i].done) return now - this.#waiters[i].since;
    }
    return 0;
  }

  /** An idle server right now, or null (then wait with {@linkcode Pool.waitForServer}). */
  tryCheckout(): Server | null {
    if (this.closed || this.#live > 0) return null; // first come, first served
    const server = this.idle.pop();
    if (server === undefined) return null;
    this.checkouts++;
    Pool.observeWait?.(this, 0);
    return server;
  }

  /** Called with each checkout's wait (ms), when metrics want a histogram of them. */
  static observeWait: ((pool: Pool, ms: number) => void) | null = null;

  /**
   * Waits for a server until `checkout_timeout`; rejects with a {@linkcode ClientFacingError}, or
   * with the abort's reason when it aborts.
   */
  waitForServer(options?: { abort?: WaitAbort }): Promise<Server> {
    if (this.closed) return Promise.reject(new ClientFacingError(SHUTTING_DOWN));
    return new Promise((resolve, reject) => {
      const waiter: Waiter = { resolve, reject, since: Date.now(), done: false };
      this.#waiters.push(waiter);
      this.#live++;
      options?.abort?.onAbort((reason) => this.#settle(waiter, null, reason));
      if (!waiter.done) this.#grow();
    });
  }

  /** Returns a server after use. Clean servers are reused; others are cleaned first. */
  checkin(server: Server): void {
    if (server.closed) return;
    const why = this.closed
      ? "pool closed"
      : server.discard
      ? "state unknown"
      : server.cancelPending
      ? "a cancel sent to it may still land"
      : Date.now() - server.createdAt >= this.config.server_lifetime
      ? "server_lifetime reached"
      : server.createdAt <= this.#reconnectBefore
      ? "RECONNECT"
      : null;
    if (why !== null) {
      server.close(why);
      return;
    }
    if (!server.clean) {
      this.#clean(server, null);
      return;
    }
    server.idleSince = Date.now();
    this.#handOff(server);
  }

  /**
   * Takes back a server whose client left, ended its session or unpinned it: outstanding work is
   * drained, an open transaction rolled back and `resetSql` (DISCARD ALL, or the unpin cleanup)
   * run, before reuse.
   */
  release(server: Server, options: { resetSql: string | null }): void {
    if (server.closed) return;
    server.detach();
    if (server.clean && options.resetSql === null) this.checkin(server);
    else this.#clean(server, options.resetSql);
  }

  #clean(server: Server, resetSql: string | null): void {
    cleanServer(server, { resetSql, timeoutMs: this.config.rollback_timeout }).then((ok) => {
      if (ok && server.clean) this.checkin(server);
      else server.close("could not be cleaned");
    });
  }

  /** Part of {@linkcode ServerOwner}: a server's connection ended. */
  serverClosed(server: Server): void {
    if (!this.servers.delete(server)) return;
    const r = this.#retired;
    r.transactions += server.transactions;
    r.queries += server.queries;
    r.xactTimeMs += server.xactTimeMs;
    r.queryTimeMs += server.queryTimeMs;
    r.received += server.bytesReceived;
    r.sent += server.writer.bytesWritten;
    this.#total--;
    const i = this.idle.indexOf(server);
    if (i >= 0) this.idle.splice(i, 1);
    this.#grow();
  }

  /** Resolves or rejects a waiter once; returns false if it was already settled. */
  #settle(w: Waiter, server: Server | null, error?: unknown): boolean {
    if (w.done) return false;
    w.done = true;
    this.#live--;
    if (server) {
      this.checkouts++;
      const waited = Date.now() - w.since;
      this.waitTimeMs += waited;
      Pool.observeWait?.(this, waited);
      w.resolve(server);
    } else {
      w.reject(error);
    }
    return true;
  }

  #nextWaiter(): Waiter | null {
    while (this.#head < this.#waiters.length) {
      const w = this.#waiters[this.#head++];
      if (!w.done) return w;
    }
    this.#waiters.length = 0;
    this.#head = 0;
    return null;
  }

  #handOff(server: Server): void {
    if (this.#live > 0) {
      const w = this.#nextWaiter();
      if (w) {
        this.#settle(w, server);
        this.#trimWaiters();
        return;
      }
    }
    this.idle.push(server);
  }

  #trimWaiters(): void {
    if (this.#head === this.#waiters.length) {
      this.#waiters.length = 0;
      this.#head = 0;
    } else if (this.#head > 1024 && this.#head * 2 > this.#waiters.length) {
      this.#waiters = this.#waiters.slice(this.#head);
      this.#head = 0;
    }
  }

  /** Opens connections for waiting clients, within pool_size. */
  #grow(): void {
    while (!this.closed && this.#total < this.config.pool_size && this.#connecting < this.#live) {
      this.#open();
    }
  }

  #open(): void {
    this.#total++;
    this.#connecting++;
    connectServer(this.login, { timeoutMs: this.config.connect_timeout }).then((server) => {
      this.#connecting--;
      if (this.lastError) log.info(`${this.label}: connected again`);
      this.#connectFailures = 0;
      this.lastError = null;
      if (this.closed) {
        this.#total--;
        server.close("pool closed");
        return;
      }
      server.owner = this;
      this.servers.add(server);
      server.start();
      log.debug(`${this.label}: opened ${server.label}`);
      this.#handOff(server);
    }, (e) => {
      this.#connecting--;
      this.#total--;
      this.#connectFailures++;
      this.errors++;
      this.#nextConnectAt = Date.now() +
        Math.min(30_000, 250 * 2 ** Math.min(this.#connectFailures, 7));
      const err = e instanceof ServerConnectError ? e : new ServerConnectError({
        severity: "FATAL",
        code: SqlState.ConnectionFailure,
        message: String(e),
      }, false);
      // The same failure repeating (a server down for a while) is logged once.
      if (this.lastError?.message !== err.message) log.warn(`${this.label}: ${err.message}`);
      this.lastError = err;
      // One waiter per failed attempt learns why at once, instead of waiting for checkout_timeout.
      const w = this.#nextWaiter();
      if (w) this.#settle(w, null, new ClientFacingError(err.fields));
      this.#trimWaiters();
      this.#grow();
    });
  }

  /** Periodic upkeep: waiter deadlines, idle and lifetime limits, min_pool_size. */
  maintain(now: number): void {
    if (this.#live > 0) {
      const limit = this.config.checkout_timeout;
      // Waiters are in arrival order, so only a prefix can have expired.
      for (let i = this.#head; i < this.#waiters.length; i++) {
        const w = this.#waiters[i];
        if (w.done) continue;
        if (now - w.since < limit) break;
        this.#settle(w, null, new ClientFacingError(this.#exhausted()));
      }
      while (this.#head < this.#waiters.length && this.#waiters[this.#head].done) this.#head++;
      this.#trimWaiters();
    }
    if (this.closed) return;
    // The least recently used idle connections sit at the front.
    for (let i = 0; i < this.idle.length; i++) {
      const s = this.idle[i];
      const tooOld = now - s.createdAt >= this.config.server_lifetime;
      const tooIdle = now - s.lastUsed >= this.config.idle_timeout &&
        this.#total > this.config.min_pool_size;
      if (tooOld || tooIdle) {
        this.idle.splice(i--, 1);
        s.close(tooOld ? "server_lifetime reached" : "idle_timeout reached");
      }
    }
    if (
      this.#total < this.config.min_pool_size && this.#connecting === 0 &&
      now >= this.#nextConnectAt
    ) this.#open();
  }

  #exhausted(): ErrorFields {
    return {
      severity: "ERROR",
      code: SqlState.TooManyConnections,
      message: `pool for user "${this.user}" and database "${this.database}" is exhausted: ` +
        `no server connection became free within checkout_timeout (${this.config.checkout_timeout} ms)`,
      hint: "Raise pool_size or checkout_timeout, or make transactions shorter.",
    };
  }

  /** Stops the pool: waiting clients get an error and idle connections close. */
  close(): void {
    this.closed = true;
    let w: Waiter | null;
    while ((w = this.#nextWaiter()) !== null) {
      this.#settle(w, null, new ClientFacingError(SHUTTING_DOWN));
    }
    for (const s of this.idle.splice(0)) s.close("pool closed");
  }
}

const SHUTTING_DOWN: ErrorFields = {
  severity: "FATAL",
  code: SqlState.AdminShutdown,
  message: "pgdog is shutting down",
};

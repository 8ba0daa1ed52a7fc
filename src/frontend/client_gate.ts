/**
 * The gate a client's new transaction passes: it waits while PAUSE or MAINTENANCE holds the
 * client's database, then picks up the configuration in force (a RELOAD may have changed its
 * cluster, or removed its user or database).
 *
 * @module
 */

import type { ErrorFields } from "../protocol/messages.ts";
import { SqlState } from "../protocol/sqlstate.ts";
import type { Cluster, Databases } from "../backend/databases.ts";
import type { Gate } from "../admin/gate.ts";
import type { ShardingConfig } from "../router/shard.ts";

/** What the gate reads of the proxy. */
export interface GateHost {
  readonly databases: Databases;
  readonly console: { readonly gate: Gate };
}

/** The client's own fields the gate reads and sets. */
export interface GatedClient {
  readonly user: string;
  readonly database: string;
  state: "login" | "idle" | "waiting" | "active";
  cluster: Cluster | null;
}

/** The client's routing state that follows its cluster (see ClientView). */
export interface GatedRouting {
  sharding: ShardingConfig | null;
  routing: boolean;
  readonly checkout: { shard: number };
}

/** One client's passage through the gate. */
export class ClientGate {
  readonly #client: GatedClient;
  readonly #host: GateHost;
  readonly #routing: GatedRouting;
  readonly #fatal: (fields: ErrorFields) => Promise<void>;
  /** The configuration (pools) this client last passed the gate with. */
  #passed: Databases | null = null;

  constructor(
    client: GatedClient,
    options: {
      host: GateHost;
      routing: GatedRouting;
      /** Tells the client a FATAL error (the caller then ends it). */
      fatal: (fields: ErrorFields) => Promise<void>;
    },
  ) {
    this.#client = client;
    this.#host = options.host;
    this.#routing = options.routing;
    this.#fatal = options.fatal;
  }

  /** True when {@linkcode pass} would let the client through at once, as it is. */
  open(): boolean {
    return this.#host.databases === this.#passed &&
      !this.#host.console.gate.closed(this.#client.database);
  }

  /**
   * A new transaction waits here while PAUSE or MAINTENANCE holds its database, then picks up
   * the configuration in force (a RELOAD may have changed it). False (the client told, and
   * closed) when its user or database was removed.
   */
  async pass(): Promise<boolean> {
    const c = this.#client;
    this.#passed = null;
    const gate = this.#host.console.gate;
    if (gate.closed(c.database)) {
      const was = c.state;
      c.state = "waiting";
      await gate.wait(c.database);
      c.state = was;
    }
    const databases = this.#host.databases;
    const cluster = databases.lookup(c.user, c.database);
    if (cluster === c.cluster) {
      this.#passed = databases;
      return true;
    }
    if (cluster === undefined) {
      await this.#fatal({
        severity: "FATAL",
        code: SqlState.AdminShutdown,
        message: `user "${c.user}" on database "${c.database}" is no longer in the ` +
          "configuration (RELOAD)",
      });
      return false;
    }
    c.cluster = cluster;
    const routing = this.#routing;
    routing.sharding = cluster.sharding;
    // A shard chosen under the old configuration may not exist in this one.
    if (routing.checkout.shard >= cluster.shards.length) routing.checkout.shard = 0;
    routing.routing ||= cluster.hasReplicas || cluster.sharding !== null;
    this.#passed = databases;
    return true;
  }
}

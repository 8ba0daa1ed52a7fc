/**
 * Two-phase commit: atomic commits of transactions on several shards (coordinator.ts), the
 * durable log (wal.ts), and the process's state, recovery and retries (manager.ts).
 *
 * @module
 */

import type { ErrorFields } from "../protocol/messages.ts";
import type { Server } from "../backend/server.ts";
import type { Pool } from "../backend/pool.ts";
import type { Cluster } from "../backend/cluster.ts";
import { commitAll } from "./coordinator.ts";
import { twoPhaseCommits } from "./manager.ts";

export { commitAll, type Participant } from "./coordinator.ts";
export {
  type CrashStep,
  GID_PREFIX,
  type TransactionState,
  TwoPcManager,
  type TwoPcStats,
  twoPhaseCommits,
} from "./manager.ts";
export { TwoPcWal } from "./wal.ts";

/**
 * Commits a transaction on `servers` (detached, one per shard of `cluster`) all or nothing:
 * two-phase commit when the user's settings ask for it (`explicit`: the client's own COMMIT
 * follows `two_phase_commit`, a transaction pgdog opened `two_phase_commit_auto`). Returns the
 * error the client gets, null when committed.
 */
export function commitAcross(
  servers: Server[],
  options: { cluster: Cluster; explicit: boolean; timeoutMs: number },
): Promise<ErrorFields | null> {
  const { cluster } = options;
  const manager = twoPhaseCommits;
  return commitAll(
    servers.map((server) => ({ server, shard: cluster.shardOf(server.owner as Pool) })),
    {
      twoPhase: manager.enabled(cluster.user, cluster.name, { auto: !options.explicit }),
      timeoutMs: options.timeoutMs,
      database: cluster.name,
      user: cluster.user,
      manager,
    },
  );
}

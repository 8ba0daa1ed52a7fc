/**
 * A client's session state in a pooled world: its settings (startup parameters plus what it SET),
 * whether it must keep its server (pinned by advisory locks, temporary objects, WITH HOLD cursors
 * or `SET pgdog.pin`), and pgdog's own `pgdog.*` settings.
 *
 * Settings are learned from the server rather than guessed from SQL: when a request may have
 * changed any (SET, RESET, set_config, DISCARD), pgdog asks the server for its session-level
 * settings once the transaction is over. Whatever COMMIT, ROLLBACK or SET LOCAL did is then
 * already applied, exactly as PostgreSQL applied it. Pins are learned the same way: after a
 * transaction that may have taken an advisory lock, created or dropped a temporary object or a
 * WITH HOLD cursor, the same read-back counts what the session holds.
 *
 * @module
 */

import type { Server } from "../backend/server.ts";
import type { SessionScan } from "../router/scan.ts";
import { quoteLiteral, type SessionParams } from "./params.ts";

/** Settings the read-back overrides for itself (their values are read before it does). */
const GUARDED = "'statement_timeout', 'lock_timeout'";

/** The read-back row that carries the number of advisory locks held. */
const ADVISORY_ROW = "pgdog.advisory_locks";
/** The read-back row with the number of temporary objects (tables, views, sequences, ...). */
const TEMP_ROW = "pgdog.temp_objects";
/** The read-back row with the number of WITH HOLD cursors open. */
const HOLD_ROW = "pgdog.hold_cursors";

/** Catalogs whose objects a session can create in its temporary schema, by namespace column. */
const TEMP_CATALOGS: Array<[string, string]> = [
  ["pg_class", "relnamespace"],
  ["pg_proc", "pronamespace"],
  ["pg_type", "typnamespace"],
  ["pg_statistic_ext", "stxnamespace"],
  ["pg_collation", "collnamespace"],
  ["pg_conversion", "connamespace"],
  ["pg_operator", "oprnamespace"],
  ["pg_opclass", "opcnamespace"],
  ["pg_opfamily", "opfnamespace"],
  ["pg_ts_config", "cfgnamespace"],
  ["pg_ts_dict", "dictnamespace"],
  ["pg_ts_parser", "prsnamespace"],
  ["pg_ts_template", "tmplnamespace"],
];
/** What the session's temporary schema holds (nothing when it has none: the schema is 0 then). */
const TEMP_COUNT = TEMP_CATALOGS.map(([catalog, column]) =>
  `(SELECT pg_catalog.count(*) FROM pg_catalog.${catalog}` +
  ` WHERE ${column} = pg_catalog.pg_my_temp_schema())`
).join(" + ");

/** Settings that pg_settings does not list; read by name when the client touched them. */
function isHidden(name: string): boolean {
  return name === "role" || name === "session_authorization" || name.includes(".");
}

/** One client's session state. */
export class SessionState {
  /** Settings from the startup packet (what RESET returns to). */
  readonly startup: SessionParams;
  /** The settings the client's session has now, by lower-case name. */
  params: SessionParams;
  /** Settings not listed by pg_settings that the client changed (read back by name). */
  readonly #hidden = new Set<string>();
  /** A request since the last read-back may have changed settings. */
  #settingsChanged = false;
  /** Advisory lock functions were called since the last read-back. */
  #advisoryCalls = false;
  /** Session-level advisory locks held, per the last read-back. */
  advisoryHeld = false;
  /** Statements that may create (or drop, while some are held) temporary objects or WITH HOLD
   * cursors ran since the last read-back. */
  #tempCalls = false;
  /** The session has temporary objects, per the last read-back. */
  tempHeld = false;
  /** The session has WITH HOLD cursors open, per the last read-back. */
  holdCursors = false;
  /** `SET pgdog.pin TO true`. */
  manualPin = false;
  /** `pgdog.*` settings (role, shard, sharding_key, ...), for routing. */
  readonly pgdog: Map<string, string> = new Map();
  /** `SET LOCAL pgdog.*`: until the transaction ends. */
  readonly pgdogLocal: Map<string, string> = new Map();

  constructor(startup: SessionParams) {
    this.startup = startup;
    this.params = new Map(startup);
    for (const name of startup.keys()) if (isHidden(name)) this.#hidden.add(name);
  }

  /** The server must stay with this client. */
  get pinned(): boolean {
    return this.advisoryHeld || this.manualPin || this.tempHeld || this.holdCursors;
  }

  /** Why the server stays with this client (SHOW CLIENTS), or "" when it doesn't. */
  get pinReasons(): string {
    if (!this.pinned) return "";
    const why: string[] = [];
    if (this.advisoryHeld) why.push("advisory locks");
    if (this.tempHeld) why.push("temporary objects");
    if (this.holdCursors) why.push("WITH HOLD cursors");
    if (this.manualPin) why.push("pgdog.pin");
    return why.join(", ");
  }

  /** Takes note of what a request about to run does to the session. */
  note(scan: SessionScan): void {
    if (scan.settings.length > 0 || scan.unknownSetting || scan.resetAll) {
      this.#settingsChanged = true;
    }
    for (const name of scan.settings) if (isHidden(name)) this.#hidden.add(name);
    if (scan.advisoryLocks) this.#advisoryCalls = true;
    if (
      scan.tempObjects || (scan.tempRelease && (this.tempHeld || this.holdCursors)) ||
      (scan.creates && this.#tempFirst(scan))
    ) this.#tempCalls = true;
  }

  /** pg_temp may be where unqualified objects are created (it is named in search_path). */
  #tempFirst(scan: SessionScan): boolean {
    return scan.settings.includes("search_path") ||
      (this.params.get("search_path")?.includes("pg_temp") ?? false);
  }

  /** True when the server must be asked what the session now holds. */
  get needsReadBack(): boolean {
    return this.#settingsChanged || this.#advisoryCalls || this.#tempCalls;
  }

  /**
   * The read-back to send now: (name, value) rows of the session-level settings and advisory locks
   * held. Whatever happens after this call counts toward the next read-back.
   */
  readBackSql(): string {
    const advisory = this.#advisoryCalls || this.advisoryHeld;
    const temp = this.#tempCalls || this.tempHeld || this.holdCursors;
    this.#settingsChanged = false;
    this.#advisoryCalls = false;
    this.#tempCalls = false;
    // The client's own statement_timeout / lock_timeout must not cut the read-back short, so the
    // main query runs under SET LOCAL; their session values are read first, since afterwards
    // pg_settings shows pgdog's SET LOCAL instead.
    let sql = "BEGIN; SELECT name, pg_catalog.current_setting(name) FROM pg_catalog.pg_settings " +
      `WHERE source = 'session' AND name IN (${GUARDED}); ` +
      "SET LOCAL statement_timeout TO 0; SET LOCAL lock_timeout TO 0; " +
      "SELECT name, pg_catalog.current_setting(name) FROM pg_catalog.pg_settings " +
      `WHERE source = 'session' AND name NOT IN (${GUARDED})`;
    if (this.#hidden.size > 0) {
      const names = [...this.#hidden].map(quoteLiteral).join(",");
      sql +=
        ` UNION ALL SELECT n, pg_catalog.current_setting(n, true) FROM pg_catalog.unnest(ARRAY[${names}]::text[]) n`;
    }
    if (advisory) {
      sql +=
        ` UNION ALL SELECT '${ADVISORY_ROW}', pg_catalog.count(*)::text FROM pg_catalog.pg_locks` +
        " WHERE locktype = 'advisory' AND pid = pg_catalog.pg_backend_pid()";
    }
    if (temp) {
      sql += ` UNION ALL SELECT '${TEMP_ROW}', (${TEMP_COUNT})::text` +
        ` UNION ALL SELECT '${HOLD_ROW}', pg_catalog.count(*)::text FROM pg_catalog.pg_cursors` +
        " WHERE is_holdable";
    }
    return sql + "; COMMIT";
  }

  /**
   * Takes the read-back rows: they become what `server` has applied, and, over the startup
   * values, what the client's session holds.
   */
  applyReadBack(rows: (string | null)[][], server: Server): void {
    const now = new Map<string, string>();
    for (const [rawName, value] of rows) {
      if (rawName === null) continue;
      if (rawName === ADVISORY_ROW) {
        this.advisoryHeld = Number(value) > 0;
        continue;
      }
      if (rawName === TEMP_ROW) {
        this.tempHeld = Number(value) > 0;
        continue;
      }
      if (rawName === HOLD_ROW) {
        this.holdCursors = Number(value) > 0;
        continue;
      }
      const name = rawName.toLowerCase();
      if (value === null || !isSet(name, value, server)) continue;
      // A custom setting from the startup packet reads as empty once RESET on a server that
      // got it by SET: its value is the startup one again.
      if (value === "" && name.includes(".") && this.startup.has(name)) continue;
      now.set(name, value);
    }
    server.applied.clear();
    for (const [k, v] of now) server.applied.set(k, v);
    const params = new Map(this.startup);
    for (const [k, v] of now) params.set(k, v);
    this.params = params;
  }

  /** DISCARD ALL: back to the startup settings, nothing pinned, no pgdog settings. */
  reset(): void {
    this.params = new Map(this.startup);
    this.manualPin = false;
    this.advisoryHeld = false;
    this.#advisoryCalls = false;
    this.tempHeld = false;
    this.holdCursors = false;
    this.#tempCalls = false;
    this.#settingsChanged = false;
    this.pgdog.clear();
    this.pgdogLocal.clear();
  }
}

/** Whether a read-back value means the setting is set (not at its default). */
function isSet(name: string, value: string, server: Server): boolean {
  if (name === "role") return value !== "none";
  if (name === "session_authorization") return value !== server.address.user;
  // A custom setting reads as an empty string once RESET: PostgreSQL keeps it, empty, for the
  // rest of the session (SHOW finds it), so the client's session holds it too.
  return true;
}

/** True when both hold the same settings. */
export function sameParams(a: SessionParams, b: SessionParams): boolean {
  if (a.size !== b.size) return false;
  for (const [k, v] of a) if (b.get(k) !== v) return false;
  return true;
}

/**
 * Session parameters: what a client asked for at startup (including `options=-c name=value`),
 * and the SQL that makes a server match them. Servers are shared, so before a client's request
 * runs on a server, the difference between what that server last had and what the client wants
 * is applied in one statement, and its output is swallowed.
 *
 * @module
 */

/** Startup keys that are not session settings. */
const NOT_SESSION = new Set(["user", "database", "options", "replication"]);

/**
 * Splits a startup `options` string into name/value pairs. Accepts `-c name=value`,
 * `-cname=value` and `--name=value`; a backslash escapes the next character (so `\ ` is a
 * space inside a value). Other switches are ignored.
 */
export function parseStartupOptions(options: string): Array<[string, string]> {
  const words: string[] = [];
  let cur = "";
  let inWord = false;
  for (let i = 0; i < options.length; i++) {
    const ch = options[i];
    if (ch === "\\" && i + 1 < options.length) {
      cur += options[++i];
      inWord = true;
    } else if (ch === " " || ch === "\t" || ch === "\n") {
      if (inWord) words.push(cur);
      cur = "";
      inWord = false;
    } else {
      cur += ch;
      inWord = true;
    }
  }
  if (inWord) words.push(cur);
  const out: Array<[string, string]> = [];
  for (let i = 0; i < words.length; i++) {
    const w = words[i];
    let setting: string | undefined;
    if (w === "-c" && i + 1 < words.length) setting = words[++i];
    else if (w.startsWith("-c") && w.length > 2) setting = w.slice(2);
    else if (w.startsWith("--") && w.length > 2) setting = w.slice(2);
    if (setting === undefined) continue;
    const eq = setting.indexOf("=");
    if (eq <= 0) continue;
    // PostgreSQL treats '-' in option names as '_'.
    out.push([setting.slice(0, eq).replaceAll("-", "_"), setting.slice(eq + 1)]);
  }
  return out;
}

/** A client's session parameters, by lower-case name. */
export type SessionParams = Map<string, string>;

/** Session parameters from a startup packet: everything but user, database and protocol keys. */
export function sessionParamsFromStartup(startup: Map<string, string>): SessionParams {
  const out: SessionParams = new Map();
  // PostgreSQL applies `options` first; a parameter given on its own wins over the same in options.
  const options = startup.get("options");
  if (options) {
    for (const [k, v] of parseStartupOptions(options)) {
      const name = k.toLowerCase();
      if (name.startsWith("pgdog.")) continue;
      out.set(name, v);
    }
  }
  for (const [k, v] of startup) {
    const name = k.toLowerCase();
    if (NOT_SESSION.has(name) || name.startsWith("_pq_.") || name.startsWith("pgdog.")) continue;
    out.set(name, v);
  }
  return out;
}

/** A stable key for a set of parameters (for caches). */
export function paramsSignature(params: SessionParams): string {
  if (params.size === 0) return "";
  return [...params].sort((a, b) => (a[0] < b[0] ? -1 : a[0] > b[0] ? 1 : 0)).map(([k, v]) =>
    `${k}=${v}`
  ).join("\0");
}

/** Quotes an identifier for SQL. */
export function quoteIdent(name: string): string {
  return `"${name.replaceAll('"', '""')}"`;
}

/** Quotes a string literal so it reads the same whatever standard_conforming_strings is. */
export function quoteLiteral(value: string): string {
  return `E'${value.replaceAll("\\", "\\\\").replaceAll("'", "''")}'`;
}

/**
 * Settings that decide who the session is. Another client's identity may lack the rights to change
 * the rest (superuser-only settings), so they are reset first and set last.
 */
const IDENTITY = ["session_authorization", "role"];

/**
 * The statements that change a server from `applied` to `desired`, or null when nothing differs:
 * the identity back to the login's (`SET SESSION AUTHORIZATION DEFAULT` also resets the role) when
 * the server has another one, RESETs, then one `SELECT` of `set_config` calls, the identity last.
 * `set_config` takes the value as text, the same way a startup parameter is given, so list values
 * such as search_path keep their meaning.
 */
export function paramSyncStatements(
  desired: SessionParams,
  applied: SessionParams,
): string[] | null {
  if (sameSettings(desired, applied)) return null;
  const out: string[] = [];
  const identityApplied = IDENTITY.some((name) => applied.has(name));
  if (identityApplied) out.push("SET SESSION AUTHORIZATION DEFAULT");
  for (const name of applied.keys()) {
    if (!desired.has(name) && !IDENTITY.includes(name)) out.push(`RESET ${quoteIdent(name)}`);
  }
  let sets = "";
  const set = (name: string, value: string): void => {
    sets += `${sets ? "," : ""}pg_catalog.set_config(${quoteLiteral(name)},${
      quoteLiteral(value)
    },false)`;
  };
  for (const [name, value] of desired) {
    if (applied.get(name) !== value && !IDENTITY.includes(name)) set(name, value);
  }
  // After the reset above (or on a server that had none), the identity is set in full.
  for (const name of IDENTITY) {
    const value = desired.get(name);
    if (value !== undefined) set(name, value);
  }
  if (sets) out.push(`SELECT ${sets}`);
  return out;
}

/** {@linkcode paramSyncStatements} as one simple-query string, or null when nothing differs. */
export function paramSyncSql(desired: SessionParams, applied: SessionParams): string | null {
  return paramSyncStatements(desired, applied)?.join(";") ?? null;
}

/** True when both hold the same settings. */
function sameSettings(a: SessionParams, b: SessionParams): boolean {
  if (a.size !== b.size) return false;
  for (const [k, v] of a) if (b.get(k) !== v) return false;
  return true;
}

/** Records that `desired` is now what the server has. */
export function markApplied(applied: SessionParams, desired: SessionParams): void {
  applied.clear();
  for (const [k, v] of desired) applied.set(k, v);
}

/** The value of `name` given in the startup `options` (`-c name=value`), if any. */
export function startupOption(startup: Map<string, string>, name: string): string | undefined {
  const options = startup.get("options");
  if (!options) return undefined;
  let value: string | undefined;
  for (const [k, v] of parseStartupOptions(options)) if (k.toLowerCase() === name) value = v;
  return value;
}

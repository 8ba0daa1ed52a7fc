/**
 * `--database_url postgres://user:password@host:port/database?role=replica&...`: a database
 * (and the user to log in with) given on the command line instead of in the files.
 *
 * @module
 */

import type { DatabaseConfig, UserConfig } from "./types.ts";
import { DATABASES, findKey, withDefaults } from "./schema.ts";
import { closest } from "./suggest.ts";
import { checkValue, formatValue } from "./value.ts";

/** What one URL yields: a `[[databases]]` entry and a `[[users]]` entry, or what is wrong. */
export interface DatabaseUrlResult {
  /** The database; undefined when the URL is invalid. */
  database?: DatabaseConfig;
  /** The URL's user, allowed to connect to the URL's database. */
  user?: UserConfig;
  /** Complete messages, each starting with the label. */
  problems: string[];
  /** Complete messages, each starting with the label. */
  warnings: string[];
}

/** Options of {@link parseDatabaseUrl}. */
export interface ParseDatabaseUrlOptions {
  /** Starts every message; defaults to `--database_url`. */
  label?: string;
}

const EXPECTED = "expected postgres://user:password@host:port/database";
const DEFAULT_USER = "postgres";
const DEFAULT_PORT = 5432;

/** Query parameters that set the database key of the same name. */
const PARAMETERS = [
  "database_name",
  "role",
  "shard",
  "pool_size",
  "min_pool_size",
  "pooler_mode",
  "user",
  "password",
];

/** Query parameters PgDog understands that this version ignores with a warning. */
const UNSUPPORTED_PARAMETERS = [
  "statement_timeout",
  "lock_timeout",
  "idle_timeout",
  "read_only",
  "server_lifetime",
  "server_lifetime_jitter",
];

/** Hides passwords (in the user part and in a `password` parameter) of a URL shown in a message. */
export function redactUrl(url: string): string {
  return url
    .replace(/^([A-Za-z][A-Za-z0-9+.-]*:\/\/[^:@/?#]*:)[^@]*@/, "$1***@")
    .replace(/([?&]password=)[^&#]*/g, "$1***");
}

function decode(part: string): string | undefined {
  try {
    return decodeURIComponent(part);
  } catch {
    return undefined;
  }
}

/**
 * Parses a database URL. The user defaults to `postgres`, the port to 5432 and the database to
 * the user name (as libpq does). Query parameters `database_name`, `role`, `shard`, `pool_size`
 * (alias `max_pool_size`), `min_pool_size`, `pooler_mode`, `user` and `password` set the
 * database's keys of the same names.
 */
export function parseDatabaseUrl(
  url: string,
  options: ParseDatabaseUrlOptions = {},
): DatabaseUrlResult {
  const label = options.label ?? "--database_url";
  const problems: string[] = [];
  const warnings: string[] = [];
  const malformed = (): DatabaseUrlResult => ({
    problems: [`${label}: ${EXPECTED}, got ${formatValue(redactUrl(url))}`],
    warnings: [],
  });

  if (!/^postgres(ql)?:\/\//i.test(url)) return malformed();
  let parsed: URL;
  try {
    parsed = new URL(url);
  } catch {
    return malformed();
  }
  let host = parsed.hostname;
  if (host.startsWith("[") && host.endsWith("]")) host = host.slice(1, -1);
  const hostname = decode(host);
  const userName = decode(parsed.username);
  const password = decode(parsed.password);
  const path = decode(parsed.pathname.replace(/^\//, ""));
  if (
    !hostname || userName === undefined || password === undefined || path === undefined ||
    path.includes("/") || parsed.hash !== ""
  ) {
    return malformed();
  }

  const name = userName || DEFAULT_USER;
  const values: Record<string, unknown> = {
    name: path || name,
    host: hostname,
    port: parsed.port === "" ? DEFAULT_PORT : Number(parsed.port),
  };
  if (values.port === 0) {
    problems.push(`${label} port: expected an integer from 1 to 65535, got 0`);
  }

  for (const [key, text] of parsed.searchParams) {
    const spec = findKey(DATABASES, key);
    if (spec && PARAMETERS.includes(spec.name)) {
      const checked = checkValue(spec.type, text, { origin: "text" });
      if (checked.ok) {
        values[spec.name] = checked.value;
      } else {
        problems.push(`${label} ${key}: ${checked.error}`);
      }
    } else if (UNSUPPORTED_PARAMETERS.includes(key)) {
      warnings.push(
        `${label}: parameter ${key} is a PgDog setting this version does not support yet; ignored`,
      );
    } else {
      const suggestion = closest(key, [...PARAMETERS, ...UNSUPPORTED_PARAMETERS]);
      const hint = suggestion ? ` (did you mean "${suggestion}"?)` : "";
      problems.push(`${label} ${key}: unknown parameter "${key}"${hint}`);
    }
  }
  if (problems.length > 0) return { problems, warnings };

  const database = withDefaults(DATABASES, values) as unknown as DatabaseConfig;
  const user: UserConfig = { name, database: database.name };
  if (password) user.password = password;
  return { database, user, problems, warnings };
}

/**
 * The checks shared by `loadConfig()` (TOML files) and `resolveConfig()` (a program's object):
 * every section and key against the schema, defaults, `--database_url`, and the checks across
 * sections and files. Problems and warnings are collected, never thrown, and come out sorted by
 * file and line.
 *
 * @module
 */

import type {
  AdminConfig,
  Config,
  DatabaseConfig,
  GeneralConfig,
  PluginConfig,
  RewriteConfig,
  UserConfig,
} from "./types.ts";
import type { TomlLocations, TomlPath } from "./locate.ts";
import { type Entry, format, Report, type Where } from "./report.ts";
import {
  ADMIN,
  type ConfigFile,
  DATABASES,
  findKey,
  findSection,
  GENERAL,
  PLUGINS,
  REWRITE,
  sectionHeader,
  SECTIONS,
  type SectionSpec,
  subsectionKey,
  UNSUPPORTED_SECTIONS,
  USERS,
  withDefaults,
} from "./schema.ts";
import { closest } from "./suggest.ts";
import { checkValue, formatValue, type ValueOrigin } from "./value.ts";
import { parseDatabaseUrl } from "./database_url.ts";
import { readTlsFiles } from "./tls_files.ts";
import { checkSharding } from "./sharding.ts";

/** One configuration input: a file's parsed content or a program's object. */
export interface ConfigSource {
  /** Starts every message about this source: the path as given, or `<config object>`. */
  label: string;
  /** The sections it may hold: those of one file, or (`object`) all of them. */
  kind: ConfigFile | "object";
  /** The content; undefined when the file is missing or could not be read or parsed. */
  data?: unknown;
  /** True when the file exists but could not be read or parsed: checks that need it are skipped. */
  failed?: boolean;
  /** Line numbers, for a TOML file. */
  locations?: TomlLocations;
  /** How its integers are represented. */
  origin: ValueOrigin;
}

export { type MessagePosition, Report } from "./report.ts";

/** The outcome of {@link validateSources}: a configuration unless there were problems. */
export interface ValidationResult {
  /** The complete configuration; undefined when there are problems. */
  config?: Config;
  /** Everything invalid, sorted by file and line. */
  problems: string[];
  /** Everything worth logging, sorted by file and line. */
  warnings: string[];
}

/** Options of {@link validateSources}. */
export interface ValidateOptions {
  /** `postgres://` URLs that replace every `[[databases]]` entry. */
  databaseUrls?: readonly string[];
  /** Messages the caller found before (missing files, TOML syntax errors). */
  report?: Report;
}

function isTable(value: unknown): value is Record<string, unknown> {
  return typeof value === "object" && value !== null && !Array.isArray(value) &&
    !(value instanceof Date);
}

class Validator {
  /** Supported sections that are present but of the wrong kind (a table instead of an array). */
  readonly broken = new Set<string>();

  constructor(
    readonly report: Report,
    readonly source: ConfigSource,
    readonly group: number,
  ) {}

  where(path: TomlPath, label: string): Where {
    return {
      group: this.group,
      file: this.source.label,
      line: this.source.locations?.lineOf(path),
      label,
    };
  }

  problem(where: Where, text: string, key?: string): void {
    this.report.problem(format(where, text, key), where);
  }

  warning(where: Where, text: string, key?: string): void {
    this.report.warning(format(where, text, key), where);
  }

  /** The sections this source may hold. */
  sections(): SectionSpec[] {
    const kind = this.source.kind;
    return SECTIONS.filter((section) => kind === "object" || section.files.includes(kind));
  }

  /** Checks the top level; returns the checked entries of each supported section present. */
  root(): Map<string, Entry[]> {
    const found = new Map<string, Entry[]>();
    const data = this.source.data;
    if (data === undefined) return found;
    if (!isTable(data)) {
      this.problem(this.where([], ""), `expected an object, got ${formatValue(data)}`);
      return found;
    }
    const sections = this.sections();
    for (const [name, value] of Object.entries(data)) {
      if (value === undefined) continue;
      const section = sections.find((spec) => spec.name === name || spec.aliases?.includes(name));
      if (section) {
        const entries = this.section(section, value, { path: [name], written: name });
        found.set(section.name, [...(found.get(section.name) ?? []), ...entries]);
      } else {
        this.unknownSection(name, value);
      }
    }
    return found;
  }

  /**
   * Checks a section's content: a table, or each table of an array. `path` leads to it, and
   * `written` is its name as written (an alias, or `mapping` inside a sharded table); `parent`
   * starts the labels of a nested array's entries.
   */
  section(
    section: SectionSpec,
    value: unknown,
    options: { path: TomlPath; written: string; parent?: string },
  ): Entry[] {
    const { path, parent } = options;
    const header = parent === undefined
      ? sectionHeader({ name: options.written, array: section.array })
      : `${parent} ${options.written}`;
    if (!section.array) {
      const entry = this.table(section, value, path, { label: header, ref: header });
      return entry ? [entry] : [];
    }
    if (!Array.isArray(value)) {
      const where = this.where(path, parent === undefined ? header : parent);
      const key = parent === undefined ? undefined : options.written;
      this.problem(where, `expected an array of tables, got ${formatValue(value)}`, key);
      if (parent === undefined) this.broken.add(section.name);
      return [];
    }
    const entries: Entry[] = [];
    value.forEach((element, index) => {
      const name = parent === undefined && isTable(element) && typeof element.name === "string"
        ? ` (name ${formatValue(element.name)})`
        : "";
      const ref = `${parent === undefined ? "" : `${options.written} `}#${index + 1}`;
      const label = `${header} #${index + 1}${name}`;
      const entry = this.table(section, element, [...path, index], { label, ref });
      if (entry) entries.push(entry);
    });
    return entries;
  }

  table(
    section: SectionSpec,
    raw: unknown,
    path: TomlPath,
    { label, ref }: { label: string; ref: string },
  ): Entry | undefined {
    const where = this.where(path, label);
    if (!isTable(raw)) {
      this.problem(where, `expected a table, got ${formatValue(raw)}`);
      return undefined;
    }
    const values: Record<string, unknown> = {};
    const children = new Map<string, Entry[]>();
    const setBy = new Map<string, string>();
    const invalid = new Set<string>();
    let ok = true;
    for (const [key, value] of Object.entries(raw)) {
      if (value === undefined) continue;
      const at = this.where([...path, key], label);
      const spec = findKey(section, key);
      const nested = section.subsections?.find((sub) => subsectionKey(sub) === key);
      if (nested) {
        const entries = this.section(nested, value, {
          path: [...path, key],
          written: key,
          parent: label,
        });
        children.set(key, entries);
      } else if (spec) {
        const other = setBy.get(spec.name);
        setBy.set(spec.name, key);
        if (other !== undefined) {
          ok = false;
          this.problem(at, `"${key}" and "${other}" are the same setting; set only one`, key);
          continue;
        }
        const checked = checkValue(spec.type, value, { origin: this.source.origin });
        if (checked.ok) {
          values[spec.name] = checked.value;
        } else {
          ok = false;
          invalid.add(spec.name);
          this.problem(at, checked.error, key);
        }
      } else if (section.unsupported.includes(key)) {
        this.report.warning(
          format(
            { ...at, label: "" },
            `${label} ${key} is a PgDog setting this version does not support yet; ignored`,
          ),
          at,
        );
      } else {
        ok = false;
        const names = [
          ...section.keys.flatMap((spec) => [spec.name, ...(spec.aliases ?? [])]),
          ...(section.subsections ?? []).map(subsectionKey),
        ];
        const suggestion = closest(key, [...names, ...section.unsupported]);
        const hint = suggestion ? ` (did you mean "${suggestion}"?)` : "";
        this.problem(at, `unknown key "${key}"${hint}`, key);
      }
    }
    for (const spec of section.keys) {
      if (setBy.has(spec.name)) continue;
      if (spec.required) {
        ok = false;
        this.problem(where, `missing required key "${spec.name}"`, spec.name);
      } else if (
        spec.requiredUnless !== undefined && values[spec.requiredUnless] !== true &&
        !invalid.has(spec.requiredUnless)
      ) {
        ok = false;
        this.problem(
          where,
          `missing required key "${spec.name}" (or set ${spec.requiredUnless} = true)`,
          spec.name,
        );
      }
    }
    return {
      values,
      where,
      ok,
      ref,
      invalid,
      children,
      at: (key, ...rest) => this.where([...path, key, ...rest], label),
    };
  }

  unknownSection(name: string, value: unknown): void {
    const where = this.where([name], "");
    const unsupported = this.source.kind === "users.toml"
      ? undefined
      : UNSUPPORTED_SECTIONS.find((section) => section.name === name);
    if (unsupported) {
      const header = sectionHeader(unsupported);
      this.warning(
        where,
        `${header} is a PgDog section this version does not support yet; ignored`,
      );
      return;
    }
    const tableArray = Array.isArray(value) && value.length > 0 && value.every(isTable);
    if (!isTable(value) && !tableArray) {
      const home = this.sections().find((section) => findKey(section, name));
      const hint = home ? ` (did you mean ${sectionHeader(home)} ${name}?)` : "";
      this.problem(where, `unknown top-level key "${name}"${hint}`);
      return;
    }
    const header = sectionHeader({ name, array: tableArray });
    const elsewhere = findSection(name);
    if (elsewhere) {
      this.problem(where, `unknown section ${header} (it belongs in ${elsewhere.files[0]})`);
      return;
    }
    const candidates = [
      ...this.sections(),
      ...(this.source.kind === "users.toml" ? [] : UNSUPPORTED_SECTIONS),
    ];
    const suggestion = closest(name, candidates.map((section) => section.name));
    const match = candidates.find((section) => section.name === suggestion);
    const hint = match ? ` (did you mean ${sectionHeader(match)}?)` : "";
    this.problem(where, `unknown section ${header}${hint}`);
  }
}

/**
 * Validates the sources (pgdog.toml's then users.toml's content, or one program object),
 * applies `--database_url`s and defaults, and runs the checks across sections.
 */
export function validateSources(
  sources: readonly ConfigSource[],
  options: ValidateOptions = {},
): ValidationResult {
  const report = options.report ?? new Report();
  const validators = sources.map((source, group) => new Validator(report, source, group));
  const found = validators.map((validator) => validator.root());
  const urlGroup = sources.length;
  const crossGroup = urlGroup + 1;
  const collect = (name: string): Entry[] => found.flatMap((sections) => sections.get(name) ?? []);

  const generalEntry = collect("general")[0];
  const general = withDefaults(GENERAL, generalEntry?.values ?? {});
  // users.toml's [admin] replaces pgdog.toml's: the last source that has one wins.
  const admin = withDefaults(ADMIN, collect("admin").at(-1)?.values ?? {});
  const rewrite = withDefaults(REWRITE, collect("rewrite")[0]?.values ?? {});
  let databases = collect("databases");
  const users = collect("users");

  const configSource = sources.find((source) => source.kind !== "users.toml");
  const usersSource = sources.find((source) => source.kind !== "pgdog.toml");
  const configLabel = configSource?.label ?? "pgdog.toml";
  const usersLabel = usersSource?.kind === "object" ? "the users list" : usersSource?.label;
  const configKnown = configSource !== undefined && !configSource.failed;
  const usersKnown = usersSource !== undefined && !usersSource.failed;

  const urls = options.databaseUrls ?? [];
  let urlsValid = true;
  if (urls.length > 0) {
    databases = [];
    const fromUrls: Entry[] = [];
    urls.forEach((url, index) => {
      const label = `--database_url #${index + 1}`;
      const where: Where = { group: urlGroup, label };
      const result = parseDatabaseUrl(url, { label });
      for (const text of result.problems) report.problem(text, { group: urlGroup });
      if (result.problems.length > 0) urlsValid = false;
      for (const text of result.warnings) report.warning(text, { group: urlGroup });
      if (!result.database || !result.user) return;
      databases.push({
        values: { ...result.database },
        where,
        ok: true,
        ref: label,
        at: () => where,
      });
      const user = result.user;
      const same = users.find((entry) =>
        entry.values.name === user.name && entry.values.database === user.database
      );
      const earlierUrl = fromUrls.find((entry) => entry === same);
      if (earlierUrl) {
        if (earlierUrl.values.password !== user.password) {
          report.problem(
            format(
              where,
              `user "${user.name}" of database "${user.database}" has a different password ` +
                `in ${earlierUrl.ref}`,
            ),
            { group: urlGroup },
          );
        }
      } else if (same) {
        if (user.password !== undefined) same.values.password = user.password;
      } else {
        const entry: Entry = { values: { ...user }, where, ok: true, ref: label, at: () => where };
        fromUrls.push(entry);
        users.push(entry);
      }
    });
  }

  // Exact duplicate databases: a warning.
  const hostKey = (values: Record<string, unknown>): string => {
    const { name, host, port, shard, role } = withDefaults(DATABASES, values);
    return JSON.stringify([name, host, port, shard, role]);
  };
  databases.forEach((entry, index) => {
    if (!entry.ok) return;
    const key = hostKey(entry.values);
    const first = databases.slice(0, index).find((other) =>
      other.ok && hostKey(other.values) === key
    );
    if (first) {
      const text = `duplicate of ${first.ref} (same name, host, port, shard and role)`;
      report.warning(format(entry.where, text), entry.where);
    }
  });

  // Two users with the same name and database: a problem.
  users.forEach((entry, index) => {
    const { name, database } = entry.values;
    if (typeof name !== "string" || typeof database !== "string") return;
    const first = users.slice(0, index).find((other) =>
      other.values.name === name && other.values.database === database
    );
    if (first) {
      const text = `user "${name}" of database "${database}" is already defined by ${first.ref}`;
      report.problem(format(entry.where, text), entry.where);
    }
  });

  const databaseNames = new Set(
    databases.map((entry) => entry.values.name).filter((name) => typeof name === "string"),
  );
  const databasesKnown = urls.length > 0 ? urlsValid : configKnown;

  if (databasesKnown && usersKnown) {
    for (const entry of users) {
      const database = entry.values.database;
      if (typeof database !== "string" || databaseNames.has(database)) continue;
      const source = urls.length > 0 ? "--database_url" : configLabel;
      const where = entry.at("database");
      report.warning(
        format(
          where,
          `no database named "${database}" in ${source}; this user cannot connect`,
          "database",
        ),
        where,
      );
    }
    const userDatabases = new Set(users.map((entry) => entry.values.database));
    const warned = new Set<unknown>();
    for (const entry of databases) {
      const name = entry.values.name;
      if (typeof name !== "string" || userDatabases.has(name) || warned.has(name)) continue;
      warned.add(name);
      report.warning(
        format(
          { ...entry.where, label: "" },
          `database "${name}" has no user in ${usersLabel}; no pool is created for it`,
        ),
        entry.where,
      );
    }
  }

  const databasesBroken = validators.some((validator) => validator.broken.has("databases"));
  if (databasesKnown && databases.length === 0 && !(databasesBroken && urls.length === 0)) {
    report.problem(
      `no databases configured: add [[databases]] to ${configLabel} or pass --database_url`,
      { group: crossGroup },
    );
  }

  checkTls(general as Partial<GeneralConfig>, {
    report,
    at: (key) => generalEntry?.at(key) ?? { group: crossGroup, label: "[general]" },
  });
  checkQuerySize(general as Partial<GeneralConfig>, {
    report,
    at: (key) => generalEntry?.at(key) ?? { group: crossGroup, label: "[general]" },
  });

  const sharding = checkSharding({
    report,
    databases,
    databasesKnown: databasesKnown && !(databasesBroken && urls.length === 0),
    databasesSource: urls.length > 0 ? "--database_url" : configLabel,
    tables: collect("sharded_tables"),
    mappings: collect("sharded_mappings"),
    schemas: collect("sharded_schemas"),
    omni: collect("omnisharded_tables"),
  });

  const plugins = collect("plugins");
  checkPlugins(plugins, collect("sharded_tables"), report);

  const problems = report.problems();
  const warnings = report.warnings();
  if (problems.length > 0) return { problems, warnings };
  const config: Config = {
    general: general as unknown as GeneralConfig,
    databases: databases.map((entry) =>
      withDefaults(DATABASES, entry.values) as unknown as DatabaseConfig
    ),
    users: users.map((entry) => withDefaults(USERS, entry.values) as unknown as UserConfig),
    admin: admin as unknown as AdminConfig,
    rewrite: rewrite as unknown as RewriteConfig,
    ...sharding,
    plugins: plugins.map((entry) => withDefaults(PLUGINS, entry.values) as unknown as PluginConfig),
  };
  return { config, problems, warnings };
}

/**
 * The TLS keys of `[general]` together: the client pair comes as a pair, requiring TLS needs it,
 * and every file named must be usable.
 */
function checkTls(
  general: Partial<GeneralConfig>,
  options: { report: Report; at: (key: string) => Where },
): void {
  const { report, at } = options;
  const problem = (key: string, text: string): void => {
    const where = at(key);
    report.problem(format(where, text, key), where);
  };
  const hasCert = general.tls_certificate !== undefined;
  const hasKey = general.tls_private_key !== undefined;
  if (hasCert !== hasKey) {
    problem(
      hasCert ? "tls_certificate" : "tls_private_key",
      `${hasCert ? "tls_private_key" : "tls_certificate"} must be set too to offer TLS to clients`,
    );
  }
  if (general.tls_client_required === true && !(hasCert && hasKey)) {
    problem("tls_client_required", "requires tls_certificate and tls_private_key");
  }
  const verify = general.tls_verify;
  if (
    general.tls_server_ca_certificate !== undefined && verify !== "verify_ca" &&
    verify !== "verify_full"
  ) {
    const where = at("tls_server_ca_certificate");
    report.warning(
      format(
        where,
        `only used with tls_verify = "verify_ca" or "verify_full" (it is "${verify}"); ignored`,
        "tls_server_ca_certificate",
      ),
      where,
    );
  }
  const files = readTlsFiles({
    tls_certificate: general.tls_certificate,
    tls_private_key: general.tls_private_key,
    tls_server_ca_certificate: verify === "verify_ca" || verify === "verify_full"
      ? general.tls_server_ca_certificate
      : undefined,
  });
  for (const { key, message } of files.problems) {
    problem(key, message);
  }
}

/** A query_size_limit that max_message_size makes pointless is worth a warning. */
function checkQuerySize(
  general: Partial<GeneralConfig>,
  options: { report: Report; at: (key: string) => Where },
): void {
  const limit = general.query_size_limit;
  const max = general.max_message_size;
  if (limit === undefined || max === undefined || limit < max) return;
  const where = options.at("query_size_limit");
  options.report.warning(
    format(
      where,
      `${limit} is not below max_message_size (${max}): a larger message closes the connection ` +
        "first (08P01), so query_size_limit_action never applies",
      "query_size_limit",
    ),
    where,
  );
}

/** Plugin names are unique, and every `hasher = "plugin:<name>"` names one of them. */
function checkPlugins(plugins: Entry[], tables: Entry[], report: Report): void {
  const names = new Map<string, Entry>();
  for (const entry of plugins) {
    const name = entry.values.name;
    if (typeof name !== "string") continue;
    const first = names.get(name);
    if (first) {
      const where = entry.at("name");
      report.problem(
        format(where, `plugin "${name}" is already defined by ${first.ref}`, "name"),
        where,
      );
    } else names.set(name, entry);
  }
  for (const entry of tables) {
    const hasher = entry.values.hasher;
    if (typeof hasher !== "string" || !hasher.startsWith("plugin:")) continue;
    const name = hasher.slice("plugin:".length);
    if (names.has(name)) continue;
    const where = entry.at("hasher");
    const known = [...names.keys()].map((n) => `"${n}"`).join(", ") || "none";
    report.problem(
      format(where, `no [[plugins]] entry named "${name}" (plugins: ${known})`, "hasher"),
      where,
    );
  }
}

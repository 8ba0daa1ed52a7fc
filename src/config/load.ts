/**
 * Loading `pgdog.toml` and `users.toml` (`loadConfig`), or checking a configuration object given
 * by a program (`resolveConfig`): validation against the schema, defaults, `--database_url`.
 *
 * @module
 */

import { parse, TomlError } from "smol-toml";
import type { Config, PartialConfig } from "./types.ts";
import { locateToml } from "./locate.ts";
import { type ConfigSource, Report, validateSources } from "./validate.ts";
import type { ConfigFile } from "./schema.ts";
import { readErrorMessage } from "./read_grants.ts";

/** A valid configuration and the warnings found while loading it. */
export interface LoadedConfig {
  /** The configuration, with every default filled in. */
  config: Config;
  /** Things worth logging that do not stop the proxy (each a complete line). */
  warnings: string[];
}

/** The configuration is invalid; `problems` lists everything that is wrong, in file/line order. */
export class ConfigError extends Error {
  /** One line per problem, e.g. `pgdog.toml:3: [general] port: expected ...`. */
  readonly problems: string[];
  /** Warnings found along the way (the same as a successful load would have returned). */
  readonly warnings: string[];

  /** The message is the problems joined by newlines. */
  constructor(problems: string[], warnings: string[] = []) {
    super(problems.join("\n"));
    this.name = "ConfigError";
    this.problems = problems;
    this.warnings = warnings;
  }
}

/** Paths of the two configuration files, used as given in messages. */
export interface ConfigPaths {
  /** pgdog.toml: `[general]`, `[[databases]]`, `[admin]`. */
  config: string;
  /** users.toml: `[[users]]` and optionally `[admin]`. */
  users: string;
}

/** Options of {@link loadConfig}. */
export interface LoadConfigOptions {
  /** `--database_url` values; when given they replace every `[[databases]]` entry. */
  databaseUrls?: string[];
}

/** Options of {@link resolveConfig}. */
export interface ResolveConfigOptions {
  /** Database URLs; when given they replace every database of the object. */
  databaseUrls?: string[];
  /** Starts every message; defaults to `<config object>`. */
  source?: string;
}

const TOML_PREFIX = /^Invalid TOML document:\s*/;

async function readSource(
  path: string,
  kind: ConfigFile,
  report: Report,
  group: number,
): Promise<ConfigSource> {
  const source: ConfigSource = { label: path, kind, origin: "toml" };
  let text: string;
  try {
    text = await Deno.readTextFile(path);
  } catch (error) {
    if (error instanceof Deno.errors.NotFound) {
      report.warning(`${path}: file not found; using defaults`, { group, line: 0 });
      return source;
    }
    const reason = readErrorMessage(error);
    report.problem(`${path}: cannot read the file: ${reason}`, { group, line: 0 });
    return { ...source, failed: true };
  }
  if (text.startsWith("\uFEFF")) text = text.slice(1);
  try {
    source.data = parse(text, { integersAsBigInt: true, unsafeKeyBehaviour: "throw" });
  } catch (error) {
    if (!(error instanceof TomlError)) throw error;
    const reason = error.message.split("\n")[0].replace(TOML_PREFIX, "");
    report.problem(`${path}:${error.line}:${error.column}: invalid TOML: ${reason}`, {
      group,
      line: error.line,
    });
    return { ...source, failed: true };
  }
  source.locations = locateToml(text);
  return source;
}

/**
 * Reads, validates and completes the configuration. A missing file is a warning and its
 * defaults are used, like PgDog. Every problem in both files is collected before throwing.
 *
 * @throws {ConfigError} when anything is invalid.
 */
export async function loadConfig(
  paths: ConfigPaths,
  options: LoadConfigOptions = {},
): Promise<LoadedConfig> {
  const report = new Report();
  const sources = [
    await readSource(paths.config, "pgdog.toml", report, 0),
    await readSource(paths.users, "users.toml", report, 1),
  ];
  const result = validateSources(sources, { databaseUrls: options.databaseUrls, report });
  if (!result.config) throw new ConfigError(result.problems, result.warnings);
  return { config: result.config, warnings: result.warnings };
}

/**
 * Validates and completes a configuration given by a program (`startProxy(config)`), with the
 * same checks and defaults as {@link loadConfig}. Messages have no line:
 * `<config object>: [general] port: expected an integer from 0 to 65535, got -1`.
 *
 * @throws {ConfigError} when anything is invalid.
 */
export function resolveConfig(
  input: PartialConfig,
  options: ResolveConfigOptions = {},
): LoadedConfig {
  const source: ConfigSource = {
    label: options.source ?? "<config object>",
    kind: "object",
    data: input,
    origin: "object",
  };
  const result = validateSources([source], { databaseUrls: options.databaseUrls });
  if (!result.config) throw new ConfigError(result.problems, result.warnings);
  return { config: result.config, warnings: result.warnings };
}

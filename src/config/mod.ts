/**
 * Configuration: loading and validating `pgdog.toml` and `users.toml` (or a program's object),
 * their schema and reference, and the per-pool settings derived from them.
 *
 * @example
 * ```ts
 * import { loadConfig } from "./src/config/mod.ts";
 * const { config, warnings } = await loadConfig({ config: "pgdog.toml", users: "users.toml" });
 * ```
 *
 * @module
 */

export type {
  AdminConfig,
  AuthType,
  Config,
  DatabaseConfig,
  DatabaseRole,
  GeneralConfig,
  OmniTableConfig,
  PartialConfig,
  PartialShardMapping,
  PoolerMode,
  ShardedSchemaConfig,
  ShardedTableConfig,
  ShardingDataType,
  ShardingHasher,
  ShardKeyValue,
  ShardMapping,
  ShardMappingDefault,
  ShardMappingList,
  ShardMappingRange,
  UserConfig,
} from "./types.ts";
export { canonicalUuid, compareShardKeys } from "./sharding.ts";
export {
  ConfigError,
  type ConfigPaths,
  loadConfig,
  type LoadConfigOptions,
  type LoadedConfig,
  resolveConfig,
  type ResolveConfigOptions,
} from "./load.ts";
export {
  type PoolSettings,
  type PoolSettingsOptions,
  resolvePoolSettings,
} from "./pool_settings.ts";
export {
  type DatabaseUrlResult,
  parseDatabaseUrl,
  type ParseDatabaseUrlOptions,
  redactUrl,
} from "./database_url.ts";
export {
  ADMIN,
  type ConfigFile,
  DATABASES,
  type DefaultValue,
  GENERAL,
  type KeySpec,
  OMNISHARDED_TABLES,
  renderReference,
  SECTIONS,
  type SectionSpec,
  SHARDED_MAPPINGS,
  SHARDED_SCHEMAS,
  SHARDED_TABLE_MAPPING,
  SHARDED_TABLES,
  UNSUPPORTED_SECTIONS,
  type UnsupportedSection,
  USERS,
  type ValueType,
} from "./schema.ts";

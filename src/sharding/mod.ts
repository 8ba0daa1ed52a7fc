/**
 * Sharding primitives: PostgreSQL-compatible hash partitioning of sharding
 * keys and PgDog-compatible unique ids.
 *
 * @module
 */

export * from "./hash.ts";
export * from "./unique_id.ts";

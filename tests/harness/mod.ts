/**
 * Test harness: throwaway PostgreSQL clusters and streaming replicas, the
 * proxy as a subprocess, and real clients (psql, pgbench, npm:pg).
 *
 * @module
 */

export * from "./command.ts";
export * from "./net.ts";
export * from "./postgres.ts";
export * from "./replication.ts";
export * from "./proxy.ts";
export * from "./clients.ts";
export * from "./sharded.ts";
export * from "./python.ts";
export * from "./util.ts";

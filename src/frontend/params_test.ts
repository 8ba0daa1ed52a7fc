import { deepEqual, equal } from "node:assert/strict";
import {
  paramsSignature,
  paramSyncSql,
  paramSyncStatements,
  parseStartupOptions,
  quoteLiteral,
  sessionParamsFromStartup,
} from "./params.ts";

Deno.test("startup options: -c, -cname, --name and escaped spaces", () => {
  deepEqual(
    parseStartupOptions("-c search_path=a,b -cstatement_timeout=5s --work-mem=64MB -c x=a\\ b -v"),
    [
      ["search_path", "a,b"],
      ["statement_timeout", "5s"],
      ["work_mem", "64MB"],
      ["x", "a b"],
    ],
  );
  deepEqual(parseStartupOptions(""), []);
});

Deno.test("session parameters leave out user, database, protocol and routing keys", () => {
  const params = sessionParamsFromStartup(
    new Map([
      ["user", "u"],
      ["database", "d"],
      ["application_name", "app"],
      ["DateStyle", "ISO"],
      ["_pq_.x", "1"],
      ["pgdog.role", "replica"],
      ["options", "-c TimeZone=UTC -c pgdog.shard=1"],
    ]),
  );
  deepEqual([...params].sort(), [["application_name", "app"], ["datestyle", "ISO"], [
    "timezone",
    "UTC",
  ]]);
});

Deno.test("a parameter given on its own wins over the same one in options, as in PostgreSQL", () => {
  const params = sessionParamsFromStartup(
    new Map([["TimeZone", "Asia/Tokyo"], ["options", "-c TimeZone=Europe/Paris -c work_mem=8MB"]]),
  );
  equal(params.get("timezone"), "Asia/Tokyo");
  equal(params.get("work_mem"), "8MB");
});

Deno.test("sync SQL resets what the client lacks and sets what differs, quoting safely", () => {
  const desired = new Map([["application_name", "it's"], ["search_path", '"$user", public']]);
  const applied = new Map([["application_name", "old"], ["timezone", "UTC"]]);
  equal(
    paramSyncSql(desired, applied),
    "RESET \"timezone\";SELECT pg_catalog.set_config(E'application_name',E'it''s',false)," +
      "pg_catalog.set_config(E'search_path',E'\"$user\", public',false)",
  );
  equal(paramSyncSql(desired, new Map(desired)), null);
  equal(quoteLiteral("a\\b'c"), "E'a\\\\b''c'");
});

Deno.test("signature is independent of order", () => {
  equal(
    paramsSignature(new Map([["a", "1"], ["b", "2"]])),
    paramsSignature(new Map([["b", "2"], ["a", "1"]])),
  );
  equal(paramsSignature(new Map()), "");
});

Deno.test("sync SQL resets another identity first and sets the client's last", () => {
  // A superuser-only setting left by a client that then became lo_user: reset as the login.
  const applied = new Map([["lo_compat_privileges", "on"], ["session_authorization", "lo_user"]]);
  deepEqual(paramSyncStatements(new Map(), applied), [
    "SET SESSION AUTHORIZATION DEFAULT",
    'RESET "lo_compat_privileges"',
  ]);
  // The client's own identity goes on after its settings (which it set before changing it).
  const desired = new Map([["role", "r"], ["work_mem", "8MB"], ["session_authorization", "s"]]);
  deepEqual(paramSyncStatements(desired, new Map([["role", "r"]])), [
    "SET SESSION AUTHORIZATION DEFAULT",
    "SELECT pg_catalog.set_config(E'work_mem',E'8MB',false)," +
    "pg_catalog.set_config(E'session_authorization',E's',false)," +
    "pg_catalog.set_config(E'role',E'r',false)",
  ]);
  deepEqual(paramSyncStatements(new Map([["role", "r"]]), new Map()), [
    "SELECT pg_catalog.set_config(E'role',E'r',false)",
  ]);
  equal(paramSyncStatements(desired, new Map(desired)), null);
});

/**
 * The queries of the cross-shard differential suite (tests/cross_shard_queries_test.ts), one
 * table per part of issue #19's "What must work", over the rows of tests/cross_shard_data.ts.
 *
 * A case is answered by pgdog exactly as the reference answers it: rows in the same order when
 * its ORDER BY is total (every ordered case ends with a unique key), as multisets when
 * `unordered`. `orRefused`: a clear refusal (0A000 with a reason, in every protocol) is
 * acceptable too (shapes the issue allows to refuse: grouping sets, arrays, jsonb order...).
 *
 * @module
 */

/** One query of the suite. */
export interface Case {
  sql: string;
  /** No total ORDER BY: compare the rows as multisets. */
  unordered?: boolean;
  /** Parameters ($1...), for the extended protocols. */
  values?: unknown[];
  /** float4/float8 results compared within rounding. */
  floats?: boolean;
  /** Also run as a named prepared statement executed twice. */
  prepared?: boolean;
  /** A 0A000 refusal with a reason is an acceptable answer. */
  orRefused?: boolean;
}

/** A case from a string (ordered) or as given. */
export function cases(list: Array<string | Case>): Case[] {
  return list.map((c) => typeof c === "string" ? { sql: c } : c);
}

const unordered = (sql: string, extra: Partial<Case> = {}): Case => ({
  sql,
  unordered: true,
  ...extra,
});

/** Finite float8 ratings (NaN, ±Infinity and NULL left out). */
const FINITE = "rating < 'Infinity' AND rating > '-Infinity'";

/** ORDER BY: names, aliases, positions, expressions, unselected columns, every type. */
export const ORDER_BY: Case[] = cases([
  "SELECT id, name FROM users ORDER BY id",
  { sql: "SELECT id, name FROM users ORDER BY id DESC", prepared: true },
  "SELECT id AS uid, name FROM users ORDER BY uid DESC LIMIT 20",
  "SELECT name, id FROM users ORDER BY 2 LIMIT 30",
  "SELECT name, id FROM users ORDER BY 1, 2",
  "SELECT name, id FROM users ORDER BY name DESC, id",
  "SELECT name, id FROM users ORDER BY name NULLS FIRST, id DESC",
  "SELECT name, id FROM users ORDER BY name DESC NULLS LAST, id",
  "SELECT id FROM users ORDER BY age, id",
  "SELECT id, name FROM users ORDER BY age DESC NULLS LAST, name, id",
  "SELECT id, age FROM users ORDER BY age * -1, id",
  { sql: "SELECT id FROM users ORDER BY lower(name), id", prepared: true },
  "SELECT id, name || '!' AS shout FROM users ORDER BY shout, id",
  "SELECT id FROM users ORDER BY length(name) DESC NULLS LAST, id",
  "SELECT name FROM users ORDER BY name, id",
  "SELECT id, email FROM users ORDER BY email DESC, id",
  "SELECT country, id FROM users ORDER BY country, id",
  'SELECT id, name FROM users ORDER BY name COLLATE "C", id',
  'SELECT id, name FROM users ORDER BY name COLLATE "C" DESC NULLS LAST, id',
  "SELECT id, balance FROM users ORDER BY balance, id",
  "SELECT id, balance FROM users ORDER BY balance DESC NULLS LAST, id",
  "SELECT id, bonus FROM users ORDER BY bonus, id",
  "SELECT id, rating FROM users ORDER BY rating, id",
  "SELECT id, rating FROM users ORDER BY rating DESC, id",
  "SELECT id, weight FROM users ORDER BY weight NULLS FIRST, id",
  "SELECT id, small, big FROM users ORDER BY small DESC, id",
  "SELECT id, big FROM users ORDER BY big, id",
  "SELECT id, active FROM users ORDER BY active, id",
  "SELECT id, born FROM users ORDER BY born DESC, id",
  "SELECT id, created_at FROM users ORDER BY created_at DESC, id",
  "SELECT id, wake FROM users ORDER BY wake DESC NULLS LAST, id",
  "SELECT id, name::name AS n FROM users ORDER BY n, id",
  "SELECT id, last_login FROM users ORDER BY last_login NULLS FIRST, id",
  "SELECT id, session_len FROM users ORDER BY session_len, id",
  "SELECT id, token FROM users ORDER BY token, id",
  "SELECT id, avatar FROM users ORDER BY avatar, id",
  "SELECT id FROM users ORDER BY prefs->>'theme', id",
  "SELECT * FROM orders ORDER BY user_id, id",
  "SELECT id, amount FROM orders ORDER BY amount DESC, placed_on, id",
  "SELECT o.id, o.price FROM orders o ORDER BY o.price, o.id",
  "SELECT status, id FROM orders ORDER BY status, id",
  "SELECT id, age % 7 AS m FROM users ORDER BY m, age, id",
  "SELECT id FROM users WHERE active ORDER BY id",
  "SELECT id, age FROM users WHERE age > 1000 ORDER BY id",
  "SELECT order_id, line, qty FROM order_items ORDER BY unit_price DESC, order_id, line LIMIT 50",
  "SELECT id, name, email, country, age, small, big, flags, balance, bonus, rating, weight, " +
  "active, born, created_at, wake, last_login, session_len, token, avatar, prefs, lucky FROM users " +
  "ORDER BY id",
  "SELECT * FROM order_items ORDER BY order_id, line",
  { sql: "SELECT id, lucky FROM users ORDER BY lucky, id", orRefused: true },
  { sql: "SELECT id, prefs FROM users ORDER BY prefs, id", orRefused: true },
  {
    sql: 'SELECT id, name FROM users ORDER BY name COLLATE "en-US-x-icu", id',
    orRefused: true,
  },
]);

/** LIMIT, OFFSET, FETCH FIRST: literals and parameters. */
export const LIMITS: Case[] = cases([
  "SELECT id FROM users ORDER BY id LIMIT 10",
  "SELECT id FROM users ORDER BY id LIMIT 10 OFFSET 25",
  "SELECT id FROM users ORDER BY id OFFSET 2990",
  "SELECT id FROM users ORDER BY id OFFSET 5000",
  "SELECT id FROM users ORDER BY id LIMIT 0",
  "SELECT id FROM users ORDER BY id LIMIT ALL",
  "SELECT id FROM users ORDER BY id LIMIT NULL OFFSET 2995",
  "SELECT id, name FROM users ORDER BY name, id FETCH FIRST 5 ROWS ONLY",
  "SELECT id, name FROM users ORDER BY name DESC, id OFFSET 3 ROWS FETCH NEXT 7 ROWS ONLY",
  "SELECT id FROM users ORDER BY id FETCH FIRST ROW ONLY",
  "SELECT id, amount FROM orders ORDER BY amount, id LIMIT 15 OFFSET 100",
  "SELECT id FROM users ORDER BY rating DESC NULLS LAST, id LIMIT 5",
  { sql: "SELECT id FROM users ORDER BY id LIMIT $1", values: [5], prepared: true },
  {
    sql: "SELECT id, age FROM users ORDER BY age DESC NULLS LAST, id LIMIT $1 OFFSET $2",
    values: [7, 11],
    prepared: true,
  },
  {
    sql: "SELECT id FROM users WHERE age > $1 ORDER BY id LIMIT $2",
    values: [50, 12],
    prepared: true,
  },
  {
    sql: "SELECT id FROM users ORDER BY id OFFSET $1 ROWS FETCH FIRST $2 ROWS ONLY",
    values: [100, 3],
    prepared: true,
  },
  { sql: "SELECT id FROM users ORDER BY id DESC LIMIT $1", values: [null] },
  unordered("SELECT id, age FROM users ORDER BY age FETCH FIRST 3 ROWS WITH TIES", {
    orRefused: true,
  }),
]);

/** Aggregates: every function, types, FILTER, DISTINCT, empty input, overflow. */
export const AGGREGATES: Case[] = cases([
  "SELECT count(*) FROM users",
  "SELECT count(*), count(age), count(name), count(rating) FROM users",
  "SELECT count(*) FROM order_items",
  "SELECT sum(age), sum(small), sum(flags) FROM users",
  "SELECT sum(big) FROM users",
  "SELECT sum(balance) FROM users",
  "SELECT sum(bonus) FROM users",
  "SELECT sum(bonus) FROM users WHERE bonus < 'Infinity'",
  "SELECT sum(price), sum(amount) FROM orders",
  { sql: `SELECT sum(weight), sum(rating) FROM users WHERE ${FINITE}`, floats: true },
  { sql: "SELECT sum(rating) FROM users", floats: true },
  { sql: "SELECT avg(age), avg(small), avg(big) FROM users", prepared: true },
  "SELECT avg(balance) FROM users",
  "SELECT avg(price), avg(amount) FROM orders",
  { sql: `SELECT avg(rating), avg(weight) FROM users WHERE ${FINITE}`, floats: true },
  "SELECT avg(session_len), sum(session_len), min(session_len), max(session_len) FROM users",
  "SELECT min(age), max(age), min(small), max(big) FROM users",
  "SELECT min(name), max(name), min(email), max(country) FROM users",
  "SELECT min(balance), max(balance), min(bonus), max(bonus) FROM users",
  "SELECT min(rating), max(rating), min(weight), max(weight) FROM users",
  "SELECT min(born), max(born), min(created_at), max(last_login) FROM users",
  "SELECT min(wake), max(wake), min(created_at) FILTER (WHERE id > 0) FROM users",
  {
    sql: "SELECT corr(age, small), regr_slope(age, small) FROM users",
    floats: true,
    orRefused: true,
  },
  "SELECT stddev(age), stddev_samp(age), stddev_pop(age), variance(age), var_samp(age), " +
  "var_pop(age) FROM users",
  "SELECT stddev(big), variance(small) FROM users",
  "SELECT var_pop(amount), stddev_samp(price) FROM orders",
  "SELECT stddev(balance), var_samp(balance) FROM users WHERE balance < 1e20",
  {
    sql: `SELECT stddev(rating), var_pop(weight), variance(weight) FROM users WHERE ${FINITE}`,
    floats: true,
  },
  "SELECT stddev(age), stddev_pop(age), variance(age), var_pop(age) FROM users " +
  "WHERE email = 'user205@example.org'",
  "SELECT bool_and(active), bool_or(active), every(active) FROM users",
  "SELECT bool_and(active), bool_or(NOT active) FROM users WHERE active",
  "SELECT bit_and(flags), bit_or(flags), bit_and(small), bit_or(small) FROM users",
  "SELECT array_agg(id ORDER BY id) FROM users WHERE age = 42",
  "SELECT array_agg(name ORDER BY name DESC, id) FROM users WHERE age < -5",
  {
    sql: "SELECT string_agg(name, ',' ORDER BY name, id) FROM users WHERE age BETWEEN 10 AND 12",
    prepared: true,
  },
  "SELECT string_agg(DISTINCT status, '|' ORDER BY status) FROM orders",
  "SELECT json_agg(id ORDER BY id DESC) FROM users WHERE age = 7",
  "SELECT jsonb_agg(prefs ORDER BY id) FROM users WHERE age = 8",
  "SELECT array_agg(DISTINCT country ORDER BY country) FROM users",
  "SELECT count(*) FILTER (WHERE active), count(*) FILTER (WHERE NOT active) FROM users",
  "SELECT sum(age) FILTER (WHERE country = 'fr'), avg(age) FILTER (WHERE age > 50) FROM users",
  {
    sql: "SELECT count(DISTINCT country), count(DISTINCT name), count(DISTINCT age) FROM users",
    prepared: true,
  },
  "SELECT sum(DISTINCT age), avg(DISTINCT small) FROM users",
  "SELECT count(DISTINCT session_len), count(DISTINCT rating), count(DISTINCT balance) FROM users",
  "SELECT count(DISTINCT token), count(DISTINCT prefs), count(DISTINCT avatar) FROM users",
  { sql: "SELECT count(DISTINCT lucky) FROM users", orRefused: true },
  "SELECT count(DISTINCT user_id) FROM orders",
  "SELECT sum(age * 2), max(lower(name)), count(nullif(age, 0)) FROM users",
  "SELECT sum(qty * unit_price), max(qty) FROM order_items",
  "SELECT count(*), count(age), sum(age), avg(age), min(name), max(rating) FROM users " +
  "WHERE age > 1000",
  "SELECT stddev(age), var_pop(age), bool_and(active), bit_or(flags), array_agg(id), " +
  "string_agg(name, ','), json_agg(id) FROM users WHERE id > 100000",
  "SELECT count(DISTINCT age), sum(DISTINCT age) FROM users WHERE false",
  "SELECT sum(small), sum(age), sum(big), avg(small), avg(age), avg(big), avg(balance), " +
  "count(*) FROM users WHERE id < 0",
  // Overflow: of int4 on the shards, and of int8 in pgdog's HAVING.
  "SELECT sum(age * 100000000) FROM users",
  "SELECT count(*) FROM users HAVING count(*) * 9223372036854775807 > 0",
  { sql: "SELECT sum(age) + 1, count(*) * 2 FROM users", orRefused: true },
  { sql: "SELECT sum(big)::int8 FROM users", orRefused: true },
]);

/** GROUP BY, HAVING, ORDER BY an aggregate, LIMIT after grouping, grouping sets. */
export const GROUPING: Case[] = cases([
  unordered("SELECT country, count(*) FROM users GROUP BY country"),
  "SELECT country, count(*), sum(age), avg(balance), min(name), max(rating) FROM users " +
  "GROUP BY country ORDER BY country",
  unordered("SELECT count(*) FROM users GROUP BY country"),
  "SELECT age % 10 AS bucket, count(*) FROM users GROUP BY bucket ORDER BY bucket",
  "SELECT age % 10, count(*), sum(small) FROM users GROUP BY 1 ORDER BY 1 NULLS FIRST",
  unordered("SELECT lower(name), count(*) FROM users GROUP BY lower(name)"),
  "SELECT country, active, count(*) FROM users GROUP BY country, active ORDER BY country, active",
  unordered("SELECT count(*) FROM users GROUP BY rating"),
  unordered("SELECT count(*) FROM users GROUP BY balance"),
  unordered("SELECT count(*) FROM users GROUP BY session_len"),
  unordered("SELECT token, count(*) FROM users GROUP BY token"),
  unordered("SELECT avatar, count(*) FROM users GROUP BY avatar"),
  unordered("SELECT prefs, count(*) FROM users GROUP BY prefs"),
  unordered("SELECT lucky, count(*) FROM users GROUP BY lucky", { orRefused: true }),
  unordered("SELECT born, count(*) FROM users GROUP BY born"),
  unordered("SELECT wake, count(*), max(created_at) FROM users GROUP BY wake"),
  // Functionally dependent columns: grouped by the primary key.
  "SELECT id, name, count(*) FROM users GROUP BY id ORDER BY id LIMIT 40",
  unordered("SELECT ARRAY[[age % 2, 1], [0, small % 2]] AS m, count(*) FROM users GROUP BY 1", {
    orRefused: true,
  }),
  unordered("SELECT date_trunc('month', last_login) AS m, count(*) FROM users GROUP BY m"),
  unordered("SELECT name, count(*) FROM users GROUP BY name"),
  "SELECT user_id, count(*), sum(amount) FROM orders GROUP BY user_id ORDER BY user_id",
  "SELECT status, count(*) FROM orders GROUP BY status ORDER BY count(*) DESC, status",
  "SELECT country, avg(age) FROM users GROUP BY country ORDER BY avg(age) DESC NULLS LAST, " +
  "country",
  "SELECT country FROM users GROUP BY country ORDER BY max(age), country",
  "SELECT country, count(*) AS n FROM users GROUP BY country ORDER BY n, country",
  "SELECT user_id, sum(amount) FROM orders GROUP BY user_id ORDER BY sum(amount) DESC, user_id " +
  "LIMIT 10",
  "SELECT status, sum(price) FROM orders GROUP BY status ORDER BY 2 DESC, 1 LIMIT 3",
  "SELECT placed_on, count(*) FROM orders GROUP BY placed_on ORDER BY count(*) DESC, placed_on " +
  "LIMIT 5 OFFSET 2",
  {
    sql: "SELECT age % 10, count(*) FROM users GROUP BY 1 ORDER BY 1 LIMIT $1",
    values: [3],
    prepared: true,
  },
  "SELECT country, count(DISTINCT age), count(DISTINCT name) FROM users GROUP BY country " +
  "ORDER BY country",
  "SELECT status, count(*) FILTER (WHERE amount > 0), sum(amount) FILTER (WHERE note IS NULL) " +
  "FROM orders GROUP BY status ORDER BY status",
  "SELECT country, string_agg(name, ',' ORDER BY id) FROM users WHERE age = 3 GROUP BY country " +
  "ORDER BY country",
  "SELECT country, stddev(age), var_pop(small) FROM users GROUP BY country ORDER BY country",
  // HAVING
  unordered("SELECT country, count(*) FROM users GROUP BY country HAVING count(*) > 300"),
  "SELECT country, count(*) FROM users GROUP BY country HAVING sum(age) > 1000 AND " +
  "count(*) < 400 ORDER BY country",
  "SELECT country FROM users GROUP BY country HAVING NOT (avg(age) < 39) OR max(age) IS NULL " +
  "ORDER BY country",
  "SELECT country FROM users GROUP BY country HAVING min(age) IS NOT NULL ORDER BY 1",
  "SELECT status, count(*) FROM orders GROUP BY status HAVING count(*) BETWEEN 900 AND 1100 " +
  "ORDER BY status",
  "SELECT age, count(*) FROM users GROUP BY age HAVING age IN (1, 2, 3) OR age IS NULL " +
  "ORDER BY age",
  "SELECT age, count(*) FROM users GROUP BY age HAVING count(*) NOT IN (30, 31, 32) ORDER BY age",
  "SELECT user_id, sum(amount) FROM orders GROUP BY user_id HAVING sum(amount) % 2 = 0 " +
  "ORDER BY user_id",
  "SELECT status FROM orders GROUP BY status HAVING count(*) * 2 > 2000 ORDER BY status",
  "SELECT status FROM orders GROUP BY status HAVING avg(price) > 35.5 ORDER BY status",
  "SELECT country FROM users GROUP BY country HAVING count(DISTINCT age) > 90 ORDER BY country",
  "SELECT country FROM users GROUP BY country HAVING bool_or(active) ORDER BY country",
  "SELECT country FROM users GROUP BY country HAVING max(name) <> 'z' ORDER BY country",
  {
    sql: "SELECT age % 10 AS b FROM users GROUP BY b HAVING sum(age) - min(age) > $1 ORDER BY b",
    values: [100],
    prepared: true,
  },
  "SELECT count(*) FROM users HAVING count(*) > 1",
  "SELECT count(*) FROM users HAVING count(*) > 100000",
  "SELECT country, count(*) FROM users GROUP BY country HAVING country IS NOT NULL AND " +
  "count(*) BETWEEN 1 AND 10000 ORDER BY count(*) DESC, country",
  "SELECT status FROM orders GROUP BY status HAVING NOT (max(amount) BETWEEN 0 AND 800) " +
  "ORDER BY status",
  "SELECT country FROM users GROUP BY country HAVING sum(age) / count(age) > 38 ORDER BY 1",
  // Grouping sets: answered right or refused.
  unordered("SELECT country, active, count(*) FROM users GROUP BY ROLLUP (country, active)", {
    orRefused: true,
  }),
  unordered("SELECT country, active, count(*) FROM users GROUP BY CUBE (country, active)", {
    orRefused: true,
  }),
  unordered("SELECT country, count(*) FROM users GROUP BY GROUPING SETS ((country), ())", {
    orRefused: true,
  }),
]);

/** DISTINCT, DISTINCT ON, UNION / INTERSECT / EXCEPT [ALL]. */
export const DISTINCT_AND_SETS: Case[] = cases([
  unordered("SELECT DISTINCT country FROM users"),
  "SELECT DISTINCT country FROM users ORDER BY country",
  "SELECT DISTINCT country, active FROM users ORDER BY 1, 2",
  "SELECT DISTINCT name FROM users ORDER BY name",
  unordered("SELECT DISTINCT age % 5 FROM users"),
  "SELECT DISTINCT age FROM users ORDER BY age LIMIT 5",
  "SELECT DISTINCT age FROM users ORDER BY age DESC NULLS LAST LIMIT 5 OFFSET 3",
  unordered("SELECT DISTINCT token FROM users"),
  unordered("SELECT DISTINCT prefs FROM users"),
  unordered("SELECT DISTINCT status, placed_on FROM orders"),
  "SELECT DISTINCT ON (country) country, id, name FROM users ORDER BY country, id",
  "SELECT DISTINCT ON (country) country, id FROM users ORDER BY country DESC, age, id",
  "SELECT DISTINCT ON (user_id) user_id, id, amount FROM orders ORDER BY user_id, amount DESC, id",
  "SELECT DISTINCT ON (status) status, id, amount FROM orders ORDER BY status, amount DESC, id",
  {
    sql:
      "SELECT DISTINCT ON (status) status, id FROM orders ORDER BY status, amount DESC, id LIMIT 2",
    prepared: true,
  },
  "SELECT DISTINCT ON (age % 3) age % 3, name FROM users ORDER BY age % 3, name, id",
  unordered("SELECT country FROM users UNION SELECT code FROM countries"),
  "SELECT id FROM users UNION SELECT user_id FROM orders ORDER BY 1",
  unordered("SELECT status FROM orders UNION SELECT name FROM users WHERE age = 3"),
  unordered(
    "SELECT id FROM users WHERE id < 100 UNION ALL SELECT user_id FROM orders WHERE user_id < 100",
  ),
  "SELECT age FROM users UNION ALL SELECT amount FROM orders ORDER BY 1 NULLS FIRST LIMIT 20",
  unordered("SELECT age FROM users INTERSECT SELECT amount FROM orders"),
  unordered("SELECT age FROM users INTERSECT ALL SELECT amount FROM orders"),
  unordered("SELECT age FROM users EXCEPT SELECT amount FROM orders"),
  unordered("SELECT age FROM users EXCEPT ALL SELECT amount FROM orders"),
  unordered(
    "SELECT country, active FROM users EXCEPT ALL SELECT country, true FROM users WHERE age > 50",
  ),
  "(SELECT name FROM users WHERE age < 0) UNION (SELECT status FROM orders) ORDER BY 1 LIMIT 7",
  "SELECT id FROM users INTERSECT SELECT user_id FROM orders WHERE amount > 800 ORDER BY 1",
  unordered("SELECT country FROM users EXCEPT SELECT code FROM countries"),
  unordered("SELECT user_id FROM orders EXCEPT ALL SELECT user_id FROM order_items"),
  // A part every shard has (omnisharded, or no table): its rows count once.
  unordered("SELECT country FROM users INTERSECT ALL SELECT code FROM countries"),
  unordered("SELECT country FROM users EXCEPT ALL SELECT code FROM countries"),
  unordered("SELECT code FROM countries EXCEPT ALL SELECT country FROM users WHERE age > 80"),
  unordered("SELECT code AS c FROM countries INTERSECT SELECT country FROM users"),
  unordered("SELECT code FROM countries UNION SELECT country FROM users"),
  unordered("SELECT length(category) AS n FROM products INTERSECT ALL SELECT age FROM users"),
  unordered(
    "SELECT length(category) FROM products EXCEPT ALL SELECT age FROM users WHERE age < 6",
  ),
  unordered("SELECT age FROM users EXCEPT ALL SELECT length(category) FROM products"),
  unordered("SELECT country FROM users UNION ALL SELECT code FROM countries"),
  "SELECT category FROM products UNION ALL SELECT status FROM orders WHERE amount > 900 " +
  "ORDER BY 1 NULLS FIRST LIMIT 30",
  unordered("SELECT id, name FROM users WHERE age > 85 UNION ALL SELECT 0, 'none'"),
  {
    sql: "SELECT count(*) FROM (SELECT id FROM users UNION SELECT user_id FROM orders) s",
    orRefused: true,
  },
]);

/** Pushdown: co-located joins, omnisharded joins, windows by key, correlated subqueries. */
export const PUSHDOWN: Case[] = cases([
  unordered("SELECT u.id, o.id, o.amount FROM users u JOIN orders o ON o.user_id = u.id"),
  "SELECT u.id, o.id, o.amount FROM users u JOIN orders o ON o.user_id = u.id " +
  "ORDER BY o.amount DESC, o.id LIMIT 25",
  "SELECT u.name, o.id, i.line, i.qty FROM users u JOIN orders o ON o.user_id = u.id " +
  "JOIN order_items i ON i.user_id = o.user_id AND i.order_id = o.id ORDER BY o.id, i.line " +
  "LIMIT 100",
  "SELECT u.country, count(*), sum(o.amount) FROM users u JOIN orders o ON o.user_id = u.id " +
  "GROUP BY u.country ORDER BY u.country",
  "SELECT p.category, sum(i.qty), count(DISTINCT i.order_id) FROM order_items i " +
  "JOIN products p ON p.code = i.product_code GROUP BY p.category ORDER BY 1",
  "SELECT u.id, c.name FROM users u LEFT JOIN countries c ON c.code = u.country " +
  "ORDER BY u.id LIMIT 50",
  "SELECT c.name, count(u.id) FROM users u JOIN countries c ON c.code = u.country " +
  "GROUP BY c.name ORDER BY 2 DESC, 1",
  "SELECT user_id, id, row_number() OVER (PARTITION BY user_id ORDER BY amount, id) FROM orders " +
  "ORDER BY user_id, id",
  "SELECT user_id, id, sum(amount) OVER (PARTITION BY user_id) FROM orders ORDER BY id LIMIT 100",
  "SELECT id, rank() OVER (PARTITION BY id ORDER BY age) FROM users ORDER BY id LIMIT 10",
  "SELECT u.id, (SELECT count(*) FROM orders o WHERE o.user_id = u.id) AS n FROM users u " +
  "ORDER BY n DESC, u.id LIMIT 20",
  "SELECT count(*) FROM users u WHERE EXISTS (SELECT 1 FROM orders o WHERE o.user_id = u.id " +
  "AND o.amount > 800)",
  "SELECT count(*) FROM users u WHERE NOT EXISTS (SELECT 1 FROM orders o WHERE o.user_id = u.id)",
  "SELECT count(*) FROM users WHERE id IN (SELECT user_id FROM orders WHERE amount > 500)",
  "WITH big AS (SELECT user_id, sum(amount) AS s FROM orders GROUP BY user_id) " +
  "SELECT u.id, b.s FROM users u JOIN big b ON b.user_id = u.id ORDER BY b.s DESC, u.id LIMIT 10",
  "SELECT u.id, m.top FROM users u, LATERAL (SELECT max(amount) AS top FROM orders o " +
  "WHERE o.user_id = u.id) m ORDER BY m.top DESC NULLS LAST, u.id LIMIT 10",
  "SELECT u.country, avg(t.total) FROM users u JOIN (SELECT user_id, sum(amount) AS total " +
  "FROM orders GROUP BY user_id) t ON t.user_id = u.id GROUP BY u.country ORDER BY 1",
  {
    sql: "SELECT max(n), min(n), count(*) FROM (SELECT user_id, count(*) AS n FROM orders " +
      "GROUP BY user_id) s",
    orRefused: true,
  },
  "SELECT o.status, count(*) FROM orders o JOIN order_items i ON i.user_id = o.user_id " +
  "AND i.order_id = o.id WHERE i.qty > 3 GROUP BY o.status ORDER BY o.status",
  "SELECT * FROM products ORDER BY code",
  "SELECT count(*), sum(amount) FROM orders WHERE user_id = 42",
  "SELECT o.id, p.name FROM orders o JOIN order_items i ON i.user_id = o.user_id " +
  "AND i.order_id = o.id JOIN products p ON p.code = i.product_code " +
  "WHERE o.user_id IN (1, 2, 3, 4, 5) ORDER BY o.id, i.line",
  "SELECT u.id, u.name FROM users u WHERE u.id IN (1, 2, 3, 4, 5, 6, 7, 8) ORDER BY u.name, u.id",
]);

/** Shapes a shard can't answer alone: refused with 0A000 and a reason. */
export const REFUSALS: string[] = [
  "SELECT id, row_number() OVER (ORDER BY id) FROM users",
  "SELECT id, sum(age) OVER () FROM users",
  "SELECT id, lag(id) OVER (ORDER BY created_at) FROM users",
  "SELECT user_id, rank() OVER (PARTITION BY status ORDER BY amount) FROM orders",
  "SELECT (SELECT count(*) FROM users)",
  "SELECT id, (SELECT max(age) FROM users) FROM users WHERE age = 3",
  "SELECT * FROM (SELECT count(*) FROM users) s",
  "WITH t AS (SELECT count(*) AS c FROM users) SELECT c FROM t",
  "SELECT id FROM users WHERE id IN (SELECT max(id) FROM users)",
  "SELECT id FROM users WHERE age > (SELECT avg(age) FROM users)",
  "SELECT * FROM (SELECT id FROM users ORDER BY id LIMIT 5) s",
  "SELECT count(*) FROM (SELECT DISTINCT country FROM users) s",
  "SELECT u.id, o.id FROM users u JOIN orders o ON o.amount = u.id",
  "SELECT count(*) FROM users u JOIN orders o ON o.id = u.id",
  "SELECT u.id FROM users u JOIN order_items i ON i.order_id = u.id",
  "SELECT count(*) FROM users a JOIN users b ON a.age = b.age",
  "SELECT count(*) FROM orders o JOIN order_items i ON i.order_id = o.id",
  "SELECT u.id FROM users u WHERE u.age IN (SELECT amount FROM orders)",
  // Aggregates pgdog can't combine from the shards' answers.
  "SELECT my_sum(age) FROM users",
  "SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY age) FROM users",
  "SELECT country, mode() WITHIN GROUP (ORDER BY name) FROM users GROUP BY country",
];

/** ORDER BY text (and what compares text) under an ICU default collation. */
export const COLLATION: Case[] = cases([
  "SELECT id, name FROM users ORDER BY name, id",
  "SELECT id, name FROM users ORDER BY name DESC NULLS FIRST, id",
  'SELECT id, name FROM users ORDER BY name COLLATE "C", id',
  'SELECT name, id FROM users ORDER BY name COLLATE "C" DESC, id LIMIT 40',
  "SELECT DISTINCT name FROM users ORDER BY name",
  "SELECT min(name), max(name), min(email), max(country) FROM users",
  "SELECT country, min(name), max(name) FROM users GROUP BY country ORDER BY country",
  "SELECT name, count(*) FROM users GROUP BY name ORDER BY name",
  "SELECT id FROM users ORDER BY lower(name), id",
  "SELECT status, id FROM orders ORDER BY status, id",
  "SELECT email, id FROM users ORDER BY email LIMIT 100",
  "SELECT country, id FROM users ORDER BY country DESC, id",
  "SELECT string_agg(name, ',' ORDER BY name, id) FROM users WHERE age < 0",
  "SELECT name FROM users UNION SELECT status FROM orders ORDER BY 1",
  "SELECT country FROM users GROUP BY country HAVING max(name) > 'Z' ORDER BY country",
  {
    sql: 'SELECT id, name FROM users ORDER BY name COLLATE "en-US-x-icu" DESC, id',
    orRefused: true,
  },
]);

/** Every table of cases, by name. */
export const CASE_GROUPS: Array<[string, Case[]]> = [
  ["ORDER BY", ORDER_BY],
  ["LIMIT, OFFSET, FETCH FIRST", LIMITS],
  ["aggregates", AGGREGATES],
  ["GROUP BY and HAVING", GROUPING],
  ["DISTINCT and set operations", DISTINCT_AND_SETS],
  ["pushdown", PUSHDOWN],
];

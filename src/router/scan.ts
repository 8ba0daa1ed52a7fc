/**
 * A lexical pass over SQL text that finds the statements pooling must react to, without a full
 * parse: settings changed for the session (SET, RESET, set_config, DISCARD), session-level
 * advisory locks, temporary objects and WITH HOLD cursors (and what may drop them), LISTEN, and
 * SQL-level PREPARE/EXECUTE/DEALLOCATE. Strings, quoted identifiers,
 * dollar quotes and comments are skipped, so `UPDATE t SET ...` or `'SET x'` do not count.
 *
 * Most queries contain none of the keywords involved; a cheap test rejects them before any
 * scanning.
 *
 * @module
 */

/** What a piece of SQL does to the session, as far as pooling cares. */
export interface SessionScan {
  /** Settings changed beyond the current transaction, by lower-case name. */
  settings: string[];
  /** Of those, the ones reset to their default (RESET x, SET x TO DEFAULT). */
  resets: string[];
  /** A setting changed whose name cannot be known from the text (set_config with an expression). */
  unknownSetting: boolean;
  /** RESET ALL, or DISCARD ALL. */
  resetAll: boolean;
  /** DISCARD ALL. */
  discardAll: boolean;
  /** Calls a session-level advisory lock or unlock function. */
  advisoryLocks: boolean;
  /**
   * May create a temporary object or a WITH HOLD cursor: CREATE TEMP/TEMPORARY ..., CREATE ...
   * pg_temp.x (or a view on one), SELECT ... INTO TEMP, DECLARE ... WITH HOLD.
   */
  tempObjects: boolean;
  /** A CREATE statement (with pg_temp first in search_path, it creates a temporary object). */
  creates: boolean;
  /** May drop what tempObjects creates: DROP, DISCARD TEMP or ALL, CLOSE. */
  tempRelease: boolean;
  /** LISTEN. */
  listen: boolean;
  /** SQL-level PREPARE, EXECUTE or DEALLOCATE. */
  sqlPrepared: boolean;
  /** SQL-level PREPARE or EXECUTE (DEALLOCATE alone leaves it false). */
  prepareOrExecute: boolean;
  /** The DEALLOCATE statements, in order. */
  deallocations: Deallocation[];
  /** `SET [SESSION|LOCAL] pgdog.<name> ...` statements, in order: [name, value, local]. */
  pgdogSettings: Array<[string, string, boolean]>;
  /** Number of statements in the text. */
  statements: number;
}

/** A `DEALLOCATE [PREPARE] name|ALL` statement in a piece of SQL. */
export interface Deallocation {
  /**
   * The statement name (folded as PostgreSQL folds identifiers), null for ALL, or undefined when
   * the statement is not one pgdog understands (PostgreSQL will judge it).
   */
  target: string | null | undefined;
  /** Where the statement is in the text: [from, to), in UTF-16 code units. */
  from: number;
  to: number;
  /** How many DO statements come before it in the text. */
  dosBefore: number;
}

const MAYBE =
  /set|discard|listen|prepare|execute|deallocate|advisory|pgdog|\b(?:create|drop|close|declare|temp|temporary|pg_temp)\b/i;

/** Keywords found inside words too (`set` in `offset` costs only a scan). */
const KEYWORDS = [
  "set",
  "discard",
  "listen",
  "prepare",
  "execute",
  "deallocate",
  "advisory",
  "pgdog",
].map((k) => new TextEncoder().encode(k));
/** Keywords that count only as whole words (`created_at` and `dropped` are common columns). */
const WORDS = ["create", "drop", "close", "declare", "temp", "temporary", "pg_temp"].map((k) =>
  new TextEncoder().encode(k)
);
/** First bytes (lower case) of KEYWORDS (bit 1) and of WORDS (bit 2). */
const FIRST = new Uint8Array(256);
/** Texts longer than this are tested with MAYBE, in pieces this long (see mayAffectSession). */
const LONG_TEXT = 64 * 1024;
const utf8 = new TextDecoder();
for (const k of KEYWORDS) FIRST[k[0]] |= 1;
for (const k of WORDS) FIRST[k[0]] |= 2;
/** Bytes that continue an identifier: letters, digits, _, $ and non-ASCII. */
const WORD_BYTE = new Uint8Array(256);
for (let c = 0; c < 256; c++) {
  WORD_BYTE[c] = (c >= 0x30 && c <= 0x39) || ((c | 0x20) >= 0x61 && (c | 0x20) <= 0x7a) ||
      c === 0x5f || c === 0x24 || c >= 0x80
    ? 1
    : 0;
}

/**
 * The byte-level version of the keyword test, on UTF-8 SQL at [start, end): false means
 * {@linkcode scanSession} would return null, without decoding the text.
 */
export function mayAffectSession(buf: Uint8Array, start: number, end: number): boolean {
  // A long text: decoding it and one regular expression beat this loop by far (a 3.6 MB query
  // takes 10 ms instead of 100), a piece at a time (pieces overlap by a keyword's length).
  if (end - start > LONG_TEXT) {
    for (let i = start; i < end; i += LONG_TEXT) {
      if (MAYBE.test(utf8.decode(buf.subarray(i, Math.min(end, i + LONG_TEXT + 10))))) return true;
    }
    return false;
  }
  for (let i = start; i < end; i++) {
    const c = buf[i] | 0x20;
    if (FIRST[c] === 0) continue;
    if ((FIRST[c] & 1) !== 0) {
      for (const k of KEYWORDS) {
        if (k[0] !== c || i + k.length > end) continue;
        let j = 1;
        while (j < k.length && (buf[i + j] | 0x20) === k[j]) j++;
        if (j === k.length) return true;
      }
    }
    if ((FIRST[c] & 2) === 0 || (i > start && WORD_BYTE[buf[i - 1]] === 1)) continue;
    for (const k of WORDS) {
      if (k[0] !== c || i + k.length > end) continue;
      let j = 1;
      // `_` | 0x20 is DEL: compare it as is.
      while (j < k.length && (buf[i + j] === k[j] || (buf[i + j] | 0x20) === k[j])) j++;
      if (j === k.length && (i + j === end || WORD_BYTE[buf[i + j]] === 0)) return true;
    }
  }
  return false;
}

/** A scan of statements that do nothing to the session (fields to fill in). */
export function emptyScan(): SessionScan {
  return {
    settings: [],
    resets: [],
    unknownSetting: false,
    resetAll: false,
    discardAll: false,
    advisoryLocks: false,
    tempObjects: false,
    creates: false,
    tempRelease: false,
    listen: false,
    sqlPrepared: false,
    prepareOrExecute: false,
    deallocations: [],
    pgdogSettings: [],
    statements: 0,
  };
}

/** Scans `sql`; returns null when nothing in it matters to pooling. */
export function scanSession(sql: string): SessionScan | null {
  if (!MAYBE.test(sql)) return null;
  const scan = emptyScan();
  let dos = 0;
  for (const tokens of statements(sql)) {
    if (tokens.length === 0) continue;
    scan.statements++;
    if (tokens[0].kind === WORD && tokens[0].text === "do") dos++;
    else if (tokens[0].kind === WORD && tokens[0].text === "deallocate") {
      scan.deallocations.push({
        target: deallocateTarget(tokens, sql),
        from: tokens[0].start,
        to: tokens[tokens.length - 1].end,
        dosBefore: dos,
      });
    }
    inspect(tokens, scan);
  }
  const interesting = scan.settings.length > 0 || scan.unknownSetting || scan.resetAll ||
    scan.advisoryLocks || scan.tempObjects || scan.creates || scan.tempRelease ||
    scan.listen || scan.sqlPrepared || scan.pgdogSettings.length > 0;
  return interesting ? scan : null;
}

/** Token kinds. */
const WORD = 0;
const STRING = 1;
const IDENT = 2;
const PUNCT = 3;

interface Token {
  kind: number;
  /** Lower-cased words, unquoted identifiers and strings as written. */
  text: string;
  /** Where it is in the text: [start, end). */
  start: number;
  end: number;
}

/** Splits `sql` into statements of tokens (words, quoted identifiers, strings, punctuation). */
function statements(sql: string): Token[][] {
  const out: Token[][] = [];
  let cur: Token[] = [];
  const n = sql.length;
  let i = 0;
  while (i < n) {
    const c = sql.charCodeAt(i);
    if (c === 0x3b) { // ;
      out.push(cur);
      cur = [];
      i++;
    } else if (c <= 0x20) {
      i++;
    } else if (c === 0x2d && sql.charCodeAt(i + 1) === 0x2d) { // -- comment
      while (i < n && sql.charCodeAt(i) !== 0x0a) i++;
    } else if (c === 0x2f && sql.charCodeAt(i + 1) === 0x2a) { // /* comment */, nested
      let depth = 1;
      i += 2;
      while (i < n && depth > 0) {
        if (sql.charCodeAt(i) === 0x2f && sql.charCodeAt(i + 1) === 0x2a) {
          depth++;
          i += 2;
        } else if (sql.charCodeAt(i) === 0x2a && sql.charCodeAt(i + 1) === 0x2f) {
          depth--;
          i += 2;
        } else {
          i++;
        }
      }
    } else if (c === 0x27) { // 'string'
      const [text, next] = quoted(sql, i, 0x27);
      cur.push({ kind: STRING, text, start: i, end: next });
      i = next;
    } else if ((c === 0x45 || c === 0x65) && sql.charCodeAt(i + 1) === 0x27) { // E'string'
      const [text, next] = escapeString(sql, i + 1);
      cur.push({ kind: STRING, text, start: i, end: next });
      i = next;
    } else if (c === 0x22) { // "identifier"
      const [text, next] = quoted(sql, i, 0x22);
      cur.push({ kind: IDENT, text, start: i, end: next });
      i = next;
    } else if (c === 0x24 && isDollarQuoteStart(sql, i)) { // $tag$...$tag$
      const end = sql.indexOf("$", i + 1);
      const tag = sql.slice(i, end + 1);
      const close = sql.indexOf(tag, end + 1);
      const stop = close < 0 ? n : close;
      const next = close < 0 ? n : close + tag.length;
      cur.push({ kind: STRING, text: sql.slice(end + 1, stop), start: i, end: next });
      i = next;
    } else if (isWordStart(c)) {
      let j = i + 1;
      while (j < n && isWordPart(sql.charCodeAt(j))) j++;
      cur.push({ kind: WORD, text: sql.slice(i, j).toLowerCase(), start: i, end: j });
      i = j;
    } else {
      cur.push({ kind: PUNCT, text: sql[i], start: i, end: i + 1 });
      i++;
    }
  }
  out.push(cur);
  return out;
}

function quoted(sql: string, start: number, q: number): [string, number] {
  let text = "";
  let i = start + 1;
  for (;;) {
    const j = sql.indexOf(String.fromCharCode(q), i);
    if (j < 0) return [text + sql.slice(i), sql.length];
    text += sql.slice(i, j);
    if (sql.charCodeAt(j + 1) === q) {
      text += String.fromCharCode(q);
      i = j + 2;
    } else {
      return [text, j + 1];
    }
  }
}

function escapeString(sql: string, start: number): [string, number] {
  let text = "";
  let i = start + 1;
  while (i < sql.length) {
    const c = sql[i];
    if (c === "\\" && i + 1 < sql.length) {
      text += sql[i + 1];
      i += 2;
    } else if (c === "'" && sql[i + 1] === "'") {
      text += "'";
      i += 2;
    } else if (c === "'") {
      return [text, i + 1];
    } else {
      text += c;
      i++;
    }
  }
  return [text, sql.length];
}

function isDollarQuoteStart(sql: string, i: number): boolean {
  // $$ or $tag$ where tag is an identifier; $1 is a parameter.
  let j = i + 1;
  if (j < sql.length && sql[j] === "$") return true;
  if (j >= sql.length || !isWordStart(sql.charCodeAt(j))) return false;
  while (j < sql.length && isWordPart(sql.charCodeAt(j)) && sql[j] !== "$") j++;
  return sql[j] === "$";
}

function isWordStart(c: number): boolean {
  return (c >= 0x61 && c <= 0x7a) || (c >= 0x41 && c <= 0x5a) || c === 0x5f || c >= 0x80;
}

function isWordPart(c: number): boolean {
  return isWordStart(c) || (c >= 0x30 && c <= 0x39) || c === 0x24;
}

/** A setting name as written after SET/RESET: `a`, `a.b`, `"A".b`. */
function settingName(tokens: Token[], at: number): [string, number] | null {
  const first = tokens[at];
  if (!first || (first.kind !== WORD && first.kind !== IDENT)) return null;
  let name = first.kind === WORD ? first.text : first.text.toLowerCase();
  let i = at + 1;
  while (tokens[i]?.kind === PUNCT && tokens[i].text === "." && tokens[i + 1]) {
    const part = tokens[i + 1];
    name += "." + (part.kind === WORD ? part.text : part.text.toLowerCase());
    i += 2;
  }
  return [name, i];
}

/** Special forms of SET and RESET, with the setting they change. */
const SPECIAL: Record<string, string> = {
  role: "role",
  schema: "search_path",
  names: "client_encoding",
};

function inspect(t: Token[], scan: SessionScan): void {
  const w0 = t[0].kind === WORD ? t[0].text : "";
  const w1 = t[1]?.kind === WORD ? t[1].text : "";
  const w2 = t[2]?.kind === WORD ? t[2].text : "";
  switch (w0) {
    case "set": {
      let at = 1;
      let local = false;
      if (w1 === "local") {
        local = true;
        at = 2;
      } else if (w1 === "session") {
        if (w2 === "authorization") {
          scan.settings.push("session_authorization");
          return;
        }
        if (w2 === "characteristics") {
          scan.settings.push(
            "default_transaction_isolation",
            "default_transaction_read_only",
            "default_transaction_deferrable",
          );
          return;
        }
        at = 2;
      }
      const word = t[at]?.kind === WORD ? t[at].text : "";
      if (word === "transaction" || word === "constraints") return; // this transaction only
      if (word === "time" && t[at + 1]?.text === "zone") {
        if (!local) scan.settings.push("timezone");
        return;
      }
      if (word === "xml" && t[at + 1]?.text === "option") {
        if (!local) scan.settings.push("xmloption");
        return;
      }
      if (SPECIAL[word]) {
        if (!local) scan.settings.push(SPECIAL[word]);
        return;
      }
      const named = settingName(t, at);
      if (!named) return;
      const [name, next] = named;
      if (name.startsWith("pgdog.")) {
        scan.pgdogSettings.push([name.slice(6), valueText(t, next), local]);
        return;
      }
      if (!local) {
        scan.settings.push(name);
        const v = t[next]?.text === "to" || t[next]?.text === "=" ? t[next + 1] : undefined;
        if (v?.kind === WORD && v.text === "default" && t.length === next + 2) {
          scan.resets.push(name);
        }
      }
      return;
    }
    case "reset": {
      if (w1 === "all") {
        scan.resetAll = true;
        return;
      }
      if (w1 === "session" && w2 === "authorization") {
        scan.settings.push("session_authorization");
        return;
      }
      if (w1 === "time" && w2 === "zone") {
        scan.settings.push("timezone");
        scan.resets.push("timezone");
        return;
      }
      const named = settingName(t, 1);
      if (!named) return;
      if (named[0].startsWith("pgdog.")) {
        scan.pgdogSettings.push([named[0].slice(6), "", false]);
      } else {
        scan.settings.push(SPECIAL[named[0]] ?? named[0]);
        scan.resets.push(SPECIAL[named[0]] ?? named[0]);
      }
      return;
    }
    case "discard":
      if (w1 === "all") {
        scan.resetAll = true;
        scan.discardAll = true;
      }
      if (w1 === "all" || w1 === "temp" || w1 === "temporary") scan.tempRelease = true;
      return;
    case "drop":
    case "close":
      scan.tempRelease = true;
      return;
    case "create":
      scan.creates = true;
      if (createsTemp(t)) scan.tempObjects = true;
      // CREATE TABLE ... AS EXECUTE runs a prepared statement, like EXECUTE.
      if (wordsFollow(t, "as", "execute")) {
        scan.sqlPrepared = true;
        scan.prepareOrExecute = true;
      }
      break; // CREATE TABLE ... AS SELECT may call functions
    case "explain": {
      // EXPLAIN [ANALYZE] [VERBOSE] [(options)] EXECUTE name runs a prepared statement.
      let depth = 0;
      for (let i = 1; i < t.length; i++) {
        const tok = t[i];
        if (tok.kind === PUNCT) {
          if (tok.text === "(") depth++;
          else if (tok.text === ")") depth--;
          continue;
        }
        if (depth > 0) continue;
        if (tok.kind === WORD && EXPLAIN_OPTIONS.has(tok.text)) continue;
        if (tok.kind === WORD && tok.text === "execute") {
          scan.sqlPrepared = true;
          scan.prepareOrExecute = true;
        }
        break;
      }
      break;
    }
    case "select":
    case "with":
      if (selectsIntoTemp(t)) scan.tempObjects = true;
      break;
    case "declare":
      for (let i = 1; i + 1 < t.length; i++) {
        if (t[i].kind === WORD && t[i].text === "with" && t[i + 1].text === "hold") {
          scan.tempObjects = true;
        }
      }
      break;
    case "listen":
      scan.listen = true;
      return;
    case "prepare":
      // PREPARE TRANSACTION is two-phase commit, not a prepared statement.
      if (w1 !== "transaction") {
        scan.sqlPrepared = true;
        scan.prepareOrExecute = true;
      }
      return;
    case "execute":
      scan.sqlPrepared = true;
      scan.prepareOrExecute = true;
      return;
    case "deallocate":
      scan.sqlPrepared = true;
      return;
  }
  // Function calls anywhere in the statement.
  for (let i = 0; i + 1 < t.length; i++) {
    if (t[i].kind !== WORD || t[i + 1].kind !== PUNCT || t[i + 1].text !== "(") continue;
    const fn = t[i].text;
    if (fn === "set_config") {
      const call = callArgs(t, i + 2);
      const [nameArg, , localArg] = call;
      const local = localArg?.length === 1 && localArg[0].kind === WORD &&
        (localArg[0].text === "true" || localArg[0].text === "t");
      if (local) continue;
      if (nameArg?.length === 1 && nameArg[0].kind === STRING) {
        scan.settings.push(nameArg[0].text.toLowerCase());
      } else scan.unknownSetting = true;
    } else if (fn.startsWith("pg_advisory_") || fn.startsWith("pg_try_advisory_")) {
      // The _xact_ variants end with the transaction and never hold a server.
      if (!fn.includes("_xact_")) scan.advisoryLocks = true;
    }
  }
}

/**
 * What `DEALLOCATE [PREPARE] name|ALL` (the tokens of one statement) deallocates: the name as
 * PostgreSQL reads it (unquoted, only A-Z are folded), null for ALL, undefined when malformed.
 */
function deallocateTarget(t: Token[], sql: string): string | null | undefined {
  let i = 1;
  if (t[i]?.kind === WORD && t[i].text === "prepare" && t.length === 3) i++;
  if (t.length !== i + 1) return undefined;
  const name = t[i];
  if (name.kind === IDENT) return name.text;
  if (name.kind !== WORD) return undefined;
  if (name.text === "all") return null;
  return sql.slice(name.start, name.end).replace(/[A-Z]+/g, (m) => m.toLowerCase());
}

/** Words that may come between EXPLAIN and the statement explained (outside its parentheses). */
const EXPLAIN_OPTIONS = new Set(["analyze", "analyse", "verbose"]);

/** Whether the word `a` is followed at once by the word `b` somewhere in the statement. */
function wordsFollow(t: Token[], a: string, b: string): boolean {
  for (let i = 1; i + 1 < t.length; i++) {
    if (t[i].kind === WORD && t[i].text === a && t[i + 1].kind === WORD && t[i + 1].text === b) {
      return true;
    }
  }
  return false;
}

/** Words that may come between CREATE and the kind of object. */
const CREATE_MODIFIERS = new Set([
  "or",
  "replace",
  "global",
  "local",
  "temp",
  "temporary",
  "unlogged",
  "recursive",
  "trusted",
  "procedural",
]);

/** Whether `t[i]` names the pg_temp schema followed by a dot (`pg_temp.x`). */
function isPgTempQualifier(t: Token[], i: number): boolean {
  const tok = t[i];
  return (tok.kind === WORD || tok.kind === IDENT) && tok.text === "pg_temp" &&
    t[i + 1]?.kind === PUNCT && t[i + 1].text === ".";
}

/**
 * CREATE TEMP/TEMPORARY ..., or a CREATE naming pg_temp.x anywhere (the object itself, or a view
 * on a temporary table, which PostgreSQL makes temporary too).
 */
function createsTemp(t: Token[]): boolean {
  for (let i = 1; i < t.length && t[i].kind === WORD && CREATE_MODIFIERS.has(t[i].text); i++) {
    if (t[i].text === "temp" || t[i].text === "temporary") return true;
  }
  for (let i = 1; i < t.length; i++) if (isPgTempQualifier(t, i)) return true;
  return false;
}

/** SELECT ... INTO [GLOBAL | LOCAL] TEMP/TEMPORARY [TABLE] x, or INTO pg_temp.x. */
function selectsIntoTemp(t: Token[]): boolean {
  for (let i = 1; i + 1 < t.length; i++) {
    if (t[i].kind !== WORD || t[i].text !== "into") continue;
    const next = t[i + 1];
    if (next.kind === WORD && ["temp", "temporary", "global", "local"].includes(next.text)) {
      return true;
    }
    if (isPgTempQualifier(t, i + 1)) return true;
  }
  return false;
}

/** The arguments of a call starting after its "(", each as a token list (nesting respected). */
function callArgs(t: Token[], start: number): Token[][] {
  const args: Token[][] = [[]];
  let depth = 0;
  for (let i = start; i < t.length; i++) {
    const tok = t[i];
    if (tok.kind === PUNCT) {
      if (tok.text === "(") depth++;
      else if (tok.text === ")") {
        if (depth === 0) break;
        depth--;
      } else if (tok.text === "," && depth === 0) {
        args.push([]);
        continue;
      }
    }
    args[args.length - 1].push(tok);
  }
  return args;
}

/** The value after `TO`/`=` as text (words, strings, numbers joined). */
function valueText(t: Token[], at: number): string {
  let i = at;
  if (t[i]?.text === "to" || t[i]?.text === "=") i++;
  return t.slice(i).map((tok) => tok.text).join("");
}

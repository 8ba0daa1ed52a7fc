/**
 * One line per event on stderr: `<ISO time> <LEVEL> <message>`. Never pass secrets in.
 *
 * @module
 */

/** Log levels, most severe first. */
export type LogLevel = "error" | "warn" | "info" | "debug";

const RANK: Record<LogLevel, number> = { error: 0, warn: 1, info: 2, debug: 3 };
const LABEL: Record<LogLevel, string> = {
  error: "ERROR",
  warn: "WARN",
  info: "INFO",
  debug: "DEBUG",
};

let threshold = RANK.info;
let json = false;
/** PGDOG_LOG was set: it wins over the configuration's log_level. */
let levelFromEnv = false;
/** With several workers (`[general] workers`): this thread's worker number, in every line. */
let worker: number | null = null;
const encoder = new TextEncoder();

/** Sets the most verbose level that is printed. */
export function setLogLevel(level: LogLevel): void {
  threshold = RANK[level];
}

/** True when messages at `level` are printed (check before building costly messages). */
export function logEnabled(level: LogLevel): boolean {
  return RANK[level] <= threshold;
}

function emit(level: LogLevel, message: string, always = false): void {
  if (!always && RANK[level] > threshold) return;
  const time = new Date().toISOString();
  const line = json
    ? `${
      JSON.stringify(worker === null ? { time, level, message } : { time, level, worker, message })
    }\n`
    : worker === null
    ? `${time} ${LABEL[level]} ${message}\n`
    : `${time} ${LABEL[level]} [worker ${worker}] ${message}\n`;
  try {
    Deno.stderr.writeSync(encoder.encode(line));
  } catch {
    // stderr closed: nowhere left to report.
  }
}

/** The process-wide logger. */
export const log = {
  /** Something failed and needs an operator. */
  error(message: string): void {
    emit("error", message);
  },
  /** Something is wrong but the proxy carries on. */
  warn(message: string): void {
    emit("warn", message);
  },
  /** Normal events: startup, connections, reloads. */
  info(message: string): void {
    emit("info", message);
  },
  /** Detail for debugging. */
  debug(message: string): void {
    emit("debug", message);
  },
  /** An info line printed whatever the level (where the proxy listens: operators need it). */
  always(message: string): void {
    emit("info", message, true);
  },
};

/**
 * Applies `PGDOG_LOG` (error, warn, info or debug) when it is set; an unknown value is reported
 * and ignored.
 */
export function applyLogLevelFromEnv(): void {
  let value: string | undefined;
  try {
    value = Deno.env.get("PGDOG_LOG");
  } catch {
    return; // no permission to read it: keep the default
  }
  if (value === undefined || value === "") return;
  const level = value.toLowerCase();
  if (level in RANK) {
    setLogLevel(level as LogLevel);
    levelFromEnv = true;
  } else emit("warn", `PGDOG_LOG=${value} is not one of error, warn, info, debug; using info`);
}

/** With several workers: tags this thread's lines with its worker number (null: untagged). */
export function setLogWorker(index: number | null): void {
  worker = index;
}

/** Applies `[general] log_level` (unless PGDOG_LOG set one) and `log_format`. */
export function configureLogging(options: { level: LogLevel; format: "text" | "json" }): void {
  if (!levelFromEnv) setLogLevel(options.level);
  json = options.format === "json";
}

/** What a caught value says: an Error's message, or the value as text. */
export function errorMessage(e: unknown): string {
  return e instanceof Error ? e.message : String(e);
}

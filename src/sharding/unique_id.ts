/**
 * PgDog-compatible unique 64-bit ids (`pgdog.unique_id()`), unique across
 * proxy instances without talking to the database.
 *
 * Layout of an id (a positive int8):
 *
 * ```text
 * [0: sign][41 bits: ms since PGDOG_EPOCH][10 bits: node id][12 bits: sequence]
 * ```
 *
 * plus an optional constant offset (PgDog's `unique_id_min`). Each node
 * issues at most 4096 ids per millisecond; ids of one generator strictly
 * increase.
 *
 * ```ts
 * import { nodeIdFromEnv, UniqueIdGenerator } from "./unique_id.ts";
 * const ids = new UniqueIdGenerator({ nodeId: nodeIdFromEnv(Deno.env.get("NODE_ID")) });
 * ids.next(); // e.g. 47839699276046336n
 * ```
 *
 * @module
 */

/** Start of id time: 2025-11-26 19:13:15 UTC, in ms since the Unix epoch. */
export const PGDOG_EPOCH = 1764184395000;
/** Largest node id (10 bits). */
export const MAX_NODE_ID = 1023;
/** Largest sequence number within one millisecond (12 bits). */
export const MAX_SEQUENCE = 4095;
/** Largest timestamp (41 bits of ms since {@linkcode PGDOG_EPOCH}, until 2095). */
export const MAX_TIMESTAMP = 2 ** 41 - 1;

const NODE_SHIFT = 12;
const TIMESTAMP_SHIFT = 22n;
const INT64_MAX = (1n << 63n) - 1n;

/** Options for {@linkcode UniqueIdGenerator}. */
export interface UniqueIdGeneratorOptions {
  /** This proxy instance's node id, 0 to {@linkcode MAX_NODE_ID}; unique per running instance. */
  nodeId: number;
  /** The clock, in ms since the Unix epoch (fractions are dropped); `Date.now` by default. */
  now?: () => number;
  /**
   * Added to every id (PgDog's `unique_id_min`); 0 by default. Any non-negative offset is
   * accepted; {@linkcode UniqueIdGenerator.next} throws once an id would exceed the int8 range.
   * (PgDog rejects every non-zero offset: its bound, i64::MAX minus the largest packed id, is 0.)
   */
  offset?: bigint;
  /**
   * With several workers (event loops) in one process: this worker's lane. Its ids use only the
   * sequence numbers congruent to `index` modulo `count`, so the workers never issue the same
   * id; each then issues at most 4096 / `count` ids per millisecond. One lane by default.
   */
  lane?: { index: number; count: number };
}

/**
 * Issues PgDog-compatible unique ids.
 *
 * Ids strictly increase. Within one millisecond the sequence counts 0..4095;
 * when it runs out, {@linkcode UniqueIdGenerator.next} busy-waits (at most
 * the rest of that millisecond) for the clock to tick. If the clock goes
 * backwards (NTP step, VM migration), the generator keeps issuing from the
 * last timestamp it used instead of waiting for the clock to catch up; when
 * the sequence runs out meanwhile it moves on to the next millisecond
 * without waiting, so it never blocks for long, never repeats and never
 * decreases. (PgDog itself sleeps until the clock catches up.)
 */
export class UniqueIdGenerator {
  /** The node id in every id. */
  readonly nodeId: number;
  /** The offset added to every id. */
  readonly offset: bigint;
  readonly #now: () => number;
  /** Last timestamp used (ms since PGDOG_EPOCH); -Infinity before the first id. */
  #last = -Infinity;
  #sequence = 0;
  readonly #first: number;
  readonly #step: number;
  /** The id for #last with sequence 0. */
  #base = 0n;

  /**
   * @param options The node id, and optionally a clock and an offset.
   * @throws {RangeError} When the node id or the offset is out of range.
   */
  constructor(options: UniqueIdGeneratorOptions) {
    const { nodeId, offset = 0n } = options;
    if (!Number.isInteger(nodeId) || nodeId < 0 || nodeId > MAX_NODE_ID) {
      throw new RangeError(`node id must be an integer from 0 to ${MAX_NODE_ID}, got ${nodeId}`);
    }
    if (offset < 0n || offset > INT64_MAX) {
      throw new RangeError(`unique id offset must be from 0 to ${INT64_MAX}, got ${offset}`);
    }
    const lane = options.lane ?? { index: 0, count: 1 };
    if (
      !Number.isInteger(lane.count) || lane.count < 1 || lane.count > MAX_SEQUENCE + 1 ||
      !Number.isInteger(lane.index) || lane.index < 0 || lane.index >= lane.count
    ) {
      throw new RangeError(`lane ${lane.index} of ${lane.count} is out of range`);
    }
    this.#first = lane.index;
    this.#step = lane.count;
    this.nodeId = nodeId;
    this.offset = offset;
    this.#now = options.now ?? Date.now;
  }

  /**
   * The next id.
   *
   * @returns A positive int8 value, greater than every id this generator issued before.
   * @throws {RangeError} When the clock is before {@linkcode PGDOG_EPOCH} or past
   *   the 41-bit range (year 2095), or the offset pushes the id past the int8 range.
   */
  next(): bigint {
    const elapsed = this.#elapsed();
    if (elapsed > this.#last) {
      this.#start(elapsed);
    } else if (this.#sequence + this.#step <= MAX_SEQUENCE) {
      // Same millisecond, or the clock went backwards: continue the sequence.
      this.#sequence += this.#step;
    } else {
      this.#start(this.#nextMillisecond());
    }
    return this.#base + BigInt(this.#sequence);
  }

  /**
   * The next id in PostgreSQL's text form (decimal), for a DataRow.
   *
   * @returns The id as a decimal string.
   */
  nextText(): string {
    return this.next().toString();
  }

  #elapsed(): number {
    return Math.floor(this.#now()) - PGDOG_EPOCH;
  }

  /** The sequence ran out in #last: wait for the clock to move past it. */
  #nextMillisecond(): number {
    for (;;) {
      const elapsed = this.#elapsed();
      if (elapsed > this.#last) return elapsed;
      // The clock is behind the ids already issued: don't wait for it.
      if (elapsed < this.#last) return this.#last + 1;
    }
  }

  #start(elapsed: number): void {
    if (elapsed < 0) {
      throw new RangeError(
        `the clock (${new Date(elapsed + PGDOG_EPOCH).toISOString()}) is before PGDOG_EPOCH`,
      );
    }
    if (elapsed > MAX_TIMESTAMP) {
      throw new RangeError("the clock is past the range of unique ids (41 bits of milliseconds)");
    }
    const base = ((BigInt(elapsed) << TIMESTAMP_SHIFT) | BigInt(this.nodeId << NODE_SHIFT)) +
      this.offset;
    if (base + BigInt(MAX_SEQUENCE) > INT64_MAX) {
      throw new RangeError(`unique ids with offset ${this.offset} overflow int8 at this time`);
    }
    this.#last = elapsed;
    this.#sequence = this.#first;
    this.#base = base;
  }
}

/** The fields of a unique id. */
export interface UniqueIdFields {
  /** When it was issued, in ms since the Unix epoch. */
  timestamp: number;
  /** Ms since {@linkcode PGDOG_EPOCH}. */
  elapsed: number;
  /** The issuing node. */
  nodeId: number;
  /** Sequence number within that millisecond. */
  sequence: number;
}

/** Options for {@linkcode decodeUniqueId}. */
export interface DecodeUniqueIdOptions {
  /** The offset the generator added (`unique_id_min`); 0 by default. */
  offset?: bigint;
}

/**
 * Split an id into its fields.
 *
 * @param id An id from {@linkcode UniqueIdGenerator.next}.
 * @param options The generator's offset, if any.
 * @returns Timestamp, node id and sequence.
 */
export function decodeUniqueId(id: bigint, options: DecodeUniqueIdOptions = {}): UniqueIdFields {
  const packed = id - (options.offset ?? 0n);
  const elapsed = Number(packed >> TIMESTAMP_SHIFT);
  const low = Number(BigInt.asUintN(22, packed));
  return {
    timestamp: elapsed + PGDOG_EPOCH,
    elapsed,
    nodeId: low >>> NODE_SHIFT,
    sequence: low & MAX_SEQUENCE,
  };
}

/**
 * The node id from the `NODE_ID` environment variable, as PgDog reads it:
 * the part after the last `-` (or the whole value) must be a decimal number
 * from 0 to 1023: `pgdog-prod-3` → 3, `7` → 7.
 *
 * Choice: when `NODE_ID` is unset or empty this returns 0, so a single proxy
 * works without configuration; every instance beyond the first must set a
 * distinct `NODE_ID`, or their ids may collide. (PgDog instead refuses to
 * issue ids.) A value that is set but invalid is an error, not node 0.
 *
 * @param value The variable's value (`Deno.env.get("NODE_ID")`).
 * @returns The node id.
 * @throws {Error} When the value is set but has no trailing number, or it exceeds 1023.
 */
export function nodeIdFromEnv(value: string | undefined): number {
  const text = value?.trim() ?? "";
  if (text === "") return 0;
  const last = text.slice(text.lastIndexOf("-") + 1);
  if (!/^[0-9]+$/.test(last)) {
    throw new Error(
      `NODE_ID "${value}" is not a node id: use a number from 0 to ${MAX_NODE_ID}, ` +
        `alone or after the last "-" (e.g. pgdog-3)`,
    );
  }
  const id = Number(last);
  if (id > MAX_NODE_ID) {
    throw new Error(`NODE_ID "${value}": node id ${last} exceeds the maximum (${MAX_NODE_ID})`);
  }
  return id;
}

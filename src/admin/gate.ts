/**
 * Holds back new transactions: `PAUSE [db]` and `MAINTENANCE ON` from the admin database. A client
 * that would take a server for a new transaction waits here (no error, no timeout) until `RESUME`
 * or `MAINTENANCE OFF`; transactions already running go on and finish.
 *
 * @module
 */

interface GateWaiter {
  database: string;
  resume: () => void;
}

/** Whether new transactions may start, per database. */
export class Gate {
  readonly #paused = new Set<string>();
  #pausedAll = false;
  #maintenance = false;
  #waiters: GateWaiter[] = [];

  /** True when new transactions on `database` must wait. */
  closed(database: string): boolean {
    return this.#maintenance || this.#pausedAll || this.#paused.has(database);
  }

  /** Resolves once new transactions on `database` may start. */
  wait(database: string): Promise<void> {
    if (!this.closed(database)) return Promise.resolve();
    return new Promise((resume) => this.#waiters.push({ database, resume }));
  }

  /** Clients waiting at the gate now. */
  get waiting(): number {
    return this.#waiters.length;
  }

  /** PAUSE: every database, or one. */
  pause(database?: string): void {
    if (database === undefined) this.#pausedAll = true;
    else this.#paused.add(database);
  }

  /** RESUME: every database (and every single-database pause), or one. */
  resume(database?: string): void {
    if (database === undefined) {
      this.#pausedAll = false;
      this.#paused.clear();
    } else this.#paused.delete(database);
    this.#release();
  }

  /** MAINTENANCE ON / OFF. */
  maintenance(on: boolean): void {
    this.#maintenance = on;
    if (!on) this.#release();
  }

  /** True while MAINTENANCE ON. */
  get inMaintenance(): boolean {
    return this.#maintenance;
  }

  /** True when `database` (or everything) is paused. */
  paused(database: string): boolean {
    return this.#pausedAll || this.#paused.has(database);
  }

  #release(): void {
    const still: GateWaiter[] = [];
    for (const w of this.#waiters) {
      if (this.closed(w.database)) still.push(w);
      else w.resume();
    }
    this.#waiters = still;
  }
}

/**
 * The first N items in sort order, holding at most N: what an ORDER BY ... LIMIT needs when the
 * shards don't sort, so memory follows the LIMIT and not the table.
 *
 * @module
 */

/** Keeps the `capacity` smallest items seen (a max-heap: the largest kept is at the top). */
export class TopN<T> {
  readonly #capacity: number;
  readonly #compare: (a: T, b: T) => number;
  readonly #heap: T[] = [];

  /** `compare` must be a total order (ties broken, e.g. by arrival). */
  constructor(capacity: number, compare: (a: T, b: T) => number) {
    this.#capacity = capacity;
    this.#compare = compare;
  }

  /**
   * Offers an item. Returns the item no longer kept: the one pushed out, or `item` itself when
   * it comes after all `capacity` kept ones; null when nothing was dropped.
   */
  offer(item: T): T | null {
    const heap = this.#heap;
    if (heap.length < this.#capacity) {
      let i = heap.length;
      heap.push(item);
      while (i > 0) {
        const parent = (i - 1) >> 1;
        if (this.#compare(heap[parent], item) >= 0) break;
        heap[i] = heap[parent];
        i = parent;
      }
      heap[i] = item;
      return null;
    }
    if (heap.length === 0 || this.#compare(item, heap[0]) >= 0) return item;
    const out = heap[0];
    let i = 0;
    const n = heap.length;
    for (;;) {
      let child = 2 * i + 1;
      if (child >= n) break;
      if (child + 1 < n && this.#compare(heap[child + 1], heap[child]) > 0) child++;
      if (this.#compare(heap[child], item) <= 0) break;
      heap[i] = heap[child];
      i = child;
    }
    heap[i] = item;
    return out;
  }

  /** The kept items in order (the heap is emptied). */
  sorted(): T[] {
    const items = this.#heap.splice(0);
    return items.sort(this.#compare);
  }

  /** Items kept. */
  get size(): number {
    return this.#heap.length;
  }
}

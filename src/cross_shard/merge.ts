/**
 * A streaming k-way merge of sources that each deliver their items already sorted (every shard
 * runs the ORDER BY itself). An item comes out as soon as no source can still deliver a smaller
 * one: every source that has not finished has an item waiting. So the first rows leave before
 * the slowest shard is done, and what is held is at most the items waiting per source.
 *
 * @module
 */

/** Items of several sorted sources, merged into one sorted sequence as they arrive. */
export class KWayMerge<T> {
  readonly #compare: (a: T, b: T) => number;
  /** Per source: its waiting items from `#heads[s]` on, with their arrival numbers. */
  readonly #items: T[][];
  readonly #seqs: number[][];
  readonly #heads: number[];
  readonly #finished: boolean[];
  /** Sources with items waiting, as a binary min-heap by their first item. */
  readonly #heap: number[] = [];
  /** Sources neither finished nor with an item waiting: while any, nothing can come out. */
  #blocking: number;
  #seq = 0;
  #size = 0;

  /**
   * `sources` sources, numbered from 0; `compare` orders items (ties come out in arrival order).
   */
  constructor(sources: number, compare: (a: T, b: T) => number) {
    this.#compare = compare;
    this.#items = Array.from({ length: sources }, () => []);
    this.#seqs = Array.from({ length: sources }, () => []);
    this.#heads = new Array(sources).fill(0);
    this.#finished = new Array(sources).fill(false);
    this.#blocking = sources;
  }

  /** The next item of source `source`, which must not be smaller than its previous one. */
  push(source: number, item: T): void {
    if (this.#finished[source]) throw new Error(`merge source ${source} already finished`);
    const items = this.#items[source];
    items.push(item);
    this.#seqs[source].push(this.#seq++);
    this.#size++;
    if (items.length - this.#heads[source] === 1) {
      this.#blocking--;
      this.#heapPush(source);
    }
  }

  /** Source `source` sends no more items. */
  finish(source: number): void {
    if (this.#finished[source]) return;
    this.#finished[source] = true;
    if (this.#items[source].length === this.#heads[source]) this.#blocking--;
  }

  /** The smallest item when it is known to be next; undefined while a source may still send one. */
  next(): T | undefined {
    if (this.#blocking > 0 || this.#heap.length === 0) return undefined;
    const source = this.#heap[0];
    const items = this.#items[source];
    const seqs = this.#seqs[source];
    const head = this.#heads[source];
    const item = items[head];
    this.#size--;
    if (head + 1 === items.length) {
      items.length = 0;
      seqs.length = 0;
      this.#heads[source] = 0;
      const last = this.#heap.pop()!;
      if (this.#heap.length > 0) {
        this.#heap[0] = last;
        this.#siftDown(0);
      }
      if (!this.#finished[source]) this.#blocking++;
    } else {
      (items as (T | undefined)[])[head] = undefined; // let it be collected
      this.#heads[source] = head + 1;
      if (head + 1 >= 1024 && (head + 1) * 2 >= items.length) {
        items.splice(0, head + 1);
        seqs.splice(0, head + 1);
        this.#heads[source] = 0;
      }
      this.#siftDown(0);
    }
    return item;
  }

  /** Every source finished and every item came out. */
  get done(): boolean {
    return this.#size === 0 && this.#finished.every((f) => f);
  }

  /** Nothing can come out until a source that has not finished sends an item. */
  get blocked(): boolean {
    return this.#blocking > 0;
  }

  /** Items waiting in all sources. */
  get size(): number {
    return this.#size;
  }

  /** Items waiting from source `source`. */
  waiting(source: number): number {
    return this.#items[source].length - this.#heads[source];
  }

  /** Drops every waiting item and finishes every source (a LIMIT was reached). */
  clear(): void {
    for (let s = 0; s < this.#items.length; s++) {
      this.#items[s].length = 0;
      this.#seqs[s].length = 0;
      this.#heads[s] = 0;
      this.#finished[s] = true;
    }
    this.#heap.length = 0;
    this.#blocking = 0;
    this.#size = 0;
  }

  /** Source `a`'s first item comes before source `b`'s. */
  #less(a: number, b: number): boolean {
    const c = this.#compare(this.#items[a][this.#heads[a]], this.#items[b][this.#heads[b]]);
    if (c !== 0) return c < 0;
    return this.#seqs[a][this.#heads[a]] < this.#seqs[b][this.#heads[b]];
  }

  #heapPush(source: number): void {
    const heap = this.#heap;
    let i = heap.length;
    heap.push(source);
    while (i > 0) {
      const parent = (i - 1) >> 1;
      if (!this.#less(source, heap[parent])) break;
      heap[i] = heap[parent];
      i = parent;
    }
    heap[i] = source;
  }

  #siftDown(i: number): void {
    const heap = this.#heap;
    const n = heap.length;
    const source = heap[i];
    for (;;) {
      let child = 2 * i + 1;
      if (child >= n) break;
      if (child + 1 < n && this.#less(heap[child + 1], heap[child])) child++;
      if (!this.#less(heap[child], source)) break;
      heap[i] = heap[child];
      i = child;
    }
    heap[i] = source;
  }
}

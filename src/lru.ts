/**
 * A map bounded to a number of entries that drops the least recently used one, every operation in
 * constant time. (Evicting with `map.delete(map.keys().next().value)` looks constant but is not:
 * V8 leaves deleted slots at the front of a Map until it rehashes, and each eviction walks past
 * them, about 6 µs per eviction at 10,000 entries.)
 *
 * @module
 */

interface Node<K, V> {
  key: K;
  value: V;
  /** Toward the least recently used end. */
  older: Node<K, V> | null;
  /** Toward the most recently used end. */
  newer: Node<K, V> | null;
}

/** A map that keeps at most `limit` entries, dropping the least recently used. */
export class LruMap<K, V> {
  readonly #nodes = new Map<K, Node<K, V>>();
  #oldest: Node<K, V> | null = null;
  #newest: Node<K, V> | null = null;
  #limit: number;

  /** @param limit The most entries kept (at least 1). */
  constructor(limit: number) {
    this.#limit = Math.max(1, limit);
  }

  /** The value of `key`, which becomes the most recently used; undefined when absent. */
  get(key: K): V | undefined {
    const node = this.#nodes.get(key);
    if (node === undefined) return undefined;
    if (node !== this.#newest) {
      this.#unlink(node);
      this.#append(node);
    }
    return node.value;
  }

  /** The value of `key` without marking it used. */
  peek(key: K): V | undefined {
    return this.#nodes.get(key)?.value;
  }

  /** Sets `key` as the most recently used entry; drops the least recently used beyond the limit. */
  set(key: K, value: V): void {
    const node = this.#nodes.get(key);
    if (node !== undefined) {
      node.value = value;
      if (node !== this.#newest) {
        this.#unlink(node);
        this.#append(node);
      }
      return;
    }
    const added: Node<K, V> = { key, value, older: null, newer: null };
    this.#nodes.set(key, added);
    this.#append(added);
    this.#evict();
  }

  /**
   * Removes `key` (only while its value is `value`, when given: a failed promise that another has
   * replaced since stays replaced); true when it removed it.
   */
  delete(key: K, value?: V): boolean {
    const node = this.#nodes.get(key);
    if (node === undefined || (arguments.length > 1 && node.value !== value)) return false;
    this.#nodes.delete(key);
    this.#unlink(node);
    return true;
  }

  /** Removes every entry. */
  clear(): void {
    this.#nodes.clear();
    this.#oldest = this.#newest = null;
  }

  /** The number of entries. */
  get size(): number {
    return this.#nodes.size;
  }

  /** The most entries kept; lowering it drops the least recently used at once. */
  get limit(): number {
    return this.#limit;
  }

  set limit(limit: number) {
    this.#limit = Math.max(1, limit);
    this.#evict();
  }

  /** The values, least recently used first. */
  *values(): IterableIterator<V> {
    for (let node = this.#oldest; node !== null; node = node.newer) yield node.value;
  }

  #evict(): void {
    while (this.#nodes.size > this.#limit && this.#oldest !== null) {
      const oldest = this.#oldest;
      this.#nodes.delete(oldest.key);
      this.#unlink(oldest);
    }
  }

  #append(node: Node<K, V>): void {
    node.older = this.#newest;
    node.newer = null;
    if (this.#newest !== null) this.#newest.newer = node;
    else this.#oldest = node;
    this.#newest = node;
  }

  #unlink(node: Node<K, V>): void {
    if (node.older !== null) node.older.newer = node.newer;
    else this.#oldest = node.newer;
    if (node.newer !== null) node.newer.older = node.older;
    else this.#newest = node.older;
    node.older = node.newer = null;
  }
}

/**
 * Walking libpg-query's JSON parse trees without recursion: expression trees can nest thousands
 * of levels deep, more than the call stack allows.
 *
 * @module
 */

/**
 * Calls `visit` with every key and value of every object under `roots` (array elements are
 * walked into, not visited). `visit` returns false to skip what is under that value.
 */
export function walkTree(
  roots: unknown[],
  visit: (key: string, value: unknown) => boolean | void,
): void {
  const stack: unknown[] = [...roots];
  while (stack.length > 0) {
    const node = stack.pop();
    if (node === null || typeof node !== "object") continue;
    if (Array.isArray(node)) {
      for (const child of node) stack.push(child);
      continue;
    }
    for (const [key, value] of Object.entries(node as Record<string, unknown>)) {
      if (visit(key, value) === false) continue;
      if (value !== null && typeof value === "object") stack.push(value);
    }
  }
}

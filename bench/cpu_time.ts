/**
 * CPU time of this process, for benchmarks that report CPU per operation.
 *
 * @module
 */

/** Clock ticks per second of /proc/<pid>/stat (USER_HZ; 100 on Linux). */
const TICKS = 100;

/** This process's CPU time so far (user + system), in ms; 0 where /proc cannot be read. */
export function processCpuMs(): number {
  try {
    const fields = Deno.readTextFileSync("/proc/self/stat").split(") ")[1].split(" ");
    // utime and stime are the stat file's 14th and 15th fields (11th and 12th after the name).
    return (Number(fields[11]) + Number(fields[12])) * 1000 / TICKS;
  } catch {
    return 0;
  }
}

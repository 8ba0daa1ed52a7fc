/**
 * PostgreSQL's own regression suite (`src/test/regress`), fetched at run time for the installed
 * server's exact Debian version, and the C modules its tests load (`regress.so`, and
 * `autoinc.so`/`refint.so` from contrib/spi), built against the installed server headers.
 *
 * The source comes from Debian's archive through apt itself, with a private apt configuration
 * (deb-src lines made from the machine's `deb` sources, its own lists and cache under the cache
 * directory), so the machine's apt setup is untouched and apt verifies the download: the archive's signed InRelease vouches for
 * the Sources index, which holds the checksums of the `.dsc` and the tarballs. The tarball's
 * SHA-256 is checked against the `.dsc` once more before it is unpacked. Only
 * `src/test/regress` and `contrib/spi` are kept, in `<cache>/<package>_<version>-v<layout>/`; a
 * later run reuses them.
 *
 * @module
 */

import { asPostgresUser, isRoot, requirePgBinDir, runCommand } from "../harness/mod.ts";

/** The regression suite, ready to run with pg_regress. */
export interface RegressSuite {
  /** PostgreSQL version of the suite and the server, e.g. "15.18". */
  version: string;
  /** Debian version of the source package, e.g. "15.18-0+deb12u1". */
  debianVersion: string;
  /** `src/test/regress` of the source: sql/, expected/, data/, parallel_schedule. */
  regressDir: string;
  /** Directory holding regress.so, autoinc.so and refint.so (pg_regress --dlpath). */
  libDir: string;
  /** The pg_regress program of the installed PostgreSQL. */
  pgRegress: string;
  /** Directory of psql and the server programs (pg_regress --bindir). */
  binDir: string;
  /** Test names of parallel_schedule, in order. */
  tests: string[];
}

/** Options for {@linkcode prepareSuite}. */
export interface PrepareSuiteOptions {
  /**
   * Where the suite is kept between runs: env `PGDOG_COMPAT_CACHE`, else `pgdog-compat-cache` in
   * TMPDIR (the server, as user postgres, reads the suite's data files, so not under a home
   * directory it may not enter).
   */
  cacheDir?: string;
  /** Progress lines (downloading, building); silent by default. */
  log?: (line: string) => void;
}

/** One `deb` source of the machine's apt configuration. */
interface AptSource {
  uri: string;
  suite: string;
  components: string[];
  /** Keyring file of a `signed-by` option, when it names one. */
  signedBy?: string;
}

/** The `deb` lines of one-line sources.list text. */
function oneLineSources(text: string): AptSource[] {
  const sources: AptSource[] = [];
  for (const raw of text.split("\n")) {
    const line = raw.replace(/#.*/, "").trim();
    const m = line.match(/^deb\s+(?:\[([^\]]*)\]\s+)?(\S+)\s+(\S+)\s*(.*)$/);
    if (!m) continue;
    const signedBy = m[1]?.match(/signed-by=(\S+)/)?.[1];
    sources.push({
      uri: m[2],
      suite: m[3],
      components: m[4].split(/\s+/).filter(Boolean),
      signedBy,
    });
  }
  return sources;
}

/** The `Types: deb` stanzas of deb822 .sources text. */
function deb822Sources(text: string): AptSource[] {
  const sources: AptSource[] = [];
  for (const stanza of text.split(/\n\s*\n/)) {
    const fields = new Map<string, string>();
    let last = "";
    for (const line of stanza.split("\n")) {
      if (line.startsWith("#")) continue;
      if (/^\s/.test(line) && last) fields.set(last, `${fields.get(last)}\n${line.trim()}`);
      else {
        const m = line.match(/^([\w-]+):\s*(.*)$/);
        if (m) fields.set(last = m[1].toLowerCase(), m[2].trim());
      }
    }
    const types = (fields.get("types") ?? "").split(/\s+/);
    if (!types.includes("deb") || fields.get("enabled") === "no") continue;
    const signedBy = fields.get("signed-by");
    for (const uri of (fields.get("uris") ?? "").split(/\s+/).filter(Boolean)) {
      for (const suite of (fields.get("suites") ?? "").split(/\s+/).filter(Boolean)) {
        sources.push({
          uri,
          suite,
          components: (fields.get("components") ?? "").split(/\s+/).filter(Boolean),
          // A path, not a key written inline.
          signedBy: signedBy && !signedBy.includes("\n") ? signedBy : undefined,
        });
      }
    }
  }
  return sources;
}

/**
 * The machine's apt sources (/etc/apt/sources.list and sources.list.d), as `deb-src` lines: the
 * archives that serve the installed packages also serve their source.
 */
async function debSrcLines(): Promise<string[]> {
  const sources: AptSource[] = [];
  const read = (path: string) => Deno.readTextFile(path).catch(() => "");
  sources.push(...oneLineSources(await read("/etc/apt/sources.list")));
  const dir = "/etc/apt/sources.list.d";
  const names = await Array.fromAsync(Deno.readDir(dir)).catch(() => []);
  for (const { name } of names.sort((a, b) => a.name.localeCompare(b.name))) {
    if (name.endsWith(".list")) sources.push(...oneLineSources(await read(`${dir}/${name}`)));
    if (name.endsWith(".sources")) sources.push(...deb822Sources(await read(`${dir}/${name}`)));
  }
  return sources.map((s) =>
    `deb-src ${s.signedBy ? `[signed-by=${s.signedBy}] ` : ""}${s.uri} ${s.suite} ` +
    s.components.join(" ")
  );
}

/** Written last into a prepared suite directory; its content is the tarball's SHA-256. */
const READY_FILE = "ready";
/** Bump when what a prepared directory holds changes, so older ones are rebuilt. */
const LAYOUT = 1;

/** The default cache directory. */
export function defaultCacheDir(): string {
  return Deno.env.get("PGDOG_COMPAT_CACHE") ||
    `${Deno.env.get("TMPDIR") || "/tmp"}/pgdog-compat-cache`;
}

async function run(
  program: string,
  args: string[],
  options: { cwd?: string; timeoutMs?: number } = {},
): Promise<string> {
  const result = await runCommand(program, args, {
    cwd: options.cwd,
    timeoutMs: options.timeoutMs ?? 300_000,
    env: { LC_ALL: "C" },
  });
  if (result.code !== 0) {
    const why = result.timedOut ? " (timed out)" : "";
    throw new Error(
      `${program} ${args.join(" ")} failed${why} (exit ${result.code}):\n` +
        `${result.stdout.slice(-2000)}${result.stderr.slice(-4000)}`,
    );
  }
  return result.stdout;
}

function exists(path: string): boolean {
  try {
    Deno.statSync(path);
    return true;
  } catch {
    return false;
  }
}

/** The installed server's version and Debian package version, from `postgres --version`. */
async function serverVersion(binDir: string): Promise<{ version: string; debian: string }> {
  const out = await run(`${binDir}/postgres`, ["--version"]);
  // "postgres (PostgreSQL) 15.18 (Debian 15.18-0+deb12u1)"
  const match = out.match(/\(PostgreSQL\) (\d+\.\d+)\S* \(Debian ([^)\s]+)\)/);
  if (!match) {
    throw new Error(
      `${binDir}/postgres is not Debian's PostgreSQL (${out.trim()}): the compatibility run ` +
        "fetches the regression suite of Debian's source package of the installed version",
    );
  }
  return { version: match[1], debian: match[2] };
}

/** Test names of a pg_regress schedule file (`test: a b c` lines). */
export function scheduleTests(schedule: string): string[] {
  const tests: string[] = [];
  for (const line of schedule.split("\n")) {
    const m = line.match(/^test:\s*(.*)$/);
    if (m) tests.push(...m[1].trim().split(/\s+/).filter((t) => t !== ""));
  }
  return tests;
}

async function sha256File(path: string): Promise<string> {
  const digest = await crypto.subtle.digest("SHA-256", await Deno.readFile(path));
  return [...new Uint8Array(digest)].map((b) => b.toString(16).padStart(2, "0")).join("");
}

/**
 * Download the source package with a private apt setup: the installed version, or, when the
 * archive no longer has it, the newest one it has. Returns the download directory and the `.dsc`.
 */
async function aptDownload(
  workDir: string,
  pkg: string,
  debianVersion: string,
  log: (line: string) => void,
): Promise<{ download: string; dscName: string }> {
  if (!exists("/usr/bin/apt-get")) {
    throw new Error("apt-get not found: the compatibility run needs Debian's apt");
  }
  const apt = `${workDir}/apt`;
  const download = `${workDir}/download`;
  for (const dir of [`${apt}/lists/partial`, `${apt}/cache/archives/partial`, download]) {
    await Deno.mkdir(dir, { recursive: true });
  }
  const lines = await debSrcLines();
  if (lines.length === 0) throw new Error("no deb sources in /etc/apt/sources.list{,.d}");
  await Deno.writeTextFile(`${apt}/sources.list`, lines.map((l) => `${l}\n`).join(""));
  const options = [
    `-o`,
    `Dir::Etc::SourceList=${apt}/sources.list`,
    `-o`,
    `Dir::Etc::SourceParts=${apt}/sources.list.d`,
    `-o`,
    `Dir::State::Lists=${apt}/lists`,
    `-o`,
    `Dir::Cache=${apt}/cache`,
    `-o`,
    `Debug::NoLocking=1`,
    // As root apt downloads as user _apt, who cannot write into these directories.
    ...(isRoot() ? ["-o", "APT::Sandbox::User=root"] : []),
    `-qq`,
  ];
  log(`compat: fetching the source index of the machine's apt sources (${lines.length} suites)`);
  await run("apt-get", [...options, "update"]);
  log(`compat: downloading ${pkg} ${debianVersion} (apt checks it against the signed index)`);
  const source = (spec: string) =>
    run("apt-get", [...options, "source", "--download-only", spec], { cwd: download });
  try {
    await source(`${pkg}=${debianVersion}`);
  } catch (err) {
    if (!/Can not find version|Unable to find a source package/.test(String(err))) throw err;
    log(
      `compat: warning: the archive no longer has ${pkg} ${debianVersion}; using its newest ` +
        `${pkg} (expected outputs may differ where the minor releases differ)`,
    );
    await source(pkg);
  }
  const dscs = [...Deno.readDirSync(download)].map((e) => e.name).filter((n) => n.endsWith(".dsc"));
  if (dscs.length !== 1) throw new Error(`apt-get source left ${dscs.length} .dsc files`);
  return { download, dscName: dscs[0] };
}

/**
 * The `.orig.tar.*` named by the `.dsc` in `dir`, after checking its size and SHA-256 against the
 * `.dsc`'s Checksums-Sha256.
 */
async function verifiedTarball(
  dir: string,
  dscName: string,
): Promise<{ path: string; sha: string }> {
  const dsc = await Deno.readTextFile(`${dir}/${dscName}`);
  const section = dsc.split(/^Checksums-Sha256:\s*$/m)[1] ?? "";
  for (const line of section.split("\n").slice(1)) {
    const m = line.match(/^ ([0-9a-f]{64}) (\d+) (\S+\.orig\.tar\.\w+)$/);
    if (!m) continue;
    const path = `${dir}/${m[3]}`;
    const size = (await Deno.stat(path)).size;
    const sha = await sha256File(path);
    if (size !== Number(m[2]) || sha !== m[1]) {
      throw new Error(`${path} does not match ${dscName} (size ${size}, sha256 ${sha})`);
    }
    return { path, sha };
  }
  throw new Error(`${dscName} names no .orig tarball in Checksums-Sha256`);
}

/** pg_config of the installed server, asked one thing. */
async function pgConfig(binDir: string, flag: string): Promise<string> {
  return (await run(`${binDir}/pg_config`, [flag])).trim();
}

/** Build regress.so, autoinc.so and refint.so with PGXS into `libDir`. */
async function buildModules(
  sourceDir: string,
  libDir: string,
  binDir: string,
  log: (line: string) => void,
): Promise<void> {
  const serverIncludes = await pgConfig(binDir, "--includedir-server");
  if (!exists(`${serverIncludes}/postgres.h`)) {
    const major = (await pgConfig(binDir, "--version")).match(/(\d+)/)?.[1] ?? "";
    throw new Error(
      `PostgreSQL's server headers are missing (${serverIncludes}/postgres.h): ` +
        `apt-get install postgresql-server-dev-${major}`,
    );
  }
  const pgxs = await pgConfig(binDir, "--pgxs");
  await Deno.mkdir(libDir, { recursive: true });
  await Deno.copyFile(`${sourceDir}/src/test/regress/regress.c`, `${libDir}/regress.c`);
  for (const name of ["autoinc", "refint"]) {
    await Deno.copyFile(`${sourceDir}/contrib/spi/${name}.c`, `${libDir}/${name}.c`);
  }
  await Deno.writeTextFile(
    `${libDir}/Makefile`,
    [
      "MODULES = regress autoinc refint",
      // contrib/spi's Makefile: the regression tests expect refint's verbose notices.
      "PG_CPPFLAGS = -DREFINT_VERBOSE",
      `PGXS := ${pgxs}`,
      `PG_CONFIG := ${binDir}/pg_config`,
      "include $(PGXS)",
      "",
    ].join("\n"),
  );
  log("compat: building regress.so, autoinc.so and refint.so");
  await run("make", ["-s", "-C", libDir]);
}

/** Throws unless the postgres user (the server) can read `path`. */
async function checkServerCanRead(path: string): Promise<void> {
  if (!isRoot()) return;
  const [cmd, args] = asPostgresUser("test", ["-r", path]);
  const result = await runCommand(cmd, args, { timeoutMs: 10_000 });
  if (result.code !== 0) {
    throw new Error(
      `the postgres user cannot read ${path}, which the server reads during the tests ` +
        "(COPY FROM, LOAD): set PGDOG_COMPAT_CACHE to a directory it can read",
    );
  }
}

/** Download, verify and unpack the suite into `build` and build its modules there. */
async function fetchAndBuild(
  options: { build: string; pkg: string; debian: string; binDir: string; log: (l: string) => void },
): Promise<void> {
  const { build, pkg, debian, binDir, log } = options;
  await Deno.remove(build, { recursive: true }).catch(() => {});
  await Deno.mkdir(`${build}/source`, { recursive: true });
  const { download, dscName } = await aptDownload(build, pkg, debian, log);
  const tarball = await verifiedTarball(download, dscName);
  log(`compat: unpacking src/test/regress and contrib/spi (sha256 ${tarball.sha})`);
  await run("tar", [
    "-xf",
    tarball.path,
    "-C",
    `${build}/source`,
    "--strip-components=1",
    "--wildcards",
    "*/src/test/regress/*",
    "*/contrib/spi/*",
  ]);
  await buildModules(`${build}/source`, `${build}/lib`, binDir, log);
  // The index and the tarball are not needed once the suite is unpacked (about 45 MB).
  await Deno.remove(`${build}/apt`, { recursive: true });
  await Deno.remove(download, { recursive: true });
  await Deno.writeTextFile(`${build}/${READY_FILE}`, `${tarball.sha}\n`);
}

/**
 * Fetch (or reuse) the regression suite of the installed PostgreSQL and build its C modules.
 * Needs apt-get, make, gcc and PostgreSQL's server headers (postgresql-server-dev-<major>).
 */
export async function prepareSuite(options: PrepareSuiteOptions = {}): Promise<RegressSuite> {
  const log = options.log ?? (() => {});
  const binDir = requirePgBinDir();
  const { version, debian } = await serverVersion(binDir);
  const major = version.split(".")[0];
  const pkg = `postgresql-${major}`;
  const cacheDir = options.cacheDir ?? defaultCacheDir();
  const dir = `${cacheDir}/${pkg}_${debian}-v${LAYOUT}`;
  const sourceDir = `${dir}/source`;
  const libDir = `${dir}/lib`;

  if (!exists(`${dir}/${READY_FILE}`)) {
    // Built aside and renamed into place, so concurrent runs never see half a suite.
    const build = `${dir}.build-${Deno.pid}`;
    try {
      await fetchAndBuild({ build, pkg, debian, binDir, log });
      await Deno.remove(dir, { recursive: true }).catch(() => {});
      await Deno.rename(build, dir).catch((err) => {
        if (!exists(`${dir}/${READY_FILE}`)) throw err;
      });
    } finally {
      await Deno.remove(build, { recursive: true }).catch(() => {});
    }
  }

  const regressDir = `${sourceDir}/src/test/regress`;
  const pgRegress =
    `${(await pgConfig(binDir, "--pgxs")).replace(/\/src\/makefiles\/pgxs\.mk$/, "")}` +
    "/src/test/regress/pg_regress";
  if (!exists(pgRegress)) {
    throw new Error(`pg_regress not found at ${pgRegress} (Debian ships it in postgresql-client)`);
  }
  await checkServerCanRead(`${regressDir}/data/onek.data`);
  await checkServerCanRead(`${libDir}/regress.so`);
  const tests = scheduleTests(await Deno.readTextFile(`${regressDir}/parallel_schedule`));
  return { version, debianVersion: debian, regressDir, libDir, pgRegress, binDir, tests };
}

/**
 * SCRAM-SHA-256 (RFC 5802 / RFC 7677) as PostgreSQL speaks it, for both ends:
 *
 * - {@link ScramServerSession} authenticates clients connecting to the proxy.
 * - {@link ScramClientSession} authenticates the proxy to PostgreSQL servers.
 *
 * Channel binding (`SCRAM-SHA-256-PLUS`) is not supported. Passwords are
 * normalized with {@link saslprep} the same way PostgreSQL does it, including
 * its fallback to the raw password when normalization fails.
 *
 * All hashing goes through WebCrypto (`crypto.subtle`).
 *
 * @module
 */

import {
  decodeBase64,
  encodeBase64,
  randomBytes,
  timingSafeEqual,
  utf8Encode,
  xorBytes,
} from "./crypto_util.ts";
import { LruMap } from "../lru.ts";

/** The mechanism name announced in AuthenticationSASL. */
export const SCRAM_SHA_256 = "SCRAM-SHA-256";

/** Iteration count used for new secrets (PostgreSQL's default). */
export const SCRAM_DEFAULT_ITERATIONS = 4096;

/** Length of freshly generated salts, in bytes (PostgreSQL's default). */
export const SCRAM_DEFAULT_SALT_LENGTH = 16;

/** Largest iteration count accepted from a server or a stored verifier. */
const MAX_ITERATIONS = 0x7fffffff;

/** Raw length of generated nonces, before base64 (what PostgreSQL uses). */
const NONCE_LENGTH = 18;

/** SHA-256 output length. */
const KEY_LENGTH = 32;

/** What a server keeps to verify a password: PostgreSQL's SCRAM secret. */
export interface ScramSecret {
  /** PBKDF2 iteration count. */
  iterations: number;
  /** PBKDF2 salt. */
  salt: Uint8Array;
  /** SHA-256(ClientKey). */
  storedKey: Uint8Array;
  /** HMAC(SaltedPassword, "Server Key"). */
  serverKey: Uint8Array;
}

/** Options for {@link scramSecretFromPassword} and {@link makeScramVerifier}. */
export interface ScramSecretOptions {
  /** Salt to use; 16 random bytes by default. */
  salt?: Uint8Array;
  /** PBKDF2 iteration count; {@link SCRAM_DEFAULT_ITERATIONS} by default. */
  iterations?: number;
}

// ---------------------------------------------------------------------------
// SASLprep (RFC 4013), as PostgreSQL applies it to passwords.
// ---------------------------------------------------------------------------

/**
 * Parses a compact list of hex code point ranges (`"a0,2000-200b"`) into
 * sorted `[lo, hi]` pairs for {@link inTable}.
 */
function codeRanges(text: string): Uint32Array {
  const items = text.split(",");
  const out = new Uint32Array(items.length * 2);
  items.forEach((item, i) => {
    const [lo, hi = lo] = item.split("-");
    out[2 * i] = parseInt(lo, 16);
    out[2 * i + 1] = parseInt(hi, 16);
  });
  return out;
}

/** Whether `code` falls in one of the ranges of `table` (binary search). */
function inTable(code: number, table: Uint32Array): boolean {
  let lo = 0;
  let hi = table.length / 2 - 1;
  while (lo <= hi) {
    const mid = (lo + hi) >>> 1;
    if (code < table[2 * mid]) hi = mid - 1;
    else if (code > table[2 * mid + 1]) lo = mid + 1;
    else return true;
  }
  return false;
}

// The tables below were generated from the RFC 3454 tables (Unicode 3.2).

/** RFC 3454 C.1.2: non-ASCII space characters (mapped to SPACE). */
const NON_ASCII_SPACE = codeRanges("a0,1680,2000-200b,202f,205f,3000");

/** RFC 3454 B.1: commonly mapped to nothing. */
const MAPPED_TO_NOTHING = codeRanges("ad,34f,1806,180b-180d,200b-200d,2060,fe00-fe0f,feff");

/** RFC 4013 section 2.3: RFC 3454 C.1.2, C.2.1, C.2.2 and C.3 to C.9. */
const PROHIBITED = codeRanges(
  "0-1f,7f-a0,340-341,6dd,70f,1680,180e,2000-200f,2028-202f,205f-2063,206a-206f,2ff0-2ffb," +
    "3000,d800-f8ff,fdd0-fdef,feff,fff9-ffff,1d173-1d17a,1fffe-1ffff,2fffe-2ffff,3fffe-3ffff," +
    "4fffe-4ffff,5fffe-5ffff,6fffe-6ffff,7fffe-7ffff,8fffe-8ffff,9fffe-9ffff,afffe-affff," +
    "bfffe-bffff,cfffe-cffff,dfffe-dffff,e0001,e0020-e007f,efffe-10ffff",
);

/** RFC 3454 A.1: code points unassigned in Unicode 3.2. */
const UNASSIGNED = codeRanges(
  "221,234-24f,2ae-2af,2ef-2ff,350-35f,370-373,376-379,37b-37d,37f-383,38b,38d,3a2,3cf," +
    "3f7-3ff,487,4cf,4f6-4f7,4fa-4ff,510-530,557-558,560,588,58b-590,5a2,5ba,5c5-5cf,5eb-5ef," +
    "5f5-60b,60d-61a,61c-61e,620,63b-63f,656-65f,6ee-6ef,6ff,70e,72d-72f,74b-77f,7b2-900,904," +
    "93a-93b,94e-94f,955-957,971-980,984,98d-98e,991-992,9a9,9b1,9b3-9b5,9ba-9bb,9bd,9c5-9c6," +
    "9c9-9ca,9ce-9d6,9d8-9db,9de,9e4-9e5,9fb-a01,a03-a04,a0b-a0e,a11-a12,a29,a31,a34,a37," +
    "a3a-a3b,a3d,a43-a46,a49-a4a,a4e-a58,a5d,a5f-a65,a75-a80,a84,a8c,a8e,a92,aa9,ab1,ab4," +
    "aba-abb,ac6,aca,ace-acf,ad1-adf,ae1-ae5,af0-b00,b04,b0d-b0e,b11-b12,b29,b31,b34-b35," +
    "b3a-b3b,b44-b46,b49-b4a,b4e-b55,b58-b5b,b5e,b62-b65,b71-b81,b84,b8b-b8d,b91,b96-b98,b9b," +
    "b9d,ba0-ba2,ba5-ba7,bab-bad,bb6,bba-bbd,bc3-bc5,bc9,bce-bd6,bd8-be6,bf3-c00,c04,c0d,c11," +
    "c29,c34,c3a-c3d,c45,c49,c4e-c54,c57-c5f,c62-c65,c70-c81,c84,c8d,c91,ca9,cb4,cba-cbd,cc5," +
    "cc9,cce-cd4,cd7-cdd,cdf,ce2-ce5,cf0-d01,d04,d0d,d11,d29,d3a-d3d,d44-d45,d49,d4e-d56," +
    "d58-d5f,d62-d65,d70-d81,d84,d97-d99,db2,dbc,dbe-dbf,dc7-dc9,dcb-dce,dd5,dd7,de0-df1," +
    "df5-e00,e3b-e3e,e5c-e80,e83,e85-e86,e89,e8b-e8c,e8e-e93,e98,ea0,ea4,ea6,ea8-ea9,eac,eba," +
    "ebe-ebf,ec5,ec7,ece-ecf,eda-edb,ede-eff,f48,f6b-f70,f8c-f8f,f98,fbd,fcd-fce,fd0-fff,1022," +
    "1028,102b,1033-1035,103a-103f,105a-109f,10c6-10cf,10f9-10fa,10fc-10ff,115a-115e,11a3-11a7," +
    "11fa-11ff,1207,1247,1249,124e-124f,1257,1259,125e-125f,1287,1289,128e-128f,12af,12b1," +
    "12b6-12b7,12bf,12c1,12c6-12c7,12cf,12d7,12ef,130f,1311,1316-1317,131f,1347,135b-1360," +
    "137d-139f,13f5-1400,1677-167f,169d-169f,16f1-16ff,170d,1715-171f,1737-173f,1754-175f,176d," +
    "1771,1774-177f,17dd-17df,17ea-17ff,180f,181a-181f,1878-187f,18aa-1dff,1e9c-1e9f,1efa-1eff," +
    "1f16-1f17,1f1e-1f1f,1f46-1f47,1f4e-1f4f,1f58,1f5a,1f5c,1f5e,1f7e-1f7f,1fb5,1fc5,1fd4-1fd5," +
    "1fdc,1ff0-1ff1,1ff5,1fff,2053-2056,2058-205e,2064-2069,2072-2073,208f-209f,20b2-20cf," +
    "20eb-20ff,213b-213c,214c-2152,2184-218f,23cf-23ff,2427-243f,244b-245f,24ff,2614-2615,2618," +
    "267e-267f,268a-2700,2705,270a-270b,2728,274c,274e,2753-2755,2757,275f-2760,2795-2797,27b0," +
    "27bf-27cf,27ec-27ef,2b00-2e7f,2e9a,2ef4-2eff,2fd6-2fef,2ffc-2fff,3040,3097-3098,3100-3104," +
    "312d-3130,318f,31b8-31ef,321d-321f,3244-3250,327c-327e,32cc-32cf,32ff,3377-337a,33de-33df," +
    "33ff,4db6-4dff,9fa6-9fff,a48d-a48f,a4c7-abff,d7a4-d7ff,fa2e-fa2f,fa6b-faff,fb07-fb12," +
    "fb18-fb1c,fb37,fb3d,fb3f,fb42,fb45,fbb2-fbd2,fd40-fd4f,fd90-fd91,fdc8-fdcf,fdfd-fdff," +
    "fe10-fe1f,fe24-fe2f,fe47-fe48,fe53,fe67,fe6c-fe6f,fe75,fefd-fefe,ff00,ffbf-ffc1,ffc8-ffc9," +
    "ffd0-ffd1,ffd8-ffd9,ffdd-ffdf,ffe7,ffef-fff8,10000-102ff,1031f,10324-1032f,1034b-103ff," +
    "10426-10427,1044e-1cfff,1d0f6-1d0ff,1d127-1d129,1d1de-1d3ff,1d455,1d49d,1d4a0-1d4a1," +
    "1d4a3-1d4a4,1d4a7-1d4a8,1d4ad,1d4ba,1d4bc,1d4c1,1d4c4,1d506,1d50b-1d50c,1d515,1d51d,1d53a," +
    "1d53f,1d545,1d547-1d549,1d551,1d6a4-1d6a7,1d7ca-1d7cd,1d800-1fffd,2a6d7-2f7ff,2fa1e-2fffd," +
    "30000-3fffd,40000-4fffd,50000-5fffd,60000-6fffd,70000-7fffd,80000-8fffd,90000-9fffd," +
    "a0000-afffd,b0000-bfffd,c0000-cfffd,d0000-dfffd,e0000,e0002-e001f,e0080-efffd",
);

/** RFC 3454 D.1: bidirectional property R or AL. */
const RAND_AL_CAT = codeRanges(
  "5be,5c0,5c3,5d0-5ea,5f0-5f4,61b,61f,621-63a,640-64a,66d-66f,671-6d5,6dd,6e5-6e6,6fa-6fe," +
    "700-70d,710,712-72c,780-7a5,7b1,200f,fb1d,fb1f-fb28,fb2a-fb36,fb38-fb3c,fb3e,fb40-fb41," +
    "fb43-fb44,fb46-fbb1,fbd3-fd3d,fd50-fd8f,fd92-fdc7,fdf0-fdfc,fe70-fe74,fe76-fefc",
);

/** RFC 3454 D.2: bidirectional property L. */
const L_CAT = codeRanges(
  "41-5a,61-7a,aa,b5,ba,c0-d6,d8-f6,f8-220,222-233,250-2ad,2b0-2b8,2bb-2c1,2d0-2d1,2e0-2e4," +
    "2ee,37a,386,388-38a,38c,38e-3a1,3a3-3ce,3d0-3f5,400-482,48a-4ce,4d0-4f5,4f8-4f9,500-50f," +
    "531-556,559-55f,561-587,589,903,905-939,93d-940,949-94c,950,958-961,964-970,982-983," +
    "985-98c,98f-990,993-9a8,9aa-9b0,9b2,9b6-9b9,9be-9c0,9c7-9c8,9cb-9cc,9d7,9dc-9dd,9df-9e1," +
    "9e6-9f1,9f4-9fa,a05-a0a,a0f-a10,a13-a28,a2a-a30,a32-a33,a35-a36,a38-a39,a3e-a40,a59-a5c," +
    "a5e,a66-a6f,a72-a74,a83,a85-a8b,a8d,a8f-a91,a93-aa8,aaa-ab0,ab2-ab3,ab5-ab9,abd-ac0,ac9," +
    "acb-acc,ad0,ae0,ae6-aef,b02-b03,b05-b0c,b0f-b10,b13-b28,b2a-b30,b32-b33,b36-b39,b3d-b3e," +
    "b40,b47-b48,b4b-b4c,b57,b5c-b5d,b5f-b61,b66-b70,b83,b85-b8a,b8e-b90,b92-b95,b99-b9a,b9c," +
    "b9e-b9f,ba3-ba4,ba8-baa,bae-bb5,bb7-bb9,bbe-bbf,bc1-bc2,bc6-bc8,bca-bcc,bd7,be7-bf2," +
    "c01-c03,c05-c0c,c0e-c10,c12-c28,c2a-c33,c35-c39,c41-c44,c60-c61,c66-c6f,c82-c83,c85-c8c," +
    "c8e-c90,c92-ca8,caa-cb3,cb5-cb9,cbe,cc0-cc4,cc7-cc8,cca-ccb,cd5-cd6,cde,ce0-ce1,ce6-cef," +
    "d02-d03,d05-d0c,d0e-d10,d12-d28,d2a-d39,d3e-d40,d46-d48,d4a-d4c,d57,d60-d61,d66-d6f," +
    "d82-d83,d85-d96,d9a-db1,db3-dbb,dbd,dc0-dc6,dcf-dd1,dd8-ddf,df2-df4,e01-e30,e32-e33," +
    "e40-e46,e4f-e5b,e81-e82,e84,e87-e88,e8a,e8d,e94-e97,e99-e9f,ea1-ea3,ea5,ea7,eaa-eab," +
    "ead-eb0,eb2-eb3,ebd,ec0-ec4,ec6,ed0-ed9,edc-edd,f00-f17,f1a-f34,f36,f38,f3e-f47,f49-f6a," +
    "f7f,f85,f88-f8b,fbe-fc5,fc7-fcc,fcf,1000-1021,1023-1027,1029-102a,102c,1031,1038,1040-1057," +
    "10a0-10c5,10d0-10f8,10fb,1100-1159,115f-11a2,11a8-11f9,1200-1206,1208-1246,1248,124a-124d," +
    "1250-1256,1258,125a-125d,1260-1286,1288,128a-128d,1290-12ae,12b0,12b2-12b5,12b8-12be,12c0," +
    "12c2-12c5,12c8-12ce,12d0-12d6,12d8-12ee,12f0-130e,1310,1312-1315,1318-131e,1320-1346," +
    "1348-135a,1361-137c,13a0-13f4,1401-1676,1681-169a,16a0-16f0,1700-170c,170e-1711,1720-1731," +
    "1735-1736,1740-1751,1760-176c,176e-1770,1780-17b6,17be-17c5,17c7-17c8,17d4-17da,17dc," +
    "17e0-17e9,1810-1819,1820-1877,1880-18a8,1e00-1e9b,1ea0-1ef9,1f00-1f15,1f18-1f1d,1f20-1f45," +
    "1f48-1f4d,1f50-1f57,1f59,1f5b,1f5d,1f5f-1f7d,1f80-1fb4,1fb6-1fbc,1fbe,1fc2-1fc4,1fc6-1fcc," +
    "1fd0-1fd3,1fd6-1fdb,1fe0-1fec,1ff2-1ff4,1ff6-1ffc,200e,2071,207f,2102,2107,210a-2113,2115," +
    "2119-211d,2124,2126,2128,212a-212d,212f-2131,2133-2139,213d-213f,2145-2149,2160-2183," +
    "2336-237a,2395,249c-24e9,3005-3007,3021-3029,3031-3035,3038-303c,3041-3096,309d-309f," +
    "30a1-30fa,30fc-30ff,3105-312c,3131-318e,3190-31b7,31f0-321c,3220-3243,3260-327b,327f-32b0," +
    "32c0-32cb,32d0-32fe,3300-3376,337b-33dd,33e0-33fe,3400-4db5,4e00-9fa5,a000-a48c,ac00-d7a3," +
    "d800-fa2d,fa30-fa6a,fb00-fb06,fb13-fb17,ff21-ff3a,ff41-ff5a,ff66-ffbe,ffc2-ffc7,ffca-ffcf," +
    "ffd2-ffd7,ffda-ffdc,10300-1031e,10320-10323,10330-1034a,10400-10425,10428-1044d," +
    "1d000-1d0f5,1d100-1d126,1d12a-1d166,1d16a-1d172,1d183-1d184,1d18c-1d1a9,1d1ae-1d1dd," +
    "1d400-1d454,1d456-1d49c,1d49e-1d49f,1d4a2,1d4a5-1d4a6,1d4a9-1d4ac,1d4ae-1d4b9,1d4bb," +
    "1d4bd-1d4c0,1d4c2-1d4c3,1d4c5-1d505,1d507-1d50a,1d50d-1d514,1d516-1d51c,1d51e-1d539," +
    "1d53b-1d53e,1d540-1d544,1d546,1d54a-1d550,1d552-1d6a3,1d6a8-1d7c9,20000-2a6d6,2f800-2fa1d," +
    "f0000-ffffd,100000-10fffd",
);

const ASCII_ONLY = /^\p{ASCII}*$/u;

/**
 * Normalizes a password with SASLprep (RFC 4013) the way PostgreSQL does
 * (`pg_saslprep`): pure-ASCII passwords are returned unchanged, and when the
 * password cannot be normalized (prohibited or unassigned characters, a bidi
 * violation, or nothing left after mapping) the raw password is returned,
 * which is what both the PostgreSQL server and libpq then use. As in
 * PostgreSQL, the prohibition and bidi checks look at the mapped input, not
 * the NFKC output.
 *
 * NFKC comes from the JavaScript engine (current Unicode), as PostgreSQL
 * uses its own current Unicode tables for that step.
 *
 * @param password The password as configured or typed.
 * @returns The string to feed to PBKDF2.
 */
export function saslprep(password: string): string {
  if (ASCII_ONLY.test(password)) return password;

  // 1. Map: non-ASCII spaces to SPACE, "commonly mapped to nothing" removed.
  const mapped: number[] = [];
  for (const char of password) {
    const code = char.codePointAt(0)!;
    if (inTable(code, NON_ASCII_SPACE)) mapped.push(0x20);
    else if (!inTable(code, MAPPED_TO_NOTHING)) mapped.push(code);
  }
  if (mapped.length === 0) return password;

  // 3. Prohibit.
  for (const code of mapped) {
    if (inTable(code, PROHIBITED) || inTable(code, UNASSIGNED)) return password;
  }

  // 4. Check bidi: with any RandALCat character there must be no LCat
  // character, and the string must start and end with RandALCat.
  if (mapped.some((code) => inTable(code, RAND_AL_CAT))) {
    if (
      mapped.some((code) => inTable(code, L_CAT)) ||
      !inTable(mapped[0], RAND_AL_CAT) || !inTable(mapped[mapped.length - 1], RAND_AL_CAT)
    ) {
      return password;
    }
  }

  // 2. Normalize with Unicode normalization form KC.
  return mapped.map((code) => String.fromCodePoint(code)).join("").normalize("NFKC");
}

// ---------------------------------------------------------------------------
// Primitives.
// ---------------------------------------------------------------------------

function copy(bytes: Uint8Array): Uint8Array<ArrayBuffer> {
  return new Uint8Array(bytes);
}

async function hmacSha256(key: Uint8Array, data: Uint8Array): Promise<Uint8Array<ArrayBuffer>> {
  const cryptoKey = await crypto.subtle.importKey(
    "raw",
    copy(key),
    { name: "HMAC", hash: "SHA-256" },
    false,
    ["sign"],
  );
  return new Uint8Array(await crypto.subtle.sign("HMAC", cryptoKey, copy(data)));
}

async function sha256(data: Uint8Array): Promise<Uint8Array<ArrayBuffer>> {
  return new Uint8Array(await crypto.subtle.digest("SHA-256", copy(data)));
}

async function saltedPassword(
  password: string,
  salt: Uint8Array,
  iterations: number,
): Promise<Uint8Array<ArrayBuffer>> {
  const key = await crypto.subtle.importKey(
    "raw",
    utf8Encode(saslprep(password)),
    "PBKDF2",
    false,
    ["deriveBits"],
  );
  const bits = await crypto.subtle.deriveBits(
    { name: "PBKDF2", hash: "SHA-256", salt: copy(salt), iterations },
    key,
    KEY_LENGTH * 8,
  );
  return new Uint8Array(bits);
}

interface ScramKeys {
  clientKey: Uint8Array;
  storedKey: Uint8Array;
  serverKey: Uint8Array;
}

async function deriveKeys(
  password: string,
  salt: Uint8Array,
  iterations: number,
): Promise<ScramKeys> {
  const salted = await saltedPassword(password, salt, iterations);
  const [clientKey, serverKey] = await Promise.all([
    hmacSha256(salted, utf8Encode("Client Key")),
    hmacSha256(salted, utf8Encode("Server Key")),
  ]);
  return { clientKey, storedKey: await sha256(clientKey), serverKey };
}

function checkIterations(iterations: number): void {
  if (!Number.isInteger(iterations) || iterations < 1 || iterations > MAX_ITERATIONS) {
    throw new RangeError(`invalid SCRAM iteration count: ${iterations}`);
  }
}

/** Keys derived for outgoing connections, per (password, salt, iterations). */
const clientKeyCache = new LruMap<string, Promise<ScramKeys>>(256);

function cachedClientKeys(
  password: string,
  salt: Uint8Array,
  iterations: number,
): Promise<ScramKeys> {
  const key = `${iterations}:${encodeBase64(salt)}:${password}`;
  let keys = clientKeyCache.get(key);
  if (keys === undefined) {
    const derived = deriveKeys(password, salt, iterations);
    keys = derived;
    clientKeyCache.set(key, derived);
    derived.catch(() => clientKeyCache.delete(key, derived));
  }
  return keys;
}

// ---------------------------------------------------------------------------
// Secrets and PostgreSQL's stored verifier format.
// ---------------------------------------------------------------------------

/**
 * Derives a SCRAM secret from a plaintext password. This runs PBKDF2 (about
 * a millisecond at 4096 iterations), so cache the result; see
 * {@link cachedScramSecret}.
 *
 * @param password The plaintext password (normalized with {@link saslprep}).
 * @param options Salt and iteration count; random 16-byte salt and 4096
 *   iterations by default.
 * @returns The secret a server needs to verify the password.
 */
export async function scramSecretFromPassword(
  password: string,
  options: ScramSecretOptions = {},
): Promise<ScramSecret> {
  const iterations = options.iterations ?? SCRAM_DEFAULT_ITERATIONS;
  checkIterations(iterations);
  const salt = options.salt ? copy(options.salt) : randomBytes(SCRAM_DEFAULT_SALT_LENGTH);
  const { storedKey, serverKey } = await deriveKeys(password, salt, iterations);
  return { iterations, salt, storedKey, serverKey };
}

interface SecretCacheEntry {
  password: string;
  salt: Uint8Array;
  secret: Promise<ScramSecret>;
}

const secretCache = new LruMap<string, SecretCacheEntry>(10_000);

/**
 * Returns the SCRAM secret for a user's configured password, deriving it at
 * most once per (user, password) in this process. The salt stays the same
 * for a user even when the password changes.
 *
 * When `password` is itself a PostgreSQL SCRAM verifier
 * (`SCRAM-SHA-256$...`, as stored in `pg_authid`), it is parsed instead of
 * hashed, like PostgreSQL does for `CREATE ROLE ... PASSWORD`.
 *
 * @param user The user name (cache key).
 * @param password The configured password or SCRAM verifier.
 * @returns The user's secret.
 */
export function cachedScramSecret(user: string, password: string): Promise<ScramSecret> {
  const cached = secretCache.get(user);
  if (cached !== undefined && cached.password === password) return cached.secret;

  const verifier = parseScramVerifier(password);
  const salt = cached?.salt ?? randomBytes(SCRAM_DEFAULT_SALT_LENGTH);
  const entry: SecretCacheEntry = {
    password,
    salt,
    secret: verifier ? Promise.resolve(verifier) : scramSecretFromPassword(password, { salt }),
  };
  secretCache.set(user, entry);
  entry.secret.catch(() => secretCache.delete(user, entry));
  return entry.secret;
}

/**
 * Parses PostgreSQL's stored SCRAM verifier,
 * `SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>` (base64 parts).
 *
 * @param text The stored password text.
 * @returns The secret, or `undefined` when `text` is not a valid verifier.
 */
export function parseScramVerifier(text: string): ScramSecret | undefined {
  const match = /^SCRAM-SHA-256\$([0-9]+):([^$:]+)\$([^$:]+):([^$:]+)$/.exec(text);
  if (match === null) return undefined;
  const iterations = Number(match[1]);
  if (!Number.isInteger(iterations) || iterations < 1 || iterations > MAX_ITERATIONS) {
    return undefined;
  }
  const salt = decodeBase64(match[2]);
  const storedKey = decodeBase64(match[3]);
  const serverKey = decodeBase64(match[4]);
  if (
    salt === undefined || salt.length === 0 ||
    storedKey?.length !== KEY_LENGTH || serverKey?.length !== KEY_LENGTH
  ) {
    return undefined;
  }
  return { iterations, salt, storedKey, serverKey };
}

/**
 * Formats a secret in PostgreSQL's stored verifier format.
 *
 * @param secret The secret.
 * @returns `SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>`.
 */
export function formatScramVerifier(secret: ScramSecret): string {
  return `${SCRAM_SHA_256}$${secret.iterations}:${encodeBase64(secret.salt)}$` +
    `${encodeBase64(secret.storedKey)}:${encodeBase64(secret.serverKey)}`;
}

/**
 * Hashes a password into PostgreSQL's stored SCRAM verifier format, what
 * `pg_authid.rolpassword` holds with `password_encryption = scram-sha-256`.
 *
 * @param password The plaintext password.
 * @param options Salt and iteration count (random salt, 4096 by default).
 * @returns The verifier text.
 */
export async function makeScramVerifier(
  password: string,
  options: ScramSecretOptions = {},
): Promise<string> {
  return formatScramVerifier(await scramSecretFromPassword(password, options));
}

// ---------------------------------------------------------------------------
// Message parsing helpers.
// ---------------------------------------------------------------------------

/** printable = %x21-2B / %x2D-7E (RFC 5802), i.e. visible ASCII except ",". */
const NONCE_PATTERN = /^[\x21-\x2b\x2d-\x7e]+$/;

function newNonce(): string {
  return encodeBase64(randomBytes(NONCE_LENGTH));
}

/** Splits `k=value` into its parts; `undefined` when malformed. */
function attribute(text: string | undefined): [string, string] | undefined {
  if (text === undefined || text.length < 2 || text[1] !== "=") return undefined;
  const name = text[0];
  if (!/^[A-Za-z]$/.test(name)) return undefined;
  return [name, text.slice(2)];
}

/** Value of attribute `name` in `text`, or `undefined`. */
function expect(text: string | undefined, name: string): string | undefined {
  const attr = attribute(text);
  return attr !== undefined && attr[0] === name ? attr[1] : undefined;
}

/** Escapes a user name as a SASL `saslname` (`,` and `=`). */
function saslName(user: string): string {
  return user.replaceAll("=", "=3D").replaceAll(",", "=2C");
}

// ---------------------------------------------------------------------------
// Server side.
// ---------------------------------------------------------------------------

/** Options for {@link ScramServerSession}. */
export interface ScramServerSessionOptions {
  /** Server nonce part (for tests); 18 random bytes in base64 by default. */
  nonce?: string;
}

/** Result of {@link ScramServerSession.handleClientFirst}. */
export type ScramClientFirstResult = { serverFirst: string } | { error: string };

/** Result of {@link ScramServerSession.handleClientFinal}. */
export type ScramClientFinalResult =
  | { ok: true; serverFinal: string }
  | { ok: false; error: string };

/**
 * One SCRAM-SHA-256 exchange with a client, on the server side.
 *
 * Usage: send AuthenticationSASL with {@link SCRAM_SHA_256}; pass the
 * SASLInitialResponse data to {@link handleClientFirst} and send
 * `serverFirst` as AuthenticationSASLContinue; pass the SASLResponse data to
 * {@link handleClientFinal} and send `serverFinal` as AuthenticationSASLFinal
 * followed by AuthenticationOk. On `error`, send an ErrorResponse
 * (SQLSTATE 28P01 for a wrong password, 08P01 otherwise) and close.
 *
 * Like PostgreSQL, the user name in the client's message is ignored; the
 * session authenticates the user from the startup packet.
 */
export class ScramServerSession {
  /** The user being authenticated (from the startup packet). */
  readonly user: string;
  readonly #secret: ScramSecret;
  readonly #serverNonce: string;
  #state: "first" | "final" | "done" = "first";
  #gs2Header = "";
  #clientFirstBare = "";
  #serverFirst = "";
  #nonce = "";

  /**
   * Starts an exchange for one login attempt.
   *
   * @param secret The user's secret.
   * @param user The user name from the startup packet.
   * @param options Server nonce override, for tests.
   */
  constructor(secret: ScramSecret, user: string, options: ScramServerSessionOptions = {}) {
    this.#secret = secret;
    this.user = user;
    this.#serverNonce = options.nonce ?? newNonce();
  }

  /**
   * Handles client-first-message (the SASLInitialResponse data).
   *
   * @param message The client's message.
   * @returns `serverFirst` to send in AuthenticationSASLContinue, or an error.
   */
  handleClientFirst(message: string): ScramClientFirstResult {
    if (this.#state !== "first") {
      this.#state = "done";
      return { error: "unexpected SCRAM client-first-message" };
    }
    this.#state = "done";

    // gs2-header = gs2-cbind-flag "," [ authzid ] ","
    if (message.startsWith("p=")) {
      return { error: "channel binding is not supported" };
    }
    if (!message.startsWith("n,") && !message.startsWith("y,")) {
      return { error: "malformed SCRAM message: invalid GS2 header" };
    }
    const authzidEnd = message.indexOf(",", 2);
    if (authzidEnd < 0) return { error: "malformed SCRAM message: invalid GS2 header" };
    const authzid = message.slice(2, authzidEnd);
    if (authzid !== "" && expect(authzid, "a") === undefined) {
      return { error: "malformed SCRAM message: invalid authorization identity" };
    }
    const gs2Header = message.slice(0, authzidEnd + 1);
    const bare = message.slice(authzidEnd + 1);

    // client-first-message-bare = [reserved-mext ","] username "," nonce ["," extensions]
    const parts = bare.split(",");
    if (parts[0]?.startsWith("m=")) {
      return { error: "client requires an unsupported SCRAM extension" };
    }
    if (expect(parts[0], "n") === undefined) {
      return { error: "malformed SCRAM message: expected user name" };
    }
    const clientNonce = expect(parts[1], "r");
    if (clientNonce === undefined || !NONCE_PATTERN.test(clientNonce)) {
      return { error: "malformed SCRAM message: expected nonce" };
    }
    for (const extension of parts.slice(2)) {
      if (attribute(extension) === undefined) {
        return { error: "malformed SCRAM message: invalid attribute" };
      }
    }

    this.#gs2Header = gs2Header;
    this.#clientFirstBare = bare;
    this.#nonce = clientNonce + this.#serverNonce;
    this.#serverFirst = `r=${this.#nonce},s=${
      encodeBase64(this.#secret.salt)
    },i=${this.#secret.iterations}`;
    this.#state = "final";
    return { serverFirst: this.#serverFirst };
  }

  /**
   * Handles client-final-message (the SASLResponse data) and checks the
   * client's proof.
   *
   * @param message The client's message.
   * @returns `serverFinal` to send in AuthenticationSASLFinal, or an error.
   */
  async handleClientFinal(message: string): Promise<ScramClientFinalResult> {
    if (this.#state !== "final") {
      this.#state = "done";
      return { ok: false, error: "unexpected SCRAM client-final-message" };
    }
    this.#state = "done";
    try {
      return await this.#verifyClientFinal(message);
    } catch (err) {
      return { ok: false, error: `SCRAM verification failed: ${String(err)}` };
    }
  }

  async #verifyClientFinal(message: string): Promise<ScramClientFinalResult> {
    // client-final-message = channel-binding "," nonce ["," extensions] "," proof
    const proofStart = message.lastIndexOf(",p=");
    if (proofStart < 0) return { ok: false, error: "malformed SCRAM message: expected proof" };
    const withoutProof = message.slice(0, proofStart);
    const proof = decodeBase64(message.slice(proofStart + 3));
    if (proof === undefined || proof.length !== KEY_LENGTH) {
      return { ok: false, error: "malformed SCRAM message: invalid proof" };
    }

    const parts = withoutProof.split(",");
    const binding = expect(parts[0], "c");
    if (binding === undefined) {
      return { ok: false, error: "malformed SCRAM message: expected channel binding" };
    }
    const bindingBytes = decodeBase64(binding);
    if (bindingBytes === undefined || !timingSafeEqual(bindingBytes, utf8Encode(this.#gs2Header))) {
      return { ok: false, error: "SCRAM channel binding check failed" };
    }
    const nonce = expect(parts[1], "r");
    if (nonce === undefined) return { ok: false, error: "malformed SCRAM message: expected nonce" };
    if (nonce !== this.#nonce) return { ok: false, error: "SCRAM nonce mismatch" };
    for (const extension of parts.slice(2)) {
      if (attribute(extension) === undefined) {
        return { ok: false, error: "malformed SCRAM message: invalid attribute" };
      }
    }

    const authMessage = utf8Encode(
      `${this.#clientFirstBare},${this.#serverFirst},${withoutProof}`,
    );
    const clientSignature = await hmacSha256(this.#secret.storedKey, authMessage);
    const clientKey = xorBytes(proof, clientSignature);
    if (!timingSafeEqual(await sha256(clientKey), this.#secret.storedKey)) {
      return { ok: false, error: `password authentication failed for user "${this.user}"` };
    }
    const serverSignature = await hmacSha256(this.#secret.serverKey, authMessage);
    return { ok: true, serverFinal: `v=${encodeBase64(serverSignature)}` };
  }
}

// ---------------------------------------------------------------------------
// Client side.
// ---------------------------------------------------------------------------

/** Options for {@link ScramClientSession}. */
export interface ScramClientSessionOptions {
  /** Client nonce (for tests); 18 random bytes in base64 by default. */
  nonce?: string;
  /**
   * User name to put in `n=`; empty by default, like libpq, since PostgreSQL
   * authenticates the user from the startup packet.
   */
  user?: string;
}

/**
 * One SCRAM-SHA-256 exchange with a PostgreSQL server, on the client side.
 *
 * Usage: on AuthenticationSASL listing {@link SCRAM_SHA_256}, send
 * SASLInitialResponse with {@link clientFirst}; on AuthenticationSASLContinue,
 * send SASLResponse with the result of {@link handleServerFirst}; on
 * AuthenticationSASLFinal, require {@link verifyServerFinal} to be `true`.
 *
 * The salted password is cached per (password, salt, iterations) for the
 * process, so reconnecting to the same server skips PBKDF2.
 */
export class ScramClientSession {
  readonly #password: string;
  readonly #nonce: string;
  readonly #clientFirstBare: string;
  #state: "first" | "server-first" | "server-final" | "done" = "first";
  #serverSignature: Uint8Array | undefined;
  #serverError: string | undefined;

  /**
   * Starts an exchange for one login attempt.
   *
   * @param password The plaintext password.
   * @param options Nonce and user name overrides.
   */
  constructor(password: string, options: ScramClientSessionOptions = {}) {
    const nonce = options.nonce ?? newNonce();
    if (!NONCE_PATTERN.test(nonce)) throw new TypeError("invalid SCRAM nonce");
    this.#password = password;
    this.#nonce = nonce;
    this.#clientFirstBare = `n=${saslName(options.user ?? "")},r=${nonce}`;
  }

  /** The `e=` error the server sent in place of server-final, if any. */
  get serverError(): string | undefined {
    return this.#serverError;
  }

  /**
   * Builds client-first-message (the SASLInitialResponse data).
   *
   * @returns `n,,n=,r=<nonce>`.
   */
  clientFirst(): string {
    if (this.#state === "first") this.#state = "server-first";
    return `n,,${this.#clientFirstBare}`;
  }

  /**
   * Handles server-first-message and builds client-final-message.
   *
   * @param message The AuthenticationSASLContinue data.
   * @returns The SASLResponse data, `c=biws,r=<nonce>,p=<proof>`.
   * @throws {Error} When the message is malformed, the nonce does not extend
   *   ours, or the salt or iteration count is invalid.
   */
  async handleServerFirst(message: string): Promise<string> {
    if (this.#state !== "server-first") {
      throw new Error("SCRAM: unexpected server-first-message");
    }
    this.#state = "done";

    // server-first-message = [reserved-mext ","] nonce "," salt "," iteration-count ["," extensions]
    const parts = message.split(",");
    if (parts[0]?.startsWith("m=")) {
      throw new Error("SCRAM: server requires an unsupported extension");
    }
    if (parts[0]?.startsWith("e=")) {
      throw new Error(`SCRAM: server error: ${parts[0].slice(2)}`);
    }
    const nonce = expect(parts[0], "r");
    if (nonce === undefined || !NONCE_PATTERN.test(nonce)) {
      throw new Error("SCRAM: malformed server-first-message: expected nonce");
    }
    if (!nonce.startsWith(this.#nonce) || nonce.length === this.#nonce.length) {
      throw new Error("SCRAM: server nonce does not extend the client nonce");
    }
    const saltText = expect(parts[1], "s");
    const salt = saltText === undefined ? undefined : decodeBase64(saltText);
    if (salt === undefined || salt.length === 0) {
      throw new Error("SCRAM: malformed server-first-message: invalid salt");
    }
    const iterationsText = expect(parts[2], "i");
    const iterations = iterationsText !== undefined && /^[0-9]{1,10}$/.test(iterationsText)
      ? Number(iterationsText)
      : NaN;
    if (!(iterations >= 1 && iterations <= MAX_ITERATIONS)) {
      throw new Error(
        `SCRAM: malformed server-first-message: invalid iteration count ${
          JSON.stringify(iterationsText ?? "")
        }`,
      );
    }

    const keys = await cachedClientKeys(this.#password, salt, iterations);
    const withoutProof = `c=biws,r=${nonce}`;
    const authMessage = utf8Encode(`${this.#clientFirstBare},${message},${withoutProof}`);
    const [clientSignature, serverSignature] = await Promise.all([
      hmacSha256(keys.storedKey, authMessage),
      hmacSha256(keys.serverKey, authMessage),
    ]);
    this.#serverSignature = serverSignature;
    this.#state = "server-final";
    return `${withoutProof},p=${encodeBase64(xorBytes(keys.clientKey, clientSignature))}`;
  }

  /**
   * Checks server-final-message, proving the server knew the password.
   *
   * @param message The AuthenticationSASLFinal data.
   * @returns `true` when the server signature is right; `false` when it is
   *   wrong, malformed, out of order, or the server sent `e=<error>` (see
   *   {@link serverError}).
   */
  verifyServerFinal(message: string): boolean {
    if (this.#state !== "server-final" || this.#serverSignature === undefined) return false;
    this.#state = "done";
    const first = message.split(",")[0];
    const error = expect(first, "e");
    if (error !== undefined) {
      this.#serverError = error;
      return false;
    }
    const verifier = expect(first, "v");
    const signature = verifier === undefined ? undefined : decodeBase64(verifier);
    return signature !== undefined && timingSafeEqual(signature, this.#serverSignature);
  }
}

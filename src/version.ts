/**
 * The package version, read from deno.json so there is one place to change it.
 *
 * @module
 */

import denoJson from "../deno.json" with { type: "json" };

/** pgdog's version. */
export const VERSION: string = denoJson.version;

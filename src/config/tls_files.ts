/**
 * The certificate and key files `[general]` names: read once at startup and checked, so a
 * missing, unreadable or wrong file is a configuration problem that names the file and the key,
 * not a failure at the first client's handshake.
 *
 * @module
 */

import { createPrivateKey, type KeyObject, X509Certificate } from "node:crypto";
import type { GeneralConfig } from "./types.ts";
import { errorMessage } from "../log.ts";
import { readErrorMessage } from "./read_grants.ts";

/** The `[general]` keys that name files. */
export type TlsFileKey = "tls_certificate" | "tls_private_key" | "tls_server_ca_certificate";

/** What the files hold, as PEM text. */
export interface TlsFiles {
  /** The certificate chain and key offered to clients; null when TLS is not offered. */
  acceptor: { cert: string; key: string } | null;
  /** CA certificates that servers' certificates are checked against, when configured. */
  serverCa?: string;
}

/** A file that cannot be used. */
export interface TlsFileProblem {
  /** The key that names it. */
  key: TlsFileKey;
  /** Why, naming the file. */
  message: string;
}

/** The outcome of {@linkcode readTlsFiles}: the contents unless there are problems. */
export interface TlsFilesResult {
  /** The contents; meaningful only when `problems` is empty. */
  files: TlsFiles;
  /** Every file that cannot be used. */
  problems: TlsFileProblem[];
}

const PEM_BLOCK = /-----BEGIN ([A-Z0-9 ]+)-----[\s\S]*?-----END \1-----/g;

/**
 * Reads and checks the files `general` names (relative paths are relative to the working
 * directory); pass `tls_server_ca_certificate` only when `tls_verify` uses it. Certificates must be PEM and parse; the key must be an unencrypted PEM private key
 * that belongs to the certificate. Reads only keys that are set, and the client pair only when
 * both halves are.
 */
export function readTlsFiles(
  general: Pick<GeneralConfig, "tls_certificate" | "tls_private_key" | "tls_server_ca_certificate">,
): TlsFilesResult {
  const problems: TlsFileProblem[] = [];
  const files: TlsFiles = { acceptor: null };
  const { tls_certificate: certPath, tls_private_key: keyPath } = general;
  if (certPath !== undefined && keyPath !== undefined) {
    const cert = readPem("tls_certificate", certPath, problems);
    const key = readPem("tls_private_key", keyPath, problems);
    const leaf = cert === null ? null : parseCertificates("tls_certificate", certPath, cert)[0];
    const keyObject = key === null ? null : parseKey(keyPath, key);
    if (leaf instanceof Error) problems.push({ key: "tls_certificate", message: leaf.message });
    if (keyObject instanceof Error) {
      problems.push({ key: "tls_private_key", message: keyObject.message });
    }
    if (leaf instanceof X509Certificate && keyObject !== null && !(keyObject instanceof Error)) {
      if (!keyMatches(leaf, keyObject)) {
        problems.push({
          key: "tls_private_key",
          message: `"${keyPath}" is not the private key of the certificate in "${certPath}"`,
        });
      }
    }
    if (cert !== null && key !== null) files.acceptor = { cert, key };
  }
  const caPath = general.tls_server_ca_certificate;
  if (caPath !== undefined) {
    const ca = readPem("tls_server_ca_certificate", caPath, problems);
    if (ca !== null) {
      const parsed = parseCertificates("tls_server_ca_certificate", caPath, ca);
      const bad = parsed.find((c) => c instanceof Error);
      if (bad) problems.push({ key: "tls_server_ca_certificate", message: bad.message });
      files.serverCa = ca;
    }
  }
  return { files, problems };
}

function readPem(key: TlsFileKey, path: string, problems: TlsFileProblem[]): string | null {
  try {
    return Deno.readTextFileSync(path);
  } catch (e) {
    const reason = readErrorMessage(e).replace(/ \(os error \d+\)/, "").replace(
      /: readfile '.*'$/,
      "",
    );
    problems.push({ key, message: `cannot read "${path}": ${reason}` });
    return null;
  }
}

/** Every certificate of a PEM file, or the reason it has none that parse. */
function parseCertificates(
  key: TlsFileKey,
  path: string,
  text: string,
): Array<X509Certificate | Error> {
  const blocks = [...text.matchAll(PEM_BLOCK)].filter((m) => m[1] === "CERTIFICATE");
  if (blocks.length === 0) {
    const what = /PRIVATE KEY-----/.test(text) ? " (it holds a private key)" : "";
    return [new Error(`"${path}" holds no PEM certificate${what}`)];
  }
  return blocks.map((block, i) => {
    try {
      return new X509Certificate(block[0]);
    } catch (e) {
      const which = blocks.length > 1 ? ` #${i + 1}` : "";
      const reason = errorMessage(e);
      return new Error(`"${path}": certificate${which} is invalid (${key}): ${reason}`);
    }
  });
}

function parseKey(path: string, text: string): KeyObject | Error | null {
  const block = [...text.matchAll(PEM_BLOCK)].find((m) => m[1].endsWith("PRIVATE KEY"));
  if (!block) {
    const what = /-----BEGIN CERTIFICATE-----/.test(text) ? " (it holds a certificate)" : "";
    return new Error(`"${path}" holds no PEM private key${what}`);
  }
  if (block[1] === "ENCRYPTED PRIVATE KEY" || /Proc-Type: 4,ENCRYPTED/.test(block[0])) {
    return new Error(`"${path}" holds an encrypted private key; pgdog needs it unencrypted`);
  }
  try {
    return createPrivateKey(block[0]);
  } catch (e) {
    return new Error(
      `"${path}": the private key is invalid: ${errorMessage(e)}`,
    );
  }
}

function keyMatches(cert: X509Certificate, key: KeyObject): boolean {
  try {
    return cert.checkPrivateKey(key);
  } catch {
    // A key type the check does not know: the handshake will tell.
    return true;
  }
}

// The emulator's rpcReqMatch oracle: evaluates a Constraint's `rpcReqMatch` map against one
// JSON-RPC message with a real JavaScript engine, as Smithery (a JavaScript service) would.
//
// It must not decide anything else (namespaces, operations, metadata, attenuation): rpc_oracle.py
// starts it and scope.py combines its answers. It keeps no state between requests and caches
// nothing, so every answer is JavaScript's own.
//
// Protocol: newline-delimited JSON on stdin/stdout, one answer per request, in order.
//   request:  {"id": <int>, "rules": {"<dot.path>": "<pattern>", ...}, "body": "<raw JSON text>"}
//   answer:   {"id": <int>, "ok": true|false}
//             {"id": <int>, "ok": false, "error": "<why>"}   pattern or body unusable: no match
//             {"id": <int|null>, "error": "<why>"}             the request itself is malformed
// `body` is the message exactly as the client sent it: JSON.parse here, not in Python, so
// numbers, duplicate keys and escapes read as they would in Smithery.
//
// Semantics (reference/SMITHERY-SEMANTICS.md, "rpcReqMatch"):
//   - every entry must match (AND); an empty map matches;
//   - a path is dot-separated keys; an all-digit segment indexes an array; a missing path, or a
//     path through a non-container, does not match (OPEN);
//   - objects and arrays never match; numbers, booleans and null match as String(value) (OPEN);
//   - a match is new RegExp(pattern).test(String(value)), a search without flags (INF);
//   - an invalid pattern does not match.

import { createInterface } from "node:readline";

// A canonical array index only: a dot-path getter reads array["01"] as a property, which no
// array has (the broker's rpcmatch reads it so too).
const ARRAY_INDEX = /^(?:0|[1-9][0-9]*)$/;

function lookup(message, path) {
  let current = message;
  for (const segment of path.split(".")) {
    if (Array.isArray(current)) {
      if (!ARRAY_INDEX.test(segment)) return undefined;
      current = current[Number(segment)];
    } else if (current !== null && typeof current === "object") {
      // Own properties only: "constructor" or "__proto__" must not reach Object.prototype.
      if (!Object.hasOwn(current, segment)) return undefined;
      current = current[segment];
    } else {
      return undefined;
    }
  }
  return current;
}

function asText(value) {
  if (value === undefined) return undefined;
  if (value !== null && typeof value === "object") return undefined;
  return String(value);
}

function evaluate(rules, body) {
  let message;
  try {
    message = JSON.parse(body);
  } catch (error) {
    return { ok: false, error: `body is not JSON: ${error.message}` };
  }
  for (const [path, pattern] of Object.entries(rules)) {
    const text = asText(lookup(message, path));
    if (text === undefined) return { ok: false };
    let regex;
    try {
      regex = new RegExp(pattern);
    } catch (error) {
      return { ok: false, error: `invalid pattern for ${JSON.stringify(path)}: ${error.message}` };
    }
    if (!regex.test(text)) return { ok: false };
  }
  return { ok: true };
}

function isStringMap(value) {
  return (
    value !== null &&
    typeof value === "object" &&
    !Array.isArray(value) &&
    Object.values(value).every((pattern) => typeof pattern === "string")
  );
}

function answer(line) {
  let request;
  try {
    request = JSON.parse(line);
  } catch (error) {
    return { id: null, error: `request is not JSON: ${error.message}` };
  }
  const id = Number.isInteger(request?.id) ? request.id : null;
  if (id === null || !isStringMap(request.rules) || typeof request.body !== "string") {
    return { id, error: 'expected {"id": int, "rules": {path: pattern}, "body": string}' };
  }
  return { id, ...evaluate(request.rules, request.body) };
}

const lines = createInterface({ input: process.stdin, crlfDelay: Infinity });
for await (const line of lines) {
  if (line.trim() === "") continue;
  process.stdout.write(`${JSON.stringify(answer(line))}\n`);
}

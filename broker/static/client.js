// The token broker's browser client: one dependency-free ES module, served by the broker at
// /v1/client.js (types: /v1/client.d.ts).
//
// It turns the app user's JWT into a Smithery service token (POST /v1/tokens) and keeps that
// token fresh in memory only: never localStorage, sessionStorage, cookies or IndexedDB, where
// any script on the origin (or a browser extension) could read it long after sign-out.
// It also wraps the guarded MCP proxy (POST /v1/mcp/{namespace}/{connectionId}) and the
// connections API (/v1/connections/{namespace}[/{connectionId}]); both authenticate with the
// user's JWT, not with the service token.
//
// Time, randomness, sleeping and fetch are injectable so the refresh and retry logic can be
// tested with a fake clock.

export const DEFAULT_MCP_PROTOCOL_VERSION = "2025-11-25";
export const DENIED_RPC_CODE = -32003;

const DEFAULTS = Object.freeze({
  refreshMarginSeconds: 30,
  maxRetries: 3,
  retryBaseDelayMs: 250,
  retryMaxDelayMs: 4000,
  maxRetryAfterSeconds: 30,
});
const RETRYABLE_STATUSES = new Set([503, 504]);

// ----- errors -----------------------------------------------------------------------------------

/** Any failure talking to the broker. `status` is the HTTP status (0: no response). */
export class BrokerError extends Error {
  constructor(message, { status = 0, code = "broker_error", detail, problem, cause } = {}) {
    super(message, cause === undefined ? undefined : { cause });
    this.name = new.target.name;
    this.status = status;
    this.code = code;
    this.detail = detail;
    this.problem = problem;
  }
}

/** 401: the app user's JWT was missing, expired or not accepted. Sign the user in again. */
export class BrokerAuthError extends BrokerError {}

/** 403: the user is authenticated but no policy lets them do this (`code`, e.g. no_matching_rule). */
export class BrokerForbiddenError extends BrokerError {}

/** 404: not found, or not the caller's (another user's connection looks exactly like this). */
export class BrokerNotFoundError extends BrokerError {}

/** 429: over the per-user rate limit; `retryAfterSeconds` says when to try again. */
export class BrokerRateLimitedError extends BrokerError {
  constructor(message, options = {}) {
    super(message, options);
    this.retryAfterSeconds = options.retryAfterSeconds ?? null;
  }
}

/** 502/503/504 or a network failure, after the retries the request was allowed. */
export class BrokerUnavailableError extends BrokerError {}

/** The policy denied an MCP message: `reasons` lists, per rule, why it did not allow it. */
export class BrokerDeniedError extends BrokerError {
  constructor(message, options = {}) {
    super(message, { code: "request_denied", ...options });
    this.reasons = options.reasons ?? [];
    this.rpcError = options.rpcError;
  }
}

/** A JSON-RPC error answered by the MCP server (other than a policy denial). */
export class McpRpcError extends BrokerError {
  constructor(message, options = {}) {
    super(message, { code: "rpc_error", ...options });
    this.rpcCode = options.rpcCode;
    this.data = options.data;
  }
}

// ----- the client -------------------------------------------------------------------------------

/**
 * Create a client for one signed-in user. Call `clear()` when that user signs out.
 *
 * @param {import("./client.d.ts").BrokerClientOptions} options
 * @returns {import("./client.d.ts").BrokerClient}
 */
export function createBrokerClient(options) {
  if (!options || typeof options.getUserToken !== "function") {
    throw new TypeError("createBrokerClient: getUserToken (a function returning the user's JWT) is required");
  }
  const baseUrl = String(options.baseUrl ?? "").replace(/\/+$/, "");
  const getUserToken = options.getUserToken;
  const fetchImpl = options.fetch ?? ((input, init) => globalThis.fetch(input, init));
  const now = options.now ?? (() => Date.now());
  const sleep = options.sleep ?? ((ms) => new Promise((resolve) => setTimeout(resolve, ms)));
  const random = options.random ?? Math.random;
  const refreshMarginMs = 1000 * (options.refreshMarginSeconds ?? DEFAULTS.refreshMarginSeconds);
  const maxRetries = options.maxRetries ?? DEFAULTS.maxRetries;
  const retryBaseDelayMs = options.retryBaseDelayMs ?? DEFAULTS.retryBaseDelayMs;
  const retryMaxDelayMs = options.retryMaxDelayMs ?? DEFAULTS.retryMaxDelayMs;
  const maxRetryAfterMs = 1000 * (options.maxRetryAfterSeconds ?? DEFAULTS.maxRetryAfterSeconds);
  const protocolVersion = options.mcpProtocolVersion ?? DEFAULT_MCP_PROTOCOL_VERSION;

  let cached = null; // {info, refreshAt, expiresAtLocal}
  let inflight = null;
  let generation = 0; // bumped by clear(): a refresh started before it is never cached
  let rpcId = 0;

  async function userAuthorization() {
    const jwt = await getUserToken();
    if (typeof jwt !== "string" || jwt === "") {
      throw new BrokerAuthError("No user token: getUserToken() returned nothing", {
        status: 401,
        code: "missing_user_token",
      });
    }
    return `Bearer ${jwt}`;
  }

  // Responses that came after at least one attempt was retried (see `json`).
  const retried = new WeakSet();

  // One HTTP exchange with the broker, retried on 503/504 and network errors when `retry`.
  async function send(method, path, { body, headers = {}, retry = true, signal } = {}) {
    const init = {
      method,
      headers: { Accept: "application/json", ...headers },
      cache: "no-store",
      credentials: "omit", // bearer tokens only: no cookies cross origins
      signal,
    };
    if (body !== undefined) {
      init.body = typeof body === "string" ? body : JSON.stringify(body);
      init.headers["Content-Type"] = "application/json";
    }
    for (let attempt = 0; ; attempt += 1) {
      // Asked again per attempt: the identity SDK may have renewed the JWT meanwhile.
      const authorization = await userAuthorization();
      let response;
      try {
        response = await fetchImpl(baseUrl + path, { ...init, headers: { ...init.headers, Authorization: authorization } });
      } catch (error) {
        if (error?.name === "AbortError" || signal?.aborted) throw error;
        if (!retry || attempt >= maxRetries) {
          throw new BrokerUnavailableError(`Broker unreachable: ${method} ${path}`, {
            status: 0,
            code: "network_error",
            cause: error,
          });
        }
        await pause(backoffMs(attempt), signal);
        continue;
      }
      if (retry && RETRYABLE_STATUSES.has(response.status) && attempt < maxRetries) {
        const waitMs = retryDelayMs(response, attempt);
        if (waitMs !== null) {
          await discard(response);
          await pause(waitMs, signal);
          continue;
        }
      }
      if (attempt > 0) retried.add(response);
      return response;
    }
  }

  // A backoff wait that an aborted `signal` ends at once, rejecting with the signal's reason
  // (as fetch does), so an abandoned call neither waits out its backoff nor sends again.
  async function pause(ms, signal) {
    if (!signal) return sleep(ms);
    signal.throwIfAborted();
    let onAbort;
    const aborted = new Promise((_, reject) => {
      onAbort = () => reject(signal.reason);
      signal.addEventListener("abort", onAbort, { once: true });
    });
    try {
      await Promise.race([sleep(ms), aborted]);
    } finally {
      signal.removeEventListener("abort", onAbort);
    }
  }

  // Equal jitter (a random delay between half and all of the exponential bound), so many
  // clients that failed together do not come back together.
  function backoffMs(attempt) {
    const bound = Math.min(retryMaxDelayMs, retryBaseDelayMs * 2 ** attempt);
    return Math.round(bound * (0.5 + random() / 2));
  }

  // At least the server's Retry-After (a zero one still backs off); null: too long to wait.
  function retryDelayMs(response, attempt) {
    const after = parseRetryAfterMs(response.headers.get("retry-after"), now());
    if (after !== null && after > maxRetryAfterMs) return null;
    return Math.max(after ?? 0, backoffMs(attempt));
  }

  async function fetchServiceToken() {
    const requestedAt = now();
    const response = await send("POST", "/v1/tokens");
    if (!response.ok) throw await errorFrom(response, now());
    const info = await response.json();
    if (typeof info?.token !== "string" || typeof info?.expiresAt !== "string") {
      throw new BrokerError("Malformed token response", { status: response.status, code: "malformed_response" });
    }
    const expiresAtMs = Date.parse(info.expiresAt);
    if (!Number.isFinite(expiresAtMs)) {
      throw new BrokerError("Malformed expiresAt in token response", { status: response.status, code: "malformed_response" });
    }
    // expiresAt is on the server's clock. When the Date header is readable (same origin, or
    // exposed by CORS) the remaining life is measured against it, so a wrong local clock cannot
    // make the client hold an expired token; otherwise the local clock is trusted.
    const serverNow = Date.parse(response.headers.get("date") ?? "");
    const receivedAt = now();
    const remainingMs = expiresAtMs - (Number.isFinite(serverNow) ? serverNow : receivedAt);
    const expiresAtLocal = receivedAt + remainingMs;
    // A token whose whole life is shorter than the margin is refreshed half-way instead of on
    // every call.
    const lifetimeMs = Math.max(0, expiresAtLocal - requestedAt);
    const refreshAt = expiresAtLocal - Math.min(refreshMarginMs, lifetimeMs / 2);
    return {
      info: Object.freeze({
        token: info.token,
        expiresAt: info.expiresAt,
        rules: Array.isArray(info.rules) ? [...info.rules] : [],
        policyRevision: info.policyRevision,
      }),
      refreshAt,
      expiresAtLocal,
    };
  }

  function refresh() {
    if (inflight) return inflight;
    const started = generation;
    const previous = cached;
    inflight = (async () => {
      try {
        const fresh = await fetchServiceToken();
        if (started === generation) cached = fresh;
        return fresh.info;
      } catch (error) {
        if (error instanceof BrokerAuthError || error instanceof BrokerForbiddenError) {
          // The user's rights are gone or changed: never keep serving the old token.
          if (started === generation) cached = null;
          throw error;
        }
        // A refresh ahead of expiry that failed for a transient reason: the current token is
        // still valid, so callers keep working with it.
        if (started === generation && previous && previous === cached && now() < previous.expiresAtLocal) {
          // Callers in the next few seconds get it at once instead of waiting out retries again.
          previous.refreshAt = Math.min(previous.expiresAtLocal, now() + retryMaxDelayMs);
          return previous.info;
        }
        throw error;
      } finally {
        inflight = null;
      }
    })();
    return inflight;
  }

  async function getTokenInfo({ forceRefresh = false } = {}) {
    if (!forceRefresh && cached && now() < cached.refreshAt) return cached.info;
    if (forceRefresh && inflight === null) cached = null;
    return refresh();
  }

  async function rpc(namespace, connectionId, method, params, { signal, retry = false } = {}) {
    rpcId += 1;
    const id = rpcId;
    const message = { jsonrpc: "2.0", id, method, params };
    const response = await send("POST", `/v1/mcp/${segment(namespace)}/${segment(connectionId)}`, {
      body: message,
      headers: {
        Accept: "application/json, text/event-stream",
        "MCP-Protocol-Version": protocolVersion,
      },
      retry,
      signal,
    });
    let answer;
    if (response.ok) {
      answer = await readRpcResponse(response, id);
    } else {
      // The MCP server may refuse a message with an HTTP error carrying a JSON-RPC error (400
      // for invalid params, say); the broker's own errors are problem details.
      const type = (response.headers.get("content-type") ?? "").toLowerCase();
      if (!type.startsWith("application/json")) throw await errorFrom(response, now());
      const body = await response.json().catch(() => undefined);
      const messages = Array.isArray(body) ? body : [body];
      // An error with a null id is about the HTTP request itself (Smithery refusing the
      // broker's service token, say): an McpRpcError, never the app's sign-in failing.
      answer = messages.find((m) => isRpcAnswer(m, id) && m.error) ?? messages.find((m) => isRpcAnswer(m, null) && m.error);
      if (!answer) throw problemError(response, body, now());
    }
    if (answer.error) {
      const { code, message: text, data } = answer.error;
      if (code === DENIED_RPC_CODE) {
        throw new BrokerDeniedError(text || "Denied by policy", {
          status: response.status,
          reasons: Array.isArray(data?.reasons) ? data.reasons : [],
          rpcError: answer.error,
        });
      }
      throw new McpRpcError(text || "JSON-RPC error", { status: response.status, rpcCode: code, data });
    }
    return answer.result;
  }

  async function json(method, path, body) {
    const response = await send(method, path, { body });
    // A DELETE sent again after a lost answer or a 504 may find its own work done: the first
    // one deleted the connection. That 404 is the success the first answer would have been.
    if (method === "DELETE" && response.status === 404 && retried.has(response)) {
      await discard(response);
      return { success: true };
    }
    if (!response.ok) throw await errorFrom(response, now());
    return response.json();
  }

  return Object.freeze({
    /** The service token (a string), from memory while fresh, otherwise from POST /v1/tokens. */
    async getToken(opts) {
      return (await getTokenInfo(opts)).token;
    },
    /** The service token with its expiry, the policy rules it carries and the policy revision. */
    getTokenInfo,
    /** Forget the cached service token (call on sign-out or when the user changes). */
    clear() {
      generation += 1;
      cached = null;
      inflight = null;
    },
    /** tools/call through the guarded proxy. Never retried: a tool call may not be idempotent. */
    async callTool(namespace, connectionId, name, args = {}, opts = {}) {
      return rpc(namespace, connectionId, "tools/call", { name, arguments: args }, { signal: opts.signal });
    },
    /** tools/list through the guarded proxy (read-only, so retried like the other reads). */
    async listTools(namespace, connectionId, opts = {}) {
      const params = opts.cursor === undefined ? {} : { cursor: opts.cursor };
      return rpc(namespace, connectionId, "tools/list", params, { signal: opts.signal, retry: true });
    },
    async listConnections(namespace, { cursor, limit } = {}) {
      const query = new URLSearchParams();
      if (cursor !== undefined) query.set("cursor", cursor);
      if (limit !== undefined) query.set("limit", String(limit));
      const suffix = query.toString() ? `?${query}` : "";
      return json("GET", `/v1/connections/${segment(namespace)}${suffix}`);
    },
    async getConnection(namespace, connectionId) {
      return json("GET", `/v1/connections/${segment(namespace)}/${segment(connectionId)}`);
    },
    /** Create or update one of the user's connections; the broker writes the policy's metadata. */
    async putConnection(namespace, connectionId, connection) {
      return json("PUT", `/v1/connections/${segment(namespace)}/${segment(connectionId)}`, connection);
    },
    async deleteConnection(namespace, connectionId) {
      return json("DELETE", `/v1/connections/${segment(namespace)}/${segment(connectionId)}`);
    },
  });
}

// ----- helpers (exported for tests and for apps with their own transport) ----------------------

function segment(value) {
  if (typeof value !== "string" || value === "") throw new TypeError("namespace and connectionId must be non-empty strings");
  return encodeURIComponent(value);
}

async function discard(response) {
  try {
    await response.body?.cancel();
  } catch {
    // nothing to release
  }
}

/** `Retry-After` (RFC 9110 10.2.3): delay-seconds or an HTTP-date → milliseconds, or null. */
export function parseRetryAfterMs(value, nowMs) {
  if (value === null || value === undefined) return null;
  const text = String(value).trim();
  if (/^\d+$/.test(text)) return Number(text) * 1000;
  const date = Date.parse(text);
  return Number.isFinite(date) ? Math.max(0, date - nowMs) : null;
}

function isRpcAnswer(message, id) {
  return Boolean(message) && typeof message === "object" && message.id === id && ("result" in message || "error" in message);
}

/** An error response (RFC 9457 problem details when the broker sent them) → a typed error. */
export async function errorFrom(response, nowMs = Date.now()) {
  let problem;
  try {
    const type = response.headers.get("content-type") ?? "";
    if (type.includes("json")) problem = await response.json();
    else await discard(response);
  } catch {
    problem = undefined;
  }
  return problemError(response, problem, nowMs);
}

function problemError(response, body, nowMs) {
  const problem = body && typeof body === "object" && !Array.isArray(body) ? body : undefined;
  const status = response.status;
  const code = typeof problem?.code === "string" ? problem.code : `http_${status}`;
  const detail = typeof problem?.detail === "string" ? problem.detail : undefined;
  const message = `${problem?.title ?? `HTTP ${status}`}${detail ? `: ${detail}` : ""}`;
  const options = { status, code, detail, problem };
  if (code === "request_denied") return new BrokerDeniedError(message, { ...options, reasons: problem?.reasons ?? [] });
  if (status === 401) return new BrokerAuthError(message, options);
  if (status === 403) return new BrokerForbiddenError(message, options);
  if (status === 404) return new BrokerNotFoundError(message, options);
  if (status === 429) {
    const after = parseRetryAfterMs(response.headers.get("retry-after"), nowMs);
    return new BrokerRateLimitedError(message, { ...options, retryAfterSeconds: after === null ? null : Math.ceil(after / 1000) });
  }
  if (status === 502 || status === 503 || status === 504) return new BrokerUnavailableError(message, options);
  return new BrokerError(message, options);
}

/**
 * Server-sent events (the HTML standard's parsing rules): yields `{event, data, id}` per event.
 * `chunks` is an async iterable of strings.
 */
export async function* parseSse(chunks) {
  let buffer = "";
  let data = [];
  let event = "";
  let lastId = "";
  let pendingCr = false;
  const dispatch = function* () {
    if (data.length) yield { event: event || "message", data: data.join("\n"), id: lastId };
    data = [];
    event = "";
  };
  const line = function* (text) {
    if (text === "") {
      yield* dispatch();
      return;
    }
    if (text.startsWith(":")) return;
    const colon = text.indexOf(":");
    const field = colon === -1 ? text : text.slice(0, colon);
    let value = colon === -1 ? "" : text.slice(colon + 1);
    if (value.startsWith(" ")) value = value.slice(1);
    if (field === "data") data.push(value);
    else if (field === "event") event = value;
    else if (field === "id" && !value.includes("\0")) lastId = value;
  };
  for await (const chunk of chunks) {
    buffer += chunk;
    let start = 0;
    for (let i = 0; i < buffer.length; i += 1) {
      const c = buffer[i];
      if (c === "\n" && pendingCr) {
        pendingCr = false;
        start = i + 1;
        continue;
      }
      pendingCr = false;
      if (c === "\r" || c === "\n") {
        yield* line(buffer.slice(start, i));
        pendingCr = c === "\r";
        start = i + 1;
      }
    }
    buffer = buffer.slice(start);
  }
  // A stream that ends without a final blank line: the incomplete event is dropped (the standard).
}

async function* textChunks(response) {
  const decoder = new TextDecoder();
  if (!response.body?.getReader) {
    yield await response.text();
    return;
  }
  const reader = response.body.getReader();
  try {
    for (;;) {
      const { done, value } = await reader.read();
      if (done) break;
      yield decoder.decode(value, { stream: true });
    }
    const rest = decoder.decode();
    if (rest) yield rest;
  } finally {
    reader.releaseLock();
  }
}

/**
 * The JSON-RPC response with `id` from an MCP answer: `application/json` (one message or a batch)
 * or `text/event-stream` (server messages until the response; the stream is closed after it).
 */
export async function readRpcResponse(response, id) {
  const type = (response.headers.get("content-type") ?? "").toLowerCase();
  const isAnswer = (message) => isRpcAnswer(message, id);
  if (type.startsWith("text/event-stream")) {
    const chunks = textChunks(response);
    try {
      for await (const { event, data } of parseSse(chunks)) {
        if (event !== "message" || data === "") continue;
        let message;
        try {
          message = JSON.parse(data);
        } catch {
          continue; // not a JSON-RPC message (a keep-alive or a server quirk)
        }
        if (isAnswer(message)) return message;
      }
    } finally {
      await chunks.return?.();
      await discard(response);
    }
    throw new BrokerError("The MCP stream ended without a response", { status: response.status, code: "no_rpc_response" });
  }
  if (type.includes("json")) {
    const body = await response.json();
    const found = (Array.isArray(body) ? body : [body]).find(isAnswer);
    if (found) return found;
    throw new BrokerError("No JSON-RPC response with the request's id", { status: response.status, code: "no_rpc_response" });
  }
  await discard(response);
  throw new BrokerError(`Unexpected MCP response type ${type || "(none)"}`, { status: response.status, code: "unexpected_content_type" });
}

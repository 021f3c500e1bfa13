// Unit tests of the browser client (broker/static/client.js) under node, with a fake clock,
// a fake fetch and a sleep that only advances the fake clock: nothing here waits for real time.
// Run: node --test tests/client/ (tests/test_client_js.py runs them under pytest).

import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { beforeEach, describe, test } from "node:test";

import {
  BrokerAuthError,
  BrokerDeniedError,
  BrokerError,
  BrokerForbiddenError,
  BrokerNotFoundError,
  BrokerRateLimitedError,
  BrokerUnavailableError,
  DEFAULT_MCP_PROTOCOL_VERSION,
  McpRpcError,
  createBrokerClient,
  parseRetryAfterMs,
  parseSse,
} from "../../broker/static/client.js";

const BASE = "https://broker.example.com";
const START = Date.parse("2026-11-21T10:00:00.000Z");
const JWT = "user-jwt";

// ----- fakes ------------------------------------------------------------------------------------

function fakeClock() {
  const clock = { t: START, sleeps: [] };
  clock.now = () => clock.t;
  clock.sleep = async (ms) => {
    clock.sleeps.push(ms);
    clock.t += ms;
  };
  return clock;
}

function json(status, body, headers = {}) {
  return new Response(JSON.stringify(body), {
    status,
    headers: { "content-type": "application/json", ...headers },
  });
}

function problem(status, code, extra = {}, headers = {}) {
  return new Response(JSON.stringify({ type: `urn:token-broker:problem:${code}`, title: code, status, code, ...extra }), {
    status,
    headers: { "content-type": "application/problem+json", ...headers },
  });
}

function tokenResponse(clock, { lifetimeSeconds = 600, token = "svc-1", headers = {} } = {}) {
  return json(
    200,
    {
      token,
      expiresAt: new Date(clock.t + lifetimeSeconds * 1000).toISOString(),
      rules: ["own-connections"],
      policyRevision: "rev1",
    },
    headers,
  );
}

/** A fetch that answers from `handler(call)` and records every call. */
function fakeFetch(handler) {
  const calls = [];
  const fetch = async (url, init) => {
    const call = { url, init, body: init.body === undefined ? undefined : JSON.parse(init.body) };
    calls.push(call);
    return handler(call, calls.length);
  };
  return { fetch, calls };
}

function client(clock, fetch, extra = {}) {
  return createBrokerClient({
    baseUrl: `${BASE}/`,
    getUserToken: () => JWT,
    fetch,
    now: clock.now,
    sleep: clock.sleep,
    random: () => 0.5,
    ...extra,
  });
}

function sseResponse(chunks, status = 200) {
  const encoder = new TextEncoder();
  const stream = new ReadableStream({
    start(controller) {
      for (const chunk of chunks) controller.enqueue(encoder.encode(chunk));
      controller.close();
    },
  });
  return new Response(stream, { status, headers: { "content-type": "text/event-stream" } });
}

async function collect(iterable) {
  const out = [];
  for await (const item of iterable) out.push(item);
  return out;
}

async function* strings(...chunks) {
  yield* chunks;
}

// Service tokens must never reach web storage: any access to it fails the test.
const forbiddenStorage = new Proxy(
  {},
  {
    get() {
      throw new Error("web storage must not be used");
    },
  },
);
globalThis.localStorage = forbiddenStorage;
globalThis.sessionStorage = forbiddenStorage;

let clock;
beforeEach(() => {
  clock = fakeClock();
});

// ----- token cache and refresh -----------------------------------------------------------------

describe("getToken", () => {
  test("50 concurrent callers share one refresh", async () => {
    let release;
    const gate = new Promise((resolve) => {
      release = resolve;
    });
    const { fetch, calls } = fakeFetch(async () => {
      await gate;
      return tokenResponse(clock);
    });
    const broker = client(clock, fetch);
    const pending = Array.from({ length: 50 }, () => broker.getToken());
    await Promise.resolve();
    release();
    const tokens = await Promise.all(pending);
    assert.equal(calls.length, 1);
    assert.deepEqual(new Set(tokens), new Set(["svc-1"]));
    assert.equal(await broker.getToken(), "svc-1");
    assert.equal(calls.length, 1, "a fresh cached token needs no request");
  });

  test("sends the user's JWT to POST /v1/tokens and no cookies", async () => {
    const { fetch, calls } = fakeFetch(() => tokenResponse(clock));
    await client(clock, fetch).getToken();
    assert.equal(calls[0].url, `${BASE}/v1/tokens`);
    assert.equal(calls[0].init.method, "POST");
    assert.equal(calls[0].init.headers.Authorization, `Bearer ${JWT}`);
    assert.equal(calls[0].init.credentials, "omit");
  });

  test("the user's JWT is asked for again on each retry", async () => {
    let n = 0;
    const { fetch, calls } = fakeFetch((call, i) => (i === 1 ? problem(503, "upstream_unavailable") : tokenResponse(clock)));
    await client(clock, fetch, { getUserToken: () => `jwt-${(n += 1)}` }).getToken();
    assert.deepEqual(calls.map((c) => c.init.headers.Authorization), ["Bearer jwt-1", "Bearer jwt-2"]);
  });

  test("async getUserToken is awaited", async () => {
    const { fetch, calls } = fakeFetch(() => tokenResponse(clock));
    await client(clock, fetch, { getUserToken: async () => "async-jwt" }).getToken();
    assert.equal(calls[0].init.headers.Authorization, "Bearer async-jwt");
  });

  test("refreshes once the margin before expiry is reached, not earlier", async () => {
    let n = 0;
    const { fetch, calls } = fakeFetch(() => {
      n += 1;
      return tokenResponse(clock, { token: `svc-${n}`, lifetimeSeconds: 600 });
    });
    const broker = client(clock, fetch, { refreshMarginSeconds: 30 });
    assert.equal(await broker.getToken(), "svc-1");
    clock.t = START + 570_000 - 1;
    assert.equal(await broker.getToken(), "svc-1");
    assert.equal(calls.length, 1);
    clock.t = START + 570_000;
    assert.equal(await broker.getToken(), "svc-2");
    assert.equal(calls.length, 2);
  });

  test("a token shorter-lived than twice the margin is refreshed half-way", async () => {
    let n = 0;
    const { fetch, calls } = fakeFetch(() => {
      n += 1;
      return tokenResponse(clock, { token: `svc-${n}`, lifetimeSeconds: 40 });
    });
    const broker = client(clock, fetch, { refreshMarginSeconds: 30 });
    await broker.getToken();
    clock.t = START + 19_999;
    assert.equal(await broker.getToken(), "svc-1");
    clock.t = START + 20_000;
    assert.equal(await broker.getToken(), "svc-2");
    assert.equal(calls.length, 2);
  });

  test("expiry is measured on the server's clock when its Date header is readable", async () => {
    // The server's clock is an hour ahead of this browser's.
    const serverNow = START + 3_600_000;
    const { fetch, calls } = fakeFetch(() =>
      json(
        200,
        { token: "svc", expiresAt: new Date(serverNow + 600_000).toISOString(), rules: [], policyRevision: "r" },
        { date: new Date(serverNow).toUTCString() },
      ),
    );
    const broker = client(clock, fetch, { refreshMarginSeconds: 30 });
    await broker.getToken();
    clock.t = START + 569_000;
    await broker.getToken();
    assert.equal(calls.length, 1);
    clock.t = START + 570_000;
    await broker.getToken();
    assert.equal(calls.length, 2);
  });

  test("getTokenInfo returns expiry, rules and policy revision", async () => {
    const { fetch } = fakeFetch(() => tokenResponse(clock));
    const info = await client(clock, fetch).getTokenInfo();
    assert.deepEqual(info.rules, ["own-connections"]);
    assert.equal(info.policyRevision, "rev1");
    assert.equal(Date.parse(info.expiresAt), START + 600_000);
    assert.ok(Object.isFrozen(info));
  });

  test("forceRefresh fetches a new token even when the cached one is fresh", async () => {
    let n = 0;
    const { fetch, calls } = fakeFetch(() => {
      n += 1;
      return tokenResponse(clock, { token: `svc-${n}` });
    });
    const broker = client(clock, fetch);
    await broker.getToken();
    assert.equal(await broker.getToken({ forceRefresh: true }), "svc-2");
    assert.equal(calls.length, 2);
  });

  test("clear() during a refresh: its result is not cached for the next user", async () => {
    let release;
    const gate = new Promise((resolve) => {
      release = resolve;
    });
    let n = 0;
    const { fetch, calls } = fakeFetch(async () => {
      n += 1;
      if (n === 1) await gate;
      return tokenResponse(clock, { token: `svc-${n}` });
    });
    const broker = client(clock, fetch);
    const first = broker.getToken();
    broker.clear();
    release();
    assert.equal(await first, "svc-1");
    assert.equal(await broker.getToken(), "svc-2");
    assert.equal(calls.length, 2);
  });

  test("no user token: BrokerAuthError without calling the broker", async () => {
    const { fetch, calls } = fakeFetch(() => tokenResponse(clock));
    const broker = client(clock, fetch, { getUserToken: () => null });
    await assert.rejects(broker.getToken(), (error) => error instanceof BrokerAuthError && error.code === "missing_user_token");
    assert.equal(calls.length, 0);
  });

  test("a malformed token response is an error, not a cached token", async () => {
    const { fetch } = fakeFetch(() => json(200, { token: "x", expiresAt: "soon" }));
    await assert.rejects(client(clock, fetch).getToken(), (error) => error instanceof BrokerError && error.code === "malformed_response");
  });
});

// ----- retries ----------------------------------------------------------------------------------

describe("retries", () => {
  test("503 with Retry-After: waits exactly that long, then succeeds", async () => {
    const { fetch, calls } = fakeFetch((call, n) =>
      n === 1 ? problem(503, "upstream_unavailable", {}, { "retry-after": "2" }) : tokenResponse(clock),
    );
    assert.equal(await client(clock, fetch).getToken(), "svc-1");
    assert.equal(calls.length, 2);
    assert.deepEqual(clock.sleeps, [2000]);
  });

  test("Retry-After: 0 still backs off", async () => {
    const { fetch } = fakeFetch((call, n) => (n === 1 ? problem(503, "upstream_unavailable", {}, { "retry-after": "0" }) : tokenResponse(clock)));
    await client(clock, fetch, { retryBaseDelayMs: 200, random: () => 0 }).getToken();
    assert.deepEqual(clock.sleeps, [100]);
  });

  test("Retry-After as an HTTP-date is honoured", async () => {
    const { fetch } = fakeFetch((call, n) =>
      n === 1
        ? problem(503, "upstream_unavailable", {}, { "retry-after": new Date(START + 5000).toUTCString() })
        : tokenResponse(clock),
    );
    await client(clock, fetch).getToken();
    assert.deepEqual(clock.sleeps, [5000]);
  });

  test("503/504 without Retry-After: jittered exponential backoff, bounded", async () => {
    const { fetch, calls } = fakeFetch((call, n) => (n <= 3 ? problem(n % 2 ? 503 : 504, "upstream_timeout") : tokenResponse(clock)));
    const broker = client(clock, fetch, { retryBaseDelayMs: 100, retryMaxDelayMs: 300, random: () => 0 });
    assert.equal(await broker.getToken(), "svc-1");
    assert.equal(calls.length, 4);
    // random() = 0 gives half of each bound: 100, 200, then the 300 cap.
    assert.deepEqual(clock.sleeps, [50, 100, 150]);
  });

  test("jitter stays within the bound", async () => {
    const { fetch } = fakeFetch((call, n) => (n === 1 ? problem(503, "upstream_unavailable") : tokenResponse(clock)));
    await client(clock, fetch, { retryBaseDelayMs: 1000, random: () => 0.999999 }).getToken();
    assert.ok(clock.sleeps[0] <= 1000 && clock.sleeps[0] >= 500, String(clock.sleeps));
  });

  test("gives up after maxRetries with BrokerUnavailableError", async () => {
    const { fetch, calls } = fakeFetch(() => problem(503, "upstream_unavailable"));
    await assert.rejects(
      client(clock, fetch, { maxRetries: 2 }).getToken(),
      (error) => error instanceof BrokerUnavailableError && error.status === 503 && error.code === "upstream_unavailable",
    );
    assert.equal(calls.length, 3);
  });

  test("a Retry-After longer than maxRetryAfterSeconds is not waited for", async () => {
    const { fetch, calls } = fakeFetch(() => problem(503, "upstream_unavailable", {}, { "retry-after": "120" }));
    await assert.rejects(client(clock, fetch, { maxRetryAfterSeconds: 30 }).getToken(), BrokerUnavailableError);
    assert.equal(calls.length, 1);
    assert.deepEqual(clock.sleeps, []);
  });

  test("network errors are retried, then reported as network_error", async () => {
    const { fetch, calls } = fakeFetch(() => {
      throw new TypeError("fetch failed");
    });
    await assert.rejects(
      client(clock, fetch, { maxRetries: 1 }).getToken(),
      (error) => error instanceof BrokerUnavailableError && error.code === "network_error" && error.status === 0,
    );
    assert.equal(calls.length, 2);
  });

  test("a failed refresh ahead of expiry keeps serving the still-valid token", async () => {
    let fail = false;
    const { fetch, calls } = fakeFetch(() => (fail ? problem(503, "upstream_unavailable") : tokenResponse(clock)));
    const broker = client(clock, fetch, { maxRetries: 0 });
    await broker.getToken();
    fail = true;
    clock.t = START + 590_000; // inside the margin, 10 s before expiry
    assert.equal(await broker.getToken(), "svc-1");
    assert.equal(calls.length, 2);
    clock.t += 1000; // within the hold-off after a failed refresh: no new attempt
    assert.equal(await broker.getToken(), "svc-1");
    assert.equal(calls.length, 2);
    clock.t += 4000; // past it: the refresh is tried again
    assert.equal(await broker.getToken(), "svc-1");
    assert.equal(calls.length, 3);
    clock.t = START + 600_000; // expired: no more fallback
    await assert.rejects(broker.getToken(), BrokerUnavailableError);
  });
});

// ----- typed errors -----------------------------------------------------------------------------

describe("typed errors", () => {
  test("401 is BrokerAuthError and is not retried", async () => {
    const { fetch, calls } = fakeFetch(() => problem(401, "invalid_token", {}, { "www-authenticate": 'Bearer error="invalid_token"' }));
    await assert.rejects(
      client(clock, fetch).getToken(),
      (error) => error instanceof BrokerAuthError && error.status === 401 && error.code === "invalid_token",
    );
    assert.equal(calls.length, 1);
  });

  test("403 is BrokerForbiddenError carrying the problem's code", async () => {
    const { fetch } = fakeFetch(() => problem(403, "no_matching_rule", { detail: "No rule applies." }));
    await assert.rejects(client(clock, fetch).getToken(), (error) => {
      assert.ok(error instanceof BrokerForbiddenError);
      assert.equal(error.code, "no_matching_rule");
      assert.equal(error.detail, "No rule applies.");
      assert.equal(error.name, "BrokerForbiddenError");
      return true;
    });
  });

  test("a 403 on refresh drops the cached token: access is gone, not served stale", async () => {
    let forbidden = false;
    const { fetch, calls } = fakeFetch(() => (forbidden ? problem(403, "no_matching_rule") : tokenResponse(clock)));
    const broker = client(clock, fetch);
    await broker.getToken();
    forbidden = true;
    clock.t = START + 590_000;
    await assert.rejects(broker.getToken(), BrokerForbiddenError);
    forbidden = false;
    await broker.getToken();
    assert.equal(calls.length, 3);
  });

  test("429 is BrokerRateLimitedError with retryAfterSeconds", async () => {
    const { fetch } = fakeFetch(() => problem(429, "rate_limited", {}, { "retry-after": "7" }));
    await assert.rejects(
      client(clock, fetch).getToken(),
      (error) => error instanceof BrokerRateLimitedError && error.retryAfterSeconds === 7,
    );
  });
});

// ----- MCP through the guarded proxy -----------------------------------------------------------

describe("callTool", () => {
  test("sends a JSON-RPC tools/call with the MCP headers and returns the JSON result", async () => {
    const { fetch, calls } = fakeFetch((call) =>
      json(200, { jsonrpc: "2.0", id: call.body.id, result: { content: [{ type: "text", text: "ok" }] } }),
    );
    const result = await client(clock, fetch).callTool("my-app", "alice/github", "search_issues", { query: "widget" });
    assert.deepEqual(result, { content: [{ type: "text", text: "ok" }] });
    const [call] = calls;
    assert.equal(call.url, `${BASE}/v1/mcp/my-app/alice%2Fgithub`);
    assert.equal(call.init.method, "POST");
    assert.equal(call.init.headers.Accept, "application/json, text/event-stream");
    assert.equal(call.init.headers["MCP-Protocol-Version"], DEFAULT_MCP_PROTOCOL_VERSION);
    assert.equal(call.init.headers["Content-Type"], "application/json");
    assert.equal(call.init.headers.Authorization, `Bearer ${JWT}`);
    assert.deepEqual(call.body, {
      jsonrpc: "2.0",
      id: call.body.id,
      method: "tools/call",
      params: { name: "search_issues", arguments: { query: "widget" } },
    });
  });

  test("reads the response from an SSE stream, skipping other messages, across chunk splits", async () => {
    const { fetch } = fakeFetch((call) => {
      const id = call.body.id;
      const notification = JSON.stringify({ jsonrpc: "2.0", method: "notifications/progress", params: { progress: 1 } });
      const answer = JSON.stringify({ jsonrpc: "2.0", id, result: { structuredContent: { issues: [1, 4] } } });
      const text = `: keep-alive\r\nevent: message\r\ndata: ${notification}\r\n\r\nid: 7\r\ndata: ${answer}\r\n\r\n`;
      return sseResponse([text.slice(0, 17), text.slice(17, 60), text.slice(60, text.length - 3), text.slice(text.length - 3)]);
    });
    const result = await client(clock, fetch).callTool("my-app", "c", "search_issues", {});
    assert.deepEqual(result, { structuredContent: { issues: [1, 4] } });
  });

  test("a denial (-32003) becomes BrokerDeniedError with the reasons", async () => {
    const reasons = [
      { rule: "own-connections", reason: "metadata", detail: "the connection's metadata does not match the rule" },
      { rule: "support-github-readonly", reason: "rpc_pattern_mismatch", field: "params.name", pattern: "^(search_issues|get_issue)$", detail: "params.name does not match" },
    ];
    const { fetch } = fakeFetch((call) => {
      const body = JSON.stringify({ jsonrpc: "2.0", id: call.body.id, error: { code: -32003, message: "Forbidden: request not permitted by policy", data: { reasons } } });
      return sseResponse([`event: message\ndata: ${body}\n\n`]);
    });
    await assert.rejects(client(clock, fetch).callTool("my-app", "support-github", "delete_repository", { name: "demo" }), (error) => {
      assert.ok(error instanceof BrokerDeniedError);
      assert.equal(error.code, "request_denied");
      assert.deepEqual(error.reasons, reasons);
      assert.equal(error.rpcError.code, -32003);
      return true;
    });
  });

  test("a denied notification's 403 problem (request_denied) is also BrokerDeniedError", async () => {
    const reasons = [{ rule: "r", reason: "rpc_pattern_mismatch", detail: "d" }];
    const { fetch } = fakeFetch(() => problem(403, "request_denied", { reasons }));
    await assert.rejects(client(clock, fetch).callTool("ns", "c", "t"), (error) => error instanceof BrokerDeniedError && error.reasons[0].rule === "r");
  });

  test("another JSON-RPC error is McpRpcError, also when sent with HTTP 400", async () => {
    const { fetch } = fakeFetch((call) =>
      json(400, { jsonrpc: "2.0", id: call.body.id, error: { code: -32602, message: "Unknown tool: nope" } }),
    );
    await assert.rejects(
      client(clock, fetch).callTool("ns", "c", "nope"),
      (error) => error instanceof McpRpcError && error.rpcCode === -32602 && error.status === 400,
    );
  });

  test("Smithery's 401 about the request itself (a null id) is McpRpcError, not BrokerAuthError", async () => {
    const { fetch } = fakeFetch(() => json(401, { jsonrpc: "2.0", id: null, error: { code: -32000, message: "Invalid API key" } }));
    await assert.rejects(
      client(clock, fetch).callTool("ns", "c", "t"),
      (error) => error instanceof McpRpcError && !(error instanceof BrokerAuthError) && error.rpcCode === -32000 && error.status === 401,
    );
  });

  test("a tool call is never retried (it may not be idempotent)", async () => {
    const { fetch, calls } = fakeFetch(() => problem(503, "upstream_unavailable", {}, { "retry-after": "1" }));
    await assert.rejects(client(clock, fetch).callTool("ns", "c", "create_issue", { title: "t" }), BrokerUnavailableError);
    assert.equal(calls.length, 1);
  });

  test("listTools is retried on 503 and returns the tools", async () => {
    const { fetch, calls } = fakeFetch((call, n) =>
      n === 1 ? problem(503, "upstream_unavailable") : json(200, { jsonrpc: "2.0", id: call.body.id, result: { tools: [{ name: "search_issues" }] } }),
    );
    const result = await client(clock, fetch).listTools("my-app", "alice-github");
    assert.deepEqual(result.tools.map((t) => t.name), ["search_issues"]);
    assert.equal(calls.length, 2);
    assert.equal(calls[1].body.method, "tools/list");
  });

  test("aborting during a retry backoff ends the call at once, with no further attempt", async () => {
    const { fetch, calls } = fakeFetch(() => problem(503, "upstream_unavailable", {}, { "retry-after": "20" }));
    const waits = [];
    let waiting;
    const entered = new Promise((resolve) => (waiting = resolve));
    const sleep = (ms) => {
      waits.push(ms);
      waiting();
      return new Promise(() => {}); // a backoff that would never end by itself
    };
    const controller = new AbortController();
    const listing = client(clock, fetch, { sleep }).listTools("my-app", "alice-github", { signal: controller.signal });
    await entered;
    controller.abort();
    await assert.rejects(listing, (error) => error.name === "AbortError");
    assert.deepEqual(waits, [20000]);
    assert.equal(calls.length, 1);
  });

  test("an already aborted signal is not retried after a failed attempt", async () => {
    const controller = new AbortController();
    const { fetch, calls } = fakeFetch(() => {
      controller.abort(); // gone while the first attempt was in flight
      return problem(503, "upstream_unavailable");
    });
    await assert.rejects(
      client(clock, fetch).listTools("my-app", "alice-github", { signal: controller.signal }),
      (error) => error.name === "AbortError",
    );
    assert.equal(calls.length, 1);
    assert.deepEqual(clock.sleeps, []);
  });

  test("an SSE stream that ends without the response is an error", async () => {
    const { fetch } = fakeFetch(() => sseResponse([`data: {"jsonrpc":"2.0","method":"ping"}\n\n`]));
    await assert.rejects(client(clock, fetch).callTool("ns", "c", "t"), (error) => error instanceof BrokerError && error.code === "no_rpc_response");
  });
});

// ----- connections ------------------------------------------------------------------------------

describe("connections", () => {
  test("list, get, put and delete use the connections API", async () => {
    const doc = { connectionId: "alice-notes", name: "n", mcpUrl: "https://notes.example.com/mcp", metadata: { userId: "alice" } };
    const { fetch, calls } = fakeFetch((call) => {
      if (call.init.method === "GET" && call.url.includes("?")) return json(200, { connections: [doc], nextCursor: null });
      if (call.init.method === "DELETE") return json(200, { success: true });
      return json(call.init.method === "PUT" ? 201 : 200, doc);
    });
    const broker = client(clock, fetch);
    const page = await broker.listConnections("my-app", { limit: 10, cursor: "c 1" });
    assert.equal(page.connections[0].connectionId, "alice-notes");
    assert.equal(calls[0].url, `${BASE}/v1/connections/my-app?cursor=c+1&limit=10`);
    assert.equal((await broker.getConnection("my-app", "alice-notes")).name, "n");
    assert.equal(calls[1].url, `${BASE}/v1/connections/my-app/alice-notes`);
    await broker.putConnection("my-app", "alice-notes", { mcpUrl: doc.mcpUrl, name: "n" });
    assert.equal(calls[2].init.method, "PUT");
    assert.deepEqual(calls[2].body, { mcpUrl: doc.mcpUrl, name: "n" });
    assert.equal(calls[2].init.headers["Content-Type"], "application/json");
    assert.deepEqual(await broker.deleteConnection("my-app", "alice-notes"), { success: true });
    assert.equal(calls[3].init.method, "DELETE");
    for (const call of calls) assert.equal(call.init.headers.Authorization, `Bearer ${JWT}`);
  });

  test("a DELETE retried after its answer was lost counts the 404 it finds as done", async () => {
    const { fetch, calls } = fakeFetch((call, n) => {
      if (n === 1) throw new TypeError("network error: the answer was lost");
      return problem(404, "connection_not_found");
    });
    assert.deepEqual(await client(clock, fetch).deleteConnection("my-app", "alice-notes"), { success: true });
    assert.equal(calls.length, 2);
  });

  test("a DELETE that finds nothing at its first attempt is still BrokerNotFoundError", async () => {
    const { fetch } = fakeFetch(() => problem(404, "connection_not_found"));
    await assert.rejects(client(clock, fetch).deleteConnection("my-app", "nope"), BrokerNotFoundError);
  });

  test("another user's connection: BrokerNotFoundError", async () => {
    const { fetch } = fakeFetch(() => problem(404, "connection_not_found"));
    await assert.rejects(
      client(clock, fetch).getConnection("my-app", "alice-github"),
      (error) => error instanceof BrokerNotFoundError && error.code === "connection_not_found",
    );
  });

  test("empty path segments are refused before any request", async () => {
    const { fetch, calls } = fakeFetch(() => json(200, {}));
    await assert.rejects(client(clock, fetch).getConnection("my-app", ""), TypeError);
    assert.equal(calls.length, 0);
  });
});

// ----- types ------------------------------------------------------------------------------------

test("client.d.ts declares exactly what client.js exports", async () => {
  const module = await import("../../broker/static/client.js");
  const types = readFileSync(new URL("../../broker/static/client.d.ts", import.meta.url), "utf8");
  const declared = [...types.matchAll(/^export declare (?:class|function|const) (\w+)/gm)].map((m) => m[1]);
  assert.deepEqual(declared.sort(), Object.keys(module).sort());
});

// ----- parsers ----------------------------------------------------------------------------------

describe("parsers", () => {
  test("parseSse: multi-line data, comments, event names, ids, CR and LF line ends", async () => {
    const events = await collect(parseSse(strings("data: a\ndata: b\n\n: c", "omment\revent: x\rdata:c\r\rid: 3\ndata: d\n", "\ndata: unfinished")));
    assert.deepEqual(events, [
      { event: "message", data: "a\nb", id: "" },
      { event: "x", data: "c", id: "" },
      { event: "message", data: "d", id: "3" },
    ]);
  });

  test("parseRetryAfterMs: seconds, HTTP-date, garbage", () => {
    assert.equal(parseRetryAfterMs("3", START), 3000);
    assert.equal(parseRetryAfterMs(new Date(START + 10_000).toUTCString(), START), 10_000);
    assert.equal(parseRetryAfterMs(new Date(START - 10_000).toUTCString(), START), 0);
    assert.equal(parseRetryAfterMs("soon", START), null);
    assert.equal(parseRetryAfterMs(null, START), null);
  });
});

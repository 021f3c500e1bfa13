// A consumer of the browser client, type-checked with `tsc --strict --noEmit` against
// broker/static/client.d.ts (tests/test_client_types.py). Never run: it checks that the
// declarations are valid TypeScript, that the documented usage compiles, and (the
// `@ts-expect-error` lines) that misuse does not, so the types are not silently `any`.

import {
  BrokerAuthError,
  BrokerDeniedError,
  BrokerError,
  BrokerForbiddenError,
  BrokerNotFoundError,
  BrokerRateLimitedError,
  BrokerUnavailableError,
  DEFAULT_MCP_PROTOCOL_VERSION,
  DENIED_RPC_CODE,
  McpRpcError,
  createBrokerClient,
  errorFrom,
  parseRetryAfterMs,
  parseSse,
  readRpcResponse,
  type BrokerClient,
  type CallToolResult,
  type Connection,
  type DenialReason,
  type TokenInfo,
} from "../../../broker/static/client.js";

declare function signedInUserJwt(): Promise<string | null>;

const client: BrokerClient = createBrokerClient({
  baseUrl: "https://broker.example.com",
  getUserToken: signedInUserJwt,
  maxRetries: 2,
  mcpProtocolVersion: DEFAULT_MCP_PROTOCOL_VERSION,
});

// @ts-expect-error getUserToken is required
createBrokerClient({ baseUrl: "" });
// @ts-expect-error baseUrl is a string
createBrokerClient({ baseUrl: 443, getUserToken: () => null });

const code: -32003 = DENIED_RPC_CODE;

export async function flows(signal: AbortSignal): Promise<string[]> {
  const token: string = await client.getToken();
  const info: TokenInfo = await client.getTokenInfo({ forceRefresh: true });
  const rules: readonly string[] = info.rules;
  // @ts-expect-error the token info is read-only
  info.token = "other";

  const listed = await client.listTools("my-app", "alice-github", { signal });
  const names: string[] = listed.tools.map((tool) => tool.name);
  try {
    const result: CallToolResult = await client.callTool(
      "my-app",
      "alice-github",
      "search_issues",
      { query: "crash" },
      { signal },
    );
    const isError: boolean | undefined = result.isError;
    void isError;
  } catch (error) {
    if (error instanceof BrokerDeniedError) {
      const reasons: DenialReason[] = error.reasons;
      const first: string | undefined = reasons[0]?.reason;
      void first;
    } else if (error instanceof BrokerRateLimitedError) {
      const wait: number | null = error.retryAfterSeconds;
      void wait;
    } else if (error instanceof McpRpcError) {
      const rpcCode: number | undefined = error.rpcCode;
      void rpcCode;
    } else if (
      error instanceof BrokerAuthError ||
      error instanceof BrokerForbiddenError ||
      error instanceof BrokerNotFoundError ||
      error instanceof BrokerUnavailableError
    ) {
      const status: number = error.status;
      const stable: string = error.code;
      void [status, stable];
    } else if (error instanceof BrokerError) {
      throw error;
    }
  }
  // @ts-expect-error the tool name is required
  await client.callTool("my-app", "alice-github");

  const page = await client.listConnections("my-app", { limit: 10 });
  const next: string | null = page.nextCursor;
  const made: Connection = await client.putConnection("my-app", "alice-github", {
    mcpUrl: "https://mcp.example.com/mcp",
    metadata: { team: "blue" },
  });
  // @ts-expect-error metadata values are strings
  await client.putConnection("my-app", "x", { metadata: { team: 1 } });
  const gone: { success: boolean } = await client.deleteConnection("my-app", made.connectionId);
  const one: Connection = await client.getConnection("my-app", "alice-github");
  client.clear();

  const retryMs: number | null = parseRetryAfterMs("120", Date.now());
  const failure: BrokerError = await errorFrom(new Response("{}", { status: 503 }));
  async function* lines(): AsyncGenerator<string> {
    yield "data: {}\n\n";
  }
  for await (const event of parseSse(lines())) {
    const data: string = event.data;
    void data;
  }
  const answer = await readRpcResponse(new Response("{}"), 1);
  const version: "2.0" = answer.jsonrpc;
  void [token, rules, code, next, gone, one, retryMs, failure, version];
  return names;
}

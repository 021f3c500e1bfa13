// Types for the token broker's browser client (/v1/client.js).

export declare const DEFAULT_MCP_PROTOCOL_VERSION: string;
/** The JSON-RPC error code of a policy denial from the guarded proxy. */
export declare const DENIED_RPC_CODE: -32003;

export interface BrokerClientOptions {
  /** The broker's base URL, e.g. "https://broker.example.com" ("" for the page's own origin). */
  baseUrl: string;
  /** Returns the signed-in app user's JWT (from your identity provider's SDK). Called per request. */
  getUserToken: () => string | null | undefined | Promise<string | null | undefined>;
  /** Refresh the service token when less than this much of its life is left (default 30). */
  refreshMarginSeconds?: number;
  /** Extra attempts after a 503/504 or a network error (default 3; tool calls are never retried). */
  maxRetries?: number;
  /** First retry waits about this long (jittered), doubling per attempt (default 250). */
  retryBaseDelayMs?: number;
  /** Upper bound of the jittered backoff (default 4000). */
  retryMaxDelayMs?: number;
  /** A `Retry-After` longer than this is not waited for: the error is raised (default 30). */
  maxRetryAfterSeconds?: number;
  /** Sent as `MCP-Protocol-Version` on proxied MCP requests. */
  mcpProtocolVersion?: string;
  /** Injected for tests and custom transports; default `globalThis.fetch`. */
  fetch?: (input: string, init: RequestInit) => Promise<Response>;
  /** Milliseconds since the epoch; default `Date.now`. */
  now?: () => number;
  /** Default: a `setTimeout` promise. */
  sleep?: (ms: number) => Promise<void>;
  /** In [0, 1); default `Math.random` (jitter). */
  random?: () => number;
}

export interface TokenInfo {
  /** The Smithery service token. Opaque: use it as a bearer, never parse or store it. */
  readonly token: string;
  /** ISO 8601 expiry, as the broker returned it. */
  readonly expiresAt: string;
  /** Ids of the policy rules whose constraints the token carries. */
  readonly rules: readonly string[];
  readonly policyRevision: string;
}

/** Why one rule did not allow an MCP message (from the broker's precheck). */
export interface DenialReason {
  rule: string | null;
  reason: string;
  detail: string;
  field?: string;
  pattern?: string;
  [key: string]: unknown;
}

export interface Connection {
  connectionId: string;
  name: string;
  mcpUrl: string | null;
  metadata: Record<string, unknown> | null;
  transport?: string;
  status?: Record<string, unknown>;
  serverInfo?: Record<string, unknown>;
  iconUrl?: string;
  createdAt?: string;
}

export interface ConnectionPage {
  connections: Connection[];
  nextCursor: string | null;
}

export interface ConnectionRequest {
  /** Required to create; must match the policy's allowed targets. */
  mcpUrl?: string;
  name?: string;
  /** Merged under the metadata the policy enforces (which always wins). */
  metadata?: Record<string, string>;
  /** Write-only: passed to Smithery, never returned. */
  headers?: Record<string, string>;
}

export interface Tool {
  name: string;
  description?: string;
  inputSchema: Record<string, unknown>;
  annotations?: Record<string, unknown>;
  [key: string]: unknown;
}

export interface ListToolsResult {
  tools: Tool[];
  nextCursor?: string;
  [key: string]: unknown;
}

export interface CallToolResult {
  content: Array<{ type: string; [key: string]: unknown }>;
  structuredContent?: Record<string, unknown>;
  /** A tool execution error (the tool ran and failed); not a policy denial. */
  isError?: boolean;
  [key: string]: unknown;
}

export interface BrokerClient {
  /** The service token: from memory while fresh, else from POST /v1/tokens (one request for all concurrent callers). */
  getToken(options?: { forceRefresh?: boolean }): Promise<string>;
  getTokenInfo(options?: { forceRefresh?: boolean }): Promise<TokenInfo>;
  /** Forget the cached service token (sign-out, user change). */
  clear(): void;
  /** tools/call through the guarded proxy; a denial rejects with `BrokerDeniedError`. Never retried. */
  callTool(
    namespace: string,
    connectionId: string,
    name: string,
    args?: Record<string, unknown>,
    options?: { signal?: AbortSignal },
  ): Promise<CallToolResult>;
  listTools(
    namespace: string,
    connectionId: string,
    options?: { cursor?: string; signal?: AbortSignal },
  ): Promise<ListToolsResult>;
  listConnections(namespace: string, options?: { cursor?: string; limit?: number }): Promise<ConnectionPage>;
  getConnection(namespace: string, connectionId: string): Promise<Connection>;
  /** Create or update one of the user's connections (PUT). */
  putConnection(namespace: string, connectionId: string, connection: ConnectionRequest): Promise<Connection>;
  deleteConnection(namespace: string, connectionId: string): Promise<{ success: boolean }>;
}

export declare function createBrokerClient(options: BrokerClientOptions): BrokerClient;

/** RFC 9457 problem details, as the broker sends them. */
export interface Problem {
  type: string;
  title: string;
  status: number;
  code: string;
  detail?: string;
  instance?: string;
  reasons?: DenialReason[];
}

interface BrokerErrorOptions {
  status?: number;
  code?: string;
  detail?: string;
  problem?: Problem;
  cause?: unknown;
}

export declare class BrokerError extends Error {
  constructor(message: string, options?: BrokerErrorOptions);
  /** HTTP status; 0 when no response arrived. */
  readonly status: number;
  /** The broker's stable snake_case code (e.g. `invalid_token`, `no_matching_rule`). */
  readonly code: string;
  readonly detail?: string;
  readonly problem?: Problem;
}
export declare class BrokerAuthError extends BrokerError {}
export declare class BrokerForbiddenError extends BrokerError {}
export declare class BrokerNotFoundError extends BrokerError {}
export declare class BrokerRateLimitedError extends BrokerError {
  constructor(message: string, options?: BrokerErrorOptions & { retryAfterSeconds?: number | null });
  readonly retryAfterSeconds: number | null;
}
export declare class BrokerUnavailableError extends BrokerError {}
export declare class BrokerDeniedError extends BrokerError {
  constructor(
    message: string,
    options?: BrokerErrorOptions & { reasons?: DenialReason[]; rpcError?: unknown },
  );
  readonly reasons: DenialReason[];
  readonly rpcError?: { code: number; message: string; data?: unknown };
}
export declare class McpRpcError extends BrokerError {
  constructor(message: string, options?: BrokerErrorOptions & { rpcCode?: number; data?: unknown });
  readonly rpcCode?: number;
  readonly data?: unknown;
}

export declare function parseRetryAfterMs(value: string | null | undefined, nowMs: number): number | null;
export declare function errorFrom(response: Response, nowMs?: number): Promise<BrokerError>;
export declare function parseSse(
  chunks: AsyncIterable<string>,
): AsyncGenerator<{ event: string; data: string; id: string }>;
export declare function readRpcResponse(
  response: Response,
  id: string | number,
): Promise<{ jsonrpc: "2.0"; id: string | number; result?: unknown; error?: { code: number; message: string; data?: unknown } }>;

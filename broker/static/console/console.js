// The dev console: the whole flow of an app using the broker, through the same /v1/client.js.
// No framework, no build step. Text reaches the page only through textContent (never innerHTML),
// so nothing a user, a policy or an MCP server sends can run as markup.

import {
  BrokerDeniedError,
  BrokerError,
  createBrokerClient,
} from "/v1/client.js";

const PRESETS = [
  { label: "alice: verified user (own connections)", sub: "alice", claims: { email_verified: true } },
  {
    label: "alice: verified user in the support group",
    sub: "alice",
    claims: { email_verified: true, groups: ["support"] },
  },
  { label: "bob: verified user (own connections)", sub: "bob", claims: { email_verified: true } },
  { label: "sam: support agent (read-only tools on support-github)", sub: "sam", claims: { groups: ["support"] } },
  { label: "mallory: no rule applies (denied)", sub: "mallory", claims: {} },
];
const EXAMPLE_ARGUMENTS = { search_issues: { query: "widget" }, get_issue: { number: 1 } };

const $ = (id) => document.getElementById(id);
let session = null; // {sub, jwt, client}: the JWT lives here only, never in storage or the DOM

function announce(text) {
  $("status").textContent = text;
}

function showError(error, near) {
  // Next to the control that failed, so it is seen where the user is looking.
  near?.closest("form, section")?.append($("error"));
  const message = error instanceof BrokerError
    ? `${error.message} (HTTP ${error.status || "none"}, code ${error.code})`
    : String(error?.message ?? error);
  $("error-message").textContent = message;
  $("error").hidden = false;
  announce(`Error: ${message}`);
}

function clearError() {
  $("error").hidden = true;
  $("error-message").textContent = "";
}

function element(tag, text, className) {
  const node = document.createElement(tag);
  if (text !== undefined) node.textContent = text;
  if (className) node.className = className;
  return node;
}

function parseJsonObject(text, what) {
  let value;
  try {
    value = JSON.parse(text.trim() || "{}");
  } catch (error) {
    throw new Error(`${what} is not valid JSON: ${error.message}`);
  }
  if (value === null || typeof value !== "object" || Array.isArray(value)) {
    throw new Error(`${what} must be a JSON object`);
  }
  return value;
}

// Run one user action: busy state on its button, errors shown, nothing left half-done.
function action(button, run) {
  return async (event) => {
    event?.preventDefault();
    clearError();
    button.disabled = true;
    button.setAttribute("aria-busy", "true");
    try {
      await run();
    } catch (error) {
      showError(error, button);
    } finally {
      button.removeAttribute("aria-busy");
      button.disabled = false;
    }
  };
}

function setSignedIn(enabled) {
  for (const selector of ["#get-token", "#list-connections", "#lookup-form button", "#create-form button", "#tools-form button", "#call-form button"]) {
    document.querySelector(selector).disabled = !enabled;
  }
}

function resetResults() {
  $("token-info").hidden = true;
  for (const id of ["token-rules", "token-expiry", "token-revision"]) $(id).textContent = "";
  $("connections").replaceChildren();
  $("connections-empty").hidden = true;
  $("connection-ids").replaceChildren();
  $("lookup-output").hidden = true;
  $("lookup-output").textContent = "";
  $("tools").replaceChildren();
  $("tool-names").replaceChildren();
  $("result").hidden = true;
  $("result-output").textContent = "";
  $("denial").hidden = true;
  $("denial-reasons").replaceChildren();
  $("lookup-id").value = "";
  $("tool-name").value = "";
  $("tool-args").value = "{}";
}

function namespace() {
  const value = $("namespace").value.trim();
  if (!value) throw new Error("Give a namespace");
  return value;
}

// ----- 1. sign in ------------------------------------------------------------------------------

function applyPreset(index) {
  const preset = PRESETS[index];
  $("sub").value = preset.sub;
  $("claims").value = JSON.stringify(preset.claims);
}

async function signIn() {
  const sub = $("sub").value.trim();
  if (!sub) throw new Error("Give a user id (sub)");
  const claims = parseJsonObject($("claims").value, "Claims");
  // Signing in as someone else ends the current session first, even if the new sign-in fails:
  // the previous user's service token must never serve the next one.
  session?.client.clear();
  session = null;
  setSignedIn(false);
  resetResults();
  $("user-summary").textContent = "Not signed in.";
  const response = await fetch("/dev/login", {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ ...claims, sub }),
    cache: "no-store",
  });
  const body = await response.json().catch(() => ({}));
  if (!response.ok) {
    throw new Error(`Sign-in refused: ${body.detail ?? body.title ?? `HTTP ${response.status}`}`);
  }
  const current = { sub, jwt: body.access_token };
  current.client = createBrokerClient({ baseUrl: "", getUserToken: () => current.jwt });
  session = current;
  setSignedIn(true);
  $("create-id").value = `${sub}-notes`;
  $("create-name").value = `${sub}'s notes`;
  $("create-url").value = "https://notes.example.com/mcp";
  $("tool-connection").value = "";
  const summary = Object.keys(claims).length ? ` with claims ${JSON.stringify(claims)}` : " with no other claims";
  $("user-summary").textContent = `Signed in as ${sub}${summary}.`;
  announce(`Signed in as ${sub}.`);
}

// ----- 2. service token ------------------------------------------------------------------------

async function getToken() {
  const info = await session.client.getTokenInfo();
  const expires = new Date(info.expiresAt);
  const minutes = Math.max(0, Math.round((expires.getTime() - Date.now()) / 60000));
  $("token-rules").textContent = info.rules.join(", ") || "(none)";
  $("token-expiry").textContent = `${expires.toISOString()} (in about ${minutes} min)`;
  $("token-revision").textContent = info.policyRevision;
  $("token-info").hidden = false;
  announce(`Service token issued for ${session.sub}: rules ${info.rules.join(", ")}.`);
}

// ----- 3. connections --------------------------------------------------------------------------

function useConnection(connectionId) {
  $("tool-connection").value = connectionId;
  $("tool-connection").focus();
  announce(`Connection ${connectionId} selected for tools.`);
}

async function listConnections() {
  const page = await session.client.listConnections(namespace());
  const list = $("connections");
  list.replaceChildren();
  $("connection-ids").replaceChildren();
  for (const connection of page.connections) {
    const item = element("li", undefined, "card");
    item.dataset.connectionId = connection.connectionId;
    item.append(element("strong", connection.connectionId));
    item.append(element("span", ` ${connection.name}`));
    item.append(element("p", connection.mcpUrl ?? "", "muted"));
    item.append(element("p", `metadata ${JSON.stringify(connection.metadata ?? {})}`, "muted"));
    const use = element("button", "Use for tools");
    use.type = "button";
    use.setAttribute("aria-label", `Use for tools: ${connection.connectionId}`);
    use.addEventListener("click", () => useConnection(connection.connectionId));
    const remove = element("button", "Delete");
    remove.type = "button";
    remove.setAttribute("aria-label", `Delete ${connection.connectionId}`);
    remove.addEventListener("click", action(remove, () => deleteConnection(connection.connectionId)));
    item.append(use, remove);
    list.append(item);
    const option = element("option");
    option.value = connection.connectionId;
    $("connection-ids").append(option);
  }
  $("connections-empty").hidden = page.connections.length > 0;
  if (!$("tool-connection").value && page.connections.length) {
    $("tool-connection").value = page.connections[0].connectionId;
  }
  announce(`${page.connections.length} connection(s) for ${session.sub}.`);
}

async function lookUpConnection() {
  const id = $("lookup-id").value.trim();
  if (!id) throw new Error("Give a connection id");
  const output = $("lookup-output");
  output.hidden = true;
  const connection = await session.client.getConnection(namespace(), id);
  output.textContent = JSON.stringify(connection, null, 2);
  output.hidden = false;
  announce(`Connection ${id} found.`);
}

async function createConnection() {
  const id = $("create-id").value.trim();
  const mcpUrl = $("create-url").value.trim();
  if (!id || !mcpUrl) throw new Error("Give a connection id and an MCP URL");
  const name = $("create-name").value.trim();
  const created = await session.client.putConnection(namespace(), id, name ? { mcpUrl, name } : { mcpUrl });
  await listConnections();
  announce(`Connection ${created.connectionId} saved with metadata ${JSON.stringify(created.metadata ?? {})}.`);
}

async function deleteConnection(id) {
  await session.client.deleteConnection(namespace(), id);
  await listConnections();
  announce(`Connection ${id} deleted.`);
}

// ----- 4. tools --------------------------------------------------------------------------------

function toolConnection() {
  const value = $("tool-connection").value.trim();
  if (!value) throw new Error("Give a connection id (list your connections to pick one)");
  return value;
}

function chooseTool(name) {
  $("tool-name").value = name;
  $("tool-args").value = JSON.stringify(EXAMPLE_ARGUMENTS[name] ?? {});
  $("tool-args").focus();
  announce(`Tool ${name} selected.`);
}

async function listTools() {
  $("denial").hidden = true;
  const connectionId = toolConnection();
  let result;
  try {
    result = await session.client.listTools(namespace(), connectionId);
  } catch (error) {
    if (error instanceof BrokerDeniedError) {
      $("tools").replaceChildren();
      showDenial(error);
      announce(`Listing the tools of ${connectionId} was denied by policy.`);
      return;
    }
    throw error;
  }
  const list = $("tools");
  list.replaceChildren();
  $("tool-names").replaceChildren();
  for (const tool of result.tools ?? []) {
    const item = element("li", undefined, "card");
    item.append(element("strong", tool.name));
    item.append(element("p", tool.description ?? "", "muted"));
    const choose = element("button", "Choose");
    choose.type = "button";
    choose.setAttribute("aria-label", `Choose ${tool.name}`);
    choose.addEventListener("click", () => chooseTool(tool.name));
    item.append(choose);
    list.append(item);
    const option = element("option");
    option.value = tool.name;
    $("tool-names").append(option);
  }
  announce(`${(result.tools ?? []).length} tool(s) on ${connectionId}.`);
}

function showDenial(error) {
  const rows = error.reasons.map((reason) => {
    const row = element("tr");
    for (const value of [reason.rule, reason.reason, reason.field, reason.pattern, reason.detail]) {
      row.append(element("td", value === undefined || value === null ? "" : String(value)));
    }
    return row;
  });
  $("denial-reasons").replaceChildren(...rows);
  $("denial").hidden = false;
  $("denial-heading").focus();
}

async function callTool() {
  const connectionId = toolConnection();
  const name = $("tool-name").value.trim();
  if (!name) throw new Error("Give a tool name (list the tools to pick one)");
  const args = parseJsonObject($("tool-args").value, "Arguments");
  $("result").hidden = true;
  $("denial").hidden = true;
  try {
    const result = await session.client.callTool(namespace(), connectionId, name, args);
    const shown = result.structuredContent ?? (result.content ?? []).map((part) => part.text ?? part).join("\n");
    $("result-heading").textContent = result.isError ? `${name} reported an error` : `Result of ${name}`;
    $("result-output").textContent = typeof shown === "string" ? shown : JSON.stringify(shown, null, 2);
    $("result").hidden = false;
    $("result-heading").focus();
    announce(result.isError ? `${name} ran and reported an error.` : `${name} on ${connectionId} succeeded.`);
  } catch (error) {
    if (error instanceof BrokerDeniedError) {
      showDenial(error);
      announce(`${name} on ${connectionId} was denied by policy: ${error.reasons.map((r) => r.reason).join(", ")}.`);
      return;
    }
    throw error;
  }
}

// ----- wiring ----------------------------------------------------------------------------------

function init() {
  const select = $("preset");
  PRESETS.forEach((preset, index) => {
    const option = element("option", preset.label);
    option.value = String(index);
    select.append(option);
  });
  select.addEventListener("change", () => applyPreset(Number(select.value)));
  applyPreset(0);
  const submitOf = (form) => $(form).querySelector("button[type=submit]");
  $("login-form").addEventListener("submit", action(submitOf("login-form"), signIn));
  $("get-token").addEventListener("click", action($("get-token"), getToken));
  $("list-connections").addEventListener("click", action($("list-connections"), listConnections));
  $("lookup-form").addEventListener("submit", action(submitOf("lookup-form"), lookUpConnection));
  $("create-form").addEventListener("submit", action(submitOf("create-form"), createConnection));
  $("tools-form").addEventListener("submit", action(submitOf("tools-form"), listTools));
  $("call-form").addEventListener("submit", action(submitOf("call-form"), callTool));
  setSignedIn(false);
  announce("Ready. Choose a dev user and sign in.");
}

init();

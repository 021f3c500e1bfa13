// Drives Debian's headless Chromium (/usr/bin/chromium) through the dev console of a running
// `broker dev`, the way a newcomer would click through it, and saves a screenshot per step.
//
//   node tests/browser/console_flow.mjs --url http://127.0.0.1:8080 --out test-artifacts/browser
//
// Every step waits on page content (Playwright's auto-waiting locators), never on time. Prints
// one JSON line {"steps": [...]} on success; exits 1 with the reason (and a failure screenshot)
// otherwise. tests/integration/test_dev_console_browser.py starts the broker and runs this.

import { mkdirSync, mkdtempSync, readFileSync, rmSync } from "node:fs";
import { createRequire } from "node:module";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { parseArgs } from "node:util";

import { chromium } from "playwright-core";

const { values: args } = parseArgs({
  options: {
    url: { type: "string" },
    out: { type: "string" },
    chromium: { type: "string", default: "/usr/bin/chromium" },
    timeout: { type: "string", default: "30000" },
  },
});
if (!args.url || !args.out) {
  console.error("usage: console_flow.mjs --url BROKER_URL --out SCREENSHOT_DIR");
  process.exit(2);
}
mkdirSync(args.out, { recursive: true });

// The flags the machine needs: no sandbox as root, and no background traffic to Google's hosts
// (the network is closed). Playwright adds --headless itself.
const CHROMIUM_ARGS = [
  "--no-sandbox",
  "--disable-gpu",
  "--disable-quic",
  "--no-first-run",
  "--disable-background-networking",
  "--disable-component-update",
  "--disable-sync",
];

// axe-core, the accessibility rules engine, is put into the page through the DevTools protocol
// (not a <script>, which the console's CSP would rightly refuse).
const AXE_SOURCE = readFileSync(createRequire(import.meta.url).resolve("axe-core/axe.min.js"), "utf8");
const AXE_TAGS = ["wcag2a", "wcag2aa", "wcag21a", "wcag21aa", "wcag22aa", "best-practice"];

async function accessibilityViolations(page) {
  if (!(await page.evaluate(() => "axe" in window))) await page.evaluate(AXE_SOURCE);
  return page.evaluate(async (tags) => {
    const results = await window.axe.run(document, { runOnly: { type: "tag", values: tags } });
    return results.violations.map((v) => `${v.id}: ${v.help} (${v.nodes.map((n) => n.target.join(" ")).join(", ")})`);
  }, AXE_TAGS);
}

const steps = [];
const problems = []; // CSP violations and script errors seen on the page

function check(condition, message) {
  if (!condition) throw new Error(`check failed: ${message}`);
}

async function main() {
  const profile = mkdtempSync(join(tmpdir(), "broker-console-chromium-"));
  const context = await chromium.launchPersistentContext(profile, {
    executablePath: args.chromium,
    headless: true,
    args: CHROMIUM_ARGS,
    viewport: { width: 1100, height: 1400 },
  });
  const page = context.pages()[0] ?? (await context.newPage());
  page.setDefaultTimeout(Number(args.timeout));
  page.on("console", (message) => {
    const text = message.text();
    // Failed requests are checked one by one below (a 404 is part of the flow).
    if (message.type() === "error" && !/^Failed to load resource/.test(text)) problems.push(`console error: ${text}`);
    if (/Content Security Policy/i.test(text)) problems.push(`CSP: ${text}`);
  });
  page.on("pageerror", (error) => problems.push(`page error: ${error.message}`));
  const failures = [];
  page.on("response", (response) => {
    if (response.status() >= 400) failures.push(`${response.status()} ${new URL(response.url()).pathname}`);
  });
  page.on("requestfailed", (request) => {
    const error = request.failure()?.errorText ?? "";
    // The client closes an MCP event stream once it holds its answer: an abort, not a failure.
    if (error === "net::ERR_ABORTED" && new URL(request.url()).pathname.startsWith("/v1/mcp/")) return;
    problems.push(`request failed: ${request.url()} ${error}`);
  });

  const status = page.getByRole("status");
  const waitStatus = (pattern) => status.filter({ hasText: pattern }).waitFor();
  // Each step ends with a screenshot and an accessibility check of the page as it is then.
  const shot = async (name, what) => {
    const path = join(args.out, `${String(steps.length + 1).padStart(2, "0")}-${name}.png`);
    await page.screenshot({ path, fullPage: true });
    const violations = await accessibilityViolations(page);
    check(violations.length === 0, `accessibility (axe-core) at ${name}: ${violations.join(" | ")}`);
    steps.push({ step: name, what, screenshot: path, accessibilityViolations: violations.length });
  };

  try {
    const response = await page.goto(`${args.url}/dev/`);
    check(response.ok(), `GET /dev/ answered ${response.status()}`);
    check(/frame-ancestors 'none'/.test(response.headers()["content-security-policy"] ?? ""), "the console is served with its CSP");
    await waitStatus(/Ready/);

    // 1. alice, a verified user who is also in the support group (a preset; claims editable).
    await page.getByLabel("Preset").selectOption({ label: "alice: verified user in the support group" });
    check((await page.getByLabel("User id").inputValue()) === "alice", "the preset fills in the user");
    await page.getByRole("button", { name: "Sign in" }).click();
    await waitStatus("Signed in as alice.");
    await page.getByText(/Signed in as alice with claims/).waitFor();
    await shot("alice-signed-in", "alice signs in with claims from a preset");

    // 2. Her service token: the rules it carries and its expiry.
    await page.getByRole("button", { name: "Get service token" }).click();
    await waitStatus(/Service token issued for alice/);
    const rules = await page.locator("#token-rules").textContent();
    check(rules.includes("own-connections") && rules.includes("support-github-readonly"), `token rules: ${rules}`);
    check(/^\d{4}-\d\d-\d\dT.*Z \(in about \d+ min\)$/.test(await page.locator("#token-expiry").textContent()), "the expiry is shown");
    check(!(await page.content()).includes("emu1."), "the service token itself is never put in the page");
    await shot("alice-token", "her service token: rules and expiry");

    // 3. Her connections, then a new one (the broker writes the policy's metadata).
    await page.getByRole("button", { name: "List my connections" }).click();
    const connections = page.getByRole("list", { name: "My connections" });
    await connections.locator('[data-connection-id="alice-github"]').waitFor();
    check((await connections.locator("li").count()) === 1, "alice sees exactly her one seeded connection");
    await page.getByRole("button", { name: "Create connection" }).click();
    await connections.locator('[data-connection-id="alice-notes"]').waitFor();
    check(/"userId":"alice"/.test(await connections.locator('[data-connection-id="alice-notes"]').textContent()), "the new connection is tagged with her user id");
    await shot("alice-connections", "her connections, with one she just created");
    await page.getByRole("button", { name: "Delete alice-notes" }).click();
    await waitStatus("Connection alice-notes deleted.");
    check((await connections.locator("li").count()) === 1, "the deleted connection is gone from the list");

    // 4. The tools on her GitHub connection, listed through the guarded proxy.
    await page.getByRole("button", { name: "Use for tools: alice-github" }).click();
    await page.getByRole("button", { name: "List tools" }).click();
    const tools = page.getByRole("list", { name: "Tools" });
    await tools.getByText("search_issues", { exact: true }).waitFor();
    await tools.getByText("delete_repository", { exact: true }).waitFor();
    await shot("alice-tools", "the demo MCP server's tools on alice-github");

    // 5. An allowed tool call: a real result from the demo MCP server.
    await page.getByRole("button", { name: "Choose search_issues" }).click();
    check((await page.getByLabel("Arguments").inputValue()) === '{"query":"widget"}', "example arguments are filled in");
    await page.getByRole("button", { name: "Call tool" }).click();
    await page.getByRole("heading", { name: "Result of search_issues" }).waitFor();
    const output = await page.getByLabel("Tool result").textContent();
    check(output.includes("Crash when saving an empty widget"), `search result: ${output}`);
    check(await page.locator("#denial").isHidden(), "no denial shown for an allowed call");
    await shot("allowed-call", "search_issues on alice-github: allowed, real result");

    // 6. A denied tool call, typed by hand: delete_repository on the shared support connection.
    await page.getByLabel("Connection for tools").fill("support-github");
    await page.getByLabel("Tool", { exact: true }).fill("delete_repository");
    await page.getByLabel("Arguments").fill('{"name": "demo"}');
    await page.getByRole("button", { name: "Call tool" }).click();
    await page.getByRole("heading", { name: "Denied by policy" }).waitFor();
    await waitStatus(/delete_repository on support-github was denied by policy/);
    const denial = page.locator("#denial-reasons");
    const readonlyRow = denial.getByRole("row").filter({ hasText: "support-github-readonly" });
    await readonlyRow.waitFor();
    const rowText = await readonlyRow.textContent();
    check(rowText.includes("rpc_pattern_mismatch") && rowText.includes("params.name") && rowText.includes("^(search_issues|get_issue)$"), `denial reason: ${rowText}`);
    check(await page.locator("#result").isHidden(), "no result shown for a denied call");
    check(await page.evaluate(() => document.activeElement?.id) === "denial-heading", "focus moves to the denial");
    await shot("denied-call", "delete_repository on support-github: denied, with the reasons");

    // 7. bob, typed in and submitted from the keyboard: he cannot see alice's connections.
    await page.getByLabel("User id").fill("bob");
    await page.getByLabel("Other claims").fill('{"email_verified": true}');
    await page.getByLabel("User id").press("Enter");
    await waitStatus("Signed in as bob.");
    check((await connections.locator("li").count()) === 0, "alice's connections are cleared from the page on sign-in");
    await page.getByRole("button", { name: "List my connections" }).click();
    await connections.locator('[data-connection-id="bob-github"]').waitFor();
    const bobSees = await connections.locator("li").evaluateAll((items) => items.map((item) => item.dataset.connectionId));
    check(JSON.stringify(bobSees) === '["bob-github"]', `bob's connections: ${bobSees}`);
    await page.getByLabel("Connection id to look up").fill("alice-github");
    await page.getByRole("button", { name: "Look up" }).click();
    await page.getByRole("alert").filter({ hasText: "No connection 'alice-github'" }).waitFor();
    check(/HTTP 404/.test(await page.getByRole("alert").textContent()), "another user's connection is a 404");
    check(await page.locator("#lookup-output").isHidden(), "nothing of alice's connection is shown");
    await page.getByLabel("Connection for tools").fill("alice-github");
    await page.getByRole("button", { name: "List tools" }).click();
    await waitStatus("Listing the tools of alice-github was denied by policy.");
    const ownRow = await denial.getByRole("row").filter({ hasText: "own-connections" }).textContent();
    check(ownRow.includes("metadata"), `bob is denied alice's connection by its metadata: ${ownRow}`);
    check((await tools.locator("li").count()) === 0, "no tools of alice's connection are shown to bob");
    await shot("bob-cannot-see-alice", "bob signs in: alice's connections are invisible (404) and unusable (denied) to him");

    check(problems.length === 0, `the page reported problems: ${problems.join(" | ")}`);
    check(JSON.stringify(failures) === '["404 /v1/connections/my-app/alice-github"]', `failed requests: ${failures}`);
  } catch (error) {
    await page.screenshot({ path: join(args.out, "failure.png"), fullPage: true }).catch(() => {});
    throw error;
  } finally {
    await context.close();
    rmSync(profile, { recursive: true, force: true });
  }
}

main().then(
  () => {
    console.log(JSON.stringify({ steps }));
  },
  (error) => {
    console.error(error?.stack ?? String(error));
    process.exit(1);
  },
);

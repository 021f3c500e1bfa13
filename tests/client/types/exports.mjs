// Prints whether client.js exports exactly what client.d.ts declares (names and kinds), as
// JSON: {"js": {...}, "dts": {...}}. Used by tests/test_client_types.py.
import { readFileSync } from "node:fs";
import { fileURLToPath } from "node:url";
import ts from "typescript";

const root = fileURLToPath(new URL("../../../", import.meta.url));
const client = await import(`${root}broker/static/client.js`);
const kind = (value) =>
  typeof value === "function"
    ? /^class[\s{]/.test(Function.prototype.toString.call(value)) ? "class" : "function"
    : "const";
const js = Object.fromEntries(Object.entries(client).map(([name, value]) => [name, kind(value)]));

const path = `${root}broker/static/client.d.ts`;
const source = ts.createSourceFile(path, readFileSync(path, "utf8"), ts.ScriptTarget.ES2022, true);
const dts = {};
for (const statement of source.statements) {
  const exported = ts.getCombinedModifierFlags(statement) & ts.ModifierFlags.Export;
  if (!exported) continue;
  if (ts.isClassDeclaration(statement)) dts[statement.name.text] = "class";
  else if (ts.isFunctionDeclaration(statement)) dts[statement.name.text] = "function";
  else if (ts.isVariableStatement(statement)) {
    for (const declaration of statement.declarationList.declarations) {
      dts[declaration.name.text] = "const";
    }
  }
}
console.log(JSON.stringify({ js, dts }));

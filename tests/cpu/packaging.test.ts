/** package.json (Bun, Node) and deno.json (Deno) pin the same versions of what both import. */

import { test } from "node:test";
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";

const ROOT = new URL("../../", import.meta.url).pathname;

test("package.json pins every npm import of deno.json at the same version", () => {
  const deno = JSON.parse(readFileSync(`${ROOT}deno.json`, "utf8"));
  const pkg = JSON.parse(readFileSync(`${ROOT}package.json`, "utf8"));
  const deps: Record<string, string> = { ...pkg.dependencies, ...pkg.devDependencies };
  const imports = Object.entries(deno.imports as Record<string, string>);
  assert.ok(imports.length > 0, "deno.json has no imports");
  for (const [name, spec] of imports) {
    const m = /^npm:(@?[^@]+)@(.+)$/.exec(spec);
    assert.ok(m, `deno.json imports.${name}: "${spec}" is not an npm: specifier`);
    assert.equal(m[1], name, `deno.json imports.${name} maps to another package (${m[1]})`);
    assert.equal(deps[name], m[2], `package.json ${name}: ${deps[name]}, deno.json: ${m[2]}`);
  }
  assert.equal(pkg.version, deno.version, "package.json and deno.json versions differ");
});

// docs/openapi.yaml validates against the OpenAPI 3 JSON schema (a real
// validator, not a YAML parse), and documents the answers the server gives
// hostile requests (test/server_hostile.test.ts).
import { test } from "node:test";
import assert from "node:assert/strict";
import { promises as fsp } from "node:fs";
import { fileURLToPath } from "node:url";
import { Validator } from "@seriousme/openapi-schema-validator";

const SPEC = fileURLToPath(new URL("../docs/openapi.yaml", import.meta.url));

test("docs/openapi.yaml is a valid OpenAPI 3.0 document", async () => {
  const v = new Validator();
  const r = await v.validate(await fsp.readFile(SPEC, "utf8"));
  assert.equal(r.valid, true, `docs/openapi.yaml: ${JSON.stringify(r.errors, null, 1)?.slice(0, 2000)}`);
  assert.equal(v.version, "3.0");
  const spec = v.specification as { paths: Record<string, Record<string, { responses: Record<string, unknown> }>> };
  const codes = (path: string, method: string) => Object.keys(spec.paths[path][method].responses).sort();
  for (const c of ["201", "400", "413", "503"]) assert.ok(codes("/sessions", "post").includes(c), `POST /sessions documents ${c}`);
  for (const c of ["204", "400", "409", "422"]) assert.ok(codes("/sessions/{id}/data", "patch").includes(c), `PATCH data documents ${c}`);
});

test("the validator catches the bug it is here for: a bare comma in an unquoted flow-mapping description", async () => {
  const text = await fsp.readFile(SPEC, "utf8");
  const broken = text.replace(/"400": \{ description: "BAD_REQUEST: [^"]*"/, '"400": { description: not JSON, or url is not an http(s) URL');
  assert.notEqual(broken, text, "the POST /sessions 400 line is where the test expects it");
  const r = await new Validator().validate(broken);
  assert.equal(r.valid, false);
  assert.match(JSON.stringify(r.errors), /or url is not an http\(s\) URL/);
});

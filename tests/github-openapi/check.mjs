// Holds the HTTP requests previewd sent to a fake GitHub against GitHub's
// published OpenAPI description (api.github.com, dereferenced, from the pinned
// @octokit/openapi package).
//
// Usage: node check.mjs REQUESTS.jsonl
// Each line: {"method":"POST","path":"/repos/o/r/deployments","query":[["k","v"]],"body":<JSON|null>}
// `path` is the raw, still percent-encoded request path without the API prefix.
//
// Checked: the method + path name a documented operation (a `{param}` matches
// exactly one non-empty segment; literal segments win over templates); path
// parameters decode and fit their schema; every query parameter sent is
// declared and fits its schema (values coerced from strings per the schema);
// required query parameters are present; a JSON body is sent exactly when the
// operation takes one and validates against its schema.
//
// Deliberately NOT checked: response shapes and status codes, headers
// (auth, Accept, API version), rate limits, pagination semantics, and whether
// the call makes sense for GitHub's state. `x-multi-segment` parameters are
// still matched as one segment: previewd percent-encodes them (e.g. branches).
import { readFileSync } from "node:fs";
import { createRequire } from "node:module";
import Ajv from "ajv";
import addFormats from "ajv-formats";

const SPEC = "@octokit/openapi/generated/api.github.com.deref.json";

const file = process.argv[2];
if (!file) {
  console.error("usage: node check.mjs REQUESTS.jsonl");
  process.exit(2);
}
const spec = JSON.parse(readFileSync(createRequire(import.meta.url).resolve(SPEC), "utf8"));
const ajv = new Ajv({ strict: false, allErrors: true });
addFormats(ajv);
for (const f of ["timestamp", "repo.nwo"]) ajv.addFormat(f, true); // GitHub-specific, not validated

const templates = Object.entries(spec.paths).map(([tpl, item]) => ({ tpl, item, segs: tpl.split("/").slice(1) }));

// Returns { tpl, op, params, pathArgs } or an error string.
function findOperation(method, path) {
  const segs = path.split("/").slice(1);
  let best = null;
  let pathExists = false;
  for (const t of templates) {
    if (t.segs.length !== segs.length) continue;
    const pathArgs = {};
    let rank = "";
    const ok = t.segs.every((s, i) => {
      const m = /^\{(.+)\}$/.exec(s);
      rank += m ? "T" : "L"; // "L" < "T": at the first difference, a literal segment wins
      if (m) pathArgs[m[1]] = segs[i];
      return m ? segs[i] !== "" : s === segs[i];
    });
    if (!ok) continue;
    pathExists = true;
    const op = t.item[method.toLowerCase()];
    if (op && (!best || rank < best.rank)) best = { tpl: t.tpl, op, item: t.item, rank, pathArgs };
  }
  if (!best) return pathExists ? `no such operation (path exists, but not for ${method})` : "no such operation";
  const params = new Map();
  for (const p of [...(best.item.parameters ?? []), ...(best.op.parameters ?? [])]) params.set(`${p.in}:${p.name}`, p);
  return { ...best, params };
}

// GitHub states most per_page limits only in prose ("(max 100)", sometimes 30
// or 50), not as a schema `maximum`; take the bound from that text when the
// schema has none, so the limit still comes from the description itself.
function paramSchema(p) {
  const max = /\(max (\d+)\)/i.exec(p.description ?? "");
  const schema = p.schema ?? {};
  return max && schema.type === "integer" && schema.maximum === undefined ? { ...schema, maximum: Number(max[1]) } : schema;
}

// Turns a string from the URL into the JSON value the schema talks about.
function coerce(value, schema = {}) {
  switch (schema.type) {
    case "integer": return /^-?\d+$/.test(value) ? Number(value) : value;
    case "number": return value.trim() !== "" && !isNaN(Number(value)) ? Number(value) : value;
    case "boolean": return value === "true" ? true : value === "false" ? false : value;
    default: return value;
  }
}

function schemaErrors(schema, value, where) {
  const validate = ajv.compile(schema);
  if (validate(value)) return [];
  return validate.errors.map((e) => {
    const extra = e.params?.allowedValues ? `: ${JSON.stringify(e.params.allowedValues)}`
      : e.params?.additionalProperty ? `: ${JSON.stringify(e.params.additionalProperty)}` : "";
    const at = e.instancePath.split("/").slice(1).reduce((v, k) => v?.[k.replace(/~1/g, "/").replace(/~0/g, "~")], value);
    const got = at === null || typeof at !== "object" ? ` (got ${JSON.stringify(at)})` : "";
    return `${where}${e.instancePath} ${e.message}${extra}${got}`;
  });
}

function check(req) {
  const { method, path, query = [], body = null } = req;
  if (typeof method !== "string" || typeof path !== "string" || !path.startsWith("/")) return ["malformed record"];
  if (/[?#]/.test(path)) return ["path contains '?' or '#': query belongs in `query`"];
  const found = findOperation(method, path);
  if (typeof found === "string") return [found];
  const { tpl, op, params, pathArgs } = found;
  const errors = [];
  const where = `[${op.operationId ?? tpl}]`;

  for (const [name, raw] of Object.entries(pathArgs)) {
    const p = params.get(`path:${name}`);
    let value;
    try { value = decodeURIComponent(raw); } catch { errors.push(`path parameter ${name}: bad percent-encoding ${raw}`); continue; }
    if (!p) { errors.push(`path parameter ${name} is not declared ${where}`); continue; }
    errors.push(...schemaErrors(paramSchema(p), coerce(value, p.schema), `path parameter ${name}`));
  }

  const sent = new Map();
  for (const [k, v] of query) sent.set(k, [...(sent.get(k) ?? []), String(v)]);
  for (const [name, values] of sent) {
    const p = params.get(`query:${name}`);
    if (!p) { errors.push(`unknown query parameter ${name} ${where}`); continue; }
    const schema = paramSchema(p);
    let value;
    if (schema.type === "array") value = values.map((v) => coerce(v, schema.items));
    else if (values.length > 1) { errors.push(`query parameter ${name} sent ${values.length} times`); continue; }
    else value = coerce(values[0], schema);
    errors.push(...schemaErrors(schema, value, `query parameter ${name}`));
  }
  for (const p of params.values()) {
    if (p.in === "query" && p.required && !sent.has(p.name)) errors.push(`missing required query parameter ${p.name}`);
  }

  const rb = op.requestBody;
  const jsonType = rb && Object.keys(rb.content ?? {}).find((t) => t.startsWith("application/json"));
  if (body !== null && body !== undefined) {
    if (!rb) errors.push(`body sent, but ${where} takes no request body`);
    else if (!jsonType) errors.push(`JSON body sent, but ${where} takes ${Object.keys(rb.content).join(", ")}`);
    else errors.push(...schemaErrors(rb.content[jsonType].schema ?? {}, body, "body"));
  } else if (rb?.required) errors.push(`missing required request body ${where}`);
  return errors;
}

let passed = 0;
let failed = 0;
readFileSync(file, "utf8").split("\n").forEach((line, i) => {
  if (!line.trim()) return;
  let req;
  try { req = JSON.parse(line); } catch (e) { failed++; console.log(`line ${i + 1}: invalid JSON: ${e.message}`); return; }
  const errors = check(req);
  if (errors.length === 0) { passed++; return; }
  failed++;
  const qs = (req.query ?? []).map(([k, v]) => `${k}=${v}`).join("&");
  console.log(`FAIL ${req.method} ${req.path}${qs ? "?" + qs : ""}`);
  for (const e of errors) console.log(`  - ${e}`);
});
if (passed + failed === 0) console.error(`github-openapi: ${file} holds no requests; nothing was checked`);
console.log(`github-openapi: ${passed} passed, ${failed} failed`);
process.exit(failed > 0 || passed === 0 ? 1 : 0);

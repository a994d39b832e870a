// The client's retry and idempotency rules, against a local HTTP server that misbehaves on purpose.
import assert from "node:assert/strict";
import { createServer } from "node:http";
import { after, before, test } from "node:test";

import { ApiError, NotExecuted, RingfenceClient, TransportError, guard } from "../dist/index.js";

let server;
let baseUrl;
let script = [];   // what the server does for each next request: a function (req, res)
const seen = [];   // every request: method, path, Idempotency-Key

before(async () => {
  server = createServer((req, res) => {
    let body = "";
    req.on("data", (chunk) => { body += chunk; });
    req.on("end", () => {
      seen.push({ method: req.method, url: req.url, key: req.headers["idempotency-key"], body,
                  auth: req.headers.authorization });
      const act = script.shift() ?? ok({});
      act(req, res);
    });
  });
  await new Promise((resolve) => server.listen(0, "127.0.0.1", resolve));
  baseUrl = `http://127.0.0.1:${server.address().port}`;
});

after(() => new Promise((resolve) => server.close(resolve)));

function ok(body, headers = {}) {
  return (_req, res) => {
    res.writeHead(200, { "Content-Type": "application/json", ...headers });
    res.end(JSON.stringify(body));
  };
}

function problem(status, code, headers = {}) {
  return (_req, res) => {
    res.writeHead(status, { "Content-Type": "application/problem+json", ...headers });
    res.end(JSON.stringify({ type: `about:blank#${code}`, title: code, status, detail: `${code} detail`, code,
                             errors: [{ in: "body", field: "confidence", message: "too high", type: "value" }] }));
  };
}

function dropConnection() {
  return (req) => req.socket.destroy();
}

function client(slept, options = {}) {
  return new RingfenceClient(baseUrl, "rf_test", {
    timeout: 5, backoff: 0.01, sleep: async (seconds) => { slept.push(seconds); }, ...options,
  });
}

const PENDING = { decision: "pending", code: "needs_approval", reason: "a person decides", workflow: "w",
                  action: "a", tier: 2, business_hours: true, approval_id: 7 };

test("a 503 and a 429 are retried with the same key after the server's Retry-After", async () => {
  seen.length = 0;
  const slept = [];
  script = [problem(503, "unavailable", { "Retry-After": "7" }), problem(429, "rate_limited", { "Retry-After": "2" }),
            ok(PENDING, { "Idempotent-Replayed": "true" })];
  const answer = await client(slept).dispatch("w", "a", { order: "A-1" });
  assert.equal(answer.decision, "pending");
  assert.equal(answer.replayed, true);
  assert.deepEqual(slept, [7, 2]);
  assert.equal(seen.length, 3);
  assert.ok(seen[0].key && seen.every((r) => r.key === seen[0].key), "one key for every attempt");
  assert.equal(seen[0].auth, "Bearer rf_test");
  assert.deepEqual(JSON.parse(seen[0].body), { workflow: "w", action: "a", parameters: { order: "A-1" }, evidence: {} });
});

test("a Retry-After longer than the client waits is raised at once, not retried early", async () => {
  seen.length = 0;
  const slept = [];
  script = [problem(429, "rate_limited", { "Retry-After": "45" }), ok(PENDING)];
  await assert.rejects(client(slept, { maxBackoff: 8 }).dispatch("w", "a"),
                       (error) => error.status === 429 && error.retryAfter === 45);
  assert.deepEqual(slept, []);
  assert.equal(seen.length, 1);
});

test("a lost connection is retried with the same key; two calls use two keys", async () => {
  seen.length = 0;
  const slept = [];
  script = [dropConnection(), ok(PENDING), ok(PENDING)];
  const rf = client(slept);
  await rf.dispatch("w", "a");
  await rf.dispatch("w", "a");
  assert.equal(seen.length, 3);
  assert.equal(seen[0].key, seen[1].key);
  assert.notEqual(seen[1].key, seen[2].key);
  assert.equal(slept.length, 1);
});

test("a refusal is not retried and carries the problem details", async () => {
  seen.length = 0;
  script = [problem(422, "invalid")];
  const error = await client([]).dispatch("w", "a", {}, { confidence: 3 }).catch((e) => e);
  assert.ok(error instanceof ApiError);
  assert.equal(error.status, 422);
  assert.equal(error.code, "invalid");
  assert.equal(error.errors[0].field, "confidence");
  assert.equal(seen.length, 1);
});

test("the retry budget ends in the last error", async () => {
  seen.length = 0;
  const slept = [];
  script = [problem(503, "unavailable"), problem(503, "unavailable"), problem(503, "unavailable")];
  const error = await client(slept, { maxRetries: 2 }).execute(7).catch((e) => e);
  assert.ok(error instanceof ApiError && !(error instanceof NotExecuted));
  assert.equal(error.status, 503);
  assert.equal(seen.length, 3);
  assert.equal(slept.length, 2);
  assert.ok(slept.every((s) => s > 0 && s <= 0.02), `exponential backoff from 0.01 s with jitter: ${slept}`);
});

test("an unreachable server is a TransportError", async () => {
  const closed = createServer();
  await new Promise((resolve) => closed.listen(0, "127.0.0.1", resolve));
  const port = closed.address().port;
  await new Promise((resolve) => closed.close(resolve));
  const slept = [];
  const rf = new RingfenceClient(`http://127.0.0.1:${port}`, "rf_test", { maxRetries: 1, sleep: async (s) => {
    slept.push(s);
  } });
  const error = await rf.route("w", "internal_team", "ops").catch((e) => e);
  assert.ok(error instanceof TransportError, String(error));
  assert.equal(slept.length, 1);
});

test("a refused claim is NotExecuted and the guarded function does not run", async () => {
  script = [ok(PENDING), ok({ ...PENDING, id: 7, state: "approved", outcome: "allow", decisions: [] }),
            problem(409, "already_executed")];
  const calls = [];
  const refund = guard(client([]), { workflow: "w", action: "a", onPending: () => {} }, async () => {
    calls.push("ran");
  });
  const error = await refund().catch((e) => e);
  assert.ok(error instanceof NotExecuted, String(error));
  assert.equal(error.code, "already_executed");
  assert.equal(error.approvalId, 7);
  assert.deepEqual(calls, []);
});

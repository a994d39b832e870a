// Against a live Ringfence (tests/api/test_typescript_client.py starts one, with the refund workflow,
// its actions and a live rollout, and plays the person who decides): RINGFENCE_URL, RINGFENCE_TOKEN,
// and RINGFENCE_LOSSY_URL, a proxy that loses the first answer it relays. Skipped without a server.
import assert from "node:assert/strict";
import { test } from "node:test";

import { ApiError, Denied, NotExecuted, RingfenceClient, guard } from "../dist/index.js";

const url = process.env.RINGFENCE_URL;
const live = { skip: url ? false : "RINGFENCE_URL is not set: no live Ringfence to call" };
const rf = () => RingfenceClient.fromEnv({ timeout: 10, backoff: 0.05 });

test("an allowed action carries its execution, and its outcome is reported once", live, async () => {
  const answer = await rf().dispatch("refund-agent", "send_receipt", { order: "TS-0" });
  assert.equal(answer.decision, "allow");
  assert.equal(answer.execution.state, "granted");
  assert.equal(answer.replayed, false);
  const reported = await rf().reportOutcome(answer.execution.id, "succeeded", "sent");
  assert.equal(reported.state, "succeeded");
  assert.deepEqual(await rf().reportOutcome(answer.execution.id, "succeeded", "sent"), reported);
});

test("pending, approved by a person, claimed once, outcome reported", live, async () => {
  const client = rf();
  const pending = await client.dispatch("refund-agent", "refund_customer", { order: "TS-1" },
                                        { evidence: { summary: "duplicate charge" }, confidence: 0.8 });
  assert.equal(pending.decision, "pending");
  assert.ok(pending.approval_id);
  const started = Date.now();
  const approval = await client.waitForDecision(pending.approval_id, { timeout: 60, poll: 10 });
  assert.equal(approval.state, "approved");
  assert.equal(approval.outcome, "allow");
  assert.equal(approval.decisions[0].decided_by, "alice");
  assert.ok(Date.now() - started < 9000, "woken by the long-poll, not at the end of `poll`");

  const execution = await client.execute(approval.id);
  assert.equal(execution.state, "granted");
  assert.equal(execution.approval_id, approval.id);
  const second = await client.execute(approval.id).catch((e) => e);
  assert.ok(second instanceof NotExecuted, String(second));
  assert.equal(second.code, "already_executed");
  const reported = await client.reportOutcome(execution.id, "succeeded", "refunded");
  assert.equal(reported.state, "succeeded");
});

test("the guard runs an approved call once and a rejected one never", live, async () => {
  const calls = [];
  const refund = guard(rf(), { workflow: "refund-agent", action: "refund_customer", timeout: 60,
                               parameters: (order) => ({ order }) },
                       async (order) => { calls.push(order); return `refunded ${order}`; });
  assert.equal(await refund("TS-2"), "refunded TS-2");
  const denied = await refund("TS-3").catch((e) => e);
  assert.ok(denied instanceof Denied, String(denied));
  assert.equal(denied.approval.state, "rejected");
  assert.equal(denied.approvalId, denied.approval.id);
  assert.deepEqual(calls, ["TS-2"]);
});

test("signals are stored once and the route names the version serving a segment", live, async () => {
  const sample = { metric: "latency_p95_ms", value: 420, observed_at: new Date(), segment: "internal_team:support-ops" };
  const result = await rf().sendSignals("refund-agent", [sample, { ...sample }]);
  assert.deepEqual([result.stored, result.duplicates], [1, 1]);
  const route = await rf().route("refund-agent", "internal_team", "support-ops");
  assert.equal(route.version, "prompt-v2");
  assert.equal(route.mode, "normal");
  assert.equal(route.exposed, true);
});

test("a lost answer is retried with the same key and the server acts once", {
  skip: process.env.RINGFENCE_LOSSY_URL ? false : "RINGFENCE_LOSSY_URL is not set",
}, async () => {
  const client = new RingfenceClient(process.env.RINGFENCE_LOSSY_URL, process.env.RINGFENCE_TOKEN,
                                     { timeout: 10, backoff: 0.05 });
  const answer = await client.dispatch("refund-agent", "refund_customer", { order: "TS-4" });
  assert.equal(answer.decision, "pending");
  assert.equal(answer.replayed, true);
});

test("refusals are ApiErrors with the problem details", live, async () => {
  const invalid = await rf().dispatch("refund-agent", "send_receipt", {}, { confidence: 3 }).catch((e) => e);
  assert.ok(invalid instanceof ApiError);
  assert.deepEqual([invalid.status, invalid.code, invalid.errors[0].field], [422, "invalid", "confidence"]);
  const missing = await rf().approval(999999).catch((e) => e);
  assert.deepEqual([missing.status, missing.code], [404, "not_found"]);
});

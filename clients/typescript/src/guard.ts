/**
 * Guard an agent's function behind Ringfence: it runs only under an execution Ringfence granted,
 * and what happened is reported.
 *
 *     const refund = guard(rf, { workflow: "refund-agent", action: "refund_customer",
 *                                parameters: (order: string) => ({ order }) },
 *                          async (order: string) => payments.refund(order));
 *     await refund("A-1001");
 *
 * Each call is one intent with its own Idempotency-Key (reused only by that call's retries).
 * deny → Denied; allow → runs under the answer's execution; pending → by `onPending`: "wait"
 * (default, at most `timeout` seconds, then DecisionTimeout), "raise" (PendingApproval at once) or
 * a function called once with the pending approval, then wait. Closed without approval → Denied.
 * Approved → the execution is claimed (NotExecuted if refused) and the function runs; its outcome
 * is reported `succeeded`, or `failed` with the error's name and message (the error is rethrown).
 */

import type { RingfenceClient } from "./client.js";
import { Denied, PendingApproval, RingfenceError } from "./errors.js";
import { isPending } from "./types.js";
import type { Approval, Execution, Json } from "./types.js";

const MAX_DETAIL = 5000;

export interface GuardOptions<A extends unknown[]> {
  workflow: string;
  action: string;
  parameters?: Json | ((...args: A) => Json);
  evidence?: Json | ((...args: A) => Json);
  confidence?: number;
  onPending?: "wait" | "raise" | ((approval: Approval) => unknown);
  /** Seconds to wait for a person's decision. Default 600. */
  timeout?: number;
}

function derive<A extends unknown[]>(value: Json | ((...args: A) => Json) | undefined, args: A): Json {
  if (typeof value === "function") return value(...args);
  return value ?? {};
}

function described(error: unknown): string {
  const text = error instanceof Error ? (error.message ? `${error.name}: ${error.message}` : error.name)
    : String(error);
  return text.slice(0, MAX_DETAIL);
}

export function guard<A extends unknown[], R>(client: RingfenceClient, options: GuardOptions<A>,
                                              fn: (...args: A) => R | Promise<R>,
): (...args: A) => Promise<Awaited<R>> {
  const onPending = options.onPending ?? "wait";
  if (typeof onPending !== "function" && onPending !== "wait" && onPending !== "raise") {
    throw new TypeError("onPending is 'wait', 'raise' or a function of the pending approval");
  }
  const timeout = options.timeout ?? 600;

  async function granted(args: A): Promise<Execution> {
    const answer = await client.dispatch(options.workflow, options.action, derive(options.parameters, args), {
      evidence: derive(options.evidence, args), confidence: options.confidence,
    });
    if (answer.decision === "deny") throw new Denied(answer.reason, { dispatch: answer });
    if (answer.decision === "allow") {
      if (!answer.execution) {
        throw new RingfenceError(`dispatch allowed ${options.action} but granted no execution; nothing was run`);
      }
      return answer.execution;
    }
    if (onPending === "raise") throw new PendingApproval(answer);
    const approvalId = Number(answer.approval_id);
    const deadline = Date.now() + timeout * 1000;
    let approval: Approval;
    if (typeof onPending === "function") {
      approval = await client.approval(approvalId);
      await onPending(approval);
      if (isPending(approval)) {
        approval = await client.waitForDecision(approvalId, { timeout: Math.max(0, (deadline - Date.now()) / 1000) });
      }
    } else {
      approval = await client.waitForDecision(approvalId, { timeout });
    }
    if (approval.outcome !== "allow") {
      throw new Denied(`approval ${approval.id} is ${approval.state}`, { dispatch: answer, approval });
    }
    return client.execute(approvalId);
  }

  async function report(execution: Execution, status: "succeeded" | "failed", detail: string): Promise<void> {
    try {
      await client.reportOutcome(execution.id, status, detail);
    } catch (error) {
      if (!(error instanceof RingfenceError)) throw error;
      console.warn(`could not report execution ${execution.id} of ${options.action} as ${status}: ${error.message}`);
    }
  }

  return async (...args: A): Promise<Awaited<R>> => {
    const execution = await granted(args);
    let result: Awaited<R>;
    try {
      result = await fn(...args);
    } catch (error) {
      await report(execution, "failed", described(error));
      throw error;
    }
    await report(execution, "succeeded", "");
    return result;
  };
}

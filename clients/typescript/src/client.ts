/**
 * A small, typed client for the Ringfence agent API; no runtime dependency beyond `fetch`.
 *
 *     const rf = new RingfenceClient("https://ringfence.example.com", "rf_…");
 *     const answer = await rf.dispatch("refund-agent", "refund_customer", { order: "A-1001" });
 *
 * Every call that changes something carries an Idempotency-Key; retries (connection failures,
 * 429, 502, 503, 504, a 409 while the first attempt is still in flight) reuse the same key and
 * honour Retry-After, so the server acts at most once however often a call is retried. Times and
 * durations are in seconds, as in the API.
 */

import { ApiError, DecisionTimeout, NotExecuted, RingfenceError, TransportError } from "./errors.js";
import type { FieldProblem } from "./errors.js";
import { guard } from "./guard.js";
import type { GuardOptions } from "./guard.js";
import { isPending } from "./types.js";
import type {
  Approval, DispatchResult, Execution, Json, ProposalResult, Route, Sample, SignalsResult,
} from "./types.js";

export const USER_AGENT = "ringfence-client-ts/1";
const RETRYABLE_STATUSES = new Set([429, 502, 503, 504]);
const CLAIM_REFUSALS = new Set(["already_executed", "approval_expired", "paused", "not_approved"]);
/** The longest `wait` the API accepts on GET /approvals/{id} (a longer one is a 422): each poll is capped here. */
export const MAX_WAIT_SECONDS = 60;

export interface ClientOptions {
  /** Seconds one attempt may take (a long-poll adds its wait). Default 30. */
  timeout?: number;
  /** How often one call is retried. Default 4. */
  maxRetries?: number;
  /** First backoff in seconds, doubled per attempt with jitter, at most `maxBackoff`. Defaults 0.25 and 8. */
  backoff?: number;
  maxBackoff?: number;
  apiPrefix?: string;
  /** Replaces the global fetch (tests, proxies). */
  fetch?: typeof fetch;
  /** Replaces the wait between retries (tests). */
  sleep?: (seconds: number) => Promise<void>;
}

export interface RetryPolicy {
  maxRetries: number;
  backoff: number;
  maxBackoff: number;
}

/** One API call, ready to send. */
export interface Call {
  method: "GET" | "POST";
  path: string;
  body?: Json;
  query?: Record<string, string>;
  idempotencyKey?: string;
  /** Seconds the server may hold the answer (long-poll). */
  wait?: number;
  /** The approval whose execution this call claims: a 409 refusal becomes NotExecuted. */
  claimOf?: number;
}

/** Seconds to wait before retrying `call` after `error` (attempt counts from 0), or null: give up.
 * Only reads and calls carrying an Idempotency-Key are retried. */
export function retryDelay(call: Call, error: unknown, attempt: number, policy: RetryPolicy): number | null {
  const retryable = call.method === "GET" || Boolean(call.idempotencyKey);
  if (!retryable || attempt >= policy.maxRetries) return null;
  let retryAfter: number | null = null;
  if (error instanceof ApiError) {
    const inFlight = error.status === 409 && error.code === "request_in_flight";
    if (!RETRYABLE_STATUSES.has(error.status) && !inFlight) return null;
    retryAfter = error.retryAfter;
  } else if (!(error instanceof TransportError)) {
    return null;
  }
  // Honoured in full: a longer wait than 4 × maxBackoff is the caller's to schedule (error.retryAfter).
  if (retryAfter !== null) return retryAfter <= policy.maxBackoff * 4 ? retryAfter : null;
  return Math.min(policy.maxBackoff, policy.backoff * 2 ** attempt) * (0.5 + Math.random() * 0.5);
}

export function newKey(): string {
  return crypto.randomUUID();
}

interface Answer {
  status: number;
  body: unknown;
  headers: Headers;
}

export class RingfenceClient {
  readonly baseUrl: string;
  readonly token: string;
  timeout: number;
  retries: RetryPolicy;
  apiPrefix: string;
  private readonly fetchImpl: typeof fetch;
  private readonly sleep: (seconds: number) => Promise<void>;

  constructor(baseUrl: string, token: string, options: ClientOptions = {}) {
    if (!token) throw new RingfenceError("a Ringfence API token is required");
    this.baseUrl = baseUrl.replace(/\/+$/, "");
    this.token = token;
    this.timeout = options.timeout ?? 30;
    this.retries = { maxRetries: options.maxRetries ?? 4, backoff: options.backoff ?? 0.25,
                     maxBackoff: options.maxBackoff ?? 8 };
    this.apiPrefix = options.apiPrefix ?? "/api/v1";
    this.fetchImpl = options.fetch ?? ((input, init) => fetch(input, init));
    this.sleep = options.sleep ?? ((seconds) => new Promise((resolve) => setTimeout(resolve, seconds * 1000)));
  }

  /** From RINGFENCE_URL and RINGFENCE_TOKEN (Node). */
  static fromEnv(options: ClientOptions = {}): RingfenceClient {
    const env = (globalThis as { process?: { env: Record<string, string | undefined> } }).process?.env ?? {};
    if (!env.RINGFENCE_URL || !env.RINGFENCE_TOKEN) throw new RingfenceError("set RINGFENCE_URL and RINGFENCE_TOKEN");
    return new RingfenceClient(env.RINGFENCE_URL, env.RINGFENCE_TOKEN, options);
  }

  /** Ask whether `action` may run now: allow (with the execution it grants), deny, or pending with an
   * approval to wait for. Pass the same `idempotencyKey` only when asking again for the same intent. */
  async dispatch(workflow: string, action: string, parameters: Json = {},
                 options: { evidence?: Json; confidence?: number; idempotencyKey?: string; callbackUrl?: string } = {},
  ): Promise<DispatchResult> {
    const body: Json = { workflow, action, parameters, evidence: options.evidence ?? {} };
    if (options.confidence !== undefined) body.confidence = options.confidence;
    if (options.callbackUrl !== undefined) body.callback_url = options.callbackUrl;
    const answer = await this.call({ method: "POST", path: "/dispatch", body,
                                     idempotencyKey: options.idempotencyKey ?? newKey() });
    return { ...(answer.body as Omit<DispatchResult, "replayed">),
             replayed: answer.headers.get("Idempotent-Replayed") === "true" };
  }

  /** The request's state now, or within `wait` seconds if it closes (server-capped long-poll; a `wait`
   * above the API's limit, MAX_WAIT_SECONDS, is capped to it). */
  async approval(approvalId: number, options: { wait?: number } = {}): Promise<Approval> {
    const wait = Math.min(options.wait ?? 0, MAX_WAIT_SECONDS);
    return (await this.call({ method: "GET", path: `/approvals/${Math.trunc(approvalId)}`, wait,
                              query: wait ? { wait: String(wait) } : undefined })).body as Approval;
  }

  /** Long-poll until the request closes; throws DecisionTimeout after `timeout` seconds (default 600). */
  async waitForDecision(approvalId: number, options: { timeout?: number; poll?: number } = {}): Promise<Approval> {
    const deadline = Date.now() + (options.timeout ?? 600) * 1000;
    const poll = options.poll ?? 25;
    for (;;) {
      const remaining = (deadline - Date.now()) / 1000;
      const approval = await this.approval(approvalId,
                                           { wait: Math.max(0, Math.min(poll, remaining, MAX_WAIT_SECONDS)) });
      if (!isPending(approval)) return approval;
      if (Date.now() >= deadline) throw new DecisionTimeout(approval);
    }
  }

  /** Claim the one execution an approved request grants, right before acting. Throws NotExecuted when
   * there is nothing to run (already_executed, approval_expired, paused, not_approved). */
  async execute(approvalId: number, options: { idempotencyKey?: string } = {}): Promise<Execution> {
    const answer = await this.call({ method: "POST", path: `/approvals/${Math.trunc(approvalId)}/execute`,
                                     idempotencyKey: options.idempotencyKey ?? newKey(), claimOf: approvalId });
    return (answer.body as { execution: Execution }).execution;
  }

  /** Say what happened to an execution, once; the same report again answers as the first did. */
  async reportOutcome(executionId: number, status: "succeeded" | "failed", detail = "",
                      options: { idempotencyKey?: string } = {}): Promise<Execution> {
    return (await this.call({ method: "POST", path: `/executions/${Math.trunc(executionId)}/outcome`,
                              body: { status, detail }, idempotencyKey: options.idempotencyKey ?? newKey() }))
      .body as Execution;
  }

  /** Withdraw a pending request this token asked for. */
  async cancel(approvalId: number, reason: string, options: { idempotencyKey?: string } = {}): Promise<Approval> {
    return (await this.call({ method: "POST", path: `/approvals/${Math.trunc(approvalId)}/cancel`, body: { reason },
                              idempotencyKey: options.idempotencyKey ?? newKey() })).body as Approval;
  }

  /** Post a batch of metric samples (at most 10,000); samples already stored are skipped. */
  async sendSignals(workflow: string, samples: Iterable<Sample>, options: { plan?: number } = {},
  ): Promise<SignalsResult> {
    const body: Json = {
      workflow,
      samples: Array.from(samples, (s) => ({ ...s, observed_at: timestamp(s.observed_at) })),
    };
    if (options.plan !== undefined) body.plan = options.plan;
    return (await this.call({ method: "POST", path: "/signals", body, idempotencyKey: newKey() }))
      .body as SignalsResult;
  }

  /** Propose a rollback or fallback of the workflow's live rollout (handled per autonomy tier). */
  async propose(workflow: string, kind: "rollback" | "fallback",
                options: { confidence: number; reason: string; evidence?: Json; metric?: string; plan?: number;
                           idempotencyKey?: string }): Promise<ProposalResult> {
    const body: Json = { workflow, kind, confidence: options.confidence, reason: options.reason,
                         evidence: options.evidence ?? {} };
    if (options.metric !== undefined) body.metric = options.metric;
    if (options.plan !== undefined) body.plan = options.plan;
    return (await this.call({ method: "POST", path: "/proposals", body,
                              idempotencyKey: options.idempotencyKey ?? newKey() })).body as ProposalResult;
  }

  /** Which version and mode serve a segment now; read it on every call. `key` applies the ring's exposure. */
  async route(workflow: string, segmentKind: string, segmentValue: string, options: { key?: string } = {},
  ): Promise<Route> {
    const query: Record<string, string> = { workflow, segment_kind: segmentKind, segment_value: segmentValue };
    if (options.key) query.key = options.key;
    return (await this.call({ method: "GET", path: "/route", query })).body as Route;
  }

  /** `guard(this, options, fn)`: run `fn` only under an execution Ringfence grants, and report its outcome. */
  guard<A extends unknown[], R>(options: GuardOptions<A>, fn: (...args: A) => R | Promise<R>,
  ): (...args: A) => Promise<Awaited<R>> {
    return guard(this, options, fn);
  }

  // -- transport -----------------------------------------------------------------------------

  async call(call: Call): Promise<Answer> {
    for (let attempt = 0; ; attempt++) {
      try {
        return await this.send(call);
      } catch (error) {
        const delay = retryDelay(call, error, attempt, this.retries);
        if (delay === null) {
          if (error instanceof ApiError && call.claimOf !== undefined && error.status === 409
              && CLAIM_REFUSALS.has(error.code)) {
            throw new NotExecuted(error, call.claimOf);
          }
          throw error;
        }
        await this.sleep(delay);
      }
    }
  }

  private async send(call: Call): Promise<Answer> {
    let url = this.baseUrl + this.apiPrefix + call.path;
    if (call.query) url += "?" + new URLSearchParams(call.query).toString();
    const headers: Record<string, string> = {
      Authorization: `Bearer ${this.token}`, Accept: "application/json", "User-Agent": USER_AGENT,
    };
    if (call.body !== undefined) headers["Content-Type"] = "application/json";
    if (call.idempotencyKey) headers["Idempotency-Key"] = call.idempotencyKey;
    let response: Response;
    let text: string;
    try {
      response = await this.fetchImpl(url, {
        method: call.method, headers, body: call.body === undefined ? undefined : JSON.stringify(call.body),
        signal: AbortSignal.timeout((this.timeout + (call.wait ?? 0)) * 1000), redirect: "follow",
      });
      text = await response.text();
    } catch (error) {
      throw new TransportError(`${call.method} ${url}: ${describe(error)}`, { cause: error });
    }
    const body = decode(text);
    if (response.ok) return { status: response.status, body, headers: response.headers };
    throw apiError(response.status, body, response.headers);
  }
}

function timestamp(value: Date | string): string {
  return value instanceof Date ? value.toISOString() : value;
}

function describe(error: unknown): string {
  if (error instanceof Error) {
    const cause = error.cause instanceof Error ? `: ${error.cause.message}` : "";
    return `${error.name}: ${error.message}${cause}`;
  }
  return String(error);
}

function decode(text: string): unknown {
  if (!text) return null;
  try {
    return JSON.parse(text);
  } catch {
    return { detail: text.slice(0, 500) };
  }
}

function apiError(status: number, payload: unknown, headers: Headers): ApiError {
  const problem = (payload && typeof payload === "object" && !Array.isArray(payload) ? payload : {}) as Json;
  const retryAfterHeader = (headers.get("Retry-After") ?? "").trim();
  const retryAfter = /^\d+$/.test(retryAfterHeader) ? Number(retryAfterHeader) : null;
  const errors: FieldProblem[] = (Array.isArray(problem.errors) ? problem.errors : [])
    .filter((e): e is Json => Boolean(e) && typeof e === "object")
    .map((e) => ({ in: String(e.in ?? ""), field: String(e.field ?? ""), message: String(e.message ?? ""),
                   type: String(e.type ?? "") }));
  return new ApiError(status, String(problem.code ?? "error"), String(problem.title ?? ""),
                      String(problem.detail ?? ""), errors, retryAfter);
}

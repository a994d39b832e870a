/** The errors the client raises; every one is a RingfenceError. */

import type { Approval, DispatchResult } from "./types.js";

export class RingfenceError extends Error {
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = new.target.name;
  }
}

export interface FieldProblem {
  in: string;
  field: string;
  message: string;
  type: string;
}

/** The server refused the call: RFC 9457 problem details (status, stable code, field errors). */
export class ApiError extends RingfenceError {
  constructor(
    readonly status: number,
    readonly code: string,
    readonly title: string,
    readonly detail: string,
    readonly errors: FieldProblem[] = [],
    /** Seconds the server asked to wait (Retry-After), if it said. */
    readonly retryAfter: number | null = null,
  ) {
    super(`${status} ${code}: ${detail}`);
  }
}

/** The server refused to claim an approval's execution (409 already_executed, approval_expired,
 * paused or not_approved): nothing may run under this approval now. */
export class NotExecuted extends ApiError {
  constructor(error: ApiError, readonly approvalId: number) {
    super(error.status, error.code, error.title, error.detail, error.errors, error.retryAfter);
  }
}

/** The server could not be reached (or kept failing) within the retry budget. */
export class TransportError extends RingfenceError {}

export class DecisionTimeout extends RingfenceError {
  readonly approvalId: number;
  constructor(readonly approval: Approval) {
    super(`approval ${approval.id} is still pending`);
    this.approvalId = approval.id;
  }
}

/** Dispatch answered deny, or the approval closed without permission. */
export class Denied extends RingfenceError {
  readonly approvalId: number | null;
  readonly dispatch: DispatchResult | null;
  readonly approval: Approval | null;
  constructor(readonly reason: string, context: { dispatch?: DispatchResult; approval?: Approval } = {}) {
    super(reason);
    this.dispatch = context.dispatch ?? null;
    this.approval = context.approval ?? null;
    this.approvalId = this.approval?.id ?? this.dispatch?.approval_id ?? null;
  }
}

/** Dispatch answered pending and the caller chose not to wait. */
export class PendingApproval extends RingfenceError {
  readonly approvalId: number | null;
  constructor(readonly dispatch: DispatchResult) {
    super(`approval ${dispatch.approval_id} is pending: ${dispatch.reason}`);
    this.approvalId = dispatch.approval_id ?? null;
  }
}

/** What the Ringfence API answers, as typed values (field names as on the wire). */

export type Decision = "allow" | "deny" | "pending";
export type Json = Record<string, unknown>;

/** The one run of an action that an allow, or a claimed approval, grants; report its outcome by `expires_at`. */
export interface Execution {
  id: number;
  state: "granted" | "succeeded" | "failed";
  action: string;
  approval_id: number | null;
  granted_at: string;
  expires_at: string;
  reported_at?: string | null;
  detail?: string;
  outcome_url?: string;
}

/** The rule that decided a dispatch, with the values of the call its condition read. */
export interface Rule {
  id: number;
  position: number;
  shadow: boolean;
  condition: string;
  outcome: string;
  reason?: string;
  quorum?: number | null;
  approver_roles?: string[];
  values?: Json;
}

export interface DispatchResult {
  decision: Decision;
  code: string;
  reason: string;
  workflow: string;
  action: string;
  tier: number;
  business_hours: boolean;
  risk?: string | null;
  approval_id?: number | null;
  poll_url?: string | null;
  due_at?: string | null;
  quorum?: number | null;
  approver_roles?: string[];
  rule?: Rule | null;
  execution?: Execution | null;
  /** True when the server answered a retry (same Idempotency-Key) with its first answer. */
  replayed: boolean;
}

export interface ApprovalDecision {
  verdict: string;
  decided_by: string;
  justification: string;
  reason: string;
  level: number;
  decided_at: string;
}

export interface Approval {
  id: number;
  workflow: string;
  kind: string;
  action: string;
  state: string;
  outcome: Decision;
  mode: string;
  level: number;
  quorum: number;
  due_at: string;
  created_at: string;
  closed_at?: string | null;
  closed_by?: string;
  parameters?: Json;
  decisions: ApprovalDecision[];
  approver_roles?: string[];
  held?: boolean;
  claim_by?: string | null;
  claim_expired?: boolean;
  execution?: Execution | null;
  rule?: Rule | null;
  poll_url?: string;
  execute_url?: string;
}

/** One metric sample: `observed_at` is a Date or an ISO-8601 string with a time zone. */
export interface Sample {
  metric: string;
  value: number;
  observed_at: Date | string;
  segment?: string;
  ring?: number;
}

export interface SignalsResult {
  plan: number;
  received: number;
  stored: number;
  duplicates: number;
  evaluation?: string;
}

export interface Route {
  workflow: string;
  version: string | null;
  mode: string;
  exposed: boolean;
  exposure_percent: number;
  workflow_paused: boolean;
  plan?: number | null;
  state?: string | null;
  ring?: number | null;
}

export interface ProposalResult {
  id: number;
  plan: number;
  kind: string;
  state: string;
  handling: string;
  created: boolean;
  tier?: number | null;
  approval_id?: number | null;
  poll_url?: string | null;
  plan_state?: string;
  context_tag?: Json | null;
}

/** Whether an approval is still waiting for a person. */
export function isPending(approval: Approval): boolean {
  return approval.outcome === "pending";
}

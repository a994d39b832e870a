export { RingfenceClient, USER_AGENT, newKey, retryDelay } from "./client.js";
export type { Call, ClientOptions, RetryPolicy } from "./client.js";
export {
  ApiError, DecisionTimeout, Denied, NotExecuted, PendingApproval, RingfenceError, TransportError,
} from "./errors.js";
export type { FieldProblem } from "./errors.js";
export { guard } from "./guard.js";
export type { GuardOptions } from "./guard.js";
export { isPending } from "./types.js";
export type {
  Approval, ApprovalDecision, Decision, DispatchResult, Execution, Json, ProposalResult, Route, Rule, Sample,
  SignalsResult,
} from "./types.js";

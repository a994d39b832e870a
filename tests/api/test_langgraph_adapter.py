"""The LangGraph adapter against a live Ringfence: a graph node (or a ToolNode driven by a fake
chat model) interrupts while a person decides, and is resumed with the decision, running once."""

from __future__ import annotations

import json
import time
from typing import Any, TypedDict

import pytest
from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
from langchain_core.messages import AIMessage, HumanMessage
from langchain_core.tools import tool
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.graph import END, START, MessagesState, StateGraph
from langgraph.prebuilt import ToolNode, tools_condition

from approvals.models import ApprovalRequest, Execution
from ringfence_client import Denied, RingfenceClient
from ringfence_client.callbacks import signature
from ringfence_client.langgraph import guarded, pending_approvals, resume, resume_from_callback
from tests.api.conftest import decide

pytestmark = pytest.mark.django_db(transaction=True)


class Refund(TypedDict, total=False):
    order: str
    amount: str
    result: str


def refund_graph(rf: RingfenceClient, calls: list, action: str = "refund_customer"):
    @guarded(rf, "refund-agent", action)
    def refund(order: str, amount: str) -> str:
        calls.append(order)
        return f"refunded {amount} on {order}"

    def node(state: Refund) -> dict[str, Any]:
        return {"result": refund(order=state["order"], amount=state["amount"])}

    builder = StateGraph(Refund)
    builder.add_node("refund", node)
    builder.add_edge(START, "refund")
    builder.add_edge("refund", END)
    return builder.compile(checkpointer=InMemorySaver())


def test_a_pending_call_interrupts_and_runs_once_when_resumed_after_approval(rf, approver):
    calls: list = []
    graph = refund_graph(rf, calls)
    config = {"configurable": {"thread_id": "ticket-7"}}

    first = graph.invoke({"order": "A-1", "amount": "40.00"}, config)
    (waiting,) = first["__interrupt__"]
    assert waiting.value["approval_id"] == ApprovalRequest.objects.get().pk
    assert waiting.value["poll_url"].endswith(str(waiting.value["approval_id"]))
    assert waiting.value["parameters"] == {"order": "A-1", "amount": "40.00"} and calls == []

    decide(waiting.value["approval_id"], approver, "approve")
    done = resume(graph, config, rf, timeout=10)
    assert done["result"] == "refunded 40.00 on A-1" and calls == ["A-1"]
    # The node re-ran on resume and asked again with the same key: still one request, one execution.
    assert ApprovalRequest.objects.count() == 1
    assert ApprovalRequest.objects.get().execution.state == "succeeded"
    assert pending_approvals(graph, config) == []
    with pytest.raises(ValueError, match="not interrupted"):
        resume(graph, config, rf)


def test_resume_waits_for_the_person(rf, approver):
    import threading

    from django.db import connection

    calls: list = []
    graph = refund_graph(rf, calls)
    config = {"configurable": {"thread_id": "ticket-8"}}
    approval_id = graph.invoke({"order": "B-1", "amount": "5.00"}, config)["__interrupt__"][0].value["approval_id"]

    def later() -> None:
        try:
            time.sleep(0.3)
            decide(approval_id, approver, "approve")
        finally:
            connection.close()

    person = threading.Thread(target=later)
    person.start()
    done = resume(graph, config, rf, timeout=15, poll=10)
    person.join()
    assert done["result"] == "refunded 5.00 on B-1" and calls == ["B-1"]


def test_a_rejected_call_never_runs(rf, approver):
    calls: list = []
    graph = refund_graph(rf, calls)
    config = {"configurable": {"thread_id": "ticket-9"}}
    approval_id = graph.invoke({"order": "C-1", "amount": "900.00"}, config)["__interrupt__"][0].value["approval_id"]
    decide(approval_id, approver, "reject")
    with pytest.raises(Denied, match="rejected"):
        resume(graph, config, rf, timeout=10)
    assert calls == [] and not Execution.objects.exists()


def test_allowed_runs_at_once_and_denied_never(rf):
    calls: list = []
    assert refund_graph(rf, calls, "send_receipt").invoke(
        {"order": "D-1", "amount": "0"}, {"configurable": {"thread_id": "t1"}})["result"] == "refunded 0 on D-1"
    with pytest.raises(Denied):
        refund_graph(rf, calls, "wire_money").invoke({"order": "D-2", "amount": "1"},
                                                     {"configurable": {"thread_id": "t2"}})
    assert calls == ["D-1"] and Execution.objects.get().state == "succeeded"


def test_a_tool_node_driven_by_a_chat_model_resumes_from_a_signed_callback(rf, agent, api, approver):
    calls: list = []

    @tool
    @guarded(rf, "refund-agent", "refund_customer")
    def refund(order: str, amount: str) -> str:
        """Refund an order."""
        calls.append(order)
        return f"refunded {amount} on {order}"

    model = GenericFakeChatModel(messages=iter([
        AIMessage("", tool_calls=[{"name": "refund", "args": {"order": "E-1", "amount": "12.00"}, "id": "call-1"}]),
        AIMessage("Refunded."),
    ]))

    def assistant(state: MessagesState) -> dict[str, Any]:
        return {"messages": [model.invoke(state["messages"])]}

    builder = StateGraph(MessagesState)
    builder.add_node("assistant", assistant)
    builder.add_node("tools", ToolNode([refund]))
    builder.add_edge(START, "assistant")
    builder.add_conditional_edges("assistant", tools_condition)
    builder.add_edge("tools", "assistant")
    graph = builder.compile(checkpointer=InMemorySaver())
    config = {"configurable": {"thread_id": "chat-1"}}

    first = graph.invoke({"messages": [HumanMessage("refund E-1 please")]}, config)
    approval_id = first["__interrupt__"][0].value["approval_id"]
    decide(approval_id, approver, "approve")

    # What Ringfence POSTs to a callback_url when the request closes: the approval, signed with the token.
    body = json.dumps(api.get(f"/api/v1/approvals/{approval_id}").json()).encode()
    stamp = str(int(time.time()))
    headers = {"X-Ringfence-Timestamp": stamp, "X-Ringfence-Signature": signature(agent.token, stamp, body)}
    done = resume_from_callback(graph, config, agent.token, headers, body)

    assert done["messages"][-1].content == "Refunded."
    assert done["messages"][-2].content == "refunded 12.00 on E-1" and calls == ["E-1"]
    assert ApprovalRequest.objects.get().execution.state == "succeeded"


def test_an_allowed_call_beside_a_pending_one_in_a_tool_node_step_runs_once(rf, approver):
    """The interrupt of the pending call discards the allowed call's result; the node re-runs on resume
    and its dispatch is answered by the first (replayed) allow: the allowed function must not run again."""
    receipts: list = []
    refunds: list = []

    @tool
    @guarded(rf, "refund-agent", "send_receipt")
    def receipt(order: str) -> str:
        """Send a receipt."""
        receipts.append(order)
        return f"receipt sent for {order}"

    @tool
    @guarded(rf, "refund-agent", "refund_customer")
    def refund(order: str, amount: str) -> str:
        """Refund an order."""
        refunds.append(order)
        return f"refunded {amount} on {order}"

    model = GenericFakeChatModel(messages=iter([
        AIMessage("", tool_calls=[{"name": "receipt", "args": {"order": "F-1"}, "id": "call-1"},
                                  {"name": "refund", "args": {"order": "F-1", "amount": "12.00"}, "id": "call-2"}]),
        AIMessage("Done."),
    ]))

    def assistant(state: MessagesState) -> dict[str, Any]:
        return {"messages": [model.invoke(state["messages"])]}

    builder = StateGraph(MessagesState)
    builder.add_node("assistant", assistant)
    builder.add_node("tools", ToolNode([receipt, refund], handle_tool_errors=True))
    builder.add_edge(START, "assistant")
    builder.add_conditional_edges("assistant", tools_condition)
    builder.add_edge("tools", "assistant")
    graph = builder.compile(checkpointer=InMemorySaver())
    config = {"configurable": {"thread_id": "chat-2"}}

    first = graph.invoke({"messages": [HumanMessage("receipt and refund for F-1")]}, config)
    (waiting,) = first["__interrupt__"]
    assert receipts == ["F-1"] and refunds == []
    decide(waiting.value["approval_id"], approver, "approve")
    done = resume(graph, config, rf, timeout=10)

    assert receipts == ["F-1"] and refunds == ["F-1"]
    told = {m.tool_call_id: m.content for m in done["messages"] if m.type == "tool"}
    assert "already allowed" in told["call-1"] and told["call-2"] == "refunded 12.00 on F-1"
    assert sorted(Execution.objects.values_list("state", flat=True)) == ["succeeded", "succeeded"]


def test_positional_arguments_and_defaults_are_the_parameters_ringfence_sees(rf):
    calls: list = []

    @guarded(rf, "refund-agent", "refund_customer")
    def refund(order: str, amount: str, currency: str = "EUR") -> str:
        calls.append(order)
        return f"refunded {amount} {currency} on {order}"

    def node(state: Refund) -> dict[str, Any]:
        return {"result": refund(state["order"], state["amount"])}

    builder = StateGraph(Refund)
    builder.add_node("refund", node)
    builder.add_edge(START, "refund")
    builder.add_edge("refund", END)
    graph = builder.compile(checkpointer=InMemorySaver())

    first = graph.invoke({"order": "A-9", "amount": "400"}, {"configurable": {"thread_id": "ticket-10"}})
    assert first["__interrupt__"][0].value["parameters"] == {"order": "A-9", "amount": "400", "currency": "EUR"}
    assert ApprovalRequest.objects.get().parameters == {"order": "A-9", "amount": "400", "currency": "EUR"}
    assert calls == []

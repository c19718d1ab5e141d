"""Microsoft Teams notices: a gate as an Adaptive Card (version 1.5), built with ``adaptive-cards-py``.

A card is posted to a Teams Workflows ("When a Teams webhook request is received") or
incoming-webhook URL as a ``message`` with one Adaptive Card attachment (:func:`teams_message`).
It shows the notice's headline, the request's title, description and reason, where the gate
is and who asked, its expiry, the approvals so far, what it binds, its context as a
``FactSet``, how it ended (final events), and an ``Action.OpenUrl`` button to the request in
Airflow's pages. People decide in Airflow: a card carries no decision of its own.

Teams renders a Markdown subset in ``TextBlock`` text and in ``Fact`` titles and values
(bold, italic, lists, links, ``<at>`` mentions), and its clients turn bare URLs into links.
Every text on a card goes through :func:`teams_escape`, so nothing a DAG or a user wrote
becomes markup or a link; our own look comes from element properties, never from Markdown.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any, Final, Literal

from adaptive_cards import card as ac
from adaptive_cards import types as act

from airflow_hitl.notifications.templates import humanize
from airflow_hitl.records import Approval
from airflow_hitl.spec import utcnow
from airflow_hitl.vocabulary import State

#: The Adaptive Cards schema version every card declares (and is validated against in CI).
CARD_VERSION: Final[Literal["1.5"]] = "1.5"
#: The attachment type of an Adaptive Card in a Teams message.
ADAPTIVE_CARD_CONTENT_TYPE = "application/vnd.microsoft.card.adaptive"
#: The HTTP connection of the Teams webhook when a gate names none (``teams_conn_id``).
DEFAULT_TEAMS_CONN_ID = "teams_default"
#: Teams refuses a webhook message over 28 KB; the card keeps this much, the rest is the envelope.
MAX_CARD_BYTES = 26_000
#: The longest text of one element and of one fact (longer is cut, the whole stays in Airflow).
MAX_TEXT = 2000
MAX_FACT_TITLE = 200
MAX_FACT_VALUE = 600

# U+2060 WORD JOINER: invisible, and a character that no link detector takes for part of a
# scheme ("https:", "//") or of a domain label, so text keeps its look and loses its link.
_WJ = "\u2060"
# ASCII characters that start inline Markdown anywhere in a line: emphasis (* _ ~), code
# spans, links and images ([ ]), autolinks, HTML and <at> mentions (< >), entities (&), and
# the backslash itself. CommonMark defines a backslash before any of them as the literal.
_INLINE = re.compile(r"([\\`*_~\[\]<>&])")
# What starts a block at the beginning of a line: a list item (- +), a heading (#), a setext
# underline or thematic break (= -), a table row (|).
_BLOCK_START = re.compile(r"^(\u00a0*)([-+=#|])", re.MULTILINE)
# An ordered list item: up to nine digits and ``.`` or ``)`` at the beginning of a line.
_ORDERED = re.compile(r"^(\u00a0*\d{1,9})([.)])", re.MULTILINE)
# Indentation: four spaces make a code block; no-break spaces look the same and make none.
_INDENT = re.compile(r"^[ \t]+", re.MULTILINE)
# ``scheme:`` (https:, mailto:, ...), ``//`` of a scheme-relative URL, ``@`` of an email
# address, ``.`` before a domain label or a number of an IP address.
_SCHEME_COLON = re.compile(r"(?<=[A-Za-z]):(?=\S)")
_AT = re.compile(r"@(?=\S)")
_DOUBLE_SLASH = re.compile(r"/(?=/)")
_DOMAIN_DOT = re.compile(r"\.(?=[^\W_])")
# Adaptive Cards' {{DATE(...)}} and {{TIME(...)}} functions.
_DOUBLE_BRACE = re.compile(r"\{(?=\{)")


def teams_escape(value: Any) -> str:
    """Make ``value`` inert text for a Teams card: no Markdown, no mention, no link.

    The one escaping function for everything from a user or a DAG that reaches a card.
    Markdown's inline characters get a backslash (CommonMark's literal); a list, heading,
    quote or rule marker that starts a line gets one too; indentation becomes no-break
    spaces (no code block); and a word joiner (U+2060, invisible) goes after the ``:`` of a
    scheme, between the slashes of ``//``, after an ``@`` and after a dot followed by a
    letter or digit, so no client recognises a URL, a domain, an IP address or an email
    address. The text still reads as typed.
    """
    text = str(value).replace("\r\n", "\n").replace("\r", "\n")
    text = _INDENT.sub(lambda m: "\u00a0" * len(m.group(0).expandtabs(4)), text)
    text = _INLINE.sub(r"\\\1", text)
    text = _BLOCK_START.sub(r"\1\\\2", text)
    text = _ORDERED.sub(r"\1\\\2", text)
    text = _SCHEME_COLON.sub(":" + _WJ, text)
    text = _DOUBLE_SLASH.sub("/" + _WJ, text)
    text = _DOMAIN_DOT.sub("." + _WJ, text)
    text = _AT.sub("@" + _WJ, text)
    return _DOUBLE_BRACE.sub("{" + _WJ, text)


def _cut(value: str, limit: int) -> str:
    # Cut before escaping, so a cut never splits an escape.
    return value if len(value) <= limit else value[: limit - 1] + "…"


def _shown(value: Any) -> str:
    """A context or bound value as text: compact JSON for structures, as is otherwise."""
    if isinstance(value, (dict, list, tuple)):
        return json.dumps(value, default=str, sort_keys=True)
    return "" if value is None else str(value)


def _text(value: Any, *, limit: int = MAX_TEXT, **style: Any) -> ac.TextBlock:
    return ac.TextBlock(text=teams_escape(_cut(str(value), limit)), wrap=True, **style)


def _fact(title: Any, value: Any, *, limit: int = MAX_FACT_VALUE) -> ac.Fact:
    return ac.Fact(
        title=teams_escape(_cut(str(title), min(limit, MAX_FACT_TITLE))),
        value=teams_escape(_cut(_shown(value), min(limit, MAX_FACT_VALUE))),
    )


def _size(model: ac.Fact | ac.AdaptiveCard) -> int:
    return len(model.model_dump_json(exclude_none=True, by_alias=True, warnings=False).encode())


def expiry_text(approval: Approval) -> str | None:
    """``2026-05-01 14:00 UTC (in 2 hours)`` while waiting; the time alone once decided; None without expiry."""
    if approval.expires_at is None:
        return None
    stamp = approval.expires_at.strftime("%Y-%m-%d %H:%M UTC")
    if not approval.is_waiting:
        return stamp
    return f"{stamp} (in {humanize(approval.expires_at - utcnow())})"


def gate_facts(approval: Approval, *, limit: int = MAX_FACT_VALUE) -> list[ac.Fact]:
    """Where the gate is, who asked, when it expires and how many approvals it has."""
    facts = [
        _fact("DAG", approval.dag_id, limit=limit),
        _fact("Task", approval.task_id or "-", limit=limit),
        _fact("Run", approval.run_id or "-", limit=limit),
        _fact("Requested by", approval.requested_by or "(scheduler)", limit=limit),
    ]
    expiry = expiry_text(approval)
    if expiry:
        facts.append(_fact("Expires", expiry))
    facts.append(_fact("Approvals", f"{len(approval.approvers)} of {approval.approvals_needed}"))
    return facts


def _outcome_color(approval: Approval) -> act.Colors:
    if approval.is_waiting:
        return act.Colors.DEFAULT
    if approval.approved:
        return act.Colors.GOOD
    return act.Colors.WARNING if approval.state == State.CANCELLED else act.Colors.ATTENTION


#: Text limits tried in turn until the card's own texts leave room for its facts.
_TEXT_LIMITS = (MAX_TEXT, 500, 100)
#: What a section's heading, its FactSet and a "more in Airflow" fact take at most.
_SECTION_BYTES = 400


def _budgeted_facts(items: Mapping[str, Any], budget: int) -> tuple[list[ac.Fact], int]:
    """As many facts of ``items`` as ``budget`` bytes hold (and one saying what was left out); what they took."""
    facts: list[ac.Fact] = []
    used = 0
    entries = list(items.items())
    for index, (key, value) in enumerate(entries):
        fact = _fact(key, value)
        cost = _size(fact) + 1  # and its separator
        if used + cost > budget:
            facts.append(_fact("…", f"{len(entries) - index} more in Airflow"))
            break
        used += cost
        facts.append(fact)
    return facts, used


def _fixed_body(approval: Approval, *, headline: str, limit: int) -> list[Any]:
    """The card's texts and the gate's facts, each text cut at ``limit`` characters."""
    body: list[Any] = [
        _text(
            headline,
            limit=limit,
            size=act.FontSize.MEDIUM,
            weight=act.FontWeight.BOLDER,
            style=act.TextBlockStyle.HEADING,
        ),
        _text(approval.title, limit=limit, weight=act.FontWeight.BOLDER),
    ]
    if approval.description:
        body.append(_text(approval.description, limit=limit))
    if approval.reason:
        body.append(_text(f"Reason: {approval.reason}", limit=limit))
    body.append(ac.FactSet(facts=gate_facts(approval, limit=limit)))
    if approval.opened_over_api:
        body.append(_text("Opened over the API (no task's gate).", is_subtle=True))
    return body


def approval_card(
    approval: Approval,
    *,
    headline: str,
    details_url: str | None,
    footer: str | None = None,
) -> ac.AdaptiveCard:
    """The Adaptive Card (1.5) of one notice about ``approval``.

    ``headline`` is the notice's subject (it quotes the request, so it is escaped like every
    other text); ``footer`` says how the request ended (final events); ``details_url`` is the
    request's page in Airflow, the card's one button. What the gate binds and its context
    follow the gate's facts, as many as a Teams message holds (the rest is in Airflow): the
    card is never refused for its size. Long texts are cut, shorter when they alone would
    fill the card.
    """
    sections = [
        (name, items) for name, items in (("Approving exactly", approval.bound), ("Context", approval.context)) if items
    ]
    for limit in _TEXT_LIMITS:
        body = _fixed_body(approval, headline=headline, limit=limit)
        ending = (
            [_text(footer, limit=limit, weight=act.FontWeight.BOLDER, color=_outcome_color(approval), separator=True)]
            if footer
            else []
        )
        builder = ac.AdaptiveCardBuilder().version(CARD_VERSION).add_items(body + ending)
        if details_url:
            builder.add_action(ac.ActionOpenUrl(title="Open in Airflow", url=details_url))
        card = builder.create()
        room = MAX_CARD_BYTES - _size(card) - _SECTION_BYTES * len(sections)
        if room >= 2000 * len(sections):
            break
    for name, items in sections:
        # Bound values (bind=) first: what the approver approves exactly, as pages and emails show it.
        facts, used = _budgeted_facts(items, room)
        room -= used
        body += [_text(name, weight=act.FontWeight.BOLDER, separator=True), ac.FactSet(facts=facts)]
    card.body = body + ending
    return card


def text_card(text: str, *, title: str | None = None) -> ac.AdaptiveCard:
    """A card of plain text (escaped), with an optional bold title: :class:`HitlTeamsNotifier` on its own."""
    body: list[Any] = [_text(title, weight=act.FontWeight.BOLDER, size=act.FontSize.MEDIUM)] if title else []
    body.append(_text(text or "-"))
    return ac.AdaptiveCardBuilder().version(CARD_VERSION).add_items(body).create()


def card_json(card: ac.AdaptiveCard | Mapping[str, Any]) -> dict[str, Any]:
    """The card as plain JSON (what Teams receives; enums as their words)."""
    if isinstance(card, ac.AdaptiveCard):
        return dict(json.loads(card.to_json()))
    return dict(card)


def teams_message(card: ac.AdaptiveCard | Mapping[str, Any]) -> dict[str, Any]:
    """The message a Teams Workflows or incoming webhook takes: one Adaptive Card attachment."""
    return {
        "type": "message",
        "attachments": [{"contentType": ADAPTIVE_CARD_CONTENT_TYPE, "contentUrl": None, "content": card_json(card)}],
    }

"""The case decision inside an accept: the index question asked first, then the rules, once.

The rules (`gateway.core.case.apply`) are pure and may ask the store one thing about other cases:
whether the person already has an open case at the outbound agency of the case a message would
open. The message names that question before the store decides (`IncomingMessage.opens_case_of`,
from `gateway.core.case.index_question`), so the store reads the answer with one query in the
transaction, together with the case itself, and then runs the decision once, with the answer at
hand when the transfer has no case yet. A message that names no question (any but the one that
opens a case) costs no query. A question the message did not name is a defect of the caller and
raises UnaskedQuestion rather than be guessed.

The question names the person by their keys under every configured secret (`gateway.core.personkeys`):
an open case keyed under an older secret, not yet keyed again by the upkeep, is found as well.

Across replicas the answer can be stale by the time the transaction commits: two replicas may
both find no open case and both open one. The accept takes the person's named locks first (one
per key, `lock_names`), so two openings of one person wait for each other even on replicas whose
current secrets differ during a rotation; the unique index `cases_one_open_per_person` is the
last word under one key; its refusal is turned into the rule's own refusal by
`constraint_violation`.
"""

from __future__ import annotations

from typing import NamedTuple

from gateway.core.case import Case, Decision
from gateway.core.errors import RuleViolation
from gateway.core.personkeys import PersonKey
from gateway.store.port import Decide, IncomingMessage, UnaskedQuestion
from gateway.store.steps import QueryOne, marks

# The unique index behind the one-open-case rule: a race between replicas ends here.
ONE_OPEN_CASE_INDEX = "cases_one_open_per_person"


class _OpenCase(NamedTuple):
    transfer_id: str


class _Answers:
    """The `CaseIndex` a decision gets: the answers read before it ran, and nothing else."""

    __slots__ = ("_answers",)

    def __init__(self, answers: dict[tuple[tuple[PersonKey, ...], str], str | None]) -> None:
        self._answers = answers

    def open_case_for(self, person: tuple[PersonKey, ...], outbound: str) -> str | None:
        try:
            return self._answers[(person, outbound)]
        except KeyError:
            raise UnaskedQuestion(
                f"the decision asked about a case at outbound agency {outbound} that its message did not name in"
                " IncomingMessage.opens_case_of") from None


_NOTHING_ASKED = _Answers({})


def open_case_query(message: IncomingMessage) -> QueryOne[_OpenCase] | None:
    """The query that answers the index question `message` names (None: it names none). The
    accept reads it with the case, before it knows whether the transfer has a case yet."""
    question = message.opens_case_of
    if question is None:
        return None
    person, outbound = question
    digests = [k.digest for k in person]
    return QueryOne(f"SELECT transfer_id FROM cases WHERE person_key IN ({marks(len(digests))}) AND outbound = ?"
                    " AND closed = 0", (*digests, outbound), _OpenCase)


def decide_case(message: IncomingMessage, decide: Decide, case: Case | None, open_case: _OpenCase | None) -> Decision:
    """`decide` on `case` as committed; if the transfer has no case yet, with the index question of
    `message` answered by `open_case` (what `open_case_query` read). Raises what `decide` raises,
    or UnaskedQuestion."""
    question = message.opens_case_of
    if case is not None or question is None:
        return decide(case, _NOTHING_ASKED)
    return decide(case, _Answers({question: None if open_case is None else open_case.transfer_id}))


def constraint_violation(constraint: str) -> RuleViolation:
    """The rule a schema constraint enforces, refused in the rule's own words where there is one.
    `constraint` is PostgreSQL's constraint name or SQLite's message (which names the columns)."""
    if ONE_OPEN_CASE_INDEX in constraint or "cases.person_key, cases.outbound" in constraint:
        return RuleViolation("this person already has an open case at this outbound agency",
                             reason="CASE_ALREADY_OPEN")
    return RuleViolation(f"refused by the store's constraints: {constraint}", reason="STORE_CONSTRAINT_VIOLATED")

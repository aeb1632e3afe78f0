"""The demo's casework as data (pure, seeded): visits, and per case the officers' steps in
order, each naming who acts (and on whose behalf). Nothing here does I/O.

Probabilities are the demo's assumptions, chosen so every rule of docs/domain.md shows up in a day
at small scale: one-time notification, supplies, withdrawals, hand-offs up, returns down with
reasons, A/B backups acting, reassignment by a supervisor, an exceptional second document
request, decisions with a basis, closures, a reopening, and cases left waiting (running late).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

from services.demo.cast import Cast
from shared.reference import Level, ServiceType

P_MISSING_DOCUMENTS = 0.30   # the resident did not bring everything: one-time notification
P_WITHDRAW = 0.05            # …and then gives up
P_STILL_WAITING = 0.15       # …and has not come back yet (clock paused)
P_BACKUP_ACTS = 0.12         # the owner is away: their designated backup acts for them (A/B)
P_NOTE = 0.10
P_STALL = 0.04               # nobody acts on the case any more at a level: it runs late
P_RETURN = 0.08              # the upper level sends it back down with reasons
P_REASSIGN = 0.03            # a supervisor gives it to the backup officer
P_SECOND_REQUEST = 0.02      # an inadequate document: another request, supervisor approved
P_REFUSE = 0.12
P_CLOSE = 0.92
P_REOPEN = 0.02
TAG = "（演示，合成）"


@dataclass(frozen=True)
class Step:
    """One officer's command on a case: ``verb`` is the cases API path segment."""

    verb: str
    actor: str
    body: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class CaseScript:
    service_code: str
    steps: tuple[Step, ...]
    ending: str  # closed | decided | withdrawn | waiting_documents | stalled


@dataclass
class _Script:
    """Builds a case's steps while tracking who owns it where (first-inquiry responsibility)."""

    service: ServiceType
    cast: Cast
    rng: random.Random
    owner: str
    level: str = "community"
    owners: dict[str, str] = field(default_factory=dict)
    steps: list[Step] = field(default_factory=list)

    def chance(self, p: float) -> bool:
        return self.rng.random() < p

    def by_owner(self, verb: str, **body: Any) -> None:
        """The owner acts, or (sometimes) their designated backup on their behalf."""
        backup = self.backup_of(self.owner)
        if backup is not None and self.chance(P_BACKUP_ACTS):
            self.steps.append(Step(verb, backup, {**body, "acting_for": self.owner}))
        else:
            self.steps.append(Step(verb, self.owner, body))

    def backup_of(self, user: str) -> str | None:
        post = self.cast.at(self.level)
        return post.b if user == post.a else post.a if user == post.b else None

    def move(self, level: str, owner: str) -> None:
        self.owners[self.level] = self.owner
        self.level, self.owner = level, owner


def case_script(service: ServiceType, cast: Cast, missing: tuple[str, ...],
                rng: random.Random) -> CaseScript:
    """The steps after intake opened the case (submitted, accepted by the receiving clerk,
    and the one-time notification when ``missing`` is not empty)."""
    s = _Script(service, cast, rng, owner=cast.at("community").a)
    ending = _documents_at_counter(s, missing)
    if ending is None:
        ending = _work_up_the_chain(s)
    return CaseScript(service.code, tuple(s.steps), ending)


def _documents_at_counter(s: _Script, missing: tuple[str, ...]) -> str | None:
    if not missing:
        return None
    if s.chance(P_WITHDRAW):
        s.by_owner("withdraw", reason="申请人撤回申请" + TAG)
        return "withdrawn"
    if s.chance(P_STILL_WAITING):
        return "waiting_documents"
    if len(missing) > 1 and s.chance(0.3):
        half = len(missing) // 2
        s.by_owner("supply-documents", documents=list(missing[:half]))
        missing = missing[half:]
    s.by_owner("supply-documents", documents=list(missing))
    return None


def _work_up_the_chain(s: _Script) -> str:
    if s.chance(P_NOTE):
        s.by_owner("notes", text="已核对身份证件原件" + TAG)
    for upper in [str(level) for level in s.service.chain[1:]]:
        if s.chance(P_STALL):
            return "stalled"
        _hand_up(s, upper)
        if s.chance(P_RETURN):
            _return_and_resubmit(s, upper)
        _maybe_reassign(s)
        _maybe_second_request(s)
    if s.chance(P_STALL):
        return "stalled"
    return _decide(s)


def _hand_up(s: _Script, upper: str) -> None:
    s.by_owner("hand-off", note="请审核" + TAG)
    post = s.cast.at(upper)
    s.move(upper, post.a)
    s.by_owner("receive")  # the receiving post (A, or B acting for A) becomes the owner


def _return_and_resubmit(s: _Script, upper: str) -> None:
    lower = str(s.service.previous_level(Level(upper)))
    s.by_owner("return", reasons=["材料复印件不清晰，请核实后重新报送" + TAG])
    upper_owner = s.owner
    s.move(lower, s.owners[lower])
    s.by_owner("hand-off", note="已核实材料，重新报送" + TAG)
    s.move(upper, upper_owner)
    s.by_owner("receive")


def _maybe_reassign(s: _Script) -> None:
    post = s.cast.at(s.level)
    if post.supervisor is None or post.b is None or not s.chance(P_REASSIGN):
        return
    to = post.b if s.owner == post.a else post.a
    s.steps.append(Step("reassign", post.supervisor,
                        {"to_owner": to, "reason": "工作量调整" + TAG}))
    s.owner = to


def _maybe_second_request(s: _Script) -> None:
    post = s.cast.at(s.level)
    if not s.service.required_documents or post.supervisor is None:
        return
    if not s.chance(P_SECOND_REQUEST):
        return
    doc = s.rng.choice(s.service.required_documents)
    s.by_owner("request-documents", documents=[doc], note="材料不完整" + TAG,
               approved_by=post.supervisor)
    s.by_owner("supply-documents", documents=[doc])


def _decide(s: _Script) -> str:
    refused = s.chance(P_REFUSE)
    s.by_owner("decide", outcome="refused" if refused else "approved",
               basis=("不符合申请条件" if refused else "符合政策规定条件") + TAG)
    if not s.chance(P_CLOSE):
        return "decided"
    s.by_owner("close")
    if s.chance(P_REOPEN):
        s.by_owner("reopen", reason="申请人提出异议，复核" + TAG)
        s.by_owner("decide", outcome="approved", basis="复核后符合条件" + TAG)
        s.by_owner("close")
    return "closed"

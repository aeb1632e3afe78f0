"""Typed rejections: each class name reads as the rule that refused the command.

``kind`` maps to an HTTP status later (forbidden → 403, conflict → 409, invalid → 422,
not_found → 404); ``field`` names the command field at fault (for problem+json).
"""

from __future__ import annotations

import re
from typing import ClassVar, Literal

Kind = Literal["forbidden", "conflict", "invalid", "not_found"]
_WORD = re.compile(r"[A-Z][a-z]*|[a-z]+|\d+")


def sentence(class_name: str) -> str:
    """``OnlyTheHoldingUnitMayAct`` → ``Only the holding unit may act``."""
    words = _WORD.findall(class_name)
    return " ".join([words[0], *(w.lower() for w in words[1:])])


class Rejection(Exception):
    """The domain refused a command. ``reason`` is a sentence, ``field`` the culprit field."""

    kind: ClassVar[Kind] = "conflict"
    default_field: ClassVar[str | None] = None

    def __init__(self, detail: str | None = None, *, field: str | None = None) -> None:
        self.detail = detail
        self.field = field or self.default_field
        self.reason = sentence(type(self).__name__) + (f": {detail}" if detail else "")
        super().__init__(self.reason)


class NotAllowed(Rejection):
    kind = "forbidden"


class NotNow(Rejection):
    kind = "conflict"


class NotValid(Rejection):
    kind = "invalid"


class NotFound(Rejection):
    kind = "not_found"


# ------------------------------------------------------------ who may act


class ActorIsNotInTheStaffDirectory(NotAllowed):
    default_field = "actor.user_id"


class ActorDoesNotMatchTheStaffDirectory(NotAllowed):
    default_field = "actor"


class AuditorsOnlyRead(NotAllowed):
    default_field = "actor.role"


class OnlyTheDesignatedBackupMayActForAnother(NotAllowed):
    default_field = "actor.acting_for"


class OnlyStaffMayDoThis(NotAllowed):
    default_field = "actor.role"


class OnlyTheSlaClockFiresTimers(NotAllowed):
    default_field = "actor.role"


class OnlyOtherSystemsRecordExternalResults(NotAllowed):
    default_field = "actor.role"


class OnlyTheHoldingUnitMayAct(NotAllowed):
    default_field = "actor.unit"


class SystemsActOnlyWithinTheirUnit(NotAllowed):
    default_field = "actor.unit"


class RoleDoesNotFitTheHoldingLevel(NotAllowed):
    default_field = "actor.role"


class OnlyTheOwnerMayAct(NotAllowed):
    default_field = "actor.user_id"


class OnlyTheDecidingLevelMayDecide(NotAllowed):
    default_field = "actor.unit"


class OverrideMustComeFromASupervisorOverTheCase(NotAllowed):
    default_field = "approved_by"


# ------------------------------------------------------------ not in this state


class CaseDoesNotExist(NotFound):
    default_field = "case_id"


class CaseAlreadyExists(NotNow):
    default_field = "case_id"


class CommandPredatesTheCaseHistory(NotNow):
    default_field = "at"


class CaseIsNotYetAccepted(NotNow):
    pass


class CaseIsAlreadyAccepted(NotNow):
    pass


class CaseIsWaitingForDocuments(NotNow):
    pass


class NoDocumentsWereRequested(NotNow):
    pass


class DocumentsAlreadyRequestedOnce(NotNow):
    default_field = "approved_by"


class HandoffIsNotYetReceived(NotNow):
    pass


class NoHandoffIsPending(NotNow):
    pass


class CaseIsAlreadyDecided(NotNow):
    pass


class OnlyADecidedCaseMayBeClosed(NotNow):
    pass


class CaseIsClosed(NotNow):
    pass


class CaseIsWithdrawn(NotNow):
    pass


class OnlyAClosedCaseMayBeReopened(NotNow):
    pass


class ReopenWindowHasPassed(NotNow):
    default_field = "at"


class ThereIsNoHigherLevelInTheChain(NotNow):
    pass


class ThereIsNoLowerLevelToReturnTo(NotNow):
    pass


class ApprovalNeedsEveryRequiredDocument(NotNow):
    default_field = "outcome"


class SlaWarningIsNotYetDue(NotNow):
    default_field = "at"


class SlaIsNotYetBreached(NotNow):
    default_field = "at"


class ServiceDoesNotEscalateAtThisLevel(NotNow):
    pass


# ------------------------------------------------------------ malformed commands


class UnknownService(NotValid):
    default_field = "service_code"


class CasesAreReceivedOnlyAtStations(NotValid):
    default_field = "station"


class DocumentIsNotInTheChecklist(NotValid):
    default_field = "documents"


class NoDocumentsAreMissing(NotValid):
    default_field = "documents"


class NothingWasSupplied(NotValid):
    default_field = "documents"


class DocumentWasNotRequested(NotValid):
    default_field = "documents"


class ReturnNeedsAReason(NotValid):
    default_field = "reasons"


class DecisionNeedsABasis(NotValid):
    default_field = "basis"


class ReasonMustBeGiven(NotValid):
    default_field = "reason"


class NoteMustNotBeEmpty(NotValid):
    default_field = "text"


class NewOwnerMustWorkTheCaseAtTheHoldingUnit(NotValid):
    default_field = "to_owner"


class AlreadyTheOwner(NotValid):
    default_field = "to_owner"

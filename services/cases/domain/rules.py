"""The rules every command is checked against: who may act (authorisation is a domain rule) and
in which status. Each guard raises a ``Rejection`` or returns what it verified.

A refusal of who acts names the actor's own unit, not the case's: it goes to someone who may
not read the case, and where a case is held tells how far it has come."""

from __future__ import annotations

from collections.abc import Collection, Iterable

from services.cases.domain import errors
from services.cases.domain.state import Case
from shared.contracts.cases import Actor, CaseStatus
from shared.reference import CASE_ROLE_AT_LEVEL, Reference, Role, ServiceType, StaffMember

_BLOCKING_STATUS: dict[CaseStatus, type[errors.Rejection]] = {
    CaseStatus.SUBMITTED: errors.CaseIsNotYetAccepted,
    CaseStatus.DOCUMENTS_REQUESTED: errors.CaseIsWaitingForDocuments,
    CaseStatus.HANDED_OFF: errors.HandoffIsNotYetReceived,
    CaseStatus.DECIDED: errors.CaseIsAlreadyDecided,
    CaseStatus.CLOSED: errors.CaseIsClosed,
    CaseStatus.WITHDRAWN: errors.CaseIsWithdrawn,
}


# ------------------------------------------------------------ the actor


def check_actor(actor: Actor, ref: Reference) -> None:
    """The actor is who the staff directory says; auditors never act; a backup acts only for
    the person whose designated backup they are. Automated actors (role ``system``) pass."""
    if actor.role == Role.SYSTEM:
        return
    member = ref.staff.get(actor.user_id)
    if member is None:
        raise errors.ActorIsNotInTheStaffDirectory(actor.user_id)
    if member.role != actor.role or member.unit != actor.unit:
        raise errors.ActorDoesNotMatchTheStaffDirectory(
            f"{actor.user_id} is a {member.role} at {member.unit}"
        )
    if member.role == Role.AUDITOR:
        raise errors.AuditorsOnlyRead()
    if actor.acting_for is not None:
        principal = ref.staff.get(actor.acting_for)
        if principal is None:
            raise errors.ActorIsNotInTheStaffDirectory(actor.acting_for, field="actor.acting_for")
        if principal.backup != actor.user_id:
            raise errors.OnlyTheDesignatedBackupMayActForAnother(
                f"{actor.user_id} is not the backup of {actor.acting_for}"
            )


def post_of(actor: Actor, ref: Reference) -> StaffMember:
    """The post the actor fills for this action: their own, or — when a designated backup acts
    — the post of the person they act for (A/B roles)."""
    if actor.role == Role.SYSTEM:
        raise errors.OnlyStaffMayDoThis()
    return ref.staff.member(actor.on_behalf_of)


def require_system(actor: Actor, rejection: type[errors.Rejection]) -> None:
    if actor.role != Role.SYSTEM:
        raise rejection()


def require_system_over(actor: Actor, ref: Reference, *units: str) -> None:
    """An automated actor acts for its unit (a source system's registered ``unit``) and every
    unit under it, as people do: one of ``units`` (the station, the holding unit) must lie
    there. ``check_actor`` lets systems pass, so without this a county's system could open
    or touch cases anywhere in the city."""
    if not any(ref.org.is_within(unit, actor.unit) for unit in units):
        raise errors.SystemsActOnlyWithinTheirUnit(
            f"{actor.user_id} acts for {actor.unit} and the units under it")


# ------------------------------------------------------------ the unit and the owner


def require_worker_at_holding_unit(case: Case, actor: Actor, ref: Reference) -> StaffMember:
    """The actor's post is at the unit holding the case, in the role that works that level."""
    post = post_of(actor, ref)
    if post.unit != case.unit:
        raise errors.OnlyTheHoldingUnitMayAct(f"{post.unit} does not hold the case")
    if post.role != CASE_ROLE_AT_LEVEL.get(case.level):
        raise errors.RoleDoesNotFitTheHoldingLevel(
            f"a {post.role} does not work {case.level} cases"
        )
    return post


def require_owner(case: Case, actor: Actor, ref: Reference) -> StaffMember:
    """The actor is the case's owner, or the owner's designated backup acting for them."""
    post = require_worker_at_holding_unit(case, actor, ref)
    if post.user_id != case.owner:
        raise errors.OnlyTheOwnerMayAct(f"the case is owned by {case.owner}")
    return post


def is_supervisor_over(post: StaffMember, case: Case, ref: Reference) -> bool:
    """Supervisors oversee their own unit and every unit under it."""
    return post.role == Role.SUPERVISOR and ref.org.is_within(case.unit, post.unit)


def require_supervisor_or_worker(case: Case, actor: Actor, ref: Reference) -> StaffMember:
    post = post_of(actor, ref)
    if is_supervisor_over(post, case, ref):
        return post
    return require_worker_at_holding_unit(case, actor, ref)


def require_at_or_over_holding_unit(case: Case, actor: Actor, ref: Reference) -> StaffMember:
    """Anyone posted at the holding unit, whatever their role, or a supervisor over it."""
    post = post_of(actor, ref)
    if post.unit != case.unit and not is_supervisor_over(post, case, ref):
        raise errors.OnlyTheHoldingUnitMayAct(f"{post.unit} does not hold the case")
    return post


# ------------------------------------------------------------ status and content


def require_status(
    case: Case, allowed: Collection[CaseStatus], otherwise: type[errors.Rejection]
) -> None:
    """The case is in one of ``allowed``; else the status's own rejection (closed, withdrawn …)
    or ``otherwise``."""
    if case.status not in allowed:
        raise _BLOCKING_STATUS.get(case.status, otherwise)(f"the case is {case.status}")


def service_of(code: str, ref: Reference) -> ServiceType:
    service = ref.catalogue.get(code)
    if service is None:
        raise errors.UnknownService(code)
    return service


def require_in_checklist(service: ServiceType, documents: Iterable[str]) -> None:
    unknown = [d for d in documents if d not in service.required_documents]
    if unknown:
        raise errors.DocumentIsNotInTheChecklist(", ".join(unknown))


def in_checklist_order(service: ServiceType, documents: Collection[str]) -> tuple[str, ...]:
    return tuple(d for d in service.required_documents if d in documents)


def required_text(value: str, rejection: type[errors.Rejection]) -> str:
    text = value.strip()
    if not text:
        raise rejection()
    return text

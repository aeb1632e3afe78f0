"""The pure core of the cases service: ``decide(state, command, ref) -> events`` (or a typed
``Rejection``) and ``evolve(state, event) -> state``. No clock, no ids, no I/O."""

from services.cases.domain.commands import (
    AcceptCase,
    AddNote,
    CloseCase,
    Command,
    DecideCase,
    EscalateOverdueCase,
    HandOffCase,
    RaiseSlaWarning,
    ReassignOwner,
    ReceiveHandoff,
    RecordExternalResult,
    RecordSlaBreach,
    ReopenCase,
    RequestDocuments,
    ReturnCase,
    SubmitCase,
    SupplyDocuments,
    WithdrawCase,
)
from services.cases.domain.decide import authorise, decide, decide_all
from services.cases.domain.errors import Rejection
from services.cases.domain.evolve import evolve, fold
from services.cases.domain.policies import (
    escalations_owed,
    sla_clock_actor,
    timer_commands_due,
)
from services.cases.domain.state import TERMINAL, TIMED, WORKABLE, Case, Timer

__all__ = [
    "TERMINAL",
    "TIMED",
    "WORKABLE",
    "AcceptCase",
    "AddNote",
    "Case",
    "CloseCase",
    "Command",
    "DecideCase",
    "EscalateOverdueCase",
    "HandOffCase",
    "RaiseSlaWarning",
    "ReassignOwner",
    "ReceiveHandoff",
    "RecordExternalResult",
    "RecordSlaBreach",
    "Rejection",
    "ReopenCase",
    "RequestDocuments",
    "ReturnCase",
    "SubmitCase",
    "SupplyDocuments",
    "Timer",
    "WithdrawCase",
    "authorise",
    "decide",
    "decide_all",
    "escalations_owed",
    "evolve",
    "fold",
    "sla_clock_actor",
    "timer_commands_due",
]

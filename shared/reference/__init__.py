"""Reference data: the org tree, the staff directory, the service catalogue and the working-day
calendar, loaded from files and validated once at start-up.

Entry point: ``load_reference(directory) -> Reference``.
"""

from shared.reference.calendar import CHINA_TZ, DayOverride, WorkingCalendar
from shared.reference.catalogue import AutoEscalation, Catalogue, Document, ServiceType
from shared.reference.errors import ReferenceDataError, UnknownReference
from shared.reference.loader import (
    Reference,
    default_reference_dir,
    load_calendar,
    load_catalogue,
    load_org_tree,
    load_reference,
    load_staff,
)
from shared.reference.org import Level, OrgTree, Unit, UnitKind
from shared.reference.staff import CASE_ROLE_AT_LEVEL, Role, StaffDirectory, StaffMember

__all__ = [
    "CASE_ROLE_AT_LEVEL",
    "CHINA_TZ",
    "AutoEscalation",
    "Catalogue",
    "DayOverride",
    "Document",
    "Level",
    "OrgTree",
    "Reference",
    "ReferenceDataError",
    "Role",
    "ServiceType",
    "StaffDirectory",
    "StaffMember",
    "Unit",
    "UnitKind",
    "UnknownReference",
    "WorkingCalendar",
    "default_reference_dir",
    "load_calendar",
    "load_catalogue",
    "load_org_tree",
    "load_reference",
    "load_staff",
]

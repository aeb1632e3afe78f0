"""The two table sets (blue/green) and which one is active.

The DDL is one file per kind (``sql/tables.sql``, ``sql/indexes.sql``) with ``{schema}`` in
place of the schema name; the service applies it as a member of ``yizhan_app`` (granted CREATE
on both schemas by the migration), setting the role first so the tables belong to the group
role and any service login may drop them in a later rebuild.
"""

from __future__ import annotations

from importlib import resources

from shared.eventstore.postgres import Conn

SCHEMAS = ("projections_blue", "projections_green")
STATE = "projections.state"
APP_ROLE = "yizhan_app"
TABLES = ("case_summary", "timeline", "unit_counts", "subtree_counts", "sla_facts",
          "sla_breaches", "moves")
"""The read-model tables of a set (``progress`` is bookkeeping, not a read model)."""

LAYOUT = 3
"""The layout of the table sets this code reads and writes (``sql/tables.sql`` and
``sql/indexes.sql``), recorded in ``projections.state`` for the active set (migration 0004).
Raised with every change to the tables that a set made by older code does not have: its rows
lack what only the log holds, so such a set is rebuilt from the log before the service uses it
(``bootstrap.upgrade_tables``). 2: the SLA facts keep each round of a level's clock (``round``,
the reopens before it) and the case summary its reopens. 3: the case summary's flags are those
of the level holding the case, with every level's (``warned_levels``, ``breached_levels``)."""

KEYED_ONLY = "SET LOCAL enable_seqscan = off"
"""For a transaction whose every statement finds its rows by a unique index (a live batch, an
advance of the watermark). A connection keeps the plan a statement got when the tables were
small: from its sixth run a generic plan, made once and kept while it looks no dearer, and on a
nearly empty table a sequential scan is cheapest (a fresh table set, a new database). The live
path then scanned case_summary and the count tables on every batch as they grew (measured: 213
of ~220 live batches over 6,000 cases; live 3,186 events/s, 4,533 once they stopped). With
sequential scans priced out, every plan made in such a transaction uses the index."""


def ddl(name: str, schema: str) -> str:
    if schema not in SCHEMAS:
        raise ValueError(f"unknown table set {schema!r}")
    text = (resources.files("services.projections") / "sql" / name).read_text("utf-8")
    return text.replace("{schema}", schema)


def other(schema: str) -> str:
    return SCHEMAS[1 - SCHEMAS.index(schema)]


async def as_app_role(conn: Conn) -> None:
    """Within a transaction: act as the group role, if this login may (else stay itself)."""
    may = await conn.fetchval(
        "SELECT pg_has_role(current_user, $1, 'SET') AND current_user <> $1", APP_ROLE)
    if may:
        await conn.execute(f"SET LOCAL ROLE {APP_ROLE}")


async def ensure_tables(conn: Conn, schema: str) -> None:
    """Create the set's tables and indexes where missing (idempotent). The active set made
    here from nothing (the first start after the migrations) is of this code's layout."""
    async with conn.transaction():
        await as_app_role(conn)
        made = await conn.fetchval("SELECT to_regclass($1) IS NULL", f"{schema}.progress")
        await conn.execute(ddl("tables.sql", schema))
        await conn.execute(ddl("indexes.sql", schema))
        if made:
            await conn.execute(f"UPDATE {STATE} SET layout = $2 "
                               "WHERE name = 'main' AND active_schema = $1", schema, LAYOUT)


async def outdated(conn: Conn) -> bool:
    """The active set exists and was made by code of another layout than ``LAYOUT``."""
    row = await conn.fetchrow(f"SELECT active_schema, layout FROM {STATE} WHERE name = 'main'")
    return row is not None and row["layout"] != LAYOUT and bool(await conn.fetchval(
        "SELECT to_regclass($1) IS NOT NULL", f"{row['active_schema']}.progress"))


async def recreate_tables(conn: Conn, schema: str, *, durable: bool = True,
                          then: str = "") -> None:
    """Drop the set's tables and create them empty, without indexes (a rebuild's start), then
    run ``then`` (more DDL) in the same transaction. ``durable=False``: do not wait for the
    commit to reach the disk (a rebuild, whose swap commit flushes everything before it)."""
    async with conn.transaction():
        if not durable:
            await conn.execute("SET LOCAL synchronous_commit = off")
        await as_app_role(conn)
        await conn.execute("DROP TABLE IF EXISTS "
                           + ", ".join(f"{schema}.{t}" for t in (*TABLES, "progress")))
        await conn.execute(ddl("tables.sql", schema) + then)


async def active_schema(conn: Conn, *, lock: bool = False) -> str:
    """The active set. With ``lock`` (inside a transaction) hold it against a swap until the
    transaction ends: a swap waits for every writer of the old set to finish."""
    name = await conn.fetchval(
        f"SELECT active_schema FROM {STATE} WHERE name = 'main'"
        + (" FOR SHARE" if lock else ""))
    if name not in SCHEMAS:
        raise RuntimeError("projections.state has no active table set: run the migrations")
    return str(name)


async def digest(conn: Conn, schema: str) -> dict[str, str]:
    """An md5 of each read-model table's rows (order-independent): two sets with the same
    digests hold the same rows."""
    found = {}
    for table in TABLES:
        found[table] = str(await conn.fetchval(
            f"SELECT md5(coalesce(string_agg(t::text, E'\\n' ORDER BY t::text), '')) "
            f"FROM {schema}.{table} t"))
    return found

-- One table set of the read models; "{schema}" is projections_blue or projections_green.
-- Applied by services.projections.schema (CREATE ... IF NOT EXISTS); indexes are in
-- indexes.sql (primary keys too) so that a rebuild can COPY first and index afterwards.

-- One row per case: where it is, who owns it, its clock. ``version`` is the last stream
-- version applied: the live path skips an event at or below it and fills a gap above it.
-- ``reopens``: how often the case was reopened, the round of the SLA facts its clock stops make.
-- ``warned``/``breached``: the clock of the level holding the case has warned / is breached;
-- ``warned_levels``/``breached_levels``: every level's, since the submission or the last reopen.
CREATE TABLE IF NOT EXISTS {schema}.case_summary (
    case_id         uuid        NOT NULL,
    tracking_no     text        NOT NULL,
    service_code    text        NOT NULL,
    station         text        NOT NULL,
    visit_id        uuid        NOT NULL,
    status          text        NOT NULL,
    unit            text        NOT NULL,
    level           text        NOT NULL,
    county          text,
    township        text,
    community       text,
    owner           text,
    acting_person   text,
    due_at          timestamptz,
    warned          boolean     NOT NULL,
    breached        boolean     NOT NULL,
    warned_levels   text[]      NOT NULL,
    breached_levels text[]      NOT NULL,
    outcome         text,
    resume_status   text,
    submitted_at    timestamptz NOT NULL,
    last_change_at  timestamptz NOT NULL,
    last_event      text        NOT NULL,
    pending_move    integer,
    reopens         integer     NOT NULL,
    version         integer     NOT NULL,
    position        bigint      NOT NULL
);

-- What happened to each case, step by step ("where has my case been").
CREATE TABLE IF NOT EXISTS {schema}.timeline (
    case_id         uuid        NOT NULL,
    version         integer     NOT NULL,
    position        bigint      NOT NULL,
    at              timestamptz NOT NULL,
    type            text        NOT NULL,
    actor_id        text        NOT NULL,
    actor_role      text        NOT NULL,
    actor_unit      text        NOT NULL,
    acting_for      text,
    unit            text        NOT NULL,
    level           text        NOT NULL,
    from_unit       text,
    to_unit         text,
    status          text        NOT NULL,
    detail          text        NOT NULL
);

-- Cases held by each unit, by status and service: the unit's own (unit_counts) and the unit
-- with everything under it (subtree_counts). A row with n = 0 is deleted.
CREATE TABLE IF NOT EXISTS {schema}.unit_counts (
    unit            text        NOT NULL,
    status          text        NOT NULL,
    service_code    text        NOT NULL,
    n               integer     NOT NULL
);
CREATE TABLE IF NOT EXISTS {schema}.subtree_counts (
    unit            text        NOT NULL,
    status          text        NOT NULL,
    service_code    text        NOT NULL,
    n               integer     NOT NULL
);

-- How long each level took with each case (its last clock stop there) and whether on time, per
-- round: ``round`` is the number of reopens before it (a reopen restarts the level's clock from
-- zero; the rounds before it stay facts).
CREATE TABLE IF NOT EXISTS {schema}.sla_facts (
    case_id         uuid        NOT NULL,
    level           text        NOT NULL,
    unit            text        NOT NULL,
    round           integer     NOT NULL,
    service_code    text        NOT NULL,
    county          text,
    township        text,
    month           text        NOT NULL,
    used_seconds    integer     NOT NULL,
    budget_seconds  integer     NOT NULL,
    on_time         boolean     NOT NULL,
    stopped_at      timestamptz NOT NULL
);

-- Every breach, charged to the level (and unit) that used the time.
CREATE TABLE IF NOT EXISTS {schema}.sla_breaches (
    case_id         uuid        NOT NULL,
    timer_no        integer     NOT NULL,
    level           text        NOT NULL,
    unit            text        NOT NULL,
    service_code    text        NOT NULL,
    county          text,
    township        text,
    month           text        NOT NULL,
    at              timestamptz NOT NULL
);

-- Every move up (hand-off or escalation) and when the upper unit received it.
CREATE TABLE IF NOT EXISTS {schema}.moves (
    case_id         uuid        NOT NULL,
    version         integer     NOT NULL,
    kind            text        NOT NULL,
    service_code    text        NOT NULL,
    from_unit       text        NOT NULL,
    from_level      text        NOT NULL,
    to_unit         text        NOT NULL,
    to_level        text        NOT NULL,
    county          text,
    township        text,
    sent_at         timestamptz NOT NULL,
    received_at     timestamptz
);

-- How far this table set has got: 'watermark' = every event at or below it is applied (or
-- parked); advanced by the live path, set by a rebuild.
CREATE TABLE IF NOT EXISTS {schema}.progress (
    name            text        PRIMARY KEY,
    position        bigint      NOT NULL,
    updated_at      timestamptz NOT NULL DEFAULT now()
);
INSERT INTO {schema}.progress (name, position) VALUES ('watermark', 0) ON CONFLICT DO NOTHING;

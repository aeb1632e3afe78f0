-- SLA due times, kept by an idempotent consumer of case.events (never a Faust table: the
-- embedded broker's wrong end offsets break Faust table recovery). One row per case: its
-- running timer; the SLA clock fires rows whose due time has passed.
CREATE TABLE sla_due (
    case_id     uuid        PRIMARY KEY,
    timer_no    integer     NOT NULL,
    level       text        NOT NULL,
    unit        text        NOT NULL,
    warn_at     timestamptz,
    due_at      timestamptz NOT NULL,
    warned      boolean     NOT NULL DEFAULT false,
    breached    boolean     NOT NULL DEFAULT false,
    position    bigint      NOT NULL
);
CREATE INDEX sla_due_next ON sla_due (due_at) WHERE NOT breached;
CREATE INDEX sla_due_warn ON sla_due (warn_at) WHERE NOT warned;
GRANT SELECT, INSERT, UPDATE, DELETE ON sla_due TO yizhan_app;

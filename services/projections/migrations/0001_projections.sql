-- Read models of the projections service (issue 5).
--
-- The tables themselves live in one of two schemas, projections_blue and projections_green
-- (blue/green): the live path writes the active one, a rebuild builds the other from the event
-- store and swaps it in by updating projections.state. Their DDL is one file
-- (services/projections/sql/tables.sql), applied by the service itself to the schema it
-- builds, so the service role (a member of yizhan_app) may create, drop and fill tables in
-- both schemas. Tables it creates are owned by yizhan_app (the service sets the role first),
-- so any service login may rebuild.

CREATE SCHEMA projections;
CREATE SCHEMA projections_blue;
CREATE SCHEMA projections_green;

-- Which table set is active, and how far it has got.
--   generation: incremented at every swap; rebuilt_to: the head the last rebuild reached.
-- (How far the active set has got is in its own progress table.)
CREATE TABLE projections.state (
    name            text        PRIMARY KEY,
    active_schema   text        NOT NULL CHECK (active_schema IN ('projections_blue',
                                                                  'projections_green')),
    generation      integer     NOT NULL DEFAULT 1,
    swapped_at      timestamptz NOT NULL DEFAULT now(),
    rebuilt_to      bigint
);
INSERT INTO projections.state (name, active_schema) VALUES ('main', 'projections_blue');

-- Events the live path could not project (unknown type or schema version): kept, counted,
-- alerted; the worker goes on. A rebuild refuses to run while the code does not know them.
CREATE TABLE projections.parked (
    position        bigint      PRIMARY KEY,
    stream_id       text        NOT NULL,
    version         integer     NOT NULL,
    type            text        NOT NULL,
    schema_version  integer     NOT NULL,
    reason          text        NOT NULL,
    parked_at       timestamptz NOT NULL DEFAULT now()
);

GRANT USAGE ON SCHEMA projections TO yizhan_app;
GRANT SELECT, UPDATE ON projections.state TO yizhan_app;
GRANT SELECT, INSERT, DELETE ON projections.parked TO yizhan_app;
GRANT USAGE, CREATE ON SCHEMA projections_blue, projections_green TO yizhan_app;

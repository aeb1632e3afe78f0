-- The event store: one append-only table of events, hash-chained, immutable.

-- Services connect with a login role that is a member of yizhan_app. yizhan_app may only
-- INSERT and SELECT events and checkpoints; UPDATE/DELETE/TRUNCATE are also refused by triggers,
-- so not even the owner or a superuser changes history without first disabling them.
DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'yizhan_app') THEN
        CREATE ROLE yizhan_app NOLOGIN;
    END IF;
END
$$;

CREATE TABLE events (
    position        bigint      PRIMARY KEY CHECK (position > 0),
    stream_id       text        NOT NULL,
    version         integer     NOT NULL CHECK (version > 0),
    event_id        uuid        NOT NULL UNIQUE,
    type            text        NOT NULL,
    schema_version  integer     NOT NULL CHECK (schema_version > 0),
    -- json, not jsonb: the canonical text is kept byte for byte (jsonb would rewrite numbers)
    data            json        NOT NULL,
    metadata        json        NOT NULL,
    occurred_at     timestamptz NOT NULL,
    recorded_at     timestamptz NOT NULL,
    prev_hash       text        NOT NULL CHECK (length(prev_hash) = 64),
    hash            text        NOT NULL CHECK (length(hash) = 64),
    UNIQUE (stream_id, version)
);
CREATE INDEX events_type_position ON events (type, position);

CREATE TABLE event_checkpoints (
    position    bigint      PRIMARY KEY CHECK (position >= 0),
    hash        text        NOT NULL,
    signed_at   timestamptz NOT NULL,
    key_id      text        NOT NULL,
    signature   text        NOT NULL
);

CREATE FUNCTION refuse_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION '% on % is refused: the event log is append-only', TG_OP, TG_TABLE_NAME
        USING ERRCODE = 'insufficient_privilege';
END
$$;

CREATE TRIGGER events_append_only BEFORE UPDATE OR DELETE ON events
    FOR EACH ROW EXECUTE FUNCTION refuse_change();
CREATE TRIGGER events_no_truncate BEFORE TRUNCATE ON events
    FOR EACH STATEMENT EXECUTE FUNCTION refuse_change();
CREATE TRIGGER checkpoints_append_only BEFORE UPDATE OR DELETE ON event_checkpoints
    FOR EACH ROW EXECUTE FUNCTION refuse_change();
CREATE TRIGGER checkpoints_no_truncate BEFORE TRUNCATE ON event_checkpoints
    FOR EACH STATEMENT EXECUTE FUNCTION refuse_change();

-- Where each Kafka relay has got to, and the last offset each partition acknowledged
-- (a later acknowledgement at a lower offset means the broker lost its log).
CREATE TABLE relay_positions (
    relay       text    PRIMARY KEY,
    position    bigint  NOT NULL DEFAULT 0,
    cluster_id  text,
    republished integer NOT NULL DEFAULT 0,
    updated_at  timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE relay_partition_offsets (
    relay       text    NOT NULL,
    topic       text    NOT NULL,
    partition   integer NOT NULL,
    last_offset bigint  NOT NULL,
    position    bigint  NOT NULL,
    PRIMARY KEY (relay, topic, partition)
);

-- Idempotent consumers: the last global position applied, per consumer and scope (a scope is
-- e.g. one Kafka partition, or "all" for a rebuild reading the store in order).
CREATE TABLE consumer_positions (
    consumer    text    NOT NULL,
    scope       text    NOT NULL,
    position    bigint  NOT NULL,
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer, scope)
);

REVOKE ALL ON events, event_checkpoints FROM PUBLIC;
GRANT SELECT, INSERT ON events, event_checkpoints TO yizhan_app;
GRANT SELECT, INSERT, UPDATE, DELETE ON relay_positions, relay_partition_offsets,
    consumer_positions TO yizhan_app;
GRANT USAGE ON SCHEMA public TO yizhan_app;

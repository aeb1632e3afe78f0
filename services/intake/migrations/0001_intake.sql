-- Intake: data subjects' keys (crypto-shredding), idempotency of requests, and the durable
-- outcome of every Kafka submission (so an offset is committed only after its outcome is here).

-- One row per data subject: their AES key, wrapped by the master key. Erasure deletes the row;
-- the ciphertexts in the event log become unreadable and the log itself is never touched.
CREATE TABLE intake_subjects (
    subject_id    text        PRIMARY KEY,
    id_hash       text        NOT NULL UNIQUE,   -- HMAC of the ID number, never the number
    wrapped_key   bytea       NOT NULL,
    master_key_id text        NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE intake_erasures (
    subject_id text        PRIMARY KEY,
    erased_at  timestamptz NOT NULL DEFAULT now(),
    erased_by  text        NOT NULL,
    reason     text        NOT NULL
);

-- Idempotency: per caller (scope) and key, the payload's fingerprint and the receipt given.
CREATE TABLE intake_requests (
    scope       text        NOT NULL,
    key         text        NOT NULL,
    fingerprint text        NOT NULL,
    receipt     jsonb       NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (scope, key)
);

-- One row per Kafka message handled, keyed by where it was read. A redelivered message finds
-- its outcome here; a rejection is published once, then marked published.
CREATE TABLE intake_messages (
    topic           text        NOT NULL,
    partition       integer     NOT NULL,
    "offset"        bigint      NOT NULL,
    source          text,
    idempotency_key text,
    outcome         text        NOT NULL CHECK (outcome IN ('accepted', 'duplicate', 'rejected')),
    case_ids        uuid[]      NOT NULL DEFAULT '{}',
    reasons         jsonb       NOT NULL DEFAULT '[]',
    rejection       jsonb,                   -- the intake.rejected message, when rejected
    published_at    timestamptz,
    recorded_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (topic, partition, "offset")
);
CREATE INDEX intake_messages_unpublished ON intake_messages (recorded_at)
    WHERE outcome = 'rejected' AND published_at IS NULL;

GRANT SELECT, INSERT, DELETE ON intake_subjects TO yizhan_app;
GRANT SELECT, INSERT ON intake_erasures TO yizhan_app;
GRANT SELECT, INSERT ON intake_requests TO yizhan_app;
GRANT SELECT, INSERT, UPDATE ON intake_messages TO yizhan_app;

-- The partition count each idempotent consumer's positions on a topic were kept for. Positions
-- are kept per topic-partition (scope "<topic>/<partition>") and a stream's partition is
-- murmur2(stream id) % partitions: with another count a stream's events land on a partition
-- whose stored position belongs to other streams (skipped as applied, or applied twice). An
-- agent refuses to start on a topic whose partition count differs from the one recorded here
-- while it has positions there; `yizhan consumers repartition` moves the positions to a new
-- count and records it (README, "Scaling out").
CREATE TABLE consumer_partition_counts (
    consumer    text        NOT NULL,
    topic       text        NOT NULL,
    partitions  integer     NOT NULL CHECK (partitions > 0),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer, topic)
);

GRANT SELECT, INSERT, UPDATE, DELETE ON consumer_partition_counts TO yizhan_app;

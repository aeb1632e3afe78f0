-- Signed checkpoints form a chain of their own: a checkpoint of format 2 signs, besides the
-- log's position and hash, the position and hash of the checkpoint signed before it (0 and the
-- genesis hash for the first). Removing a checkpoint that a later one names then shows, as the
-- later one's signature names a checkpoint the table no longer holds.
--
-- Rows signed before this (format 1: position, hash, time) keep verifying as they were signed.
ALTER TABLE event_checkpoints
    ADD COLUMN format        smallint NOT NULL DEFAULT 1 CHECK (format > 0),
    ADD COLUMN prev_position bigint CHECK (prev_position >= 0),
    ADD COLUMN prev_hash     text,
    ADD CONSTRAINT event_checkpoints_chained CHECK (
        format = 1 OR (prev_position IS NOT NULL AND prev_position < position
                       AND prev_hash IS NOT NULL));

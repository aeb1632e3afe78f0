-- yizhan_append plans every query on the indexes, however small the events table was when the
-- connection first ran it.
--
-- plpgsql caches each query's plan per connection. A query with parameters gets custom plans
-- for its first five runs, then a generic plan if that looks no dearer, and keeps it until the
-- table's statistics change (autovacuum's next ANALYZE, up to a minute or more away). Planned
-- while the events table was still small (a new database), `event_id = ANY(p_ids)` got a
-- sequential scan, cheapest on a few pages, and the connection then scanned the whole table on
-- every append (measured: server CPU per event 28 µs on one connection, 70 → 450 µs on another
-- as the log grew from 9,000 to 41,000 events). Every query here finds its rows by an index
-- (the head by position, versions by (stream_id, version), ids by event_id) or reads the
-- caller's arrays: with sequential scans priced out, each plan is the index one from the start,
-- and stays cached (planning the look-up at every call through EXECUTE instead cost about a
-- fifth more server CPU per event in small batches).

ALTER FUNCTION yizhan_append(
    bigint, text, timestamptz, text[], integer[], uuid[], bigint[], text[], integer[], uuid[],
    text[], integer[], json[], json[], timestamptz[], text[], text[]
) SET enable_seqscan = off;

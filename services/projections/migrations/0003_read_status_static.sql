-- read_status without a dynamic query: the active set is one of two known schemas, so each
-- has its own static SELECT, planned once per connection and cached. The EXECUTE of 0002 was
-- parsed and planned on every call, every read-model answer (about 370 us of server time per
-- call under load, of which a static query needs a fraction). Any other name (none exists
-- today) still goes through EXECUTE.
CREATE OR REPLACE FUNCTION projections.read_status(
    OUT active_schema text, OUT watermark bigint, OUT updated_at timestamptz, OUT head bigint,
    OUT next_recorded_at timestamptz, OUT generation integer, OUT parked bigint,
    OUT now timestamptz)
LANGUAGE plpgsql STABLE AS $$
BEGIN
    SELECT s.active_schema, s.generation INTO active_schema, generation
    FROM projections.state s WHERE s.name = 'main';
    IF active_schema IS NULL THEN
        RAISE EXCEPTION 'projections.state has no active table set';
    ELSIF active_schema = 'projections_blue' THEN
        SELECT p.position, p.updated_at INTO watermark, updated_at
        FROM projections_blue.progress p WHERE p.name = 'watermark';
    ELSIF active_schema = 'projections_green' THEN
        SELECT p.position, p.updated_at INTO watermark, updated_at
        FROM projections_green.progress p WHERE p.name = 'watermark';
    ELSE
        EXECUTE format('SELECT position, updated_at FROM %I.progress WHERE name = ''watermark''',
                       active_schema) INTO watermark, updated_at;
    END IF;
    SELECT coalesce(max(e.position), 0) INTO head FROM events e;
    SELECT e.recorded_at INTO next_recorded_at FROM events e WHERE e.position = watermark + 1;
    SELECT count(*) INTO parked FROM projections.parked;
    now := clock_timestamp();
END
$$;

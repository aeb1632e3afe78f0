-- What every read-model answer states (the active table set, its watermark, the log's head, the
-- lag), in one round trip instead of three. The active set's name is only known at run time,
-- hence plpgsql and a dynamic query for its progress row.
CREATE FUNCTION projections.read_status(
    OUT active_schema text, OUT watermark bigint, OUT updated_at timestamptz, OUT head bigint,
    OUT next_recorded_at timestamptz, OUT generation integer, OUT parked bigint,
    OUT now timestamptz)
LANGUAGE plpgsql STABLE AS $$
BEGIN
    SELECT s.active_schema, s.generation INTO active_schema, generation
    FROM projections.state s WHERE s.name = 'main';
    IF active_schema IS NULL THEN
        RAISE EXCEPTION 'projections.state has no active table set';
    END IF;
    EXECUTE format('SELECT position, updated_at FROM %I.progress WHERE name = ''watermark''',
                   active_schema) INTO watermark, updated_at;
    SELECT coalesce(max(e.position), 0) INTO head FROM events e;
    SELECT e.recorded_at INTO next_recorded_at FROM events e WHERE e.position = watermark + 1;
    SELECT count(*) INTO parked FROM projections.parked;
    now := clock_timestamp();
END
$$;

-- The layout of the active table set: the version of services/projections/sql/tables.sql and
-- indexes.sql its tables were made with (services.projections.schema.LAYOUT). A set made by
-- older code lacks what a newer layout holds (a column, a key), and its rows lack what only the
-- log has (layout 2: the SLA facts of a level's earlier rounds, which a reopen used to
-- overwrite), so the service rebuilds the read models from the log and swaps them in before it
-- serves (services.projections.bootstrap.upgrade_tables). The sets made before this column are
-- layout 1; a rebuild's swap records its own, as does the service creating the active set from
-- nothing.
ALTER TABLE projections.state ADD COLUMN layout integer NOT NULL DEFAULT 1;

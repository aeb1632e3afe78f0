-- Indexes of one table set (see tables.sql); created after a rebuild's COPY. The unique
-- ones are the keys the live path's upserts name (ON CONFLICT infers them).
CREATE UNIQUE INDEX IF NOT EXISTS case_summary_pk ON {schema}.case_summary (case_id);
CREATE UNIQUE INDEX IF NOT EXISTS timeline_pk ON {schema}.timeline (case_id, version);
CREATE UNIQUE INDEX IF NOT EXISTS unit_counts_pk ON {schema}.unit_counts (unit, status, service_code);
CREATE UNIQUE INDEX IF NOT EXISTS subtree_counts_pk ON {schema}.subtree_counts (unit, status, service_code);
CREATE UNIQUE INDEX IF NOT EXISTS sla_facts_pk ON {schema}.sla_facts (case_id, level, unit, round);
CREATE UNIQUE INDEX IF NOT EXISTS sla_breaches_pk ON {schema}.sla_breaches (case_id, timer_no);
CREATE UNIQUE INDEX IF NOT EXISTS moves_pk ON {schema}.moves (case_id, version);
CREATE INDEX IF NOT EXISTS case_summary_tracking ON {schema}.case_summary (tracking_no);
CREATE INDEX IF NOT EXISTS case_summary_unit ON {schema}.case_summary (unit, last_change_at);
-- A county's or township's case list, a page in any of the three usual orders: read in index
-- order, never sorted (list_cases orders by exactly these columns; due_at ascending only)
CREATE INDEX IF NOT EXISTS case_summary_county_changed
    ON {schema}.case_summary (county, last_change_at, case_id);
CREATE INDEX IF NOT EXISTS case_summary_county_submitted
    ON {schema}.case_summary (county, submitted_at, case_id);
CREATE INDEX IF NOT EXISTS case_summary_county_due
    ON {schema}.case_summary (county, due_at, case_id);
CREATE INDEX IF NOT EXISTS case_summary_township_changed
    ON {schema}.case_summary (township, last_change_at, case_id);
CREATE INDEX IF NOT EXISTS case_summary_township_submitted
    ON {schema}.case_summary (township, submitted_at, case_id);
CREATE INDEX IF NOT EXISTS case_summary_township_due
    ON {schema}.case_summary (township, due_at, case_id);
DROP INDEX IF EXISTS {schema}.case_summary_county;  -- superseded by the ones above
DROP INDEX IF EXISTS {schema}.case_summary_township;
CREATE INDEX IF NOT EXISTS case_summary_community
    ON {schema}.case_summary (community, last_change_at);
CREATE INDEX IF NOT EXISTS case_summary_due ON {schema}.case_summary (due_at)
    WHERE due_at IS NOT NULL;
CREATE INDEX IF NOT EXISTS sla_facts_county ON {schema}.sla_facts (county, month);
CREATE INDEX IF NOT EXISTS sla_facts_township ON {schema}.sla_facts (township, month);
CREATE INDEX IF NOT EXISTS sla_breaches_county ON {schema}.sla_breaches (county, month);
CREATE INDEX IF NOT EXISTS moves_county ON {schema}.moves (county, sent_at);
CREATE INDEX IF NOT EXISTS moves_township ON {schema}.moves (township, sent_at);

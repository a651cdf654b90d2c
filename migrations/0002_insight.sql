-- 0002_insight: check_results partitioned by day, plus what reports read instead of raw results:
-- hourly and daily rollups, the current state of every site and the log of its state changes.
--
-- Applied by `sitewatch::store::migrate` inside one transaction, like every migration: if any
-- statement fails, nothing of it stays, the old check_results included. Never edit this file
-- after it has shipped: add 0003_*.sql instead. docs/storage.md explains the schema.
--
-- Cost: converting check_results reads it twice (its days, then its rows), writes every row
-- again and rebuilds the indexes, holding an ACCESS EXCLUSIVE lock on it throughout: consumers
-- wait, and Kafka lag grows, for as long as that takes; no row is lost. Measured on the dev
-- stack: 1.7 s for 300,000 rows (190 MB), so about a minute per ten million rows while the table
-- fits in memory, more beyond; it needs free disk for a second copy until it commits.
--
-- What the code must do differently afterwards:
--   * ON CONFLICT on check_results names (id, scheduled_at) (or no columns): ON CONFLICT (id)
--     fails with 42P10, there is no longer a unique index on id alone;
--   * a row whose UTC day has no partition is refused with 23514 ("no partition of relation
--     found for row"): call sitewatch_ensure_partitions for the batch's days before writing;
--   * retention drops whole partitions (DROP TABLE check_results_pYYYYMMDD); a DELETE by ctid
--     alone is wrong on a partitioned table (ctids repeat in every partition).

-- ---------------------------------------------------------------------------------------------
-- check_results, partitioned by UTC day
-- ---------------------------------------------------------------------------------------------

-- The old table steps aside under a name nothing else uses; its indexes too, so the new ones
-- keep the 0001 names. RENAME takes the ACCESS EXCLUSIVE lock first, before any row is read, so
-- no insert can slip in between the copy below and the DROP.
ALTER TABLE check_results RENAME TO check_results_0001;
ALTER INDEX check_results_pkey RENAME TO check_results_0001_pkey;
ALTER INDEX check_results_site_scheduled_at RENAME TO check_results_0001_site_scheduled_at;
ALTER INDEX check_results_scheduled_at_brin RENAME TO check_results_0001_scheduled_at_brin;

-- Same columns, order, types and constraints as 0001, plus `maintenance` at the end: the
-- consumer's COPY and INSERT name their columns, so they keep working unchanged (maintenance NULL).
-- Range-partitioned on scheduled_at, one partition per UTC day: retention becomes DROP TABLE of
-- a day (instant, nothing for vacuum to do) instead of DELETE, and a time-range query only opens
-- the days it covers.
--
-- There is no DEFAULT partition. Rows landing there would make every later CREATE of a day
-- partition scan it (and move rows out of it) under an ACCESS EXCLUSIVE lock on check_results,
-- and dropping a day would never drop them. Instead day partitions are created ahead by
-- sitewatch_ensure_partitions (below); a row for a day without a partition is refused, loudly.
CREATE TABLE check_results (
    -- UUID v7 from the scheduler: unique, and time-ordered so the primary-key btree appends.
    id              uuid             NOT NULL,
    scheduled_at    timestamptz      NOT NULL,
    started_at      timestamptz      NOT NULL,
    total_ms        double precision NOT NULL,
    body_bytes      bigint           NOT NULL,
    -- Where the row came from: audits exactly-once delivery and points back at the topic.
    kafka_offset    bigint           NOT NULL,
    dns_ms          double precision,
    connect_ms      double precision,
    tls_ms          double precision,
    ttfb_ms         double precision,
    transfer_ms     double precision,
    cert_not_after  timestamptz,
    attempts        integer          NOT NULL,
    kafka_partition integer          NOT NULL,
    status          smallint,
    body_truncated  boolean          NOT NULL,
    tls_insecure    boolean          NOT NULL,
    site            text             NOT NULL,
    url             text             NOT NULL,
    final_url       text,
    outcome         text             NOT NULL CHECK (outcome IN ('up', 'degraded', 'down')),
    failure_kind    text,
    failure_phase   text,
    failure_message text,
    config_version  text             NOT NULL,
    probe_host      text             NOT NULL,
    assertions      jsonb            NOT NULL,
    metrics         jsonb            NOT NULL,
    -- Name of the maintenance window the check was probed in; NULL: none. Such checks are kept
    -- like any other but counted apart in the rollups.
    maintenance     text
) PARTITION BY RANGE (scheduled_at);

-- Creates the missing day partitions check_results_pYYYYMMDD for every UTC day from from_ts to
-- to_ts (both included) and returns how many it created. Idempotent, and cheap when there is
-- nothing to do: the existing days are read from pg_class without any lock. Call it for the days
-- of a batch before writing the batch, and from a timer for the next few days, so the consumer
-- hardly ever creates one itself.
--
-- Creating a partition takes an ACCESS EXCLUSIVE lock on check_results until the caller's
-- transaction ends (it waits for running queries, and everything waits for it): call it in its
-- own short transaction (best), or first in the batch's, never after having written to
-- check_results (two such sessions would deadlock on the advisory lock and the table lock).
--
-- Concurrent callers serialise on a transaction-level advisory lock (key "sitewatp" in ASCII,
-- next to migrate's "sitewatc") and re-read pg_class under it, so two sessions asking for the
-- same day create it once. The re-read needs a fresh snapshot per statement: READ COMMITTED,
-- the default (under REPEATABLE READ, CREATE TABLE IF NOT EXISTS still makes it harmless).
--
-- Refuses more than 366 days per call: a result with a corrupt year (storable: years 1–9999 are
-- accepted) must not make a batch create thousands of tables. Refuses a relation that has a
-- partition's name but is not a partition of check_results (a DETACHed day, say): that day would
-- otherwise look covered and refuse every row.
CREATE FUNCTION sitewatch_ensure_partitions(from_ts timestamptz, to_ts timestamptz)
RETURNS integer
LANGUAGE plpgsql
AS $$
DECLARE
    parent    regclass := to_regclass('check_results');
    nsp       oid;
    nsp_name  name;
    first_day date;
    last_day  date;
    missing   date[];
    strays    text;
    day       date;
    created   integer := 0;
BEGIN
    IF parent IS NULL THEN
        RAISE EXCEPTION 'sitewatch_ensure_partitions: table check_results not found'
            USING ERRCODE = 'undefined_table';
    END IF;
    IF from_ts IS NULL OR to_ts IS NULL OR NOT isfinite(from_ts) OR NOT isfinite(to_ts)
            OR to_ts < from_ts THEN
        RAISE EXCEPTION 'sitewatch_ensure_partitions: [%, %] is not a finite time range',
            from_ts, to_ts USING ERRCODE = 'invalid_parameter_value';
    END IF;
    -- Days are UTC days whatever the session's TimeZone.
    first_day := (from_ts AT TIME ZONE 'UTC')::date;
    last_day := (to_ts AT TIME ZONE 'UTC')::date;
    IF last_day - first_day >= 366 THEN
        RAISE EXCEPTION 'sitewatch_ensure_partitions: refusing to create % day partitions '
            'for [%, %] (at most 366 per call)', last_day - first_day + 1, from_ts, to_ts
            USING ERRCODE = 'program_limit_exceeded';
    END IF;
    SELECT c.relnamespace, n.nspname INTO nsp, nsp_name
      FROM pg_class AS c JOIN pg_namespace AS n ON n.oid = c.relnamespace
     WHERE c.oid = parent;

    -- Pass 1 without the lock (the usual case: every day exists), pass 2 under it.
    FOR pass IN 1..2 LOOP
        SELECT array_agg(d.day ORDER BY d.day) FILTER (WHERE c.oid IS NULL),
               string_agg(c.relname, ', ') FILTER (WHERE c.oid IS NOT NULL AND NOT EXISTS (
                   SELECT FROM pg_inherits AS i WHERE i.inhrelid = c.oid AND i.inhparent = parent))
          INTO missing, strays
          FROM (SELECT first_day + k AS day FROM generate_series(0, last_day - first_day) AS k) AS d
          LEFT JOIN pg_class AS c
            ON c.relnamespace = nsp
           AND c.relname = 'check_results_p' || to_char(d.day, 'YYYYMMDD');
        IF strays IS NOT NULL THEN
            RAISE EXCEPTION 'sitewatch_ensure_partitions: % exist(s) but is not a partition of '
                'check_results (detached?): attach or drop it', strays
                USING ERRCODE = 'duplicate_table';
        END IF;
        IF missing IS NULL THEN
            RETURN created;
        END IF;
        IF pass = 1 THEN
            PERFORM pg_advisory_xact_lock(x'7369746577617470'::bigint);
        END IF;
    END LOOP;

    -- Bounds are written as UTC literals, so they do not depend on TimeZone or DateStyle.
    FOREACH day IN ARRAY missing LOOP
        EXECUTE format(
            'CREATE TABLE IF NOT EXISTS %I.%I PARTITION OF %s FOR VALUES FROM (%L) TO (%L)',
            nsp_name, 'check_results_p' || to_char(day, 'YYYYMMDD'), parent,
            to_char(day, 'YYYY-MM-DD') || ' 00:00:00+00',
            to_char(day + 1, 'YYYY-MM-DD') || ' 00:00:00+00');
        created := created + 1;
    END LOOP;
    RETURN created;
END
$$;

-- A partition for every UTC day that has rows, and for today and tomorrow, so the consumer can
-- write as soon as this commits. Days between two days with rows get none: no row will arrive
-- for them except a replay, which sitewatch_ensure_partitions then covers.
DO $$
DECLARE
    day date;
BEGIN
    FOR day IN
        SELECT DISTINCT (scheduled_at AT TIME ZONE 'UTC')::date FROM check_results_0001
        UNION
        SELECT (now() AT TIME ZONE 'UTC')::date + k FROM generate_series(0, 1) AS k
    LOOP
        PERFORM sitewatch_ensure_partitions(day::timestamp AT TIME ZONE 'UTC',
                                            day::timestamp AT TIME ZONE 'UTC');
    END LOOP;
END
$$;

-- Every row moves, in the old table's physical order: routing sends each to its day, so each
-- partition is as ordered by scheduled_at as the old table was, without sorting it first.
INSERT INTO check_results (
    id, scheduled_at, started_at, total_ms, body_bytes, kafka_offset, dns_ms, connect_ms, tls_ms,
    ttfb_ms, transfer_ms, cert_not_after, attempts, kafka_partition, status, body_truncated,
    tls_insecure, site, url, final_url, outcome, failure_kind, failure_phase, failure_message,
    config_version, probe_host, assertions, metrics)
SELECT
    id, scheduled_at, started_at, total_ms, body_bytes, kafka_offset, dns_ms, connect_ms, tls_ms,
    ttfb_ms, transfer_ms, cert_not_after, attempts, kafka_partition, status, body_truncated,
    tls_insecure, site, url, final_url, outcome, failure_kind, failure_phase, failure_message,
    config_version, probe_host, assertions, metrics
FROM check_results_0001;

-- Table privileges granted by hand (a read-only reporting role, say) carry over; column
-- privileges do not. The owner's own are implicit.
DO $$
DECLARE
    grant_row record;
BEGIN
    FOR grant_row IN
        SELECT a.privilege_type,
               CASE WHEN a.grantee = 0 THEN 'PUBLIC' ELSE quote_ident(r.rolname) END AS grantee,
               a.is_grantable
          FROM pg_class AS c
         CROSS JOIN LATERAL aclexplode(c.relacl) AS a
          LEFT JOIN pg_roles AS r ON r.oid = a.grantee
         WHERE c.oid = 'check_results_0001'::regclass AND a.grantee <> c.relowner
    LOOP
        EXECUTE format('GRANT %s ON check_results TO %s%s', grant_row.privilege_type,
                       grant_row.grantee,
                       CASE WHEN grant_row.is_grantable THEN ' WITH GRANT OPTION' ELSE '' END);
    END LOOP;
END
$$;

DROP TABLE check_results_0001;

-- Indexes are built after the copy (a sorted build per partition is much faster than keeping
-- them up to date row by row) and declared on the parent, so every partition, including the
-- ones sitewatch_ensure_partitions creates later, gets the same three.
--
-- A partitioned table's unique key must contain the partition key, so the idempotency key is
-- (id, scheduled_at). A re-delivered result carries the same id AND the same scheduled_at (it is
-- the same check), so it is still refused; id alone is still unique in practice (UUID v7).
ALTER TABLE check_results ADD CONSTRAINT check_results_pkey PRIMARY KEY (id, scheduled_at);

-- "Latest result of a site" (ORDER BY scheduled_at DESC LIMIT 1) and "one site over a time
-- range" both walk this index; the partitions of the days outside the range are not opened.
CREATE INDEX check_results_site_scheduled_at ON check_results (site, scheduled_at DESC);

-- "Everything in a time range" within a day: partition pruning finds the days, this finds the
-- block ranges of the hours. A few pages per partition, costs inserts nothing measurable.
CREATE INDEX check_results_scheduled_at_brin ON check_results USING brin (scheduled_at);

-- ---------------------------------------------------------------------------------------------
-- Merging histograms and failure counts, in SQL
-- ---------------------------------------------------------------------------------------------

-- Element-wise sum of two histograms (src/insight/histogram.rs: counts per bucket, index 1 =
-- bucket 0, trailing zeros trimmed, so arrays of the same meaning have different lengths). NULL
-- and '{}' are empty; the result is as long as the longer input (two trimmed arrays of counts
-- give a trimmed sum); a NULL element counts as 0. Entries past the last bucket are kept as they
-- are (Histogram::from_counts folds them into the last bucket when reading).
--
-- PL/pgSQL, not SQL: on 100,000 calls with ~50-element arrays the loop below takes 3.6 µs per
-- call on the dev stack, a SQL function (ARRAY(SELECT … FROM generate_series …)) 8.0 µs and
-- unnest … WITH ORDINALITY about the same. A SQL body with a subquery cannot be inlined, so it
-- pays the SQL-function executor on every call, while the loop adds into an expanded copy of the
-- longer array in place.
CREATE FUNCTION sitewatch_hist_add(a bigint[], b bigint[])
RETURNS bigint[]
LANGUAGE plpgsql
IMMUTABLE PARALLEL SAFE
AS $$
DECLARE
    longer  bigint[];
    shorter bigint[];
BEGIN
    IF a IS NULL OR cardinality(a) = 0 THEN
        RETURN coalesce(b, '{}');
    END IF;
    IF b IS NULL OR cardinality(b) = 0 THEN
        RETURN a;
    END IF;
    IF cardinality(a) >= cardinality(b) THEN
        longer := a;
        shorter := b;
    ELSE
        longer := b;
        shorter := a;
    END IF;
    FOR i IN 1..cardinality(shorter) LOOP
        longer[i] := coalesce(longer[i], 0) + coalesce(shorter[i], 0);
    END LOOP;
    RETURN longer;
END
$$;

-- Key-wise sum of two objects of integer counts (failure_kind → count): {"timeout": 2} +
-- {"timeout": 1, "dns": 1} = {"dns": 1, "timeout": 3}. NULL and '{}' are empty; a JSON null
-- value counts as 0; a value that is not an integer is an error (it is not a count).
-- PL/pgSQL for the same reason: less than half the time of a SQL FULL JOIN of jsonb_each_text
-- (6.8 µs against 15.8 µs per call with 3 + 2 keys).
CREATE FUNCTION sitewatch_jsonb_add(a jsonb, b jsonb)
RETURNS jsonb
LANGUAGE plpgsql
IMMUTABLE PARALLEL SAFE
AS $$
DECLARE
    sum   jsonb;
    key   text;
    value text;
BEGIN
    IF a IS NULL OR a = '{}' THEN
        RETURN coalesce(b, '{}');
    END IF;
    IF b IS NULL OR b = '{}' THEN
        RETURN a;
    END IF;
    sum := a;
    FOR key, value IN SELECT e.key, e.value FROM jsonb_each_text(b) AS e LOOP
        sum := sum || jsonb_build_object(
            key, coalesce((sum ->> key)::bigint, 0) + coalesce(value::bigint, 0));
    END LOOP;
    RETURN sum;
END
$$;

-- sum() for histograms and failure counts, so a report merges hourly or daily buckets in SQL:
-- SELECT site, sitewatch_hist_sum(total_hist), sitewatch_jsonb_sum(failures) … GROUP BY site.
-- Like sum(), no rows give NULL. The add functions combine partial states too (parallel plans).
CREATE AGGREGATE sitewatch_hist_sum(bigint[]) (
    SFUNC = sitewatch_hist_add,
    STYPE = bigint[],
    COMBINEFUNC = sitewatch_hist_add,
    PARALLEL = SAFE
);

CREATE AGGREGATE sitewatch_jsonb_sum(jsonb) (
    SFUNC = sitewatch_jsonb_add,
    STYPE = jsonb,
    COMBINEFUNC = sitewatch_jsonb_add,
    PARALLEL = SAFE
);

-- ---------------------------------------------------------------------------------------------
-- Rollups: what reports read instead of raw results
-- ---------------------------------------------------------------------------------------------

-- One row per site and hour (bucket = start of the UTC hour), added to by the consumer in the
-- batch's transaction with INSERT … ON CONFLICT (site, bucket) DO UPDATE SET checks =
-- rollup_hourly.checks + EXCLUDED.checks, …, total_hist = sitewatch_hist_add(…), so each result
-- is counted exactly once, like the result itself.
--
-- A check probed in a maintenance window counts in `maintenance` and nowhere else: not in
-- checks/up/degraded/down, not in failures, timings or histograms. Planned downtime then never
-- shows as unavailability or latency, and checks = up + degraded + down is the denominator of
-- availability.
--
-- Timings: <phase>_sum / <phase>_count is the mean of the checks where the phase happened
-- (count 0: never). total_count equals checks (every check has a total) but is kept for
-- uniformity. Histograms: src/insight/histogram.rs (~1.15× buckets from 0.1 ms, ≤ 114 entries).
--
-- Columns: the 8-byte fixed-width ones first (no padding between them, whichever are NULL), then
-- the two arrays (8-byte aligned: the first starts aligned for free, the second pays at most 7
-- bytes), then text and jsonb, short enough (< 127 bytes) to need no alignment at all.
--
-- fillfactor 70: a row (~1 kB with the arrays) is updated about once per check while its bucket
-- is current, and the free 30% of each page lets those updates stay HOT (new version on the same
-- page, no index entry, old one pruned in passing). Measured with 2,000 sites, batches of 40
-- results: 100% HOT at 70 and at 50 (50 makes the heap 25% larger), 97% at 90 and 95% at 100
-- (both end up larger than 70 through bloat). When a batch updates every row (catching up on a
-- backlog): 95% HOT at 70, 99% at 50, 82% at 85. Once its bucket is over a row never changes
-- again, so a lower fill factor would be space wasted for good.
CREATE TABLE rollup_hourly (
    bucket         timestamptz      NOT NULL,
    checks         bigint           NOT NULL DEFAULT 0,
    up             bigint           NOT NULL DEFAULT 0,
    degraded       bigint           NOT NULL DEFAULT 0,
    down           bigint           NOT NULL DEFAULT 0,
    maintenance    bigint           NOT NULL DEFAULT 0,
    dns_sum        double precision NOT NULL DEFAULT 0,
    dns_count      bigint           NOT NULL DEFAULT 0,
    connect_sum    double precision NOT NULL DEFAULT 0,
    connect_count  bigint           NOT NULL DEFAULT 0,
    tls_sum        double precision NOT NULL DEFAULT 0,
    tls_count      bigint           NOT NULL DEFAULT 0,
    ttfb_sum       double precision NOT NULL DEFAULT 0,
    ttfb_count     bigint           NOT NULL DEFAULT 0,
    transfer_sum   double precision NOT NULL DEFAULT 0,
    transfer_count bigint           NOT NULL DEFAULT 0,
    total_sum      double precision NOT NULL DEFAULT 0,
    total_count    bigint           NOT NULL DEFAULT 0,
    -- NULL while the bucket has no check outside maintenance.
    max_total_ms   double precision,
    total_hist     bigint[]         NOT NULL DEFAULT '{}',
    ttfb_hist      bigint[]         NOT NULL DEFAULT '{}',
    site           text             NOT NULL,
    -- failure_kind (wire spelling) → number of checks that failed so.
    failures       jsonb            NOT NULL DEFAULT '{}',
    PRIMARY KEY (site, bucket),
    -- A rollup bug fails the batch instead of publishing wrong availability.
    CONSTRAINT outcomes_add_up CHECK (checks = up + degraded + down),
    CONSTRAINT counts_not_negative
        CHECK (up >= 0 AND degraded >= 0 AND down >= 0 AND maintenance >= 0),
    CONSTRAINT phase_counts_within_checks
        CHECK (dns_count BETWEEN 0 AND checks AND connect_count BETWEEN 0 AND checks
               AND tls_count BETWEEN 0 AND checks AND ttfb_count BETWEEN 0 AND checks
               AND transfer_count BETWEEN 0 AND checks AND total_count BETWEEN 0 AND checks)
) WITH (fillfactor = 70);

-- The same per site and UTC day (bucket = midnight UTC): same columns, defaults, checks and
-- primary key. Kept much longer than hourly rows: the 90-day report reads these. A day row is
-- updated all day long, in the same pattern as an hour row, so the same fill factor.
CREATE TABLE rollup_daily (LIKE rollup_hourly INCLUDING ALL) WITH (fillfactor = 70);

-- The primary key (site, bucket) serves everything about one site (WHERE site = $1 AND bucket
-- >= $2). "All sites over a time range" — the 90-day report, WHERE bucket >= $1 GROUP BY site,
-- or the last 24 hours of every site — cannot use it (PostgreSQL 15 has no skip scan) and would
-- read the whole table, which holds every bucket ever kept. Rows are created in bucket order and
-- stay where they are (updates are HOT), so the heap is ordered by bucket and a BRIN index finds
-- the recent block ranges: 24 kB, where a btree would take ~30 bytes per row and one more index
-- entry per non-HOT update; it is free to maintain because updates never change bucket.
-- Measured, 300 sites × 365 days of rollup_daily (171 MB): the 90-day report reads 5,516 of
-- 21,900 heap pages. With the table cached both plans take ~0.3 s (merging the histograms and
-- failures dominates); the saving is I/O, and grows with the retention of the rollups. Once
-- retention deletes old buckets, new rows reuse the freed space at the front and blur the
-- ranges, as for check_results in 0001.
CREATE INDEX rollup_hourly_bucket_brin ON rollup_hourly USING brin (bucket);
CREATE INDEX rollup_daily_bucket_brin ON rollup_daily USING brin (bucket);

-- ---------------------------------------------------------------------------------------------
-- Site state and its changes
-- ---------------------------------------------------------------------------------------------

-- The current state of every site: the outcome of its latest result, since when, and the
-- current streak. Upserted by the consumer in the batch's transaction, guarded by
-- WHERE site_state.last_scheduled_at < EXCLUDED.last_scheduled_at so a late or replayed result
-- never rolls the state back. Fixed-width columns first (uuid is 16 bytes, byte-aligned).
-- fillfactor 50: every row is rewritten about once per check, so room on the page keeps those
-- updates HOT; the table is one row per site, the space does not matter.
CREATE TABLE site_state (
    -- scheduled_at of the first result of the current outcome.
    since                 timestamptz NOT NULL,
    last_scheduled_at     timestamptz NOT NULL,
    consecutive_failures  bigint      NOT NULL DEFAULT 0 CHECK (consecutive_failures >= 0),
    consecutive_successes bigint      NOT NULL DEFAULT 0 CHECK (consecutive_successes >= 0),
    updated_at            timestamptz NOT NULL DEFAULT now(),
    last_result_id        uuid        NOT NULL,
    site                  text        NOT NULL PRIMARY KEY,
    outcome               text        NOT NULL CHECK (outcome IN ('up', 'degraded', 'down')),
    -- Of the latest failed result (kept while the site is up again: "last failed because …").
    last_failure_kind     text,
    last_failure_message  text,
    -- A streak is one or the other.
    CHECK (consecutive_failures = 0 OR consecutive_successes = 0)
) WITH (fillfactor = 50);

-- Every change of a site's outcome, including the first result of a site (from_outcome NULL):
-- the history behind "down since", alerting and uptime timelines. Written in the same
-- transaction as the site_state update that detects the change. result_id is the result that
-- caused it and is UNIQUE, so a replayed batch cannot record the same change twice (INSERT … ON
-- CONFLICT (result_id) DO NOTHING). No foreign key to check_results: retention drops its
-- partitions, and the history must outlive them.
CREATE TABLE state_changes (
    id              bigserial   PRIMARY KEY,
    -- scheduled_at of the result that caused the change.
    at              timestamptz NOT NULL,
    result_id       uuid        NOT NULL UNIQUE,
    site            text        NOT NULL,
    from_outcome    text        CHECK (from_outcome IN ('up', 'degraded', 'down')),
    to_outcome      text        NOT NULL CHECK (to_outcome IN ('up', 'degraded', 'down')),
    failure_kind    text,
    failure_message text,
    CHECK (from_outcome IS DISTINCT FROM to_outcome)
);

-- "Changes of a site, latest first" and "what was the state of a site at time T" (the latest
-- change with at <= T).
CREATE INDEX state_changes_site_at ON state_changes (site, at DESC);

-- 0004_running: running totals of the hourly rollups, so a report over any whole-hour period
-- reads two rows per site instead of one per day or hour; and running downtime on the state
-- changes, so its downtime reads two changes per site instead of every change in the period.
-- docs/storage.md ("Running totals") explains the scheme; src/store/running.rs maintains it.

-- ---------------------------------------------------------------------------------------------
-- rollup_running: per site and hour, everything of rollup_hourly up to and including that hour
-- ---------------------------------------------------------------------------------------------

-- Row (site, h) holds the sums of the site's rollup_hourly rows with bucket <= h, counted from
-- the site's first hourly row: counters, phase sums, failures and both histograms (bucket-wise).
-- A period [a, b] of whole hours is then row(b) − row(a − 1 h) (a row before the site's first
-- is all zeros). A maximum is not a difference, so max_total_ms[k + 1] is the largest
-- max_total_ms of the site's hourly rows in the 2^k hours ending at h (k = 0 … 13), 0 when
-- none had a check: the maximum over [a, b] is the larger of two such windows, one ending at b
-- and one ending at a + 2^k − 1, with 2^k <= b − a + 1 < 2^(k+1) (a sparse table).
--
-- Rows are dense: one for every hour from the site's first row to its last (`first`, `last` in
-- rollup_running_sites), whether or not the hour has a rollup_hourly row, so both lookups are
-- primary-key probes of a known hour. Written only by sitewatch (src/store/running.rs, under
-- the advisory lock below); the histograms are as long as the longest input, never trimmed.
CREATE TABLE rollup_running (
    bucket         timestamptz        NOT NULL,
    checks         bigint             NOT NULL,
    up             bigint             NOT NULL,
    degraded       bigint             NOT NULL,
    down           bigint             NOT NULL,
    maintenance    bigint             NOT NULL,
    dns_sum        double precision   NOT NULL,
    dns_count      bigint             NOT NULL,
    connect_sum    double precision   NOT NULL,
    connect_count  bigint             NOT NULL,
    tls_sum        double precision   NOT NULL,
    tls_count      bigint             NOT NULL,
    ttfb_sum       double precision   NOT NULL,
    ttfb_count     bigint             NOT NULL,
    transfer_sum   double precision   NOT NULL,
    transfer_count bigint             NOT NULL,
    total_sum      double precision   NOT NULL,
    total_count    bigint             NOT NULL,
    total_hist     bigint[]           NOT NULL,
    ttfb_hist      bigint[]           NOT NULL,
    max_total_ms   double precision[] NOT NULL,
    site           text               NOT NULL,
    failures       jsonb              NOT NULL,
    PRIMARY KEY (site, bucket)
);

-- What rollup_running holds for each site. Rows exist for every hour in [first, last]; no
-- rollup_hourly row of the site has a bucket in (last, through], so for an hour t <= through the
-- running total is row(min(t, last)), or zeros before first. valid_after: hours before it may
-- have lost hourly rows to retention before they were summed (or their running rows were
-- pruned), so a period must start after it; NULL: nothing was ever lost.
CREATE TABLE rollup_running_sites (
    first       timestamptz NOT NULL,
    last        timestamptz NOT NULL,
    through     timestamptz NOT NULL,
    valid_after timestamptz,
    site        text        NOT NULL PRIMARY KEY,
    CHECK (first <= last AND last <= through)
);

-- Set by `sitewatch prune` to the latest cutoff at which it deleted hourly rollups: a site
-- whose running totals are first built afterwards may have lost hours before it.
CREATE TABLE rollup_running_pruned (
    one            boolean     PRIMARY KEY DEFAULT true CHECK (one),
    hourly_before  timestamptz NOT NULL
);

-- Any change to an hourly rollup at or before a site's `through` — a late result, a rebuild, a
-- row written by hand — drops the site's running rows from that hour on; the next extension
-- recomputes them. A change after `through` (the usual one: the current hour) costs a join of
-- the statement's rows with rollup_running_sites. Ordering with the extension (which holds the advisory lock "sitewatr"
-- exclusively while it reads rollup_hourly and writes): this takes it shared first, so either
-- the extension saw this change, or this sees the `through` the extension committed.
-- `sitewatch prune` deletes old hourly rows with sitewatch.keep_running = 'on': retention
-- forgets hours, it does not change what they summed to.
CREATE FUNCTION sitewatch_running_forget(changed_site text, changed_bucket timestamptz)
RETURNS void
LANGUAGE plpgsql
AS $$
BEGIN
    PERFORM pg_advisory_xact_lock_shared(x'7369746577617472'::bigint);
    IF EXISTS (SELECT FROM rollup_running_sites
                WHERE site = changed_site AND through >= changed_bucket) THEN
        DELETE FROM rollup_running WHERE site = changed_site AND bucket >= changed_bucket;
        DELETE FROM rollup_running_sites WHERE site = changed_site AND first >= changed_bucket;
        UPDATE rollup_running_sites
           SET last = least(last, changed_bucket - interval '1 hour'),
               through = changed_bucket - interval '1 hour'
         WHERE site = changed_site;
    END IF;
END
$$;

-- One call per statement, not per row: the consumer's batch upserts ~1,000 hourly rows at a
-- time, and a row-level PL/pgSQL trigger cost it ~10 µs each. The transition tables hold what
-- the statement wrote (INSERT and UPDATE: the new rows; DELETE: the old ones); each site changed
-- at or before its `through` is forgotten from its earliest such hour. An update that moves a
-- row to another site or hour also forgets its old hour (a row-level trigger: rare).
CREATE FUNCTION sitewatch_running_invalidate()
RETURNS trigger
LANGUAGE plpgsql
AS $$
DECLARE
    changed_site   text;
    changed_bucket timestamptz;
BEGIN
    IF current_setting('sitewatch.keep_running', true) = 'on' THEN
        RETURN NULL;
    END IF;
    PERFORM pg_advisory_xact_lock_shared(x'7369746577617472'::bigint);
    IF TG_LEVEL = 'ROW' THEN
        -- An update that moved a row (site or bucket changed): its old hour changed too.
        PERFORM sitewatch_running_forget(OLD.site, OLD.bucket);
        PERFORM sitewatch_running_forget(NEW.site, NEW.bucket);
    ELSE
        FOR changed_site, changed_bucket IN
            SELECT c.site, min(c.bucket)
              FROM changed_rows AS c
              JOIN rollup_running_sites AS r ON r.site = c.site AND r.through >= c.bucket
             GROUP BY c.site
        LOOP
            PERFORM sitewatch_running_forget(changed_site, changed_bucket);
        END LOOP;
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER rollup_hourly_running_insert
    AFTER INSERT ON rollup_hourly REFERENCING NEW TABLE AS changed_rows
    FOR EACH STATEMENT EXECUTE FUNCTION sitewatch_running_invalidate();
CREATE TRIGGER rollup_hourly_running_update
    AFTER UPDATE ON rollup_hourly REFERENCING NEW TABLE AS changed_rows
    FOR EACH STATEMENT EXECUTE FUNCTION sitewatch_running_invalidate();
-- Only an UPDATE that sets site or bucket (never the consumer's upsert) fires this one.
CREATE TRIGGER rollup_hourly_running_move
    AFTER UPDATE OF site, bucket ON rollup_hourly
    FOR EACH ROW EXECUTE FUNCTION sitewatch_running_invalidate();
CREATE TRIGGER rollup_hourly_running_delete
    AFTER DELETE ON rollup_hourly REFERENCING OLD TABLE AS changed_rows
    FOR EACH STATEMENT EXECUTE FUNCTION sitewatch_running_invalidate();

-- ---------------------------------------------------------------------------------------------
-- state_changes: running downtime and change count
-- ---------------------------------------------------------------------------------------------

-- down_us: microseconds the site spent down from its first change up to this one's `at`;
-- changes: its changes of outcome (from_outcome not NULL) up to and including this one. The
-- downtime of [from, end) is D(end) − D(from), with D(t) = down_us of the latest change before
-- t, plus t − its `at` if it went down; the changes of [from, to) are the difference of two
-- `changes`. Order within a site: (at, id).
ALTER TABLE state_changes
    ADD COLUMN down_us bigint NOT NULL DEFAULT 0,
    ADD COLUMN changes bigint NOT NULL DEFAULT 0;

-- "The last change of a site before t" is now ORDER BY at DESC, id DESC LIMIT 1 (the order the
-- running values are counted in): with id in the index, one probe and no sort.
DROP INDEX state_changes_site_at;
CREATE INDEX state_changes_site_at ON state_changes (site, at DESC, id DESC);

-- Recomputes down_us and changes of a site's changes from `since` on, from the last change
-- before it.
CREATE FUNCTION sitewatch_changes_recount(changed_site text, since timestamptz)
RETURNS void
LANGUAGE sql
AS $$
    WITH p AS (
        SELECT at, to_outcome, down_us, changes FROM state_changes
         WHERE site = changed_site AND at < since
         ORDER BY at DESC, id DESC LIMIT 1
    ), s AS (
        SELECT c.id, c.at, c.from_outcome,
               coalesce(lag(c.to_outcome) OVER o, (SELECT to_outcome FROM p)) AS prev_to,
               coalesce(lag(c.at) OVER o, (SELECT at FROM p)) AS prev_at
          FROM state_changes AS c
         WHERE c.site = changed_site AND c.at >= since
        WINDOW o AS (ORDER BY c.at, c.id)
    ), x AS (
        SELECT id,
               coalesce((SELECT down_us FROM p), 0) + sum(
                   CASE WHEN prev_to = 'down'
                        THEN (extract(epoch FROM at - prev_at) * 1000000)::bigint
                        ELSE 0 END) OVER w AS down_us,
               coalesce((SELECT changes FROM p), 0)
                 + count(*) FILTER (WHERE from_outcome IS NOT NULL) OVER w AS changes
          FROM s
        WINDOW w AS (ORDER BY at, id)
    )
    UPDATE state_changes AS c
       SET down_us = x.down_us, changes = x.changes
      FROM x
     WHERE c.id = x.id AND (c.down_us, c.changes) IS DISTINCT FROM (x.down_us, x.changes)
$$;

-- Inserted changes are counted once per statement, set-based: for each site, its changes from
-- its earliest inserted one on, from the change before that. For the consumer's batch that is
-- its new changes alone (appended), each written once more; a change inserted before later ones
-- recounts those too. Row-level PL/pgSQL triggers cost ~25 µs per change — 12 % of a batch
-- in the ingest benchmark, whose results flip outcome often.
-- (`at <` beside the ORDER BY lets the probe use the (site, at DESC, id DESC) index.)
CREATE FUNCTION sitewatch_changes_count_inserted()
RETURNS trigger
LANGUAGE plpgsql
AS $$
BEGIN
    -- The consumer counts its own appended changes as it inserts them (src/store/insight.rs).
    IF current_setting('sitewatch.changes_counted', true) = 'on' THEN
        RETURN NULL;
    END IF;
    WITH first AS (
        SELECT site, min(at) AS since FROM new_changes GROUP BY site
    ), p AS (
        SELECT f.site, f.since, prev.at AS prev_at, prev.to_outcome AS prev_to,
               coalesce(prev.down_us, 0) AS base_down, coalesce(prev.changes, 0) AS base_changes
          FROM first AS f
          LEFT JOIN LATERAL (
                SELECT c.at, c.to_outcome, c.down_us, c.changes FROM state_changes AS c
                 WHERE c.site = f.site AND c.at < f.since
                 ORDER BY c.at DESC, c.id DESC LIMIT 1) AS prev ON true
    ), s AS (
        SELECT c.id, c.site, c.at, c.from_outcome, p.base_down, p.base_changes,
               coalesce(lag(c.to_outcome) OVER o, p.prev_to) AS prev_to,
               coalesce(lag(c.at) OVER o, p.prev_at) AS prev_at
          FROM p JOIN state_changes AS c ON c.site = p.site AND c.at >= p.since
        WINDOW o AS (PARTITION BY c.site ORDER BY c.at, c.id)
    ), x AS (
        SELECT id,
               base_down + sum(CASE WHEN prev_to = 'down'
                                    THEN (extract(epoch FROM at - prev_at) * 1000000)::bigint
                                    ELSE 0 END) OVER w AS down_us,
               base_changes + count(*) FILTER (WHERE from_outcome IS NOT NULL) OVER w AS changes
          FROM s
        WINDOW w AS (PARTITION BY site ORDER BY at, id)
    )
    UPDATE state_changes AS c
       SET down_us = x.down_us, changes = x.changes
      FROM x
     WHERE c.id = x.id AND (c.down_us, c.changes) IS DISTINCT FROM (x.down_us, x.changes);
    RETURN NULL;
END
$$;

CREATE TRIGGER state_changes_count_inserted
    AFTER INSERT ON state_changes REFERENCING NEW TABLE AS new_changes
    FOR EACH STATEMENT EXECUTE FUNCTION sitewatch_changes_count_inserted();

-- A change moved or deleted: the later ones of its site (of both sites, when it moved between
-- them) are recounted. Rare: the consumer never does either.
CREATE FUNCTION sitewatch_changes_recount_later()
RETURNS trigger
LANGUAGE plpgsql
AS $$
BEGIN
    IF TG_OP = 'UPDATE' THEN
        PERFORM sitewatch_changes_recount(NEW.site, NEW.at);
    END IF;
    PERFORM sitewatch_changes_recount(OLD.site, OLD.at);
    RETURN NULL;
END
$$;

CREATE TRIGGER state_changes_recount_later
    AFTER DELETE OR UPDATE OF at, site, from_outcome, to_outcome ON state_changes
    FOR EACH ROW EXECUTE FUNCTION sitewatch_changes_recount_later();

-- Every existing change, counted once.
UPDATE state_changes AS c
   SET down_us = x.down_us, changes = x.changes
  FROM (SELECT id,
               sum(CASE WHEN prev_to = 'down'
                        THEN (extract(epoch FROM at - prev_at) * 1000000)::bigint
                        ELSE 0 END) OVER w AS down_us,
               count(*) FILTER (WHERE from_outcome IS NOT NULL) OVER w AS changes
          FROM (SELECT id, site, at, from_outcome,
                       lag(to_outcome) OVER o AS prev_to, lag(at) OVER o AS prev_at
                  FROM state_changes
                WINDOW o AS (PARTITION BY site ORDER BY at, id)) AS s
        WINDOW w AS (PARTITION BY site ORDER BY at, id)) AS x
 WHERE c.id = x.id;

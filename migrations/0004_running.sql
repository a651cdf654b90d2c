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
-- recomputes them. A change after `through` (the usual one: the current hour) costs one
-- primary-key probe. Ordering with the extension (which holds the advisory lock "sitewatr"
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

CREATE FUNCTION sitewatch_running_invalidate()
RETURNS trigger
LANGUAGE plpgsql
AS $$
BEGIN
    IF current_setting('sitewatch.keep_running', true) = 'on' THEN
        RETURN NULL;
    END IF;
    IF TG_OP <> 'DELETE' THEN
        PERFORM sitewatch_running_forget(NEW.site, NEW.bucket);
    END IF;
    IF TG_OP = 'DELETE' OR (TG_OP = 'UPDATE'
            AND (OLD.site, OLD.bucket) IS DISTINCT FROM (NEW.site, NEW.bucket)) THEN
        PERFORM sitewatch_running_forget(OLD.site, OLD.bucket);
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER rollup_hourly_running
    AFTER INSERT OR UPDATE OR DELETE ON rollup_hourly
    FOR EACH ROW EXECUTE FUNCTION sitewatch_running_invalidate();

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

-- A change appended after the site's latest (the consumer's case) gets its running values from
-- that one: one index probe. (`at <=` / `at >=` beside the row comparisons let the probes use
-- the (site, at DESC) index; a row comparison alone is a filter over all the site's changes.)
CREATE FUNCTION sitewatch_changes_count_new()
RETURNS trigger
LANGUAGE plpgsql
AS $$
DECLARE
    prev record;
BEGIN
    SELECT at, to_outcome, down_us, changes INTO prev
      FROM state_changes
     WHERE site = NEW.site AND at <= NEW.at AND (at, id) < (NEW.at, NEW.id)
     ORDER BY at DESC, id DESC LIMIT 1;
    IF FOUND THEN
        NEW.down_us := prev.down_us + CASE WHEN prev.to_outcome = 'down'
            THEN (extract(epoch FROM NEW.at - prev.at) * 1000000)::bigint ELSE 0 END;
        NEW.changes := prev.changes + CASE WHEN NEW.from_outcome IS NULL THEN 0 ELSE 1 END;
    ELSE
        NEW.down_us := 0;
        NEW.changes := CASE WHEN NEW.from_outcome IS NULL THEN 0 ELSE 1 END;
    END IF;
    RETURN NEW;
END
$$;

CREATE TRIGGER state_changes_count_new
    BEFORE INSERT ON state_changes
    FOR EACH ROW EXECUTE FUNCTION sitewatch_changes_count_new();

-- A change inserted before later ones, moved, or deleted: the later ones of its site (of both
-- sites, when it moved between them) are recounted. An insert checks the next change first: if
-- that one already counts from this one (rows inserted in time order, even many in one
-- statement, whose AFTER triggers all run at its end), nothing later can be off.
CREATE FUNCTION sitewatch_changes_recount_later()
RETURNS trigger
LANGUAGE plpgsql
AS $$
DECLARE
    cur record;
    nxt record;
BEGIN
    IF TG_OP = 'INSERT' THEN
        SELECT at, to_outcome, down_us, changes INTO cur FROM state_changes WHERE id = NEW.id;
        SELECT at, from_outcome, down_us, changes INTO nxt
          FROM state_changes
         WHERE site = NEW.site AND at >= NEW.at AND (at, id) > (NEW.at, NEW.id)
         ORDER BY at, id LIMIT 1;
        IF FOUND AND (nxt.down_us, nxt.changes) IS DISTINCT FROM (
                cur.down_us + CASE WHEN cur.to_outcome = 'down'
                    THEN (extract(epoch FROM nxt.at - cur.at) * 1000000)::bigint ELSE 0 END,
                cur.changes + CASE WHEN nxt.from_outcome IS NULL THEN 0 ELSE 1 END) THEN
            PERFORM sitewatch_changes_recount(NEW.site, NEW.at);
        END IF;
        RETURN NULL;
    END IF;
    IF TG_OP = 'UPDATE' THEN
        PERFORM sitewatch_changes_recount(NEW.site, NEW.at);
    END IF;
    PERFORM sitewatch_changes_recount(OLD.site, OLD.at);
    RETURN NULL;
END
$$;

CREATE TRIGGER state_changes_recount_later
    AFTER INSERT OR DELETE OR UPDATE OF at, site, from_outcome, to_outcome ON state_changes
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

-- 0003_alerts: what `sitewatch alert` derives from the results topic — each site's alerting
-- state, the incidents, and the notification outbox. Written by the alerter's consumer group
-- (`sitewatch-alerts`) in one transaction with its offsets in consumer_offsets, exactly like the
-- storing consumer's rows. docs/alerts.md explains each choice.

-- The incident state machine of each site (src/alert/incident.rs), as JSON between batches:
-- the failing run, the open incident, the flap history. One row per site, rewritten by every
-- batch that has a result of the site: fillfactor 50 keeps those updates HOT.
CREATE TABLE alert_state (
    last_result_at timestamptz,
    updated_at     timestamptz NOT NULL DEFAULT now(),
    site           text        NOT NULL PRIMARY KEY,
    state          jsonb       NOT NULL
) WITH (fillfactor = 50);

-- One row per incident. The id derives from the result that started it (UUID v5), so
-- replaying the topic rebuilds the same rows (INSERT … ON CONFLICT (id) DO UPDATE).
CREATE TABLE incidents (
    id            uuid        NOT NULL PRIMARY KEY,
    -- The first failing check's scheduled time (backdated start).
    started_at    timestamptz NOT NULL,
    -- NULL while open.
    resolved_at   timestamptz,
    updated_at    timestamptz NOT NULL DEFAULT now(),
    failed_checks bigint      NOT NULL DEFAULT 0 CHECK (failed_checks >= 0),
    reminders     integer     NOT NULL DEFAULT 0 CHECK (reminders >= 0),
    -- The result whose arrival closed it.
    resolved_by   uuid,
    -- Opened while the site was flapping: recorded, not announced.
    quiet         boolean     NOT NULL DEFAULT false,
    site          text        NOT NULL,
    url           text        NOT NULL,
    severity      text        NOT NULL CHECK (severity IN ('down', 'degraded', 'nodata')),
    cause_kind    text,
    cause_message text,
    CHECK (resolved_at IS NULL OR resolved_at >= started_at)
);

-- A site's incident history (status page, report) and "is anything open".
CREATE INDEX incidents_site_started_at ON incidents (site, started_at DESC);
CREATE INDEX incidents_open ON incidents (started_at) WHERE resolved_at IS NULL;

-- The outbox: one row per notification and notifier, inserted in the alerter's batch
-- transaction and sent afterwards, at least once. dedup_key is stable (incident id, kind and
-- sequence number), travels with every attempt (Idempotency-Key header and body), and makes a
-- replayed batch insert nothing twice. A failing receiver's rows stay here, visible, with the
-- last error and the next attempt time; other notifiers are not held up.
CREATE TABLE notifications (
    created_at      timestamptz NOT NULL DEFAULT now(),
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    delivered_at    timestamptz,
    attempts        integer     NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    incident_id     uuid,
    dedup_key       text        NOT NULL,
    notifier        text        NOT NULL,
    kind            text        NOT NULL
        CHECK (kind IN ('open', 'reminder', 'resolve', 'flapping', 'flap_ended')),
    site            text        NOT NULL,
    last_error      text,
    -- The event as notifications describe it (src/alert/event.rs): the webhook's default body
    -- and what a Lua formatter receives.
    event           jsonb       NOT NULL,
    PRIMARY KEY (dedup_key, notifier)
);

-- What is left to send, in order.
CREATE INDEX notifications_pending ON notifications (notifier, next_attempt_at)
    WHERE delivered_at IS NULL;

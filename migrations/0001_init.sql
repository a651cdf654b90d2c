-- 0001_init: check results, the consumer's Kafka positions, and quarantined messages.
--
-- Applied by `sitewatch::store::migrate` inside one transaction; never edit this file after it
-- has shipped (its sha256 is recorded in schema_migrations): add 0002_*.sql instead.
-- docs/storage.md explains each choice (ids, indexes, retention).

-- One row per check. Fixed-width columns come first, widest first, so rows carry no alignment
-- padding (it adds up at 100M rows); variable-width columns follow.
CREATE TABLE check_results (
    -- UUID v7 from the scheduler: unique, and time-ordered so the primary-key btree appends.
    id              uuid             NOT NULL PRIMARY KEY,
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
    metrics         jsonb            NOT NULL
);

-- "Latest result of a site" (ORDER BY scheduled_at DESC LIMIT 1) and "one site over a time
-- range" both walk this index.
CREATE INDEX check_results_site_scheduled_at ON check_results (site, scheduled_at DESC);

-- "Everything in a time range" and retention (`sitewatch prune`): rows arrive roughly in
-- scheduled_at order, so a BRIN index is a few pages for 100M rows and costs inserts nothing
-- measurable.
CREATE INDEX check_results_scheduled_at_brin ON check_results USING brin (scheduled_at);

-- The next Kafka offset to read, per consumer group and partition. Written in the same
-- transaction as the rows it covers: this table, not Kafka, is the consumer's position.
-- Updated once per batch and partition: the low fill factor keeps those updates HOT.
CREATE TABLE consumer_offsets (
    consumer_group text        NOT NULL,
    topic          text        NOT NULL,
    partition      integer     NOT NULL,
    next_offset    bigint      NOT NULL CHECK (next_offset >= 0),
    updated_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer_group, topic, partition)
) WITH (fillfactor = 50);

-- Messages that could not be stored as a check result, kept as they arrived with the reason.
CREATE TABLE dead_letters (
    id           bigserial   PRIMARY KEY,
    topic        text        NOT NULL,
    partition    integer     NOT NULL,
    kafka_offset bigint      NOT NULL,
    key          bytea,
    payload      bytea,
    reason       text        NOT NULL,
    received_at  timestamptz NOT NULL DEFAULT now(),
    UNIQUE (topic, partition, kafka_offset)
);

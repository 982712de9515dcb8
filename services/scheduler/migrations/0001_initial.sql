-- Tenants, jobs, items and the credit ledger.

CREATE TABLE tenants (
    id               text PRIMARY KEY,
    key_hash         bytea NOT NULL UNIQUE,          -- sha256 of the tenant's API key
    weight           double precision NOT NULL CHECK (weight > 0),
    max_concurrency  integer CHECK (max_concurrency > 0),
    max_queued       bigint NOT NULL CHECK (max_queued >= 0),
    credits          bigint,                          -- NULL: billing off
    created_at       timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE jobs (
    id               uuid PRIMARY KEY,
    tenant_id        text NOT NULL REFERENCES tenants (id),
    provider         text NOT NULL,
    model            text NOT NULL,
    operation        text NOT NULL,
    lane             text NOT NULL,                   -- the upstream budget its items queue on
    priority         integer NOT NULL DEFAULT 0,
    metadata         jsonb NOT NULL DEFAULT '{}'::jsonb,
    items_total      bigint NOT NULL,
    n_pending        bigint NOT NULL,
    n_processing     bigint NOT NULL DEFAULT 0,
    n_done           bigint NOT NULL DEFAULT 0,
    n_failed         bigint NOT NULL DEFAULT 0,
    n_canceled       bigint NOT NULL DEFAULT 0,
    canceled         boolean NOT NULL DEFAULT false,
    idempotency_key  text,
    request_hash     text,
    seq              bigserial NOT NULL,              -- listing cursor
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    finished_at      timestamptz
);
CREATE UNIQUE INDEX jobs_idempotency ON jobs (tenant_id, idempotency_key) WHERE idempotency_key IS NOT NULL;
CREATE INDEX jobs_tenant_seq ON jobs (tenant_id, seq DESC);

CREATE SEQUENCE item_changes;
CREATE SEQUENCE leases;

CREATE TABLE items (
    id               uuid PRIMARY KEY,
    job_id           uuid NOT NULL REFERENCES jobs (id),
    tenant_id        text NOT NULL,
    lane             text NOT NULL,
    priority         integer NOT NULL,
    seq              bigint NOT NULL,                 -- submit order within the job
    ref              text NOT NULL,
    input            text NOT NULL,                   -- JSON text, passed through untouched
    est_tokens       integer NOT NULL DEFAULT 0,
    cost             bigint NOT NULL DEFAULT 0,       -- credits reserved for this item
    status           text NOT NULL DEFAULT 'PENDING'
                     CHECK (status IN ('PENDING', 'PROCESSING', 'DONE', 'FAILED', 'CANCELED')),
    attempts         integer NOT NULL DEFAULT 0,
    run_after        timestamptz NOT NULL DEFAULT now(),   -- retry backoff
    lease            bigint,                          -- fencing token of the current holder
    worker           text,
    leased_until     timestamptz,
    upstream_id      text,                            -- the provider's id once it accepted the call
    output           text,
    error            text,
    usage            text,
    change_seq       bigint NOT NULL DEFAULT nextval('item_changes'),
    created_at       timestamptz NOT NULL DEFAULT now(),
    started_at       timestamptz,
    finished_at      timestamptz
);
-- The dispatch index: one tenant's next items in one lane, independent of backlog size.
CREATE INDEX items_ready ON items (lane, tenant_id, priority DESC, run_after, seq) WHERE status = 'PENDING';
CREATE INDEX items_job ON items (job_id, seq);
CREATE INDEX items_job_changes ON items (job_id, change_seq);
CREATE INDEX items_leased ON items (leased_until) WHERE status = 'PROCESSING';
CREATE UNIQUE INDEX items_upstream ON items (upstream_id) WHERE upstream_id IS NOT NULL;

-- Every credit movement. For each tenant with billing on, credits = sum(amount).
CREATE TABLE credit_ledger (
    id               bigserial PRIMARY KEY,
    tenant_id        text NOT NULL REFERENCES tenants (id),
    kind             text NOT NULL CHECK (kind IN ('grant', 'reserve', 'charge', 'refund')),
    amount           bigint NOT NULL,                 -- signed change of the balance
    job_id           uuid,
    item_id          uuid,
    created_at       timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX credit_ledger_tenant ON credit_ledger (tenant_id, id);
-- A charge or refund happens once per item, whatever retried or crashed.
CREATE UNIQUE INDEX credit_ledger_settled_once ON credit_ledger (item_id) WHERE kind IN ('charge', 'refund');

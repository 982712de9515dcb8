-- Each scheduler replica's dispatches per tenant over the last minute, as it last published
-- them (every few seconds, off the dispatch path): the queue statistics of any replica add
-- up every live replica's. Only adds, so it rolls out replica by replica.
CREATE TABLE dispatch_rates (
    replica       text NOT NULL,
    tenant_id     text NOT NULL,
    last_minute   integer NOT NULL,
    published_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (replica, tenant_id)
);

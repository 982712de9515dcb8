-- Provider deliveries (a webhook's `webhook-id`) processed in the last minutes, so that a
-- replay of one is not processed again (queries/deliveries.sql). Recorded in the transaction
-- that applies the delivery; rows older than the window are dropped as new ones arrive.
-- Only adds a table, so it rolls out replica by replica.
CREATE TABLE upstream_deliveries (
    provider     text NOT NULL,
    delivery_id  text NOT NULL,
    seen_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (provider, delivery_id)
);
CREATE INDEX upstream_deliveries_seen_at ON upstream_deliveries (seen_at);

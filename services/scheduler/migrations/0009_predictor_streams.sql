-- The predictors with a work stream open to each scheduler replica, as the replica last
-- published them (every few seconds): the queue statistics of any replica list every
-- replica's predictors, for the operator's status page. Only adds.
CREATE TABLE predictor_streams (
    replica       text NOT NULL,
    worker        text NOT NULL,
    providers     text NOT NULL,                   -- comma-separated; '' = every provider
    free_slots    integer NOT NULL,
    connected_at  timestamptz NOT NULL,
    published_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (replica, worker)
);

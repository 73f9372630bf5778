-- Campaign budgets shared by every account, partition and worker. A grant is a conditional
-- UPDATE of one row (used + delta <= budget), so concurrent workers serialise on it and the
-- budget is never overspent. Each event's grant is recorded under (event_id, offer_id): a
-- redelivered event re-applies only the difference, so a replay never consumes twice.

CREATE TABLE offer_budgets (
    offer_id      text    PRIMARY KEY,
    currency      char(3) NOT NULL,
    budget_minor  bigint  NOT NULL CHECK (budget_minor >= 0),
    used_minor    bigint  NOT NULL DEFAULT 0 CHECK (used_minor >= 0),
    updated_at    timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE budget_movements (
    event_id     text   NOT NULL,
    offer_id     text   NOT NULL REFERENCES offer_budgets (offer_id),
    delta_minor  bigint NOT NULL,   -- consumed (+) or given back (-) by the event
    recorded_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (event_id, offer_id)
);

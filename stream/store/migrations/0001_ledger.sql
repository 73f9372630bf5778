-- The ledger: an append-only double-entry journal and the balances derived from it.
-- Each entry is a transfer: amount_minor leaves debit_book and enters credit_book, so its two legs
-- sum to zero by construction. Nothing is updated or deleted; a correction is a new entry.

CREATE TABLE ledger_entries (
    entry_seq        bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    accrual_id       text        NOT NULL UNIQUE,   -- <source_event_id>#<n>: a replay writes nothing
    source_event_id  text        NOT NULL,
    account_id       text        NOT NULL,
    transaction_ref  text        NOT NULL,
    entry_kind       text        NOT NULL CHECK (entry_kind IN (
                         'PENDING_CREATED', 'PENDING_ADJUSTED', 'PENDING_RELEASED', 'CONFIRMED',
                         'MADE_AVAILABLE', 'EXPIRED', 'CLAWED_BACK', 'RECREDITED')),
    debit_book       text        NOT NULL CHECK (debit_book IN ('EXPENSE', 'PENDING', 'CONFIRMED', 'AVAILABLE')),
    credit_book      text        NOT NULL CHECK (credit_book IN ('EXPENSE', 'PENDING', 'CONFIRMED', 'AVAILABLE')),
    amount_minor     bigint      NOT NULL CHECK (amount_minor > 0),
    currency         char(3)     NOT NULL CHECK (currency ~ '^[A-Z]{3}$'),
    reward_kind      text        NOT NULL CHECK (reward_kind IN ('CASH', 'POINTS', 'STORE_CREDIT', 'CHARITY')),
    offer_id         text,
    rule_version     integer,
    occurred_at      timestamptz NOT NULL,
    recorded_at      timestamptz NOT NULL DEFAULT now(),
    explanation      jsonb       NOT NULL,
    fingerprint      text        NOT NULL,          -- digest of the entry's bytes: same id, other content = conflict
    CHECK (debit_book <> credit_book)
);
CREATE INDEX ledger_entries_account ON ledger_entries (account_id, entry_seq DESC);
CREATE INDEX ledger_entries_source_event ON ledger_entries (source_event_id);

CREATE FUNCTION refuse_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION '% is append-only: % refused', TG_TABLE_NAME, TG_OP
        USING ERRCODE = 'insufficient_privilege';
END $$;
CREATE TRIGGER ledger_entries_append_only BEFORE UPDATE OR DELETE OR TRUNCATE ON ledger_entries
    FOR EACH STATEMENT EXECUTE FUNCTION refuse_change();

-- Purchases that earned nothing, with why: the other half of "explainable line by line".
CREATE TABLE purchases_not_earned (
    accrual_id       text        PRIMARY KEY,
    source_event_id  text        NOT NULL,
    account_id       text        NOT NULL,
    transaction_ref  text        NOT NULL,
    reason           text        NOT NULL,
    detail           text        NOT NULL,
    basis_minor      bigint      NOT NULL CHECK (basis_minor >= 0),
    basis_currency   char(3)     NOT NULL,
    occurred_at      timestamptz NOT NULL,
    recorded_at      timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX purchases_not_earned_account ON purchases_not_earned (account_id, occurred_at DESC);
CREATE TRIGGER purchases_not_earned_append_only BEFORE UPDATE OR DELETE OR TRUNCATE ON purchases_not_earned
    FOR EACH STATEMENT EXECUTE FUNCTION refuse_change();

-- Customer balances per account, reward kind and currency: the sums of the ledger's legs on the
-- customer's books, kept in the same transaction as the entries that change them.
CREATE TABLE balances (
    account_id             text    NOT NULL,
    reward_kind            text    NOT NULL,
    currency               char(3) NOT NULL,
    pending_minor          bigint  NOT NULL DEFAULT 0 CHECK (pending_minor >= 0),
    confirmed_minor        bigint  NOT NULL DEFAULT 0 CHECK (confirmed_minor >= 0),
    available_minor        bigint  NOT NULL DEFAULT 0,   -- may go negative only through a recorded clawback
    lifetime_earned_minor  bigint  NOT NULL DEFAULT 0 CHECK (lifetime_earned_minor >= 0),
    clawed_back_minor      bigint  NOT NULL DEFAULT 0 CHECK (clawed_back_minor >= 0),
    updated_at             timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (account_id, reward_kind, currency)
);

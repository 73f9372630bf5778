-- Every payout the bank's core banking system was asked to make, and its answer (issue 12, part 1): the operators'
-- view (GET /v1/operations/payouts, the cashback_payouts_unanswered gauges) and the record of the charities'
-- remittances (stream.donations).
--
-- CUSTOMER rows: the worker decides a customer's payout (the PAID_OUT entry, stream.core.payouts); its row is
-- written here by the ledger itself, in the transaction that inserts the entry (the trigger below: payout id = the
-- entry's transaction_ref, requested at the entry's time), and its answer by the sink's answers consumer from
-- <prefix>payout-results (stream.payout_answers). The two may arrive in either order: an answer before its request
-- makes a row with no amount yet, which the request then fills.
-- CHARITY rows: written by a remittance run before its instruction is sent (stream.donations); published_at is set
-- once the instruction's delivery was acknowledged (until then every run sends it again, idempotent by payout id).
-- The first answer stands (as the worker decides for customers): a later answer for an answered payout changes
-- nothing.

CREATE TABLE payouts (
    payout_id        text PRIMARY KEY,
    beneficiary_kind text NOT NULL CHECK (beneficiary_kind IN ('CUSTOMER', 'CHARITY')),
    beneficiary_id   text NOT NULL,        -- the account id (CUSTOMER) or the charity id (CHARITY)
    amount_minor     bigint CHECK (amount_minor > 0),  -- NULL: a customer's answer came before its request
    currency         char(3) NOT NULL CHECK (currency ~ '^[A-Z]{3}$'),
    run_id           text NOT NULL,
    requested_at     timestamptz,          -- NULL with amount_minor
    status           text NOT NULL DEFAULT 'REQUESTED' CHECK (status IN ('REQUESTED', 'CONFIRMED', 'REJECTED')),
    reason_code      text,
    answered_at      timestamptz,
    published_at     timestamptz,          -- CHARITY: the instruction's delivery acknowledged
    recorded_at      timestamptz NOT NULL DEFAULT now(),
    payout_seq       bigint GENERATED ALWAYS AS IDENTITY UNIQUE,  -- the operations list's keyset
    CONSTRAINT payouts_answered CHECK ((status = 'REQUESTED') = (answered_at IS NULL)),
    CONSTRAINT payouts_requested CHECK ((amount_minor IS NULL) = (requested_at IS NULL)),
    CONSTRAINT payouts_charity_requested CHECK (beneficiary_kind = 'CUSTOMER' OR amount_minor IS NOT NULL)
);

CREATE INDEX payouts_unanswered ON payouts (beneficiary_kind, requested_at) WHERE status = 'REQUESTED';
CREATE INDEX payouts_by_status ON payouts (status, payout_seq);
CREATE INDEX payouts_of_charity ON payouts (beneficiary_id, currency) WHERE beneficiary_kind = 'CHARITY';

-- A customer's payout request, from its PAID_OUT entry, in the entry's own transaction (COPY included). An
-- entry written again is a replay the ledger refuses before this runs; an answer that came first keeps its status.
CREATE FUNCTION record_customer_payouts() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO payouts AS p (payout_id, beneficiary_kind, beneficiary_id, amount_minor, currency, run_id, requested_at)
    SELECT transaction_ref, 'CUSTOMER', account_id, amount_minor, currency, split_part(transaction_ref, ':', 2), occurred_at
    FROM added WHERE entry_kind = 'PAID_OUT'
    ON CONFLICT (payout_id) DO UPDATE SET amount_minor = excluded.amount_minor, requested_at = excluded.requested_at
        WHERE p.amount_minor IS NULL;
    RETURN NULL;
END $$;

CREATE TRIGGER ledger_entries_record_payouts AFTER INSERT ON ledger_entries
    REFERENCING NEW TABLE AS added FOR EACH STATEMENT EXECUTE FUNCTION record_customer_payouts();
ALTER TABLE ledger_entries ENABLE ALWAYS TRIGGER ledger_entries_record_payouts;

-- An erasure (erase_account) pseudonymises the account's ledger rows: its payouts follow their PAID_OUT entries
-- (the same pseudonym, the entry's pseudonymised reference as the payout id). The ledger is otherwise append-only,
-- so this fires for erasures alone. The answers consumer writes no row for an erased account (stream.store.payouts).
CREATE FUNCTION payouts_follow_erasure() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE payouts SET payout_id = NEW.transaction_ref, beneficiary_id = NEW.account_id
    WHERE payout_id = OLD.transaction_ref AND beneficiary_kind = 'CUSTOMER' AND beneficiary_id = OLD.account_id;
    RETURN NULL;
END $$;

CREATE TRIGGER ledger_entries_payouts_follow_erasure AFTER UPDATE ON ledger_entries FOR EACH ROW
    WHEN (OLD.entry_kind = 'PAID_OUT' AND OLD.account_id IS DISTINCT FROM NEW.account_id)
    EXECUTE FUNCTION payouts_follow_erasure();
ALTER TABLE ledger_entries ENABLE ALWAYS TRIGGER ledger_entries_payouts_follow_erasure;

-- The payouts the ledger already holds: requested, and REJECTED where the worker returned them (the reason code is
-- not in the ledger; the answers consumer, reading payout-results from its start, keeps this first answer).
INSERT INTO payouts (payout_id, beneficiary_kind, beneficiary_id, amount_minor, currency, run_id, requested_at)
SELECT transaction_ref, 'CUSTOMER', account_id, amount_minor, currency, split_part(transaction_ref, ':', 2), occurred_at
FROM ledger_entries WHERE entry_kind = 'PAID_OUT'
ON CONFLICT (payout_id) DO NOTHING;
UPDATE payouts p SET status = 'REJECTED', answered_at = r.occurred_at
FROM ledger_entries r
WHERE r.entry_kind = 'PAYOUT_RETURNED' AND r.transaction_ref = p.payout_id AND p.status = 'REQUESTED';

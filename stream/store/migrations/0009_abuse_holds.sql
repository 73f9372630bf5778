-- Abuse controls (stream/core/abuse.py, stream/core/holds.py): a reward an abuse rule flags goes to
-- the HELD book instead of AVAILABLE (or DONATED), until operations release it (HELD -> AVAILABLE)
-- or forfeit it (HELD -> EXPENSE). The engine decides every movement; the ledger only learns the
-- new book, its entry kinds, and where each entry's purchase was made.

-- The HELD book and its entry kinds. The lists are 0004's and 0001's, with the new names added.
ALTER TABLE ledger_entries DROP CONSTRAINT ledger_entries_entry_kind_check;
ALTER TABLE ledger_entries ADD CONSTRAINT ledger_entries_entry_kind_check CHECK (entry_kind IN (
    'PENDING_CREATED', 'PENDING_ADJUSTED', 'PENDING_RELEASED', 'CONFIRMED', 'MADE_AVAILABLE', 'EXPIRED',
    'CLAWED_BACK', 'RECREDITED', 'HELD', 'HOLD_RELEASED', 'HOLD_FORFEITED'));
ALTER TABLE ledger_entries DROP CONSTRAINT ledger_entries_debit_book_check;
ALTER TABLE ledger_entries DROP CONSTRAINT ledger_entries_credit_book_check;
ALTER TABLE ledger_entries ADD CONSTRAINT ledger_entries_debit_book_check
    CHECK (debit_book IN ('EXPENSE', 'PENDING', 'CONFIRMED', 'AVAILABLE', 'DONATED', 'HELD'));
ALTER TABLE ledger_entries ADD CONSTRAINT ledger_entries_credit_book_check
    CHECK (credit_book IN ('EXPENSE', 'PENDING', 'CONFIRMED', 'AVAILABLE', 'DONATED', 'HELD'));

-- Where and on which purchase (accrual v3): the purchase's ref is another than the entry's own
-- transaction_ref for a refund or a chargeback. NULL on rows written before.
ALTER TABLE ledger_entries ADD COLUMN merchant_id text;
ALTER TABLE ledger_entries ADD COLUMN purchase_ref text;

-- The customer's held balance: flagged rewards awaiting review, not spendable.
ALTER TABLE balances ADD COLUMN held_minor bigint NOT NULL DEFAULT 0 CHECK (held_minor >= 0);

-- A forfeited hold is taken back like a clawback: lifetime earned = pending aside, confirmed + held
-- + available + donated + clawed back, line by line.
CREATE OR REPLACE FUNCTION clawed_back_movement(entry_kind text, amount_minor bigint)
RETURNS bigint LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE entry_kind WHEN 'CLAWED_BACK' THEN amount_minor WHEN 'HOLD_FORFEITED' THEN amount_minor
        WHEN 'RECREDITED' THEN -amount_minor ELSE 0 END
$$;

-- A charity reward held for review is not given yet: promised, like pending and confirmed ones.
CREATE OR REPLACE VIEW charity_donations AS
WITH per_donor AS (
    SELECT beneficiary_id AS charity_id, currency::text AS currency, account_id,
        sum(book_movement('DONATED', debit_book, credit_book, amount_minor)) AS donated,
        sum(book_movement('PENDING', debit_book, credit_book, amount_minor)
            + book_movement('CONFIRMED', debit_book, credit_book, amount_minor)
            + book_movement('HELD', debit_book, credit_book, amount_minor)) AS promised,
        sum(clawed_back_movement(entry_kind, amount_minor)) AS clawed_back
    FROM ledger_entries
    WHERE beneficiary_id IS NOT NULL
    GROUP BY beneficiary_id, currency, account_id
)
SELECT charity_id, currency,
       sum(donated)::bigint AS donated_minor,
       sum(promised)::bigint AS promised_minor,
       sum(clawed_back)::bigint AS clawed_back_minor,
       count(*) FILTER (WHERE donated > 0 OR promised > 0) AS donors
FROM per_donor
GROUP BY charity_id, currency;

-- The operations list of held rewards reads only the entries that touch HELD.
CREATE INDEX ledger_entries_holds ON ledger_entries (account_id, purchase_ref)
    WHERE debit_book = 'HELD' OR credit_book = 'HELD';
-- The merchant-concentration scan reads the confirmations of its window.
CREATE INDEX ledger_entries_merchant_rewards ON ledger_entries (occurred_at)
    WHERE entry_kind = 'CONFIRMED' AND merchant_id IS NOT NULL;

-- Merchants the scan (stream/abuse_scan.py) found concentrating rewards on few accounts, with its
-- figures. No account id: the ledger says which accounts bought there, and an erasure reaches it.
CREATE TABLE merchant_flags (
    flag_seq      bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    merchant_id   text        NOT NULL,
    currency      text        NOT NULL,          -- the rewards' unit (ISO 4217, or PTS)
    window_from   timestamptz NOT NULL,
    window_to     timestamptz NOT NULL,
    accounts      integer     NOT NULL CHECK (accounts > 0),
    total_minor   bigint      NOT NULL CHECK (total_minor > 0),
    until_at      timestamptz NOT NULL,          -- the accounts' purchases there stay flagged until then
    detail        text        NOT NULL,
    flagged_at    timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX merchant_flags_active ON merchant_flags (merchant_id, currency, until_at DESC);
CREATE TRIGGER merchant_flags_append_only BEFORE UPDATE OR DELETE OR TRUNCATE ON merchant_flags
    FOR EACH STATEMENT EXECUTE FUNCTION refuse_change();

-- An erasure (0008) pseudonymises each entry's transaction_ref with a salt it never stores; the
-- purchase's ref follows it on the purchase's own entries (same value before, same after) and is
-- dropped on a refund's or a chargeback's, whose purchase's pseudonym cannot be computed here.
CREATE FUNCTION purchase_ref_follows_erasure() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF erasure_in_progress() IS NOT NULL AND NEW.account_id IS DISTINCT FROM OLD.account_id THEN
        NEW.purchase_ref := CASE WHEN OLD.purchase_ref = OLD.transaction_ref THEN NEW.transaction_ref END;
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER ledger_entries_purchase_ref_erased BEFORE UPDATE ON ledger_entries
    FOR EACH ROW EXECUTE FUNCTION purchase_ref_follows_erasure();
ALTER TABLE ledger_entries ENABLE ALWAYS TRIGGER ledger_entries_purchase_ref_erased;

-- Cash payouts (issue 12, part 1; stream/core/payouts.py): a payout run moves an account's AVAILABLE cash at or
-- above a minimum into the new PAID_OUT book (entry kind PAID_OUT, accrual v7) and asks the bank's core banking
-- system to pay it; a rejection brings it back (PAYOUT_RETURNED, PAID_OUT -> AVAILABLE). A confirmation moves no
-- money. The engine decides every movement from the account's wallet; the ledger only learns the book, the kinds,
-- their shapes, and folds PAID_OUT into balances.paid_out_minor (what the customer has been paid, net of returns).
-- Neither kind is earned nor clawed back (earned_movement and clawed_back_movement give them 0): lifetime earned =
-- confirmed + held + available + donated + paid out + clawed back, line by line (pending aside).
--
-- The kind list is 0015's with the new kinds added; the book lists 0009's with PAID_OUT added.

ALTER TABLE ledger_entries DROP CONSTRAINT ledger_entries_entry_kind_check;
ALTER TABLE ledger_entries ADD CONSTRAINT ledger_entries_entry_kind_check CHECK (entry_kind IN (
    'PENDING_CREATED', 'PENDING_ADJUSTED', 'PENDING_RELEASED', 'CONFIRMED', 'MADE_AVAILABLE', 'EXPIRED',
    'CLAWED_BACK', 'RECREDITED', 'HELD', 'HOLD_RELEASED', 'HOLD_FORFEITED', 'AVAILABLE_EXPIRED',
    'PAID_OUT', 'PAYOUT_RETURNED'));
ALTER TABLE ledger_entries DROP CONSTRAINT ledger_entries_debit_book_check;
ALTER TABLE ledger_entries DROP CONSTRAINT ledger_entries_credit_book_check;
ALTER TABLE ledger_entries ADD CONSTRAINT ledger_entries_debit_book_check
    CHECK (debit_book IN ('EXPENSE', 'PENDING', 'CONFIRMED', 'AVAILABLE', 'DONATED', 'HELD', 'PAID_OUT'));
ALTER TABLE ledger_entries ADD CONSTRAINT ledger_entries_credit_book_check
    CHECK (credit_book IN ('EXPENSE', 'PENDING', 'CONFIRMED', 'AVAILABLE', 'DONATED', 'HELD', 'PAID_OUT'));

-- Only cash is paid out, only from AVAILABLE into PAID_OUT and back, never an offer's or a sponsor's, and
-- PAID_OUT is moved by these two kinds alone.
ALTER TABLE ledger_entries ADD CONSTRAINT ledger_entries_payout_shape CHECK (
    (entry_kind <> 'PAID_OUT' OR (debit_book = 'AVAILABLE' AND credit_book = 'PAID_OUT'))
    AND (entry_kind <> 'PAYOUT_RETURNED' OR (debit_book = 'PAID_OUT' AND credit_book = 'AVAILABLE'))
    AND (entry_kind NOT IN ('PAID_OUT', 'PAYOUT_RETURNED')
         OR (reward_kind = 'CASH' AND offer_id IS NULL AND sponsor_id IS NULL AND beneficiary_id IS NULL))
    AND ('PAID_OUT' NOT IN (debit_book, credit_book) OR entry_kind IN ('PAID_OUT', 'PAYOUT_RETURNED')));

-- What the customer has been paid out, net of returned payouts: never negative (a return follows its payout).
ALTER TABLE balances ADD COLUMN paid_out_minor bigint NOT NULL DEFAULT 0 CHECK (paid_out_minor >= 0);

-- 0010's fold with the PAID_OUT book added.
CREATE OR REPLACE FUNCTION fold_into_balances() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    lowered jsonb;  -- balances absent from the table that the rows would lower: created and added to apart
BEGIN
    WITH d AS (
        SELECT account_id, reward_kind, currency,
            sum(book_movement('PENDING', debit_book, credit_book, amount_minor))::bigint AS pending,
            sum(book_movement('CONFIRMED', debit_book, credit_book, amount_minor))::bigint AS confirmed,
            sum(book_movement('AVAILABLE', debit_book, credit_book, amount_minor))::bigint AS available,
            sum(earned_movement(entry_kind, amount_minor))::bigint AS earned,
            sum(clawed_back_movement(entry_kind, amount_minor))::bigint AS clawed_back,
            sum(book_movement('DONATED', debit_book, credit_book, amount_minor))::bigint AS donated,
            sum(book_movement('HELD', debit_book, credit_book, amount_minor))::bigint AS held,
            sum(book_movement('PAID_OUT', debit_book, credit_book, amount_minor))::bigint AS paid_out
        FROM added GROUP BY account_id, reward_kind, currency
    ), updated AS (
        UPDATE balances AS b SET
            pending_minor = b.pending_minor + d.pending,
            confirmed_minor = b.confirmed_minor + d.confirmed,
            available_minor = b.available_minor + d.available,
            lifetime_earned_minor = b.lifetime_earned_minor + d.earned,
            clawed_back_minor = b.clawed_back_minor + d.clawed_back,
            donated_minor = b.donated_minor + d.donated,
            held_minor = b.held_minor + d.held,
            paid_out_minor = b.paid_out_minor + d.paid_out,
            updated_at = now()
        FROM d WHERE b.account_id = d.account_id AND b.reward_kind = d.reward_kind AND b.currency = d.currency
        RETURNING b.account_id, b.reward_kind, b.currency
    ), absent AS MATERIALIZED (
        SELECT * FROM d WHERE NOT EXISTS (
            SELECT FROM updated b WHERE b.account_id = d.account_id AND b.reward_kind = d.reward_kind AND b.currency = d.currency)
    ), created AS (
        INSERT INTO balances AS b (account_id, reward_kind, currency, pending_minor, confirmed_minor, available_minor,
            lifetime_earned_minor, clawed_back_minor, donated_minor, held_minor, paid_out_minor)
        SELECT account_id, reward_kind, currency, pending, confirmed, available, earned, clawed_back, donated, held, paid_out
        FROM absent WHERE least(pending, confirmed, earned, clawed_back, held, paid_out) >= 0
        ON CONFLICT (account_id, reward_kind, currency) DO UPDATE SET  -- created by another writer since the snapshot
            pending_minor = b.pending_minor + excluded.pending_minor,
            confirmed_minor = b.confirmed_minor + excluded.confirmed_minor,
            available_minor = b.available_minor + excluded.available_minor,
            lifetime_earned_minor = b.lifetime_earned_minor + excluded.lifetime_earned_minor,
            clawed_back_minor = b.clawed_back_minor + excluded.clawed_back_minor,
            donated_minor = b.donated_minor + excluded.donated_minor,
            held_minor = b.held_minor + excluded.held_minor,
            paid_out_minor = b.paid_out_minor + excluded.paid_out_minor,
            updated_at = now()
    )
    SELECT jsonb_agg(absent) INTO lowered FROM absent WHERE least(pending, confirmed, earned, clawed_back, held, paid_out) < 0;

    IF lowered IS NOT NULL THEN
        INSERT INTO balances (account_id, reward_kind, currency)
        SELECT account_id, reward_kind, currency FROM jsonb_to_recordset(lowered) AS d(account_id text, reward_kind text, currency text)
        ON CONFLICT (account_id, reward_kind, currency) DO NOTHING;
        UPDATE balances AS b SET
            pending_minor = b.pending_minor + d.pending,
            confirmed_minor = b.confirmed_minor + d.confirmed,
            available_minor = b.available_minor + d.available,
            lifetime_earned_minor = b.lifetime_earned_minor + d.earned,
            clawed_back_minor = b.clawed_back_minor + d.clawed_back,
            donated_minor = b.donated_minor + d.donated,
            held_minor = b.held_minor + d.held,
            paid_out_minor = b.paid_out_minor + d.paid_out,
            updated_at = now()
        FROM jsonb_to_recordset(lowered) AS d(account_id text, reward_kind text, currency text, pending bigint,
            confirmed bigint, available bigint, earned bigint, clawed_back bigint, donated bigint, held bigint,
            paid_out bigint)
        WHERE b.account_id = d.account_id AND b.reward_kind = d.reward_kind AND b.currency = d.currency;
    END IF;
    RETURN NULL;
END $$;

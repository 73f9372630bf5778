-- Redemptions (issue 12; stream/core/redemptions.py): the customer redeems points or store credit through the API.
-- The worker decides it against the account's wallet: redeemed, one entry of the new kind REDEEMED moves the amount
-- from AVAILABLE to the new REDEEMED book (accrual v8; the customer's spent total, balances.redeemed_minor);
-- refused (above the balance, or a wallet not known), a zero-amount line REDEMPTION_REFUSED, written with the
-- purchases that earned nothing (the other lines that move no money) under its own line_kind, so the API answers a
-- repeated request from it, the history shows it, and an erasure (0008, 0011) moves it with the account's other rows.
-- REDEEMED is neither earned nor clawed back (earned_movement, clawed_back_movement give it 0): lifetime earned =
-- confirmed + held + available + donated + paid out + redeemed + clawed back, line by line (pending aside).
--
-- The kind list is 0017's with REDEEMED added; the book lists 0017's with REDEEMED added.

ALTER TABLE ledger_entries DROP CONSTRAINT ledger_entries_entry_kind_check;
ALTER TABLE ledger_entries ADD CONSTRAINT ledger_entries_entry_kind_check CHECK (entry_kind IN (
    'PENDING_CREATED', 'PENDING_ADJUSTED', 'PENDING_RELEASED', 'CONFIRMED', 'MADE_AVAILABLE', 'EXPIRED',
    'CLAWED_BACK', 'RECREDITED', 'HELD', 'HOLD_RELEASED', 'HOLD_FORFEITED', 'AVAILABLE_EXPIRED',
    'PAID_OUT', 'PAYOUT_RETURNED', 'REDEEMED'));
ALTER TABLE ledger_entries DROP CONSTRAINT ledger_entries_debit_book_check;
ALTER TABLE ledger_entries DROP CONSTRAINT ledger_entries_credit_book_check;
ALTER TABLE ledger_entries ADD CONSTRAINT ledger_entries_debit_book_check
    CHECK (debit_book IN ('EXPENSE', 'PENDING', 'CONFIRMED', 'AVAILABLE', 'DONATED', 'HELD', 'PAID_OUT', 'REDEEMED'));
ALTER TABLE ledger_entries ADD CONSTRAINT ledger_entries_credit_book_check
    CHECK (credit_book IN ('EXPENSE', 'PENDING', 'CONFIRMED', 'AVAILABLE', 'DONATED', 'HELD', 'PAID_OUT', 'REDEEMED'));

-- Only points and store credit are redeemed, only from AVAILABLE into REDEEMED, never an offer's, a sponsor's or a
-- charity's, and REDEEMED is moved by this kind alone (a redemption is never undone: nothing moves out of it).
ALTER TABLE ledger_entries ADD CONSTRAINT ledger_entries_redemption_shape CHECK (
    (entry_kind <> 'REDEEMED'
     OR (debit_book = 'AVAILABLE' AND credit_book = 'REDEEMED' AND reward_kind IN ('POINTS', 'STORE_CREDIT')
         AND offer_id IS NULL AND sponsor_id IS NULL AND beneficiary_id IS NULL))
    AND ('REDEEMED' NOT IN (debit_book, credit_book) OR entry_kind = 'REDEEMED'));

-- What the customer has redeemed: never negative (nothing moves out of REDEEMED).
ALTER TABLE balances ADD COLUMN redeemed_minor bigint NOT NULL DEFAULT 0 CHECK (redeemed_minor >= 0);

-- A refused redemption is a line of its own kind beside the purchases that earned nothing (a constant default: no
-- row is rewritten, no trigger fires).
ALTER TABLE purchases_not_earned ADD COLUMN line_kind text NOT NULL DEFAULT 'NOT_EARNED'
    CHECK (line_kind IN ('NOT_EARNED', 'REDEMPTION_REFUSED'));

-- The API reads one redemption of one account by its id (the entries' transaction_ref).
CREATE INDEX ledger_entries_redemptions ON ledger_entries (account_id, transaction_ref) WHERE entry_kind = 'REDEEMED';
CREATE INDEX purchases_not_earned_redemptions ON purchases_not_earned (account_id, transaction_ref)
    WHERE line_kind = 'REDEMPTION_REFUSED';

-- 0017's fold with the REDEEMED book added.
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
            sum(book_movement('PAID_OUT', debit_book, credit_book, amount_minor))::bigint AS paid_out,
            sum(book_movement('REDEEMED', debit_book, credit_book, amount_minor))::bigint AS redeemed
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
            redeemed_minor = b.redeemed_minor + d.redeemed,
            updated_at = now()
        FROM d WHERE b.account_id = d.account_id AND b.reward_kind = d.reward_kind AND b.currency = d.currency
        RETURNING b.account_id, b.reward_kind, b.currency
    ), absent AS MATERIALIZED (
        SELECT * FROM d WHERE NOT EXISTS (
            SELECT FROM updated b WHERE b.account_id = d.account_id AND b.reward_kind = d.reward_kind AND b.currency = d.currency)
    ), created AS (
        INSERT INTO balances AS b (account_id, reward_kind, currency, pending_minor, confirmed_minor, available_minor,
            lifetime_earned_minor, clawed_back_minor, donated_minor, held_minor, paid_out_minor, redeemed_minor)
        SELECT account_id, reward_kind, currency, pending, confirmed, available, earned, clawed_back, donated, held, paid_out, redeemed
        FROM absent WHERE least(pending, confirmed, earned, clawed_back, held, paid_out, redeemed) >= 0
        ON CONFLICT (account_id, reward_kind, currency) DO UPDATE SET  -- created by another writer since the snapshot
            pending_minor = b.pending_minor + excluded.pending_minor,
            confirmed_minor = b.confirmed_minor + excluded.confirmed_minor,
            available_minor = b.available_minor + excluded.available_minor,
            lifetime_earned_minor = b.lifetime_earned_minor + excluded.lifetime_earned_minor,
            clawed_back_minor = b.clawed_back_minor + excluded.clawed_back_minor,
            donated_minor = b.donated_minor + excluded.donated_minor,
            held_minor = b.held_minor + excluded.held_minor,
            paid_out_minor = b.paid_out_minor + excluded.paid_out_minor,
            redeemed_minor = b.redeemed_minor + excluded.redeemed_minor,
            updated_at = now()
    )
    SELECT jsonb_agg(absent) INTO lowered FROM absent WHERE least(pending, confirmed, earned, clawed_back, held, paid_out, redeemed) < 0;

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
            redeemed_minor = b.redeemed_minor + d.redeemed,
            updated_at = now()
        FROM jsonb_to_recordset(lowered) AS d(account_id text, reward_kind text, currency text, pending bigint,
            confirmed bigint, available bigint, earned bigint, clawed_back bigint, donated bigint, held bigint,
            paid_out bigint, redeemed bigint)
        WHERE b.account_id = d.account_id AND b.reward_kind = d.reward_kind AND b.currency = d.currency;
    END IF;
    RETURN NULL;
END $$;

-- The balances fold (0010, last defined by 0018) reaches each balance it adds to by its key, never by a hash of the
-- whole table.
--
-- 0018's UPDATE joined the batch's per-balance sums with balances; the planner, which cannot know how many balances a
-- transition table touches, hashed the whole table on every statement. Measured on the sink's write of a batch of
-- 2,000 rows (auto_explain, 7,662 balances): 4.2 of the fold's 9.1 ms went to reading and hashing every balance to
-- update 470; and each batch's cost grew with the number of accounts, not with the batch. With hash and merge joins
-- off for the function alone (its SET clause: restored when it returns), each balance is an index probe. The rows
-- the UPDATE did not find are now told apart by their number in the batch (a hashed NOT IN of integers), not by
-- joining two CTEs: without hash joins that join would compare every pair.
--
-- On the sink's write of a logged run's 109,408 rows (batches of 2,000, one fresh database each, two rounds) the
-- fold took 364 / 365 ms against 407 / 414 ms, with the same balances and open_pending to the byte.
--
-- Same arithmetic, same rows, same order of statements as 0018 (tests/integration/test_ledger.py keeps balances equal
-- to stream.core.balances; test_balances_fold_plan.py pins the plan).

CREATE OR REPLACE FUNCTION fold_into_balances() RETURNS trigger LANGUAGE plpgsql
SET enable_hashjoin = off SET enable_mergejoin = off AS $$
DECLARE
    lowered jsonb;  -- balances absent from the table that the rows would lower: created and added to apart
BEGIN
    WITH d AS MATERIALIZED (
        SELECT row_number() OVER () AS n, account_id, reward_kind, currency, pending, confirmed, available, earned,
            clawed_back, donated, held, paid_out, redeemed
        FROM (
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
        ) sums
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
        RETURNING d.n
    ), absent AS MATERIALIZED (
        SELECT account_id, reward_kind, currency, pending, confirmed, available, earned, clawed_back, donated, held,
            paid_out, redeemed
        FROM d WHERE n NOT IN (SELECT n FROM updated)
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

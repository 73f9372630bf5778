-- The open_pending fold (0011) deletes the purchases whose pending reached zero by their keys, not by a join
-- the planner may turn into a nested loop over the batch.
--
-- 0011's DELETE joined open_pending with a DISTINCT subquery over the batch's entries out of PENDING; which plan
-- it got depended on when autovacuum had last analysed open_pending. Measured on the sink's write of a batch of
-- 2,000 entries (Postgres backend instructions, callgrind), one run got a nested loop that rescanned the subquery
-- 846,390 times: 28% of the backend's work, 273,000 instructions per entry instead of about 191,000.
--
-- Now the upsert itself returns each purchase it touched with its new pending amount, and only those at zero or
-- below are deleted, each by its primary key. Same rows kept: only an entry out of PENDING lowers a purchase's
-- pending, so a row at zero or below is always one the batch's upsert just touched (a key whose entries cancel
-- out within the batch is not touched, and was above zero before it).

CREATE OR REPLACE FUNCTION fold_into_open_pending() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    accounts text[];
    purchases text[];
    offers text[];
    currencies char(3)[];
BEGIN
    WITH folded AS (
        INSERT INTO open_pending AS o (account_id, purchase_ref, offer_id, currency, pending_minor, since)
        SELECT * FROM (
            SELECT account_id, coalesce(purchase_ref, transaction_ref), coalesce(offer_id, ''), currency,
                sum(book_movement('PENDING', debit_book, credit_book, amount_minor))::bigint AS moved,
                coalesce(min(occurred_at) FILTER (WHERE credit_book = 'PENDING'), min(occurred_at))
            FROM added WHERE debit_book = 'PENDING' OR credit_book = 'PENDING'
            GROUP BY 1, 2, 3, 4
        ) d WHERE moved <> 0
        ON CONFLICT (account_id, purchase_ref, offer_id, currency) DO UPDATE SET
            pending_minor = o.pending_minor + excluded.pending_minor,
            since = least(o.since, excluded.since)
        RETURNING o.account_id, o.purchase_ref, o.offer_id, o.currency, o.pending_minor
    )
    SELECT array_agg(account_id), array_agg(purchase_ref), array_agg(offer_id), array_agg(currency)
    INTO accounts, purchases, offers, currencies
    FROM folded WHERE pending_minor <= 0;
    IF accounts IS NOT NULL THEN
        DELETE FROM open_pending o
        USING unnest(accounts, purchases, offers, currencies) AS z(account_id, purchase_ref, offer_id, currency)
        WHERE o.account_id = z.account_id AND o.purchase_ref = z.purchase_ref AND o.offer_id = z.offer_id
            AND o.currency = z.currency AND o.pending_minor <= 0;
    END IF;
    RETURN NULL;
END $$;

-- The open_pending fold (0011, last defined by 0014) deletes the purchases whose pending reached zero by the
-- places the upsert left them at (their ctid: a TID scan), not by a join on their keys that the planner may read
-- the whole table for.
--
-- 0014's DELETE joined open_pending with the unnested keys the upsert returned. Its statistics never see a row at
-- zero, so the planner takes the join for a few rows and may hash a sequential scan of the whole table, at every
-- batch: a cost that grows with the open purchases, not with the batch (tests/integration/test_open_pending_fold_plan.py
-- shows that plan on 0014). Measured on the sink draining the same 172,530 accruals into a fresh database per round,
-- 0014 and this in turn, three rounds each (pg_stat_statements, nested statements): the DELETE took 227, 6,516 and
-- 3,118 ms over about 85 batches with 0014, 36, 42 and 32 ms with this; the whole fold 1,370, 7,450 and 4,135 ms
-- against 1,129, 1,132 and 974 ms.
--
-- The upsert returns the ctid of each row it left at zero or below; the DELETE reads exactly those tuples. They
-- cannot move between the two statements: the upsert holds their row locks until the transaction ends, and no
-- other statement of the transaction touches open_pending in between. The recheck of pending_minor stays. Sequential
-- scans are off for the function alone (its SET clause: restored when it returns): costed by statistics that
-- never see a row at zero, a scan of the whole table could still look cheaper than the TID scan; nothing else in
-- the function scans a table (the upsert reads the transition table and probes the primary key).
-- Same rows kept as 0014 (tests/integration/test_reconciliation.py keeps open_pending equal to the ledger's
-- PENDING book; tests/integration/test_open_pending_fold_plan.py pins the TID scan).

CREATE OR REPLACE FUNCTION fold_into_open_pending() RETURNS trigger LANGUAGE plpgsql
SET enable_seqscan = off AS $$
DECLARE
    emptied tid[];
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
        RETURNING o.ctid, o.pending_minor
    )
    SELECT array_agg(ctid) INTO emptied FROM folded WHERE pending_minor <= 0;
    IF emptied IS NOT NULL THEN
        DELETE FROM open_pending WHERE ctid = ANY (emptied) AND pending_minor <= 0;
    END IF;
    RETURN NULL;
END $$;

-- The ledger keeps its balances and its ids itself, statement by statement (the journal, stream/store/journal.py,
-- copies a batch's new entries in one COPY and its purchases that earned nothing in one INSERT):
--
--   * every statement that inserts entries folds exactly those rows into balances, in the same transaction, with
--     the arithmetic of 0007 (what the journal did after its own insert until now). A balance that exists is
--     updated; one that does not is created with what the rows moved. Postgres checks the row an INSERT proposes
--     before it resolves ON CONFLICT, so a balance the rows would lower cannot be proposed: one that does not exist
--     yet is created at zero and then added to, each in a statement of its own (its own snapshot), so that the
--     balance's checks refuse it (a bug upstream: the row is isolated and dead-lettered by the sink) or, when
--     another writer created it meanwhile, it is added to;
--   * an id is held by one kind of line at most: an entry under the id of the account's purchase that earned
--     nothing, or such a purchase under an entry's id, is refused (unique_violation, constraint ledger_ids_once).
--     The journal judges such a row a conflict before it writes: this refusal is what tells it to look, when it
--     wrote a batch without looking first. (Like the journal's own look-up, it sees what is committed: two writers
--     of the two kinds under one id at the same instant could both pass; the sinks write one account's lines in
--     order, from one partition.)
--
-- Both are statement-level triggers reading the statement's transition table, like 0008's erasure check.

CREATE FUNCTION fold_into_balances() RETURNS trigger LANGUAGE plpgsql AS $$
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
            sum(book_movement('HELD', debit_book, credit_book, amount_minor))::bigint AS held
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
            updated_at = now()
        FROM d WHERE b.account_id = d.account_id AND b.reward_kind = d.reward_kind AND b.currency = d.currency
        RETURNING b.account_id, b.reward_kind, b.currency
    ), absent AS MATERIALIZED (
        SELECT * FROM d WHERE NOT EXISTS (
            SELECT FROM updated b WHERE b.account_id = d.account_id AND b.reward_kind = d.reward_kind AND b.currency = d.currency)
    ), created AS (
        INSERT INTO balances AS b (account_id, reward_kind, currency, pending_minor, confirmed_minor, available_minor,
            lifetime_earned_minor, clawed_back_minor, donated_minor, held_minor)
        SELECT account_id, reward_kind, currency, pending, confirmed, available, earned, clawed_back, donated, held
        FROM absent WHERE least(pending, confirmed, earned, clawed_back, held) >= 0
        ON CONFLICT (account_id, reward_kind, currency) DO UPDATE SET  -- created by another writer since the snapshot
            pending_minor = b.pending_minor + excluded.pending_minor,
            confirmed_minor = b.confirmed_minor + excluded.confirmed_minor,
            available_minor = b.available_minor + excluded.available_minor,
            lifetime_earned_minor = b.lifetime_earned_minor + excluded.lifetime_earned_minor,
            clawed_back_minor = b.clawed_back_minor + excluded.clawed_back_minor,
            donated_minor = b.donated_minor + excluded.donated_minor,
            held_minor = b.held_minor + excluded.held_minor,
            updated_at = now()
    )
    SELECT jsonb_agg(absent) INTO lowered FROM absent WHERE least(pending, confirmed, earned, clawed_back, held) < 0;

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
            updated_at = now()
        FROM jsonb_to_recordset(lowered) AS d(account_id text, reward_kind text, currency text, pending bigint,
            confirmed bigint, available bigint, earned bigint, clawed_back bigint, donated bigint, held bigint)
        WHERE b.account_id = d.account_id AND b.reward_kind = d.reward_kind AND b.currency = d.currency;
    END IF;
    RETURN NULL;
END $$;

CREATE TRIGGER ledger_entries_fold_into_balances AFTER INSERT ON ledger_entries
    REFERENCING NEW TABLE AS added FOR EACH STATEMENT EXECUTE FUNCTION fold_into_balances();

-- Per row, an index probe into the other table (LATERAL ... LIMIT 1: never a hash of the whole other table, which
-- the planner would rather make while the table is a few hundred thousand rows at most).
CREATE FUNCTION refuse_ids_of_the_other_kind() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_TABLE_NAME = 'ledger_entries' THEN
        IF EXISTS (SELECT FROM added a CROSS JOIN LATERAL (SELECT FROM purchases_not_earned p
                   WHERE p.account_id = a.account_id AND p.accrual_id = a.accrual_id LIMIT 1) p) THEN
            RAISE EXCEPTION 'ledger_entries refused a row: its id is a purchase that earned nothing'
                USING ERRCODE = 'unique_violation', CONSTRAINT = 'ledger_ids_once';
        END IF;
    ELSIF EXISTS (SELECT FROM added a CROSS JOIN LATERAL (SELECT FROM ledger_entries l
                  WHERE l.account_id = a.account_id AND l.accrual_id = a.accrual_id LIMIT 1) l) THEN
        RAISE EXCEPTION 'purchases_not_earned refused a row: its id is a ledger entry'
            USING ERRCODE = 'unique_violation', CONSTRAINT = 'ledger_ids_once';
    END IF;
    RETURN NULL;
END $$;

CREATE TRIGGER ledger_entries_ids_once AFTER INSERT ON ledger_entries
    REFERENCING NEW TABLE AS added FOR EACH STATEMENT EXECUTE FUNCTION refuse_ids_of_the_other_kind();
CREATE TRIGGER purchases_not_earned_ids_once AFTER INSERT ON purchases_not_earned
    REFERENCING NEW TABLE AS added FOR EACH STATEMENT EXECUTE FUNCTION refuse_ids_of_the_other_kind();

-- As 0008's: `SET session_replication_role = replica` does not switch them off.
ALTER TABLE ledger_entries ENABLE ALWAYS TRIGGER ledger_entries_fold_into_balances;
ALTER TABLE ledger_entries ENABLE ALWAYS TRIGGER ledger_entries_ids_once;
ALTER TABLE purchases_not_earned ENABLE ALWAYS TRIGGER purchases_not_earned_ids_once;

-- Reconciliation (issue 11): what operations must be able to count and list, kept by the ledger itself.
--
--   * reconciliation_items: one row per item the worker recorded (accrual v4's RECONCILIATION records: a refund,
--     a chargeback or a chargeback reversal of a purchase the worker never saw cleared; a clearing without an
--     authorisation, a force post). Unique per account and item id (<source_event_id>#reconciliation), written
--     by the sink in its batch's transaction (ON CONFLICT DO NOTHING: a replay writes nothing). Append-only like
--     the ledger; an erasure pseudonymises it like purchases_not_earned. No card number, no personal data: the
--     account id and transaction refs the ledger already holds, the event's amount, a line of detail.
--   * open_pending: per purchase and offer, the pending cashback the ledger holds now (> 0 only) and since when
--     (the earliest entry into PENDING). A statement trigger folds each insert's PENDING movements into it, in
--     the same transaction, like 0010's balances: exact, and small (the authorisations not cleared yet), so the
--     gauges of uncleared authorisations read it every few seconds instead of the ledger.

CREATE TABLE reconciliation_items (
    item_seq         bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    item_id          text        NOT NULL,
    source_event_id  text        NOT NULL,
    account_id       text        NOT NULL,
    kind             text        NOT NULL CHECK (kind IN (
                         'unknown_refund', 'unknown_chargeback', 'unknown_chargeback_reversal', 'force_post')),
    transaction_ref  text        NOT NULL,
    purchase_ref     text,                            -- the purchase a refund or chargeback names
    amount_minor     bigint      NOT NULL CHECK (amount_minor >= 0),   -- the event's billing amount
    currency         char(3)     NOT NULL,
    occurred_at      timestamptz NOT NULL,
    recorded_at      timestamptz NOT NULL DEFAULT now(),
    detail           text        NOT NULL,
    fingerprint      text        NOT NULL,
    UNIQUE (account_id, item_id)
);
-- The listing, per kind, the latest first (keyset on item_seq), and the gauges' count of the last day.
CREATE INDEX reconciliation_items_listing ON reconciliation_items (kind, item_seq DESC);
CREATE INDEX reconciliation_items_recent ON reconciliation_items (recorded_at, kind);

CREATE TRIGGER reconciliation_items_append_only BEFORE DELETE OR TRUNCATE ON reconciliation_items
    FOR EACH STATEMENT EXECUTE FUNCTION refuse_change();
CREATE TRIGGER reconciliation_items_updated_by_erasure_only BEFORE UPDATE ON reconciliation_items
    FOR EACH STATEMENT EXECUTE FUNCTION refuse_update_outside_erasure();
CREATE TRIGGER reconciliation_items_not_erased AFTER INSERT ON reconciliation_items
    REFERENCING NEW TABLE AS added FOR EACH STATEMENT EXECUTE FUNCTION refuse_erased_accounts();

CREATE FUNCTION reconciliation_item_pseudonymised_only() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    pseudonym text := erasure_in_progress();
BEGIN
    IF pseudonym IS NULL OR NEW.account_id IS DISTINCT FROM pseudonym OR OLD.account_id = pseudonym
       OR (NEW.item_seq, NEW.kind, NEW.amount_minor, NEW.currency, NEW.occurred_at, NEW.recorded_at)
          IS DISTINCT FROM (OLD.item_seq, OLD.kind, OLD.amount_minor, OLD.currency, OLD.occurred_at, OLD.recorded_at)
    THEN
        RAISE EXCEPTION 'reconciliation_items is append-only: UPDATE refused (an erasure moves a row to its pseudonym and keeps its amounts)'
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER reconciliation_items_pseudonymised_only BEFORE UPDATE ON reconciliation_items
    FOR EACH ROW EXECUTE FUNCTION reconciliation_item_pseudonymised_only();

ALTER TABLE reconciliation_items ENABLE ALWAYS TRIGGER reconciliation_items_append_only;
ALTER TABLE reconciliation_items ENABLE ALWAYS TRIGGER reconciliation_items_updated_by_erasure_only;
ALTER TABLE reconciliation_items ENABLE ALWAYS TRIGGER reconciliation_items_not_erased;
ALTER TABLE reconciliation_items ENABLE ALWAYS TRIGGER reconciliation_items_pseudonymised_only;

CREATE TABLE open_pending (
    account_id     text        NOT NULL,
    purchase_ref   text        NOT NULL,
    offer_id       text        NOT NULL,           -- '' for an entry without one (none makes pending today)
    currency       char(3)     NOT NULL,
    pending_minor  bigint      NOT NULL,
    since          timestamptz NOT NULL,           -- the earliest entry into PENDING (event time)
    PRIMARY KEY (account_id, purchase_ref, offer_id, currency)
);
CREATE INDEX open_pending_since ON open_pending (since);

-- What a statement's entries moved in or out of PENDING, per purchase and offer, folded into open_pending;
-- what falls to zero (or below: never in a consistent ledger) leaves it. Only the rows touching PENDING are
-- grouped: an insert without any costs one scan of its transition table.
CREATE FUNCTION fold_into_open_pending() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
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
        since = least(o.since, excluded.since);
    -- Only an entry out of PENDING can bring a purchase's pending to zero.
    DELETE FROM open_pending o USING (
        SELECT DISTINCT account_id, coalesce(purchase_ref, transaction_ref) AS purchase_ref,
            coalesce(offer_id, '') AS offer_id, currency
        FROM added WHERE debit_book = 'PENDING') m
    WHERE o.account_id = m.account_id AND o.purchase_ref = m.purchase_ref AND o.offer_id = m.offer_id
        AND o.currency = m.currency AND o.pending_minor <= 0;
    RETURN NULL;
END $$;

CREATE TRIGGER ledger_entries_fold_into_open_pending AFTER INSERT ON ledger_entries
    REFERENCING NEW TABLE AS added FOR EACH STATEMENT EXECUTE FUNCTION fold_into_open_pending();
ALTER TABLE ledger_entries ENABLE ALWAYS TRIGGER ledger_entries_fold_into_open_pending;

-- What the ledger holds pending now, folded once.
INSERT INTO open_pending (account_id, purchase_ref, offer_id, currency, pending_minor, since)
SELECT account_id, coalesce(purchase_ref, transaction_ref), coalesce(offer_id, ''), currency,
    sum(book_movement('PENDING', debit_book, credit_book, amount_minor))::bigint,
    coalesce(min(occurred_at) FILTER (WHERE credit_book = 'PENDING'), min(occurred_at))
FROM ledger_entries WHERE debit_book = 'PENDING' OR credit_book = 'PENDING'
GROUP BY 1, 2, 3, 4
HAVING sum(book_movement('PENDING', debit_book, credit_book, amount_minor)) > 0;

-- Erasure (0008) reaches both tables: the log counts the items, and a pseudonym is drawn when it moves any.
ALTER TABLE erasure_log ADD COLUMN reconciliation_rows bigint NOT NULL DEFAULT 0 CHECK (reconciliation_rows >= 0);

CREATE OR REPLACE FUNCTION stamp_erasure() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    NEW.erasure_id := gen_random_uuid();
    NEW.erased_at := now();
    NEW.database_user := session_user;
    NEW.transaction_id := pg_current_xact_id();
    NEW.pseudonym := CASE
        WHEN NEW.ledger_rows + NEW.not_earned_rows + NEW.balance_rows + NEW.conflict_rows + NEW.budget_rows
            + NEW.reconciliation_rows > 0
        THEN 'erased-' || replace(gen_random_uuid()::text, '-', '') END;
    RETURN NEW;
END $$;

-- 0008's function with both tables added (the lock, the count, the moves).
CREATE OR REPLACE FUNCTION erase_account(account text, why text, who text) RETURNS erasure_log LANGUAGE plpgsql AS $$
DECLARE
    -- 244 random bits, used for this erasure's digests and never stored
    salt bytea := sha256(convert_to(gen_random_uuid()::text || gen_random_uuid()::text, 'UTF8'));
    movement_prefix text := length(account)::text || ':' || account || '/';  -- stream.store.budgets.movement_id
    logged erasure_log;
    moved bigint;
BEGIN
    IF account IS NULL OR btrim(account) = '' OR account ~ '^erased-' THEN
        RAISE EXCEPTION 'erase_account: not an account id' USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF why IS NULL OR btrim(why) = '' OR who IS NULL OR btrim(who) = '' THEN
        RAISE EXCEPTION 'erase_account: a reason and an operator are required' USING ERRCODE = 'invalid_parameter_value';
    END IF;
    -- No writer may add a row of the account while it is erased. The locks are taken without waiting
    -- (and taken again after a pause): never waiting while holding one, this cannot deadlock with
    -- the sink's or a worker's transaction, which wait for it instead.
    FOR attempt IN 1..200 LOOP
        BEGIN
            LOCK TABLE ledger_entries, purchases_not_earned, ledger_conflicts, balances, budget_movements,
                reconciliation_items, open_pending IN SHARE ROW EXCLUSIVE MODE NOWAIT;
            EXIT;
        EXCEPTION WHEN lock_not_available THEN
            IF attempt = 200 THEN
                RAISE;
            END IF;
            PERFORM pg_sleep(0.05);
        END;
    END LOOP;

    INSERT INTO erasure_log (erased_by, reason, ledger_rows, not_earned_rows, balance_rows, conflict_rows, budget_rows,
        reconciliation_rows)
    VALUES (
        who, why,
        (SELECT count(*) FROM ledger_entries l WHERE l.account_id = account),
        (SELECT count(*) FROM purchases_not_earned p WHERE p.account_id = account),
        (SELECT count(*) FROM balances b WHERE b.account_id = account),
        (SELECT count(*) FROM ledger_conflicts c WHERE c.account_id = account),
        (SELECT count(*) FROM budget_movements m WHERE starts_with(m.event_id, movement_prefix)),
        (SELECT count(*) FROM reconciliation_items r WHERE r.account_id = account)
    )
    RETURNING * INTO logged;

    IF logged.pseudonym IS NOT NULL THEN
        PERFORM set_config('cashback.erasure_id', logged.erasure_id::text, true);

        UPDATE ledger_entries l SET
            account_id = logged.pseudonym,
            accrual_id = pseudonymised_entry_id(salt, l.accrual_id, l.source_event_id),
            source_event_id = pseudonymised(salt, l.source_event_id),
            transaction_ref = pseudonymised(salt, l.transaction_ref),
            fingerprint = pseudonymised(salt, l.fingerprint),
            explanation = jsonb_set(l.explanation, '{detail}', '"erased"')
        WHERE l.account_id = account;
        GET DIAGNOSTICS moved = ROW_COUNT;
        IF moved <> logged.ledger_rows THEN
            RAISE EXCEPTION 'erase_account: % ledger rows moved, % counted', moved, logged.ledger_rows;
        END IF;

        UPDATE purchases_not_earned p SET
            account_id = logged.pseudonym,
            accrual_id = pseudonymised_entry_id(salt, p.accrual_id, p.source_event_id),
            source_event_id = pseudonymised(salt, p.source_event_id),
            transaction_ref = pseudonymised(salt, p.transaction_ref),
            detail = 'erased'
        WHERE p.account_id = account;
        GET DIAGNOSTICS moved = ROW_COUNT;
        IF moved <> logged.not_earned_rows THEN
            RAISE EXCEPTION 'erase_account: % purchases moved, % counted', moved, logged.not_earned_rows;
        END IF;

        UPDATE balances b SET account_id = logged.pseudonym WHERE b.account_id = account;
        UPDATE ledger_conflicts c SET
            account_id = logged.pseudonym,
            accrual_id = pseudonymised_entry_id(salt, c.accrual_id, c.source_event_id),
            source_event_id = pseudonymised(salt, c.source_event_id),
            arrived_fingerprint = pseudonymised(salt, c.arrived_fingerprint),
            arrived = jsonb_set(c.arrived, '{detail}', '"erased"')
        WHERE c.account_id = account;
        UPDATE budget_movements m SET
            event_id = length(logged.pseudonym)::text || ':' || logged.pseudonym || '/'
                || pseudonymised(salt, substr(m.event_id, length(movement_prefix) + 1))
        WHERE starts_with(m.event_id, movement_prefix);

        UPDATE reconciliation_items r SET
            account_id = logged.pseudonym,
            item_id = pseudonymised_entry_id(salt, r.item_id, r.source_event_id),
            source_event_id = pseudonymised(salt, r.source_event_id),
            transaction_ref = pseudonymised(salt, r.transaction_ref),
            purchase_ref = pseudonymised(salt, r.purchase_ref),
            fingerprint = pseudonymised(salt, r.fingerprint),
            detail = 'erased'
        WHERE r.account_id = account;
        GET DIAGNOSTICS moved = ROW_COUNT;
        IF moved <> logged.reconciliation_rows THEN
            RAISE EXCEPTION 'erase_account: % reconciliation items moved, % counted', moved, logged.reconciliation_rows;
        END IF;
        -- Derived rows (the trigger below keeps them): moved along, the purchase's ref as its entries' pseudonym.
        UPDATE open_pending o SET account_id = logged.pseudonym, purchase_ref = pseudonymised(salt, o.purchase_ref)
        WHERE o.account_id = account;

        PERFORM set_config('cashback.erasure_id', '', true);
    END IF;

    INSERT INTO erased_accounts (account_digest) VALUES (erased_account_digest(account)) ON CONFLICT DO NOTHING;
    RETURN logged;
END $$;

REVOKE ALL ON FUNCTION erase_account(text, text, text) FROM PUBLIC;

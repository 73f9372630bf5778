-- Erasure of an account (GDPR article 17) in the ledger, through one audited function:
-- erase_account(account, why, who). The ledger stays append-only for everything else.
--
-- What it does, in one transaction (stream/store/erasure.py calls it; stream/gdpr.py first makes
-- sure the worker and the sink have nothing of the account left in flight):
--   * moves every row naming the account (ledger_entries, purchases_not_earned, balances,
--     ledger_conflicts, budget_movements) to a pseudonym 'erased-<32 hex>', drawn at random for
--     this erasure: not derived from the account id, so no key exists that could turn an account
--     id back into it. Only the erasure log holds it, beside the request's reference (the reason),
--     so the DPO's own register of requests is the one way back (for a legal claim);
--   * replaces the identifiers that the card processor's records could link back to the customer
--     (event ids, entry ids, transaction references, fingerprints) by digests keyed with a random
--     salt that is never stored: rows of one purchase still share one reference, nobody can compute
--     them again. The free text (the explanation's detail, which can name the account's segments)
--     becomes 'erased';
--   * keeps every amount, book, kind, currency, reward kind, offer, date and sequence number, so
--     every sum and balance total stays identical; balances rows move whole to the pseudonym;
--   * writes a row in erasure_log (who, when, why, the pseudonym, how many rows) and never the
--     account id; and adds the account's SHA-256 digest to erased_accounts, after which the ledger
--     refuses any new row naming the account (a replay of its old accruals, a late event).
--
-- The append-only rule, now: DELETE and TRUNCATE are always refused; an UPDATE is refused unless
-- this transaction wrote an erasure_log row and named it in the transaction-local setting
-- cashback.erasure_id, and then only an UPDATE that moves a row to that row's pseudonym and keeps
-- every amount and booking field. erasure_log's id, pseudonym and transaction are stamped by its
-- own trigger (an INSERT cannot choose them), so a pseudonym is always fresh and random: no UPDATE,
-- even hand-written by a superuser, can move a row to another customer or change a sum, and any
-- change is logged. The triggers are ENABLE ALWAYS: `SET session_replication_role = replica`
-- (superuser only) does not switch them off. What no trigger can refuse is DDL by the table owner
-- or a superuser (ALTER TABLE ... DISABLE TRIGGER, DROP TRIGGER): keep log_statement = 'ddl'.
-- (A logical-replication subscriber of these tables would need them back to ENABLE there.)

-- The erasure log: append-only, never the account id.
CREATE TABLE erasure_log (
    erasure_id       uuid        PRIMARY KEY,
    erased_at        timestamptz NOT NULL,
    erased_by        text        NOT NULL CHECK (btrim(erased_by) <> ''),  -- the operator (CLI user, token subject)
    database_user    text        NOT NULL,                                 -- the database role that ran it
    reason           text        NOT NULL CHECK (btrim(reason) <> ''),     -- the request's reference, never a name
    pseudonym        text        UNIQUE CHECK (pseudonym ~ '^erased-[0-9a-f]{32}$'),  -- NULL: no row named the account
    ledger_rows      bigint      NOT NULL CHECK (ledger_rows >= 0),
    not_earned_rows  bigint      NOT NULL CHECK (not_earned_rows >= 0),
    balance_rows     bigint      NOT NULL CHECK (balance_rows >= 0),
    conflict_rows    bigint      NOT NULL CHECK (conflict_rows >= 0),
    budget_rows      bigint      NOT NULL CHECK (budget_rows >= 0),
    transaction_id   xid8        NOT NULL
);

CREATE FUNCTION stamp_erasure() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    NEW.erasure_id := gen_random_uuid();
    NEW.erased_at := now();
    NEW.database_user := session_user;
    NEW.transaction_id := pg_current_xact_id();
    NEW.pseudonym := CASE
        WHEN NEW.ledger_rows + NEW.not_earned_rows + NEW.balance_rows + NEW.conflict_rows + NEW.budget_rows > 0
        THEN 'erased-' || replace(gen_random_uuid()::text, '-', '') END;
    RETURN NEW;
END $$;
CREATE TRIGGER erasure_log_stamped BEFORE INSERT ON erasure_log FOR EACH ROW EXECUTE FUNCTION stamp_erasure();
CREATE TRIGGER erasure_log_append_only BEFORE UPDATE OR DELETE OR TRUNCATE ON erasure_log
    FOR EACH STATEMENT EXECUTE FUNCTION refuse_change();

-- The accounts erased, as the SHA-256 of their id: only "this id was erased", nothing else (no
-- time, no erasure id, no pseudonym). Append-only.
CREATE TABLE erased_accounts (
    account_digest   bytea       PRIMARY KEY CHECK (length(account_digest) = 32)
);
CREATE TRIGGER erased_accounts_append_only BEFORE UPDATE OR DELETE OR TRUNCATE ON erased_accounts
    FOR EACH STATEMENT EXECUTE FUNCTION refuse_change();

CREATE FUNCTION erased_account_digest(account text) RETURNS bytea LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT sha256(convert_to(account, 'UTF8'))
$$;

-- No new row for an erased account: one check per statement (the sink writes a batch in one), on
-- the rows it added. A refusal is a check violation: the sink isolates the row and dead-letters it
-- (ledger_rejected), nothing is lost silently. The message names no account.
CREATE FUNCTION refuse_erased_accounts() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF EXISTS (SELECT FROM erased_accounts)
       AND EXISTS (SELECT FROM added a WHERE erased_account_digest(a.account_id) IN (SELECT account_digest FROM erased_accounts))
    THEN
        RAISE EXCEPTION '% refused a row: its account was erased', TG_TABLE_NAME USING ERRCODE = 'check_violation';
    END IF;
    RETURN NULL;
END $$;
CREATE TRIGGER ledger_entries_not_erased AFTER INSERT ON ledger_entries
    REFERENCING NEW TABLE AS added FOR EACH STATEMENT EXECUTE FUNCTION refuse_erased_accounts();
CREATE TRIGGER purchases_not_earned_not_erased AFTER INSERT ON purchases_not_earned
    REFERENCING NEW TABLE AS added FOR EACH STATEMENT EXECUTE FUNCTION refuse_erased_accounts();
CREATE TRIGGER ledger_conflicts_not_erased AFTER INSERT ON ledger_conflicts
    REFERENCING NEW TABLE AS added FOR EACH STATEMENT EXECUTE FUNCTION refuse_erased_accounts();

-- The pseudonym of the erasure this transaction logged and named in cashback.erasure_id (NULL: none).
-- A setting alone proves nothing (any session may set it): the log row must be this transaction's.
CREATE FUNCTION erasure_in_progress() RETURNS text LANGUAGE plpgsql AS $$
DECLARE
    named text := current_setting('cashback.erasure_id', true);
    found text;
BEGIN
    IF named IS NULL OR named !~ '^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$' THEN
        RETURN NULL;
    END IF;
    SELECT l.pseudonym INTO found FROM erasure_log l
    WHERE l.erasure_id = named::uuid AND l.transaction_id = pg_current_xact_id();
    RETURN found;
END $$;

-- The append-only rule, per table: any UPDATE outside an erasure is refused, even one that changes
-- no row; inside one, each row may only move to the erasure's pseudonym with its amounts kept.
CREATE FUNCTION refuse_update_outside_erasure() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF erasure_in_progress() IS NULL THEN
        RAISE EXCEPTION '% is append-only: UPDATE refused (only erase_account may pseudonymise its rows)', TG_TABLE_NAME
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    RETURN NULL;
END $$;

CREATE FUNCTION ledger_entry_pseudonymised_only() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    pseudonym text := erasure_in_progress();
BEGIN
    IF pseudonym IS NULL OR NEW.account_id IS DISTINCT FROM pseudonym OR OLD.account_id = pseudonym
       OR (NEW.entry_seq, NEW.history_seq, NEW.entry_kind, NEW.debit_book, NEW.credit_book, NEW.amount_minor,
           NEW.currency, NEW.reward_kind, NEW.offer_id, NEW.rule_version, NEW.beneficiary_id, NEW.occurred_at,
           NEW.recorded_at, NEW.explanation - 'detail')
          IS DISTINCT FROM
          (OLD.entry_seq, OLD.history_seq, OLD.entry_kind, OLD.debit_book, OLD.credit_book, OLD.amount_minor,
           OLD.currency, OLD.reward_kind, OLD.offer_id, OLD.rule_version, OLD.beneficiary_id, OLD.occurred_at,
           OLD.recorded_at, OLD.explanation - 'detail')
    THEN
        RAISE EXCEPTION 'ledger_entries is append-only: UPDATE refused (an erasure moves a row to its pseudonym and keeps its amounts)'
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    RETURN NEW;
END $$;

CREATE FUNCTION purchase_not_earned_pseudonymised_only() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    pseudonym text := erasure_in_progress();
BEGIN
    IF pseudonym IS NULL OR NEW.account_id IS DISTINCT FROM pseudonym OR OLD.account_id = pseudonym
       OR (NEW.history_seq, NEW.reason, NEW.basis_minor, NEW.basis_currency, NEW.occurred_at, NEW.recorded_at)
          IS DISTINCT FROM (OLD.history_seq, OLD.reason, OLD.basis_minor, OLD.basis_currency, OLD.occurred_at, OLD.recorded_at)
    THEN
        RAISE EXCEPTION 'purchases_not_earned is append-only: UPDATE refused (an erasure moves a row to its pseudonym and keeps its amounts)'
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    RETURN NEW;
END $$;

DROP TRIGGER ledger_entries_append_only ON ledger_entries;
CREATE TRIGGER ledger_entries_append_only BEFORE DELETE OR TRUNCATE ON ledger_entries
    FOR EACH STATEMENT EXECUTE FUNCTION refuse_change();
CREATE TRIGGER ledger_entries_updated_by_erasure_only BEFORE UPDATE ON ledger_entries
    FOR EACH STATEMENT EXECUTE FUNCTION refuse_update_outside_erasure();
CREATE TRIGGER ledger_entries_pseudonymised_only BEFORE UPDATE ON ledger_entries
    FOR EACH ROW EXECUTE FUNCTION ledger_entry_pseudonymised_only();

DROP TRIGGER purchases_not_earned_append_only ON purchases_not_earned;
CREATE TRIGGER purchases_not_earned_append_only BEFORE DELETE OR TRUNCATE ON purchases_not_earned
    FOR EACH STATEMENT EXECUTE FUNCTION refuse_change();
CREATE TRIGGER purchases_not_earned_updated_by_erasure_only BEFORE UPDATE ON purchases_not_earned
    FOR EACH STATEMENT EXECUTE FUNCTION refuse_update_outside_erasure();
CREATE TRIGGER purchases_not_earned_pseudonymised_only BEFORE UPDATE ON purchases_not_earned
    FOR EACH ROW EXECUTE FUNCTION purchase_not_earned_pseudonymised_only();

ALTER TABLE ledger_entries ENABLE ALWAYS TRIGGER ledger_entries_append_only;
ALTER TABLE ledger_entries ENABLE ALWAYS TRIGGER ledger_entries_updated_by_erasure_only;
ALTER TABLE ledger_entries ENABLE ALWAYS TRIGGER ledger_entries_pseudonymised_only;
ALTER TABLE ledger_entries ENABLE ALWAYS TRIGGER ledger_entries_not_erased;
ALTER TABLE purchases_not_earned ENABLE ALWAYS TRIGGER purchases_not_earned_append_only;
ALTER TABLE purchases_not_earned ENABLE ALWAYS TRIGGER purchases_not_earned_updated_by_erasure_only;
ALTER TABLE purchases_not_earned ENABLE ALWAYS TRIGGER purchases_not_earned_pseudonymised_only;
ALTER TABLE purchases_not_earned ENABLE ALWAYS TRIGGER purchases_not_earned_not_erased;
ALTER TABLE ledger_conflicts ENABLE ALWAYS TRIGGER ledger_conflicts_not_erased;
ALTER TABLE erasure_log ENABLE ALWAYS TRIGGER erasure_log_stamped;
ALTER TABLE erasure_log ENABLE ALWAYS TRIGGER erasure_log_append_only;
ALTER TABLE erased_accounts ENABLE ALWAYS TRIGGER erased_accounts_append_only;

-- An identifier the card processor's records could link back, as a digest keyed by the erasure's
-- salt (128 bits of SHA-256, hex).
CREATE FUNCTION pseudonymised(salt bytea, value text) RETURNS text LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT left(encode(sha256(salt || convert_to(value, 'UTF8')), 'hex'), 32)
$$;

-- An entry id is <event id>#<n>: the event id's digest, the number kept (unique as before).
CREATE FUNCTION pseudonymised_entry_id(salt bytea, accrual_id text, source_event_id text) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE WHEN starts_with(accrual_id, source_event_id || '#')
        THEN pseudonymised(salt, source_event_id) || substr(accrual_id, length(source_event_id) + 1)
        ELSE pseudonymised(salt, accrual_id) END
$$;

CREATE FUNCTION erase_account(account text, why text, who text) RETURNS erasure_log LANGUAGE plpgsql AS $$
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
            LOCK TABLE ledger_entries, purchases_not_earned, ledger_conflicts, balances, budget_movements
                IN SHARE ROW EXCLUSIVE MODE NOWAIT;
            EXIT;
        EXCEPTION WHEN lock_not_available THEN
            IF attempt = 200 THEN
                RAISE;
            END IF;
            PERFORM pg_sleep(0.05);
        END;
    END LOOP;

    INSERT INTO erasure_log (erased_by, reason, ledger_rows, not_earned_rows, balance_rows, conflict_rows, budget_rows)
    VALUES (
        who, why,
        (SELECT count(*) FROM ledger_entries l WHERE l.account_id = account),
        (SELECT count(*) FROM purchases_not_earned p WHERE p.account_id = account),
        (SELECT count(*) FROM balances b WHERE b.account_id = account),
        (SELECT count(*) FROM ledger_conflicts c WHERE c.account_id = account),
        (SELECT count(*) FROM budget_movements m WHERE starts_with(m.event_id, movement_prefix))
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

        PERFORM set_config('cashback.erasure_id', '', true);
    END IF;

    INSERT INTO erased_accounts (account_digest) VALUES (erased_account_digest(account)) ON CONFLICT DO NOTHING;
    RETURN logged;
END $$;

-- Erasure is for operators: grant EXECUTE to their role. The owner (who migrates) keeps it.
REVOKE ALL ON FUNCTION erase_account(text, text, text) FROM PUBLIC;

-- Balance arithmetic, defined once for the database: what one entry moves on one book, and what it
-- adds to the lifetime earned and clawed-back totals. The sink's batch write and the charity view
-- use these; stream.core.balances is the same arithmetic in Python, the tests' oracle, and
-- tests/integration/test_ledger.py holds the two equal.

CREATE FUNCTION book_movement(book text, debit_book text, credit_book text, amount_minor bigint)
RETURNS bigint LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE WHEN credit_book = book THEN amount_minor WHEN debit_book = book THEN -amount_minor ELSE 0 END
$$;

CREATE FUNCTION earned_movement(entry_kind text, amount_minor bigint)
RETURNS bigint LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE WHEN entry_kind = 'CONFIRMED' THEN amount_minor ELSE 0 END
$$;

-- a reversed chargeback undoes its clawback rather than earning a second time
CREATE FUNCTION clawed_back_movement(entry_kind text, amount_minor bigint)
RETURNS bigint LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE entry_kind WHEN 'CLAWED_BACK' THEN amount_minor WHEN 'RECREDITED' THEN -amount_minor ELSE 0 END
$$;

-- 0005's view, the same figures, now from the functions.
CREATE OR REPLACE VIEW charity_donations AS
WITH per_donor AS (
    SELECT beneficiary_id AS charity_id, currency::text AS currency, account_id,
        sum(book_movement('DONATED', debit_book, credit_book, amount_minor)) AS donated,
        sum(book_movement('PENDING', debit_book, credit_book, amount_minor)
            + book_movement('CONFIRMED', debit_book, credit_book, amount_minor)) AS promised,
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

-- What each charity was given and promised, per currency, each amount counted once (issue 7).
-- 0004's view summed a CASE that took an entry's credit leg when it was PENDING or CONFIRMED and
-- its debit leg only otherwise, so a confirmation (PENDING -> CONFIRMED) added its amount to
-- "promised" instead of moving it: a reward of 5.00 that was fully donated showed 5.00 donated
-- and 5.00 promised. Here every leg counts once, on its own book:
--   donated_minor     = net of the DONATED book (given; a clawback of a given reward lowers it);
--   promised_minor    = net of the PENDING and CONFIRMED books (not yet given, net of releases,
--                       expiries and clawbacks);
--   clawed_back_minor = CLAWED_BACK less RECREDITED (a reversed chargeback undoes its clawback),
--                       as in the customers' balances: shown apart, already out of the two above;
--   donors            = accounts with something donated or promised to the charity in that
--                       currency (a customer whose whole reward was released or clawed back is
--                       not one).

DROP VIEW charity_donations;

CREATE VIEW charity_donations AS
WITH per_donor AS (
    SELECT beneficiary_id AS charity_id, currency::text AS currency, account_id,
        sum(CASE WHEN credit_book = 'DONATED' THEN amount_minor ELSE 0 END)
            - sum(CASE WHEN debit_book = 'DONATED' THEN amount_minor ELSE 0 END) AS donated,
        sum(CASE WHEN credit_book IN ('PENDING', 'CONFIRMED') THEN amount_minor ELSE 0 END)
            - sum(CASE WHEN debit_book IN ('PENDING', 'CONFIRMED') THEN amount_minor ELSE 0 END) AS promised,
        sum(CASE entry_kind WHEN 'CLAWED_BACK' THEN amount_minor WHEN 'RECREDITED' THEN -amount_minor ELSE 0 END)
            AS clawed_back
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

-- The API reads one charity at a time: only charity entries carry a beneficiary.
CREATE INDEX ledger_entries_beneficiary ON ledger_entries (beneficiary_id, currency)
    WHERE beneficiary_id IS NOT NULL;

-- Charity rewards: when their return window ends they are given to the charity (the DONATED
-- book), not made spendable. The customer's donated total is a balance; each charity's account
-- is the sum of what was donated to it (entries name it in beneficiary_id).

ALTER TABLE ledger_entries DROP CONSTRAINT ledger_entries_debit_book_check;
ALTER TABLE ledger_entries DROP CONSTRAINT ledger_entries_credit_book_check;
ALTER TABLE ledger_entries ADD CONSTRAINT ledger_entries_debit_book_check
    CHECK (debit_book IN ('EXPENSE', 'PENDING', 'CONFIRMED', 'AVAILABLE', 'DONATED'));
ALTER TABLE ledger_entries ADD CONSTRAINT ledger_entries_credit_book_check
    CHECK (credit_book IN ('EXPENSE', 'PENDING', 'CONFIRMED', 'AVAILABLE', 'DONATED'));
ALTER TABLE ledger_entries ADD COLUMN beneficiary_id text;
ALTER TABLE ledger_entries ADD CONSTRAINT ledger_entries_donation_has_beneficiary
    CHECK ((debit_book <> 'DONATED' AND credit_book <> 'DONATED') OR beneficiary_id IS NOT NULL);

ALTER TABLE balances ADD COLUMN donated_minor bigint NOT NULL DEFAULT 0;

CREATE VIEW charity_donations AS
SELECT beneficiary_id AS charity_id, currency,
       sum(CASE WHEN credit_book = 'DONATED' THEN amount_minor WHEN debit_book = 'DONATED' THEN -amount_minor ELSE 0 END) AS donated_minor,
       sum(CASE WHEN credit_book IN ('PENDING', 'CONFIRMED') THEN amount_minor
                WHEN debit_book IN ('PENDING', 'CONFIRMED') THEN -amount_minor ELSE 0 END) AS promised_minor,
       count(DISTINCT account_id) AS donors
FROM ledger_entries
WHERE beneficiary_id IS NOT NULL
GROUP BY beneficiary_id, currency;

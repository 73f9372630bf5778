-- One account history for bank apps: ledger entries and purchases that earned nothing, in the
-- order they were recorded. Both tables draw their history_seq from one sequence, so the API
-- pages through both with one cursor.

CREATE SEQUENCE history_seq;

ALTER TABLE ledger_entries ADD COLUMN history_seq bigint;
ALTER TABLE purchases_not_earned ADD COLUMN history_seq bigint;

-- Backfill rows written before this migration, in their recorded order. The append-only
-- triggers refuse UPDATE, so they are set aside for this one statement of the migration only.
ALTER TABLE ledger_entries DISABLE TRIGGER ledger_entries_append_only;
ALTER TABLE purchases_not_earned DISABLE TRIGGER purchases_not_earned_append_only;
UPDATE ledger_entries SET history_seq = nextval('history_seq')
    WHERE entry_seq IN (SELECT entry_seq FROM ledger_entries ORDER BY entry_seq);
UPDATE purchases_not_earned SET history_seq = nextval('history_seq');
ALTER TABLE ledger_entries ENABLE TRIGGER ledger_entries_append_only;
ALTER TABLE purchases_not_earned ENABLE TRIGGER purchases_not_earned_append_only;

ALTER TABLE ledger_entries ALTER COLUMN history_seq SET DEFAULT nextval('history_seq');
ALTER TABLE ledger_entries ALTER COLUMN history_seq SET NOT NULL;
ALTER TABLE purchases_not_earned ALTER COLUMN history_seq SET DEFAULT nextval('history_seq');
ALTER TABLE purchases_not_earned ALTER COLUMN history_seq SET NOT NULL;

CREATE INDEX ledger_entries_account_history ON ledger_entries (account_id, history_seq DESC);
CREATE INDEX purchases_not_earned_account_history ON purchases_not_earned (account_id, history_seq DESC);

-- Event ids are the account's: the card processor's event_id identifies an event within its
-- account (the rules engine recognises redeliveries per account), so the ledger's key is
-- (account_id, accrual_id), not accrual_id alone. The same id on two accounts is two events.
ALTER TABLE ledger_entries DROP CONSTRAINT ledger_entries_accrual_id_key;
ALTER TABLE ledger_entries ADD CONSTRAINT ledger_entries_account_accrual UNIQUE (account_id, accrual_id);
ALTER TABLE purchases_not_earned DROP CONSTRAINT purchases_not_earned_pkey;
ALTER TABLE purchases_not_earned ADD CONSTRAINT purchases_not_earned_pkey PRIMARY KEY (account_id, accrual_id);

-- An entry that arrived with an id the account's ledger holds with other content: never written,
-- dead-lettered by the sink (reason ledger_conflict) and kept here for the operations view.
CREATE TABLE ledger_conflicts (
    conflict_seq      bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    account_id        text        NOT NULL,
    accrual_id        text        NOT NULL,
    source_event_id   text        NOT NULL,
    held_kind         text        NOT NULL,   -- what the ledger holds under the id (an entry kind or NOT_EARNED)
    arrived_kind      text        NOT NULL,
    arrived_amount_minor bigint   NOT NULL,
    arrived_currency  char(3)     NOT NULL,
    arrived_fingerprint text      NOT NULL,
    arrived           jsonb       NOT NULL,   -- the refused entry's explanation
    detected_at       timestamptz NOT NULL DEFAULT now(),
    UNIQUE (account_id, accrual_id, arrived_fingerprint)
);
CREATE INDEX ledger_conflicts_account ON ledger_conflicts (account_id);

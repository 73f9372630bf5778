-- Who pays (issue 12, part 6; stream/store/sponsor_statements.py): every ledger entry of an offer's reward
-- names who funds it, the offer's merchant sponsor (offer v6's sponsor_id, kept on the purchase's share and
-- so carried by its clawbacks, recredits, releases and expiries) or NULL: the bank's own budget. Entries made
-- before this column existed read as bank-funded.
--
-- The column is written by the sink's COPY like every other (accrual v6). No trigger changes: the append-only
-- triggers refuse any UPDATE or DELETE as before, and an erasure (0008's erase_account) leaves sponsor_id as it
-- is, since a sponsor id names a merchant, not a person: a sponsor's statements are the same after an erasure.
--
-- 0017 is another change's number.

ALTER TABLE ledger_entries ADD COLUMN sponsor_id text;

-- The same shape as offer_parsing.SPONSOR_ID: 'bank' is the bank's own name in statements, never a sponsor's;
-- only an offer's entries have a sponsor.
ALTER TABLE ledger_entries ADD CONSTRAINT ledger_entries_sponsor_id_shape CHECK (
    sponsor_id IS NULL
    OR (sponsor_id ~ '^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$' AND lower(sponsor_id) <> 'bank' AND offer_id IS NOT NULL));

-- A merchant sponsor's monthly statement reads its month's entries. Partial: the bank-funded entries (most of
-- them) cost the sink's COPY nothing more. The bank's statement reads its month's block ranges (BRIN: entries
-- arrive roughly in event time; a few pages of index, next to nothing per insert), then filters them.
CREATE INDEX ledger_entries_sponsor ON ledger_entries (sponsor_id, occurred_at) WHERE sponsor_id IS NOT NULL;
CREATE INDEX ledger_entries_occurred_brin ON ledger_entries USING brin (occurred_at);

-- Expiry of unused rewards (issue 12, part 2; stream/core/expiry.py): points and store credit left in
-- AVAILABLE past their offer's available_expiry_days go back to the sponsor's EXPENSE book, first
-- earned first expired, in entries of the new kind AVAILABLE_EXPIRED (accrual v5). No new book: the
-- reward leaves the customer's AVAILABLE like a clawback, and the offer's cost (offer results'
-- returned_minor) counts it back. Balances need no change: the statement triggers of 0010 fold every
-- entry by its books (book_movement), so AVAILABLE_EXPIRED lowers available_minor, and it is neither
-- earned nor clawed back (earned_movement, clawed_back_movement give it 0).
--
-- The list is 0009's with the new kind added. 0014 is another change's number.

ALTER TABLE ledger_entries DROP CONSTRAINT ledger_entries_entry_kind_check;
ALTER TABLE ledger_entries ADD CONSTRAINT ledger_entries_entry_kind_check CHECK (entry_kind IN (
    'PENDING_CREATED', 'PENDING_ADJUSTED', 'PENDING_RELEASED', 'CONFIRMED', 'MADE_AVAILABLE', 'EXPIRED',
    'CLAWED_BACK', 'RECREDITED', 'HELD', 'HOLD_RELEASED', 'HOLD_FORFEITED', 'AVAILABLE_EXPIRED'));

-- Only AVAILABLE expires, only to the sponsor, only points and store credit (cash and charity never do).
ALTER TABLE ledger_entries ADD CONSTRAINT ledger_entries_available_expired_shape CHECK (
    entry_kind <> 'AVAILABLE_EXPIRED'
    OR (debit_book = 'AVAILABLE' AND credit_book = 'EXPENSE' AND reward_kind IN ('POINTS', 'STORE_CREDIT')));

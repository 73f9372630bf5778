-- Wallet marks (accrual v8's WALLET_MARK, stream.core.payouts): a wallet opening the worker could not check against
-- the ledger (none of the account's recent events moved money) marks the account's place on the accruals topic; the
-- next opening reads the latest mark here and is checked against it. A line of its own kind beside the purchases that
-- earned nothing (moved by an erasure like them), never shown in the customer's history.
ALTER TABLE purchases_not_earned DROP CONSTRAINT purchases_not_earned_line_kind_check;
ALTER TABLE purchases_not_earned ADD CONSTRAINT purchases_not_earned_line_kind_check
    CHECK (line_kind IN ('NOT_EARNED', 'REDEMPTION_REFUSED', 'WALLET_MARK'));

-- `cashback payouts open-wallets` reads the latest mark of each account.
CREATE INDEX purchases_not_earned_wallet_marks ON purchases_not_earned (account_id, history_seq DESC)
    WHERE line_kind = 'WALLET_MARK';

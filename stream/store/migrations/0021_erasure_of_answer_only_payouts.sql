-- A customer's payout whose answer was read before its PAID_OUT entry reached the ledger is a row with no amount yet
-- (0019). If the account is erased in between, the ledger never gets the entry (refused: the account was erased), so
-- the erasure's pseudonymisation of the ledger never reaches that row, which would keep the account id in its
-- beneficiary and its payout id. The erasure adds the account's digest to erased_accounts (0008): that row is then
-- deleted (it records only the bank's answer to a payout the ledger will never hold).
CREATE INDEX payouts_answer_only ON payouts (payout_id) WHERE amount_minor IS NULL;

CREATE FUNCTION erased_account_forgets_answer_only_payouts() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM payouts
    WHERE amount_minor IS NULL AND beneficiary_kind = 'CUSTOMER'
      AND erased_account_digest(beneficiary_id) = NEW.account_digest;
    RETURN NULL;
END $$;
CREATE TRIGGER erased_accounts_forget_answer_only_payouts AFTER INSERT ON erased_accounts
    FOR EACH ROW EXECUTE FUNCTION erased_account_forgets_answer_only_payouts();
ALTER TABLE erased_accounts ENABLE ALWAYS TRIGGER erased_accounts_forget_answer_only_payouts;

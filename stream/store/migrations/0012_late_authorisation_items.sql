-- A reconciliation item that answers a force post: the clearing arrived before its authorisation (DOMAIN case 8),
-- so it was recorded as a force_post item when nothing else was known; its approved authorisation, arriving later,
-- adds a late_authorisation item for the same purchase (stream.core.authorisations). Operations count and list the
-- force posts never answered.
ALTER TABLE reconciliation_items DROP CONSTRAINT reconciliation_items_kind_check;
ALTER TABLE reconciliation_items ADD CONSTRAINT reconciliation_items_kind_check CHECK (kind IN (
    'unknown_refund', 'unknown_chargeback', 'unknown_chargeback_reversal', 'force_post', 'late_authorisation'));
-- The listing asks, for each force post, whether its authorisation came after all.
CREATE INDEX reconciliation_items_purchase ON reconciliation_items (account_id, transaction_ref, kind);

-- Offer results (issue 12): a purchase held out of an offer names the offer in a column, so the offer's holdout
-- group is read by index instead of from a line of text.
--
--   * purchases_not_earned.offer_id: the offer a NOT_EARNED line is about, where the accrual record names one (today:
--     the `holdout` line of each offer holding the account out, written at the purchase's judgement; every other
--     refusal names no offer: NULL). The sink fills it from the record's offer_id (stream.store.journal).
--   * Backfilled where derivable: a `holdout` line written at the judgement has the detail
--     "<authorisation|clearing> earns nothing from <offer_id>: holdout (...)" (stream.core.judgement.note_held_out).
--     The lines of later events of a refused purchase ("... decided at the purchase (...)") name no offer on the
--     record either, so they stay NULL as new ones do; an erased line's detail is 'erased': not derivable.
--   * An erasure keeps the column (an offer id is no personal data): the row check of 0008 is extended to it.

ALTER TABLE purchases_not_earned ADD COLUMN offer_id text;

-- The append-only guards (0008) refuse any UPDATE outside an erasure; this one fill is the migration's own.
ALTER TABLE purchases_not_earned DISABLE TRIGGER purchases_not_earned_updated_by_erasure_only;
ALTER TABLE purchases_not_earned DISABLE TRIGGER purchases_not_earned_pseudonymised_only;
UPDATE purchases_not_earned
SET offer_id = substring(detail FROM '^(?:authorisation|clearing) earns nothing from ([A-Za-z0-9._:-]+): holdout \(')
WHERE reason = 'holdout' AND detail ~ '^(authorisation|clearing) earns nothing from [A-Za-z0-9._:-]+: holdout \(';
ALTER TABLE purchases_not_earned ENABLE ALWAYS TRIGGER purchases_not_earned_updated_by_erasure_only;
ALTER TABLE purchases_not_earned ENABLE ALWAYS TRIGGER purchases_not_earned_pseudonymised_only;

CREATE OR REPLACE FUNCTION purchase_not_earned_pseudonymised_only() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    pseudonym text := erasure_in_progress();
BEGIN
    IF pseudonym IS NULL OR NEW.account_id IS DISTINCT FROM pseudonym OR OLD.account_id = pseudonym
       OR (NEW.history_seq, NEW.reason, NEW.basis_minor, NEW.basis_currency, NEW.occurred_at, NEW.recorded_at, NEW.offer_id)
          IS DISTINCT FROM (OLD.history_seq, OLD.reason, OLD.basis_minor, OLD.basis_currency, OLD.occurred_at, OLD.recorded_at,
              OLD.offer_id)
    THEN
        RAISE EXCEPTION 'purchases_not_earned is append-only: UPDATE refused (an erasure moves a row to its pseudonym and keeps its amounts)'
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    RETURN NEW;
END $$;

-- An offer's holdout group, by offer and event time (only the lines naming an offer: the holdout lines).
CREATE INDEX purchases_not_earned_offer ON purchases_not_earned (offer_id, occurred_at) WHERE offer_id IS NOT NULL;

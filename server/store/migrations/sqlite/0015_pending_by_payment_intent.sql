-- The payment intent an event names, beside the charge in stripe_payment (which holds the payment intent when the
-- event names no charge): a pending dispute names both, and is adopted when an event links either.
ALTER TABLE subscription_events ADD COLUMN stripe_payment_intent TEXT;
CREATE INDEX subscription_events_pending_by_payment_intent ON subscription_events (stripe_payment_intent)
    WHERE outcome = 'pending';
-- The events waiting now get theirs from their payload (a charge, dispute or refund names it as payment_intent,
-- a payment intent is its own id): JSON the gate wrote or verified, as every fold reads it.
UPDATE subscription_events SET stripe_payment_intent = CASE json_extract(payload, '$.data.object.object')
        WHEN 'payment_intent' THEN json_extract(payload, '$.data.object.id')
        ELSE json_extract(payload, '$.data.object.payment_intent') END
    WHERE outcome = 'pending' AND stripe_payment IS NOT NULL AND json_valid(payload);
UPDATE subscription_events SET stripe_payment_intent = NULL
    WHERE outcome = 'pending' AND substr(stripe_payment_intent, 1, 3) <> 'pi_';

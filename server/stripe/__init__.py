"""Stripe into the gate: what an event says (objects), folding events into subject state (ingest) and asking
Stripe's API about doubtful subjects (reconcile). No HTTP serving here."""

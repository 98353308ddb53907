-- A console session keeps a MAC of the token that opened it, keyed by the session's id (which only the browser
-- holds; the row has its SHA-256): a page opens only while that token is still one of its scope's, so rotating a
-- leaked token ends the sessions it opened. Neither the row nor the cookie lets a token be tested offline.
-- Sessions from before this migration have none: they end, and their users log in again.
ALTER TABLE console_sessions ADD COLUMN token_mac TEXT NOT NULL DEFAULT '';

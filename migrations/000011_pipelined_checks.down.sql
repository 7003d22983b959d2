DROP FUNCTION IF EXISTS pgwake_require(boolean, text, text);

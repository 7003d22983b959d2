-- pgwake sends the statements of its hottest transactions together, in one
-- round trip, COMMIT included. A statement that finds a condition the rest
-- depend on broken (its lease taken over, say) calls this to raise: every
-- statement after it then fails, and the COMMIT rolls back. The SQLSTATE
-- tells pgwake which condition it was.
CREATE FUNCTION pgwake_require(ok boolean, code text, message text) RETURNS boolean
LANGUAGE plpgsql AS $$
BEGIN
  IF ok IS NOT TRUE THEN
    RAISE EXCEPTION USING ERRCODE = code, MESSAGE = message;
  END IF;
  RETURN true;
END
$$;

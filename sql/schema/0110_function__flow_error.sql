-- _flow_error: raises a definition error naming the flow.
-- Locks: none. Notifies: nothing.
-- Raises: always (SQLSTATE PF400), 'invalid flow <slug>: <message>'.
-- Idempotent: yes (it changes nothing).
create function pgflow._flow_error(p_flow_slug text, p_message text) returns void
language plpgsql
set search_path to ''
as $$
begin
  raise exception 'invalid flow %: %', coalesce(quote_literal(p_flow_slug), '(no slug)'), p_message
    using errcode = 'PF400';
end;
$$;

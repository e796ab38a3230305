-- _bad_argument: raises PF400 for an argument out of its documented range.
-- Locks: none. Notifies: nothing.
-- Raises: always (SQLSTATE PF400), '<function>: <argument> must be <range>, not <value>'.
-- Idempotent: yes (it changes nothing).
create function pgflow._bad_argument(p_function text, p_argument text, p_range text, p_value text)
returns void
language plpgsql
set search_path to ''
as $$
begin
  raise exception '%: % must be %, not %', p_function, p_argument, p_range, coalesce(p_value, 'null')
    using errcode = 'PF400';
end;
$$;

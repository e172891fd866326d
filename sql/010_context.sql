-- pyflows sql/010_context: binding a transaction to a tenant and an actor, and the guard every API
-- function calls first. The settings read by RLS live in migrations/0003 (current_client_id and friends).

create or replace function pyflows.set_context(
    p_client_id uuid,
    p_engagement_id uuid,
    p_actor text default null
)
returns void
language plpgsql
set search_path = pg_catalog, pyflows, pg_temp
as $$
begin
    if p_client_id is null or p_engagement_id is null then
        raise exception 'set_context needs a client id and an engagement id'
            using errcode = 'PF422';
    end if;
    if p_actor is not null and (btrim(p_actor) = '' or char_length(p_actor) > 200) then
        raise exception 'actor must be a non-empty name of at most 200 characters'
            using errcode = 'PF422';
    end if;

    -- Transaction-local: the context ends with the transaction that set it.
    perform set_config('pyflows.client_id', p_client_id::text, true);
    perform set_config('pyflows.engagement_id', p_engagement_id::text, true);
    perform set_config('pyflows.actor', coalesce(p_actor, ''), true);

    -- Under the new context RLS shows the engagement only if it is this client's; a superuser
    -- bypasses RLS, so the filter is spelled out as well.
    if not exists (
        select from pyflows.engagements
         where client_id = p_client_id and id = p_engagement_id
    ) then
        raise exception 'engagement % not found for client %', p_engagement_id, p_client_id
            using errcode = 'PF404',
                  detail = json_build_object('client_id', p_client_id, 'engagement_id', p_engagement_id)::text;
    end if;
end;
$$;

-- The same binding for the whole session rather than one transaction: for CALL pyflows.purge_flow,
-- which commits as it goes and so cannot run inside the caller's transaction. Session settings
-- outlive the transaction: call pyflows.clear_context() when done, and never leave a session bound
-- on a pooled connection.
create or replace function pyflows.set_session_context(
    p_client_id uuid,
    p_engagement_id uuid,
    p_actor text default null
)
returns void
language plpgsql
set search_path = pg_catalog, pyflows, pg_temp
as $$
begin
    perform pyflows.set_context(p_client_id, p_engagement_id, p_actor);
    perform set_config('pyflows.client_id', p_client_id::text, false);
    perform set_config('pyflows.engagement_id', p_engagement_id::text, false);
    perform set_config('pyflows.actor', coalesce(p_actor, ''), false);
end;
$$;

-- Unbind the session (and the current transaction) from any tenant.
create or replace function pyflows.clear_context()
returns void
language sql
set search_path = pg_catalog, pyflows, pg_temp
as $$
    select set_config('pyflows.client_id', '', false), set_config('pyflows.engagement_id', '', false),
           set_config('pyflows.actor', '', false)
$$;

-- Raises PF401 unless set_context ran in this transaction; with p_need_actor, also unless it named an actor.
create or replace function pyflows._require_context(p_need_actor boolean default false)
returns void
language plpgsql
stable
set search_path = pg_catalog, pyflows, pg_temp
as $$
begin
    if pyflows.current_client_id() is null or pyflows.current_engagement_id() is null then
        raise exception 'no tenant context'
            using errcode = 'PF401',
                  hint = 'Call pyflows.set_context(client_id, engagement_id, actor) in this transaction first.';
    end if;
    if p_need_actor and pyflows.current_actor() is null then
        raise exception 'this action needs an actor'
            using errcode = 'PF401',
                  hint = 'Pass p_actor to pyflows.set_context.';
    end if;
end;
$$;

revoke all on function pyflows.set_context(uuid, uuid, text), pyflows.set_session_context(uuid, uuid, text),
    pyflows.clear_context(), pyflows._require_context(boolean) from public;
grant execute on function pyflows.set_context(uuid, uuid, text), pyflows.set_session_context(uuid, uuid, text),
    pyflows.clear_context(), pyflows._require_context(boolean) to pyflows_app;

-- pyflows sql/010_context: binding a transaction to a tenant and an actor, and the guard every API
-- function calls first. The settings read by RLS live in migrations/0003 (current_client_id and friends).

-- SET LOCAL p_name = p_value, for the transaction: the settings pyflows' functions change as they
-- go (the tenant context, lock_timeout, the audit's markers). On Citus (where the setting
-- citus.propagate_set_commands exists) a SET LOCAL statement: the coordinator sends each SET LOCAL to
-- every worker the transaction uses, so the policies, triggers and lock waits on the shards see what
-- the coordinator set; set_config() values stay on the node that set them. On one node
-- set_config(..., true), which is the same SET LOCAL without a statement to parse. Only the names
-- below; PF422 otherwise.
create or replace function pyflows._set_local(p_name text, p_value text)
returns void
language plpgsql
set search_path = pg_catalog, pyflows, pg_temp
as $$
declare
    v_propagate text;
begin
    if p_name is null or p_name not in ('pyflows.client_id', 'pyflows.engagement_id', 'pyflows.actor',
                                        'pyflows.audit_batch', 'pyflows.audit_open', 'lock_timeout') then
        raise exception 'pyflows does not set %', coalesce(quote_literal(p_name), 'NULL') using errcode = 'PF422';
    end if;
    if p_value is null then
        raise exception 'a value for % must not be NULL', p_name using errcode = 'PF422';
    end if;
    v_propagate := pg_catalog.current_setting('citus.propagate_set_commands', true);
    if v_propagate is null then
        -- Without Citus, set_config(..., true) is SET LOCAL without parsing a statement: about 0.05 ms
        -- less a call, and a delete makes several.
        perform pg_catalog.set_config(p_name, p_value, true);
        return;
    end if;
    if v_propagate <> 'local' then
        set local citus.propagate_set_commands = 'local';
    end if;
    -- On Citus only SET LOCAL reaches the workers (citus.propagate_set_commands = 'local').
    execute pg_catalog.format('set local %s = %L', p_name, p_value);
end;
$$;

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

    -- Transaction-local: the context ends with the transaction that set it (and reaches every
    -- Citus worker the transaction uses: _set_local).
    perform pyflows._set_local('pyflows.client_id', p_client_id::text);
    perform pyflows._set_local('pyflows.engagement_id', p_engagement_id::text);
    perform pyflows._set_local('pyflows.actor', coalesce(p_actor, ''));

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

-- Whether p_engagement_id is an engagement of p_client_id, whatever the context: what set_context
-- tells any caller already (PF404 or not), for set_session_context on Citus. PL/pgSQL: Citus plans
-- no SQL function that reads its tables with parameters.
create or replace function pyflows._engagement_exists(p_client_id uuid, p_engagement_id uuid)
returns boolean
language plpgsql
stable
security definer
set search_path = pg_catalog, pyflows, pg_temp
as $$
begin
    return exists (select from pyflows.engagements as e where e.client_id = p_client_id and e.id = p_engagement_id);
end;
$$;

revoke all on function pyflows._engagement_exists(uuid, uuid) from public;
grant execute on function pyflows._engagement_exists(uuid, uuid) to pyflows_app;

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
    begin
        perform pyflows.set_context(p_client_id, p_engagement_id, p_actor);
    exception when sqlstate 'PF404' then
        -- On Citus a read outside a transaction block (this function's usual caller, CALL
        -- purge_flow, needs autocommit) reaches the workers without the transaction's SET LOCALs, so
        -- the context set_context just set hides the engagement. Whether it exists is asked again
        -- of the table itself; a context that names no engagement of the client is refused as before.
        if not pyflows._engagement_exists(p_client_id, p_engagement_id) then
            raise;
        end if;
        perform pyflows._set_local('pyflows.client_id', p_client_id::text);
        perform pyflows._set_local('pyflows.engagement_id', p_engagement_id::text);
        perform pyflows._set_local('pyflows.actor', coalesce(p_actor, ''));
    end;
    perform set_config('pyflows.client_id', p_client_id::text, false);
    perform set_config('pyflows.engagement_id', p_engagement_id::text, false);
    perform set_config('pyflows.actor', coalesce(p_actor, ''), false);
end;
$$;

-- Unbind the session (and the current transaction) from any tenant; the transaction's Citus workers too.
create or replace function pyflows.clear_context()
returns void
language plpgsql
set search_path = pg_catalog, pyflows, pg_temp
as $$
begin
    perform set_config('pyflows.client_id', '', false), set_config('pyflows.engagement_id', '', false),
            set_config('pyflows.actor', '', false);
    perform pyflows._set_local('pyflows.client_id', '');
    perform pyflows._set_local('pyflows.engagement_id', '');
    perform pyflows._set_local('pyflows.actor', '');
end;
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

revoke all on function pyflows._set_local(text, text), pyflows.set_context(uuid, uuid, text),
    pyflows.set_session_context(uuid, uuid, text), pyflows.clear_context(), pyflows._require_context(boolean)
    from public;
grant execute on function pyflows._set_local(text, text), pyflows.set_context(uuid, uuid, text),
    pyflows.set_session_context(uuid, uuid, text), pyflows.clear_context(), pyflows._require_context(boolean)
    to pyflows_app;

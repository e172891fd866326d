-- pyflows 0010 rollback: the definitions of migrations 0002-0009 again, search_path without pg_temp,
-- imports' files queued by their own trigger, and the prune marker read from a setting.

drop index pyflows_audit.events_prune;
drop function pyflows_audit._open_event(bigint);
drop function pyflows_audit._statement_event(text, bigint, bigint, uuid, uuid, bigint, uuid);

create or replace function pyflows.current_client_id()
returns uuid
language sql
stable
as $$ select nullif(pg_catalog.current_setting('pyflows.client_id', true), '')::uuid $$;

create or replace function pyflows.current_engagement_id()
returns uuid
language sql
stable
as $$ select nullif(pg_catalog.current_setting('pyflows.engagement_id', true), '')::uuid $$;

create or replace function pyflows.current_actor()
returns text
language sql
stable
as $$ select nullif(pg_catalog.current_setting('pyflows.actor', true), '') $$;

create or replace function pyflows._flow_row_rules()
returns trigger
language plpgsql
set search_path = pg_catalog, pyflows
as $$
declare
    c_incomplete constant text[] := array['initialized', 'running', 'paused', 'waiting_for_user', 'failed'];
    v_unknown   text;
    v_total     integer;
    v_completed text[];
    v_progress  numeric(5, 2);
begin
    select p into v_unknown
      from unnest(new.phases_completed) as p
     where p is null or not exists (select from pyflows.phases where phase = p)
     limit 1;
    if found then
        raise exception 'unknown phase % in phases_completed', coalesce(quote_literal(v_unknown), 'NULL')
            using errcode = 'PF422', hint = 'The phases are listed in pyflows.phases.';
    end if;
    if new.current_phase is not null
       and not exists (select from pyflows.phases where phase = new.current_phase) then
        raise exception 'unknown phase % for current_phase', quote_literal(new.current_phase)
            using errcode = 'PF422', hint = 'The phases are listed in pyflows.phases.';
    end if;

    select count(*) into v_total from pyflows.phases;
    if v_total = 0 then
        raise exception 'pyflows.phases is empty' using errcode = 'PF422';
    end if;
    select coalesce(array_agg(ph.phase order by ph.position), '{}')
      into v_completed
      from pyflows.phases as ph
     where ph.phase = any (new.phases_completed);
    v_progress := round(100.0 * cardinality(v_completed) / v_total, 2);

    if tg_op = 'UPDATE' then
        if new.progress_percentage is distinct from old.progress_percentage then
            raise exception 'progress_percentage is derived from phases_completed and cannot be written'
                using errcode = 'PF422';
        end if;
        if new.status <> old.status and not (
               new.status = 'deleting'
            or (old.status = any (c_incomplete)
                and (new.status = any (c_incomplete) and new.status <> 'initialized'
                     or new.status in ('cancelled', 'completed')))
        ) then
            raise exception 'a flow cannot go from % to %', old.status, new.status
                using errcode = 'PF422',
                      detail = json_build_object('from', old.status, 'to', new.status)::text;
        end if;
        new.updated_at := now();
    elsif new.progress_percentage is not null and new.progress_percentage <> v_progress then
        raise exception 'progress_percentage is derived from phases_completed and cannot be written'
            using errcode = 'PF422';
    end if;

    if new.status = 'completed' then
        if cardinality(v_completed) < v_total then
            raise exception 'a flow completes only when every phase is complete (% of % are)',
                cardinality(v_completed), v_total
                using errcode = 'PF422';
        end if;
        new.current_phase := null;
        new.completed_at := coalesce(new.completed_at, now());
    end if;

    new.phases_completed := v_completed;
    new.progress_percentage := v_progress;
    return new;
end;
$$;

create or replace function pyflows_audit._refuse_change()
returns trigger
language plpgsql
set search_path = pg_catalog, pyflows_audit
as $$
begin
    if tg_op = 'DELETE' and current_setting('pyflows.audit_prune', true) = txid_current()::text then
        return null;
    end if;
    raise exception 'the pyflows audit trail is append-only: % on %.% is refused',
        tg_op, tg_table_schema, tg_table_name
        using errcode = 'PF403', hint = 'Old events are removed only by pyflows.prune_audit.';
end;
$$;

create or replace function pyflows_audit._guard_event_update()
returns trigger
language plpgsql
set search_path = pg_catalog, pyflows_audit
as $$
declare
    v_open_purge boolean := old.action = 'flow.purge' and old.details ->> 'state' = 'running';
begin
    if (to_jsonb(new) - 'deleted' - 'details') <> (to_jsonb(old) - 'deleted' - 'details')
       or (new.details is distinct from old.details and not v_open_purge)
       or (old.txid <> txid_current() and not v_open_purge) then
        raise exception 'the pyflows audit trail is append-only: event % cannot be changed', old.id
            using errcode = 'PF403';
    end if;
    return new;
end;
$$;

create or replace function pyflows_audit._begin_event(p_action text, p_flow_id uuid, p_reason text, p_impact jsonb,
                                           p_snapshot jsonb, p_forced boolean default false,
                                           p_details jsonb default '{}')
returns bigint
language plpgsql
security definer
set search_path = pg_catalog, pyflows_audit
as $$
declare
    v_id bigint;
begin
    insert into pyflows_audit.events
        (action, actor, client_id, engagement_id, flow_id, batch_id, reason, forced, impact, flow_snapshot,
         statement, details)
    values
        (p_action, pyflows.current_actor(), pyflows.current_client_id(), pyflows.current_engagement_id(),
         p_flow_id, nullif(current_setting('pyflows.audit_batch', true), '')::uuid, p_reason, p_forced,
         p_impact, p_snapshot, current_query(), coalesce(p_details, '{}'))
    returning id into v_id;
    perform set_config('pyflows.audit_event', v_id::text, true);
    perform set_config('pyflows.audit_statement', 'api', true);
    return v_id;
end;
$$;

create or replace function pyflows_audit._end_event()
returns void
language sql
security definer
set search_path = pg_catalog, pyflows_audit
as $$
    select set_config('pyflows.audit_event', '', true), set_config('pyflows.audit_statement', '', true)
$$;

create or replace function pyflows_audit._statement_event(p_table text, p_tenants bigint, p_client uuid, p_engagement uuid,
                                               p_flows bigint, p_flow uuid)
returns bigint
language plpgsql
security definer
set search_path = pg_catalog, pyflows_audit
as $$
declare
    v_event     text := nullif(current_setting('pyflows.audit_event', true), '');
    v_statement text := nullif(current_setting('pyflows.audit_statement', true), '');
    v_id        bigint;
begin
    if v_event is not null and v_statement in ('api', statement_timestamp()::text) and exists (
        select from pyflows_audit.events as e
         where e.id = v_event::bigint
           and (e.txid = txid_current()
                or (e.action = 'flow.purge' and e.details ->> 'state' = 'running' and p_tenants = 1
                    and e.client_id = p_client and e.engagement_id = p_engagement))) then
        return v_event::bigint;
    end if;
    insert into pyflows_audit.events
        (action, actor, client_id, engagement_id, flow_id, batch_id, statement, details)
    values
        ('sql.delete', pyflows.current_actor(),
         case when p_tenants = 1 then p_client end, case when p_tenants = 1 then p_engagement end,
         case when p_flows = 1 then p_flow end, nullif(current_setting('pyflows.audit_batch', true), '')::uuid,
         current_query(), jsonb_build_object('first_table', p_table, 'tenants', p_tenants))
    returning id into v_id;
    perform set_config('pyflows.audit_event', v_id::text, true);
    perform set_config('pyflows.audit_statement', statement_timestamp()::text, true);
    return v_id;
end;
$$;

create or replace function pyflows_audit._own_event()
returns bigint
language sql
stable
security definer
set search_path = pg_catalog, pyflows_audit
as $$
    select e.id from pyflows_audit.events as e
     where e.id = nullif(current_setting('pyflows.audit_event', true), '')::bigint
       and current_setting('pyflows.audit_statement', true) in ('api', statement_timestamp()::text)
       and e.txid = txid_current()
$$;

create or replace function pyflows_audit._enqueue_files()
returns trigger
language plpgsql
security definer
set search_path = pg_catalog, pyflows_audit
as $$
begin
    insert into pyflows.file_cleanup_queue (client_id, engagement_id, storage_uri, flow_id, import_id, event_id)
    select o.client_id, o.engagement_id, o.storage_uri, o.flow_id, o.id,
           nullif(current_setting('pyflows.audit_event', true), '')::bigint
      from old_rows as o;
    return null;
end;
$$;

create or replace function pyflows_audit._running_purge(out id bigint, out client_id uuid, out engagement_id uuid)
returns setof record
language sql
stable
security definer
set search_path = pg_catalog, pyflows_audit
set enable_seqscan = off
as $$
    select e.id, e.client_id, e.engagement_id from pyflows_audit.events as e
     where e.id = nullif(current_setting('pyflows.audit_event', true), '')::bigint
       and current_setting('pyflows.audit_statement', true) = 'api'
       and e.action = 'flow.purge' and e.details ->> 'state' = 'running'
$$;

create or replace function pyflows_audit._on_delete()
returns trigger
language plpgsql
security definer
set search_path = pg_catalog, pyflows_audit
set enable_seqscan = off
set enable_sort = off
set work_mem = '64MB'
as $$
declare
    v_tenant text := case tg_table_name when 'clients' then 'id, null::uuid'
                                        when 'engagements' then 'client_id, id'
                                        else 'client_id, engagement_id' end;
    v_flow   text := case tg_table_name when 'discovery_flows' then 'id'
                                        when 'data_imports' then 'flow_id'
                                        when 'assets' then 'flow_id'
                                        when 'asset_dependencies' then 'flow_id'
                                        else 'null::uuid' end;
    v_rows       bigint;
    v_tenants    bigint;
    v_client     uuid;
    v_engagement uuid;
    v_flows      bigint;
    v_flow_id    uuid;
    v_event      bigint;
    v_foreign    boolean;
begin
    v_event := pyflows_audit._own_event();
    if v_event is null then
        -- A purge batch: its event was opened by an earlier transaction. The rows are its if every
        -- one belongs to the purge's tenant (one pass that stops at the first that does not).
        select p.id, p.client_id, p.engagement_id into v_event, v_client, v_engagement
          from pyflows_audit._running_purge() as p;
        if v_event is not null then
            execute format('select exists (select from old_rows where row(%s) is distinct from row($1, $2))',
                           v_tenant)
               into v_foreign
              using v_client, v_engagement;
            if v_foreign then
                v_event := null;
            end if;
        end if;
    end if;
    if v_event is null then
        -- No event of this transaction: look at the rows (tenant, flow) to find or open one.
        execute format(
            'select count(*), count(distinct (t.c, t.e)), min(t.c::text)::uuid, min(t.e::text)::uuid,
                    count(distinct t.f), min(t.f::text)::uuid
               from (select %s, %s from old_rows) as t(c, e, f)', v_tenant, v_flow)
           into v_rows, v_tenants, v_client, v_engagement, v_flows, v_flow_id;
        if v_rows = 0 then
            return null;
        end if;
        v_event := pyflows_audit._statement_event(tg_table_name, v_tenants, v_client, v_engagement, v_flows,
                                                  v_flow_id);
    end if;
    execute pyflows_audit._archive_statement(tg_table_name, 'old_rows')
      into v_rows
      using v_event;
    if v_rows = 0 then
        return null;
    end if;
    update pyflows_audit.events
       set deleted = jsonb_set(deleted, array[tg_table_name],
                               to_jsonb(coalesce((deleted ->> tg_table_name)::bigint, 0) + v_rows))
     where id = v_event;
    return null;
end;
$$;

alter function pyflows_audit._statement_event(text, bigint, uuid, uuid, bigint, uuid) set enable_seqscan = off;
alter function pyflows_audit._own_event() set enable_seqscan = off;
create trigger enqueue_files after delete on pyflows.data_imports
    referencing old table as old_rows for each statement execute function pyflows_audit._enqueue_files();
revoke all on function pyflows_audit._statement_event(text, bigint, uuid, uuid, bigint, uuid),
    pyflows_audit._enqueue_files(), pyflows_audit._running_purge() from public;

do $$
declare
    v record;
begin
    for v in
        select p.oid::regprocedure as signature, p.prokind, substr(c.setting, length('search_path=') + 1) as path
          from pg_catalog.pg_proc as p
         cross join lateral unnest(p.proconfig) as c(setting)
         where p.pronamespace in ('pyflows'::regnamespace, 'pyflows_audit'::regnamespace)
           and c.setting like 'search\_path=%, pg\_temp'
    loop
        execute format('alter %s %s set search_path = %s',
                       case v.prokind when 'p' then 'procedure' else 'function' end, v.signature,
                       left(v.path, -length(', pg_temp')));
    end loop;
end;
$$;

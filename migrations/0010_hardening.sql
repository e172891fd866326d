-- pyflows 0010: nothing a client can set or plant decides what the owner's code does or what the audit
-- records.
--
-- 1. search_path: every function with a pinned search_path gets pg_temp last. Without it PostgreSQL
--    searches the caller's temporary schema FIRST for relations and types, so a temporary domain named
--    "text" or a temporary view named "pg_roles" ran the caller's code with the owner's rights inside
--    every SECURITY DEFINER function and trigger. The three policy helpers stay without a SET clause
--    (the planner inlines them into every policy, which a SET clause would prevent) and name every
--    type and function they use by schema.
-- 2. The audit event that deleted rows are archived under is decided by the events table, which only
--    the owner's code writes, never by a setting: an API event receives rows only while the API call
--    that opened it runs (details.open_txid, removed by _end_event), and a 'sql.delete' event only rows
--    of the same statement (details.statement_at) and of its own tenant. The setting
--    pyflows.audit_event is kept as a hint (which event to look up by its key), never as proof.
--    Purge batches open their event the same way (pyflows._purge_batch is a definer now), so the
--    per-batch pass that checked every deleted row's tenant is gone.
-- 3. Deleted imports' files are queued by _on_delete itself, under the event it chose, instead of by a
--    second trigger that read the setting.
-- 4. 'deleting' is set only by a purge: the flow row rules accept it only in a transaction that opened
--    that flow's running flow.purge event; no flow is inserted as 'deleting'.
-- 5. The audit trail's append-only triggers let a DELETE through only in a transaction that wrote an
--    audit.prune event (prune_audit writes it first), not when a setting says so.
-- depends: 0009_compressed_archive

-- ---- 1. search_path ---------------------------------------------------------------------------------

do $$
declare
    v record;
begin
    for v in
        select p.oid::regprocedure as signature, p.prokind, substr(c.setting, length('search_path=') + 1) as path
          from pg_catalog.pg_proc as p
         cross join lateral unnest(p.proconfig) as c(setting)
         where p.pronamespace in ('pyflows'::regnamespace, 'pyflows_audit'::regnamespace)
           and c.setting like 'search\_path=%' and c.setting not like '%pg\_temp'
    loop
        execute format('alter %s %s set search_path = %s, pg_temp',
                       case v.prokind when 'p' then 'procedure' else 'function' end, v.signature, v.path);
    end loop;
end;
$$;

-- Inlined into the policies: no SET clause, and nothing in them resolved through the caller's path.
create or replace function pyflows.current_client_id()
returns uuid
language sql
stable
as $$ select nullif(pg_catalog.current_setting('pyflows.client_id', true), '')::pg_catalog.uuid $$;

create or replace function pyflows.current_engagement_id()
returns uuid
language sql
stable
as $$ select nullif(pg_catalog.current_setting('pyflows.engagement_id', true), '')::pg_catalog.uuid $$;

create or replace function pyflows.current_actor()
returns text
language sql
stable
as $$ select nullif(pg_catalog.current_setting('pyflows.actor', true), '')::pg_catalog.text $$;

-- ---- 2. events: open while their API call runs, or for their statement -----------------------------

-- Events that a transaction may still change: the counts and details of an event inside the
-- transaction that created it, and those of a purge while it runs. Nothing else changes.
create or replace function pyflows_audit._guard_event_update()
returns trigger
language plpgsql
set search_path = pg_catalog, pyflows_audit, pg_temp
as $$
declare
    v_open_purge boolean := old.action = 'flow.purge' and old.details ->> 'state' = 'running';
begin
    if (to_jsonb(new) - 'deleted' - 'details') <> (to_jsonb(old) - 'deleted' - 'details')
       or (old.txid <> txid_current() and not v_open_purge) then
        raise exception 'the pyflows audit trail is append-only: event % cannot be changed', old.id
            using errcode = 'PF403';
    end if;
    return new;
end;
$$;

-- Open an event for an API action in the current tenant context. A flow.delete event is open for
-- rows at once (details.open_txid: the delete triggers archive under it only in this transaction,
-- until _end_event closes it); a purge event is opened by each batch (_open_event); other actions
-- never receive rows. Only the SECURITY DEFINER API functions call it.
create or replace function pyflows_audit._begin_event(p_action text, p_flow_id uuid, p_reason text, p_impact jsonb,
                                                      p_snapshot jsonb, p_forced boolean default false,
                                                      p_details jsonb default '{}')
returns bigint
language plpgsql
security definer
set search_path = pg_catalog, pyflows_audit, pg_temp
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
         p_impact, p_snapshot, current_query(),
         coalesce(p_details, '{}')
           || case when p_action = 'flow.delete' then jsonb_build_object('open_txid', txid_current()::text)
                   else '{}'::jsonb end)
    returning id into v_id;
    perform set_config('pyflows.audit_event', case when p_action = 'flow.delete' then v_id::text else '' end, true);
    return v_id;
end;
$$;

-- Open an existing event for the rows this transaction deletes next (a purge batch, a purge's last
-- step), until _end_event. Only the SECURITY DEFINER purge steps call it, after checking the event.
create function pyflows_audit._open_event(p_event bigint)
returns void
language plpgsql
security definer
set search_path = pg_catalog, pyflows_audit, pg_temp
as $$
begin
    update pyflows_audit.events as e
       set details = e.details || jsonb_build_object('open_txid', txid_current()::text)
     where e.id = p_event;
    perform set_config('pyflows.audit_event', p_event::text, true);
end;
$$;

-- Close the open API event: later deletes are audited on their own, whatever the settings say.
create or replace function pyflows_audit._end_event()
returns void
language plpgsql
security definer
set search_path = pg_catalog, pyflows_audit, pg_temp
set enable_seqscan = off
as $$
begin
    update pyflows_audit.events as e
       set details = e.details - 'open_txid'
     where e.id = nullif(current_setting('pyflows.audit_event', true), '')::bigint
       and e.details ->> 'open_txid' = txid_current()::text;
    perform set_config('pyflows.audit_event', '', true);
    perform set_config('pyflows.audit_statement', '', true);
end;
$$;

-- The API event open for rows in this transaction, or NULL. The setting names which event to look at
-- (one lookup by key); the event itself says whether it is open, and only the owner's code writes it.
create or replace function pyflows_audit._own_event()
returns bigint
language sql
stable
security definer
set search_path = pg_catalog, pyflows_audit, pg_temp
set enable_seqscan = off
as $$
    select e.id from pyflows_audit.events as e
     where e.id = nullif(current_setting('pyflows.audit_event', true), '')::bigint
       and e.details ->> 'open_txid' = txid_current()::text
$$;

-- The 'sql.delete' event for rows deleted outside the API: the one this statement already opened, if
-- the rows fit its tenant (an event of one client, or of one engagement, takes only that tenant's rows;
-- one of several clients takes any), or a new one scoped to the rows' tenant, with the statement's text.
drop function pyflows_audit._statement_event(text, bigint, uuid, uuid, bigint, uuid);
create function pyflows_audit._statement_event(p_table text, p_clients bigint, p_tenants bigint, p_client uuid,
                                               p_engagement uuid, p_flows bigint, p_flow uuid)
returns bigint
language plpgsql
security definer
set search_path = pg_catalog, pyflows_audit, pg_temp
set enable_seqscan = off
as $$
declare
    v_id bigint;
begin
    select e.id into v_id from pyflows_audit.events as e
     where e.id = nullif(current_setting('pyflows.audit_event', true), '')::bigint
       and e.txid = txid_current() and e.action = 'sql.delete'
       and e.details ->> 'statement_at' = statement_timestamp()::text
       and (e.client_id is null
            or (p_clients = 1 and e.client_id = p_client
                and (e.engagement_id is null or (p_tenants = 1 and e.engagement_id = p_engagement))));
    if v_id is not null then
        return v_id;
    end if;
    insert into pyflows_audit.events
        (action, actor, client_id, engagement_id, flow_id, batch_id, statement, details)
    values
        ('sql.delete', pyflows.current_actor(),
         case when p_clients = 1 then p_client end, case when p_tenants = 1 then p_engagement end,
         case when p_flows = 1 then p_flow end, nullif(current_setting('pyflows.audit_batch', true), '')::uuid,
         current_query(), jsonb_build_object('first_table', p_table, 'tenants', p_tenants,
                                             'statement_at', statement_timestamp()::text))
    returning id into v_id;
    perform set_config('pyflows.audit_event', v_id::text, true);
    return v_id;
end;
$$;

drop function pyflows_audit._running_purge();

-- AFTER DELETE ... FOR EACH STATEMENT on every audited table: write the deleted rows into the archive
-- (chunks under the event, see _archive_statement), add their number to the event's counts, and for
-- imports queue their stored files under the same event. The event is the API's open event, else the
-- statement's sql.delete event (found or opened by _statement_event after one pass over the rows).
-- The chunks are built by hash aggregation in memory (work_mem 64MB, times hash_mem_multiplier),
-- spilling to disk past it; sorting is off (see migration 0009).
create or replace function pyflows_audit._on_delete()
returns trigger
language plpgsql
security definer
set search_path = pg_catalog, pyflows_audit, pg_temp
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
    v_clients    bigint;
    v_tenants    bigint;
    v_client     uuid;
    v_engagement uuid;
    v_flows      bigint;
    v_flow_id    uuid;
    v_event      bigint;
begin
    v_event := pyflows_audit._own_event();
    if v_event is null then
        -- No API event is open: look at the rows (tenant, flow) to find or open the statement's event.
        execute format(
            'select count(*), count(distinct t.c), count(distinct (t.c, t.e)), min(t.c::text)::uuid,
                    min(t.e::text)::uuid, count(distinct t.f), min(t.f::text)::uuid
               from (select %s, %s from old_rows) as t(c, e, f)', v_tenant, v_flow)
           into v_rows, v_clients, v_tenants, v_client, v_engagement, v_flows, v_flow_id;
        if v_rows = 0 then
            return null;
        end if;
        v_event := pyflows_audit._statement_event(tg_table_name, v_clients, v_tenants, v_client, v_engagement,
                                                  v_flows, v_flow_id);
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
    if tg_table_name = 'data_imports' then  -- (built with format: plpgsql_check checks every table's branch)
        execute format('insert into pyflows.file_cleanup_queue (client_id, engagement_id, storage_uri, flow_id,
                                                                import_id, event_id)
                        select o.client_id, o.engagement_id, o.storage_uri, o.flow_id, o.id, $1 from %I as o',
                       'old_rows')
          using v_event;
    end if;
    return null;
end;
$$;

drop trigger enqueue_files on pyflows.data_imports;
drop function pyflows_audit._enqueue_files();

revoke all on function pyflows_audit._open_event(bigint),
    pyflows_audit._statement_event(text, bigint, bigint, uuid, uuid, bigint, uuid) from public;

-- ---- 4. only a purge marks a flow 'deleting' ---------------------------------------------------------

-- The rules every write to a flow row obeys, whoever writes it (migration 0002), and one more: a flow
-- becomes 'deleting' only in the transaction that opened its running flow.purge event (what
-- pyflows.purge_flow's first step does), and is never inserted so.
create or replace function pyflows._flow_row_rules()
returns trigger
language plpgsql
set search_path = pg_catalog, pyflows, pg_temp
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
    if new.status = 'deleting' and (tg_op = 'INSERT' or (old.status <> 'deleting' and not exists (
            select from pyflows_audit.events as e
             where e.client_id = new.client_id and e.engagement_id = new.engagement_id and e.flow_id = new.id
               and e.action = 'flow.purge' and e.details ->> 'state' = 'running'
               and e.txid = txid_current()))) then
        raise exception 'only pyflows.purge_flow marks a flow deleting'
            using errcode = 'PF422',
                  detail = json_build_object('flow_id', new.id, 'status', new.status)::text,
                  hint = 'Delete a flow with pyflows.delete_flow, or purge it with pyflows.purge_flow.';
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

-- ---- 5. append-only, whatever the settings say -----------------------------------------------------

-- The transaction's own audit.prune event is what lets a DELETE through (prune_audit writes it first).
create index events_prune on pyflows_audit.events (txid) where action = 'audit.prune';

-- Statement-level: refuses UPDATE, DELETE and TRUNCATE. The one exception is a DELETE in a
-- transaction that wrote an audit.prune event, which only pyflows.prune_audit (admins) does before it
-- deletes; the owner, who could write one by hand, leaves that event behind as well.
create or replace function pyflows_audit._refuse_change()
returns trigger
language plpgsql
set search_path = pg_catalog, pyflows_audit, pg_temp
as $$
begin
    if tg_op = 'DELETE' and exists (select from pyflows_audit.events as e
                                     where e.action = 'audit.prune' and e.txid = txid_current()) then
        return null;
    end if;
    raise exception 'the pyflows audit trail is append-only: % on %.% is refused',
        tg_op, tg_table_schema, tg_table_name
        using errcode = 'PF403', hint = 'Old events are removed only by pyflows.prune_audit.';
end;
$$;

-- pyflows 0015 rollback: the audit trail as migrations 0010 to 0014 left it. Events of no client go back
-- into pyflows_audit.events; chunks keep the rows they hold (those split by client stay split).


drop trigger events_guard_update on pyflows_audit.global_events;
drop trigger events_refuse_delete on pyflows_audit.global_events;
drop trigger events_refuse_truncate on pyflows_audit.global_events;
alter table pyflows_audit.events drop constraint events_pkey;
alter table pyflows_audit.events add constraint events_pkey primary key (id);
drop index pyflows_audit.events_id;
alter table pyflows_audit.events alter column client_id drop not null;
insert into pyflows_audit.events overriding system value select * from pyflows_audit.global_events;
drop table pyflows_audit.global_events;
create index events_prune on pyflows_audit.events (txid) where action = 'audit.prune';
alter table pyflows_audit.events alter column txid set default txid_current();

do $$
declare
    v_table text;
begin
    foreach v_table in array array['clients', 'engagements', 'discovery_flows', 'data_imports', 'raw_import_records',
                                   'import_field_mappings', 'assets', 'asset_dependencies'] loop
        execute format('alter table pyflows_audit.%I drop column client_id', v_table || '_chunks');
    end loop;
end;
$$;


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

create or replace function pyflows_audit._guard_event_update()
returns trigger
language plpgsql
set search_path = pg_catalog, pyflows_audit, pg_temp
as $$
declare
    v_same pyflows_audit.events := new;
begin
    v_same.deleted := old.deleted;
    v_same.details := old.details;
    if v_same is distinct from old
       or (old.txid <> txid_current() and not (old.action = 'flow.purge' and old.details ->> 'state' = 'running')) then
        raise exception 'the pyflows audit trail is append-only: event % cannot be changed', old.id
            using errcode = 'PF403';
    end if;
    return new;
end;
$$;

drop function pyflows_audit._archived_counts(uuid, bigint[]);
create function pyflows_audit._archived_counts(p_event bigint)
returns jsonb
language plpgsql
stable
set search_path = pg_catalog, pyflows_audit, pg_temp
set enable_seqscan = off
set jit = off
as $$
begin
    return jsonb_strip_nulls(jsonb_build_object(
               'clients', (select sum(x.row_count) from pyflows_audit.clients_chunks as x where x.event_id = p_event),
               'engagements', (select sum(x.row_count) from pyflows_audit.engagements_chunks as x where x.event_id = p_event),
               'discovery_flows', (select sum(x.row_count) from pyflows_audit.discovery_flows_chunks as x where x.event_id = p_event),
               'data_imports', (select sum(x.row_count) from pyflows_audit.data_imports_chunks as x where x.event_id = p_event),
               'raw_import_records', (select sum(x.row_count) from pyflows_audit.raw_import_records_chunks as x where x.event_id = p_event),
               'import_field_mappings', (select sum(x.row_count) from pyflows_audit.import_field_mappings_chunks as x where x.event_id = p_event),
               'assets', (select sum(x.row_count) from pyflows_audit.assets_chunks as x where x.event_id = p_event),
               'asset_dependencies', (select sum(x.row_count) from pyflows_audit.asset_dependencies_chunks as x where x.event_id = p_event)));
end;
$$;

create or replace function pyflows_audit._end_event()
returns void
language plpgsql
security definer
set search_path = pg_catalog, pyflows_audit, pg_temp
set enable_seqscan = off
set jit = off
as $$
declare
    v_range text := current_setting('pyflows.audit_open', true);
    v_open  bigint[];
begin
    if v_range ~ '^[0-9]{1,18}:[0-9]{1,18}$' then
        select array_agg(e.id) into v_open from pyflows_audit.events as e
         where e.id between split_part(v_range, ':', 1)::bigint and split_part(v_range, ':', 2)::bigint
           and e.details ->> 'open_txid' = txid_current()::text;
    end if;
    if v_open is not null then
        update pyflows_audit.events as e
           set details = e.details - 'open_txid',
               deleted = case when e.action = 'flow.delete' then pyflows_audit._archived_counts(e.id) else e.deleted end
         where e.id = any(v_open);
    end if;
    perform set_config('pyflows.audit_open', '', true);
    perform set_config('pyflows.audit_event', '', true);
    perform set_config('pyflows.audit_statement', '', true);
end;
$$;

create or replace function pyflows_audit._open_event(p_event bigint)
returns void
language plpgsql
security definer
set search_path = pg_catalog, pyflows_audit, pg_temp
as $$
begin
    update pyflows_audit.events as e
       set details = e.details || jsonb_build_object('open_txid', txid_current()::text)
     where e.id = p_event;
    perform set_config('pyflows.audit_open', p_event::text || ':' || p_event::text, true);
end;
$$;

create or replace function pyflows_audit._begin_events(p_action text, p_flow_ids uuid[], p_reason text, p_impacts jsonb[],
                                            p_snapshots jsonb[], p_forced boolean default false,
                                            p_details jsonb default '{}')
returns bigint[]
language plpgsql
security definer
set search_path = pg_catalog, pyflows_audit, pg_temp
as $$
declare
    v_ids bigint[];
begin
    with opened as (
        insert into pyflows_audit.events
            (action, actor, client_id, engagement_id, flow_id, batch_id, reason, forced, impact, flow_snapshot,
             statement, details)
        select p_action, pyflows.current_actor(), pyflows.current_client_id(), pyflows.current_engagement_id(),
               f.flow_id, nullif(current_setting('pyflows.audit_batch', true), '')::uuid, p_reason, p_forced,
               f.impact, f.snapshot, current_query(),
               coalesce(p_details, '{}')
                 || case when p_action = 'flow.delete' then jsonb_build_object('open_txid', txid_current()::text)
                         else '{}'::jsonb end
          from unnest(p_flow_ids, p_impacts, p_snapshots) with ordinality as f(flow_id, impact, snapshot, n)
         order by f.n
        returning id)
    select array_agg(opened.id order by opened.id) into v_ids from opened;
    if p_action = 'flow.delete' then
        perform set_config('pyflows.audit_open', v_ids[1]::text || ':' || v_ids[cardinality(v_ids)]::text, true);
    end if;
    perform set_config('pyflows.audit_event', '', true);
    return v_ids;
end;
$$;

drop function pyflows_audit._statement_event(text, uuid, bigint, uuid, bigint, uuid);
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
    -- Only a flow becoming 'deleting' looks at the audit trail. Its own IF, so that the audit query
    -- is planned only then: on Citus this trigger runs on the shards, and a shard plans what it reads.
    if new.status = 'deleting' and (tg_op = 'INSERT' or old.status <> 'deleting') then
        if tg_op = 'INSERT' or not exists (
            select from pyflows_audit.events as e
             where e.client_id = new.client_id and e.engagement_id = new.engagement_id and e.flow_id = new.id
               and e.action = 'flow.purge' and e.details ->> 'state' = 'running'
               and e.txid = txid_current()) then
            raise exception 'only pyflows.purge_flow marks a flow deleting'
                using errcode = 'PF422',
                      detail = json_build_object('flow_id', new.id, 'status', new.status)::text,
                      hint = 'Delete a flow with pyflows.delete_flow, or purge it with pyflows.purge_flow.';
        end if;
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

create function pyflows_audit._chunk_statement(p_table text, p_rows text, p_events text)
returns text
language sql
stable
set search_path = pg_catalog, pyflows_audit, pg_temp
as $$
    select format(
        'with chunk as (
             insert into pyflows_audit.%1$I (event_id, row_count, rows)
             select s.ev, count(*), array_agg(s.r) from (%2$s) as s group by s.ev, s.big, s.n
             returning row_count)
         select coalesce(sum(chunk.row_count), 0) from chunk',
        p_table || '_chunks',
        case when exists (select from pg_catalog.pg_attribute as a
                           where a.attrelid = pg_catalog.to_regclass('pyflows.' || quote_ident(p_table))
                             and a.attname = 'id' and a.atttypid = 'bigint'::regtype)
             then format('select t.ev, t.r, pg_catalog.pg_column_size(t.r) > 16384 as big,
                                 case when pg_catalog.pg_column_size(t.r) > 16384 then t.id else t.id / 10000 end as n
                            from (%s offset 0) as t(ev, r, id)', p_rows)
             else format('select t.ev, t.r, false as big,
                                 sum(pg_catalog.pg_column_size(t.r)) over (%s rows unbounded preceding)
                                   / 8388608 as n
                            from (%s) as t(ev, r, id)',
                         case when p_events = 'many' then 'partition by t.ev' else '' end, p_rows)
        end)
$$;

create or replace function pyflows_audit._archive_statement(p_table text, p_source text)
returns text
language sql
stable
set search_path = pg_catalog, pyflows_audit, pg_temp
as $$
    select pyflows_audit._chunk_statement(
        p_table, format('select $1::bigint, row(o.*)::pyflows_audit.%I, o.id from %s as o', p_table || '_row', p_source),
        'one')
$$;

create or replace function pyflows_audit._create_delete_trigger(p_table text)
returns void
language plpgsql
set search_path = pg_catalog, pyflows_audit, pg_temp
as $make$
declare
    v_function text := '_on_delete_' || p_table;
    v_row      text := format('row(o.*)::pyflows_audit.%I', p_table || '_row');
    v_tenant   text := case p_table when 'clients' then 't.id, null::uuid'
                                    when 'engagements' then 't.client_id, t.id'
                                    else 't.client_id, t.engagement_id' end;
    v_flow     text := case p_table when 'discovery_flows' then 't.id'
                                    when 'data_imports' then 't.flow_id'
                                    when 'assets' then 't.flow_id'
                                    when 'asset_dependencies' then 't.flow_id'
                                    else 'null::uuid' end;
    -- The batch event of each row: its flow's, through the live parent where the row does not name it.
    v_owner    text;
    v_queue    text := case when p_table = 'data_imports' then
        'insert into pyflows.file_cleanup_queue (client_id, engagement_id, storage_uri, flow_id, import_id, event_id)
    select o.client_id, o.engagement_id, o.storage_uri, o.flow_id, o.id, coalesce(m.event_id, v_event)
      from old_rows as o left join unnest(v_flows, v_events) as m(flow_id, event_id) on v_event is null
                                                                                     and m.flow_id = o.flow_id;'
        else '' end;
begin
    if p_table is null or pg_catalog.to_regclass('pyflows_audit.' || quote_ident(p_table || '_chunks')) is null then
        raise exception 'no archive for table %', p_table using errcode = 'PF422';
    end if;
    -- Every audited table has an id; _chunk_statement uses it where it is a bigint.
    v_owner := case p_table
        when 'discovery_flows' then
            'select m.event_id, %1$s, o.id from old_rows as o
               left join unnest(v_flows, v_events) as m(flow_id, event_id) on m.flow_id = o.id'
        when 'data_imports' then
            'select m.event_id, %1$s, o.id from old_rows as o
               left join unnest(v_flows, v_events) as m(flow_id, event_id) on m.flow_id = o.flow_id'
        when 'assets' then
            'select m.event_id, %1$s, o.id from old_rows as o
               left join unnest(v_flows, v_events) as m(flow_id, event_id) on m.flow_id = o.flow_id'
        when 'raw_import_records' then
            'select m.event_id, %1$s, o.id from old_rows as o
               left join pyflows.data_imports as i
                 on i.id = o.import_id and i.client_id = o.client_id and i.engagement_id = o.engagement_id
               left join unnest(v_flows, v_events) as m(flow_id, event_id) on m.flow_id = i.flow_id'
        when 'import_field_mappings' then
            'select m.event_id, %1$s, o.id from old_rows as o
               left join pyflows.data_imports as i
                 on i.id = o.import_id and i.client_id = o.client_id and i.engagement_id = o.engagement_id
               left join unnest(v_flows, v_events) as m(flow_id, event_id) on m.flow_id = i.flow_id'
        when 'asset_dependencies' then
            'select least(m.event_id, ms.event_id, mt.event_id), %1$s, o.id from old_rows as o
               left join pyflows.assets as s
                 on s.id = o.source_asset_id and s.client_id = o.client_id and s.engagement_id = o.engagement_id
               left join pyflows.assets as t
                 on t.id = o.target_asset_id and t.client_id = o.client_id and t.engagement_id = o.engagement_id
               left join unnest(v_flows, v_events) as m(flow_id, event_id) on m.flow_id = o.flow_id
               left join unnest(v_flows, v_events) as ms(flow_id, event_id) on ms.flow_id = s.flow_id
               left join unnest(v_flows, v_events) as mt(flow_id, event_id) on mt.flow_id = t.flow_id'
        else  -- clients and engagements are never part of a flow's batch
            'select null::bigint, %1$s, o.id from old_rows as o'
        end;
    execute format($function$
create or replace function pyflows_audit.%1$I()
returns trigger
language plpgsql
security definer
set search_path = pg_catalog, pyflows_audit, pg_temp
set enable_seqscan = off
set enable_sort = off
set jit = off
set work_mem = '64MB'
as $body$
declare
    v_open       text := current_setting('pyflows.audit_open', true);
    v_events     bigint[];
    v_flows      uuid[];
    v_event      bigint;
    v_counted    boolean;
    v_rows       bigint;
    v_clients    bigint;
    v_tenants    bigint;
    v_client     uuid;
    v_engagement uuid;
    v_flow_count bigint;
    v_flow_id    uuid;
begin
    -- The API events open for rows in this transaction: the setting says where to look, the events
    -- whether they are open (only the owner's code opens and closes them).
    if v_open ~ '^[0-9]{1,18}:[0-9]{1,18}$' then
        select array_agg(e.id), array_agg(e.flow_id), bool_and(e.action = 'flow.delete')  -- in the same order
          into v_events, v_flows, v_counted
          from pyflows_audit.events as e
         where e.id between split_part(v_open, ':', 1)::bigint and split_part(v_open, ':', 2)::bigint
           and e.details ->> 'open_txid' = txid_current()::text;
    end if;
    if v_events is null then
        select count(*), count(distinct t.c), count(distinct (t.c, t.e)), min(t.c::text)::uuid,
               min(t.e::text)::uuid, count(distinct t.f), min(t.f::text)::uuid
          into v_rows, v_clients, v_tenants, v_client, v_engagement, v_flow_count, v_flow_id
          from (select %2$s, %3$s from old_rows as t) as t(c, e, f);
        if v_rows = 0 then
            return null;
        end if;
        v_event := pyflows_audit._statement_event(%4$L, v_clients, v_tenants, v_client, v_engagement,
                                                  v_flow_count, v_flow_id);
        v_counted := false;
    elsif cardinality(v_events) = 1 then
        v_event := v_events[1];
    elsif not v_counted then
        raise exception 'several audit events are open and not all of them are flow deletes: %%', v_events
            using errcode = 'XX000';
    end if;
    if v_event is not null then
        %5$s
          into v_rows;
    else
        %6$s
          into v_rows;
    end if;
    if v_rows = 0 then
        return null;
    end if;
    if not v_counted then
        update pyflows_audit.events as e
           set deleted = jsonb_set(e.deleted, array[%4$L],
                                   to_jsonb(coalesce((e.deleted ->> %4$L)::bigint, 0) + v_rows))
         where e.id = v_event;
    end if;
    %7$s
    return null;
end;
$body$
$function$, v_function, v_tenant, v_flow, p_table,
        pyflows_audit._chunk_statement(p_table, format('select v_event, %s, o.id from old_rows as o', v_row), 'one'),
        pyflows_audit._chunk_statement(p_table, format(
            'select coalesce(x.ev, pyflows_audit._unowned_row(%L)), x.r, x.id from (%s) as x(ev, r, id)',
            p_table, format(v_owner, v_row)), 'many'),
        v_queue);
    execute format('revoke all on function pyflows_audit.%I() from public', v_function);
    execute format('create or replace trigger audit_delete after delete on pyflows.%I
                        referencing old table as old_rows for each statement execute function pyflows_audit.%I()',
                   p_table, v_function);
end;
$make$;

revoke all on function pyflows_audit._chunk_statement(text, text, text),
    pyflows_audit._archived_counts(bigint), pyflows_audit._statement_event(text, bigint, bigint, uuid, uuid, bigint, uuid)
    from public;

do $$
begin
    perform pyflows_audit._create_delete_trigger(t)
       from unnest(array['clients', 'engagements', 'discovery_flows', 'data_imports', 'raw_import_records',
                         'import_field_mappings', 'assets', 'asset_dependencies']) as t;
end;
$$;

drop function pyflows_audit._chunk_query(text, text, text);
drop function pyflows_audit._holds_client(uuid);
drop function pyflows_audit._xact();

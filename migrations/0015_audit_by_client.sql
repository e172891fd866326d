-- pyflows 0015: the audit trail is kept by client, so that on Citus it lives beside the rows it
-- records (docs/scale-out.md, "The audit trail on a cluster").
--
--   * Every event of pyflows_audit.events belongs to a client (NOT NULL, primary key (client_id, id)),
--     and every archive chunk says which client its rows are of (client_id, NOT NULL): on Citus both
--     are distributed by client_id with the tenant tables, so the delete triggers, which run on the
--     shards, write events and chunks on their own worker. A raw DELETE that spans clients records
--     one sql.delete event per client. Chunks of earlier events that mixed clients are split.
--   * Events of no client move to pyflows_audit.global_events, same columns, ids from the same
--     sequence: audit.prune (and sql.delete events of several clients written before this
--     migration). On Citus it is a reference table, so the append-only guards on every node can tell,
--     locally, whether their transaction is a prune.
--   * The transaction an event belongs to is pyflows_audit._xact(): txid_current() on PostgreSQL; on
--     Citus the distributed transaction's number, the same on the coordinator and on every worker
--     (txid_current() differs per node). events.txid records it; the open events and the guards
--     compare it.
--   * The delete triggers read their transition table on its own and write through one-row INSERTs
--     per chunk and client (Citus cannot join a transition table with a distributed table, nor read
--     one in an INSERT ... SELECT into a distributed table); the rows of a batch find their flow
--     through the parents' keys read beforehand, per client.
--   * The trigger of pyflows.clients (a reference table on Citus, whose trigger fires on every node's
--     copy) archives a deleted client on the node that holds that client's shards, and only there.
-- depends: 0014_flow_rules_on_shards

-- ---- the transaction an event belongs to ------------------------------------------------------------

-- txid_current() on PostgreSQL; on Citus (initiator node << 48) + the distributed transaction number,
-- which Citus gives a transaction once it works on several nodes (made to here if it has not yet)
-- and sends to every worker the transaction reaches. Citus' function is called
-- through EXECUTE: it exists only where Citus is installed.
create function pyflows_audit._xact()
returns bigint
language plpgsql
volatile
set search_path = pg_catalog, pyflows_audit, pg_temp
as $$
declare
    -- Named through format(), so that no static check looks for them on PostgreSQL.
    c_current constant text := pg_catalog.format(
        'select t.initiator_node_identifier, t.transaction_number from %s() as t',
        'pg_catalog.get_current_transaction_id');
    v_node   bigint;
    v_number bigint;
begin
    if pg_catalog.to_regproc('pg_catalog.get_current_transaction_id') is null then
        return pg_catalog.txid_current();
    end if;
    execute c_current into v_node, v_number;
    if v_number = 0 then
        -- Citus starts a distributed transaction to propagate a LOCK of one of its tables: the
        -- least a transaction can do to get its number (a read may stay on this node). NOWAIT: only
        -- DDL on phases (a migration) holds a lock that conflicts, and nothing waits for it.
        begin
            lock table pyflows.phases in access share mode nowait;
        exception when lock_not_available then
            raise exception 'pyflows'' tables are being changed (a migration runs): try again'
                using errcode = 'PF423', hint = 'Try again once the migration has committed.';
        end;
        execute c_current into v_node, v_number;
    end if;
    if v_number = 0 then
        -- No distributed transaction: pyflows' tables are not distributed yet, and all is on this node.
        execute pg_catalog.format('select count(*) from %s as p where p.logicalrelid = $1',
                                  'pg_catalog.pg_dist_partition')
           into v_number using 'pyflows.phases'::regclass;  -- 1 when phases is Citus'
        if v_number = 1 then
            raise exception 'no Citus distributed transaction number for this transaction'
                using errcode = 'XX000';
        end if;
        return pg_catalog.txid_current();
    end if;
    return (v_node << 48) + v_number;
end;
$$;

-- Whether this node holds the shards of p_client (the events' shard): always on PostgreSQL. Citus'
-- catalogs are named through format(), as in _xact().
create function pyflows_audit._holds_client(p_client uuid)
returns boolean
language plpgsql
stable
set search_path = pg_catalog, pyflows_audit, pg_temp
as $$
declare
    v_holds boolean;
begin
    if pg_catalog.to_regclass('pg_catalog.pg_dist_partition') is null then
        return true;
    end if;
    execute pg_catalog.format(
        'select not exists (select from %1$s as p where p.logicalrelid = $1)
             or exists (select from %2$s as p
                         where p.shardid = %3$s($1, $2)
                           and p.groupid = (select g.groupid from %4$s as g))',
        'pg_catalog.pg_dist_partition', 'pg_catalog.pg_dist_placement',
        'pg_catalog.get_shard_id_for_distribution_column', 'pg_catalog.pg_dist_local_group')
       into v_holds using 'pyflows_audit.events'::regclass, p_client;
    return v_holds;
end;
$$;

-- ---- events of no client --------------------------------------------------------------------------------

create table pyflows_audit.global_events (like pyflows_audit.events including defaults);
alter table pyflows_audit.global_events
    alter column id set default nextval('pyflows_audit.events_id_seq'),
    add constraint global_events_pkey primary key (id),
    add constraint global_events_action_check check (action in ('audit.prune', 'sql.delete'));
alter table pyflows_audit.events alter column txid set default pyflows_audit._xact();
alter table pyflows_audit.global_events alter column txid set default pyflows_audit._xact();
create index global_events_occurred on pyflows_audit.global_events (occurred_at desc);
drop index pyflows_audit.events_prune;
create index global_events_prune on pyflows_audit.global_events (txid) where action = 'audit.prune';

alter table pyflows_audit.events disable trigger events_refuse_delete;
insert into pyflows_audit.global_events select * from pyflows_audit.events as e where e.client_id is null;
delete from pyflows_audit.events as e where e.client_id is null;
alter table pyflows_audit.events enable trigger events_refuse_delete;

alter table pyflows_audit.events alter column client_id set not null;
alter table pyflows_audit.events drop constraint events_pkey;
alter table pyflows_audit.events add constraint events_pkey primary key (client_id, id);
create index events_id on pyflows_audit.events (id);

-- ---- chunks by client ------------------------------------------------------------------------------------

do $$
declare
    v_table text;
    v_key   text;
begin
    foreach v_table in array array['clients', 'engagements', 'discovery_flows', 'data_imports', 'raw_import_records',
                                   'import_field_mappings', 'assets', 'asset_dependencies'] loop
        v_key := case v_table when 'clients' then 'id' else 'client_id' end;
        execute format('alter table pyflows_audit.%I add column client_id uuid', v_table || '_chunks');
        execute format('alter table pyflows_audit.%I disable trigger refuse_change', v_table || '_chunks');
        execute format(
            'with mixed as (delete from pyflows_audit.%1$I as c
                             where exists (select from unnest(c.rows) as r where r.%2$I <> (c.rows[1]).%2$I)
                            returning c.event_id, c.rows),
                  numbered as (select row_number() over () as k, m.event_id, m.rows from mixed as m)
             insert into pyflows_audit.%1$I (event_id, row_count, rows, client_id)
             select n.event_id, count(*), array_agg(r), r.%2$I
               from numbered as n cross join lateral unnest(n.rows) as r
              group by n.k, n.event_id, r.%2$I',
            v_table || '_chunks', v_key);
        execute format('update pyflows_audit.%1$I as c set client_id = (c.rows[1]).%2$I', v_table || '_chunks', v_key);
        execute format('alter table pyflows_audit.%I enable trigger refuse_change', v_table || '_chunks');
        execute format('alter table pyflows_audit.%I alter column client_id set not null', v_table || '_chunks');
    end loop;
end;
$$;

-- ---- append-only --------------------------------------------------------------------------------------------

-- Statement-level on events, global events and chunks: refuses UPDATE, DELETE and TRUNCATE, except a
-- DELETE in a transaction that wrote an audit.prune event (only pyflows.prune_audit does, first).
create or replace function pyflows_audit._refuse_change()
returns trigger
language plpgsql
set search_path = pg_catalog, pyflows_audit, pg_temp
as $$
begin
    if tg_op = 'DELETE' and exists (select from pyflows_audit.global_events as e
                                     where e.action = 'audit.prune' and e.txid = pyflows_audit._xact()) then
        return null;
    end if;
    raise exception 'the pyflows audit trail is append-only: % on %.% is refused',
        tg_op, tg_table_schema, tg_table_name
        using errcode = 'PF403', hint = 'Old events are removed only by pyflows.prune_audit.';
end;
$$;

-- Events that a transaction may still change: the counts and details of an event inside the
-- transaction that created it, and those of a purge while it runs. Nothing else changes. (A record
-- of the row's own type: on Citus the trigger fires on a shard, whose rows are not of the type
-- pyflows_audit.events.)
create or replace function pyflows_audit._guard_event_update()
returns trigger
language plpgsql
set search_path = pg_catalog, pyflows_audit, pg_temp
as $$
begin
    if (to_jsonb(new) - 'deleted' - 'details') <> (to_jsonb(old) - 'deleted' - 'details')
       or (old.txid <> pyflows_audit._xact()
           and not (old.action = 'flow.purge' and old.details ->> 'state' = 'running')) then
        raise exception 'the pyflows audit trail is append-only: event % cannot be changed', old.id
            using errcode = 'PF403';
    end if;
    return new;
end;
$$;

create trigger events_guard_update before update on pyflows_audit.global_events
    for each row execute function pyflows_audit._guard_event_update();
create trigger events_refuse_delete before delete on pyflows_audit.global_events
    for each statement execute function pyflows_audit._refuse_change();
create trigger events_refuse_truncate before truncate on pyflows_audit.global_events
    for each statement execute function pyflows_audit._refuse_change();
revoke all on pyflows_audit.global_events from public;

-- ---- opening and closing events ---------------------------------------------------------------------------

-- What each of the events p_events of p_client archived, per table: {"<event id>": {"assets": 5, ...}},
-- tables with no rows left out (see migration 0012). One query, on Citus routed to the client's shards.
drop function pyflows_audit._archived_counts(bigint);
create function pyflows_audit._archived_counts(p_client uuid, p_events bigint[])
returns jsonb
language plpgsql
stable
set search_path = pg_catalog, pyflows_audit, pg_temp
set enable_seqscan = off
set jit = off
as $$
declare
    v_counts jsonb;
begin
    select coalesce(jsonb_object_agg(u.event_id::text, u.counts), '{}') into v_counts
      from (select s.event_id, jsonb_object_agg(s.table_name, s.n) as counts
              from (select 'clients', x.event_id, sum(x.row_count) from pyflows_audit.clients_chunks as x
                 where x.client_id = p_client and x.event_id = any (p_events) group by x.event_id
                union all
                select 'engagements', x.event_id, sum(x.row_count) from pyflows_audit.engagements_chunks as x
                 where x.client_id = p_client and x.event_id = any (p_events) group by x.event_id
                union all
                select 'discovery_flows', x.event_id, sum(x.row_count) from pyflows_audit.discovery_flows_chunks as x
                 where x.client_id = p_client and x.event_id = any (p_events) group by x.event_id
                union all
                select 'data_imports', x.event_id, sum(x.row_count) from pyflows_audit.data_imports_chunks as x
                 where x.client_id = p_client and x.event_id = any (p_events) group by x.event_id
                union all
                select 'raw_import_records', x.event_id, sum(x.row_count) from pyflows_audit.raw_import_records_chunks as x
                 where x.client_id = p_client and x.event_id = any (p_events) group by x.event_id
                union all
                select 'import_field_mappings', x.event_id, sum(x.row_count) from pyflows_audit.import_field_mappings_chunks as x
                 where x.client_id = p_client and x.event_id = any (p_events) group by x.event_id
                union all
                select 'assets', x.event_id, sum(x.row_count) from pyflows_audit.assets_chunks as x
                 where x.client_id = p_client and x.event_id = any (p_events) group by x.event_id
                union all
                select 'asset_dependencies', x.event_id, sum(x.row_count) from pyflows_audit.asset_dependencies_chunks as x
                 where x.client_id = p_client and x.event_id = any (p_events) group by x.event_id) as s(table_name, event_id, n)
             group by s.event_id) as u;
    return v_counts;
end;
$$;

-- Close every event of the context's client this transaction opened for rows (see migration 0012).
create or replace function pyflows_audit._end_event()
returns void
language plpgsql
security definer
set search_path = pg_catalog, pyflows_audit, pg_temp
set enable_seqscan = off
set jit = off
as $$
declare
    c_client constant uuid := pyflows.current_client_id();
    v_range  text := current_setting('pyflows.audit_open', true);
    v_open   bigint[];
    v_counts jsonb;
begin
    if v_range ~ '^[0-9]{1,18}:[0-9]{1,18}$' and c_client is not null then
        select array_agg(e.id) into v_open from pyflows_audit.events as e
         where e.client_id = c_client
           and e.id between split_part(v_range, ':', 1)::bigint and split_part(v_range, ':', 2)::bigint
           and e.details ->> 'open_txid' = pyflows_audit._xact()::text;
    end if;
    if v_open is not null then
        v_counts := pyflows_audit._archived_counts(c_client, v_open);
        update pyflows_audit.events as e
           set details = e.details - 'open_txid',
               deleted = case when e.action = 'flow.delete' then coalesce(v_counts -> e.id::text, '{}')
                              else e.deleted end
         where e.client_id = c_client and e.id = any(v_open);
    end if;
    perform pyflows._set_local('pyflows.audit_open', '');
end;
$$;

-- Open an existing event of the context's client for the rows this transaction deletes next (a
-- purge batch, a purge's last step), until _end_event. Only the purge steps call it.
create or replace function pyflows_audit._open_event(p_event bigint)
returns void
language plpgsql
security definer
set search_path = pg_catalog, pyflows_audit, pg_temp
as $$
declare
    c_client constant uuid := pyflows.current_client_id();
    v_xact   text := pyflows_audit._xact()::text;  -- a value: Citus runs no volatile function in an UPDATE
begin
    update pyflows_audit.events as e
       set details = e.details || jsonb_build_object('open_txid', v_xact)
     where e.client_id = c_client and e.id = p_event;
    perform pyflows._set_local('pyflows.audit_open', p_event::text || ':' || p_event::text);
end;
$$;

-- Open events for an API action in the current tenant context (see migration 0012).
create or replace function pyflows_audit._begin_events(p_action text, p_flow_ids uuid[], p_reason text,
                                                       p_impacts jsonb[], p_snapshots jsonb[],
                                                       p_forced boolean default false, p_details jsonb default '{}')
returns bigint[]
language plpgsql
security definer
set search_path = pg_catalog, pyflows_audit, pg_temp
as $$
declare
    v_ids  bigint[];
    v_xact text := pyflows_audit._xact()::text;
begin
    with opened as (
        insert into pyflows_audit.events
            (action, actor, client_id, engagement_id, flow_id, batch_id, reason, forced, impact, flow_snapshot,
             statement, details)
        select p_action, pyflows.current_actor(), pyflows.current_client_id(), pyflows.current_engagement_id(),
               f.flow_id, nullif(current_setting('pyflows.audit_batch', true), '')::uuid, p_reason, p_forced,
               f.impact, f.snapshot, current_query(),
               coalesce(p_details, '{}')
                 || case when p_action = 'flow.delete' then jsonb_build_object('open_txid', v_xact)
                         else '{}'::jsonb end
          from unnest(p_flow_ids, p_impacts, p_snapshots) with ordinality as f(flow_id, impact, snapshot, n)
         order by f.n
        returning id)
    select array_agg(opened.id order by opened.id) into v_ids from opened;
    if p_action = 'flow.delete' then
        perform pyflows._set_local('pyflows.audit_open', v_ids[1]::text || ':' || v_ids[cardinality(v_ids)]::text);
    end if;
    return v_ids;
end;
$$;

-- The sql.delete event of p_client for rows deleted outside the API: the one this statement already
-- opened for that client, if the rows fit its engagement (an event of one engagement takes only that
-- engagement's rows), or a new one, with the statement's text. The setting pyflows.audit_event
-- remembers, on this node, the events this statement opened ('<transaction>@<statement start>|<ids>');
-- the events themselves say whether they are this statement's, so a forged setting changes nothing.
drop function pyflows_audit._statement_event(text, bigint, bigint, uuid, uuid, bigint, uuid);
create function pyflows_audit._statement_event(p_table text, p_client uuid, p_tenants bigint, p_engagement uuid,
                                               p_flows bigint, p_flow uuid)
returns bigint
language plpgsql
security definer
set search_path = pg_catalog, pyflows_audit, pg_temp
set enable_seqscan = off
as $$
declare
    v_xact bigint := pyflows_audit._xact();
    v_mark text := v_xact::text || '@' || statement_timestamp()::text;
    v_seen text := coalesce(current_setting('pyflows.audit_event', true), '');
    v_ids  bigint[] := '{}';
    v_id   bigint;
begin
    if split_part(v_seen, '|', 1) = v_mark and split_part(v_seen, '|', 2) ~ '^[0-9]{1,18}(,[0-9]{1,18})*$' then
        v_ids := string_to_array(split_part(v_seen, '|', 2), ',')::bigint[];
        select e.id into v_id from pyflows_audit.events as e
         where e.client_id = p_client and e.id = any(v_ids)
           and e.txid = v_xact and e.action = 'sql.delete'
           and e.details ->> 'statement_at' = statement_timestamp()::text
           and (e.engagement_id is null or (p_tenants = 1 and e.engagement_id = p_engagement));
        if v_id is not null then
            return v_id;
        end if;
    end if;
    insert into pyflows_audit.events
        (action, actor, client_id, engagement_id, flow_id, batch_id, statement, details)
    values
        ('sql.delete', pyflows.current_actor(), p_client, case when p_tenants = 1 then p_engagement end,
         case when p_flows = 1 then p_flow end, nullif(current_setting('pyflows.audit_batch', true), '')::uuid,
         current_query(), jsonb_build_object('first_table', p_table, 'tenants', p_tenants,
                                             'statement_at', statement_timestamp()::text))
    returning id into v_id;
    perform set_config('pyflows.audit_event', v_mark || '|' || array_to_string(v_ids || v_id, ','), true);
    return v_id;
end;
$$;

-- The flow row rules (migration 0014): a flow becomes 'deleting' only under a purge event of this
-- transaction, as _xact() names it.
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
               and e.txid = pyflows_audit._xact()) then
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

-- ---- the delete triggers ----------------------------------------------------------------------------------------

-- The query of the chunks that archive rows under their events: (event id, row count, rows) per
-- chunk; p_rows is a query of (event id, the row as pyflows_audit.<p_table>_row, its id), p_events
-- 'one' when every row has the same event, 'many' otherwise. Chunks as migration 0009 made them.
create function pyflows_audit._chunk_query(p_table text, p_rows text, p_events text)
returns text
language sql
stable
set search_path = pg_catalog, pyflows_audit, pg_temp
as $$
    select format(
        'select s.ev, count(*), array_agg(s.r) from (%s) as s group by s.ev, s.big, s.n',
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

-- (Re)create pyflows_audit._on_delete_<p_table>() and the table's audit_delete trigger.
--
-- AFTER DELETE ... FOR EACH STATEMENT, for each client whose rows the statement deleted: write the
-- rows into the archive (chunks under their event, see _chunk_query), count them on the event unless
-- it is a flow.delete (counted when it closes), and for imports queue their stored files under the
-- same event. The event is the client's API event open in this transaction; when a batch has several
-- open, each row's flow decides (a dependency edge goes under the first of the batch's flows it
-- touches: its own, its source asset's, its target asset's; the parents' flows are read first, by
-- the client's key); with none open, the statement's sql.delete event of that client
-- (_statement_event). The transition table is read on its own, never joined with a table, and every
-- write is a one-row INSERT or an UPDATE by the client's key: what a trigger on a Citus shard may do.
create or replace function pyflows_audit._create_delete_trigger(p_table text)
returns void
language plpgsql
set search_path = pg_catalog, pyflows_audit, pg_temp
as $make$
declare
    v_function text := '_on_delete_' || p_table;
    v_row      text := format('row(o.*)::pyflows_audit.%I', p_table || '_row');
    v_key      text := case p_table when 'clients' then 'id' else 'client_id' end;
    v_tenant   text := case p_table when 'clients' then 't.id, null::uuid'
                                    when 'engagements' then 't.client_id, t.id'
                                    else 't.client_id, t.engagement_id' end;
    v_flow     text := case p_table when 'discovery_flows' then 't.id'
                                    when 'data_imports' then 't.flow_id'
                                    when 'assets' then 't.flow_id'
                                    when 'asset_dependencies' then 't.flow_id'
                                    else 'null::uuid' end;
    -- Where a row does not name its flow, its parents' flows, read per client before the rows.
    v_parents  text := case p_table
        when 'raw_import_records' then
            'select array_agg(i.id), array_agg(i.flow_id) into v_parent_ids, v_parent_flows
               from pyflows.data_imports as i
              where i.client_id = v_client and i.engagement_id = v_engagement and i.flow_id = any (v_flows);'
        when 'import_field_mappings' then
            'select array_agg(i.id), array_agg(i.flow_id) into v_parent_ids, v_parent_flows
               from pyflows.data_imports as i
              where i.client_id = v_client and i.engagement_id = v_engagement and i.flow_id = any (v_flows);'
        when 'asset_dependencies' then
            'select array_agg(a.id), array_agg(a.flow_id) into v_parent_ids, v_parent_flows
               from pyflows.assets as a
              where a.client_id = v_client and a.engagement_id = v_engagement and a.flow_id = any (v_flows);'
        else '' end;
    v_owner    text;
    v_holds    text := case when p_table = 'clients' then
        'if not pyflows_audit._holds_client(v_client) then
            continue;  -- a reference table on Citus: this node does not hold the client
        end if;'
        else '' end;
    v_queue    text := case when p_table = 'data_imports' then
        'for v_file in
            select o.engagement_id, o.storage_uri, o.flow_id, o.id, coalesce(m.event_id, v_event) as event_id
              from old_rows as o left join unnest(v_flows, v_events) as m(flow_id, event_id) on v_event is null
                                                                                             and m.flow_id = o.flow_id
             where o.client_id = v_client
        loop
            insert into pyflows.file_cleanup_queue (client_id, engagement_id, storage_uri, flow_id, import_id, event_id)
            values (v_client, v_file.engagement_id, v_file.storage_uri, v_file.flow_id, v_file.id, v_file.event_id);
        end loop;'
        else '' end;
begin
    if p_table is null or pg_catalog.to_regclass('pyflows_audit.' || quote_ident(p_table || '_chunks')) is null then
        raise exception 'no archive for table %', p_table using errcode = 'PF422';
    end if;
    v_owner := case p_table
        when 'discovery_flows' then
            'select m.event_id, %1$s, o.id from old_rows as o
               left join unnest(v_flows, v_events) as m(flow_id, event_id) on m.flow_id = o.id
              where o.client_id = v_client'
        when 'data_imports' then
            'select m.event_id, %1$s, o.id from old_rows as o
               left join unnest(v_flows, v_events) as m(flow_id, event_id) on m.flow_id = o.flow_id
              where o.client_id = v_client'
        when 'assets' then
            'select m.event_id, %1$s, o.id from old_rows as o
               left join unnest(v_flows, v_events) as m(flow_id, event_id) on m.flow_id = o.flow_id
              where o.client_id = v_client'
        when 'raw_import_records' then
            'select m.event_id, %1$s, o.id from old_rows as o
               left join unnest(v_parent_ids, v_parent_flows) as i(id, flow_id) on i.id = o.import_id
               left join unnest(v_flows, v_events) as m(flow_id, event_id) on m.flow_id = i.flow_id
              where o.client_id = v_client'
        when 'import_field_mappings' then
            'select m.event_id, %1$s, o.id from old_rows as o
               left join unnest(v_parent_ids, v_parent_flows) as i(id, flow_id) on i.id = o.import_id
               left join unnest(v_flows, v_events) as m(flow_id, event_id) on m.flow_id = i.flow_id
              where o.client_id = v_client'
        when 'asset_dependencies' then
            'select least(m.event_id, ms.event_id, mt.event_id), %1$s, o.id from old_rows as o
               left join unnest(v_parent_ids, v_parent_flows) as s(id, flow_id) on s.id = o.source_asset_id
               left join unnest(v_parent_ids, v_parent_flows) as t(id, flow_id) on t.id = o.target_asset_id
               left join unnest(v_flows, v_events) as m(flow_id, event_id) on m.flow_id = o.flow_id
               left join unnest(v_flows, v_events) as ms(flow_id, event_id) on ms.flow_id = s.flow_id
               left join unnest(v_flows, v_events) as mt(flow_id, event_id) on mt.flow_id = t.flow_id
              where o.client_id = v_client'
        else  -- clients and engagements are never part of a flow's batch
            'select null::bigint, %1$s, o.id from old_rows as o where o.' || v_key || ' = v_client'
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
    v_open         text := current_setting('pyflows.audit_open', true);
    v_xact         text;
    v_clients      uuid[];
    v_client       uuid;
    v_events       bigint[];
    v_flows        uuid[];
    v_event        bigint;
    v_counted      boolean;
    v_rows         bigint;
    v_tenants      bigint;
    v_engagement   uuid;
    v_flow_count   bigint;
    v_flow_id      uuid;
    v_parent_ids   %12$s[];
    v_parent_flows uuid[];
    v_chunk_event  bigint;
    v_chunk_count  bigint;
    v_chunk        pyflows_audit.%8$I[];
    v_file         record;
begin
    select array_agg(distinct t.c) into v_clients from (select %2$s from old_rows as t) as t(c, e);
    if v_clients is null then
        return null;
    end if;
    v_xact := pyflows_audit._xact()::text;
    foreach v_client in array v_clients loop
        %9$s
        -- The client's API events open for rows in this transaction: the setting says where to look,
        -- the events whether they are open (only the owner's code opens and closes them).
        v_events := null;
        v_event := null;
        if v_open ~ '^[0-9]{1,18}:[0-9]{1,18}$' then
            select array_agg(e.id), array_agg(e.flow_id), bool_and(e.action = 'flow.delete'),  -- in the same order
                   min(e.engagement_id::text)::uuid
              into v_events, v_flows, v_counted, v_engagement
              from pyflows_audit.events as e
             where e.client_id = v_client
               and e.id between split_part(v_open, ':', 1)::bigint and split_part(v_open, ':', 2)::bigint
               and e.details ->> 'open_txid' = v_xact;
        end if;
        if v_events is null then
            select count(distinct t.e), min(t.e::text)::uuid, count(distinct t.f), min(t.f::text)::uuid
              into v_tenants, v_engagement, v_flow_count, v_flow_id
              from (select %2$s, %3$s from old_rows as t) as t(c, e, f)
             where t.c = v_client;
            v_event := pyflows_audit._statement_event(%4$L, v_client, v_tenants, v_engagement, v_flow_count, v_flow_id);
            v_counted := false;
        elsif cardinality(v_events) = 1 then
            v_event := v_events[1];
        elsif not v_counted then
            raise exception 'several audit events are open and not all of them are flow deletes: %%', v_events
                using errcode = 'XX000';
        end if;
        v_rows := 0;
        if v_event is not null then
            for v_chunk_event, v_chunk_count, v_chunk in %5$s loop
                insert into pyflows_audit.%10$I (client_id, event_id, row_count, rows)
                values (v_client, v_chunk_event, v_chunk_count, v_chunk);
                v_rows := v_rows + v_chunk_count;
            end loop;
        else
            %7$s
            for v_chunk_event, v_chunk_count, v_chunk in %6$s loop
                insert into pyflows_audit.%10$I (client_id, event_id, row_count, rows)
                values (v_client, v_chunk_event, v_chunk_count, v_chunk);
                v_rows := v_rows + v_chunk_count;
            end loop;
        end if;
        if v_rows > 0 and not v_counted then
            update pyflows_audit.events as e
               set deleted = jsonb_set(e.deleted, array[%4$L],
                                       to_jsonb(coalesce((e.deleted ->> %4$L)::bigint, 0) + v_rows))
             where e.client_id = v_client and e.id = v_event;
        end if;
        %11$s
    end loop;
    return null;
end;
$body$
$function$, v_function, v_tenant, v_flow, p_table,
        pyflows_audit._chunk_query(
            p_table, format('select v_event, %s, o.id from old_rows as o where o.%I = v_client', v_row, v_key), 'one'),
        pyflows_audit._chunk_query(p_table, format(
            'select coalesce(x.ev, pyflows_audit._unowned_row(%L)), x.r, x.id from (%s) as x(ev, r, id)',
            p_table, format(v_owner, v_row)), 'many'),
        v_parents, p_table || '_row', v_holds, p_table || '_chunks', v_queue,
        -- the type of the parents' ids: assets' for the edges, imports' for records and mappings
        (select pg_catalog.format_type(a.atttypid, a.atttypmod) from pg_catalog.pg_attribute as a
          where a.attrelid = case p_table when 'asset_dependencies' then 'pyflows.assets'::regclass
                                          else 'pyflows.data_imports'::regclass end
            and a.attname = 'id'));
    execute format('revoke all on function pyflows_audit.%I() from public', v_function);
    execute format('create or replace trigger audit_delete after delete on pyflows.%I
                        referencing old table as old_rows for each statement execute function pyflows_audit.%I()',
                   p_table, v_function);
end;
$make$;

revoke all on function pyflows_audit._xact() from public;
-- The flow row rules, which run as the writer, read _xact() too; it tells nothing of any tenant.
grant execute on function pyflows_audit._xact() to pyflows_app, pyflows_admin;
revoke all on function pyflows_audit._holds_client(uuid),
    pyflows_audit._archived_counts(uuid, bigint[]),
    pyflows_audit._statement_event(text, uuid, bigint, uuid, bigint, uuid),
    pyflows_audit._chunk_query(text, text, text) from public;

do $$
begin
    perform pyflows_audit._create_delete_trigger(t)
       from unnest(array['clients', 'engagements', 'discovery_flows', 'data_imports', 'raw_import_records',
                         'import_field_mappings', 'assets', 'asset_dependencies']) as t;
end;
$$;

drop function pyflows_audit._chunk_statement(text, text, text);

-- Migration 0009's statement that archives the rows of p_source (a relation or a parenthesized query
-- with the columns of pyflows.<p_table>, all of one client) under the event $1 and returns how many
-- it archived: the archive's own write, as one statement, which bench/ measures beside the delete.
create or replace function pyflows_audit._archive_statement(p_table text, p_source text)
returns text
language sql
stable
set search_path = pg_catalog, pyflows_audit, pg_temp
as $$
    select format(
        'with chunk as (
             insert into pyflows_audit.%1$I (client_id, event_id, row_count, rows)
             select (q.rows[1]).%2$I, q.ev, q.n, q.rows from (%3$s) as q(ev, n, rows)
             returning row_count)
         select coalesce(sum(chunk.row_count), 0) from chunk',
        p_table || '_chunks', case p_table when 'clients' then 'id' else 'client_id' end,
        pyflows_audit._chunk_query(
            p_table,
            format('select $1::bigint, row(o.*)::pyflows_audit.%I, o.id from %s as o', p_table || '_row', p_source),
            'one'))
$$;

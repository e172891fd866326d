-- pyflows sql/070_restore_purge: putting a deleted flow back from the audit archive, purging very
-- large flows in committed batches, and pruning old audit events.

-- The columns of pyflows.<table>, in order, quoted: what restore copies back from the archive table
-- of the same name (whose columns are event_id followed by these); each prefixed with p_prefix
-- ('($1).' names the fields of a row passed as $1).
drop function if exists pyflows._column_list(text);
create or replace function pyflows._column_list(p_table text, p_prefix text default '')
returns text
language sql
stable
set search_path = pg_catalog, pyflows, pg_temp
as $$
    select string_agg(p_prefix || quote_ident(a.attname), ', ' order by a.attnum)
      from pg_catalog.pg_attribute as a
     where a.attrelid = pg_catalog.to_regclass('pyflows.' || quote_ident(p_table)) and a.attnum > 0
       and not a.attisdropped
$$;

-- Put back every row a deletion archived, with the same ids and values (column for column, JSON null
-- included), parents before children, in the caller's transaction. Only archived rows of the caller's
-- tenant are read. Dependency edges of other flows that the deletion took along are put back when
-- their flow and both assets exist again, and counted as skipped otherwise. Pending file removals of
-- the restored imports are cancelled; files already removed are reported as missing; while a drain
-- has claimed one of them (it may be removing it now) the restore is refused with PF423, so no
-- restored import points at a file that a drain removes. Two restores of one event: the second waits
-- for nothing (PF423 while the first runs) and is PF422 "already restored" once it has committed.
create or replace function pyflows.restore_flow(p_event_id bigint)
returns jsonb
language plpgsql
security definer
set search_path = pg_catalog, pyflows, pg_temp
as $$
declare
    c_client     constant uuid := pyflows.current_client_id();
    c_engagement constant uuid := pyflows.current_engagement_id();
    c_children   constant text[] := array['data_imports', 'raw_import_records', 'import_field_mappings', 'assets'];
    c_citus      constant boolean := exists (select from pg_catalog.pg_extension as x where x.extname = 'citus');
    v_event      pyflows_audit.events;
    v_flow       jsonb;
    v_row        pyflows_audit.discovery_flows_row;  -- the archived flow row, column for column
    v_override   jsonb := '{}'::jsonb;
    v_flow_id    uuid;
    v_status     text;
    v_table      text;
    v_sql        text;
    v_n          bigint;
    v_counts     jsonb := '{}'::jsonb;
    v_skipped    bigint;
    v_missing    jsonb;
    v_kept       bigint;
    v_restore    bigint;
    v_constraint text;
    v_message    text;
    v_wait       text;
begin
    perform pyflows._require_context(true);
    if p_event_id is null then
        raise exception 'event id must not be NULL' using errcode = 'PF422';
    end if;
    begin
        select * into v_event from pyflows_audit.events as e
         where e.id = p_event_id and e.client_id = c_client and e.engagement_id = c_engagement
           for update nowait;
    exception when lock_not_available then
        raise exception 'audit event % is in use by another transaction (a restore of it, or a purge batch)',
            p_event_id
            using errcode = 'PF423', detail = json_build_object('event_id', p_event_id)::text,
                  hint = 'Try again in a moment, once that transaction has finished.';
    end;
    if not found then
        -- Statements of their own: Citus plans no expression over the events of every client.
        perform from pyflows_audit.events as e where e.id = p_event_id;
        if not found and exists (select from pyflows_audit.global_events as p
                                  where p.action = 'audit.prune'
                                    and (p.details ->> 'pruned_through_event_id')::bigint >= p_event_id) then
            raise exception 'audit event % was pruned: its rows are gone', p_event_id
                using errcode = 'PF422', detail = json_build_object('event_id', p_event_id)::text;
        end if;
        raise exception 'audit event % not found', p_event_id
            using errcode = 'PF404', detail = json_build_object('event_id', p_event_id)::text;
    end if;
    select r.id into v_restore from pyflows_audit.events as r
     where r.action = 'flow.restore' and r.client_id = c_client and r.engagement_id = c_engagement
       and (r.details ->> 'restored_event_id')::bigint = p_event_id;
    if v_restore is not null then
        raise exception 'audit event % was already restored, by audit event %', p_event_id, v_restore
            using errcode = 'PF422',
                  detail = json_build_object('event_id', p_event_id, 'restored_by_event_id', v_restore)::text;
    end if;
    if v_event.action = 'flow.purge' and v_event.details ->> 'state' = 'running' then
        raise exception 'the purge of event % has not finished; run pyflows.purge_flow again to finish it',
            p_event_id using errcode = 'PF422';
    end if;
    -- The archive is read through the chunks of the client (on Citus: its shard), never the views.
    select count(*) into v_n
      from pyflows_audit.discovery_flows_chunks as c cross join lateral unnest(c.rows) as r
     where c.client_id = c_client and c.event_id = p_event_id and r.engagement_id = c_engagement;
    if v_n = 1 then
        select r.* into v_row
          from pyflows_audit.discovery_flows_chunks as c cross join lateral unnest(c.rows) as r
         where c.client_id = c_client and c.event_id = p_event_id and r.engagement_id = c_engagement;
        v_flow := to_jsonb(v_row);
    end if;
    if v_n <> 1 then
        raise exception 'audit event % did not delete one flow; there is no flow to restore', p_event_id
            using errcode = 'PF422', detail = json_build_object('event_id', p_event_id)::text;
    end if;
    v_flow_id := (v_flow ->> 'id')::uuid;
    -- The flow row as it was before the deletion is the archived row, except after a purge, which
    -- archived it once marked 'deleting': its status and updated_at then come from the event's snapshot.
    if v_event.action = 'flow.purge' and v_event.flow_snapshot is not null then
        v_override := jsonb_build_object('status', v_event.flow_snapshot -> 'status',
                                         'updated_at', v_event.flow_snapshot -> 'updated_at');
    end if;
    v_status := coalesce(v_override ->> 'status', v_flow ->> 'status');
    if exists (select from pyflows.discovery_flows as f
                where f.client_id = c_client and f.engagement_id = c_engagement and f.id = v_flow_id) then
        raise exception 'flow % exists: there is nothing to restore', v_flow_id
            using errcode = 'PF422', detail = json_build_object('flow_id', v_flow_id)::text;
    end if;

    -- Files first: nothing is written if a drain may be removing one of them right now.
    perform pyflows._claim_restored_files(p_event_id);

    v_wait := pyflows._bound_lock_waits();
    begin  -- rows other transactions hold (another flow's asset an edge points at): PF423 after the bound
        begin
            -- One row, as VALUES: on Citus an INSERT of one row is routed to its shard, and a
            -- unique violation there comes back as one (an INSERT ... SELECT would come back as
            -- an internal error of the COPY it becomes).
            execute format('insert into pyflows.discovery_flows (%s) values (%s)',
                           pyflows._column_list('discovery_flows'), pyflows._column_list('discovery_flows', '($1).'))
              using jsonb_populate_record(v_row, v_override);
        exception when unique_violation then
            get stacked diagnostics v_constraint = constraint_name, v_message = message_text;
            if pyflows._is_constraint(v_constraint, v_message, 'discovery_flows_one_incomplete') then
                perform pyflows._raise_incomplete_flow_exists(pyflows._blocking_flow(),
                    'The restored flow would be a second incomplete flow here: finish that flow '
                    '(or cancel it, or delete it), then restore this one.');
            end if;
            raise exception 'flow % exists: there is nothing to restore', v_flow_id
                using errcode = 'PF422', detail = json_build_object('flow_id', v_flow_id)::text;
        end;
        v_counts := jsonb_build_object('discovery_flows', 1);
        -- The children, then the edges, each in one INSERT ... SELECT from the archive. The edges of the
        -- restored flow between its restored assets (all but a few) need no lookup to come back, a
        -- hashed set of the archived asset ids answers; an edge of another flow, or to another flow's
        -- asset, comes back if that flow and asset exist (one index lookup each).
        -- Each counts what it inserted: on Citus through RETURNING (Citus inserts the archived rows
        -- from the coordinator, and an error on a worker, a lock wait past its bound, keeps its
        -- SQLSTATE only then; without RETURNING it comes back as an internal error, XX000); elsewhere
        -- by ROW_COUNT, which keeps no row of what it inserted.
        foreach v_table in array c_children || 'asset_dependencies'::text loop
            if v_table <> 'asset_dependencies' then
                v_sql := format('insert into pyflows.%1$I (%2$s)
                                 select %2$s from (select r.* from pyflows_audit.%3$I as c
                                                    cross join lateral unnest(c.rows) as r
                                                    where c.client_id = $2 and c.event_id = $1) as a
                                  where a.client_id = $2 and a.engagement_id = $3',
                                v_table, pyflows._column_list(v_table), v_table || '_chunks');
            else
                v_sql := format(
                    'with restored_assets as (
                         select r.id from pyflows_audit.assets_chunks as c cross join lateral unnest(c.rows) as r
                          where c.client_id = $2 and c.event_id = $1 and r.engagement_id = $3)
                     insert into pyflows.asset_dependencies (%1$s)
                     select %1$s from (select r.* from pyflows_audit.asset_dependencies_chunks as c
                                        cross join lateral unnest(c.rows) as r
                                       where c.client_id = $2 and c.event_id = $1) as d
                      where d.client_id = $2 and d.engagement_id = $3
                        and (d.flow_id = $4
                             or exists (select from pyflows.discovery_flows as f
                                         where f.client_id = $2 and f.engagement_id = $3 and f.id = d.flow_id))
                        and (d.source_asset_id in (select id from restored_assets)
                             or exists (select from pyflows.assets as a
                                         where a.client_id = $2 and a.engagement_id = $3 and a.id = d.source_asset_id))
                        and (d.target_asset_id in (select id from restored_assets)
                             or exists (select from pyflows.assets as a
                                         where a.client_id = $2 and a.engagement_id = $3 and a.id = d.target_asset_id))',
                    pyflows._column_list('asset_dependencies'));
            end if;
            if c_citus then
                execute format('with inserted as (%s returning 1) select count(*) from inserted', v_sql)
                  using p_event_id, c_client, c_engagement, v_flow_id
                  into v_n;
            else
                execute v_sql using p_event_id, c_client, c_engagement, v_flow_id;
                get diagnostics v_n = row_count;
            end if;
            v_counts := v_counts || jsonb_build_object(v_table, v_n);
        end loop;
    exception when lock_not_available or deadlock_detected then
        perform pyflows._refuse_busy(v_flow_id, 'restored', sqlerrm);
    end;
    perform pyflows._set_local('lock_timeout', v_wait);
    select count(*) - v_n into v_skipped
      from pyflows_audit.asset_dependencies_chunks as c cross join lateral unnest(c.rows) as d
     where c.client_id = c_client and c.event_id = p_event_id and d.engagement_id = c_engagement;

    select coalesce(jsonb_agg(q.storage_uri order by q.id), '[]') into v_missing
      from pyflows.file_cleanup_queue as q
     where q.client_id = c_client and q.engagement_id = c_engagement and q.event_id = p_event_id
       and q.done_at is not null;
    delete from pyflows.file_cleanup_queue as q
     where q.client_id = c_client and q.engagement_id = c_engagement and q.event_id = p_event_id
       and q.done_at is null;
    get diagnostics v_kept = row_count;

    v_restore := pyflows_audit._begin_event(
        'flow.restore', v_flow_id, format('restore of audit event %s', p_event_id), null,
        v_flow || v_override, false,
        jsonb_build_object('restored_event_id', p_event_id, 'restored', v_counts,
                           'skipped', jsonb_build_object('asset_dependencies', v_skipped),
                           'missing_files', v_missing, 'files_kept', v_kept));
    perform pyflows_audit._end_event();
    return jsonb_build_object('event_id', v_restore, 'restored_event_id', p_event_id, 'flow_id', v_flow_id,
                              'status', v_status, 'restored', v_counts,
                              'skipped', jsonb_build_object('asset_dependencies', v_skipped),
                              'missing_files', v_missing, 'files_kept', v_kept);
end;
$$;

-- Hold the queued file removals of a deleted flow's imports for its restore (restore_flow only): every entry not yet done
-- is locked (NOWAIT: a drain claiming it right now gives PF423), and PF423 if a drain has claimed one
-- (its attempts count): that drain may be removing the file, or have removed it before failing to
-- record it. Once the drain has finished, the restore reports such files as missing.
create or replace function pyflows._claim_restored_files(p_event_id bigint)
returns void
language plpgsql
set search_path = pg_catalog, pyflows, pg_temp
as $$
declare
    c_client     constant uuid := pyflows.current_client_id();
    c_engagement constant uuid := pyflows.current_engagement_id();
    v_claimed bigint;
begin
    begin
        select count(*) filter (where q.attempts > 0) into v_claimed
          from (select q.attempts from pyflows.file_cleanup_queue as q
                 where q.client_id = c_client and q.engagement_id = c_engagement
                   and q.event_id = p_event_id and q.done_at is null
                   for update nowait) as q;
    exception when lock_not_available then
        v_claimed := -1;
    end;
    if v_claimed <> 0 then
        raise exception 'a file drain is at work on the files of audit event %', p_event_id
            using errcode = 'PF423',
                  detail = json_build_object('event_id', p_event_id, 'claimed_files', greatest(v_claimed, 1))::text,
                  hint = 'Let pyflows files drain finish with them (or their lease run out and a drain settle them), '
                         'then restore: files it removed are reported as missing.';
    end if;
end;
$$;

-- ---- purge ---------------------------------------------------------------------------------------------

-- First step of a purge, one short transaction: lock the flow (NOWAIT), check safety, mark it
-- 'deleting' (from then on no listing shows it, the gate is open, and writers are refused) and open
-- the 'flow.purge' event. On a flow already 'deleting' it returns the running purge's event instead.
-- Only this function marks a flow 'deleting' (the flow row rules refuse it anywhere else).
create or replace function pyflows._purge_begin(p_flow_id uuid, p_reason text, p_force boolean, p_batch_rows integer)
returns bigint
language plpgsql
security definer
set search_path = pg_catalog, pyflows, pg_temp
as $$
declare
    c_client     constant uuid := pyflows.current_client_id();
    c_engagement constant uuid := pyflows.current_engagement_id();
    v_flow    jsonb;
    v_counts  jsonb;
    v_verdict jsonb;
    v_event   bigint;
begin
    -- Checked here, not in purge_flow: applications may call this function directly.
    perform pyflows._require_context(true);
    perform pyflows._check_text(p_reason, 'reason', 1000);
    if p_flow_id is null then
        raise exception 'flow id must not be NULL' using errcode = 'PF422';
    end if;
    if p_batch_rows is null or p_batch_rows < 1 or p_batch_rows > 1000000 then
        raise exception 'batch_rows must be between 1 and 1000000 (got %)', coalesce(p_batch_rows::text, 'NULL')
            using errcode = 'PF422';
    end if;
    v_flow := pyflows._lock_flow(p_flow_id, true);
    if v_flow ->> 'status' = 'deleting' then
        select e.id into v_event from pyflows_audit.events as e
         where e.client_id = c_client and e.engagement_id = c_engagement and e.flow_id = p_flow_id
           and e.action = 'flow.purge' and e.details ->> 'state' = 'running'
         order by e.id desc limit 1;
        if v_event is not null then
            return v_event;  -- resume
        end if;
    end if;
    -- A new purge, or one of a flow marked 'deleting' with no purge running (which the verdict blocks
    -- unless forced: its state before is unknown).
    v_counts := pyflows._deletion_counts(p_flow_id);
    v_verdict := pyflows._deletion_verdict(v_flow, v_counts, coalesce(p_force, false), false);
    perform pyflows._refuse_if_blocked(p_flow_id, v_verdict, 'purged');
    v_event := pyflows_audit._begin_event(
        'flow.purge', p_flow_id, p_reason, v_counts || jsonb_build_object('safety', v_verdict),
        v_flow, coalesce(p_force, false),
        jsonb_build_object('state', 'running', 'batch_rows', p_batch_rows, 'started_at', now()));
    update pyflows.discovery_flows as f set status = 'deleting'
     where f.client_id = c_client and f.engagement_id = c_engagement and f.id = p_flow_id
       and f.status <> 'deleting';
    perform pyflows_audit._end_event();
    return v_event;
end;
$$;

-- PF404 unless p_event is the running flow.purge event of p_flow_id in the caller's context, and the
-- flow is 'deleting' (locked, NOWAIT): what the purge steps (definers) check before they delete under
-- the event.
create or replace function pyflows._require_running_purge(p_flow_id uuid, p_event bigint)
returns void
language plpgsql
set search_path = pg_catalog, pyflows, pg_temp
as $$
declare
    c_client     constant uuid := pyflows.current_client_id();
    c_engagement constant uuid := pyflows.current_engagement_id();
begin
    perform pyflows._require_status(pyflows._lock_flow(p_flow_id, true), array['deleting'],
                                    'only a flow being purged has purge steps');
    if not exists (select from pyflows_audit.events as e
                    where e.client_id = c_client and e.id = p_event and e.engagement_id = c_engagement
                      and e.flow_id = p_flow_id and e.action = 'flow.purge' and e.details ->> 'state' = 'running') then
        raise exception 'audit event % is not the running purge of flow %', coalesce(p_event::text, 'NULL'),
            p_flow_id using errcode = 'PF404';
    end if;
end;
$$;

-- One batch of one step: delete at most p_limit rows of the step's table, archived under the purge
-- event, and return how many rows went. The steps go leaf first: 1 the flow's dependency edges, 2 raw
-- records, 3 field mappings, 4 assets, 5 imports. Edges of other flows that touch a batch's assets go
-- with them through the foreign key's cascade, archived like every deleted row, and are included in
-- the number returned (read from the event's counts). purge_flow moves to the next step when a batch
-- comes back short, so no step's search runs again once it is exhausted.
-- SECURITY DEFINER, so that it can open the purge event for its own deletes (and nothing else): it
-- runs only on a flow being purged, under that flow's running purge event, in the caller's context,
-- and deletes only that flow's rows. Waits for row locks at most pyflows.lock_timeout (PF423 after).
-- Each step collects the addresses (ctid) of its rows through the flow's (or the imports') index,
-- then deletes them by address: a TID scan, three times cheaper than descending the primary key once
-- per row. The planner prices every address as a random page read and, where the statistics call
-- the table small (right after a bulk load), would rather scan the tenant's rows and test each
-- against the whole list (quadratic). So for that one statement the other scans are disabled, which
-- leaves the TID scan as the only plan, and JIT with them: a disabled node prices a plan past
-- jit_above_cost, and the foreign-key cascades the delete plans (and PostgreSQL caches for the
-- session) would otherwise be compiled on every execution. The settings are put back right after.
-- A row updated in between is not deleted by this batch (its address changed); a later batch, or
-- the cascade of the flow row at the end, takes it, archived the same way.
drop function if exists pyflows._purge_batch(uuid, bigint, integer);
create or replace function pyflows._purge_batch(p_flow_id uuid, p_event bigint, p_limit integer, p_step integer)
returns bigint
language plpgsql
security definer
set search_path = pg_catalog, pyflows, pg_temp
as $$
declare
    c_client     constant uuid := pyflows.current_client_id();
    c_engagement constant uuid := pyflows.current_engagement_id();
    c_planner    constant text[] := array['enable_seqscan', 'enable_indexscan', 'enable_bitmapscan', 'jit'];
    c_saved      constant text[] := array[current_setting('enable_seqscan'), current_setting('enable_indexscan'),
                                          current_setting('enable_bitmapscan'), current_setting('jit')];
    v_imports  uuid[];
    v_rows     tid[];
    v_n        bigint;
    v_edges    bigint;
    v_wait     text;
begin
    perform pyflows._require_context(true);
    if p_step is null or p_step not between 1 and 5 then
        raise exception 'purge step must be between 1 and 5 (got %)', coalesce(p_step::text, 'NULL')
            using errcode = 'PF422';
    end if;
    if p_limit is null or p_limit < 1 or p_limit > 1000000 then
        raise exception 'batch_rows must be between 1 and 1000000 (got %)', coalesce(p_limit::text, 'NULL')
            using errcode = 'PF422';
    end if;
    perform pyflows._require_running_purge(p_flow_id, p_event);
    if p_step in (2, 3, 5) then
        v_imports := array(select i.id from pyflows.data_imports as i
                            where i.client_id = c_client and i.engagement_id = c_engagement and i.flow_id = p_flow_id
                            order by i.id limit case when p_step = 5 then p_limit end);
    end if;
    if p_step = 1 then
        v_rows := array(select e.ctid from pyflows.asset_dependencies as e
                         where e.client_id = c_client and e.engagement_id = c_engagement and e.flow_id = p_flow_id
                         limit p_limit);
    elsif p_step = 2 then
        v_rows := array(select e.ctid from pyflows.raw_import_records as e
                         where e.client_id = c_client and e.engagement_id = c_engagement
                           and e.import_id = any (v_imports)
                         limit p_limit);
    elsif p_step = 3 then
        v_rows := array(select e.ctid from pyflows.import_field_mappings as e
                         where e.client_id = c_client and e.engagement_id = c_engagement
                           and e.import_id = any (v_imports)
                         limit p_limit);
    elsif p_step = 4 then
        v_rows := array(select e.ctid from pyflows.assets as e
                         where e.client_id = c_client and e.engagement_id = c_engagement and e.flow_id = p_flow_id
                         limit p_limit);
        select coalesce((e.deleted ->> 'asset_dependencies')::bigint, 0) into v_edges
          from pyflows_audit.events as e where e.client_id = c_client and e.id = p_event;
    end if;
    perform pyflows_audit._open_event(p_event);
    perform set_config(c_planner[i], 'off', true) from generate_series(1, 4) as i;
    v_wait := pyflows._bound_lock_waits();
    begin
        case p_step
        when 1 then
            delete from pyflows.asset_dependencies as d
             where d.ctid = any (v_rows)
               and d.client_id = c_client and d.engagement_id = c_engagement and d.flow_id = p_flow_id;
        when 2 then
            delete from pyflows.raw_import_records as r
             where r.ctid = any (v_rows)
               and r.client_id = c_client and r.engagement_id = c_engagement and r.import_id = any (v_imports);
        when 3 then
            delete from pyflows.import_field_mappings as m
             where m.ctid = any (v_rows)
               and m.client_id = c_client and m.engagement_id = c_engagement and m.import_id = any (v_imports);
        when 4 then
            delete from pyflows.assets as a
             where a.ctid = any (v_rows)
               and a.client_id = c_client and a.engagement_id = c_engagement and a.flow_id = p_flow_id;
        else
            delete from pyflows.data_imports as i
             where i.client_id = c_client and i.engagement_id = c_engagement and i.id = any (v_imports);
        end case;
        get diagnostics v_n = row_count;
    exception when lock_not_available or deadlock_detected then
        perform pyflows._refuse_busy(p_flow_id, 'purged', sqlerrm);
    end;
    perform set_config(c_planner[i], c_saved[i], true) from generate_series(1, 4) as i;
    perform pyflows._set_local('lock_timeout', v_wait);
    perform pyflows_audit._end_event();
    if p_step = 4 then  -- with the edges of other flows that went along through the cascade
        select v_n + coalesce((e.deleted ->> 'asset_dependencies')::bigint, 0) - v_edges into v_n
          from pyflows_audit.events as e where e.client_id = c_client and e.id = p_event;
    end if;
    return v_n;
end;
$$;

-- Last step: remove the flow row and complete the purge event with its final state. Only for the
-- running purge event of this flow in the caller's context, on a flow that is 'deleting' (applications
-- may call this function directly: anything else is refused and changes nothing). Waits for row locks
-- at most pyflows.lock_timeout (PF423 after).
create or replace function pyflows._purge_finish(p_flow_id uuid, p_event bigint, p_batches integer)
returns jsonb
language plpgsql
security definer
set search_path = pg_catalog, pyflows, pg_temp
as $$
declare
    c_client  constant uuid := pyflows.current_client_id();
    v_deleted jsonb;
begin
    perform pyflows._require_context(true);
    if p_batches is null or p_batches < 0 then
        raise exception 'batches must be 0 or more (got %)', coalesce(p_batches::text, 'NULL') using errcode = 'PF422';
    end if;
    perform pyflows._require_running_purge(p_flow_id, p_event);
    perform pyflows_audit._open_event(p_event);
    perform pyflows._delete_flow_row(p_flow_id, 'purged', true);
    update pyflows_audit.events as e
       set details = (e.details - 'open_txid')
                     || jsonb_build_object('state', 'done', 'finished_at', now(),
                                           'batches', coalesce((e.details ->> 'batches')::int, 0) + p_batches)
     where e.client_id = c_client and e.id = p_event
    returning e.deleted into v_deleted;
    perform pyflows_audit._end_event();
    return v_deleted;
end;
$$;

-- Purge a very large flow without holding locks for long: one short transaction marks it 'deleting'
-- and opens the event, then committed batches of at most p_batch_rows rows delete it leaf first,
-- then the flow row goes and the event is completed with the final counts. Call it with autocommit
-- (CALL cannot commit inside the caller's transaction) after pyflows.set_session_context. Called
-- again on a 'deleting' flow (after a crash or a killed connection) it continues where it stopped.
-- No SET clause and no SECURITY DEFINER: a procedure with either cannot COMMIT.
create or replace procedure pyflows.purge_flow(p_flow_id uuid, p_reason text, p_batch_rows integer default 10000,
                                               p_force boolean default false)
language plpgsql
as $$
declare
    c_client     constant uuid := pyflows.current_client_id();
    c_engagement constant uuid := pyflows.current_engagement_id();
    c_actor      constant text := pyflows.current_actor();
    v_event   bigint;
    v_n       bigint;
    v_total   bigint := 0;
    v_batches integer := 0;
    v_step    integer := 1;
    v_deleted jsonb;
begin
    v_event := pyflows._purge_begin(p_flow_id, p_reason, p_force, p_batch_rows);
    commit;
    while v_step <= 5 loop
        -- COMMIT ended the transaction and its local settings: bind the tenant context again.
        perform pyflows._set_local('pyflows.client_id', c_client::text);
        perform pyflows._set_local('pyflows.engagement_id', c_engagement::text);
        perform pyflows._set_local('pyflows.actor', c_actor);
        v_n := pyflows._purge_batch(p_flow_id, v_event, p_batch_rows, v_step);
        if v_n < p_batch_rows then
            v_step := v_step + 1;  -- this step is exhausted (its rows are gone once this batch commits)
        end if;
        if v_n > 0 then
            v_total := v_total + v_n;
            v_batches := v_batches + 1;
            raise notice 'pyflows purge of flow %: batch % removed % rows (% so far)', p_flow_id, v_batches, v_n,
                v_total
                using detail = json_build_object('flow_id', p_flow_id, 'batch', v_batches, 'rows', v_n,
                                                 'so_far', v_total)::text;
            commit;
        end if;
    end loop;
    v_deleted := pyflows._purge_finish(p_flow_id, v_event, v_batches);
    raise notice 'pyflows purge of flow %: done, audit event %, deleted %', p_flow_id, v_event, v_deleted;
    commit;
end;
$$;

-- ---- audit retention ------------------------------------------------------------------------------------

-- Remove audit events older than p_older_than, with their archived rows (members of pyflows_admin).
-- Kept: audit.prune events themselves, and purge events still running. Leaves one 'audit.prune' event
-- (in pyflows_audit.global_events: it is of no tenant) with the counts. Returns the number of events
-- removed.
drop function if exists pyflows.prune_audit(interval);
create or replace function pyflows.prune_audit(p_older_than interval, p_actor text default null)
returns bigint
language plpgsql
security definer
set search_path = pg_catalog, pyflows, pg_temp
as $$
declare
    c_archive constant text[] := array['clients', 'engagements', 'discovery_flows', 'data_imports',
                                       'raw_import_records', 'import_field_mappings', 'assets', 'asset_dependencies'];
    v_cutoff  timestamptz;
    v_ids     bigint[];
    v_global  bigint[];
    v_all     bigint[];
    v_min     bigint;
    v_max     bigint;
    v_table   text;
    v_n       bigint;
    v_archive jsonb := '{}'::jsonb;
    v_events  bigint;
    v_prune   bigint;
begin
    perform pyflows._require_admin();
    perform pyflows._check_interval(p_older_than, 'older_than', interval '0', interval '100 years');
    if p_actor is not null and (btrim(p_actor) = '' or char_length(p_actor) > 200) then
        raise exception 'actor must be a non-empty name of at most 200 characters' using errcode = 'PF422';
    end if;
    -- On Citus: one connection per worker, so that every shard's append-only guard sees the prune
    -- event this transaction writes below.
    if pg_catalog.current_setting('citus.multi_shard_modify_mode', true) is not null then
        perform pg_catalog.set_config('citus.multi_shard_modify_mode', 'sequential', true);
    end if;
    v_cutoff := now() - p_older_than;
    select coalesce(array_agg(e.id), '{}') into v_ids
      from pyflows_audit.events as e
     where e.occurred_at < v_cutoff
       and not (e.action = 'flow.purge' and e.details ->> 'state' = 'running');
    select coalesce(array_agg(g.id), '{}') into v_global
      from pyflows_audit.global_events as g
     where g.occurred_at < v_cutoff and g.action <> 'audit.prune';
    v_all := v_ids || v_global;
    select min(i), max(i) into v_min, v_max from unnest(v_all) as i;
    -- This transaction's audit.prune event is what lets the append-only triggers allow its deletes.
    insert into pyflows_audit.global_events (action, actor, reason, details)
    values ('audit.prune', coalesce(p_actor, pyflows.current_actor(), session_user::text),
            format('events older than %s', p_older_than),
            jsonb_build_object('older_than', p_older_than::text, 'cutoff', v_cutoff, 'pruned_through_event_id', v_max))
    returning id into v_prune;
    foreach v_table in array c_archive loop
        execute format('with chunk as (delete from pyflows_audit.%I where event_id between $2 and $3
                                          and event_id = any ($1) returning row_count)
                        select coalesce(sum(chunk.row_count), 0) from chunk', v_table || '_chunks')
          into v_n
          using v_all, v_min, v_max;
        v_archive := v_archive || jsonb_build_object(v_table, v_n);
    end loop;
    delete from pyflows_audit.events as e where e.id = any (v_ids);
    get diagnostics v_events = row_count;
    delete from pyflows_audit.global_events as g where g.id = any (v_global);
    get diagnostics v_n = row_count;
    v_events := v_events + v_n;
    update pyflows_audit.global_events as g
       set details = g.details || jsonb_build_object('events', v_events, 'archive', v_archive)
     where g.id = v_prune;
    return v_events;
end;
$$;

revoke all on function pyflows._column_list(text, text), pyflows.restore_flow(bigint), pyflows._claim_restored_files(bigint),
    pyflows._purge_begin(uuid, text, boolean, integer), pyflows._require_running_purge(uuid, bigint),
    pyflows._purge_batch(uuid, bigint, integer, integer),
    pyflows._purge_finish(uuid, bigint, integer), pyflows.prune_audit(interval, text) from public;
revoke all on procedure pyflows.purge_flow(uuid, text, integer, boolean) from public;
grant execute on function pyflows._column_list(text, text), pyflows.restore_flow(bigint),
    pyflows._purge_begin(uuid, text, boolean, integer), pyflows._purge_batch(uuid, bigint, integer, integer),
    pyflows._purge_finish(uuid, bigint, integer), pyflows.prune_audit(interval, text) to pyflows_app;
grant execute on procedure pyflows.purge_flow(uuid, text, integer, boolean) to pyflows_app;

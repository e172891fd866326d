-- pyflows sql/050_delete: what a deletion would remove, whether it is safe, the audited delete of one
-- flow or a batch, and reading the audit trail.
--
-- The delete functions are SECURITY DEFINER because they write the audit, which applications may
-- not; every row they touch is filtered by the caller's tenant context explicitly, so they act only
-- where the caller could. The counting and archiving is done by the statement-level triggers of
-- migration 0004, which see every row the foreign-key cascade removes.

-- What deleting the flow removes, counted without loading a row: per table (including dependency
-- edges of other flows that touch this flow's assets, which the cascade removes too), those
-- external edges alone, and the stored files that will be enqueued for removal.
-- Generic plans, kept, for the queries written here: each reads one table by the tenant's key (which
-- Citus routes to one shard even so). The external edges of a flow of many assets are read by
-- _edges_touching (below), from whichever side is smaller.
create or replace function pyflows._deletion_counts(p_flow_id uuid)
returns jsonb
language plpgsql
stable
set search_path = pg_catalog, pyflows, pg_temp
set plan_cache_mode = force_generic_plan
set enable_seqscan = off
set jit = off
as $$
declare
    c_client     constant uuid := pyflows.current_client_id();
    c_engagement constant uuid := pyflows.current_engagement_id();
    -- Up to this many assets, the external edges are looked up by the flow's asset ids.
    c_by_ids     constant bigint := 100;
    v_counts     jsonb := pyflows._flow_counts(c_client, c_engagement, p_flow_id);
    v_assets_n   constant bigint := (v_counts ->> 'assets')::bigint;
    v_assets     bigint[];
    v_external   bigint;
    v_files      bigint;
    v_sample     jsonb;
begin
    -- Edges of other flows that touch this flow's assets.
    v_external := 0;
    if v_assets_n between 1 and c_by_ids then
        -- A small flow: by its asset ids, one table a query (no join, no union: a small flow's delete
        -- paid more to plan that query than to run it). "<" or ">" rather than "<>": should a plan read
        -- the flow index, it reads only the other flows' edges.
        select array_agg(a.id) into v_assets from pyflows.assets as a
         where a.client_id = c_client and a.engagement_id = c_engagement and a.flow_id = p_flow_id;
        select count(*) into v_external from pyflows.asset_dependencies as d
         where d.client_id = c_client and d.engagement_id = c_engagement
           and (d.source_asset_id = any (v_assets) or d.target_asset_id = any (v_assets))
           and (d.flow_id < p_flow_id or d.flow_id > p_flow_id);
    elsif v_assets_n > c_by_ids then
        -- A large flow: from the other flows' edges or from its assets, whichever side is smaller.
        select count(distinct t.id) into v_external
          from pyflows._edges_touching(array[p_flow_id], v_assets_n) as t;
    end if;
    v_files := (v_counts ->> 'data_imports')::bigint;  -- one stored file an import
    v_sample := '[]';
    if v_files > 0 then  -- one table, no subquery: Citus routes it by the client even in a generic plan
        select coalesce(to_jsonb((array_agg(i.storage_uri order by i.created_at, i.id))[1:10]), '[]')
          into v_sample
          from pyflows.data_imports as i
         where i.client_id = c_client and i.engagement_id = c_engagement and i.flow_id = p_flow_id;
    end if;
    v_counts := jsonb_build_object('discovery_flows', 1)
             || v_counts
             || jsonb_build_object('asset_dependencies', (v_counts ->> 'asset_dependencies')::bigint + v_external);
    return jsonb_build_object(
        'counts', v_counts,
        'total_rows', 1 + v_files + (v_counts ->> 'raw_import_records')::bigint
                      + (v_counts ->> 'import_field_mappings')::bigint + (v_counts ->> 'assets')::bigint
                      + (v_counts ->> 'asset_dependencies')::bigint,
        'external_dependencies', v_external,
        'files', jsonb_build_object('count', v_files, 'sample', v_sample));
end;
$$;

-- The dependency edges of the context that touch a flow of p_flow_ids other than their own, each with
-- its own flow (own) and each such flow it touches (via): the flows of its source and target assets,
-- when they are listed and not its own. The edges a delete removes beyond the flows' own (counted by
-- flow): the external edges of _deletion_counts, and what a batch delete counts and deletes by id.
-- p_assets: how many assets the flows have, when the caller has counted them (NULL: counted here).
-- Read through indexes only, and the edges that touch the flows' assets from whichever side is smaller,
-- chosen from counts, never from the planner's estimates: with another tenant's larger flow in the
-- statistics, a 25,000-asset flow was estimated at under 1,000 assets and its assets probed the
-- edges' source and target indexes once each (106 of 120 ms), where no other flow had an edge.
-- PL/pgSQL: Citus plans no SQL function that reads its tables with parameters.
drop function if exists pyflows._edges_touching(uuid[]);
create or replace function pyflows._edges_touching(p_flow_ids uuid[], p_assets bigint)
returns table (id bigint, own uuid, via uuid)
language plpgsql
stable
set search_path = pg_catalog, pyflows, pg_temp
set enable_seqscan = off
set jit = off
as $$
declare
    c_client     constant uuid := pyflows.current_client_id();
    c_engagement constant uuid := pyflows.current_engagement_id();
    v_assets     bigint;
    v_others     uuid[];
    v_edges      bigint;
begin
    if p_assets < 0 then
        raise exception 'p_assets must not be negative (got %)', p_assets using errcode = 'PF422';
    end if;
    v_assets := p_assets;
    if v_assets is null then
        select count(*) into v_assets from pyflows.assets as a
         where a.client_id = c_client and a.engagement_id = c_engagement and a.flow_id = any(p_flow_ids);
    end if;
    if v_assets = 0 then
        return;
    end if;
    -- The edges that may touch another listed flow's assets: the edges of the engagement's other flows
    -- (usually none), and of the listed flows when there are several; counted up to as many as the
    -- listed flows have assets, by the flow index.
    select coalesce(array_agg(f.id), '{}') into v_others from pyflows.discovery_flows as f
     where f.client_id = c_client and f.engagement_id = c_engagement and not (f.id = any(p_flow_ids));
    if cardinality(p_flow_ids) > 1 then
        v_others := v_others || p_flow_ids;
    end if;
    if cardinality(v_others) = 0 then
        return;
    end if;
    -- Queries planned for the values at hand (EXECUTE): Citus routes a join or a subquery of its tables
    -- to one shard only when it sees the client's value, never in a kept generic plan.
    execute 'select count(*) from (select 1 from pyflows.asset_dependencies as d
                                    where d.client_id = $1 and d.engagement_id = $2
                                      and d.flow_id = any ($3) limit $4) as e'
       into v_edges using c_client, c_engagement, v_others, v_assets;
    if v_edges = 0 then
        return;
    elsif v_edges < v_assets then
        -- From those edges, the two ends of each looked up by the assets' key (scalar subqueries: a probe
        -- an end whatever the planner estimates). Each way costs about the same per row read.
        return query execute
            'select e.id, e.own, v.via
               from (select d.id, d.flow_id,
                            (select a.flow_id from pyflows.assets as a
                              where a.client_id = $1 and a.engagement_id = $2 and a.id = d.source_asset_id),
                            (select a.flow_id from pyflows.assets as a
                              where a.client_id = $1 and a.engagement_id = $2 and a.id = d.target_asset_id)
                       from pyflows.asset_dependencies as d
                      where d.client_id = $1 and d.engagement_id = $2 and d.flow_id = any($3)) as e(id, own, s, t)
              cross join lateral (values (e.s), (e.t)) as v(via)
              where v.via = any($4) and v.via <> e.own'
          using c_client, c_engagement, v_others, p_flow_ids;
    else
        -- From the listed flows' assets, through the edges' source and target indexes.
        return query execute
            'select d.id, d.flow_id, a.flow_id from pyflows.assets as a
               join pyflows.asset_dependencies as d
                 on d.client_id = a.client_id and d.engagement_id = a.engagement_id and d.source_asset_id = a.id
              where a.client_id = $1 and a.engagement_id = $2 and a.flow_id = any($3) and d.flow_id <> a.flow_id
             union all
             select d.id, d.flow_id, a.flow_id from pyflows.assets as a
               join pyflows.asset_dependencies as d
                 on d.client_id = a.client_id and d.engagement_id = a.engagement_id and d.target_asset_id = a.id
              where a.client_id = $1 and a.engagement_id = $2 and a.flow_id = any($3) and d.flow_id <> a.flow_id'
          using c_client, c_engagement, p_flow_ids;
    end if;
end;
$$;

-- _deletion_counts for each flow of a batch that deletes p_ids in that order, as a jsonb object keyed by
-- flow id: what each flow's delete removes when the flows before it are gone. A dependency edge counts
-- for the first of the batch's flows it touches (its own flow, its source asset's, its target asset's),
-- under which event delete_flows archives it; an edge it counts that another flow owns is one of its
-- external_dependencies. For one flow, the same as _deletion_counts.
create or replace function pyflows._batch_deletion_counts(p_ids uuid[])
returns jsonb
language plpgsql
stable
set search_path = pg_catalog, pyflows, pg_temp
set enable_seqscan = off
set jit = off
as $$
declare
    c_client     constant uuid := pyflows.current_client_id();
    c_engagement constant uuid := pyflows.current_engagement_id();
    v_counts     jsonb;
    v_edge_ids   bigint[];
    v_edge_owns  uuid[];
    v_edge_vias  uuid[];
begin
    -- The edges that touch a listed flow other than their own (usually few), on their own: on Citus
    -- the query below runs on the client's worker, which may not call a function that queries the
    -- cluster. The listed flows' own edges are counted by flow, not read one by one.
    select coalesce(array_agg(t.id), '{}'), coalesce(array_agg(t.own), '{}'), coalesce(array_agg(t.via), '{}')
      into v_edge_ids, v_edge_owns, v_edge_vias
      from pyflows._edges_touching(p_ids, null) as t;
    with batch as (
        select b.id, b.pos from unnest(p_ids) with ordinality as b(id, pos)),
    imports as (
        select i.flow_id, i.id, i.storage_uri, i.created_at from pyflows.data_imports as i
         where i.client_id = c_client and i.engagement_id = c_engagement and i.flow_id = any(p_ids)),
    per_import as (
        select i.flow_id, i.id, i.storage_uri, i.created_at,
               (select count(*) from pyflows.raw_import_records as r
                 where r.client_id = c_client and r.engagement_id = c_engagement and r.import_id = i.id) as records,
               (select count(*) from pyflows.import_field_mappings as m
                 where m.client_id = c_client and m.engagement_id = c_engagement and m.import_id = i.id) as mappings
          from imports as i),
    crossing as (  -- each of those edges: the first flow of the batch it touches, and its own flow's place
        select t.id, least(min(b.pos), min(o.pos)) as pos, min(o.pos) as own_pos
          from unnest(v_edge_ids, v_edge_owns, v_edge_vias) as t(id, own, via)
          join batch as b on b.id = t.via
          left join batch as o on o.id = t.own
         group by t.id),
    moved as (  -- those counted for a flow other than their own (from_pos: their own flow's, when listed)
        select c.pos as to_pos, c.own_pos as from_pos from crossing as c where c.own_pos is distinct from c.pos),
    counted as (
        select b.id, coalesce(ni.n, 0) as imports, coalesce(ni.records, 0) as records,
               coalesce(ni.mappings, 0) as mappings, coalesce(na.n, 0) as assets,
               coalesce(ne.n, 0) - coalesce(mo.n, 0) + coalesce(mi.n, 0) as edges,
               coalesce(mi.n, 0) as external, coalesce(to_jsonb(ni.sample), '[]') as sample
          from batch as b
          left join (select p.flow_id, count(*) as n, sum(p.records) as records, sum(p.mappings) as mappings,
                            (array_agg(p.storage_uri order by p.created_at, p.id))[1:10] as sample
                       from per_import as p group by p.flow_id) as ni on ni.flow_id = b.id
          left join (select a.flow_id, count(*) as n from pyflows.assets as a
                      where a.client_id = c_client and a.engagement_id = c_engagement and a.flow_id = any(p_ids)
                      group by a.flow_id) as na on na.flow_id = b.id
          left join (select d.flow_id, count(*) as n from pyflows.asset_dependencies as d
                      where d.client_id = c_client and d.engagement_id = c_engagement and d.flow_id = any(p_ids)
                      group by d.flow_id) as ne on ne.flow_id = b.id
          left join (select m.from_pos, count(*) as n from moved as m group by m.from_pos) as mo on mo.from_pos = b.pos
          left join (select m.to_pos, count(*) as n from moved as m group by m.to_pos) as mi on mi.to_pos = b.pos)
    select jsonb_object_agg(c.id, jsonb_build_object(
               'counts', jsonb_build_object('discovery_flows', 1, 'data_imports', c.imports,
                                            'raw_import_records', c.records, 'import_field_mappings', c.mappings,
                                            'assets', c.assets, 'asset_dependencies', c.edges),
               'total_rows', 1 + c.imports + c.records + c.mappings + c.assets + c.edges,
               'external_dependencies', c.external,
               'files', jsonb_build_object('count', c.imports, 'sample', c.sample)))
      into v_counts
      from counted as c;
    return coalesce(v_counts, '{}');
end;
$$;

-- Above how many rows deletion_safety suggests purge_flow: setting pyflows.purge_threshold, default 100000.
-- PL/pgSQL, as every helper a delete calls: PL/pgSQL keeps its plans for the session, where a SQL
-- function that sets search_path is parsed and planned again in every transaction.
create or replace function pyflows._purge_threshold()
returns bigint
language plpgsql
stable
set search_path = pg_catalog, pyflows, pg_temp
as $$
begin
    return coalesce(nullif(pg_catalog.current_setting('pyflows.purge_threshold', true), '')::bigint, 100000);
end;
$$;

-- Blockers and warnings for deleting a flow (from to_jsonb(row)) with the given counts.
-- Blockers: 'locked' (another transaction holds the flow; never overridden), 'active' (running with a
-- heartbeat inside pyflows.active_lease), 'terminal' (completed or cancelled) and 'deleting' (marked
-- deleting with no purge running, so its state before is unknown), which p_force turns into warnings. Warnings: 'high_progress' (above 80 %), 'many_records' (more than 10,000 raw records),
-- 'use_purge' (more rows than pyflows.purge_threshold), 'external_dependencies' (edges owned by other
-- flows that touch this flow's assets).
create or replace function pyflows._deletion_verdict(p_flow jsonb, p_counts jsonb, p_force boolean,
                                                     p_locked boolean)
returns jsonb
language plpgsql
stable
set search_path = pg_catalog, pyflows, pg_temp
as $$
declare
    v_blockers jsonb := '[]'::jsonb;
    v_warnings jsonb := '[]'::jsonb;
    v_status   text := p_flow ->> 'status';
    v_beat     timestamptz := (p_flow ->> 'heartbeat_at')::timestamptz;
    v_records  bigint := coalesce((p_counts #>> '{counts,raw_import_records}')::bigint, 0);
    v_external bigint := coalesce((p_counts ->> 'external_dependencies')::bigint, 0);
    v_item     jsonb;
begin
    if p_locked then
        v_blockers := v_blockers || jsonb_build_object(
            'code', 'locked', 'overridable', false,
            'message', 'another transaction holds this flow; try again when it has finished');
    end if;
    if v_status = 'running' and v_beat > now() - pyflows._active_lease() then
        v_item := jsonb_build_object(
            'code', 'active', 'overridable', true,
            'message', format('the flow is running and its worker sent a heartbeat %s ago (lease %s)',
                              date_trunc('second', now() - v_beat), pyflows._active_lease()));
        if p_force then
            v_warnings := v_warnings || (v_item || jsonb_build_object('code', 'forced_active'));
        else
            v_blockers := v_blockers || v_item;
        end if;
    end if;
    if v_status = 'deleting' then  -- only _purge_begin gets here, for a flow with no running purge
        v_item := jsonb_build_object(
            'code', 'deleting', 'overridable', true,
            'message', 'the flow is marked deleting but no purge of it is running; what it was before is unknown');
        if p_force then
            v_warnings := v_warnings || (v_item || jsonb_build_object('code', 'forced_deleting'));
        else
            v_blockers := v_blockers || v_item;
        end if;
    end if;
    if v_status = any (pyflows._terminal_statuses()) then
        v_item := jsonb_build_object(
            'code', 'terminal', 'overridable', true,
            'message', format('the flow is %s; its data is the record of a finished import', v_status));
        if p_force then
            v_warnings := v_warnings || (v_item || jsonb_build_object('code', 'forced_terminal'));
        else
            v_blockers := v_blockers || v_item;
        end if;
    end if;
    if (p_flow ->> 'progress_percentage')::numeric > 80 then
        v_warnings := v_warnings || jsonb_build_object(
            'code', 'high_progress', 'overridable', true,
            'message', format('the flow is %s%% complete', p_flow ->> 'progress_percentage'));
    end if;
    if v_records > 10000 then
        v_warnings := v_warnings || jsonb_build_object(
            'code', 'many_records', 'overridable', true,
            'message', format('the flow holds %s raw records', v_records));
    end if;
    if (p_counts ->> 'total_rows')::bigint > pyflows._purge_threshold() then
        v_warnings := v_warnings || jsonb_build_object(
            'code', 'use_purge', 'overridable', true,
            'message', format('%s rows: pyflows.purge_flow deletes them in short batches instead of one long '
                              'transaction', p_counts ->> 'total_rows'));
    end if;
    if v_external > 0 then
        v_warnings := v_warnings || jsonb_build_object(
            'code', 'external_dependencies', 'overridable', true,
            'message', format('%s dependency edge(s) of other flows touch this flow''s assets and will be deleted',
                              v_external));
    end if;
    return jsonb_build_object('safe', jsonb_array_length(v_blockers) = 0, 'forced', p_force,
                              'blockers', v_blockers, 'warnings', v_warnings);
end;
$$;

-- The context's flow for a deletion check, and whether another transaction holds its row. Takes the
-- row lock when it is free (held to the end of the caller's transaction), never waits for it.
create or replace function pyflows._flow_for_deletion(p_flow_id uuid, out o_flow jsonb, out o_locked boolean)
language plpgsql
set search_path = pg_catalog, pyflows, pg_temp
as $$
begin
    begin
        o_flow := pyflows._lock_flow(p_flow_id);
        o_locked := false;
    exception when sqlstate 'PF423' then
        select to_jsonb(f) into o_flow from pyflows.discovery_flows as f
         where f.client_id = pyflows.current_client_id() and f.engagement_id = pyflows.current_engagement_id()
           and f.id = p_flow_id and f.status <> 'deleting';
        if o_flow is null then
            raise exception 'flow % not found', p_flow_id
                using errcode = 'PF404', detail = json_build_object('flow_id', p_flow_id)::text;
        end if;
        o_locked := true;
    end;
end;
$$;

create or replace function pyflows.deletion_safety(p_flow_id uuid, p_force boolean default false)
returns jsonb
language plpgsql
set search_path = pg_catalog, pyflows, pg_temp
as $$
declare
    v_target record;
begin
    perform pyflows._require_context();
    v_target := pyflows._flow_for_deletion(p_flow_id);
    return pyflows._deletion_verdict(v_target.o_flow, pyflows._deletion_counts(p_flow_id),
                                     coalesce(p_force, false), v_target.o_locked);
end;
$$;

create or replace function pyflows.deletion_impact(p_flow_id uuid)
returns jsonb
language plpgsql
set search_path = pg_catalog, pyflows, pg_temp
as $$
declare
    v_target record;
    v_counts jsonb;
begin
    perform pyflows._require_context();
    v_target := pyflows._flow_for_deletion(p_flow_id);
    v_counts := pyflows._deletion_counts(p_flow_id);
    return jsonb_build_object('flow_id', p_flow_id, 'flow', pyflows._flow_summary(v_target.o_flow))
        || v_counts
        || jsonb_build_object('safety', pyflows._deletion_verdict(v_target.o_flow, v_counts, false,
                                                                  v_target.o_locked));
end;
$$;

-- How long a delete or a purge batch may wait for a row lock that another transaction holds (a worker
-- writing one of the flow's rows, another delete whose cascade crosses this one's): setting
-- pyflows.lock_timeout, in milliseconds ('500') or with a unit ('500ms', '2s', '1min'), default
-- 200 ms, between 1 ms and 1 minute; the session's own lock_timeout when that is shorter. Below
-- deadlock_timeout (1 s by default), so two deletes whose cascades cross give up (PF423) before they
-- could deadlock. Returns the milliseconds, for SET LOCAL lock_timeout (_set_local). Parsed without an
-- exception handler, whose subtransaction every delete would pay for.
create or replace function pyflows._lock_wait_ms()
returns text
language plpgsql
stable
set search_path = pg_catalog, pyflows, pg_temp
as $$
declare
    v_text    text := nullif(btrim(current_setting('pyflows.lock_timeout', true)), '');
    v_parts   text[];
    v_ms      bigint;
    v_session bigint;
begin
    if v_text is null and current_setting('lock_timeout') = '0' then
        return '200';  -- the default and no bound of the session's own: most calls, without parsing
    end if;
    v_parts := regexp_match(coalesce(v_text, '200'), '^([0-9]{1,9}) *(ms|s|min)?$');
    v_ms := v_parts[1]::bigint * case v_parts[2] when 's' then 1000 when 'min' then 60000 else 1 end;
    if v_ms is null or v_ms < 1 or v_ms > 60000 then
        raise exception 'pyflows.lock_timeout must be between 1ms and 1min (got %)', quote_literal(v_text)
            using errcode = 'PF422', hint = 'Set it in milliseconds, or with a unit: ''500ms'', ''2s'', ''1min''.';
    end if;
    -- The session's own bound (as PostgreSQL shows it: '0' for none, '250ms', '5s', '1min', '2h', '1d'),
    -- when it is shorter.
    v_parts := regexp_match(current_setting('lock_timeout'), '^([0-9]{1,12})(ms|s|min|h|d)?$');
    v_session := v_parts[1]::bigint * case v_parts[2] when 's' then 1000 when 'min' then 60000
                                                      when 'h' then 3600000 when 'd' then 86400000 else 1 end;
    if v_session > 0 and v_session < v_ms then
        v_ms := v_session;
    end if;
    return v_ms::text;
end;
$$;

-- Bound the lock waits of the caller's work that follows to pyflows.lock_timeout (_lock_wait_ms) and
-- return the lock_timeout it replaced, which the caller puts back when done; a wait that runs out is
-- 55P03, which the caller turns into PF423 with _refuse_busy.
create or replace function pyflows._bound_lock_waits()
returns text
language plpgsql
set search_path = pg_catalog, pyflows, pg_temp
as $$
declare
    v_was text := current_setting('lock_timeout');
begin
    perform pyflows._set_local('lock_timeout', pyflows._lock_wait_ms());
    return v_was;
end;
$$;

-- PF423 for a lock wait that ran out (55P03) or a deadlock (40P01) while doing p_done to the flow:
-- another transaction holds rows it needs. Retrying once it has finished succeeds.
create or replace function pyflows._refuse_busy(p_flow_id uuid, p_done text, p_message text)
returns void
language plpgsql
set search_path = pg_catalog, pyflows, pg_temp
as $$
begin
    raise exception 'flow % cannot be % now: another transaction holds rows it needs', p_flow_id, p_done
        using errcode = 'PF423',
              detail = jsonb_build_object('flow_id', p_flow_id, 'reason', p_message,
                                          'lock_timeout', current_setting('lock_timeout'))::text,
              hint = 'A worker or another delete is writing this flow''s rows; try again in a moment '
                     '(pyflows.lock_timeout says how long to wait for them).';
end;
$$;

-- Delete the context's flow row, and through the cascade everything it owns, waiting for row locks
-- other transactions hold at most pyflows.lock_timeout. p_guarded: a lock wait that ran out, or a
-- deadlock, is PF423 here; otherwise the caller maps it (delete_flows does, once for a whole batch:
-- the handler's subtransaction costs about as much as a small flow's delete, measured). The caller
-- has locked the flow row and opened the audit event: _delete_flow and _purge_finish (definers) only.
-- work_mem: the delete's transition tables (the rows each table's audit trigger archives) are kept in
-- memory up to this size each, then spill to disk; at the session's default (4MB) a 100k-asset flow's
-- spilled to temporary files and its delete cost about 6 % more.
drop function if exists pyflows._delete_flow_row(uuid, text);
create or replace function pyflows._delete_flow_row(p_flow_id uuid, p_done text, p_guarded boolean)
returns void
language plpgsql
set search_path = pg_catalog, pyflows, pg_temp
set work_mem = '32MB'
as $$
declare
    v_wait text := pyflows._bound_lock_waits();
begin
    if p_guarded then
        begin
            delete from pyflows.discovery_flows as f
             where f.client_id = pyflows.current_client_id() and f.engagement_id = pyflows.current_engagement_id()
               and f.id = p_flow_id;
        exception when lock_not_available or deadlock_detected then
            perform pyflows._refuse_busy(p_flow_id, p_done, sqlerrm);
        end;
    else
        delete from pyflows.discovery_flows as f
         where f.client_id = pyflows.current_client_id() and f.engagement_id = pyflows.current_engagement_id()
           and f.id = p_flow_id;
    end if;
    perform pyflows._set_local('lock_timeout', v_wait);
end;
$$;

-- PF423 unless the verdict (from _deletion_verdict) is safe: "flow <id> cannot be <p_done>: <blockers>".
create or replace function pyflows._refuse_if_blocked(p_flow_id uuid, p_verdict jsonb, p_done text)
returns void
language plpgsql
set search_path = pg_catalog, pyflows, pg_temp
as $$
begin
    if (p_verdict ->> 'safe')::boolean then
        return;
    end if;
    raise exception 'flow % cannot be %: %', p_flow_id, p_done,
        (select string_agg(b ->> 'message', '; ') from jsonb_array_elements(p_verdict -> 'blockers') as b)
        using errcode = 'PF423',
              detail = jsonb_build_object('flow_id', p_flow_id, 'blockers', p_verdict -> 'blockers',
                                          'warnings', p_verdict -> 'warnings')::text,
              hint = 'Pass p_force => true to override; the override is recorded in the audit.';
end;
$$;

-- The audited delete of one flow and everything it owns, in the caller's transaction.
-- How many stored files a deletion event queued. Read through the queue's partial index on event_id,
-- never by scanning the table: the plan is made once and kept, and a batch that deletes thousands of
-- flows in one transaction grows the queue as it goes (a sequential scan planned while it was small
-- would make the batch quadratic). Only the SECURITY DEFINER delete functions call it.
drop function if exists pyflows._deletion_result(bigint);
create or replace function pyflows._files_enqueued(p_event bigint)
returns bigint
language plpgsql
stable
set search_path = pg_catalog, pyflows, pg_temp
set enable_seqscan = off
as $$
declare
    c_client constant uuid := pyflows.current_client_id();
    v_files  bigint;
begin
    select count(*) into v_files from pyflows.file_cleanup_queue as q
     where q.client_id = c_client and q.event_id = p_event;  -- its partial index
    return v_files;
end;
$$;

-- delete_flow's work; p_guarded as _delete_flow_row (false only for delete_flows, which maps a lock
-- wait that ran out to PF423 itself).
create or replace function pyflows._delete_flow(p_flow_id uuid, p_reason text, p_force boolean, p_guarded boolean)
returns jsonb
language plpgsql
security definer
set search_path = pg_catalog, pyflows, pg_temp
as $$
declare
    v_reason  text;
    v_flow    jsonb;
    v_impact  jsonb;
    v_verdict jsonb;
    v_event   bigint;
    v_deleted jsonb;
    v_files   bigint;
begin
    perform pyflows._require_context(true);
    v_reason := pyflows._check_text(p_reason, 'reason', 1000);
    v_flow := pyflows._lock_flow(p_flow_id);
    v_impact := pyflows._deletion_counts(p_flow_id);
    v_verdict := pyflows._deletion_verdict(v_flow, v_impact, coalesce(p_force, false), false);
    perform pyflows._refuse_if_blocked(p_flow_id, v_verdict, 'deleted');

    v_event := pyflows_audit._begin_event('flow.delete', p_flow_id, v_reason,
                                          v_impact || jsonb_build_object('safety', v_verdict),
                                          v_flow, coalesce(p_force, false));
    perform pyflows._delete_flow_row(p_flow_id, 'deleted', coalesce(p_guarded, true));
    -- The statement-level triggers have run; closing the event counts what they archived.
    v_deleted := coalesce(pyflows_audit._close_events(array[v_event]) -> v_event::text, '{}');
    v_files := pyflows._files_enqueued(v_event);
    return jsonb_build_object('event_id', v_event, 'flow_id', p_flow_id, 'deleted', v_deleted,
                              'files_enqueued', v_files, 'forced', coalesce(p_force, false),
                              'warnings', v_verdict -> 'warnings');
end;
$$;

-- PL/pgSQL rather than SQL: see _purge_threshold.
create or replace function pyflows.delete_flow(p_flow_id uuid, p_reason text, p_force boolean default false)
returns jsonb
language plpgsql
set search_path = pg_catalog, pyflows, pg_temp
as $$
begin
    return pyflows._delete_flow(p_flow_id, p_reason, p_force, true);
end;
$$;

-- The ids of a batch, checked (not empty, no NULL, at most 10,000; PF422), each once, in the order
-- each first appears.
create or replace function pyflows._batch_ids(p_flow_ids uuid[])
returns uuid[]
language plpgsql
immutable
set search_path = pg_catalog, pyflows, pg_temp
as $$
declare
    v_ids uuid[];
begin
    if p_flow_ids is null or cardinality(p_flow_ids) = 0 then
        raise exception 'no flow ids given' using errcode = 'PF422';
    end if;
    if cardinality(p_flow_ids) > 10000 then
        raise exception 'at most 10000 flow ids a call (got %)', cardinality(p_flow_ids)
            using errcode = 'PF422', hint = 'Split the batch; each call is one transaction.';
    end if;
    if array_position(p_flow_ids, null) is not null then
        raise exception 'flow ids must not be NULL' using errcode = 'PF422';
    end if;
    select array_agg(u.id order by u.first) into v_ids
      from (select x.id, min(x.n) as first from unnest(p_flow_ids) with ordinality as x(id, n) group by x.id) as u;
    return v_ids;
end;
$$;

-- The audited delete of a batch of flows, all or nothing, set-based: each flow locked and checked as
-- delete_flow does (PF404, PF423 naming the first flow that fails), one flow.delete event per flow
-- (in the batch's order, with its impact as _batch_deletion_counts counts it), then one DELETE per
-- table for the whole batch: the dependency edges that touch it, while the assets they point at are
-- still there; the imports' records and mappings, while the imports are; then the flows, whose cascade
-- removes their imports and assets. The triggers archive each row under its flow's event (see
-- migration 0012). A lock wait that runs out is 55P03, which delete_flows maps to PF423.
create or replace function pyflows._delete_flow_batch(p_flow_ids uuid[], p_reason text, p_force boolean)
returns table (flow_id uuid, event_id bigint)
language plpgsql
security definer
set search_path = pg_catalog, pyflows, pg_temp
set work_mem = '32MB'
as $$
declare
    c_client     constant uuid := pyflows.current_client_id();
    c_engagement constant uuid := pyflows.current_engagement_id();
    v_reason     text;
    v_ids        uuid[];
    v_flows      jsonb[] := '{}';
    v_impacts    jsonb[] := '{}';
    v_counts     jsonb;
    v_verdict    jsonb;
    v_events     bigint[];
    v_edges      bigint[];
    v_imports    uuid[];
    v_wait       text;
begin
    perform pyflows._require_context(true);
    v_reason := pyflows._check_text(p_reason, 'reason', 1000);
    v_ids := pyflows._batch_ids(p_flow_ids);
    for i in 1 .. cardinality(v_ids) loop
        v_flows := v_flows || pyflows._lock_flow(v_ids[i]);
    end loop;
    v_counts := pyflows._batch_deletion_counts(v_ids);
    for i in 1 .. cardinality(v_ids) loop
        v_verdict := pyflows._deletion_verdict(v_flows[i], v_counts -> v_ids[i]::text, coalesce(p_force, false), false);
        perform pyflows._refuse_if_blocked(v_ids[i], v_verdict, 'deleted');
        v_impacts := v_impacts || ((v_counts -> v_ids[i]::text) || jsonb_build_object('safety', v_verdict));
    end loop;

    v_events := pyflows_audit._begin_events('flow.delete', v_ids, v_reason, v_impacts, v_flows,
                                            coalesce(p_force, false));
    v_wait := pyflows._bound_lock_waits();
    -- Keys read first, one table per statement: Citus routes those to the client's shards. The edges
    -- that touch a flow of the batch other than their own (usually few), by id; its flows' own, by flow.
    v_edges := array(select distinct t.id from pyflows._edges_touching(v_ids, null) as t);
    v_imports := array(select i.id from pyflows.data_imports as i
                        where i.client_id = c_client and i.engagement_id = c_engagement and i.flow_id = any(v_ids));
    delete from pyflows.asset_dependencies as d
     where d.client_id = c_client and d.engagement_id = c_engagement
       and (d.flow_id = any(v_ids) or d.id = any(v_edges));
    delete from pyflows.raw_import_records as r
     where r.client_id = c_client and r.engagement_id = c_engagement and r.import_id = any(v_imports);
    delete from pyflows.import_field_mappings as m
     where m.client_id = c_client and m.engagement_id = c_engagement and m.import_id = any(v_imports);
    delete from pyflows.discovery_flows as f
     where f.client_id = c_client and f.engagement_id = c_engagement and f.id = any(v_ids);
    perform pyflows._set_local('lock_timeout', v_wait);
    perform pyflows_audit._close_events(v_events);
    return query select b.id, b.event_id from unnest(v_ids, v_events) as b(id, event_id);
end;
$$;

-- Many flows with one reason and one batch id on all their events. Atomic (the default): any
-- failure raises and nothing is deleted. Per flow: each flow in its own subtransaction, and a
-- result row says what happened to it. Duplicate ids are deleted once; at most 10,000 ids a call.
create or replace function pyflows.delete_flows(p_flow_ids uuid[], p_reason text, p_force boolean default false,
                                                p_atomic boolean default true)
returns table (flow_id uuid, ok boolean, event_id bigint, error_code text, message text)
language plpgsql
set search_path = pg_catalog, pyflows, pg_temp
as $$
declare
    v_ids    uuid[];
    v_id     uuid;
    v_result jsonb;
    v_state  text;
    v_text   text;
begin
    perform pyflows._require_context(true);
    perform pyflows._check_text(p_reason, 'reason', 1000);
    v_ids := pyflows._batch_ids(p_flow_ids);

    perform pyflows._set_local('pyflows.audit_batch', gen_random_uuid()::text);
    if coalesce(p_atomic, true) then
        begin  -- one handler for the whole batch: a lock wait that ran out is PF423
            return query select b.flow_id, true, b.event_id, null::text, null::text
                           from pyflows._delete_flow_batch(v_ids, p_reason, p_force) as b;
        exception when lock_not_available or deadlock_detected then
            perform pyflows._refuse_busy(v_ids[1], 'deleted', sqlerrm);
        end;
    else
        foreach v_id in array v_ids loop
            begin
                v_result := pyflows._delete_flow(v_id, p_reason, p_force, false);
                return query select v_id, true, (v_result ->> 'event_id')::bigint, null::text, null::text;
            exception when others then
                -- Reported in this flow's result row, not swallowed: the caller sees the code and message.
                get stacked diagnostics v_state = returned_sqlstate, v_text = message_text;
                if v_state in ('55P03', '40P01') then
                    v_state := 'PF423';
                    v_text := format('flow %s cannot be deleted now: another transaction holds rows it needs (%s)',
                                     v_id, v_text);
                end if;
                return query select v_id, false, null::bigint, v_state, v_text;
            end;
        end loop;
    end if;
    perform pyflows._set_local('pyflows.audit_batch', '');
end;
$$;

-- The context's audit trail, newest first.
-- (details joined the columns with the restored counts of flow.restore events: an added output column
-- needs the function dropped first.)
drop function if exists pyflows.list_audit_events(uuid, timestamptz, integer);
create or replace function pyflows.list_audit_events(p_flow_id uuid default null, p_since timestamptz default null,
                                                     p_limit integer default 100)
returns table (
    event_id bigint, occurred_at timestamptz, action text, actor text, db_user text, application_name text,
    client_addr inet, flow_id uuid, batch_id uuid, reason text, forced boolean, impact jsonb, deleted jsonb,
    statement text, details jsonb)
language plpgsql
stable
set search_path = pg_catalog, pyflows, pg_temp
as $$
declare
    c_client uuid;  -- a variable, which routes the query to the client's shard on Citus
begin
    perform pyflows._require_context();
    perform pyflows._check_page(p_limit, 0);
    c_client := pyflows.current_client_id();
    return query
        select e.id, e.occurred_at, e.action, e.actor, e.db_user, e.application_name, e.client_addr, e.flow_id,
               e.batch_id, e.reason, e.forced, e.impact, e.deleted, e.statement, e.details
          from pyflows_audit.events as e
         where e.client_id = c_client and e.engagement_id = pyflows.current_engagement_id()
           and (p_flow_id is null or e.flow_id = p_flow_id)
           and (p_since is null or e.occurred_at >= p_since)
         order by e.occurred_at desc, e.id desc
         limit p_limit;
end;
$$;

-- One event of the context in full, with the flow snapshot it kept, and the flow.restore event that
-- put its flow back (restored_by_event_id; NULL when none did).
create or replace function pyflows.audit_event(p_event_id bigint)
returns jsonb
language plpgsql
stable
set search_path = pg_catalog, pyflows, pg_temp
as $$
declare
    v_event  jsonb;
    c_client uuid;  -- variables, which route the queries to the client's shard on Citus
    v_engagement uuid;
begin
    perform pyflows._require_context();
    c_client := pyflows.current_client_id();
    v_engagement := pyflows.current_engagement_id();
    select to_jsonb(e) - 'id' || jsonb_build_object('event_id', e.id) into v_event
      from pyflows_audit.events as e
     where e.client_id = c_client and e.id = p_event_id and e.engagement_id = v_engagement;
    if v_event is not null then
        v_event := v_event || jsonb_build_object(
            'restored_by_event_id', (select r.id from pyflows_audit.events as r
                                      where r.client_id = c_client and r.engagement_id = v_engagement
                                        and r.action = 'flow.restore'
                                        and (r.details ->> 'restored_event_id')::bigint = p_event_id));
    end if;
    if v_event is null then
        raise exception 'audit event % not found', p_event_id
            using errcode = 'PF404', detail = json_build_object('event_id', p_event_id)::text;
    end if;
    return v_event;
end;
$$;

revoke all on function
    pyflows._lock_wait_ms(), pyflows._bound_lock_waits(), pyflows._refuse_busy(uuid, text, text),
    pyflows._delete_flow_row(uuid, text, boolean),
    pyflows._delete_flow(uuid, text, boolean, boolean), pyflows._refuse_if_blocked(uuid, jsonb, text), pyflows._purge_threshold(), pyflows._deletion_counts(uuid), pyflows._deletion_verdict(jsonb, jsonb, boolean, boolean),
    pyflows._flow_for_deletion(uuid), pyflows.deletion_safety(uuid, boolean), pyflows.deletion_impact(uuid),
    pyflows.delete_flow(uuid, text, boolean), pyflows.delete_flows(uuid[], text, boolean, boolean),
    pyflows.list_audit_events(uuid, timestamptz, integer), pyflows.audit_event(bigint)
    from public;
revoke all on function pyflows._files_enqueued(bigint), pyflows._batch_deletion_counts(uuid[]),
    pyflows._edges_touching(uuid[], bigint) from public;
revoke all on function pyflows._batch_ids(uuid[]), pyflows._delete_flow_batch(uuid[], text, boolean) from public;
grant execute on function
    pyflows._batch_ids(uuid[]), pyflows._delete_flow_batch(uuid[], text, boolean),
    pyflows._delete_flow(uuid, text, boolean, boolean), pyflows._lock_wait_ms(), pyflows._bound_lock_waits(),
    pyflows._refuse_busy(uuid, text, text),
    pyflows._refuse_if_blocked(uuid, jsonb, text), pyflows._purge_threshold(), pyflows._deletion_counts(uuid), pyflows._edges_touching(uuid[], bigint),
    pyflows._deletion_verdict(jsonb, jsonb, boolean, boolean),
    pyflows._flow_for_deletion(uuid), pyflows.deletion_safety(uuid, boolean), pyflows.deletion_impact(uuid),
    pyflows.delete_flow(uuid, text, boolean), pyflows.delete_flows(uuid[], text, boolean, boolean),
    pyflows.list_audit_events(uuid, timestamptz, integer), pyflows.audit_event(bigint)
    to pyflows_app;

-- pyflows sql/020_flow_views: how a flow is described to callers — its summary, its counts per
-- table, its next steps — and the small validation helpers the lifecycle functions share.
-- Nothing here writes. Flows are passed as jsonb (to_jsonb(row)), never as the table's row type,
-- so these functions do not depend on the table and never block a migration's rollback.

create or replace function pyflows._incomplete_statuses()
returns text[]
language sql
immutable
parallel safe
set search_path = pg_catalog, pyflows, pg_temp
as $$ select array['initialized', 'running', 'paused', 'waiting_for_user', 'failed']::text[] $$;

create or replace function pyflows._terminal_statuses()
returns text[]
language sql
immutable
parallel safe
set search_path = pg_catalog, pyflows, pg_temp
as $$ select array['completed', 'cancelled']::text[] $$;

-- Whether an error's constraint is p_name. On Citus a violation found on a worker arrives with an
-- empty constraint_name and the shard's index in the message ("..._one_incomplete_102043"), so the
-- name in the message, without the shard's number, is compared when the name is missing.
create or replace function pyflows._is_constraint(p_found text, p_message text, p_name text)
returns boolean
language sql
immutable
parallel safe
set search_path = pg_catalog, pyflows, pg_temp
as $$
    select coalesce(p_found = p_name
                    or (coalesce(p_found, '') = ''
                        and pg_catalog.regexp_replace(pg_catalog.substring(p_message, 'constraint "([^"]+)"'),
                                                      '_[0-9]+$', '') = p_name), false)
$$;

-- How long a heartbeat keeps a running flow "active": setting pyflows.active_lease, default 5 minutes.
create or replace function pyflows._active_lease()
returns interval
language sql
stable
set search_path = pg_catalog, pyflows, pg_temp
as $$ select coalesce(nullif(pg_catalog.current_setting('pyflows.active_lease', true), '')::interval,
                      interval '5 minutes') $$;

-- PF422 unless p_value is a non-blank text of at most p_max characters.
create or replace function pyflows._check_text(p_value text, p_what text, p_max integer default 200)
returns text
language plpgsql
immutable
set search_path = pg_catalog, pyflows, pg_temp
as $$
begin
    if p_value is null or btrim(p_value) = '' then
        raise exception '% must not be empty', p_what using errcode = 'PF422';
    end if;
    if char_length(p_value) > p_max then
        raise exception '% must be at most % characters (got %)', p_what, p_max, char_length(p_value)
            using errcode = 'PF422';
    end if;
    return btrim(p_value);
end;
$$;

-- PF422 unless p_limit is 1..1000 and p_offset is 0 or more.
create or replace function pyflows._check_page(p_limit integer, p_offset integer)
returns void
language plpgsql
immutable
set search_path = pg_catalog, pyflows, pg_temp
as $$
begin
    if p_limit is null or p_limit < 1 or p_limit > 1000 then
        raise exception 'limit must be between 1 and 1000 (got %)', coalesce(p_limit::text, 'NULL')
            using errcode = 'PF422';
    end if;
    if p_offset is null or p_offset < 0 then
        raise exception 'offset must be 0 or more (got %)', coalesce(p_offset::text, 'NULL')
            using errcode = 'PF422';
    end if;
end;
$$;

-- PF422 unless p_value is an interval from p_min to p_max (NULL only when p_null_ok): the bounds keep
-- arithmetic such as now() - p_value inside the range of a timestamp, whatever a caller passes.
create or replace function pyflows._check_interval(p_value interval, p_what text, p_min interval, p_max interval,
                                                   p_null_ok boolean default false)
returns interval
language plpgsql
immutable
set search_path = pg_catalog, pyflows, pg_temp
as $$
begin
    if p_value is null and p_null_ok then
        return null;
    end if;
    if p_value is null or p_value < p_min or p_value > p_max then
        raise exception '% must be an interval from % to % (got %)', p_what, p_min, p_max,
            coalesce(p_value::text, 'NULL')
            using errcode = 'PF422';
    end if;
    return p_value;
end;
$$;

-- What the user should do next with a flow in this status and phase: a list of sentences.
create or replace function pyflows._next_steps(p_status text, p_current_phase text, p_error jsonb default null)
returns jsonb
language plpgsql
stable
set search_path = pg_catalog, pyflows, pg_temp
as $$
declare
    v_title text;
    v_step  text;
    v_error text := nullif(coalesce(p_error ->> 'message', p_error #>> '{}'), '');
begin
    select title, next_step into v_title, v_step from pyflows.phases where phase = p_current_phase;
    return case p_status
        when 'initialized' then jsonb_build_array(format('%s: %s', v_title, v_step))
        when 'running' then jsonb_build_array(
            format('%s is running; follow its progress, or pause the flow.', v_title))
        when 'paused' then jsonb_build_array(
            format('Resume the flow to continue with %s: %s', lower(v_title), v_step))
        when 'waiting_for_user' then jsonb_build_array(format('%s: %s', v_title, v_step))
        when 'failed' then jsonb_build_array(
            format('%s failed%s. Resume the flow to retry it, or delete the flow.',
                   coalesce(v_title, 'The flow'), coalesce(': ' || v_error, '')))
        when 'completed' then jsonb_build_array(
            'The flow is complete. Upload a new CMDB export to start another flow.')
        when 'cancelled' then jsonb_build_array(
            'The flow was cancelled. Delete it once its data is no longer needed.')
        else '[]'::jsonb
    end;
end;
$$;

-- A flow as callers see it, from to_jsonb(discovery_flows row).
create or replace function pyflows._flow_summary(p_flow jsonb)
returns jsonb
language sql
stable
set search_path = pg_catalog, pyflows, pg_temp
as $$
    select jsonb_build_object(
        'flow_id', p_flow -> 'id',
        'name', p_flow -> 'name',
        'status', p_flow -> 'status',
        'current_phase', p_flow -> 'current_phase',
        'phase_title', (select to_jsonb(ph.title) from pyflows.phases as ph where ph.phase = p_flow ->> 'current_phase'),
        'phases_completed', p_flow -> 'phases_completed',
        'progress_percentage', p_flow -> 'progress_percentage',
        'created_by', p_flow -> 'created_by',
        'created_at', p_flow -> 'created_at',
        'updated_at', p_flow -> 'updated_at',
        'last_activity_at', p_flow -> 'last_activity_at',
        'heartbeat_at', p_flow -> 'heartbeat_at',
        'completed_at', p_flow -> 'completed_at',
        'next_steps', pyflows._next_steps(p_flow ->> 'status', p_flow ->> 'current_phase', p_flow -> 'error'))
$$;

-- Rows per table that a flow owns, through the tenant-leading indexes (index-only scans; RLS applies
-- as usual). The plans are made once for any ids and kept (force_generic_plan) and may not scan whole
-- tables (enable_seqscan off): one flow's rows are always best counted through those indexes, so the
-- same plans are right for every flow, whatever the statistics say about how rows spread over flows.
-- Before: a SQL function planned for any ids counted by sequential scans wherever one flow held most
-- of a table (25 ms for an empty flow next to a 400k-row one), and plans made anew for each call cost
-- more than the counting (a listing under RLS 1.3-1.9x slower than without).
create or replace function pyflows._flow_counts(p_client_id uuid, p_engagement_id uuid, p_flow_id uuid)
returns jsonb
language plpgsql
stable
set search_path = pg_catalog, pyflows, pg_temp
set enable_seqscan = off
set plan_cache_mode = force_generic_plan
as $$
declare
    v_import_ids uuid[];
    v_imports  bigint;
    v_records  bigint;
    v_mappings bigint;
    v_assets   bigint;
    v_edges    bigint;
begin
    -- The flow's imports first, then the rows of those imports: each query reads one table by the
    -- tenant's key, which Citus routes to one shard even in a generic plan (a join it could not).
    select coalesce(array_agg(i.id), '{}') into v_import_ids from pyflows.data_imports as i
     where i.client_id = p_client_id and i.engagement_id = p_engagement_id and i.flow_id = p_flow_id;
    v_imports := cardinality(v_import_ids);
    select count(*) into v_records from pyflows.raw_import_records as r
     where r.client_id = p_client_id and r.engagement_id = p_engagement_id and r.import_id = any (v_import_ids);
    select count(*) into v_mappings from pyflows.import_field_mappings as m
     where m.client_id = p_client_id and m.engagement_id = p_engagement_id and m.import_id = any (v_import_ids);
    select count(*) into v_assets from pyflows.assets as a
     where a.client_id = p_client_id and a.engagement_id = p_engagement_id and a.flow_id = p_flow_id;
    select count(*) into v_edges from pyflows.asset_dependencies as d
     where d.client_id = p_client_id and d.engagement_id = p_engagement_id and d.flow_id = p_flow_id;
    return jsonb_build_object('data_imports', v_imports, 'raw_import_records', v_records,
                              'import_field_mappings', v_mappings, 'assets', v_assets,
                              'asset_dependencies', v_edges);
end;
$$;

-- The summary of one flow of the context that the caller has just written (NULL if it is not there):
-- what start_flow, start_import, record_progress and resume_flow return, without flow_details'
-- phases and counts, which they would throw away. Like every function here that reads a tenant
-- table, it reads the row by the context's key held in variables first, then describes it: on Citus
-- a key in a variable routes the query to the tenant's shard, and describing a row reads other
-- tables, which a query over a distributed table may not do for each row (docs/scale-out.md).
create or replace function pyflows._flow_row_summary(p_flow_id uuid)
returns jsonb
language plpgsql
stable
set search_path = pg_catalog, pyflows, pg_temp
as $$
declare
    c_client     constant uuid := pyflows.current_client_id();
    c_engagement constant uuid := pyflows.current_engagement_id();
    v_row jsonb;
begin
    select to_jsonb(f) into v_row
      from pyflows.discovery_flows as f
     where f.client_id = c_client and f.engagement_id = c_engagement and f.id = p_flow_id;
    return case when v_row is not null then pyflows._flow_summary(v_row) end;
end;
$$;

-- The context's incomplete flow as a summary, or NULL. Under RLS only the context's rows are visible;
-- the filter is spelled out as well for superusers.
create or replace function pyflows._blocking_flow()
returns jsonb
language plpgsql
stable
set search_path = pg_catalog, pyflows, pg_temp
as $$
declare
    c_client     constant uuid := pyflows.current_client_id();
    c_engagement constant uuid := pyflows.current_engagement_id();
    v_row jsonb;
begin
    select to_jsonb(f) into v_row
      from pyflows.discovery_flows as f
     where f.client_id = c_client and f.engagement_id = c_engagement
       and f.status = any (pyflows._incomplete_statuses());
    return case when v_row is not null then pyflows._flow_summary(v_row) end;
end;
$$;

-- PF409 describing p_blocking (a summary from _blocking_flow), with p_hint: what the user can do about it
-- (by default, for a new flow; a restore says its own).
drop function if exists pyflows._raise_incomplete_flow_exists(jsonb);
create or replace function pyflows._raise_incomplete_flow_exists(p_blocking jsonb, p_hint text default null)
returns void
language plpgsql
set search_path = pg_catalog, pyflows, pg_temp
as $$
declare
    v_detail jsonb := jsonb_build_object(
        'flow_id', p_blocking -> 'flow_id',
        'name', p_blocking -> 'name',
        'status', p_blocking -> 'status',
        'current_phase', p_blocking -> 'current_phase',
        'progress_percentage', p_blocking -> 'progress_percentage',
        'last_activity_at', p_blocking -> 'last_activity_at',
        'next_steps', coalesce(p_blocking -> 'next_steps', '[]'::jsonb),
        'actions', jsonb_build_array('resume', 'delete'));
begin
    raise exception 'an incomplete flow exists in this context: %',
        coalesce(format('%s (%s, %s, %s%%)', p_blocking ->> 'name', p_blocking ->> 'flow_id',
                        p_blocking ->> 'status', p_blocking ->> 'progress_percentage'),
                 'started by a concurrent transaction')
        using errcode = 'PF409',
              detail = v_detail::text,
              hint = coalesce(p_hint, 'Resume that flow, or delete it, before starting a new one.');
end;
$$;

revoke all on function pyflows._incomplete_statuses(), pyflows._terminal_statuses(), pyflows._is_constraint(text, text, text), pyflows._active_lease(),
    pyflows._check_text(text, text, integer), pyflows._check_page(integer, integer),
    pyflows._check_interval(interval, text, interval, interval, boolean), pyflows._next_steps(text, text, jsonb), pyflows._flow_summary(jsonb),
    pyflows._flow_counts(uuid, uuid, uuid), pyflows._flow_row_summary(uuid), pyflows._blocking_flow(), pyflows._raise_incomplete_flow_exists(jsonb, text)
    from public;
grant execute on function pyflows._incomplete_statuses(), pyflows._terminal_statuses(), pyflows._is_constraint(text, text, text), pyflows._active_lease(),
    pyflows._check_text(text, text, integer), pyflows._check_page(integer, integer),
    pyflows._check_interval(interval, text, interval, interval, boolean), pyflows._next_steps(text, text, jsonb), pyflows._flow_summary(jsonb),
    pyflows._flow_counts(uuid, uuid, uuid), pyflows._flow_row_summary(uuid), pyflows._blocking_flow(), pyflows._raise_incomplete_flow_exists(jsonb, text)
    to pyflows_app;

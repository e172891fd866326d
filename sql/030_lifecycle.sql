-- pyflows sql/030_lifecycle: the gate, starting flows and imports, listing, details, progress,
-- heartbeats, status changes and resume. Every function refuses to run without a tenant context
-- (PF401). Most run as their caller (SECURITY INVOKER), so row-level security and the caller's
-- grants apply. start_flow, start_import and resume_flow are SECURITY DEFINER because they write
-- their audit event (flow.start, flow.resume), which applications may not; every row they touch is
-- filtered by the caller's context explicitly. The status rules live in one place: trigger
-- discovery_flows_rules.

-- Record a lifecycle action (flow.start, flow.resume) of the current context in the audit trail.
-- Called only by the SECURITY DEFINER lifecycle functions; applications have no EXECUTE on it.
create or replace function pyflows._audit_lifecycle(p_action text, p_flow_id uuid, p_flow jsonb, p_details jsonb)
returns bigint
language plpgsql
set search_path = pg_catalog, pyflows, pg_temp
as $$
declare
    v_event bigint;
begin
    if p_action not in ('flow.start', 'flow.resume') then
        raise exception 'not a lifecycle action: %', p_action using errcode = 'PF422';
    end if;
    v_event := pyflows_audit._begin_event(p_action, p_flow_id, null, null, p_flow, false, p_details);
    perform pyflows_audit._end_event();
    return v_event;
end;
$$;

-- {can_start, blocking_flow, next_steps}: what a UI asks before enabling an upload.
create or replace function pyflows.flow_gate()
returns jsonb
language plpgsql
stable
set search_path = pg_catalog, pyflows, pg_temp
as $$
declare
    v_blocking jsonb;
begin
    perform pyflows._require_context();
    v_blocking := pyflows._blocking_flow();
    if v_blocking is null then
        return jsonb_build_object(
            'can_start', true,
            'blocking_flow', null,
            'next_steps', jsonb_build_array('Upload a CMDB export to start a new discovery flow.'));
    end if;
    return jsonb_build_object(
        'can_start', false,
        'blocking_flow', v_blocking,
        'next_steps', (v_blocking -> 'next_steps')
            || jsonb_build_array(format('Or delete "%s" to start a new import.', v_blocking ->> 'name')));
end;
$$;

-- Insert a new flow for the context, or raise PF409 naming the incomplete flow that blocks it.
-- The partial unique index decides races: a concurrent start that lost is reported as PF409 too.
-- Checks its own arguments, as applications may call it directly.
create or replace function pyflows._insert_flow(p_name text, p_created_by text)
returns uuid
language plpgsql
set search_path = pg_catalog, pyflows, pg_temp
as $$
declare
    c_client     constant uuid := pyflows.current_client_id();
    c_engagement constant uuid := pyflows.current_engagement_id();
    v_id         uuid;
    v_blocking   jsonb;
    v_constraint text;
    v_message    text;
begin
    perform pyflows._require_context();
    p_name := pyflows._check_text(p_name, 'flow name');
    if p_created_by is not null then
        p_created_by := pyflows._check_text(p_created_by, 'created_by');
    end if;
    v_blocking := pyflows._blocking_flow();
    if v_blocking is not null then
        perform pyflows._raise_incomplete_flow_exists(v_blocking);
    end if;
    begin
        insert into pyflows.discovery_flows (client_id, engagement_id, name, created_by)
        values (c_client, c_engagement, p_name, p_created_by)
        returning id into v_id;
    exception when unique_violation then
        get stacked diagnostics v_constraint = constraint_name, v_message = message_text;
        if not pyflows._is_constraint(v_constraint, v_message, 'discovery_flows_one_incomplete') then
            raise;
        end if;
        -- The winner has committed (we waited on its index entry), so a new snapshot sees it.
        perform pyflows._raise_incomplete_flow_exists(pyflows._blocking_flow());
    end;
    return v_id;
end;
$$;

create or replace function pyflows.start_flow(p_name text, p_created_by text default null)
returns jsonb
language plpgsql
security definer
set search_path = pg_catalog, pyflows, pg_temp
as $$
declare
    v_id   uuid;
    v_flow jsonb;
begin
    perform pyflows._require_context();
    v_id := pyflows._insert_flow(
        pyflows._check_text(p_name, 'flow name'),
        case when p_created_by is null then pyflows.current_actor()
             else pyflows._check_text(p_created_by, 'created_by') end);
    v_flow := pyflows._flow_row_summary(v_id);
    perform pyflows._audit_lifecycle('flow.start', v_id, v_flow, '{}'::jsonb);
    return v_flow;
end;
$$;

-- PF422 for a file:// URI that is not an absolute path on this host, or that could climb out of the
-- folder it names: a '.' or '..' segment (also written %2e), an encoded '/' (%2f) or NUL (%00). The drain
-- removes files only under its configured storage roots in any case (docs/operations.md); this keeps
-- such paths out of the database in the first place. Other schemes are their storage's business.
create or replace function pyflows._check_file_uri(p_storage_uri text)
returns void
language plpgsql
immutable
set search_path = pg_catalog, pyflows, pg_temp
as $$
declare
    v_path text;
begin
    if p_storage_uri !~* '^file:' then
        return;
    end if;
    v_path := (regexp_match(p_storage_uri, '^file://(?:localhost)?(/[^?#]*)', 'i'))[1];
    if v_path is null then
        raise exception 'a file:// storage_uri must name an absolute path on this host, such as file:///uploads/a.csv '
                        '(got %)', quote_literal(left(p_storage_uri, 200))
            using errcode = 'PF422';
    end if;
    if v_path ~* '%(2f|00)' or regexp_replace(v_path, '%2e', '.', 'gi') ~ '(^|/)\.\.?(/|$)' then
        raise exception 'a file:// storage_uri must not contain ".", ".." or encoded "/" or NUL segments (got %)',
            quote_literal(left(p_storage_uri, 200))
            using errcode = 'PF422';
    end if;
end;
$$;

-- PF422 unless the import's file is described well enough to find and size it.
create or replace function pyflows._check_import(p_filename text, p_storage_uri text, p_byte_size bigint)
returns void
language plpgsql
immutable
set search_path = pg_catalog, pyflows, pg_temp
as $$
begin
    perform pyflows._check_text(p_filename, 'filename', 1024);
    perform pyflows._check_text(p_storage_uri, 'storage_uri', 4096);
    if p_storage_uri !~ '^[A-Za-z][A-Za-z0-9+.-]*://' then
        raise exception 'storage_uri must be a URI with a scheme, such as file:///path or s3://bucket/key (got %)',
            quote_literal(left(p_storage_uri, 200))
            using errcode = 'PF422';
    end if;
    perform pyflows._check_file_uri(btrim(p_storage_uri));
    if p_byte_size is null or p_byte_size < 0 then
        raise exception 'byte_size must be 0 or more (got %)', coalesce(p_byte_size::text, 'NULL')
            using errcode = 'PF422';
    end if;
end;
$$;

-- Insert an import of the context's flow. Checks its own arguments: applications may call it directly
-- (add_import, which runs as the caller, uses it), and then it refuses what add_import would.
create or replace function pyflows._insert_import(p_flow_id uuid, p_filename text, p_storage_uri text,
                                                  p_byte_size bigint)
returns uuid
language plpgsql
set search_path = pg_catalog, pyflows, pg_temp
as $$
declare
    c_client     constant uuid := pyflows.current_client_id();
    c_engagement constant uuid := pyflows.current_engagement_id();
    v_id uuid;
begin
    perform pyflows._require_context();
    if p_flow_id is null then
        raise exception 'flow id must not be NULL' using errcode = 'PF422';
    end if;
    perform pyflows._check_import(p_filename, p_storage_uri, p_byte_size);
    insert into pyflows.data_imports
        (client_id, engagement_id, flow_id, filename, storage_uri, byte_size, imported_by)
    values (c_client, c_engagement, p_flow_id, btrim(p_filename),
            btrim(p_storage_uri), p_byte_size, pyflows.current_actor())
    returning id into v_id;
    return v_id;
exception when foreign_key_violation then
    raise exception 'flow % not found', p_flow_id
        using errcode = 'PF404', detail = json_build_object('flow_id', p_flow_id)::text;
end;
$$;

-- The upload path: a new flow and its first import in one transaction; PF409 like start_flow.
create or replace function pyflows.start_import(p_filename text, p_storage_uri text, p_byte_size bigint,
                                                p_flow_name text default null)
returns jsonb
language plpgsql
security definer
set search_path = pg_catalog, pyflows, pg_temp
as $$
declare
    v_flow_id   uuid;
    v_import_id uuid;
    v_flow      jsonb;
begin
    perform pyflows._require_context();
    perform pyflows._check_import(p_filename, p_storage_uri, p_byte_size);
    v_flow_id := pyflows._insert_flow(
        pyflows._check_text(coalesce(p_flow_name, p_filename), 'flow name'), pyflows.current_actor());
    v_import_id := pyflows._insert_import(v_flow_id, p_filename, p_storage_uri, p_byte_size);
    v_flow := pyflows._flow_row_summary(v_flow_id);
    perform pyflows._audit_lifecycle('flow.start', v_flow_id, v_flow, jsonb_build_object('import_id', v_import_id));
    return jsonb_build_object('flow_id', v_flow_id, 'import_id', v_import_id, 'flow', v_flow);
end;
$$;

-- The context's flow, locked for update; PF404 when it is not there (or being deleted, unless
-- p_deleting_ok), whether it never existed or belongs to another tenant; PF423 at once when another
-- transaction holds it (NOWAIT: no API call queues behind a worker or an operator).
-- sql/ files change a signature by dropping the old one first: CREATE OR REPLACE would add an overload.
drop function if exists pyflows._lock_flow(uuid, boolean);
drop function if exists pyflows._lock_flow(uuid, boolean, boolean);
create or replace function pyflows._lock_flow(p_flow_id uuid, p_deleting_ok boolean default false)
returns jsonb
language plpgsql
set search_path = pg_catalog, pyflows, pg_temp
as $$
declare
    c_client     constant uuid := pyflows.current_client_id();
    c_engagement constant uuid := pyflows.current_engagement_id();
    v_flow jsonb;
begin
    if p_flow_id is null then
        raise exception 'flow id must not be NULL' using errcode = 'PF422';
    end if;
    -- SKIP LOCKED, then a plain read to tell a locked row from a missing one: the same answer as
    -- NOWAIT without the subtransaction an exception handler would cost every call.
    select to_jsonb(f) into v_flow from pyflows.discovery_flows as f
     where f.client_id = c_client and f.engagement_id = c_engagement
       and f.id = p_flow_id
       for update skip locked;
    if v_flow is null and exists (
            select from pyflows.discovery_flows as f
             where f.client_id = c_client and f.engagement_id = c_engagement
               and f.id = p_flow_id) then
        raise exception 'flow % is locked by another transaction', p_flow_id
            using errcode = 'PF423',
                  detail = json_build_object('flow_id', p_flow_id)::text,
                  hint = 'Another operation on this flow is in progress; try again in a moment.';
    end if;
    if v_flow is null or (v_flow ->> 'status' = 'deleting' and not coalesce(p_deleting_ok, false)) then
        raise exception 'flow % not found', p_flow_id
            using errcode = 'PF404', detail = json_build_object('flow_id', p_flow_id)::text;
    end if;
    return v_flow;
end;
$$;

-- PF422 unless the flow (from _lock_flow) is in one of p_allowed: "flow <id> is <status>: <p_why>".
create or replace function pyflows._require_status(p_flow jsonb, p_allowed text[], p_why text,
                                                   p_hint text default null)
returns void
language plpgsql
set search_path = pg_catalog, pyflows, pg_temp
as $$
begin
    if (p_flow ->> 'status') = any (p_allowed) then
        return;
    end if;
    if p_hint is null then
        raise exception 'flow % is %: %', p_flow ->> 'id', p_flow ->> 'status', p_why
            using errcode = 'PF422',
                  detail = json_build_object('flow_id', p_flow -> 'id', 'status', p_flow -> 'status')::text;
    end if;
    raise exception 'flow % is %: %', p_flow ->> 'id', p_flow ->> 'status', p_why
        using errcode = 'PF422', hint = p_hint,
              detail = json_build_object('flow_id', p_flow -> 'id', 'status', p_flow -> 'status')::text;
end;
$$;

-- Another file into an incomplete flow of the context.
create or replace function pyflows.add_import(p_flow_id uuid, p_filename text, p_storage_uri text,
                                              p_byte_size bigint)
returns jsonb
language plpgsql
set search_path = pg_catalog, pyflows, pg_temp
as $$
declare
    c_client     constant uuid := pyflows.current_client_id();
    c_engagement constant uuid := pyflows.current_engagement_id();
    v_flow      jsonb;
    v_import_id uuid;
begin
    perform pyflows._require_context();
    perform pyflows._check_import(p_filename, p_storage_uri, p_byte_size);
    v_flow := pyflows._lock_flow(p_flow_id);
    perform pyflows._require_status(v_flow, pyflows._incomplete_statuses(),
                                    'imports go into an incomplete flow', 'Start a new flow for a new import.');
    v_import_id := pyflows._insert_import(p_flow_id, p_filename, p_storage_uri, p_byte_size);
    update pyflows.discovery_flows set last_activity_at = now()
     where client_id = c_client and engagement_id = c_engagement
       and id = p_flow_id;
    return jsonb_build_object('flow_id', p_flow_id, 'import_id', v_import_id);
end;
$$;

-- One page of the context's flows: incomplete, terminal or all (never those being deleted), most
-- recently active first, with the rows each owns.
create or replace function pyflows.list_flows(p_filter text default 'all', p_limit integer default 50,
                                              p_offset integer default 0)
returns table (
    flow_id uuid, name text, status text, current_phase text, phase_title text,
    progress_percentage numeric, created_by text, created_at timestamptz, last_activity_at timestamptz,
    counts jsonb, next_steps jsonb)
language plpgsql
stable
set search_path = pg_catalog, pyflows, pg_temp
as $$
declare
    c_client     constant uuid := pyflows.current_client_id();
    c_engagement constant uuid := pyflows.current_engagement_id();
    v_statuses text[];
    v_page     jsonb;
begin
    perform pyflows._require_context();
    perform pyflows._check_page(p_limit, p_offset);
    v_statuses := case p_filter
        when 'incomplete' then pyflows._incomplete_statuses()
        when 'terminal' then pyflows._terminal_statuses()
        when 'all' then pyflows._incomplete_statuses() || pyflows._terminal_statuses()
    end;
    if v_statuses is null then
        raise exception 'filter must be incomplete, terminal or all (got %)', coalesce(quote_literal(p_filter), 'NULL')
            using errcode = 'PF422';
    end if;
    -- One branch per kind of status, each with its statuses spelled out (constants once planned), so
    -- that even a plan made for any filter reads the context's incomplete flow through the partial
    -- unique index, instead of walking every finished flow of the context to find it; the filter
    -- only switches branches on or off. The page is read first, by the context's key (on Citus, from
    -- the tenant's one shard), and described after: the counts read other tables, which a query
    -- over a distributed table may not do for each of its rows.
    select coalesce(jsonb_agg(to_jsonb(f) order by f.last_activity_at desc, f.id), '[]'::jsonb) into v_page
      from (select i.* from pyflows.discovery_flows as i
             where i.client_id = c_client
               and i.engagement_id = c_engagement
               and i.status = any (pyflows._incomplete_statuses())
               and 'initialized' = any (v_statuses)
            union all
            select t.* from pyflows.discovery_flows as t
             where t.client_id = c_client
               and t.engagement_id = c_engagement
               and t.status = any (pyflows._terminal_statuses())
               and 'completed' = any (v_statuses)
            order by last_activity_at desc, id
            limit p_limit offset p_offset) as f;
    return query
        select (f.r ->> 'id')::uuid, f.r ->> 'name', f.r ->> 'status', f.r ->> 'current_phase', ph.title,
               (f.r ->> 'progress_percentage')::numeric, f.r ->> 'created_by', (f.r ->> 'created_at')::timestamptz,
               (f.r ->> 'last_activity_at')::timestamptz,
               pyflows._flow_counts(c_client, c_engagement, (f.r ->> 'id')::uuid),
               pyflows._next_steps(f.r ->> 'status', f.r ->> 'current_phase', f.r -> 'error')
          from jsonb_array_elements(v_page) with ordinality as f(r, n)
          left join pyflows.phases as ph on ph.phase = f.r ->> 'current_phase'
         order by f.n;
end;
$$;

create or replace function pyflows.list_incomplete_flows(p_limit integer default 50, p_offset integer default 0)
returns table (
    flow_id uuid, name text, status text, current_phase text, phase_title text,
    progress_percentage numeric, created_by text, created_at timestamptz, last_activity_at timestamptz,
    counts jsonb, next_steps jsonb)
language sql
stable
set search_path = pg_catalog, pyflows, pg_temp
as $$ select * from pyflows.list_flows('incomplete', p_limit, p_offset) $$;

-- Everything about one flow: the flow, each phase's state, counts per table, errors, agent
-- insights, next steps, and whether it can be resumed or deleted.
create or replace function pyflows.flow_details(p_flow_id uuid)
returns jsonb
language plpgsql
stable
set search_path = pg_catalog, pyflows, pg_temp
as $$
declare
    c_client     constant uuid := pyflows.current_client_id();
    c_engagement constant uuid := pyflows.current_engagement_id();
    v_row    jsonb;
    v_status text;
    v_active boolean;
begin
    perform pyflows._require_context();
    if p_flow_id is null then
        raise exception 'flow id must not be NULL' using errcode = 'PF422';
    end if;
    select to_jsonb(f) into v_row from pyflows.discovery_flows as f
     where f.client_id = c_client and f.engagement_id = c_engagement
       and f.id = p_flow_id and f.status <> 'deleting';
    if v_row is null then
        raise exception 'flow % not found', p_flow_id
            using errcode = 'PF404', detail = json_build_object('flow_id', p_flow_id)::text;
    end if;
    v_status := v_row ->> 'status';
    v_active := v_status = 'running'
                and coalesce((v_row ->> 'heartbeat_at')::timestamptz > now() - pyflows._active_lease(), false);
    return jsonb_build_object(
        'flow', pyflows._flow_summary(v_row),
        'phases', (
            select jsonb_agg(jsonb_build_object(
                       'phase', ph.phase, 'position', ph.position, 'title', ph.title,
                       'state', case when v_row -> 'phases_completed' ? ph.phase then 'completed'
                                     when ph.phase = v_row ->> 'current_phase' then 'current'
                                     else 'pending' end)
                       order by ph.position)
              from pyflows.phases as ph),
        'counts', pyflows._flow_counts(c_client, c_engagement, p_flow_id),
        'errors', case when v_row -> 'error' is null or v_row -> 'error' = 'null'::jsonb then '[]'::jsonb
                       else jsonb_build_array(v_row -> 'error') end,
        'agent_insights', v_row -> 'agent_insights',
        'next_steps', pyflows._next_steps(v_status, v_row ->> 'current_phase', v_row -> 'error'),
        'can_resume', v_status in ('initialized', 'paused', 'failed', 'waiting_for_user'),
        'can_delete', v_status = any (pyflows._incomplete_statuses()) and not v_active);
end;
$$;

-- Mark a phase complete: advance current_phase to the first phase not yet complete, recompute
-- progress (the row trigger), touch last_activity_at, append the insight; after the last phase the
-- flow is completed. A flow still initialized starts running.
create or replace function pyflows.record_progress(p_flow_id uuid, p_phase text, p_insight jsonb default null)
returns jsonb
language plpgsql
set search_path = pg_catalog, pyflows, pg_temp
as $$
declare
    c_client     constant uuid := pyflows.current_client_id();
    c_engagement constant uuid := pyflows.current_engagement_id();
    v_flow      jsonb;
    v_completed text[];
    v_next      text;
    v_status    text;
    v_insights  jsonb;
begin
    perform pyflows._require_context();
    if p_phase is null or not exists (select from pyflows.phases where phase = p_phase) then
        raise exception 'unknown phase %', coalesce(quote_literal(p_phase), 'NULL')
            using errcode = 'PF422',
                  hint = format('The phases, in order: %s.',
                                (select string_agg(ph.phase, ', ' order by ph.position) from pyflows.phases as ph));
    end if;
    v_flow := pyflows._lock_flow(p_flow_id);
    perform pyflows._require_status(v_flow, pyflows._incomplete_statuses(),
                                    'progress is recorded on incomplete flows only');
    v_completed := array(select jsonb_array_elements_text(v_flow -> 'phases_completed')) || p_phase;
    select ph.phase into v_next from pyflows.phases as ph
     where ph.phase <> all (v_completed) order by ph.position limit 1;

    -- The new status and insight are worked out here, not in the UPDATE: Citus refuses functions
    -- that are not IMMUTABLE inside a CASE of an UPDATE on a distributed table.
    v_insights := case when p_insight is null then '[]'::jsonb
                       else jsonb_build_array(jsonb_build_object('phase', p_phase, 'recorded_at', now(),
                                                                 'insight', p_insight)) end;
    v_status := case when v_next is null then 'completed'
                     when v_flow ->> 'status' = 'initialized' then 'running'
                     else v_flow ->> 'status' end;
    update pyflows.discovery_flows as f
       set phases_completed = v_completed,
           current_phase = v_next,
           status = v_status,
           last_activity_at = now(),
           agent_insights = f.agent_insights || v_insights
     where f.client_id = c_client and f.engagement_id = c_engagement
       and f.id = p_flow_id;
    return pyflows._flow_row_summary(p_flow_id);
end;
$$;

-- A worker's liveness signal for a running flow; keeps it "active" for pyflows.active_lease.
create or replace function pyflows.heartbeat(p_flow_id uuid)
returns jsonb
language plpgsql
set search_path = pg_catalog, pyflows, pg_temp
as $$
declare
    c_client     constant uuid := pyflows.current_client_id();
    c_engagement constant uuid := pyflows.current_engagement_id();
    v_flow jsonb;
    v_at   timestamptz;
begin
    perform pyflows._require_context();
    v_flow := pyflows._lock_flow(p_flow_id);
    perform pyflows._require_status(v_flow, array['running'], 'heartbeats are for running flows',
                                    'Resume the flow first.');
    update pyflows.discovery_flows as f
       set heartbeat_at = now(), last_activity_at = now()
     where f.client_id = c_client and f.engagement_id = c_engagement
       and f.id = p_flow_id
    returning f.heartbeat_at into v_at;
    return jsonb_build_object('flow_id', p_flow_id, 'heartbeat_at', v_at,
                              'lease_until', v_at + pyflows._active_lease());
end;
$$;

-- Move a flow to another status; the trigger validates the transition (PF422). 'completed' comes from
-- record_progress and 'deleting' from purge_flow, not from here. p_error is kept with a failure.
create or replace function pyflows.set_flow_status(p_flow_id uuid, p_status text, p_error jsonb default null)
returns jsonb
language plpgsql
set search_path = pg_catalog, pyflows, pg_temp
as $$
declare
    c_client     constant uuid := pyflows.current_client_id();
    c_engagement constant uuid := pyflows.current_engagement_id();
    v_flow jsonb;
begin
    perform pyflows._require_context();
    if p_status is null or not (p_status = any (pyflows._incomplete_statuses() || array['cancelled'])) then
        raise exception 'status must be one of running, paused, waiting_for_user, failed, cancelled (got %)',
            coalesce(quote_literal(p_status), 'NULL')
            using errcode = 'PF422',
                  hint = 'A flow completes through record_progress and is deleted through delete_flow.';
    end if;
    if p_error is not null and p_status <> 'failed' then
        raise exception 'an error is recorded only with status failed' using errcode = 'PF422';
    end if;
    v_flow := pyflows._lock_flow(p_flow_id);
    if v_flow ->> 'status' = p_status then
        return jsonb_build_object('flow_id', p_flow_id, 'status', p_status, 'changed', false,
                                  'previous_status', p_status);
    end if;
    update pyflows.discovery_flows as f
       set status = p_status,
           error = case when p_status = 'failed' then coalesce(p_error, f.error)
                        when p_status = 'running' then null
                        else f.error end,
           last_activity_at = now()
     where f.client_id = c_client and f.engagement_id = c_engagement
       and f.id = p_flow_id;
    return jsonb_build_object('flow_id', p_flow_id, 'status', p_status, 'changed', true,
                              'previous_status', v_flow ->> 'status');
end;
$$;

-- paused, failed, waiting_for_user or initialized -> running. Resuming a running flow is a no-op
-- that says so; a completed or cancelled flow cannot be resumed (PF422). Does not wait for a lock:
-- PF423 when another transaction holds the flow.
create or replace function pyflows.resume_flow(p_flow_id uuid)
returns jsonb
language plpgsql
security definer
set search_path = pg_catalog, pyflows, pg_temp
as $$
declare
    c_client     constant uuid := pyflows.current_client_id();
    c_engagement constant uuid := pyflows.current_engagement_id();
    v_flow   jsonb;
    v_status text;
begin
    perform pyflows._require_context();
    v_flow := pyflows._lock_flow(p_flow_id);
    v_status := v_flow ->> 'status';
    perform pyflows._require_status(v_flow, pyflows._incomplete_statuses(), 'it cannot be resumed',
                                    'Start a new flow for a new import.');
    if v_status <> 'running' then
        update pyflows.discovery_flows as f
           set status = 'running', error = null, last_activity_at = now()
         where f.client_id = c_client and f.engagement_id = c_engagement
           and f.id = p_flow_id;
    end if;
    v_flow := pyflows._flow_row_summary(p_flow_id);
    if v_status <> 'running' then
        perform pyflows._audit_lifecycle('flow.resume', p_flow_id, v_flow,
                                         jsonb_build_object('previous_status', v_status));
    end if;
    return jsonb_build_object(
        'flow_id', p_flow_id,
        'resumed', v_status <> 'running',
        'previous_status', v_status,
        'status', 'running',
        'message', case when v_status = 'running' then 'the flow is already running; nothing to do'
                        else format('resumed from %s', v_status) end,
        'current_phase', v_flow -> 'current_phase',
        'phase_title', v_flow -> 'phase_title',
        'next_steps', v_flow -> 'next_steps',
        'flow', v_flow);
end;
$$;

revoke all on function pyflows._audit_lifecycle(text, uuid, jsonb, jsonb) from public;

revoke all on function
    pyflows.flow_gate(), pyflows._insert_flow(text, text), pyflows.start_flow(text, text),
    pyflows._check_file_uri(text), pyflows._check_import(text, text, bigint), pyflows._insert_import(uuid, text, text, bigint),
    pyflows.start_import(text, text, bigint, text), pyflows._lock_flow(uuid, boolean),
    pyflows._require_status(jsonb, text[], text, text),
    pyflows.add_import(uuid, text, text, bigint), pyflows.list_flows(text, integer, integer),
    pyflows.list_incomplete_flows(integer, integer), pyflows.flow_details(uuid),
    pyflows.record_progress(uuid, text, jsonb), pyflows.heartbeat(uuid),
    pyflows.set_flow_status(uuid, text, jsonb), pyflows.resume_flow(uuid)
    from public;
grant execute on function
    pyflows.flow_gate(), pyflows._insert_flow(text, text), pyflows.start_flow(text, text),
    pyflows._check_file_uri(text), pyflows._check_import(text, text, bigint), pyflows._insert_import(uuid, text, text, bigint),
    pyflows.start_import(text, text, bigint, text), pyflows._lock_flow(uuid, boolean),
    pyflows._require_status(jsonb, text[], text, text),
    pyflows.add_import(uuid, text, text, bigint), pyflows.list_flows(text, integer, integer),
    pyflows.list_incomplete_flows(integer, integer), pyflows.flow_details(uuid),
    pyflows.record_progress(uuid, text, jsonb), pyflows.heartbeat(uuid),
    pyflows.set_flow_status(uuid, text, jsonb), pyflows.resume_flow(uuid)
    to pyflows_app;

-- pyflows sql/040_admin: functions for DBAs (members of pyflows_admin) that look across tenants.
--
-- They are SECURITY DEFINER so that they can read every tenant's rows, which row-level security
-- hides from their callers; that needs the function owner (the role that ran pyflows migrate) to be
-- a superuser or to have BYPASSRLS, and they refuse to answer (PF403) rather than answer for a
-- subset when it is not. The caller is checked by session_user: inside a SECURITY DEFINER function
-- current_user is the owner.

-- PF403 unless the owner of the functions (current_user in a SECURITY DEFINER function) may read and
-- write across tenants: row-level security is forced on the tenant tables, so it needs BYPASSRLS.
create or replace function pyflows._require_owner_across_tenants()
returns void
language plpgsql
stable
security definer
set search_path = pg_catalog, pyflows, pg_temp
as $$
begin
    if not exists (select from pg_catalog.pg_roles where rolname = current_user and (rolsuper or rolbypassrls)) then
        raise exception 'the pyflows schema owner % cannot read across tenants', current_user
            using errcode = 'PF403',
                  hint = 'Give the role that runs pyflows migrate BYPASSRLS (ALTER ROLE ... BYPASSRLS).';
    end if;
end;
$$;

-- PF403 unless the logged-in role is a member of pyflows_admin and the owner can read across tenants.
create or replace function pyflows._require_admin()
returns void
language plpgsql
stable
security definer
set search_path = pg_catalog, pyflows, pg_temp
as $$
begin
    if not pg_has_role(session_user, 'pyflows_admin', 'member') then
        raise exception 'only members of pyflows_admin may do this'
            using errcode = 'PF403',
                  detail = json_build_object('role', session_user)::text,
                  hint = 'Ask a DBA to grant pyflows_admin to your login role.';
    end if;
    perform pyflows._require_owner_across_tenants();
end;
$$;

-- Incomplete flows of every tenant, longest idle first; with p_idle_for, only those whose last
-- activity is older than that: what a DBA runs to find abandoned flows that block users.
create or replace function pyflows.admin_list_incomplete_flows(p_idle_for interval default null)
returns table (
    client_id uuid, client_name text, engagement_id uuid, engagement_name text,
    flow_id uuid, name text, status text, current_phase text, progress_percentage numeric,
    created_by text, created_at timestamptz, last_activity_at timestamptz, heartbeat_at timestamptz,
    idle_for interval)
language plpgsql
stable
security definer
set search_path = pg_catalog, pyflows, pg_temp
as $$
begin
    perform pyflows._require_admin();
    perform pyflows._check_interval(p_idle_for, 'idle_for', interval '0', interval '100 years', true);
    return query
        select f.client_id, c.name, f.engagement_id, e.name, f.id, f.name, f.status, f.current_phase,
               f.progress_percentage, f.created_by, f.created_at, f.last_activity_at, f.heartbeat_at,
               now() - f.last_activity_at
          from pyflows.discovery_flows as f
          join pyflows.engagements as e on e.client_id = f.client_id and e.id = f.engagement_id
          join pyflows.clients as c on c.id = f.client_id
         where f.status = any (pyflows._incomplete_statuses())
           and (p_idle_for is null or f.last_activity_at < now() - p_idle_for)
         order by f.last_activity_at, f.client_id, f.engagement_id;
end;
$$;

revoke all on function pyflows._require_owner_across_tenants(), pyflows._require_admin(),
    pyflows.admin_list_incomplete_flows(interval) from public;
-- Granted to applications on purpose: a non-admin caller gets PF403 from the function, not 42501.
grant execute on function pyflows._require_admin(), pyflows.admin_list_incomplete_flows(interval) to pyflows_app;

-- What a monitoring system watches, across tenants, as one jsonb (pyflows.http's /metrics, or any SQL
-- client such as postgres_exporter): incomplete flows by status; those idle past the active lease
-- (pyflows.active_lease) and the oldest one's idle time; the file-cleanup backlog (pending, failed:
-- pending with an error, the oldest pending entry's age); purges running (flows marked 'deleting')
-- and the oldest one's age; audit events of the last day by action. Ages in seconds, 0 when there is
-- none. Every count reads an index: incomplete flows through the one-incomplete index, the
-- backlog through its pending index, purges and events through migration 0016's.
create or replace function pyflows.admin_metrics()
returns jsonb
language plpgsql
stable
security definer
set search_path = pg_catalog, pyflows, pg_temp
as $$
declare
    v_lease      interval := pyflows._active_lease();
    v_by_status  jsonb;
    v_idle       bigint;
    v_idle_age   double precision;
    v_pending    bigint;
    v_failed     bigint;
    v_queue_age  double precision;
    v_purges     bigint;
    v_purge_age  double precision;
    v_events     jsonb;
    v_global     jsonb;
begin
    perform pyflows._require_admin();
    select coalesce(jsonb_object_agg(s.status, s.n), '{}') into v_by_status
      from (select f.status, count(*) as n from pyflows.discovery_flows as f
             where f.status = any (pyflows._incomplete_statuses())
             group by f.status) as s;
    select count(*), coalesce(extract(epoch from now() - min(f.last_activity_at)), 0) into v_idle, v_idle_age
      from pyflows.discovery_flows as f
     where f.status = any (pyflows._incomplete_statuses()) and f.last_activity_at < now() - v_lease;
    select count(*), count(*) filter (where q.last_error is not null),
           coalesce(extract(epoch from now() - min(q.enqueued_at)), 0)
      into v_pending, v_failed, v_queue_age
      from pyflows.file_cleanup_queue as q
     where q.done_at is null;
    select count(*), coalesce(extract(epoch from now() - min(f.updated_at)), 0) into v_purges, v_purge_age
      from pyflows.discovery_flows as f
     where f.status = 'deleting';
    select coalesce(jsonb_object_agg(s.action, s.n), '{}') into v_events
      from (select e.action, count(*) as n from pyflows_audit.events as e
             where e.occurred_at > now() - interval '1 day' group by e.action) as s;
    select coalesce(jsonb_object_agg(s.action, s.n), '{}') into v_global
      from (select e.action, count(*) as n from pyflows_audit.global_events as e
             where e.occurred_at > now() - interval '1 day' group by e.action) as s;
    return jsonb_build_object(
        'incomplete_flows', v_by_status,
        'idle_flows', v_idle, 'oldest_idle_seconds', v_idle_age, 'active_lease_seconds', extract(epoch from v_lease),
        'file_cleanup_pending', v_pending, 'file_cleanup_failed', v_failed, 'file_cleanup_oldest_seconds', v_queue_age,
        'purges_running', v_purges, 'oldest_purge_seconds', v_purge_age,
        'audit_events_last_day', v_events || v_global);
end;
$$;

revoke all on function pyflows.admin_metrics() from public;
-- Granted to applications on purpose, as the listings are: a non-admin caller gets PF403, not 42501.
grant execute on function pyflows.admin_metrics() to pyflows_app;

-- Audit events of every tenant, newest first, including those of no tenant (audit.prune): what a DBA
-- reads to see who pruned the audit, and what else happened across tenants. p_action narrows to one
-- action.
create or replace function pyflows.admin_list_audit_events(p_since timestamptz default null,
                                                           p_action text default null,
                                                           p_limit integer default 100)
returns table (
    event_id bigint, occurred_at timestamptz, action text, actor text, db_user text, application_name text,
    client_id uuid, engagement_id uuid, flow_id uuid, reason text, forced boolean, deleted jsonb,
    details jsonb)
language plpgsql
stable
security definer
set search_path = pg_catalog, pyflows, pg_temp
as $$
begin
    perform pyflows._require_admin();
    perform pyflows._check_page(p_limit, 0);
    if p_action is not null and p_action not in ('flow.start', 'flow.resume', 'flow.delete', 'flow.purge',
                                                 'flow.restore', 'sql.delete', 'audit.prune') then
        raise exception 'action must be flow.start, flow.resume, flow.delete, flow.purge, flow.restore, sql.delete or audit.prune (got %)',
            quote_literal(left(p_action, 100))
            using errcode = 'PF422';
    end if;
    -- The tenants' events and those of no tenant (pyflows_audit.global_events), each newest first.
    return query
        select u.* from (
            (select e.id, e.occurred_at, e.action, e.actor, e.db_user, e.application_name, e.client_id,
                    e.engagement_id, e.flow_id, e.reason, e.forced, e.deleted, e.details
               from pyflows_audit.events as e
              where (p_since is null or e.occurred_at >= p_since)
                and (p_action is null or e.action = p_action)
              order by e.occurred_at desc, e.id desc
              limit p_limit)
            union all
            (select g.id, g.occurred_at, g.action, g.actor, g.db_user, g.application_name, g.client_id,
                    g.engagement_id, g.flow_id, g.reason, g.forced, g.deleted, g.details
               from pyflows_audit.global_events as g
              where (p_since is null or g.occurred_at >= p_since)
                and (p_action is null or g.action = p_action)
              order by g.occurred_at desc, g.id desc
              limit p_limit)) as u
         order by u.occurred_at desc, u.id desc
         limit p_limit;
end;
$$;

revoke all on function pyflows.admin_list_audit_events(timestamptz, text, integer) from public;
grant execute on function pyflows.admin_list_audit_events(timestamptz, text, integer) to pyflows_app;

-- PF403 unless the logged-in role may create tenants: a member of pyflows_admin, or the role that owns
-- the pyflows schema (the one that runs pyflows migrate).
create or replace function pyflows._require_tenant_admin()
returns void
language plpgsql
stable
security definer
set search_path = pg_catalog, pyflows, pg_temp
as $$
begin
    if not (pg_catalog.pg_has_role(session_user, 'pyflows_admin', 'member')
            or exists (select from pg_catalog.pg_namespace as n
                        where n.nspname = 'pyflows' and n.nspowner = (select r.oid from pg_catalog.pg_roles as r
                                                                       where r.rolname = session_user))) then
        raise exception 'only members of pyflows_admin or the schema owner may add tenants'
            using errcode = 'PF403',
                  detail = json_build_object('role', session_user)::text,
                  hint = 'Ask a DBA to grant pyflows_admin to your login role.';
    end if;
    perform pyflows._require_owner_across_tenants();
end;
$$;

-- A new client (p_client_id, or a new id). Result: {client_id, name, created_at}. PF422 when that id
-- exists or the name is empty.
create or replace function pyflows.add_client(p_name text, p_client_id uuid default null)
returns jsonb
language plpgsql
security definer
set search_path = pg_catalog, pyflows, pg_temp
as $$
declare
    v_row  pyflows.clients;
    v_name text;
    v_wait text;
begin
    perform pyflows._require_tenant_admin();
    v_name := pyflows._check_text(p_name, 'client name');
    v_wait := pyflows._bound_lock_waits();  -- the same id being added by another transaction: wait that long
    begin
        insert into pyflows.clients (id, name)
        values (coalesce(p_client_id, pg_catalog.gen_random_uuid()), v_name)
        on conflict (id) do nothing
        returning * into v_row;
    exception when lock_not_available then
        raise exception 'client % is being added by another transaction', p_client_id
            using errcode = 'PF423', hint = 'Try again in a moment, once that transaction has finished.';
    end;
    perform pyflows._set_local('lock_timeout', v_wait);
    if v_row.id is null then
        raise exception 'client % exists', p_client_id
            using errcode = 'PF422', detail = json_build_object('client_id', p_client_id)::text;
    end if;
    return jsonb_build_object('client_id', v_row.id, 'name', v_row.name, 'created_at', v_row.created_at);
end;
$$;

-- A new engagement of client p_client_id. Result: {client_id, engagement_id, name, created_at}. PF404
-- for a client that does not exist, PF422 when that engagement id exists or the name is empty.
create or replace function pyflows.add_engagement(p_client_id uuid, p_name text, p_engagement_id uuid default null)
returns jsonb
language plpgsql
security definer
set search_path = pg_catalog, pyflows, pg_temp
as $$
declare
    v_row  pyflows.engagements;
    v_name text;
    v_wait text;
begin
    perform pyflows._require_tenant_admin();
    if not exists (select from pyflows.clients as c where c.id = p_client_id) then
        raise exception 'client % not found', p_client_id
            using errcode = 'PF404', detail = json_build_object('client_id', p_client_id)::text;
    end if;
    v_name := pyflows._check_text(p_name, 'engagement name');
    v_wait := pyflows._bound_lock_waits();  -- the client's row (key share) or the same id, held elsewhere
    begin
        insert into pyflows.engagements (client_id, id, name)
        values (p_client_id, coalesce(p_engagement_id, pg_catalog.gen_random_uuid()), v_name)
        on conflict (client_id, id) do nothing
        returning * into v_row;
    exception when lock_not_available then
        raise exception 'engagement % of client % is being added, or its client changed, by another transaction',
            p_engagement_id, p_client_id
            using errcode = 'PF423', hint = 'Try again in a moment, once that transaction has finished.';
    end;
    perform pyflows._set_local('lock_timeout', v_wait);
    if v_row.id is null then
        raise exception 'engagement % of client % exists', p_engagement_id, p_client_id
            using errcode = 'PF422',
                  detail = json_build_object('client_id', p_client_id, 'engagement_id', p_engagement_id)::text;
    end if;
    return jsonb_build_object('client_id', v_row.client_id, 'engagement_id', v_row.id, 'name', v_row.name,
                              'created_at', v_row.created_at);
end;
$$;

-- Every client and engagement, with how many flows each has and how many are incomplete.
create or replace function pyflows.list_tenants()
returns table (client_id uuid, client_name text, engagement_id uuid, engagement_name text, flows bigint,
               incomplete_flows bigint)
language plpgsql
stable
security definer
set search_path = pg_catalog, pyflows, pg_temp
as $$
begin
    perform pyflows._require_tenant_admin();
    return query
        select c.id, c.name, e.id, e.name, count(f.id),
               count(f.id) filter (where f.status = any (pyflows._incomplete_statuses()))
          from pyflows.clients as c
          left join pyflows.engagements as e on e.client_id = c.id
          left join pyflows.discovery_flows as f on f.client_id = e.client_id and f.engagement_id = e.id
         group by c.id, c.name, e.id, e.name
         order by c.name, c.id, e.name, e.id;
end;
$$;

revoke all on function pyflows._require_tenant_admin(), pyflows.add_client(text, uuid),
    pyflows.add_engagement(uuid, text, uuid), pyflows.list_tenants() from public;
-- Granted to applications on purpose: a caller who may not gets PF403 from the function, not 42501.
grant execute on function pyflows._require_tenant_admin(), pyflows.add_client(text, uuid),
    pyflows.add_engagement(uuid, text, uuid), pyflows.list_tenants() to pyflows_app;

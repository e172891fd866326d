-- pyflows sql/040_admin: functions for DBAs (members of pyflows_admin) that look across tenants.
--
-- They are SECURITY DEFINER so that they can read every tenant's rows, which row-level security
-- hides from their callers; that needs the function owner (the role that ran pyflows migrate) to be
-- a superuser or to have BYPASSRLS, and they refuse to answer (PF403) rather than answer for a
-- subset when it is not. The caller is checked by session_user: inside a SECURITY DEFINER function
-- current_user is the owner.

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
    if not exists (select from pg_catalog.pg_roles where rolname = current_user and (rolsuper or rolbypassrls)) then
        raise exception 'the pyflows schema owner % cannot read across tenants', current_user
            using errcode = 'PF403',
                  hint = 'Give the role that runs pyflows migrate BYPASSRLS (ALTER ROLE ... BYPASSRLS).';
    end if;
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

revoke all on function pyflows._require_admin(), pyflows.admin_list_incomplete_flows(interval) from public;
-- Granted to applications on purpose: a non-admin caller gets PF403 from the function, not 42501.
grant execute on function pyflows._require_admin(), pyflows.admin_list_incomplete_flows(interval) to pyflows_app;

-- pyflows 0007: the guard against rows for flows being purged, one function per table shape.
--
-- Migration 0005's trigger function served tables that name their flow (flow_id) and tables that
-- name their import (import_id) with one body, branching on the table's name; each branch referred to
-- a column the other tables lack, so no static check (plpgsql_check, run over every function in CI)
-- could validate it against any one table. Now each shape has its own function; behaviour is unchanged.
-- depends: 0006_events_lookup

-- PF404 for rows written into a flow that is being purged (v_flow), as if it were gone; nothing for NULL.
create function pyflows._refuse_flow_being_purged(p_flow_id uuid)
returns void
language plpgsql
set search_path = pg_catalog, pyflows
as $$
begin
    if p_flow_id is not null then
        raise exception 'flow % not found', p_flow_id
            using errcode = 'PF404',
                  detail = json_build_object('flow_id', p_flow_id, 'status', 'deleting')::text,
                  hint = 'The flow is being purged; its rows are being removed.';
    end if;
end;
$$;

create or replace function pyflows._refuse_rows_for_deleting_flows()
returns trigger
language plpgsql
set search_path = pg_catalog, pyflows
as $$
declare
    v_flow uuid;
begin
    select f.id into v_flow
      from (select distinct n.client_id, n.engagement_id, n.flow_id from new_rows as n) as n
      join pyflows.discovery_flows as f
        on f.client_id = n.client_id and f.engagement_id = n.engagement_id and f.id = n.flow_id
     where f.status = 'deleting'
     limit 1;
    perform pyflows._refuse_flow_being_purged(v_flow);
    return null;
end;
$$;

create function pyflows._refuse_import_rows_for_deleting_flows()
returns trigger
language plpgsql
set search_path = pg_catalog, pyflows
as $$
declare
    v_flow uuid;
begin
    select f.id into v_flow
      from (select distinct n.client_id, n.engagement_id, n.import_id from new_rows as n) as n
      join pyflows.data_imports as i
        on i.client_id = n.client_id and i.engagement_id = n.engagement_id and i.id = n.import_id
      join pyflows.discovery_flows as f
        on f.client_id = i.client_id and f.engagement_id = i.engagement_id and f.id = i.flow_id
     where f.status = 'deleting'
     limit 1;
    perform pyflows._refuse_flow_being_purged(v_flow);
    return null;
end;
$$;

revoke all on function pyflows._refuse_import_rows_for_deleting_flows() from public;
revoke all on function pyflows._refuse_flow_being_purged(uuid) from public;
grant execute on function pyflows._refuse_flow_being_purged(uuid) to pyflows_app;  -- the triggers run as the writer

create or replace trigger refuse_deleting_flow after insert on pyflows.raw_import_records
    referencing new table as new_rows for each statement
    execute function pyflows._refuse_import_rows_for_deleting_flows();
create or replace trigger refuse_deleting_flow after insert on pyflows.import_field_mappings
    referencing new table as new_rows for each statement
    execute function pyflows._refuse_import_rows_for_deleting_flows();

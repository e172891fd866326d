-- pyflows 0007 rollback: one function for both table shapes again, as migration 0005 made it.
create or replace trigger refuse_deleting_flow after insert on pyflows.raw_import_records
    referencing new table as new_rows for each statement execute function pyflows._refuse_rows_for_deleting_flows();
create or replace trigger refuse_deleting_flow after insert on pyflows.import_field_mappings
    referencing new table as new_rows for each statement execute function pyflows._refuse_rows_for_deleting_flows();
drop function pyflows._refuse_import_rows_for_deleting_flows();
create or replace function pyflows._refuse_rows_for_deleting_flows()
returns trigger
language plpgsql
set search_path = pg_catalog, pyflows
as $$
declare
    v_flow uuid;
begin
    if tg_table_name in ('raw_import_records', 'import_field_mappings') then
        select f.id into v_flow
          from (select distinct n.client_id, n.engagement_id, n.import_id from new_rows as n) as n
          join pyflows.data_imports as i
            on i.client_id = n.client_id and i.engagement_id = n.engagement_id and i.id = n.import_id
          join pyflows.discovery_flows as f
            on f.client_id = i.client_id and f.engagement_id = i.engagement_id and f.id = i.flow_id
         where f.status = 'deleting'
         limit 1;
    else
        select f.id into v_flow
          from (select distinct n.client_id, n.engagement_id, n.flow_id from new_rows as n) as n
          join pyflows.discovery_flows as f
            on f.client_id = n.client_id and f.engagement_id = n.engagement_id and f.id = n.flow_id
         where f.status = 'deleting'
         limit 1;
    end if;
    if v_flow is not null then
        raise exception 'flow % not found', v_flow
            using errcode = 'PF404',
                  detail = json_build_object('flow_id', v_flow, 'status', 'deleting')::text,
                  hint = 'The flow is being purged; its rows are being removed.';
    end if;
    return null;
end;
$$;
drop function pyflows._refuse_flow_being_purged(uuid);

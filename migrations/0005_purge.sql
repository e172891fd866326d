-- pyflows 0005: writers cannot add rows to a flow that is being purged (status 'deleting').
--
-- Statement-level AFTER INSERT triggers with a transition table (no row-level triggers on the bulk
-- tables): one join per statement between the new rows and their flows. A writer whose transaction
-- began before the purge marked the flow may still add rows; the purge deletes in batches until none
-- are left, so those are removed too.
-- depends: 0004_audit

create function pyflows._refuse_rows_for_deleting_flows()
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

create trigger refuse_deleting_flow after insert on pyflows.data_imports
    referencing new table as new_rows for each statement execute function pyflows._refuse_rows_for_deleting_flows();
create trigger refuse_deleting_flow after insert on pyflows.raw_import_records
    referencing new table as new_rows for each statement execute function pyflows._refuse_rows_for_deleting_flows();
create trigger refuse_deleting_flow after insert on pyflows.import_field_mappings
    referencing new table as new_rows for each statement execute function pyflows._refuse_rows_for_deleting_flows();
create trigger refuse_deleting_flow after insert on pyflows.assets
    referencing new table as new_rows for each statement execute function pyflows._refuse_rows_for_deleting_flows();
create trigger refuse_deleting_flow after insert on pyflows.asset_dependencies
    referencing new table as new_rows for each statement execute function pyflows._refuse_rows_for_deleting_flows();

revoke all on function pyflows._refuse_rows_for_deleting_flows() from public;

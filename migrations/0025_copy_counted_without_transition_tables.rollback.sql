-- pyflows 0025 rollback: the partitions' statement triggers read the rows COPYed from a transition
-- table again, as migrations 0021 and 0022 made them, and a COPY needs no begin_copy_* call.

drop trigger copy_opened on pyflows.raw_import_records_default;
drop trigger copy_rules on pyflows.raw_import_records_default;
drop trigger copy_opened on pyflows.assets_default;
drop trigger copy_rules on pyflows.assets_default;
alter table pyflows.raw_import_records_default drop constraint raw_import_records_default_within_copy;
alter table pyflows.assets_default drop constraint assets_default_within_copy;
drop function pyflows._copy_statement_begin();
drop function pyflows._copy_statement_end();
drop function pyflows._row_outside_copy(text, uuid);
drop function pyflows._statement_copy_key();

create function pyflows._on_copy_raw_import_records()
returns trigger
language plpgsql
set search_path = pg_catalog, pyflows, pg_temp
as $$
declare
    c_client     constant uuid := pyflows.current_client_id();
    c_engagement constant uuid := pyflows.current_engagement_id();
    r            record;
begin
    for r in select n.import_id, count(*) as n from new_rows as n group by n.import_id loop
        perform pyflows._refuse_flow_being_purged(
            (select f.id from pyflows.data_imports as i
               join pyflows.discovery_flows as f
                 on f.client_id = i.client_id and f.engagement_id = i.engagement_id and f.id = i.flow_id
              where i.client_id = c_client and i.engagement_id = c_engagement and i.id = r.import_id
                and f.status = 'deleting'));
        update pyflows.data_imports as i set record_count = i.record_count + r.n, updated_at = now()
         where i.client_id = c_client and i.engagement_id = c_engagement and i.id = r.import_id;
    end loop;
    update pyflows.discovery_flows as f set last_activity_at = now()
     where f.client_id = c_client and f.engagement_id = c_engagement
       and f.id in (select i.flow_id from pyflows.data_imports as i
                     where i.client_id = c_client and i.engagement_id = c_engagement
                       and i.id in (select n.import_id from new_rows as n));
    return null;
end;
$$;

revoke all on function pyflows._on_copy_raw_import_records() from public;

create trigger copy_rules after insert on pyflows.raw_import_records_default
    referencing new table as new_rows
    for each statement execute function pyflows._on_copy_raw_import_records();
create trigger copy_rules after insert on pyflows.assets_default
    referencing new table as new_rows
    for each statement execute function pyflows._refuse_rows_for_deleting_flows();

-- pyflows 0020 rollback: the trigger generator sums up a hand-written DELETE's rows as migration 0018
-- made it (count(distinct …) and min(… ::text) over every row), every delete trigger made again, and
-- the helper that replaced the passage dropped.

do $migration$
declare
    c_old constant text := $new$
            -- The statement's engagement and flow from its first row; counted (which sorts every
            -- row) only when a row differs.
            select t.e, t.f into v_engagement, v_flow_id
              from (select %2$s, %3$s from old_rows as t) as t(c, e, f)
             where t.c = v_client limit 1;
            if exists (select from (select %2$s, %3$s from old_rows as t) as t(c, e, f)
                        where t.c = v_client
                          and (t.e is distinct from v_engagement or t.f is distinct from v_flow_id)) then
                select count(distinct t.e), min(t.e::text)::uuid, count(distinct t.f), min(t.f::text)::uuid
                  into v_tenants, v_engagement, v_flow_count, v_flow_id
                  from (select %2$s, %3$s from old_rows as t) as t(c, e, f)
                 where t.c = v_client;
            else
                v_tenants := case when v_engagement is null then 0 else 1 end;
                v_flow_count := case when v_flow_id is null then 0 else 1 end;
            end if;
            v_event := pyflows_audit._statement_event($new$;
    c_new constant text := $old$
            select count(distinct t.e), min(t.e::text)::uuid, count(distinct t.f), min(t.f::text)::uuid
              into v_tenants, v_engagement, v_flow_count, v_flow_id
              from (select %2$s, %3$s from old_rows as t) as t(c, e, f)
             where t.c = v_client;
            v_event := pyflows_audit._statement_event($old$;
begin
    perform pyflows_audit._replace_in_function('pyflows_audit._create_delete_trigger(text)', c_old, c_new);
    perform pyflows_audit._create_delete_trigger(t)
       from unnest(array['clients', 'engagements', 'discovery_flows', 'data_imports', 'raw_import_records',
                         'import_field_mappings', 'assets', 'asset_dependencies']) as t;
end;
$migration$;

drop function pyflows_audit._replace_in_function(regprocedure, text, text);

-- pyflows 0023 rollback: the partitions' tenant CHECK constraints read the context once a row again.

create or replace function pyflows._check_partition_tenant(p_partition regclass)
returns void
language plpgsql
set search_path = pg_catalog, pyflows, pg_temp
as $$
begin
    execute pg_catalog.format(
        'alter table %s add constraint %I
             check ((client_id = pyflows.current_client_id() and engagement_id = pyflows.current_engagement_id())
                    or pyflows._row_of_another_tenant(client_id, engagement_id)) not valid',
        p_partition, (select c.relname from pg_catalog.pg_class as c where c.oid = p_partition) || '_tenant');
end;
$$;

do $$ begin perform pyflows._renew_partition_tenant_checks(); end $$;
drop function pyflows._renew_partition_tenant_checks();
drop function pyflows._statement_engagement_id();
drop function pyflows._statement_client_id();

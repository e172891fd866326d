-- pyflows 0023: the tenant check of the partitions that take COPY (the CHECK constraints
-- <partition>_tenant, migration 0021) reads the tenant context once a statement, not once a row.
-- Before, each row read both settings and parsed them as uuids (about 9,000 instructions a row, a
-- tenth of a raw record's COPY); now it compares the row with two constants. What it refuses is
-- unchanged: a row that is not the context's goes to _row_of_another_tenant, which raises PF401 or
-- PF403 (or lets a superuser's row through), before any key has seen the row.
-- depends: 0022_assets_copy_partition

-- The context's client and engagement, for the partitions' tenant CHECK constraints only. Marked
-- IMMUTABLE on purpose: PostgreSQL prepares a table's CHECK constraints for each statement's
-- executor and, as it does, folds a call of an immutable function without arguments into its value;
-- so each statement reads the context once, when its first row is checked, and a later statement
-- reads it again. Anywhere else that folding would be wrong (a plan cached across statements would
-- keep one tenant), so nothing else calls them: tests/test_schema.py fails if a function, view or
-- policy does, or if a CHECK that does is validated (a validated CHECK is one the planner reasons
-- with; these stay NOT VALID).
create function pyflows._statement_client_id()
returns uuid
language sql
immutable
set search_path = pg_catalog, pyflows, pg_temp
as $$ select pyflows.current_client_id() $$;

create function pyflows._statement_engagement_id()
returns uuid
language sql
immutable
set search_path = pg_catalog, pyflows, pg_temp
as $$ select pyflows.current_engagement_id() $$;

revoke all on function pyflows._statement_client_id(), pyflows._statement_engagement_id() from public;
-- The CHECK constraints call them as the inserting role, which PostgreSQL requires may execute them.
-- They answer what current_client_id() and current_engagement_id() answer.
grant execute on function pyflows._statement_client_id(), pyflows._statement_engagement_id() to pyflows_app;

-- coalesce(nullif(...)) rather than OR: the same outcome (a row of the context passes, any other row,
-- or any row without a context, is _row_of_another_tenant's to refuse), and the cheaper to evaluate
-- of the two, counted in instructions (a raw record's COPY: 0.96x the keys-only table against 1.03x).
create or replace function pyflows._check_partition_tenant(p_partition regclass)
returns void
language plpgsql
set search_path = pg_catalog, pyflows, pg_temp
as $$
begin
    execute pg_catalog.format(
        'alter table %s add constraint %I
             check (coalesce(nullif(client_id = pyflows._statement_client_id()
                                    and engagement_id = pyflows._statement_engagement_id(), false),
                             pyflows._row_of_another_tenant(client_id, engagement_id))) not valid',
        p_partition, (select c.relname from pg_catalog.pg_class as c where c.oid = p_partition) || '_tenant');
end;
$$;

-- Every partition's tenant CHECK (as _check_partition_tenant named it) is made again in the new form.
create function pyflows._renew_partition_tenant_checks()
returns void
language plpgsql
set search_path = pg_catalog, pyflows, pg_temp
as $$
declare
    r record;
begin
    for r in select k.conrelid::regclass as partition, k.conname
               from pg_catalog.pg_constraint as k
               join pg_catalog.pg_class as c on c.oid = k.conrelid
              where k.contype = 'c' and c.relnamespace = 'pyflows'::regnamespace and c.relispartition
                and k.conname = c.relname || '_tenant'
              order by 1 loop
        execute pg_catalog.format('alter table %s drop constraint %I', r.partition, r.conname);
        perform pyflows._check_partition_tenant(r.partition);
    end loop;
end;
$$;

revoke all on function pyflows._renew_partition_tenant_checks() from public;

do $$ begin perform pyflows._renew_partition_tenant_checks(); end $$;

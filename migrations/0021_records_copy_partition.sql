-- pyflows 0021: raw records take COPY. pyflows.raw_import_records becomes a partitioned table whose one
-- partition, pyflows.raw_import_records_default, takes COPY from the application login.
--
-- PostgreSQL refuses COPY FROM into a table with row-level security, and checks only the table the
-- COPY names. So the table keeps its name, columns, keys, foreign key, policies and triggers on a new
-- partitioned parent (by list of client_id, with the old table as its DEFAULT partition: every row
-- stays where it is), through which every read, update and delete goes, under the policies as
-- before. The partition has no row-level security; pyflows_app may only INSERT into it (and COPY,
-- which is an insert). It checks what the policies' WITH CHECK would have: a CHECK constraint,
-- which calls a function only for a row that is not the context's, refuses it before any key sees
-- it (PF401 without a context, PF403 in another), but for the roles row-level security lets through
-- (superusers, BYPASSRLS); a statement trigger refuses rows of an
-- import whose flow is being deleted (PF404, as through the parent) and adds the rows to their
-- imports' record_count (and marks their flows active), so that record_count is true after every
-- COPY. Inserts through the
-- parent fire the parent's triggers only, as before.
--
-- The id: PostgreSQL 15 fills an identity column only for rows routed through the parent, so the
-- partition's id defaults to the parent's identity sequence (the sequence continues where the old
-- one stood).
--
-- The conversion is written once, as pyflows._partition_for_copy(table) (and its inverse for the
-- rollback, pyflows._unpartition(table)), reading the table's keys, indexes, triggers, policies and
-- grants from the catalog (_table_rules), so that the next table converted is converted the same way.
-- depends: 0020_statement_summary_without_sorting

-- What a pyflows table's readers and writers meet, read from the catalog: {keys: [{conname, contype,
-- def}] (primary key first), indexes: [{name, def}] (those of no key; def from USING on), triggers:
-- [{def}], policies: [{def}] (each a CREATE POLICY on the table), referenced_by: [{table, conname,
-- def}] (the foreign keys of other tables that reference it), grants: [{grantee, privilege}] (but the
-- owner's)}. Statements in the table's own name, so they make the same on another table once it
-- has taken that name.
create function pyflows._table_rules(p_table regclass)
returns jsonb
language sql
stable
set search_path = pg_catalog, pyflows, pg_temp
as $$
    select jsonb_build_object(
        'keys', (select coalesce(jsonb_agg(jsonb_build_object('conname', c.conname, 'contype', c.contype,
                                                              'def', pg_catalog.pg_get_constraintdef(c.oid))
                                           order by c.contype <> 'p', c.conname), '[]')
                   from pg_catalog.pg_constraint as c
                  where c.conrelid = p_table and c.contype in ('p', 'u', 'f', 'c')),
        'indexes', (select coalesce(jsonb_agg(jsonb_build_object(
                                       'name', i.relname,
                                       'def', substring(pg_catalog.pg_get_indexdef(x.indexrelid) from ' USING .*$'))
                                     order by i.relname), '[]')
                      from pg_catalog.pg_index as x
                      join pg_catalog.pg_class as i on i.oid = x.indexrelid
                     where x.indrelid = p_table
                       and not exists (select from pg_catalog.pg_constraint as c
                                        where c.conindid = x.indexrelid and c.conrelid = p_table)),
        'triggers', (select coalesce(jsonb_agg(jsonb_build_object('def', pg_catalog.pg_get_triggerdef(t.oid))
                                               order by t.tgname), '[]')
                       from pg_catalog.pg_trigger as t where t.tgrelid = p_table and not t.tgisinternal),
        'policies', (select coalesce(jsonb_agg(jsonb_build_object('def', pg_catalog.format(
                         'create policy %I on %s as %s for %s to %s%s%s', p.polname, p_table,
                         case when p.polpermissive then 'permissive' else 'restrictive' end,
                         case p.polcmd when 'r' then 'select' when 'a' then 'insert' when 'w' then 'update'
                                       when 'd' then 'delete' else 'all' end,
                         case when 0 = any (p.polroles) then 'public'
                              else (select string_agg(quote_ident(o.rolname), ', ') from pg_catalog.pg_roles as o
                                     where o.oid = any (p.polroles)) end,
                         ' using (' || pg_catalog.pg_get_expr(p.polqual, p.polrelid) || ')',
                         ' with check (' || pg_catalog.pg_get_expr(p.polwithcheck, p.polrelid) || ')'))
                                               order by p.polname), '[]')
                       from pg_catalog.pg_policy as p where p.polrelid = p_table),
        'referenced_by', (select coalesce(jsonb_agg(jsonb_build_object(
                                     'table', c.conrelid::regclass::text, 'conname', c.conname,
                                     'def', pg_catalog.pg_get_constraintdef(c.oid))
                                   order by c.conrelid::regclass::text, c.conname), '[]')
                            from pg_catalog.pg_constraint as c
                           where c.confrelid = p_table and c.contype = 'f' and c.conparentid = 0),
        'grants', (select coalesce(jsonb_agg(jsonb_build_object('grantee', pg_catalog.pg_get_userbyid(a.grantee),
                                                                'privilege', a.privilege_type)
                                             order by a.grantee, a.privilege_type), '[]')
                     from pg_catalog.pg_class as c, pg_catalog.aclexplode(c.relacl) as a
                    where c.oid = p_table and a.grantee <> c.relowner))
$$;

-- Puts back on the table named p_name what _table_rules read: row-level security (enabled and
-- forced) with the policies, the triggers and the grants.
create function pyflows._restore_table_rules(p_name text, p_rules jsonb)
returns void
language plpgsql
set search_path = pg_catalog, pyflows, pg_temp
as $$
declare
    r record;
begin
    execute pg_catalog.format('alter table pyflows.%I enable row level security, force row level security', p_name);
    for r in select x.def from jsonb_to_recordset((p_rules -> 'policies') || (p_rules -> 'triggers')) as x(def text)
    loop
        execute r.def;
    end loop;
    for r in select x.grantee, x.privilege
               from jsonb_to_recordset(p_rules -> 'grants') as x(grantee text, privilege text) loop
        execute pg_catalog.format('grant %s on pyflows.%I to %I', r.privilege, p_name, r.grantee);
    end loop;
end;
$$;

-- Drops (p_add false) or adds again (p_add true) the foreign keys that _table_rules found referencing a
-- table (p_rules -> 'referenced_by'); added again, they reference whatever table has that name then.
create function pyflows._referencing_keys(p_rules jsonb, p_add boolean)
returns void
language plpgsql
set search_path = pg_catalog, pyflows, pg_temp
as $$
declare
    r record;
begin
    for r in select x."table" as referencing, x.conname, x.def
               from jsonb_to_recordset(p_rules -> 'referenced_by') as x("table" text, conname text, def text) loop
        if p_add then
            execute pg_catalog.format('alter table %s add constraint %I %s', r.referencing, r.conname, r.def);
        else
            execute pg_catalog.format('alter table %s drop constraint %I', r.referencing, r.conname);
        end if;
    end loop;
end;
$$;

-- Makes p_table (pyflows.<name>, a plain table with a bigint identity id and a client_id) the DEFAULT
-- partition <name>_default of a new table named p_table, partitioned by list (client_id), which takes
-- its rules (_table_rules), the foreign keys that reference it, and its keys (each with its name; the
-- partition's keys and indexes are renamed <name>_default_...). The partition keeps its rows, indexes
-- and check constraints, loses row-level security and every grant, and gets INSERT for pyflows_app
-- and a refuse_truncate trigger.
create function pyflows._partition_for_copy(p_table regclass)
returns regclass
language plpgsql
set search_path = pg_catalog, pyflows, pg_temp
as $$
declare
    v_name   text;
    v_part   text;
    v_seq    regclass := pg_catalog.pg_get_serial_sequence(p_table::text, 'id')::regclass;
    v_rules  jsonb := pyflows._table_rules(p_table);
    v_last   bigint;
    v_called boolean;
    r        record;
begin
    select c.relname into v_name from pg_catalog.pg_class as c
     where c.oid = p_table and c.relnamespace = 'pyflows'::regnamespace and c.relkind = 'r';
    if v_name is null or v_seq is null then
        raise exception '% is not a plain pyflows table with an identity id', p_table using errcode = 'PF422';
    end if;
    v_part := v_name || '_default';
    execute pg_catalog.format('select last_value, is_called from %s', v_seq) into v_last, v_called;

    -- The old table becomes the partition: its own names out of the way, nothing but rows and checks
    -- (and no foreign key of another table pointing at it: they will point at the parent).
    perform pyflows._referencing_keys(v_rules, false);
    execute pg_catalog.format('alter table pyflows.%I rename to %I', v_name, v_part);
    for r in select x.conname from jsonb_to_recordset(v_rules -> 'keys') as x(conname text, contype text)
              where x.contype in ('p', 'u') loop
        execute pg_catalog.format('alter table pyflows.%I rename constraint %I to %I', v_part, r.conname,
                                  v_part || substr(r.conname, length(v_name) + 1));
    end loop;
    for r in select x.name from jsonb_to_recordset(v_rules -> 'indexes') as x(name text) loop
        execute pg_catalog.format('alter index pyflows.%I rename to %I', r.name,
                                  v_part || substr(r.name, length(v_name) + 1));
    end loop;
    for r in select t.tgname from pg_catalog.pg_trigger as t where t.tgrelid = p_table and not t.tgisinternal loop
        execute pg_catalog.format('drop trigger %I on pyflows.%I', r.tgname, v_part);
    end loop;
    for r in select p.polname from pg_catalog.pg_policy as p where p.polrelid = p_table loop
        execute pg_catalog.format('drop policy %I on pyflows.%I', r.polname, v_part);
    end loop;
    execute pg_catalog.format('alter table pyflows.%I no force row level security, disable row level security',
                              v_part);
    for r in select distinct x.grantee from jsonb_to_recordset(v_rules -> 'grants') as x(grantee text) loop
        execute pg_catalog.format('revoke all on pyflows.%I from %I', v_part, r.grantee);
    end loop;
    execute pg_catalog.format('alter table pyflows.%I alter column id drop identity', v_part);

    -- The parent, with the old table's name and everything a reader or writer meets.
    execute pg_catalog.format('create table pyflows.%I (like pyflows.%I including defaults)
                                   partition by list (client_id)', v_name, v_part);
    execute pg_catalog.format('alter table pyflows.%I alter column id add generated by default as identity', v_name);
    v_seq := pg_catalog.pg_get_serial_sequence(pg_catalog.format('pyflows.%I', v_name), 'id')::regclass;
    perform pg_catalog.setval(v_seq, v_last, v_called);
    execute pg_catalog.format('alter table pyflows.%I alter column id set default pg_catalog.nextval(%L::regclass)',
                              v_part, v_seq);
    for r in select x.conname, x.def from jsonb_to_recordset(v_rules -> 'keys') as x(conname text, def text) loop
        execute pg_catalog.format('alter table pyflows.%I add constraint %I %s', v_name, r.conname, r.def);
    end loop;
    for r in select x.name, x.def from jsonb_to_recordset(v_rules -> 'indexes') as x(name text, def text) loop
        execute pg_catalog.format('create index %I on pyflows.%I %s', r.name, v_name, r.def);
    end loop;
    perform pyflows._restore_table_rules(v_name, v_rules);
    execute pg_catalog.format('alter table pyflows.%I attach partition pyflows.%I default', v_name, v_part);
    perform pyflows._referencing_keys(v_rules, true);

    -- What the partition keeps for itself: an INSERT (or COPY) by the application, checked by trigger.
    execute pg_catalog.format('grant insert on pyflows.%I to pyflows_app', v_part);
    execute pg_catalog.format('grant usage on sequence %s to pyflows_app', v_seq);
    execute pg_catalog.format('create trigger refuse_truncate before truncate on pyflows.%I
                                   for each statement execute function pyflows_audit._refuse_truncate()', v_part);
    return pg_catalog.format('pyflows.%I', v_part)::regclass;
end;
$$;

-- The inverse of _partition_for_copy: p_table (a partitioned pyflows table) gives way to its DEFAULT
-- partition, which takes back its name, keys, rules and identity.
create function pyflows._unpartition(p_table regclass)
returns regclass
language plpgsql
set search_path = pg_catalog, pyflows, pg_temp
as $$
declare
    v_name   text;
    v_part   text;
    v_seq    regclass := pg_catalog.pg_get_serial_sequence(p_table::text, 'id')::regclass;
    v_rules  jsonb := pyflows._table_rules(p_table);
    v_last   bigint;
    v_called boolean;
    r        record;
begin
    select c.relname into v_name from pg_catalog.pg_class as c
     where c.oid = p_table and c.relnamespace = 'pyflows'::regnamespace and c.relkind = 'p';
    v_part := v_name || '_default';
    if v_name is null or v_seq is null or pg_catalog.to_regclass(pg_catalog.format('pyflows.%I', v_part)) is null then
        raise exception '% is not a partitioned pyflows table with a default partition', p_table
            using errcode = 'PF422';
    end if;
    execute pg_catalog.format('select last_value, is_called from %s', v_seq) into v_last, v_called;
    perform pyflows._referencing_keys(v_rules, false);
    execute pg_catalog.format('alter table pyflows.%I detach partition pyflows.%I', v_name, v_part);
    execute pg_catalog.format('alter table pyflows.%I alter column id drop default', v_part);
    execute pg_catalog.format('drop table pyflows.%I', v_name);
    execute pg_catalog.format('drop trigger refuse_truncate on pyflows.%I', v_part);
    execute pg_catalog.format('revoke all on pyflows.%I from pyflows_app', v_part);
    execute pg_catalog.format('alter table pyflows.%I rename to %I', v_part, v_name);
    -- Detached, the partition keeps the keys and indexes it had as the parent's: their names go back.
    for r in select x.conname from jsonb_to_recordset(v_rules -> 'keys') as x(conname text, contype text)
              where x.contype in ('p', 'u') loop
        execute pg_catalog.format('alter table pyflows.%I rename constraint %I to %I', v_name,
                                  v_part || substr(r.conname, length(v_name) + 1), r.conname);
    end loop;
    for r in select x.name from jsonb_to_recordset(v_rules -> 'indexes') as x(name text) loop
        execute pg_catalog.format('alter index pyflows.%I rename to %I',
                                  v_part || substr(r.name, length(v_name) + 1), r.name);
    end loop;
    execute pg_catalog.format('alter table pyflows.%I alter column id add generated by default as identity', v_name);
    perform pg_catalog.setval(pg_catalog.pg_get_serial_sequence(pg_catalog.format('pyflows.%I', v_name), 'id'),
                              v_last, v_called);
    perform pyflows._restore_table_rules(v_name, v_rules);
    perform pyflows._referencing_keys(v_rules, true);
    return pg_catalog.format('pyflows.%I', v_name)::regclass;
end;
$$;

revoke all on function pyflows._table_rules(regclass), pyflows._restore_table_rules(text, jsonb),
    pyflows._referencing_keys(jsonb, boolean),
    pyflows._partition_for_copy(regclass), pyflows._unpartition(regclass) from public;

-- The check of a row written into a partition that has no row-level security (straight, or routed
-- through its parent), whose client and engagement are not the context's: each partition's CHECK
-- constraint <partition>_tenant calls it only for such a row (it compares first: a row of the
-- context costs no call). It refuses the row as the parent's policies' WITH CHECK would, before any
-- key or index has seen it (so that no uniqueness or foreign-key error can tell another tenant's
-- rows exist): PF401 without a context, PF403 in another; but it lets the row through for a role that
-- row-level security would not check either (a superuser or a BYPASSRLS role: an operator's repair,
-- a dump restored, the tests' fixtures). A CHECK constraint and not a row trigger: COPY inserts a
-- page of rows at once only into a table without BEFORE ROW triggers.
create function pyflows._row_of_another_tenant(p_client_id uuid, p_engagement_id uuid)
returns boolean
language plpgsql
stable
set search_path = pg_catalog, pyflows, pg_temp
as $$
begin
    if exists (select from pg_catalog.pg_roles as r
                where r.rolname = current_user and (r.rolsuper or r.rolbypassrls)) then
        return true;
    end if;
    if pyflows.current_client_id() is null or pyflows.current_engagement_id() is null then
        raise exception 'no tenant context: call pyflows.set_context first' using errcode = 'PF401';
    end if;
    raise exception 'a row of another tenant cannot be written in this context'
        using errcode = 'PF403',
              detail = json_build_object('client_id', p_client_id, 'engagement_id', p_engagement_id)::text;
end;
$$;

-- Adds to the partition p_partition its CHECK constraint <partition>_tenant (above), NOT VALID: the
-- rows already there were checked by the policies when they were written.
create function pyflows._check_partition_tenant(p_partition regclass)
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

-- The rows COPYed into pyflows.raw_import_records_default (each the context's, by the trigger above),
-- checked as the parent's triggers check an insert, and counted into their imports' record_count.
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

revoke all on function pyflows._row_of_another_tenant(uuid, uuid), pyflows._check_partition_tenant(regclass),
    pyflows._on_copy_raw_import_records() from public;
-- The partitions' CHECK constraints call it as the inserting role, which PostgreSQL requires may
-- execute it (even when the comparison before it spares the call). It reveals nothing: it refuses,
-- or lets a role through that row-level security lets through.
grant execute on function pyflows._row_of_another_tenant(uuid, uuid) to pyflows_app;

do $$ begin perform pyflows._check_partition_tenant(pyflows._partition_for_copy('pyflows.raw_import_records')); end $$;
create trigger copy_rules after insert on pyflows.raw_import_records_default
    referencing new table as new_rows
    for each statement execute function pyflows._on_copy_raw_import_records();

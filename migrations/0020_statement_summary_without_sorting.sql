-- pyflows 0020: a hand-written DELETE's audit event is summed up without sorting the deleted rows.
--
-- A delete trigger that finds no API event open (a DELETE written by hand) records the statement
-- under a sql.delete event naming the engagement when the statement's rows have one, the flow when
-- they have one, and how many engagements they span (details.tenants). Each trigger found those with
-- count(distinct …) and min(… ::text) over its rows, which sorts every row of every table the
-- statement reaches: counted in instructions on a 20,000-asset flow (bench/instructions.py), a raw
-- audited DELETE cost 3,008 M where the unaudited cascade costs 2,063 M (1.46x) and delete_flow
-- 2,683 M (1.30x). Now the first row's engagement and flow are taken, and one scan looks for a row
-- that differs; only then are they counted as before. The event records exactly what it recorded.
--
-- The change is made in the trigger generator of migration 0018, in its text: the block below must
-- be found there exactly once, or the migration stops. Every trigger function is then made again.
-- depends: 0019_chunks_by_one_key

-- Makes a function again with one passage of its definition replaced: for a migration that changes a
-- step of a generator without restating the rest. Refuses unless the passage is found exactly once.
create or replace function pyflows_audit._replace_in_function(p_function regprocedure, p_old text, p_new text)
returns void
language plpgsql
set search_path = pg_catalog, pyflows_audit, pg_temp
as $$
declare
    v_definition text := pg_catalog.pg_get_functiondef(p_function);
    v_found      integer;
begin
    if coalesce(p_old, '') = '' or p_new is null then
        raise exception 'nothing to replace in %', p_function using errcode = 'PF422';
    end if;
    v_found := (pg_catalog.length(v_definition)
                - pg_catalog.length(pg_catalog.replace(v_definition, p_old, ''))) / pg_catalog.length(p_old);
    if v_found <> 1 then
        raise exception '% holds the passage to replace % times, not once', p_function, v_found
            using errcode = 'PF422', detail = p_old;
    end if;
    execute pg_catalog.replace(v_definition, p_old, p_new);
end;
$$;
revoke all on function pyflows_audit._replace_in_function(regprocedure, text, text) from public;

do $migration$
declare
    c_old constant text := $old$
            select count(distinct t.e), min(t.e::text)::uuid, count(distinct t.f), min(t.f::text)::uuid
              into v_tenants, v_engagement, v_flow_count, v_flow_id
              from (select %2$s, %3$s from old_rows as t) as t(c, e, f)
             where t.c = v_client;
            v_event := pyflows_audit._statement_event($old$;
    c_new constant text := $new$
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
begin
    perform pyflows_audit._replace_in_function('pyflows_audit._create_delete_trigger(text)', c_old, c_new);
    perform pyflows_audit._create_delete_trigger(t)
       from unnest(array['clients', 'engagements', 'discovery_flows', 'data_imports', 'raw_import_records',
                         'import_field_mappings', 'assets', 'asset_dependencies']) as t;
end;
$migration$;

-- pyflows 0019 rollback: the chunk query as migration 0015 made it (the event, "is it large" and the
-- chunk number as keys), and every delete trigger made again with it.

-- The query of the chunks that archive rows under their events: (event id, row count, rows) per
-- chunk; p_rows is a query of (event id, the row as pyflows_audit.<p_table>_row, its id), p_events
-- 'one' when every row has the same event, 'many' otherwise. Chunks as migration 0009 made them.
create or replace function pyflows_audit._chunk_query(p_table text, p_rows text, p_events text)
returns text
language sql
stable
set search_path = pg_catalog, pyflows_audit, pg_temp
as $$
    select format(
        'select s.ev, count(*), array_agg(s.r) from (%s) as s group by s.ev, s.big, s.n',
        case when exists (select from pg_catalog.pg_attribute as a
                           where a.attrelid = pg_catalog.to_regclass('pyflows.' || quote_ident(p_table))
                             and a.attname = 'id' and a.atttypid = 'bigint'::regtype)
             then format('select t.ev, t.r, pg_catalog.pg_column_size(t.r) > 16384 as big,
                                 case when pg_catalog.pg_column_size(t.r) > 16384 then t.id else t.id / 10000 end as n
                            from (%s offset 0) as t(ev, r, id)', p_rows)
             else format('select t.ev, t.r, false as big,
                                 sum(pg_catalog.pg_column_size(t.r)) over (%s rows unbounded preceding)
                                   / 8388608 as n
                            from (%s) as t(ev, r, id)',
                         case when p_events = 'many' then 'partition by t.ev' else '' end, p_rows)
        end)
$$;


do $$
begin
    perform pyflows_audit._create_delete_trigger(t)
       from unnest(array['clients', 'engagements', 'discovery_flows', 'data_imports', 'raw_import_records',
                         'import_field_mappings', 'assets', 'asset_dependencies']) as t;
end;
$$;

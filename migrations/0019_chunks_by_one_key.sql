-- pyflows 0019: the archive's chunks of the bulk tables are grouped by one key, each row measured once.
--
-- A delete trigger groups its rows into chunks (migration 0009's layout, unchanged): for a table with a
-- bigint id (raw records, mappings, assets, dependency edges) a chunk per block of 10,000 ids, and a
-- row larger than 16 kB in a chunk of its own. The chunk query measured each row's size twice
-- (pg_column_size, once for "is it large", once for its chunk number) and grouped by three keys (the
-- event, "is it large", the chunk number). Now each row's chunk number is computed once: -1 - id for a
-- large row, id / 10,000 otherwise, which never meet while ids are not negative (ids come from the
-- tables' identities); should a negative id meet a block's number, its large row only shares that
-- block's chunk. Counted in instructions (callgrind, a 20,000-asset flow of 80,004 rows), delete_flow
-- costs 17 M fewer (2,703 M -> 2,686 M; the unaudited cascade 2,079 M: 1.30x -> 1.29x). What is
-- archived, and how it reads, does not change; every trigger function is made again with the new query.
-- depends: 0018_lighter_audit_per_delete

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
        'select s.ev, count(*), array_agg(s.r) from (%s) as s group by s.ev, s.n',
        case when exists (select from pg_catalog.pg_attribute as a
                           where a.attrelid = pg_catalog.to_regclass('pyflows.' || quote_ident(p_table))
                             and a.attname = 'id' and a.atttypid = 'bigint'::regtype)
             then format('select t.ev, t.r,
                                 case when pg_catalog.pg_column_size(t.r) > 16384 then -1 - t.id
                                      else t.id / 10000 end as n
                            from (%s offset 0) as t(ev, r, id)', p_rows)
             else format('select t.ev, t.r,
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

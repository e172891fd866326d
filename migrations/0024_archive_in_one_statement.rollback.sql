-- pyflows 0024 rollback: the delete triggers archive every statement's rows through the chunk loop,
-- every delete trigger made again, and _archive_statement as migration 0015 made it.

do $migration$
begin
    perform pyflows_audit._replace_in_function('pyflows_audit._create_delete_trigger(text)', $new$
        if v_event is not null and v_insert is null and cardinality(v_clients) = 1 then
            -- Every row is this client's and goes under this one event: one INSERT of every chunk.
            %13$s into v_rows;
        elsif v_event is not null then
            for v_chunk_event, v_chunk_count, v_chunk in %5$s loop$new$, $old$
        if v_event is not null then
            for v_chunk_event, v_chunk_count, v_chunk in %5$s loop$old$);
    perform pyflows_audit._replace_in_function('pyflows_audit._create_delete_trigger(text)', $new$
            and a.attname = 'id'),
        pyflows_audit._archive_statement(p_table, 'old_rows', 'v_event'));$new$, $old$
            and a.attname = 'id'));$old$);
end;
$migration$;

drop function pyflows_audit._archive_statement(text, text, text);

create function pyflows_audit._archive_statement(p_table text, p_source text)
returns text
language sql
stable
set search_path = pg_catalog, pyflows_audit, pg_temp
as $$
    select format(
        'with chunk as (
             insert into pyflows_audit.%1$I (client_id, event_id, row_count, rows)
             select (q.rows[1]).%2$I, q.ev, q.n, q.rows from (%3$s) as q(ev, n, rows)
             returning row_count)
         select coalesce(sum(chunk.row_count), 0) from chunk',
        p_table || '_chunks', case p_table when 'clients' then 'id' else 'client_id' end,
        pyflows_audit._chunk_query(
            p_table,
            format('select $1::bigint, row(o.*)::pyflows_audit.%I, o.id from %s as o', p_table || '_row', p_source),
            'one'))
$$;

revoke all on function pyflows_audit._archive_statement(text, text) from public;

do $migration$
begin
    perform pyflows_audit._create_delete_trigger(t)
       from unnest(array['clients', 'engagements', 'discovery_flows', 'data_imports', 'raw_import_records',
                         'import_field_mappings', 'assets', 'asset_dependencies']) as t;
end;
$migration$;

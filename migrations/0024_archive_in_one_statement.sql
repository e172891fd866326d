-- pyflows 0024: a delete trigger archives one client's rows under one event with one INSERT.
--
-- Every API delete (delete_flow, a purge batch) and most hand-written ones delete one client's rows
-- under one event. The trigger read them through a cursor (a FOR loop over the chunks) that kept
-- each chunk of up to 10,000 rows in a plpgsql variable before inserting it, and checked every row's
-- client against the one it had just found to be the only one. Now, when the statement's rows are
-- one client's, its event is known and the archive is on this node, the trigger runs the archive
-- statement itself (_archive_statement: one INSERT ... SELECT of every chunk, which bench/ already
-- timed as "archive only"): counted in instructions on a 20,000-asset flow (bench/instructions.py),
-- delete_flow 2,678 M → 2,634 M and a hand-written audited DELETE of the flow 2,653 M → 2,603 M (the
-- unaudited cascade: 2,071 M). Several clients, several events (delete_flows) and a Citus shard
-- (whose archive is named by _chunk_insert) keep the loop. The rows archived are the same.
--
-- _archive_statement takes the expression that names the event (default $1, as before). The change
-- to the trigger generator is made in its text: each passage below must be found there exactly once,
-- or the migration stops. Every trigger function is then made again.
-- depends: 0023_tenant_check_once_a_statement

drop function pyflows_audit._archive_statement(text, text);

-- The statement that archives the rows of p_source (a relation or a parenthesized query with the
-- columns of pyflows.<p_table>, all of one client) under the event p_event (an expression: $1 by
-- default, v_event in a delete trigger) and returns how many it archived.
create function pyflows_audit._archive_statement(p_table text, p_source text, p_event text default '$1')
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
            format('select (%s)::bigint, row(o.*)::pyflows_audit.%I, o.id from %s as o',
                   p_event, p_table || '_row', p_source),
            'one'))
$$;

revoke all on function pyflows_audit._archive_statement(text, text, text) from public;

do $migration$
begin
    perform pyflows_audit._replace_in_function('pyflows_audit._create_delete_trigger(text)', $old$
        if v_event is not null then
            for v_chunk_event, v_chunk_count, v_chunk in %5$s loop$old$, $new$
        if v_event is not null and v_insert is null and cardinality(v_clients) = 1 then
            -- Every row is this client's and goes under this one event: one INSERT of every chunk.
            %13$s into v_rows;
        elsif v_event is not null then
            for v_chunk_event, v_chunk_count, v_chunk in %5$s loop$new$);
    perform pyflows_audit._replace_in_function('pyflows_audit._create_delete_trigger(text)', $old$
            and a.attname = 'id'));$old$, $new$
            and a.attname = 'id'),
        pyflows_audit._archive_statement(p_table, 'old_rows', 'v_event'));$new$);
    perform pyflows_audit._create_delete_trigger(t)
       from unnest(array['clients', 'engagements', 'discovery_flows', 'data_imports', 'raw_import_records',
                         'import_field_mappings', 'assets', 'asset_dependencies']) as t;
end;
$migration$;

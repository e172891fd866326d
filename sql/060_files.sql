-- pyflows sql/060_files: draining the file outbox. Deleting imports enqueues their stored files
-- (trigger enqueue_files, migration 0004); a drain worker claims entries, removes the objects after
-- the deleting transaction committed, and records each outcome. The queue spans tenants, so these
-- functions are for members of pyflows_admin (PF403 otherwise), SECURITY DEFINER like the other
-- admin functions (sql/040_admin.sql).

-- Up to p_limit entries not yet done whose lease is free or expired, oldest first, leased for
-- p_lease and with their attempt counted. SKIP LOCKED: concurrent drains never wait for each other
-- or get the same entry.
create or replace function pyflows.claim_file_cleanups(p_limit integer default 100,
                                                       p_lease interval default interval '5 minutes')
returns table (id bigint, client_id uuid, engagement_id uuid, storage_uri text, attempts integer, flow_id uuid,
               import_id uuid, event_id bigint, last_error text)
language plpgsql
security definer
set search_path = pg_catalog, pyflows, pg_temp
as $$
begin
    perform pyflows._require_admin();
    perform pyflows._check_page(p_limit, 0);
    perform pyflows._check_interval(p_lease, 'lease', interval '1 second', interval '1 day');
    return query
        with picked as (
            select q.client_id, q.engagement_id, q.id
              from pyflows.file_cleanup_queue as q
             where q.done_at is null and (q.lease_until is null or q.lease_until < now())
             order by q.enqueued_at, q.id
             limit p_limit
               for update skip locked)
        update pyflows.file_cleanup_queue as q
           set lease_until = now() + p_lease, attempts = q.attempts + 1
          from picked
         where (q.client_id, q.engagement_id, q.id) = (picked.client_id, picked.engagement_id, picked.id)
        returning q.id, q.client_id, q.engagement_id, q.storage_uri, q.attempts, q.flow_id, q.import_id,
                  q.event_id, q.last_error;
end;
$$;

-- Record the outcome of removing a claimed entry's object: done, or the error (the entry stays queued
-- and is claimed again once its lease has run out). Finishing a done entry again changes nothing.
create or replace function pyflows.finish_file_cleanup(p_id bigint, p_error text default null)
returns jsonb
language plpgsql
security definer
set search_path = pg_catalog, pyflows, pg_temp
as $$
declare
    v_row pyflows.file_cleanup_queue;
begin
    perform pyflows._require_admin();
    select * into v_row from pyflows.file_cleanup_queue as q where q.id = p_id for update;
    if not found then
        raise exception 'file cleanup % not found', p_id
            using errcode = 'PF404', detail = json_build_object('id', p_id)::text;
    end if;
    if v_row.done_at is null then
        update pyflows.file_cleanup_queue as q
           set done_at = case when p_error is null then now() end,
               last_error = case when p_error is null then q.last_error else left(p_error, 4000) end,
               lease_until = case when p_error is null then null else q.lease_until end
         where (q.client_id, q.engagement_id, q.id) = (v_row.client_id, v_row.engagement_id, v_row.id)
        returning * into v_row;
    end if;
    return jsonb_build_object('id', v_row.id, 'done', v_row.done_at is not null, 'attempts', v_row.attempts,
                              'last_error', v_row.last_error, 'storage_uri', v_row.storage_uri);
end;
$$;

revoke all on function pyflows.claim_file_cleanups(integer, interval), pyflows.finish_file_cleanup(bigint, text)
    from public;
-- Granted to applications on purpose: a non-admin caller gets PF403 from the function, not 42501.
grant execute on function pyflows.claim_file_cleanups(integer, interval), pyflows.finish_file_cleanup(bigint, text)
    to pyflows_app;

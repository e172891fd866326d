-- pyflows sql/060_files: draining the file outbox. Deleting imports enqueues their stored files
-- (trigger enqueue_files, migration 0004); a drain worker claims entries, removes the objects after
-- the deleting transaction committed, and records each outcome. The queue spans tenants, so these
-- functions are for members of pyflows_admin (PF403 otherwise), SECURITY DEFINER like the other
-- admin functions (sql/040_admin.sql).

-- Up to p_limit entries not yet done whose lease is free or expired, oldest first, leased for
-- p_lease and with their attempt counted. SKIP LOCKED: concurrent drains never wait for each other
-- or get the same entry. The oldest candidates are read first without a lock, then each is locked
-- and leased by its full key, its state checked again: a row lock by key is what Citus can take on a
-- distributed table (one shard), where a FOR UPDATE over the whole queue is refused. Candidates taken
-- by a concurrent drain in between are skipped; the next claim finds what this one left.
create or replace function pyflows.claim_file_cleanups(p_limit integer default 100,
                                                       p_lease interval default interval '5 minutes')
returns table (id bigint, client_id uuid, engagement_id uuid, storage_uri text, attempts integer, flow_id uuid,
               import_id uuid, event_id bigint, last_error text)
language plpgsql
security definer
set search_path = pg_catalog, pyflows, pg_temp
as $$
declare
    v_key     record;
    v_claimed integer := 0;
    v_now     timestamptz := now();
begin
    perform pyflows._require_admin();
    perform pyflows._check_page(p_limit, 0);
    perform pyflows._check_interval(p_lease, 'lease', interval '1 second', interval '1 day');
    for v_key in
        select q.client_id, q.engagement_id, q.id
          from pyflows.file_cleanup_queue as q
         where q.done_at is null and (q.lease_until is null or q.lease_until < v_now)
         order by q.enqueued_at, q.id
         limit p_limit * 2
    loop
        perform from pyflows.file_cleanup_queue as l
         where l.client_id = v_key.client_id and l.engagement_id = v_key.engagement_id and l.id = v_key.id
           and l.done_at is null and (l.lease_until is null or l.lease_until < v_now)
           for update skip locked;
        continue when not found;  -- another drain holds it, or has leased or finished it since
        return query
            update pyflows.file_cleanup_queue as q
               set lease_until = v_now + p_lease, attempts = q.attempts + 1
             where q.client_id = v_key.client_id and q.engagement_id = v_key.engagement_id and q.id = v_key.id
            returning q.id, q.client_id, q.engagement_id, q.storage_uri, q.attempts, q.flow_id, q.import_id,
                      q.event_id, q.last_error;
        v_claimed := v_claimed + 1;
        exit when v_claimed >= p_limit;
    end loop;
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
    v_row  pyflows.file_cleanup_queue;
    v_key  record;
    v_done timestamptz;
begin
    perform pyflows._require_admin();
    -- The entry's key first, then the row locked by it (one shard on Citus, see claim_file_cleanups).
    select q.client_id, q.engagement_id into v_key from pyflows.file_cleanup_queue as q where q.id = p_id;
    if found then
        select * into v_row from pyflows.file_cleanup_queue as q
         where q.client_id = v_key.client_id and q.engagement_id = v_key.engagement_id and q.id = p_id
           for update;
    end if;
    if v_row.id is null then
        raise exception 'file cleanup % not found', p_id
            using errcode = 'PF404', detail = json_build_object('id', p_id)::text;
    end if;
    if v_row.done_at is null then
        -- The time is taken here: Citus refuses functions that are not IMMUTABLE in a CASE of an UPDATE.
        v_done := case when p_error is null then now() end;
        update pyflows.file_cleanup_queue as q
           set done_at = v_done,
               last_error = case when p_error is null then q.last_error else left(p_error, 4000) end,
               lease_until = case when p_error is null then null else q.lease_until end
         where q.client_id = v_row.client_id and q.engagement_id = v_row.engagement_id and q.id = v_row.id
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

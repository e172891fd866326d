-- pyflows 0014: the row rules and guards of the tenant tables run on Citus shards as on one node.
--
-- On Citus the triggers of a distributed table run on its shards (docs/scale-out.md), and two of
-- them could not:
--
-- * The flow row rules (migration 0010) asked one IF whether a flow was becoming 'deleting' and, in the same
--   expression, whether a running purge of this transaction had marked it, so every insert and
--   update of a flow planned a query on pyflows_audit.events. Now the audit query sits in an IF of
--   its own, reached only by a flow becoming 'deleting'.
-- * The guards against rows for a flow being purged (migration 0007) joined the statement's
--   transition table with discovery_flows in one query, which Citus cannot plan on a shard ("could
--   not find named tuplestore"). Now they read the distinct flows (or imports) of the new rows first,
--   then look each one up by its full key: one index lookup each, routed to the row's own shard.
-- Same rules, same errors, on every engine.
-- depends: 0013_check_for_every_role

create or replace function pyflows._flow_row_rules()
returns trigger
language plpgsql
set search_path = pg_catalog, pyflows, pg_temp
as $$
declare
    c_incomplete constant text[] := array['initialized', 'running', 'paused', 'waiting_for_user', 'failed'];
    v_unknown   text;
    v_total     integer;
    v_completed text[];
    v_progress  numeric(5, 2);
begin
    select p into v_unknown
      from unnest(new.phases_completed) as p
     where p is null or not exists (select from pyflows.phases where phase = p)
     limit 1;
    if found then
        raise exception 'unknown phase % in phases_completed', coalesce(quote_literal(v_unknown), 'NULL')
            using errcode = 'PF422', hint = 'The phases are listed in pyflows.phases.';
    end if;
    if new.current_phase is not null
       and not exists (select from pyflows.phases where phase = new.current_phase) then
        raise exception 'unknown phase % for current_phase', quote_literal(new.current_phase)
            using errcode = 'PF422', hint = 'The phases are listed in pyflows.phases.';
    end if;
    -- Only a flow becoming 'deleting' looks at the audit trail. Its own IF, so that the audit query
    -- is planned only then: on Citus this trigger runs on the shards, and a shard plans what it reads.
    if new.status = 'deleting' and (tg_op = 'INSERT' or old.status <> 'deleting') then
        if tg_op = 'INSERT' or not exists (
            select from pyflows_audit.events as e
             where e.client_id = new.client_id and e.engagement_id = new.engagement_id and e.flow_id = new.id
               and e.action = 'flow.purge' and e.details ->> 'state' = 'running'
               and e.txid = txid_current()) then
            raise exception 'only pyflows.purge_flow marks a flow deleting'
                using errcode = 'PF422',
                      detail = json_build_object('flow_id', new.id, 'status', new.status)::text,
                      hint = 'Delete a flow with pyflows.delete_flow, or purge it with pyflows.purge_flow.';
        end if;
    end if;

    select count(*) into v_total from pyflows.phases;
    if v_total = 0 then
        raise exception 'pyflows.phases is empty' using errcode = 'PF422';
    end if;
    select coalesce(array_agg(ph.phase order by ph.position), '{}')
      into v_completed
      from pyflows.phases as ph
     where ph.phase = any (new.phases_completed);
    v_progress := round(100.0 * cardinality(v_completed) / v_total, 2);

    if tg_op = 'UPDATE' then
        if new.progress_percentage is distinct from old.progress_percentage then
            raise exception 'progress_percentage is derived from phases_completed and cannot be written'
                using errcode = 'PF422';
        end if;
        if new.status <> old.status and not (
               new.status = 'deleting'
            or (old.status = any (c_incomplete)
                and (new.status = any (c_incomplete) and new.status <> 'initialized'
                     or new.status in ('cancelled', 'completed')))
        ) then
            raise exception 'a flow cannot go from % to %', old.status, new.status
                using errcode = 'PF422',
                      detail = json_build_object('from', old.status, 'to', new.status)::text;
        end if;
        new.updated_at := now();
    elsif new.progress_percentage is not null and new.progress_percentage <> v_progress then
        raise exception 'progress_percentage is derived from phases_completed and cannot be written'
            using errcode = 'PF422';
    end if;

    if new.status = 'completed' then
        if cardinality(v_completed) < v_total then
            raise exception 'a flow completes only when every phase is complete (% of % are)',
                cardinality(v_completed), v_total
                using errcode = 'PF422';
        end if;
        new.current_phase := null;
        new.completed_at := coalesce(new.completed_at, now());
    end if;

    new.phases_completed := v_completed;
    new.progress_percentage := v_progress;
    return new;
end;
$$;

create or replace function pyflows._refuse_rows_for_deleting_flows()
returns trigger
language plpgsql
set search_path = pg_catalog, pyflows, pg_temp
as $$
declare
    r      record;
    v_flow uuid;
begin
    for r in select distinct n.client_id, n.engagement_id, n.flow_id from new_rows as n loop
        select f.id into v_flow
          from pyflows.discovery_flows as f
         where f.client_id = r.client_id and f.engagement_id = r.engagement_id and f.id = r.flow_id
           and f.status = 'deleting';
        perform pyflows._refuse_flow_being_purged(v_flow);
    end loop;
    return null;
end;
$$;

create or replace function pyflows._refuse_import_rows_for_deleting_flows()
returns trigger
language plpgsql
set search_path = pg_catalog, pyflows, pg_temp
as $$
declare
    r      record;
    v_flow uuid;
begin
    for r in select distinct n.client_id, n.engagement_id, n.import_id from new_rows as n loop
        select f.id into v_flow
          from pyflows.data_imports as i
          join pyflows.discovery_flows as f
            on f.client_id = i.client_id and f.engagement_id = i.engagement_id and f.id = i.flow_id
         where i.client_id = r.client_id and i.engagement_id = r.engagement_id and i.id = r.import_id
           and f.status = 'deleting';
        perform pyflows._refuse_flow_being_purged(v_flow);
    end loop;
    return null;
end;
$$;

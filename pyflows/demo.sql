-- pyflows demo data: two tenants with flows in several phases. Idempotent: a database that
-- already has the first demo client is left as it is. Each tenant's rows are written under that
-- tenant's context, so the script works for a table owner that is subject to FORCE RLS.
do $$
declare
    c_acme        constant uuid := '0d1e5c1e-0000-4000-8000-00000000000a';
    c_acme_eng    constant uuid := '0d1e5c1e-0000-4000-8000-0000000000a1';
    c_globex      constant uuid := '0d1e5c1e-0000-4000-8000-00000000000b';
    c_globex_eng  constant uuid := '0d1e5c1e-0000-4000-8000-0000000000b1';
    v_flow        uuid;
    v_import      uuid;
    v_app         bigint;
    v_db          bigint;
    v_web         bigint;
    v_cache       bigint;
begin
    perform set_config('pyflows.client_id', c_acme::text, true);
    perform set_config('pyflows.engagement_id', c_acme_eng::text, true);
    if exists (select from pyflows.clients where id = c_acme) then
        return;
    end if;

    insert into pyflows.clients (id, name) values (c_acme, 'Acme Logistics');
    insert into pyflows.engagements (client_id, id, name) values (c_acme, c_acme_eng, 'Cloud migration 2027');

    -- A finished flow from last quarter.
    insert into pyflows.discovery_flows
        (client_id, engagement_id, name, status, current_phase, phases_completed, created_by,
         created_at, last_activity_at, completed_at)
    values
        (c_acme, c_acme_eng, 'Q3 CMDB export', 'completed', null,
         array['data_import', 'data_validation', 'field_mapping', 'data_cleansing', 'asset_inventory',
               'dependency_analysis', 'tech_debt_analysis'],
         'maria.lopez', now() - interval '40 days', now() - interval '31 days', now() - interval '31 days');

    -- The incomplete flow: paused in dependency analysis, with everything a flow creates.
    insert into pyflows.discovery_flows
        (client_id, engagement_id, name, status, current_phase, phases_completed, created_by,
         created_at, last_activity_at, agent_insights)
    values
        (c_acme, c_acme_eng, 'Q4 CMDB export', 'paused', 'dependency_analysis',
         array['data_import', 'data_validation', 'field_mapping', 'data_cleansing', 'asset_inventory'],
         'maria.lopez', now() - interval '3 days', now() - interval '2 hours',
         jsonb_build_array(jsonb_build_object(
             'phase', 'asset_inventory', 'recorded_at', now() - interval '2 hours',
             'insight', '4 assets; 1 host has no operating system')))
    returning id into v_flow;

    insert into pyflows.data_imports
        (client_id, engagement_id, flow_id, filename, storage_uri, byte_size, status, record_count, imported_by)
    values
        (c_acme, c_acme_eng, v_flow, 'acme-cmdb-q4.csv', 'file:///var/lib/pyflows/uploads/acme-cmdb-q4.csv',
         48213, 'imported', 5, 'maria.lopez')
    returning id into v_import;

    insert into pyflows.raw_import_records (client_id, engagement_id, import_id, row_number, data)
    select c_acme, c_acme_eng, v_import, r.n, r.data
      from (values
        (1, '{"Host": "orders-app-01", "IP": "10.20.0.11", "OS": "Ubuntu 22.04", "Role": "app"}'::jsonb),
        (2, '{"Host": "orders-db-01", "IP": "10.20.0.21", "OS": "RHEL 8.9", "Role": "database"}'),
        (3, '{"Host": "orders-web-01", "IP": "10.20.0.31", "OS": "Ubuntu 22.04", "Role": "web"}'),
        (4, '{"Host": "cache-01", "IP": "10.20.0.41", "OS": "", "Role": "cache"}'),
        (5, '{"Host": "orders-app-01", "IP": "10.20.0.11", "OS": "Ubuntu 22.04", "Role": "app"}')
      ) as r(n, data);

    insert into pyflows.import_field_mappings
        (client_id, engagement_id, import_id, source_field, target_attribute, confidence, status)
    values
        (c_acme, c_acme_eng, v_import, 'Host', 'hostname', 0.98, 'approved'),
        (c_acme, c_acme_eng, v_import, 'IP', 'ip_address', 0.97, 'approved'),
        (c_acme, c_acme_eng, v_import, 'OS', 'operating_system', 0.91, 'approved'),
        (c_acme, c_acme_eng, v_import, 'Role', 'asset_type', 0.62, 'suggested');

    insert into pyflows.assets (client_id, engagement_id, flow_id, name, asset_type, hostname, ip_address, operating_system)
    values (c_acme, c_acme_eng, v_flow, 'orders-app-01', 'server', 'orders-app-01', '10.20.0.11', 'Ubuntu 22.04')
    returning id into v_app;
    insert into pyflows.assets (client_id, engagement_id, flow_id, name, asset_type, hostname, ip_address, operating_system)
    values (c_acme, c_acme_eng, v_flow, 'orders-db-01', 'database', 'orders-db-01', '10.20.0.21', 'RHEL 8.9')
    returning id into v_db;
    insert into pyflows.assets (client_id, engagement_id, flow_id, name, asset_type, hostname, ip_address, operating_system)
    values (c_acme, c_acme_eng, v_flow, 'orders-web-01', 'server', 'orders-web-01', '10.20.0.31', 'Ubuntu 22.04')
    returning id into v_web;
    insert into pyflows.assets (client_id, engagement_id, flow_id, name, asset_type, hostname, ip_address)
    values (c_acme, c_acme_eng, v_flow, 'cache-01', 'server', 'cache-01', '10.20.0.41')
    returning id into v_cache;

    insert into pyflows.asset_dependencies
        (client_id, engagement_id, flow_id, source_asset_id, target_asset_id, dependency_type)
    values
        (c_acme, c_acme_eng, v_flow, v_web, v_app, 'http'),
        (c_acme, c_acme_eng, v_flow, v_app, v_db, 'database'),
        (c_acme, c_acme_eng, v_flow, v_app, v_cache, 'cache');

    -- The second tenant: a cancelled attempt and a flow waiting for the user in field mapping.
    perform set_config('pyflows.client_id', c_globex::text, true);
    perform set_config('pyflows.engagement_id', c_globex_eng::text, true);

    insert into pyflows.clients (id, name) values (c_globex, 'Globex Retail');
    insert into pyflows.engagements (client_id, id, name) values (c_globex, c_globex_eng, 'Data-centre exit');

    insert into pyflows.discovery_flows
        (client_id, engagement_id, name, status, current_phase, phases_completed, created_by,
         created_at, last_activity_at)
    values
        (c_globex, c_globex_eng, 'ServiceNow export (wrong scope)', 'cancelled', 'field_mapping',
         array['data_import', 'data_validation'], 'sam.okafor', now() - interval '9 days', now() - interval '8 days');

    insert into pyflows.discovery_flows
        (client_id, engagement_id, name, status, current_phase, phases_completed, created_by,
         created_at, last_activity_at)
    values
        (c_globex, c_globex_eng, 'ServiceNow export', 'waiting_for_user', 'field_mapping',
         array['data_import', 'data_validation'], 'sam.okafor', now() - interval '1 day', now() - interval '20 minutes')
    returning id into v_flow;

    insert into pyflows.data_imports
        (client_id, engagement_id, flow_id, filename, storage_uri, byte_size, status, record_count, imported_by)
    values
        (c_globex, c_globex_eng, v_flow, 'servicenow-cmdb.xlsx', 'file:///var/lib/pyflows/uploads/servicenow-cmdb.xlsx',
         120554, 'imported', 3, 'sam.okafor')
    returning id into v_import;

    insert into pyflows.raw_import_records (client_id, engagement_id, import_id, row_number, data)
    select c_globex, c_globex_eng, v_import, r.n, r.data
      from (values
        (1, '{"ci_name": "pos-gw-01", "ip_addr": "172.16.4.10", "os_version": "Windows Server 2019"}'::jsonb),
        (2, '{"ci_name": "pos-db-01", "ip_addr": "172.16.4.20", "os_version": "Windows Server 2016"}'),
        (3, '{"ci_name": "inventory-svc", "ip_addr": "172.16.4.30", "os_version": "Debian 11"}')
      ) as r(n, data);

    insert into pyflows.import_field_mappings
        (client_id, engagement_id, import_id, source_field, target_attribute, confidence, status)
    values
        (c_globex, c_globex_eng, v_import, 'ci_name', 'hostname', 0.88, 'suggested'),
        (c_globex, c_globex_eng, v_import, 'ip_addr', 'ip_address', 0.95, 'suggested'),
        (c_globex, c_globex_eng, v_import, 'os_version', 'operating_system', 0.74, 'suggested');
end
$$;

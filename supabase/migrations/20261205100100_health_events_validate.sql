-- The widened kind check of deployment_events (20261205100000_health_events.sql), added NOT VALID
-- there, validated here in a transaction of its own: VALIDATE scans the event log under a SHARE
-- UPDATE EXCLUSIVE lock, which lets events be written meanwhile (.squawk.toml). Every existing row
-- passed the narrower check it replaced, so this cannot fail; a long event log gets 30 minutes
-- (the writes go on meanwhile).

set local lock_timeout = '5s';
set local statement_timeout = '30min';

alter table public.deployment_events validate constraint deployment_events_kind_check;

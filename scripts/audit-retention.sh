#!/usr/bin/env bash
# Audit retention, the local equivalent of the hosted project's pg_cron job. Run it with the
# DATABASE OWNER's connection (the orchestrator's role cannot call retention):
#   bash scripts/audit-retention.sh [postgres://postgres@127.0.0.1:54329/cortex]
# It deletes, chain by chain, the audit rows (and read intents) older than the owner's minimum age
# (`alter database <db> set cortex.audit_retention_min_age = '400 days'`; 365 days when unset),
# leaves a `retention` event in every chain it trims, and prints what it did as JSON.
set -euo pipefail
URL=${1:-postgres://postgres@127.0.0.1:${CORTEX_PG_PORT:-54329}/cortex}
psql -X -q -At -v ON_ERROR_STOP=1 -d "$URL" -c 'select public.secret_access_log__apply_retention()'

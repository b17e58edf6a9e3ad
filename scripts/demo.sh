#!/usr/bin/env bash
# `npm run demo [-- --down]`: make this machine ready (packages, Postgres, Redis, DNS, schema, host
# image — each only when missing), then provision one local agent end to end (orchestrator/cli/demo.ts).
set -euo pipefail
cd "$(dirname "$0")/.."
echo "[demo] setting up local services (first run: packages and the host image take a few minutes)" >&2
bash scripts/services-up.sh >/dev/null
exec npx --no-install tsx orchestrator/cli/demo.ts "$@"

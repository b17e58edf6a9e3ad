#!/usr/bin/env bash
# `npm test`: start the local services it needs, then every tier: lint, types, unit, pgTAP, integration.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/services-up.sh >/dev/null
npm run --silent lint
npm run --silent typecheck
npm run --silent test:unit
npm run --silent test:db
npm run --silent test:integration

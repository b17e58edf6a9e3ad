import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { RESERVED_SUBDOMAINS } from '../../../orchestrator/deployments/deployments-service';

/** The reserved subdomains live twice (the service and deployments__request): the copies must agree. */
describe('reserved subdomains', () => {
  it('the SQL list is exactly the service list', () => {
    const sql = readFileSync(
      join(__dirname, '../../../supabase/migrations/20261130120000_pipeline.sql'),
      'utf8',
    );
    const m = /p_subdomain = any \(array\[([^\]]+)\]\)/.exec(sql);
    const inSql = (m?.[1] ?? '').match(/'([a-z0-9-]+)'/g)?.map((w) => w.slice(1, -1)) ?? [];
    expect(inSql.length).toBeGreaterThan(10);
    expect([...inSql].sort()).toEqual([...RESERVED_SUBDOMAINS].sort());
  });
});

import { spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { caddyLocalRootCaPath, renderCaddyfile, type CaddyfileInput } from '../../../templates/caddyfile';

/** Runs the real caddy binary with its HOME and storage in a temp dir (validate provisions the local CA). */
const caddy = (args: string[], text: string, dir: string) => {
  const file = join(dir, 'Caddyfile');
  writeFileSync(file, text);
  const r = spawnSync('caddy', [...args, '--config', file, '--adapter', 'caddyfile'], {
    env: {
      PATH: process.env.PATH ?? '/usr/bin:/bin',
      HOME: dir,
      XDG_DATA_HOME: join(dir, 'data'),
      XDG_CONFIG_HOME: join(dir, 'config'),
    },
    encoding: 'utf8',
  });
  return { code: r.status, stdout: r.stdout, stderr: r.stderr };
};

describe('Caddyfile', () => {
  let dir: string;
  beforeEach(() => {
    dir = mkdtempSync(join(tmpdir(), 'caddy-'));
  });
  afterEach(() => rmSync(dir, { recursive: true, force: true }));

  const local = (): CaddyfileInput => ({
    siteName: 'a1b2.agents.localhost.test',
    agentPort: 18789,
    tls: { mode: 'internal', storageDir: join(dir, 'storage') },
    adminSocket: join(dir, 'admin.sock'),
  });
  const production = (): CaddyfileInput => ({
    siteName: 'a1b2.agents.example.com',
    agentPort: 18789,
    tls: { mode: 'acme', email: 'ops@example.com' },
    adminSocket: join(dir, 'admin.sock'),
  });

  it('local mode: tls internal, no trust-store install, file storage; adapts to the expected JSON', () => {
    const text = renderCaddyfile(local());
    const r = caddy(['adapt'], text, dir);
    expect(r.code).toBe(0);
    const json = JSON.parse(r.stdout) as {
      admin: { listen: string };
      storage: { module: string; root: string };
      apps: { http: { servers: Record<string, { routes: unknown[] }> }; pki: unknown; tls: unknown };
    };
    expect(json.admin.listen).toBe(`unix/${join(dir, 'admin.sock')}`);
    expect(json.storage).toEqual({ module: 'file_system', root: join(dir, 'storage') });
    expect(JSON.stringify(json.apps.pki)).toContain('"install_trust":false');
    expect(JSON.stringify(json.apps.tls)).toContain('"module":"internal"');
    const routes = JSON.stringify(json.apps.http.servers);
    expect(routes).toContain('"host":["a1b2.agents.localhost.test"]');
    expect(routes).toContain('"dial":"127.0.0.1:18789"');
    expect(routes).toContain('"try_duration":15000000000');
    expect(routes).toContain('"try_interval":250000000');
  });

  it('local mode passes caddy validate, and the CA root lands where the health check fetches it', () => {
    const r = caddy(['validate'], renderCaddyfile(local()), dir);
    expect(r.stderr + r.stdout).toContain('Valid configuration');
    expect(r.code).toBe(0);
    expect(caddyLocalRootCaPath(join(dir, 'storage'))).toBe(
      join(dir, 'storage/pki/authorities/local/root.crt'),
    );
  });

  it('production: ACME with the contact email, no internal TLS; adapts and validates', () => {
    const text = renderCaddyfile(production());
    expect(text).not.toContain('tls internal');
    const adapted = caddy(['adapt'], text, dir);
    expect(adapted.code).toBe(0);
    expect(adapted.stdout).toContain('"email":"ops@example.com"');
    expect(adapted.stdout).not.toContain('"module":"internal"');
    const valid = caddy(['validate'], text, dir);
    expect(valid.code).toBe(0);
  });

  it('the checker is sharp: caddy rejects a broken Caddyfile', () => {
    const broken = renderCaddyfile(local()).replace('lb_try_duration 15s', 'lb_try_duration soon');
    expect(caddy(['adapt'], broken, dir).code).not.toBe(0);
  });

  it('a custom HTTPS port is applied to the site and the global options', () => {
    const text = renderCaddyfile({ ...local(), httpsPort: 8443 });
    const r = caddy(['adapt'], text, dir);
    expect(r.code).toBe(0);
    expect(r.stdout).toContain('":8443"');
  });

  it.each([
    ['siteName', { siteName: 'a b.example.com' }],
    ['siteName', { siteName: 'x.example.com {\n}\nevil.com' }],
    ['siteName', { siteName: 'UPPER.example.com' }],
    ['agentPort', { agentPort: 0 }],
    ['agentPort', { agentPort: 70000 }],
    ['tls.email', { tls: { mode: 'acme', email: 'ops@example.com\n}\n:80 {' } }],
    ['tls.storageDir', { tls: { mode: 'internal', storageDir: 'relative' } }],
    ['tls.storageDir', { tls: { mode: 'internal', storageDir: '/x y' } }],
    ['tryDurationSeconds', { tryDurationSeconds: 0 }],
  ] as const)('rejects a bad %s', (field, patch) => {
    expect(() => renderCaddyfile({ ...local(), ...(patch as Partial<CaddyfileInput>) })).toThrow(
      new RegExp(`^${field.replace('.', '\\.')}`),
    );
  });
});

import type { OrchestratorError } from '../../../orchestrator/errors';
import {
  CADDY_ADMIN_SOCKET,
  CADDY_LOCAL_STORAGE,
  caddyLocalRootCaPath,
  renderCaddyfile,
  type CaddyfileInput,
} from '../../../templates/caddyfile';

/**
 * The Caddyfile's name and address checks at their exact length boundaries, and the exact
 * directives each input becomes (template-escaping.test.ts has the characters the lexer would
 * read). No external tool: written for mutation testing, which runs these on every mutant.
 */
const base: CaddyfileInput = {
  siteName: 'a1.agents.example.com',
  agentPort: 18789,
  tls: { mode: 'internal' },
};
const outcome = (input: CaddyfileInput): string => {
  try {
    renderCaddyfile(input);
    return 'accepted';
  } catch (err) {
    const e = err as OrchestratorError;
    return `${e.code} ${e.message}`;
  }
};
/** The rendered lines that are not comments. */
const directives = (input: CaddyfileInput): string[] =>
  renderCaddyfile(input)
    .split('\n')
    .filter((l) => !/^\s*#/.test(l));
const label = (n: number): string => 'a'.repeat(n);

describe('renderCaddyfile: exact output', () => {
  it('local mode: the admin socket, no trust store, the storage, tls internal, the agent on loopback', () => {
    expect(directives(base)).toEqual([
      '{',
      '\tadmin unix//var/lib/caddy/admin.sock',
      '\tskip_install_trust',
      '\tstorage file_system /var/lib/caddy/storage',
      '}',
      '',
      'a1.agents.example.com {',
      '\ttls internal',
      '\treverse_proxy 127.0.0.1:18789 {',
      '\t\tlb_try_duration 15s',
      '\t\tlb_try_interval 250ms',
      '\t}',
      '}',
      '',
    ]);
    expect(renderCaddyfile(base).split('\n')[0]).toBe(
      '# Written by the cortex orchestrator (local mode); replaced whole on every change.',
    );
    expect(caddyLocalRootCaPath()).toBe(`${CADDY_LOCAL_STORAGE}/pki/authorities/local/root.crt`);
    expect(caddyLocalRootCaPath('/s')).toBe('/s/pki/authorities/local/root.crt');
    expect(CADDY_ADMIN_SOCKET).toBe('/var/lib/caddy/admin.sock');
  });

  it('production mode: the ACME contact, automatic HTTPS, and every option given', () => {
    const input: CaddyfileInput = {
      siteName: 'b2.agents.example.com',
      agentPort: 1,
      tls: { mode: 'acme', email: 'ops+x@example.com' },
      httpsPort: 8443,
      adminSocket: '/run/c.sock',
      tryDurationSeconds: 120,
    };
    expect(directives(input)).toEqual([
      '{',
      '\tadmin unix//run/c.sock',
      '\temail ops+x@example.com',
      '\thttps_port 8443',
      '}',
      '',
      'b2.agents.example.com:8443 {',
      '\treverse_proxy 127.0.0.1:1 {',
      '\t\tlb_try_duration 120s',
      '\t\tlb_try_interval 250ms',
      '\t}',
      '}',
      '',
    ]);
    const text = renderCaddyfile(input).split('\n');
    expect(text[0]).toBe(
      '# Written by the cortex orchestrator (production mode); replaced whole on every change.',
    );
    expect(text).toContain('\t# certificate: automatic HTTPS (ACME)');
    expect(directives({ ...base, tls: { mode: 'internal', storageDir: '/srv/x' }, httpsPort: 9 })).toEqual(
      expect.arrayContaining(['\tstorage file_system /srv/x', '\thttps_port 9', 'a1.agents.example.com:9 {']),
    );
  });
});

describe('renderCaddyfile: length boundaries', () => {
  const siteRefused = 'invalid_input siteName: must be a lower-case DNS name like a1.agents.example.com';
  it('a site name: labels of 1 to 63 characters, a letters-only top label of 2 to 63, at most 253 in all', () => {
    for (const siteName of [
      `${label(63)}.example.com`,
      'a.io',
      `a.${label(63)}`,
      'a-b.c-d.example.com',
      '0.example.com',
      // 253 characters: 3 labels of 63 and one of 61, with their dots
      `${label(63)}.${label(63)}.${label(63)}.${label(61)}`,
    ])
      expect([siteName, outcome({ ...base, siteName })]).toEqual([siteName, 'accepted']);
    for (const siteName of [
      `${label(64)}.example.com`,
      'a.b',
      `a.${label(64)}`,
      'a.c0m',
      'a-.example.com',
      'a..example.com',
      '.a.example.com',
      'a.example.com.',
      `${label(63)}.${label(63)}.${label(63)}.${label(62)}`,
      `x${base.siteName}\n`,
    ])
      expect([siteName, outcome({ ...base, siteName })]).toEqual([siteName, siteRefused]);
  });

  it('an e-mail address: a local part of 1 to 64 plain characters, a domain of DNS labels, a letters-only top label', () => {
    const emailRefused = 'invalid_input tls.email: must be a plain email address';
    const acme = (email: string) => outcome({ ...base, tls: { mode: 'acme', email } });
    for (const email of [
      'a@b.io',
      'A.b_c%d+e-f@example.com',
      `x@${label(63)}.io`,
      `x@b.${label(63)}`,
      'x@B-1.COM',
      'x@a.b.c.io',
    ])
      expect([email, acme(email)]).toEqual([email, 'accepted']);
    for (const email of [
      '@example.com',
      'a@b.c',
      `x@${label(64)}.io`,
      `x@b.${label(64)}`,
      'x@b.c0m',
      'x@.io',
      'x@@b.io',
      'x@b_c.io',
      'x@b.io ',
      ' x@b.io',
      'x@b.io\n',
    ])
      expect([email, acme(email)]).toEqual([email, emailRefused]);
  });

  it('paths: absolute, 1 to 200 characters after the slash, for the admin socket and the storage', () => {
    const storage = (storageDir: string) => outcome({ ...base, tls: { mode: 'internal', storageDir } });
    for (const p of ['/a', `/${label(200)}`, '/a/b_c.d-e'])
      expect([p, outcome({ ...base, adminSocket: p }), storage(p)]).toEqual([p, 'accepted', 'accepted']);
    for (const p of ['/', `/${label(201)}`, 'a/b', '/a\n', `x/${label(10)}`])
      expect([p, outcome({ ...base, adminSocket: p }), storage(p)]).toEqual([
        p,
        'invalid_input adminSocket: must be an absolute path',
        'invalid_input tls.storageDir: must be an absolute path',
      ]);
  });
});

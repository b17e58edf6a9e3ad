import { execFileSync } from 'node:child_process';
import { curlHealthCommand } from '../../../orchestrator/dns/curl-command';
import type { DnsQuery } from '../../../orchestrator/dns/dns-query';
import { rejection } from '../../support/rejection';

const ZONE = 'agents.localhost.test';
const NAME = `a1.${ZONE}`;
const answering =
  (ipv4: string[]): DnsQuery =>
  (name) =>
    Promise.resolve(name === NAME ? { ipv4, ipv6: [] } : { ipv4: [], ipv6: [] });

describe('curl command for the demo', () => {
  it('pins the name to the address the DNS server gives now and verifies against the CA file', async () => {
    const cmd = await curlHealthCommand({
      zone: ZONE,
      name: NAME,
      caFile: '/x/ca root.pem',
      query: answering(['10.9.8.7']),
    });
    expect(cmd.argv).toEqual([
      'curl',
      '--fail',
      '--silent',
      '--show-error',
      '--cacert',
      '/x/ca root.pem',
      '--resolve',
      `${NAME}:443:10.9.8.7`,
      `https://${NAME}/health`,
    ]);
    expect(cmd.address).toBe('10.9.8.7');
    expect(cmd.line).toBe(
      `'curl' '--fail' '--silent' '--show-error' '--cacert' '/x/ca root.pem' '--resolve' '${NAME}:443:10.9.8.7' 'https://${NAME}/health'`,
    );
  });

  it('prints a line that a POSIX shell splits back into the same argv', async () => {
    const cmd = await curlHealthCommand({
      zone: ZONE,
      name: NAME,
      caFile: "/tmp/it's $(here)/ca.pem",
      query: answering(['10.9.8.7']),
      port: 8443,
      path: '/v1/health',
    });
    const words = execFileSync('sh', ['-c', `printf '%s\\n' ${cmd.line.replace(/^'curl' /, '')}`], {
      encoding: 'utf8',
    });
    expect(['curl', ...words.trimEnd().split('\n')]).toEqual(cmd.argv);
    expect(cmd.argv.at(-1)).toBe(`https://${NAME}:8443/v1/health`);
  });

  it('refuses a name outside the zone, a relative CA path and a hostile path', async () => {
    const q = answering(['10.9.8.7']);
    expect(
      (
        await rejection(
          curlHealthCommand({ zone: ZONE, name: 'a1.example.com', caFile: '/ca.pem', query: q }),
        )
      ).field,
    ).toBe('name');
    expect(
      (await rejection(curlHealthCommand({ zone: ZONE, name: NAME, caFile: 'ca.pem', query: q }))).field,
    ).toBe('caFile');
    expect(
      (await rejection(curlHealthCommand({ zone: ZONE, name: NAME, caFile: '/ca\n.pem', query: q }))).field,
    ).toBe('caFile');
    expect(
      (
        await rejection(
          curlHealthCommand({ zone: ZONE, name: NAME, caFile: '/ca.pem', query: q, path: '/h?x=`id`' }),
        )
      ).field,
    ).toBe('path');
  });

  it('fails when the DNS server has no address, and refuses a non-address answer', async () => {
    expect(
      (
        await rejection(
          curlHealthCommand({ zone: ZONE, name: NAME, caFile: '/ca.pem', query: answering([]) }),
        )
      ).code,
    ).toBe('not_found');
    expect(
      (
        await rejection(
          curlHealthCommand({ zone: ZONE, name: NAME, caFile: '/ca.pem', query: answering(['0.0.0.0']) }),
        )
      ).field,
    ).toBe('answer');
  });

  it("matches this machine's curl: --dns-servers is unsupported, --resolve is (why the name is resolved first)", () => {
    const help = execFileSync('curl', ['--help', 'all'], { encoding: 'utf8' });
    expect(help).toContain('--resolve');
    let dnsServers = '';
    try {
      execFileSync('curl', ['--dns-servers', '127.0.0.1', 'http://127.0.0.1:9/'], {
        encoding: 'utf8',
        stdio: 'pipe',
      });
    } catch (err) {
      dnsServers = String((err as { stderr?: unknown }).stderr);
    }
    expect(dnsServers).toMatch(/doesn't support this|not support/);
  });
});

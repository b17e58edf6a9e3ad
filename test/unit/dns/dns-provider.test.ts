import {
  parseIpv4,
  parseIpv6,
  parseRecordInput,
  parseRecordName,
} from '../../../orchestrator/dns/dns-provider';
import { isOrchestratorError, type OrchestratorError } from '../../../orchestrator/errors';

const ZONE = 'agents.localhost.test';
const ID = '7f0c2a8e-1b2c-4d3e-8f90-0123456789ab';

const thrown = (fn: () => unknown): OrchestratorError => {
  try {
    fn();
  } catch (err) {
    if (isOrchestratorError(err)) return err;
    throw err;
  }
  throw new Error('expected an OrchestratorError');
};

describe('DNS record validation', () => {
  it('accepts one label under the zone, lower-cased and without the trailing dot', () => {
    expect(parseRecordName(ZONE, 'a1-b2.agents.localhost.test')).toBe('a1-b2.agents.localhost.test');
    expect(parseRecordName(ZONE, 'A1.Agents.LocalHost.Test.')).toBe('a1.agents.localhost.test');
  });

  it.each([
    ['another zone', 'a1.example.com'],
    ['the zone as a suffix of a label', 'a1.evilagents.localhost.test'],
    ['the zone under another', 'a1.agents.localhost.test.evil.com'],
    ['the apex itself', 'agents.localhost.test'],
    ['two labels under the zone', 'a.b.agents.localhost.test'],
    ['an empty label', '.agents.localhost.test'],
    ['a wildcard', '*.agents.localhost.test'],
    ['a shell payload', '$(reboot);x.agents.localhost.test'],
    ['a newline that would add a knotc command', 'a1\nzone-purge.agents.localhost.test'],
    ['a space that would split an argument', 'a b.agents.localhost.test'],
    ['an option-looking label', '-s.agents.localhost.test'],
    ['a path', '../../etc.agents.localhost.test'],
    ['a NUL byte', 'a\u0000.agents.localhost.test'],
    ['a label over 63 characters', `${'a'.repeat(64)}.agents.localhost.test`],
    ['a non-ASCII label', 'ä.agents.localhost.test'],
  ])('refuses %s, naming the field and not echoing the value', (_, name) => {
    const err = thrown(() => parseRecordInput(ZONE, { name, ipv4: '10.0.0.1', deploymentId: ID }));
    expect(err.code).toBe('invalid_input');
    expect(err.field).toBe('name');
    expect(err.message.startsWith('name: ')).toBe(true);
    expect(err.message).not.toContain(name);
  });

  it('refuses a name that is not a string', () => {
    expect(thrown(() => parseRecordName(ZONE, 42)).field).toBe('name');
  });

  it.each([
    '1.2.3',
    '256.1.1.1',
    '01.2.3.4',
    '0.0.0.0',
    '0.1.2.3',
    '224.0.0.1',
    '255.255.255.255',
    '1.2.3.4 ',
    '1.2.3.4\nzone-purge',
    '::1',
    '',
  ])('refuses the IPv4 address %j with field ipv4', (ipv4) => {
    const err = thrown(() => parseRecordInput(ZONE, { name: `a1.${ZONE}`, ipv4, deploymentId: ID }));
    expect([err.code, err.field]).toEqual(['invalid_input', 'ipv4']);
  });

  it.each(['fe80::1%eth0', '::', 'ff02::1', '1.2.3.4', 'gggg::1', '2001:db8::1 ', '2001:db8::1\n'])(
    'refuses the IPv6 address %j with field ipv6',
    (ipv6) => {
      const err = thrown(() =>
        parseRecordInput(ZONE, { name: `a1.${ZONE}`, ipv4: '10.0.0.1', ipv6, deploymentId: ID }),
      );
      expect([err.code, err.field]).toEqual(['invalid_input', 'ipv6']);
    },
  );

  it('keeps real addresses, IPv6 in canonical form', () => {
    expect(parseIpv4('100.64.3.9')).toBe('100.64.3.9');
    expect(parseIpv6('2001:DB8:0:0::0:1')).toBe('2001:db8::1');
  });

  it('refuses a deployment id that is not a lowercase uuid', () => {
    const err = thrown(() =>
      parseRecordInput(ZONE, { name: `a1.${ZONE}`, ipv4: '10.0.0.1', deploymentId: 'x; drop' }),
    );
    expect([err.code, err.field]).toEqual(['invalid_input', 'deploymentId']);
  });
});

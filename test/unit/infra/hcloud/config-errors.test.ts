import { loadConfig } from '../../../../orchestrator/config';
import { classify, OrchestratorError } from '../../../../orchestrator/errors';
import { parseAgentSettings } from '../../../../orchestrator/infra/hcloud/agent-inputs';
import { cidrProblem } from '../../../../orchestrator/infra/validation';
import { mapStackError } from '../../../../orchestrator/infra/hcloud/stack-errors';
import { generateHostKeyPair } from '../../../../orchestrator/remote/host-keys';
import { commandError } from '../../../support/fake-workspace';

/**
 * Issue 13 item 7: a configuration error must be refused once, permanently, before any stack
 * exists — never handed to Hetzner to be refused after a server was paid for, never retried.
 */
const settings = (over: Record<string, unknown> = {}) => ({
  deploymentId: '0b9e1c52-1111-4222-8333-444455556666',
  orgId: '0b9e1c52-aaaa-4bbb-8ccc-ddddeeeeffff',
  subdomain: 'a1',
  zone: 'agents.example.com',
  sshKeyId: '42',
  sshCidrs: ['192.0.2.0/24'],
  hostPublicKey: generateHostKeyPair().publicKey,
  ...over,
});

const refusal = (fn: () => unknown): OrchestratorError => {
  try {
    fn();
  } catch (err) {
    if (err instanceof OrchestratorError) return err;
    throw err;
  }
  throw new Error('expected a refusal');
};

describe('canonical CIDRs only', () => {
  it.each([
    ['203.0.113.7/24', false],
    ['203.0.113.0/24', true],
    ['203.0.113.7/32', true],
    ['0.0.0.0/0', true],
    ['10.0.0.1/8', false],
    ['2001:db8::1/64', false],
    ['2001:db8::/64', true],
    ['2001:db8:ffff::/48', true],
    ['::/0', true],
    ['2001:db8::1/128', true],
    ['192.0.2.0/33', false],
    ['192.0.2.0/024', false],
    ['192.0.2.256/32', false],
    ['192.0.2.0', false],
  ])('%s accepted: %s', (cidr, ok) => {
    expect(cidrProblem(cidr) === undefined).toBe(ok);
  });

  it('the stack settings refuse a CIDR with host bits, naming the key, permanently', () => {
    const err = refusal(() => parseAgentSettings(settings({ sshCidrs: ['192.0.2.0/24', '203.0.113.7/24'] })));
    expect([err.code, err.field, classify(err)]).toEqual(['invalid_input', 'sshCidrs.1', 'permanent']);
    expect(err.message).toContain('canonical');
    expect(err.message).not.toContain('203.0.113.7');
    expect(parseAgentSettings(settings({ sshCidrs: ['203.0.113.0/24'] })).sshCidrs).toEqual([
      '203.0.113.0/24',
    ]);
  });

  it('the configuration refuses one too', () => {
    const err = refusal(() => loadConfig({ ORCHESTRATOR_SSH_CIDRS: '192.0.2.10/32,203.0.113.7/24' }));
    expect(err.code).toBe('config_invalid');
    expect(err.message).toContain('ORCHESTRATOR_SSH_CIDRS');
    expect(err.message).not.toContain('203.0.113.7');
    expect(loadConfig({ ORCHESTRATOR_SSH_CIDRS: '203.0.113.0/24' }).ORCHESTRATOR_SSH_CIDRS).toEqual([
      '203.0.113.0/24',
    ]);
  });
});

describe("locations from Hetzner's list", () => {
  it.each(['fsn1', 'nbg1', 'hel1', 'ash', 'hil', 'sin'])(
    '%s is accepted by the stack and the config',
    (l) => {
      expect(parseAgentSettings(settings({ location: l })).location).toBe(l);
      expect(loadConfig({ HCLOUD_LOCATION: l }).HCLOUD_LOCATION).toBe(l);
    },
  );

  it.each(['xyz1', 'fsn2', 'FSN1', 'ash1'])('%s is refused', (l) => {
    const err = refusal(() => parseAgentSettings(settings({ location: l })));
    expect([err.code, err.field]).toEqual(['invalid_input', 'location']);
    expect(refusal(() => loadConfig({ HCLOUD_LOCATION: l })).message).toContain('HCLOUD_LOCATION');
  });
});

describe('errors no retry can fix are permanent', () => {
  it.each([
    'error: 1 error occurred:\n  * creating server: server type cx23 is unavailable in this location (resource_unavailable, 5f2a)',
    'error: creating rrset: zone is not in primary mode (incorrect_zone_mode)',
    '  * server type "cx11" not found',
    '  * image ubuntu-18.04 not found',
    '  * location "fsn9" not found',
  ])('%s', (stderr) => {
    const mapped = mapStackError(commandError({ stderr }), { stack: 'agent-x', op: 'up' });
    expect(mapped.code).toBe('provider_rejected');
    expect(classify(mapped)).toBe('permanent');
  });

  it('a placement error and a locked resource stay retryable (control)', () => {
    for (const stderr of ['  * no capacity (placement_error)', '  * action running (locked)']) {
      const mapped = mapStackError(commandError({ stderr }), { stack: 'agent-x', op: 'up' });
      expect([mapped.code, classify(mapped)]).toEqual(['provider_unavailable', 'retry']);
    }
  });
});

import { loadConfig } from '../../../orchestrator/config';
import { dnsServerFromConfig, makeDnsFromConfig } from '../../../orchestrator/dns/dns-wiring';
import { isOrchestratorError } from '../../../orchestrator/errors';

describe('DNS from config', () => {
  it('local mode: the Knot adapter, answers from 127.0.0.1:53530 unless DNS_SERVER says otherwise', () => {
    const config = loadConfig({});
    expect(makeDnsFromConfig(config).name).toBe('local');
    expect(dnsServerFromConfig(config)).toBe('127.0.0.1:53530');
    expect(dnsServerFromConfig(loadConfig({ DNS_SERVER: '[::1]:5353' }))).toBe('[::1]:5353');
  });

  it('hcloud: the verifier, asking the zone NS unless DNS_SERVER is set', () => {
    const config = loadConfig({
      HOST_PROVIDER: 'hcloud',
      HCLOUD_TOKEN: 'a'.repeat(64),
      DNS_ZONE: 'agents.example.com',
      ORCHESTRATOR_SSH_CIDRS: '192.0.2.10/32',
    });
    expect(makeDnsFromConfig(config).name).toBe('hcloud');
    expect(dnsServerFromConfig(config)).toBeUndefined();
  });

  it.each(['localhost:53', '127.0.0.1', '127.0.0.1:53 ', '300.0.0.1:53', '127.0.0.1:53;x'])(
    'refuses DNS_SERVER %j naming the variable, not the value',
    (value) => {
      let message = '';
      try {
        loadConfig({ DNS_SERVER: value });
      } catch (err) {
        if (isOrchestratorError(err)) message = err.message;
      }
      expect(message).toContain('DNS_SERVER:');
      expect(message).not.toContain(value);
    },
  );
});

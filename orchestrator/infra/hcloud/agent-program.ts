import * as hcloud from '@pulumi/hcloud';
import * as pulumi from '@pulumi/pulumi';
import { readAgentStackInputs, type AgentStackInputs } from './agent-inputs';
import type { Secret } from '../../secret';

/**
 * One agent's infrastructure: a server, a firewall applied to it, and the A/AAAA records of
 * `<subdomain>.<zone>`. A pure function of its inputs: no environment, no clock, no randomness, so
 * the workers (Automation API, inline) and ops (`pulumi up -s agent-<id>`) declare the same thing.
 * Secrets never enter it: the agent's keys are written over SSH after the server exists; the user
 * data (which carries the generated host key) travels as a Pulumi secret.
 */
export interface AgentStackOutputs {
  readonly serverId: pulumi.Output<string>;
  readonly ipv4: pulumi.Output<string>;
  readonly ipv6: pulumi.Output<string>;
  readonly dnsName: pulumi.Output<string>;
  readonly hostPublicKey: pulumi.Output<string>;
}

const ANYWHERE = ['0.0.0.0/0', '::/0'];
export const DNS_TTL = 300;

export const defineAgentStack = (inputs: AgentStackInputs): AgentStackOutputs => {
  const name = `agent-${inputs.deploymentId}`;
  const labels = { 'managed-by': 'cortex', org: inputs.orgId, deployment: inputs.deploymentId };

  // An explicit provider, so the polling interval is part of the program and of the state. No
  // token input: the provider plugin reads HCLOUD_TOKEN from the environment, so the token is in
  // neither the stack config nor the state.
  const provider = new hcloud.Provider('hcloud', {
    pollInterval: inputs.pollInterval,
    pollFunction: 'constant',
  });
  const opts = { provider };

  const firewall = new hcloud.Firewall(
    'firewall',
    {
      name,
      labels,
      rules: [
        {
          direction: 'in',
          protocol: 'tcp',
          port: '22',
          sourceIps: [...inputs.sshCidrs],
          description: 'ssh from the orchestrator',
        },
        {
          direction: 'in',
          protocol: 'tcp',
          port: '80',
          sourceIps: ANYWHERE,
          description: 'http (acme, redirect)',
        },
        { direction: 'in', protocol: 'tcp', port: '443', sourceIps: ANYWHERE, description: 'https' },
        { direction: 'in', protocol: 'icmp', sourceIps: ANYWHERE, description: 'ping, path mtu' },
      ],
    },
    opts,
  );

  const server = new hcloud.Server(
    'server',
    {
      name,
      serverType: inputs.serverType,
      image: inputs.image,
      location: inputs.location,
      labels,
      sshKeys: [inputs.sshKeyId],
      firewallIds: [firewall.id.apply((id) => Number(id))],
      publicNets: [{ ipv4Enabled: true, ipv6Enabled: true }],
      userData: inputs.userData === undefined ? undefined : pulumi.secret(inputs.userData),
      // Hetzner refuses to delete or rebuild a protected server: a mistaken plan, a console click
      // or a script cannot destroy a live agent. Lifted only by deprovisioning (HostProvider.destroy).
      deleteProtection: true,
      rebuildProtection: true,
    },
    {
      ...opts,
      additionalSecretOutputs: ['userData'],
      // A fixed name cannot exist twice in a Hetzner project: a replacement must delete first.
      deleteBeforeReplace: true,
      // User data and SSH keys matter only at first boot (the host is re-keyed over SSH after the
      // first login); a changed template or a rotated orchestrator key must not destroy running
      // agents. Rebuild one deliberately with `pulumi up --replace <server urn>`.
      ignoreChanges: ['userData', 'sshKeys'],
    },
  );

  const record = (type: 'A' | 'AAAA', value: pulumi.Output<string>): hcloud.ZoneRrset =>
    new hcloud.ZoneRrset(
      `dns-${type.toLowerCase()}`,
      { zone: inputs.zone, name: inputs.subdomain, type, ttl: DNS_TTL, records: [{ value }], labels },
      // Depends on the server through its address, so a destroy removes the records first: a
      // recycled IP never serves a stale name.
      opts,
    );
  record('A', server.ipv4Address);
  record('AAAA', server.ipv6Address);

  return {
    serverId: server.id,
    ipv4: server.ipv4Address,
    ipv6: server.ipv6Address,
    dnsName: pulumi.output(`${inputs.subdomain}.${inputs.zone}`),
    hostPublicKey: pulumi.output(inputs.hostPublicKey),
  };
};

/**
 * The program both entry points run: settings from the stack config; user data from the worker
 * (inline) or from the encrypted `cortex:userData` config value (ops).
 */
export const agentProgram = (userData?: Secret) => async (): Promise<AgentStackOutputs> => {
  const inputs = readAgentStackInputs(userData);
  if (inputs.userData === undefined)
    await pulumi.log.warn('no cortex:userData: a server created by this run would have no pinned host key');
  return defineAgentStack(inputs);
};

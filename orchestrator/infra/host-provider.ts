import type { Secret } from '../secret';

/**
 * The seam between cloud and local: what the provisioning steps need from "a server".
 * `local` (systemd-nspawn on this machine) and `hcloud` (Hetzner through Pulumi) both implement it
 * and return the same description, so every step above this port is provider-agnostic.
 */
export type HostState = 'starting' | 'running' | 'stopped' | 'missing';

export interface HostSpec {
  /** Deployment id (uuid): the host's identity; one host per deployment. */
  readonly deploymentId: string;
  /** Organisation id, for labels and orphan sweeps. */
  readonly orgId: string;
  /** DNS label under the zone: `<subdomain>.<zone>`. */
  readonly subdomain: string;
  /**
   * Cloud-init user data (`#cloud-config` …), identical for both providers. Never holds a customer
   * secret, but carries the host's generated private SSH key, so it travels as a Secret: a log line,
   * an error or a job payload that picks up a HostSpec prints `[REDACTED]`.
   */
  readonly userData: Secret;
  /** The host public key the orchestrator generated and placed in `userData` (OpenSSH `ssh-ed25519 AAAA…`). */
  readonly hostPublicKey: string;
  /** Provider hints; each provider documents what it honours. */
  readonly location?: string;
  readonly serverType?: string;
}

export interface HostDescription {
  readonly deploymentId: string;
  /** Provider-specific server id: Hetzner server id, or the local machine name. */
  readonly serverId: string;
  /** Address the orchestrator connects to over SSH (IPv4 for both providers). */
  readonly ipv4: string;
  readonly ipv6?: string;
  /** Fully qualified name when the provider manages DNS (hcloud); local hosts have none. */
  readonly dnsName?: string;
  /** The pinned host public key (OpenSSH format) to verify SSH connections against. */
  readonly hostPublicKey: string;
  readonly state: HostState;
}

export interface HostProvider {
  readonly name: 'local' | 'hcloud';
  /** Create the host if it does not exist; a second call returns the same host. */
  ensure(spec: HostSpec, opts?: { signal?: AbortSignal }): Promise<HostDescription>;
  /** Describe the host of a deployment, or `undefined` if there is none. */
  describe(deploymentId: string): Promise<HostDescription | undefined>;
  /** Destroy the host and everything the provider made for it; destroying a missing host is done. */
  destroy(deploymentId: string, opts?: { signal?: AbortSignal }): Promise<void>;
  /** Deployment ids of every host this provider manages (for orphan sweeps). */
  list(): Promise<string[]>;
}

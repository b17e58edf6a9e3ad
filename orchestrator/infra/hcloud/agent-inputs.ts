import * as pulumi from '@pulumi/pulumi';
import type { ConfigMap } from '@pulumi/pulumi/automation';
import { z } from 'zod';
import {
  canonicalCidr,
  dnsLabel,
  dnsZone,
  ed25519PublicKey,
  hcloudLocation,
  hcloudServerType,
  pollInterval,
  uuidId,
} from '../validation';
import { parseStackSettings } from './stack-settings';
import { PULUMI_PROJECT } from './stack-names';
import type { Secret } from '../../secret';

/**
 * The inputs of one agent stack, and their two encodings: the stack config the workers write
 * (through the Automation API) and ops write by hand (`Pulumi.agent-<id>.yaml`), and the typed
 * object the program is a pure function of. One schema validates both directions, so a key that a
 * worker writes is a key the program reads.
 */

export const agentSettingsSchema = z.object({
  // Names the server and firewall `agent-<id>` and labels them: the deployment's uuid, nothing freer.
  deploymentId: uuidId,
  /** A label value on every resource: the organisation's uuid. */
  orgId: uuidId,
  subdomain: dnsLabel,
  zone: dnsZone,
  location: hcloudLocation.default('fsn1'),
  serverType: hcloudServerType.default('cx23'),
  image: z.string().min(1).default('ubuntu-24.04'),
  /** Id of the orchestrator's `hcloud.SshKey`, an output of the platform stack. */
  sshKeyId: z.string().regex(/^\d+$/, 'must be a numeric Hetzner SSH key id'),
  /** CIDRs allowed to reach port 22: the orchestrator's egress addresses. */
  sshCidrs: z.array(canonicalCidr).min(1, 'must list at least one CIDR'),
  /** The host key the orchestrator generated and pins; exported so `describe` can return it. */
  hostPublicKey: ed25519PublicKey,
  /** The hcloud provider's action polling interval, used with pollFunction 'constant' (docs/infrastructure.md). */
  pollInterval,
});

export type AgentSettings = z.output<typeof agentSettingsSchema>;
export type AgentSettingsInput = z.input<typeof agentSettingsSchema>;

/**
 * What the program needs: the settings plus the user data, which only ever travels as a secret.
 * Absent only when ops run the program by hand without `cortex:userData`: the server ignores
 * changes to it after creation, so an existing server is unaffected.
 */
export interface AgentStackInputs extends AgentSettings {
  readonly userData: pulumi.Input<string> | undefined;
}

/** Validate settings; the first problem becomes an `invalid_input` naming the config key (never its value). */
export const parseAgentSettings = (raw: unknown): AgentSettings =>
  parseStackSettings(agentSettingsSchema, raw);

/** Ops may set the user data as an encrypted config value (`pulumi config set --secret`, value on stdin). */
export const USER_DATA_KEY = 'userData';

/**
 * The stack config a worker writes before `up`: every setting, in plain text, and nothing secret.
 * The Automation API's `setAllConfig` passes values as command-line arguments (`pulumi config
 * set-all --secret k=v`), visible in /proc and echoed into its error message when the command
 * fails, so the user data (it carries the generated host private key) never goes through it: the
 * worker hands it to the inline program instead (`agentProgram(userData)`).
 */
export const agentStackConfig = (settings: AgentSettings): ConfigMap => {
  const config: ConfigMap = {};
  for (const [name, value] of Object.entries(settings) as [
    keyof AgentSettings,
    AgentSettings[keyof AgentSettings],
  ][]) {
    // Lists travel as JSON strings; `Config.requireObject` parses them, exactly as it parses a YAML
    // list that ops wrote in Pulumi.<stack>.yaml.
    config[`${PULUMI_PROJECT}:${name}`] = {
      value: typeof value === 'string' ? value : JSON.stringify(value),
      secret: false,
    };
  }
  return config;
};

/**
 * Read the inputs from the running stack's config (inside a Pulumi program). `userData`, when
 * given (the workers' inline program), wins over the `cortex:userData` config value (ops).
 */
export const readAgentStackInputs = (
  userData?: Secret,
  config: pulumi.Config = new pulumi.Config(PULUMI_PROJECT),
): AgentStackInputs => {
  const raw: Record<string, unknown> = {};
  for (const name of agentSettingsSchema.keyof().options) {
    raw[name] = name === 'sshCidrs' ? config.getObject<unknown>(name) : config.get(name);
  }
  return {
    ...parseAgentSettings(raw),
    // Revealed only into a Pulumi secret: encrypted in the state, `[secret]` in the engine's output.
    userData: userData !== undefined ? pulumi.secret(userData.reveal()) : config.getSecret(USER_DATA_KEY),
  };
};

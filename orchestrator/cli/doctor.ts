import { constants } from 'node:fs';
import { access, readdir } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import type { Config } from '../config';
import { isOrchestratorError } from '../errors';
import { checkZone, defaultBackendUrl, makeHcloudApi, type HcloudApi } from '../infra/hcloud';

/**
 * `cortexctl doctor`: is this machine able to drive Hetzner through Pulumi? Checks the Pulumi CLI,
 * the hcloud resource plugin at the version the SDK was generated for, a Hetzner token and the
 * means to decrypt stack secrets, and says in plain words what is missing. Never prints a value.
 */
export interface DoctorProbes {
  /** Absolute path of an executable on PATH, or `undefined`. */
  which(command: string): Promise<string | undefined>;
  /** Names in a directory; `[]` when it does not exist. */
  readDir(dir: string): Promise<string[]>;
  /** The Hetzner API with this token (for the DNS zone check); absent: the check is skipped. */
  hcloudApi?(token: string): HcloudApi;
}

export interface DoctorCheck {
  readonly name: string;
  readonly ok: boolean;
  readonly detail: string;
  /** What to do about it, when not ok. */
  readonly fix?: string;
}

export interface DoctorInput {
  readonly config: Pick<
    Config,
    | 'HCLOUD_TOKEN'
    | 'PULUMI_BACKEND_URL'
    | 'PULUMI_CONFIG_PASSPHRASE'
    | 'PULUMI_SECRETS_PROVIDER'
    | 'CORTEX_STATE_DIR'
  > &
    Partial<Pick<Config, 'HOST_PROVIDER' | 'DNS_ZONE'>>;
  /** `$PULUMI_HOME`, or `~/.pulumi`. */
  readonly pulumiHome: string;
  /** The version of `@pulumi/hcloud` in package.json: the plugin must match it. */
  readonly hcloudVersion: string;
}

export const runDoctor = async (input: DoctorInput, probes: DoctorProbes): Promise<DoctorCheck[]> => {
  const checks: DoctorCheck[] = [];

  const cli = await probes.which('pulumi');
  checks.push(
    cli
      ? { name: 'Pulumi CLI', ok: true, detail: `found at ${cli}` }
      : {
          name: 'Pulumi CLI',
          ok: false,
          detail: 'the `pulumi` command is not on PATH, so no stack can be created or destroyed',
          fix: 'install it (https://www.pulumi.com/docs/install/) and add its bin directory to PATH',
        },
  );

  const pluginsDir = path.join(input.pulumiHome, 'plugins');
  const installed = (await probes.readDir(pluginsDir))
    .map((name) => /^resource-hcloud-v(\d+\.\d+\.\d+)$/.exec(name)?.[1])
    .filter((v): v is string => v !== undefined);
  const wanted = input.hcloudVersion;
  checks.push(
    installed.includes(wanted)
      ? { name: 'hcloud plugin', ok: true, detail: `v${wanted} installed in ${pluginsDir}` }
      : {
          name: 'hcloud plugin',
          ok: false,
          detail:
            installed.length === 0
              ? `no hcloud resource plugin in ${pluginsDir}`
              : `found ${installed.map((v) => `v${v}`).join(', ')} in ${pluginsDir}, but @pulumi/hcloud needs v${wanted}`,
          fix: `pulumi plugin install resource hcloud v${wanted}`,
        },
  );

  checks.push(
    input.config.HCLOUD_TOKEN
      ? { name: 'Hetzner token', ok: true, detail: 'HCLOUD_TOKEN is set' }
      : {
          name: 'Hetzner token',
          ok: false,
          detail: 'HCLOUD_TOKEN is not set, so the hcloud provider cannot call the Hetzner API',
          fix: 'create a read & write API token in the Hetzner Cloud console (project → Security → API tokens) and export HCLOUD_TOKEN',
        },
  );

  const backend = input.config.PULUMI_BACKEND_URL ?? defaultBackendUrl(input.config.CORTEX_STATE_DIR);
  const cloudBackend = /^https?:\/\//.test(backend);
  const secrets = input.config.PULUMI_SECRETS_PROVIDER
    ? `secrets provider ${input.config.PULUMI_SECRETS_PROVIDER.split('://')[0]}://…`
    : input.config.PULUMI_CONFIG_PASSPHRASE
      ? 'PULUMI_CONFIG_PASSPHRASE is set'
      : cloudBackend
        ? 'Pulumi Cloud manages stack secrets'
        : undefined;
  checks.push(
    secrets
      ? { name: 'stack secrets', ok: true, detail: secrets }
      : {
          name: 'stack secrets',
          ok: false,
          detail:
            'PULUMI_CONFIG_PASSPHRASE is not set: a file:// or s3:// backend encrypts stack secrets with it',
          fix: 'export PULUMI_CONFIG_PASSPHRASE (the same on every worker), or set PULUMI_SECRETS_PROVIDER (e.g. awskms://…)',
        },
  );

  // The zone must be a primary zone of the token's project before any server is paid for (the
  // provider checks it again, with the record, before each first create).
  const zone = input.config.DNS_ZONE;
  if (input.config.HOST_PROVIDER === 'hcloud' && zone && input.config.HCLOUD_TOKEN && probes.hcloudApi) {
    try {
      await checkZone(probes.hcloudApi(input.config.HCLOUD_TOKEN), zone);
      checks.push({
        name: 'DNS zone',
        ok: true,
        detail: `${zone} is a primary zone of this Hetzner project`,
      });
    } catch (err) {
      checks.push({
        name: 'DNS zone',
        ok: false,
        detail: isOrchestratorError(err) ? err.message : `${zone} could not be checked`,
        fix: 'create DNS_ZONE as a primary zone in the Hetzner Cloud project of HCLOUD_TOKEN (Networking → DNS), and delegate the domain to its name servers',
      });
    }
  }

  checks.push({
    name: 'Pulumi backend',
    ok: true,
    detail: `${describeBackend(backend)}${input.config.PULUMI_BACKEND_URL ? '' : ' (default; set PULUMI_BACKEND_URL to share it)'}`,
  });
  return checks;
};

/** The backend without credentials or query parameters (a URL may carry either). */
const describeBackend = (url: string): string => {
  try {
    const u = new URL(url);
    return `${u.protocol}//${u.host}${u.pathname}`;
  } catch {
    return url.split('?')[0] ?? url;
  }
};

export const formatDoctor = (checks: readonly DoctorCheck[]): string => {
  const lines = checks.map(
    (c) => `${c.ok ? 'ok     ' : 'MISSING'}  ${c.name}: ${c.detail}${c.fix ? `\n         → ${c.fix}` : ''}`,
  );
  const missing = checks.filter((c) => !c.ok).length;
  lines.push(
    missing === 0
      ? 'Everything the hcloud provider needs is here.'
      : `${missing} thing${missing === 1 ? ' is' : 's are'} missing: HOST_PROVIDER=hcloud cannot work on this machine yet.`,
  );
  return `${lines.join('\n')}\n`;
};

/** The real probes: PATH lookup and directory listing. */
export const systemProbes = (env: Readonly<Record<string, string | undefined>>): DoctorProbes => ({
  async which(command) {
    for (const dir of (env.PATH ?? '').split(path.delimiter).filter(Boolean)) {
      const candidate = path.join(dir, command);
      try {
        await access(candidate, constants.X_OK);
        return candidate;
      } catch {
        // not in this directory
      }
    }
    return undefined;
  },
  async readDir(dir) {
    return readdir(dir).catch(() => []);
  },
  hcloudApi: (token) => makeHcloudApi({ token }),
});

export const defaultPulumiHome = (env: Readonly<Record<string, string | undefined>>): string =>
  env.PULUMI_HOME ?? path.join(os.homedir(), '.pulumi');

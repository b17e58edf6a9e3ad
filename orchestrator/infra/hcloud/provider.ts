import type { OutputMap } from '@pulumi/pulumi/automation';
import type { Config } from '../../config';
import { OrchestratorError, invalidInput } from '../../errors';
import { isSecret } from '../../secret';
import type { Logger } from '../../log';
import type { HostDescription, HostProvider, HostSpec } from '../host-provider';
import { agentSettingsSchema, agentStackConfig, parseAgentSettings } from './agent-inputs';
import { agentProgram } from './agent-program';
import type { HcloudApi } from './api';
import { preflightRecords } from './dns-preflight';
import { ed25519PublicKey, uuidId } from '../validation';
import { parseStackSettings } from './stack-settings';
import type { PlanGuard, StackRunner, StackState } from './stack-runner';
import { PULUMI_PROJECT, agentStackName, deploymentIdOfStack } from './stack-names';

/**
 * `HostProvider` on Hetzner Cloud: one Pulumi stack per deployment (`agent-<id>`) holding its
 * server, firewall and DNS records. Reads (`describe`, `list`) come from the Pulumi backend and
 * cost no Hetzner API request.
 *
 * What the real world does to it, and what this provider does back:
 * - the location, server type and image of a host are fixed when it is first created (stored in
 *   its stack config) and never re-derived from the current configuration: a changed default
 *   cannot replace or resize a live server; a HostSpec asking for another one is refused;
 * - before the first server is paid for, the DNS zone and the absence of a foreign record are
 *   checked (`preflightRecords`);
 * - an `up` the CLI did not live to finish leaves creates pending: before the next `up`, whatever
 *   Hetzner made for them (found by name and `deployment` label, absent from the state) is deleted
 *   and the pending creates cleared; a `uniqueness_error` is handled the same way, once;
 * - servers carry delete and rebuild protection, lifted only by `destroy`;
 * - a destroy that fails because something was deleted by hand refreshes and destroys again.
 */
export interface HcloudProviderDeps {
  readonly runner: StackRunner;
  readonly settings: Pick<
    Config,
    | 'DNS_ZONE'
    | 'HCLOUD_LOCATION'
    | 'HCLOUD_SERVER_TYPE'
    | 'HCLOUD_IMAGE'
    | 'HCLOUD_POLL_INTERVAL'
    | 'ORCHESTRATOR_SSH_CIDRS'
  >;
  /** Id of the orchestrator's SSH key (`platformSshKeyId(runner)`). */
  readonly sshKeyId: () => Promise<string>;
  /** The Hetzner API, for the DNS preflight, strays and protection (`makeHcloudApi`). */
  readonly api: HcloudApi;
  readonly log: Logger;
}

export const SERVER_TYPE = 'hcloud:index/server:Server';
export const FIREWALL_TYPE = 'hcloud:index/firewall:Firewall';
export const RRSET_TYPE = 'hcloud:index/zoneRrset:ZoneRrset';

/** The label selector of everything made for one deployment. */
export const deploymentSelector = (deploymentId: string): string =>
  `managed-by=cortex,deployment=${deploymentId}`;

/**
 * Outside deprovisioning, no plan may replace or delete a live server, nor resize it (a changed
 * server type powers it off): the preview decides, before anything is applied.
 */
export const liveServerGuard: PlanGuard = (step) => {
  if (step.type !== SERVER_TYPE) return undefined;
  if (['replace', 'create-replacement', 'delete-replaced', 'delete', 'discard'].includes(step.op))
    return `it would ${step.op === 'delete' || step.op === 'discard' ? 'delete' : 'replace'} the live server${
      step.keys?.length ? ` (changed: ${step.keys.join(', ')})` : ''
    }; deprovision and provision again instead`;
  if (step.op === 'update' && step.diffs?.some((d) => ['serverType', 'location', 'image'].includes(d)))
    return `it would change the live server's ${step.diffs.filter((d) => ['serverType', 'location', 'image'].includes(d)).join(', ')} (a resize powers it off)`;
  return undefined;
};

/** Stack config key (not a program input) holding the pin a caller last handed in for a live host. */
export const CURRENT_KEY = 'currentHostPublicKey';

/** Settings fixed at a host's first creation: a later `up` reads them back from the stack. */
const PINNED = ['location', 'serverType', 'image'] as const;

export const makeHcloudHostProvider = (deps: HcloudProviderDeps): HostProvider => {
  const stackOf = (deploymentId: string): string => {
    if (!uuidId.safeParse(deploymentId).success)
      throw invalidInput('deploymentId', 'must be a lowercase uuid');
    return agentStackName(deploymentId);
  };

  const describe = async (
    deploymentId: string,
    signal?: AbortSignal,
  ): Promise<HostDescription | undefined> => {
    const stack = stackOf(deploymentId);
    const outputs = await deps.runner.outputs(stack, agentProgram(), { signal, log: deps.log });
    const host = outputs && toDescription(deploymentId, outputs);
    if (!host) return undefined;
    // The current pin when a caller has told us one (see ensure); the first-boot key otherwise.
    const current = stored(
      await deps.runner.inspect(stack, agentProgram(), { signal, log: deps.log }),
      CURRENT_KEY,
    );
    return current !== undefined && ed25519PublicKey.safeParse(current).success
      ? { ...host, hostPublicKey: current }
      : host;
  };

  const stored = (state: StackState | undefined, key: string): string | undefined => {
    const v = state?.config[`${PULUMI_PROJECT}:${key}`]?.value;
    return typeof v === 'string' && v !== '' ? v : undefined;
  };
  const has = (state: StackState | undefined, type: string, name: string): boolean =>
    state?.resources.some((r) => r.type === type && r.urn.endsWith(`::${name}`)) ?? false;

  /**
   * Deletes what Hetzner holds for this deployment but its state does not: found by exact name and
   * the deployment's label, so nothing of another deployment (or made by hand) is touched.
   */
  const clearStrays = async (
    spec: { deploymentId: string; subdomain: string },
    state: StackState | undefined,
    log: Logger,
  ): Promise<number> => {
    const name = agentStackName(spec.deploymentId);
    const labelSelector = deploymentSelector(spec.deploymentId);
    let cleared = 0;
    if (!has(state, SERVER_TYPE, 'server'))
      for (const s of await deps.api.servers({ name, labelSelector })) {
        await deps.api.deleteServer(s.id);
        cleared++;
      }
    if (!has(state, FIREWALL_TYPE, 'firewall'))
      for (const f of await deps.api.firewalls({ name, labelSelector })) {
        await deps.api.deleteFirewall(f.id);
        cleared++;
      }
    for (const type of ['A', 'AAAA'] as const) {
      if (has(state, RRSET_TYPE, `dns-${type.toLowerCase()}`)) continue;
      const r = await deps.api.rrset(deps.settings.DNS_ZONE, spec.subdomain, type);
      if (r && r.labels['deployment'] === spec.deploymentId) {
        await deps.api.deleteRrset(deps.settings.DNS_ZONE, spec.subdomain, type);
        cleared++;
      }
    }
    if (cleared > 0) log.warn({ cleared }, 'deleted resources an interrupted update left untracked');
    return cleared;
  };

  /** Deletes whatever still carries the deployment's label after its stack is gone (3 listings). */
  const sweepLabelled = async (deploymentId: string): Promise<void> => {
    const labelSelector = deploymentSelector(deploymentId);
    const zone = deps.settings.DNS_ZONE;
    let swept = 0;
    for (const s of await deps.api.servers({ labelSelector })) {
      await deps.api.deleteServer(s.id);
      swept++;
    }
    for (const f of await deps.api.firewalls({ labelSelector })) {
      await deps.api.deleteFirewall(f.id);
      swept++;
    }
    for (const r of await deps.api.rrsets(zone, { labelSelector })) {
      await deps.api.deleteRrset(zone, r.name, r.type);
      swept++;
    }
    if (swept > 0) deps.log.warn({ deploymentId, swept }, 'deleted labelled resources no stack tracked');
  };

  return {
    name: 'hcloud',

    async ensure(spec: HostSpec, opts) {
      const log = deps.log.child({ deploymentId: spec.deploymentId, provider: 'hcloud' });
      if (!isSecret(spec.userData))
        throw invalidInput('userData', 'must be a Secret (it carries the host private key)');
      if (spec.userData.reveal().trim() === '') throw invalidInput('userData', 'must not be empty');
      // Trimmed as the local provider does: both pin the same key line.
      const hostPublicKey = spec.hostPublicKey.trim();
      const stack = stackOf(spec.deploymentId);
      const program = agentProgram(spec.userData);
      const op = { signal: opts?.signal, log, redact: [spec.userData.reveal()] };
      // Validated before any stack operation: bad input must not cost one.
      const check = (
        pinned: Partial<Record<(typeof PINNED)[number], string>>,
        seededKey: string = hostPublicKey,
      ) =>
        parseStackSettings(agentSettingsSchema.omit({ sshKeyId: true }), {
          deploymentId: spec.deploymentId,
          orgId: spec.orgId,
          subdomain: spec.subdomain,
          zone: deps.settings.DNS_ZONE,
          sshCidrs: deps.settings.ORCHESTRATOR_SSH_CIDRS,
          hostPublicKey: seededKey,
          pollInterval: deps.settings.HCLOUD_POLL_INTERVAL,
          ...pinned,
        });
      check({
        ...(spec.location === undefined ? {} : { location: spec.location }),
        ...(spec.serverType === undefined ? {} : { serverType: spec.serverType }),
      });

      let state = await deps.runner.inspect(stack, program, op);
      // Location, server type and image: what the stack was created with, else what the deployment
      // stored at request time (the HostSpec); the current defaults only for the image, once.
      const requested = { location: spec.location, serverType: spec.serverType, image: undefined };
      const pinned: Record<(typeof PINNED)[number], string> = { location: '', serverType: '', image: '' };
      for (const key of PINNED) {
        const before = stored(state, key);
        const asked = requested[key];
        if (before !== undefined && asked !== undefined && before !== asked)
          throw invalidInput(
            key,
            `the host was created with ${key} ${before}; changing it would replace or resize a live server — deprovision and provision again instead`,
          );
        const value = before ?? asked ?? (key === 'image' ? deps.settings.HCLOUD_IMAGE : undefined);
        if (value === undefined)
          throw invalidInput(
            key,
            `must be stored with the deployment (region and server_type are set at request time)`,
          );
        pinned[key] = value;
      }
      check(pinned);

      // The server ignores later user-data changes: once it exists, the key it was seeded with
      // (`cortex:hostPublicKey`) is frozen, so a part-failed first `up` retried with a new key
      // hands out the key the server got, never the new one. For a host already handed out, the
      // pin lives in the deployment record (a re-key moves it): the caller's key is taken as the
      // current pin and kept as `cortex:currentHostPublicKey`, which `describe` then returns
      // instead of the stale first-boot key.
      const seeded = has(state, SERVER_TYPE, 'server') ? stored(state, 'hostPublicKey') : undefined;
      const existing = await describe(spec.deploymentId, opts?.signal);
      const current = existing ? hostPublicKey : (seeded ?? hostPublicKey);

      if (state && state.pending.some((p) => p.type === 'creating')) {
        log.warn(
          { pending: state.pending.length },
          'the last update was interrupted: clearing its pending creates',
        );
        await clearStrays(spec, state, log);
        await deps.runner.refresh(stack, program, { ...op, clearPendingCreates: true });
        state = await deps.runner.inspect(stack, program, op);
      }
      if (!has(state, SERVER_TYPE, 'server'))
        // Nothing paid for yet: the zone and the name are checked first.
        await preflightRecords(deps.api, {
          zone: deps.settings.DNS_ZONE,
          subdomain: spec.subdomain,
          deploymentId: spec.deploymentId,
        });

      const settings = parseAgentSettings({
        ...check(pinned, seeded ?? hostPublicKey),
        sshKeyId: await deps.sshKeyId(),
      });
      const config = {
        ...agentStackConfig(settings),
        [`${PULUMI_PROJECT}:${CURRENT_KEY}`]: { value: current, secret: false },
      };
      // A stack that holds a server is previewed first (a pure create has nothing to protect).
      const up = (known: StackState | undefined) =>
        deps.runner.up(stack, program, config, {
          ...op,
          ...(has(known, SERVER_TYPE, 'server') ? { guard: liveServerGuard } : {}),
        });
      let outputs: OutputMap;
      try {
        outputs = await up(state);
      } catch (err) {
        // A name Hetzner says is taken, by something of this very deployment the state does not
        // know: the leftover of an interrupted create. Cleared once, then one more `up`.
        if (!(err instanceof OrchestratorError && err.message.includes('(uniqueness_error'))) throw err;
        const now = await deps.runner.inspect(stack, program, op);
        if ((await clearStrays(spec, now, log)) === 0) throw err;
        outputs = await up(now);
      }
      const host = toDescription(spec.deploymentId, outputs);
      if (!host)
        throw new OrchestratorError('stack_failed', `stack ${stack} is up but has no server outputs`);
      log.info({ serverId: host.serverId, ipv4: host.ipv4, dnsName: host.dnsName }, 'host ensured');
      return { ...host, hostPublicKey: current };
    },

    describe: (deploymentId) => describe(deploymentId),

    async destroy(deploymentId, opts) {
      const stack = stackOf(deploymentId);
      const program = agentProgram();
      const op = { signal: opts?.signal, log: deps.log };
      const state = await deps.runner.inspect(stack, program, op);
      if (!state) {
        // No stack, but Hetzner may hold something labelled for it (the orphan sweep found it).
        await sweepLabelled(deploymentId);
        deps.log.info({ deploymentId, result: 'absent' }, 'host destroyed');
        return;
      }
      // Delete and rebuild protection is lifted here and nowhere else (a server already gone is done).
      for (const r of state.resources)
        if (r.type === SERVER_TYPE && r.id !== undefined) await deps.api.unprotectServer(r.id);
      let result: 'destroyed' | 'absent';
      try {
        result = await deps.runner.destroy(stack, program, op);
      } catch (err) {
        // Something was deleted by hand (the server delete does not tolerate a 404; the firewall
        // delete crashes the plugin): a refresh drops what is gone, then the destroy can finish.
        if (!(err instanceof OrchestratorError) || !['provider_rejected', 'stack_failed'].includes(err.code))
          throw err;
        deps.log.warn({ deploymentId, code: err.code }, 'destroy failed; refreshing and destroying again');
        await deps.runner.refresh(stack, program, op);
        result = await deps.runner.destroy(stack, program, op);
      }
      await sweepLabelled(deploymentId);
      deps.log.info({ deploymentId, result }, 'host destroyed');
    },

    async list() {
      // Stacks, and what Hetzner holds under the cortex label (one request per 50 of each kind):
      // a stray no stack knows (an interrupted create, a lost state) is found too. A stack named
      // by hand (`agent-test`) is no deployment and is skipped, never handed to destroy.
      const fromStacks = (await deps.runner.list({ log: deps.log })).map(deploymentIdOfStack);
      const selector = 'managed-by=cortex';
      const labelled = [
        ...(await deps.api.servers({ labelSelector: selector })),
        ...(await deps.api.firewalls({ labelSelector: selector })),
        ...(await deps.api.rrsets(deps.settings.DNS_ZONE, { labelSelector: selector })),
      ].map((r) => r.labels['deployment']);
      const ids = [...fromStacks, ...labelled].filter(
        (id): id is string => id !== undefined && uuidId.safeParse(id).success,
      );
      return [...new Set(ids)];
    },
  };
};

const text = (outputs: OutputMap, key: string): string | undefined => {
  const v = outputs[key]?.value;
  return typeof v === 'string' && v !== '' ? v : typeof v === 'number' ? String(v) : undefined;
};

/** A stack without server outputs (never up, or destroyed) has no host. */
export const toDescription = (deploymentId: string, outputs: OutputMap): HostDescription | undefined => {
  const serverId = text(outputs, 'serverId');
  const ipv4 = text(outputs, 'ipv4');
  const hostPublicKey = text(outputs, 'hostPublicKey');
  if (!serverId || !ipv4 || !hostPublicKey) return undefined;
  const ipv6 = text(outputs, 'ipv6');
  const dnsName = text(outputs, 'dnsName');
  return {
    deploymentId,
    serverId,
    ipv4,
    ...(ipv6 ? { ipv6 } : {}),
    ...(dnsName ? { dnsName } : {}),
    hostPublicKey,
    // The state of the last successful `up`; asking Hetzner for the live status would spend the
    // rate limit on every describe.
    state: 'running',
  };
};

import { spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import YAML from 'yaml';
import { isOrchestratorError } from '../../../orchestrator/errors';
import { renderEnvFile } from '../../../orchestrator/remote/env-file';
import { generateHostKeyPair } from '../../../orchestrator/remote/host-keys';
import { Secret } from '../../../orchestrator/secret';
import { CADDYFILE_PATH } from '../../../templates/caddyfile';
import {
  agentServerFiles,
  buildUserData,
  renderUserData,
  type UserDataInput,
} from '../../../templates/cloud-init';
import { echoRuntime, openclawRuntime } from '../../../templates/runtime-profiles';
import { AGENT_UNIT_PATH } from '../../../templates/systemd-unit';
import { canary } from '../../support/canary';

const orchestratorPub = generateHostKeyPair().publicKey;

const localInput = (): UserDataInput => ({
  hostname: 'a1b2',
  siteName: 'a1b2.agents.localhost.test',
  hostKey: generateHostKeyPair(),
  orchestratorPublicKey: orchestratorPub,
  tls: { mode: 'internal' },
  runtime: echoRuntime(),
  metadataBlock: 'best-effort',
  installPackages: false,
});
const productionInput = (): UserDataInput => ({
  ...localInput(),
  siteName: 'a1b2.agents.example.com',
  tls: { mode: 'acme', email: 'ops@example.com' },
  runtime: openclawRuntime(),
  metadataBlock: 'required',
  installPackages: true,
});

const schema = (text: string) => {
  const dir = mkdtempSync(join(tmpdir(), 'ci-'));
  try {
    writeFileSync(join(dir, 'user-data'), text);
    const r = spawnSync('cloud-init', ['schema', '--config-file', join(dir, 'user-data')], {
      encoding: 'utf8',
    });
    return { code: r.status, out: `${r.stdout}${r.stderr}` };
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
};

type Doc = {
  ssh_keys: Record<string, string>;
  ssh_authorized_keys: string[];
  write_files: { path: string; content: string; owner: string; permissions: string; defer?: boolean }[];
  runcmd: string[][];
  users: unknown[];
  packages?: string[];
  [k: string]: unknown;
};

type Path = readonly (string | number)[];
const fieldName = (p: Path): string =>
  p.map((k, i) => (typeof k === 'number' ? `[${k}]` : i === 0 ? k : `.${k}`)).join('');
/** Every leaf (string, number, boolean, Secret) of a plain data structure, as a path. */
const leafPaths = (v: unknown, prefix: Path = []): Path[] => {
  if (v === null || typeof v !== 'object' || v instanceof Secret) return [prefix];
  const entries: [string | number, unknown][] = Array.isArray(v)
    ? v.map((x, i) => [i, x] as [number, unknown])
    : Object.entries(v);
  return entries.flatMap(([k, x]) => leafPaths(x, [...prefix, k]));
};
/** A copy of `obj` with the leaf at `path` replaced (copies along the path, shares the rest). */
const setAt = <T>(obj: T, path: Path, value: unknown): T => {
  const [head, ...rest] = path;
  if (head === undefined) return value as T;
  const copy = (Array.isArray(obj) ? [...obj] : { ...obj }) as Record<string | number, unknown>;
  copy[head] = setAt(copy[head], rest, value);
  return copy as T;
};
const thrown = (fn: () => unknown): unknown => {
  try {
    fn();
  } catch (e) {
    return e;
  }
  throw new Error('expected a throw');
};
const codeOf = (e: unknown) => (isOrchestratorError(e) ? e.code : String(e));
const fieldOf = (e: unknown) => (isOrchestratorError(e) ? e.field : String(e));

const record = (into: Record<string, string>, field: string, outcome: string): void => {
  const prev = into[field];
  into[field] = prev === undefined || prev === outcome ? outcome : `${prev} / ${outcome}`;
};

/**
 * What happens to a canary string put in each field of the local and the production input.
 * `rendered` only where the field is the runtime profile's own code (its command words after the
 * program, its file contents and install commands); every field that could come from a request is
 * checked and refused. `error`: a programming error in a runtime profile, not `invalid_input`.
 */
const EXPECTED_CANARY_OUTCOMES: Record<string, string> = {
  hostname: 'rejected',
  siteName: 'rejected',
  'tls.mode': 'rejected',
  'tls.email': 'rejected',
  'hostKey.publicKey': 'rejected',
  orchestratorPublicKey: 'rejected',
  metadataBlock: 'rejected',
  installPackages: 'absent',
  'runtime.name': 'error',
  'runtime.port': 'rejected',
  'runtime.healthPath': 'absent',
  'runtime.execStart[0]': 'error',
  'runtime.execStart[1]': 'rendered',
  'runtime.execStart[2]': 'rendered',
  // The --port word: the blue/green template unit substitutes the slot's port for it.
  'runtime.execStart[3]': 'error',
  'runtime.execStart[4]': 'rendered',
  'runtime.execStart[5]': 'rendered',
  'runtime.unitOptions[0]': 'error',
  'runtime.unitOptions[1]': 'error',
  'runtime.unitOptions[2]': 'error',
  'runtime.unitOptions[3]': 'error',
  'runtime.files[0].path': 'rejected',
  'runtime.files[0].content': 'rendered',
  'runtime.files[0].permissions': 'rejected',
  'runtime.files[1].path': 'rejected',
  'runtime.files[1].content': 'rendered',
  'runtime.files[1].permissions': 'rejected',
  'runtime.installCommands[0][0]': 'rendered',
  'runtime.packages[0]': 'rejected',
  'runtime.packages[1]': 'rejected',
  'runtime.packages[2]': 'rejected',
  'runtime.runsOffline': 'absent',
  'runtime.swapMode': 'absent',
};

describe('cloud-init user data', () => {
  it.each([
    ['local', localInput],
    ['production', productionInput],
  ])('the %s document passes `cloud-init schema`', (_, make) => {
    const text = renderUserData(buildUserData(make())).reveal();
    expect(text.startsWith('#cloud-config\n')).toBe(true);
    const r = schema(text);
    expect(r.out).toMatch(/Valid cloud-config/);
    expect(r.code).toBe(0);
  });

  it('the schema check is sharp: `users: []` is rejected', () => {
    const doc = buildUserData(localInput());
    expect(schema(renderUserData({ ...doc, users: [] }).reveal()).code).not.toBe(0);
  });

  it('installs the pinned host key, deletes others, generates none, and lets only root in by key', () => {
    const input = localInput();
    const doc = YAML.parse(renderUserData(buildUserData(input)).reveal()) as Doc;
    expect(doc.ssh_keys).toEqual({
      ed25519_private: input.hostKey.privateKey.reveal(),
      ed25519_public: input.hostKey.publicKey,
    });
    expect(doc.ssh_deletekeys).toBe(true);
    expect(doc).not.toHaveProperty('ssh_genkeytypes');
    expect(doc.disable_root).toBe(false);
    expect(doc.ssh_pwauth).toBe(false);
    expect(doc.ssh_authorized_keys).toEqual([orchestratorPub]);
    expect(doc.users).toEqual([{ name: 'root', lock_passwd: true }]);
    const sshd =
      doc.write_files.find((f) => f.path === '/etc/ssh/sshd_config.d/10-cortex.conf')?.content ?? '';
    expect(sshd).toMatch(/^PermitRootLogin prohibit-password$/m);
    expect(sshd).toMatch(/^PasswordAuthentication no$/m);
  });

  it('places exactly the non-secret server files, byte for byte, root-owned', () => {
    const input = localInput();
    const doc = YAML.parse(renderUserData(buildUserData(input)).reveal()) as Doc;
    const expected = agentServerFiles(input);
    expect(doc.write_files.map((f) => f.path)).toEqual(expected.map((f) => f.path));
    for (const f of expected) {
      const placed = doc.write_files.find((w) => w.path === f.path);
      expect(placed?.content).toBe(f.content);
      expect(placed?.owner).toBe('root:root');
      expect(placed?.permissions).toBe(f.permissions);
    }
    expect(doc.write_files.map((f) => f.path)).toEqual(
      expect.arrayContaining([CADDYFILE_PATH, AGENT_UNIT_PATH]),
    );
    expect(doc.write_files.find((f) => f.path === CADDYFILE_PATH)?.defer).toBe(true);
    expect(doc.write_files.some((f) => f.path.startsWith('/etc/cortex'))).toBe(false);
  });

  it('runcmd is argv lists: metadata block, the 0700 env directory, no agent start', () => {
    const doc = buildUserData(localInput()) as Doc;
    // The route of Caddy's upstream (the service port) to the first slot, applied at boot.
    expect(doc.runcmd).toContainEqual(['systemctl', 'enable', '--now', 'cortex-upstream.service']);
    expect(doc.runcmd).toContainEqual(['systemctl', 'enable', '--now', 'cortex-metadata-block.service']);
    expect(doc.runcmd).toContainEqual([
      'install',
      '-d',
      '-m',
      '0700',
      '-o',
      'root',
      '-g',
      'root',
      '/etc/cortex',
    ]);
    expect(doc.runcmd.every((c) => Array.isArray(c))).toBe(true);
    expect(JSON.stringify(doc.runcmd)).not.toContain('cortex-agent');
  });

  it('installs packages only where a mirror is reachable', () => {
    expect(buildUserData(localInput())).not.toHaveProperty('packages');
    const prod = buildUserData(productionInput()) as Doc;
    expect(prod.packages).toEqual(expect.arrayContaining(['caddy', 'nftables', 'curl']));
    expect(prod.package_update).toBe(true);
    expect(prod.runcmd).toContainEqual(['/usr/local/lib/cortex/install-openclaw.sh']);
  });

  it('refuses a Secret in any field but the host key, naming the field and not the value', () => {
    for (const make of [localInput, productionInput]) {
      const input = make();
      const paths = leafPaths(input).filter((p) => fieldName(p) !== 'hostKey.privateKey');
      // Sanity: the walk reaches nested objects and arrays, not just the top level.
      expect(paths.map(fieldName)).toEqual(
        expect.arrayContaining(['hostname', 'tls.mode', 'runtime.execStart[1]', 'runtime.files[0].content']),
      );
      for (const path of paths) {
        const key = canary();
        const err = thrown(() => buildUserData(setAt(input, path, new Secret(key))));
        expect({ path: fieldName(path), code: codeOf(err), field: fieldOf(err) }).toEqual({
          path: fieldName(path),
          code: 'invalid_input',
          field: fieldName(path),
        });
        expect(String((err as Error).message)).not.toContain(key);
      }
    }
    // The one Secret user data carries on purpose is the host key, and it must be one.
    const input = localInput();
    expect((YAML.parse(renderUserData(buildUserData(input)).reveal()) as Doc).ssh_keys.ed25519_private).toBe(
      input.hostKey.privateKey.reveal(),
    );
    const plain = { ...input, hostKey: { ...input.hostKey, privateKey: 'x' as unknown as Secret } };
    expect(fieldOf(thrown(() => buildUserData(plain)))).toBe('hostKey.privateKey');
  });

  it('a key pasted into any field is refused, or lands only where that field is meant to be rendered', () => {
    // Every leaf of the input, set to a canary string: what the builder does with it. A field
    // that starts being copied unfiltered (or stops being checked) changes this table.
    const outcomes: Record<string, string> = {};
    for (const make of [localInput, productionInput]) {
      const input = make();
      for (const path of leafPaths(input)) {
        if (fieldName(path) === 'hostKey.privateKey') continue;
        const key = canary();
        let text: string;
        try {
          text = renderUserData(buildUserData(setAt(input, path, key))).reveal();
        } catch (err) {
          expect(String((err as Error).message)).not.toContain(key);
          const f = fieldOf(err);
          record(
            outcomes,
            fieldName(path),
            !isOrchestratorError(err)
              ? 'error'
              : f === fieldName(path)
                ? 'rejected'
                : `rejected as ${String(f)}`,
          );
          continue;
        }
        record(outcomes, fieldName(path), text.includes(key) ? 'rendered' : 'absent');
      }
    }
    expect(outcomes).toEqual(EXPECTED_CANARY_OUTCOMES);
  });

  it('never contains a customer secret handled in the same flow', () => {
    const key = canary();
    // The flow a provision runs: the env file is rendered (for SSH), the user data built beside it.
    const env = renderEnvFile([{ name: 'ANTHROPIC_API_KEY', value: new Secret(key) }]);
    expect(env.reveal()).toContain(key);
    for (const make of [localInput, productionInput]) {
      const text = renderUserData(buildUserData(make())).reveal();
      expect(text).not.toContain(key);
      expect(text).not.toContain('ANTHROPIC_API_KEY');
      // ...and the env file itself is refused wherever it could be slipped in.
      expect(codeOf(thrown(() => buildUserData({ ...make(), siteName: env as unknown as string })))).toBe(
        'invalid_input',
      );
    }
  });

  it('does not even accept a place to put one', () => {
    const key = canary();
    const withEnv = { ...localInput(), env: [{ name: 'ANTHROPIC_API_KEY', value: new Secret(key) }] };
    const err = (() => {
      try {
        buildUserData(withEnv as UserDataInput);
      } catch (e) {
        return e;
      }
      return undefined;
    })();
    expect(isOrchestratorError(err) && err.code).toBe('invalid_input');
    expect(isOrchestratorError(err) && err.field).toBe('env');
    expect(() => buildUserData({ ...localInput(), hostname: new Secret(key) as unknown as string })).toThrow(
      /Secret/,
    );
  });

  it.each([
    ['hostname', { hostname: 'Bad_Name' }],
    ['orchestratorPublicKey', { orchestratorPublicKey: 'command="sh" ssh-ed25519 AAAA' }],
    ['orchestratorPublicKey', { orchestratorPublicKey: `${orchestratorPub}\nssh-ed25519 AAAAother` }],
    ['hostKey.publicKey', { hostKey: { privateKey: new Secret('x'), publicKey: 'ssh-rsa AAAA' } }],
    ['metadataBlock', { metadataBlock: 'maybe' }],
  ] as const)('rejects a bad %s', (field, patch) => {
    try {
      buildUserData({ ...localInput(), ...(patch as unknown as Partial<UserDataInput>) });
      throw new Error('expected invalid_input');
    } catch (err) {
      expect(isOrchestratorError(err) && err.field).toBe(field);
    }
  });
});

import { existsSync, readdirSync, readFileSync, statSync } from 'node:fs';
import path from 'node:path';

/**
 * The infrastructure layout: the `HostProvider` port (`orchestrator/infra/host-provider.ts`), the
 * validators it shares with the configuration (`orchestrator/infra/validation.ts`), and two
 * adapters, `orchestrator/infra/local/` and `orchestrator/infra/hcloud/`, each with an `index.ts`
 * that is its public surface.
 *
 * The rule: a module inside an adapter folder, other than its `index.ts`, may be imported only
 *   1. by a file in the same adapter folder, or
 *   2. by that adapter's own tests: a file under `test/` that lives in `test/unit/infra/<adapter>/`
 *      or whose file name starts with `<adapter>-` (`test/integration/local-provider.test.ts`,
 *      `test/support/hcloud-world.ts`, `test/unit/pipeline/hcloud-steps.test.ts` …).
 * Everything else (the rest of orchestrator/, workers/, scripts/, bench/, other tests) imports
 * `infra/local`, `infra/hcloud`, `infra/host-provider` or `infra/validation`. The port and the
 * shared validators import no adapter at all.
 */

const root = path.resolve(__dirname, '../../..');
const ADAPTERS = ['local', 'hcloud'] as const;
const INFRA = 'orchestrator/infra';
const SHARED = [`${INFRA}/host-provider.ts`, `${INFRA}/validation.ts`];
const SCANNED = ['orchestrator', 'workers', 'scripts', 'bench', 'test'];

const walk = (dir: string): string[] => {
  if (!existsSync(path.join(root, dir))) return [];
  return readdirSync(path.join(root, dir)).flatMap((name) => {
    const rel = `${dir}/${name}`;
    if (name === 'node_modules' || name.startsWith('.')) return [];
    if (statSync(path.join(root, rel)).isDirectory()) return walk(rel);
    return /\.(ts|js|mjs|cjs)$/.test(name) ? [rel] : [];
  });
};

/** Every relative module specifier in a source text (static and dynamic imports, require, jest.mock). */
export const specifiers = (source: string): string[] =>
  [
    ...source.matchAll(
      /(?:\bfrom|\bimport|\brequire|\bmock|\brequireActual|\bdoMock)\s*\(?\s*(['"`])(\.{1,2}\/[^'"`]*)\1/g,
    ),
  ].map((m) => m[2] as string);

/** The repository-relative file a specifier names (without extension: `.ts`, `.js` or `index.ts`). */
const target = (from: string, spec: string): string =>
  path.posix.normalize(path.posix.join(path.posix.dirname(from), spec)).replace(/\.(ts|js)$/, '');

const adapterOf = (file: string): string | undefined =>
  ADAPTERS.find((a) => file.startsWith(`${INFRA}/${a}/`) || file === `${INFRA}/${a}`);

const isAdapterTest = (file: string, adapter: string): boolean =>
  file.startsWith(`test/unit/infra/${adapter}/`) ||
  (file.startsWith('test/') && path.posix.basename(file).startsWith(`${adapter}-`));

/** Why `file` may not import `spec`, or undefined when the import keeps the rule. */
export const violation = (file: string, spec: string): string | undefined => {
  const to = target(file, spec);
  const adapter = adapterOf(to);
  if (!adapter) return undefined;
  if (SHARED.includes(file)) return `${file} (the port or shared validators) imports adapter ${adapter}`;
  const isIndex = to === `${INFRA}/${adapter}` || to === `${INFRA}/${adapter}/index`;
  if (isIndex || adapterOf(file) === adapter || isAdapterTest(file, adapter)) return undefined;
  return `${file} imports ${spec}, inside the ${adapter} adapter: import '${INFRA}/${adapter}' instead`;
};

describe('infrastructure layout', () => {
  it('states the rule the check enforces (cases that must pass and must fail)', () => {
    // Outside the adapters: only the index.
    expect(violation('orchestrator/cli/doctor.ts', '../infra/hcloud')).toBeUndefined();
    expect(violation('orchestrator/cli/doctor.ts', '../infra/hcloud/index')).toBeUndefined();
    expect(violation('orchestrator/cli/doctor.ts', '../infra/hcloud/api')).toMatch(/hcloud adapter/);
    expect(violation('orchestrator/steps/agent-swap.ts', '../infra/local/exec')).toMatch(/local adapter/);
    expect(violation('bench/hosts.ts', '../orchestrator/infra/local/cgroup.ts')).toMatch(/local adapter/);
    // Inside an adapter: its own modules, never the other adapter's insides.
    expect(violation('orchestrator/infra/local/provider.ts', './exec')).toBeUndefined();
    expect(violation('orchestrator/infra/local/provider.ts', '../hcloud/api')).toMatch(/hcloud adapter/);
    // The port and the shared validators: no adapter, not even its index.
    expect(violation('orchestrator/infra/host-provider.ts', './local')).toMatch(/port/);
    // The adapter's own tests may reach inside; another adapter's or an unrelated test may not.
    expect(
      violation('test/unit/infra/local/host-state.test.ts', '../../../../orchestrator/infra/local/lock'),
    ).toBeUndefined();
    expect(
      violation('test/integration/local-net.test.ts', '../../orchestrator/infra/local/net'),
    ).toBeUndefined();
    expect(
      violation('test/support/hcloud-world.ts', '../../orchestrator/infra/hcloud/provider'),
    ).toBeUndefined();
    expect(violation('test/integration/local-net.test.ts', '../../orchestrator/infra/hcloud/api')).toMatch(
      /hcloud/,
    );
    expect(
      violation('test/unit/infra/hcloud/x.test.ts', '../../../../orchestrator/infra/local/exec'),
    ).toMatch(/local/);
    expect(violation('test/integration/remote-host.test.ts', '../../orchestrator/infra/local/state')).toMatch(
      /local/,
    );
    // Non-infra imports are not this rule's business.
    expect(violation('orchestrator/cli/doctor.ts', '../config')).toBeUndefined();
  });

  it('finds every kind of import in a source text', () => {
    const text = [
      "import { a } from '../infra/local/exec';",
      'import type { B } from "./x";',
      "const c = await import('../infra/hcloud/wiring');",
      "jest.mock('../../orchestrator/infra/local/net');",
      "const d = require('./y.ts');",
      "import 'node:fs';",
    ].join('\n');
    expect(specifiers(text)).toEqual([
      '../infra/local/exec',
      './x',
      '../infra/hcloud/wiring',
      '../../orchestrator/infra/local/net',
      './y.ts',
    ]);
  });

  it('holds in the whole repository', () => {
    const files = SCANNED.flatMap(walk);
    expect(files.length).toBeGreaterThan(100);
    const problems = files.flatMap((file) =>
      specifiers(readFileSync(path.join(root, file), 'utf8'))
        .map((spec) => violation(file, spec))
        .filter((v): v is string => v !== undefined),
    );
    expect(problems).toEqual([]);
  });

  it('has the two adapters, each with its public index, and no prefixed leftovers', () => {
    for (const adapter of ADAPTERS)
      expect(existsSync(path.join(root, INFRA, adapter, 'index.ts'))).toBe(true);
    const top = readdirSync(path.join(root, INFRA));
    expect(top.filter((name) => /^(local|hcloud)-/.test(name))).toEqual([]);
  });
});

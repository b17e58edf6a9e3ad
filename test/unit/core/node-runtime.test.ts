import { execFileSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';

/**
 * The project runs on the Node that the npm package `node` installs into node_modules/.bin, not on
 * the machine's: these fail when the pin, the lock file, `engines` or the PATH npm scripts see
 * disagree, or when the tests themselves run on another Node.
 */
const root = join(__dirname, '../../..');
const pkg = JSON.parse(readFileSync(join(root, 'package.json'), 'utf8')) as {
  dependencies: Record<string, string>;
  engines: { node: string };
};
const lock = JSON.parse(readFileSync(join(root, 'package-lock.json'), 'utf8')) as {
  packages: Record<string, { version?: string }>;
};
const pinned = pkg.dependencies.node ?? '';

describe('Node runtime', () => {
  it('pins the npm package `node` exactly to a Node 24 release, the same in the lock file', () => {
    expect(pinned).toMatch(/^24\.\d+\.\d+$/);
    expect(lock.packages['node_modules/node']?.version).toBe(pinned);
    expect(pkg.engines.node).toBe('>=24.0.0 <25');
  });

  it('runs these tests on the pinned Node', () => {
    expect(process.version).toBe(`v${pinned}`);
  });

  it('puts the pinned Node first on the PATH of npm scripts', () => {
    const out = execFileSync('npm', ['run', '--silent', 'env'], { cwd: root, encoding: 'utf8' });
    const path = /^PATH=(.*)$/m.exec(out)?.[1] ?? '';
    const first = path.split(':')[0] ?? '';
    expect(first).toBe(join(root, 'node_modules/.bin'));
    expect(execFileSync(join(first, 'node'), ['--version'], { encoding: 'utf8' }).trim()).toBe(`v${pinned}`);
  });
});

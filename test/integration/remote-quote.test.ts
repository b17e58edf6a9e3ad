import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { quoteArgv } from '../../orchestrator/remote/shell-quote';

/**
 * Hostile argv through real shells on this machine — the shells sshd hands a command to (`dash`
 * as /bin/sh, `bash` as root's login shell) — and back, byte for byte.
 */
const HOSTILE: string[] = [
  "'; rm -rf / #",
  '$(id -u)',
  '`id -u`',
  '${PATH:-x}',
  '"$HOME"',
  "it's a 'quote'",
  '\\\\\\',
  'tab\there',
  'new\nline\n',
  '\r\n',
  '*.*',
  '~',
  '!!',
  '#',
  '&& || ; | & < > >> 2>&1',
  '日本語 ✓ 𝄞 emoji 🙂',
  '\u001b]0;title\u0007',
  '',
  '-e',
  '--help',
];

const shells = ['/bin/sh', '/bin/dash', '/bin/bash'].filter((s) => existsSync(s));

describe.each(shells)('quoting through %s -c', (sh) => {
  it('returns exactly the bytes of every argument', () => {
    const r = spawnSync(sh, ['-c', quoteArgv(['printf', '%s\\0', ...HOSTILE])]);
    expect(r.status).toBe(0);
    expect(r.stdout).toEqual(Buffer.from(HOSTILE.map((s) => `${s}\0`).join(''), 'utf8'));
  });

  it('never executes a substitution', () => {
    const r = spawnSync(sh, ['-c', quoteArgv(['echo', '$(echo PWNED)', '`echo PWNED`'])]);
    expect(r.stdout.toString()).toBe('$(echo PWNED) `echo PWNED`\n');
  });
});

import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { SWAP_HOST_SCRIPT } from '../../orchestrator/remote/swap-host-script';

const SOCKET_LINE = 'SD_SOCKET = "/run/systemd/private"';
const HEALTHY_LINE = 'HEALTHY_AT = "/run/cortex-swap.healthy-"';

let defaultHealthyAt: string | undefined;

let defaultDirCreated: string | undefined;

/**
 * This test file's temporary HEALTHY_AT prefix. Its directory goes with the file's last test
 * (jest's afterAll, registered when this module loads: each test file loads it afresh); an
 * exit handler would not run, jest ends its workers without one.
 */
const defaultDir = (): string => {
  if (defaultHealthyAt === undefined) {
    defaultDirCreated = mkdtempSync(join(tmpdir(), 'swap-healthy-'));
    defaultHealthyAt = join(defaultDirCreated, 'healthy-');
  }
  return defaultHealthyAt;
};

if (typeof afterAll === 'function') {
  afterAll(() => {
    if (defaultDirCreated !== undefined) rmSync(defaultDirCreated, { recursive: true, force: true });
    defaultDirCreated = undefined;
    defaultHealthyAt = undefined;
  });
}

/**
 * The swap helper with systemd's D-Bus socket pointed at a path that does not exist, so that its
 * systemctl commands run the `systemctl` the test puts on PATH (a stub), whatever the machine
 * running the tests has: as root where systemd is PID 1 they would reach the real manager. What
 * wait-healthy remembers per slot (HEALTHY_AT, /run on a host) goes under `healthyAt` (default: a
 * temporary directory of this process), never into the machine's own /run.
 */
export const helperScriptWithoutBus = (healthyAt?: string): string => {
  if (!SWAP_HOST_SCRIPT.includes(SOCKET_LINE)) throw new Error('the helper names no systemd socket');
  if (!SWAP_HOST_SCRIPT.includes(HEALTHY_LINE)) throw new Error('the helper names no HEALTHY_AT');
  const at = healthyAt ?? defaultDir();
  return SWAP_HOST_SCRIPT.replace(
    SOCKET_LINE,
    'SD_SOCKET = "/nonexistent/cortex-test/systemd-private"',
  ).replace(HEALTHY_LINE, `HEALTHY_AT = "${at}"`);
};

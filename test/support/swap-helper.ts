import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { SWAP_HOST_SCRIPT } from '../../orchestrator/remote/swap-host-script';

const SOCKET_LINE = 'SD_SOCKET = "/run/systemd/private"';
const HEALTHY_LINE = 'HEALTHY_AT = "/run/cortex-swap.healthy-"';

let defaultHealthyAt: string | undefined;

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
  const at =
    healthyAt ?? (defaultHealthyAt ??= join(mkdtempSync(join(tmpdir(), 'swap-healthy-')), 'healthy-'));
  return SWAP_HOST_SCRIPT.replace(
    SOCKET_LINE,
    'SD_SOCKET = "/nonexistent/cortex-test/systemd-private"',
  ).replace(HEALTHY_LINE, `HEALTHY_AT = "${at}"`);
};

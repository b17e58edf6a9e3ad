import { SWAP_HOST_SCRIPT } from '../../orchestrator/remote/swap-host-script';

const SOCKET_LINE = 'SD_SOCKET = "/run/systemd/private"';

/**
 * The swap helper with systemd's D-Bus socket pointed at a path that does not exist, so that its
 * systemctl commands run the `systemctl` the test puts on PATH (a stub), whatever the machine
 * running the tests has: as root where systemd is PID 1 they would reach the real manager.
 */
export const helperScriptWithoutBus = (): string => {
  if (!SWAP_HOST_SCRIPT.includes(SOCKET_LINE)) throw new Error('the helper names no systemd socket');
  return SWAP_HOST_SCRIPT.replace(SOCKET_LINE, 'SD_SOCKET = "/nonexistent/cortex-test/systemd-private"');
};

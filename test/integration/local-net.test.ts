import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { loadConfig } from '../../orchestrator/config';
import { isOrchestratorError } from '../../orchestrator/errors';
import type { HostProvider } from '../../orchestrator/infra/host-provider';
import { cleanupLocalHosts } from '../../orchestrator/infra/local/cleanup';
import { run } from '../../orchestrator/infra/local/exec';
import { ensureLocalImage } from '../../orchestrator/infra/local/image';
import { addressUsers } from '../../orchestrator/infra/local/net';
import { makeLocalHostProvider } from '../../orchestrator/infra/local/provider';
import { localPaths, machineName } from '../../orchestrator/infra/local/state';
import { makeTestHostSpec } from '../support/local-hosts';

jest.setTimeout(180_000);

/**
 * Local-host networking claims on this machine: an address already on another interface is
 * refused (here: an interface holding the gateway of the only slot of a private /30 range,
 * in a state directory of the test's own), the same host boots once the address is free, and
 * neither leaves IPv4 forwarding on: hosts have no route out.
 */
const FORWARD = '/proc/sys/net/ipv4/ip_forward';
const readForward = (): string => readFileSync(FORWARD, 'utf8').trim();
// A veth pair (no `dummy` module in every kernel): one end holds the address.
const DUMMY = `cxb${process.pid % 100000}a`;
const PEER = `cxb${process.pid % 100000}b`;
const linkExists = async (): Promise<boolean> =>
  run('ip', ['link', 'show', DUMMY]).then(
    () => true,
    () => false,
  );
/** The gateway address held by an interface of this test's own (each test sets the state it needs). */
const holdAddress = async (): Promise<void> => {
  if (await linkExists()) return;
  await run('ip', ['link', 'add', DUMMY, 'type', 'veth', 'peer', 'name', PEER]);
  await run('ip', ['addr', 'add', '10.214.255.249/30', 'dev', DUMMY]);
};
const freeAddress = async (): Promise<void> => {
  if (await linkExists()) await run('ip', ['link', 'del', DUMMY]);
};
const SUBNET = '10.214.255.248/30'; // one slot: gateway .249, host .250

describe('local host addresses', () => {
  const stateDir = mkdtempSync(join(tmpdir(), 'local-net-'));
  let provider: HostProvider;
  const t = makeTestHostSpec();

  beforeAll(async () => {
    const image = await ensureLocalImage({ stateDir: loadConfig(process.env).CORTEX_STATE_DIR });
    provider = makeLocalHostProvider({ stateDir, image: image.rootfs, subnet: SUBNET, stopGraceMs: 3_000 });
  }, 20 * 60_000);

  afterAll(async () => {
    await run('ip', ['link', 'del', DUMMY]).catch(() => undefined);
    await provider?.destroy(t.spec.deploymentId).catch(() => undefined);
    await cleanupLocalHosts(localPaths(stateDir)).catch(() => undefined);
    rmSync(stateDir, { recursive: true, force: true });
  });

  it('addressUsers names the interface holding an address of the range, and no other', async () => {
    await freeAddress();
    expect(await addressUsers('10.214.255.249', 30, 've-none')).toEqual([]);
    await holdAddress();
    expect(await addressUsers('10.214.255.249', 30, 've-none')).toEqual([DUMMY]);
    expect(await addressUsers('10.214.255.249', 30, DUMMY)).toEqual([]);
    expect(await addressUsers('10.214.255.253', 30, 've-none')).toEqual([]);
  });

  it('refuses to boot a host on an address already in use, naming the interface', async () => {
    await holdAddress();
    const err: unknown = await provider.ensure(t.spec).catch((e: unknown) => e);
    expect(isOrchestratorError(err) && err.code).toBe('conflict');
    expect((err as Error).message).toBe(
      `address 10.214.255.249/30 of local host ${machineName(t.spec.deploymentId)} is already on ${DUMMY}: is another state directory using the same range? Give each one its own subnet.`,
    );
  });

  it('boots the same host once the address is free, and IPv4 forwarding stays off', async () => {
    const before = readForward();
    await freeAddress();
    const host = await provider.ensure(t.spec);
    expect([host.state, host.ipv4]).toEqual(['running', '10.214.255.250']);
    expect(readForward()).toBe(before);
    expect(readForward()).toBe('0');
  });
});

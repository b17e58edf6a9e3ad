import { loadConfig } from '../../orchestrator/config';
import type { HostDescription } from '../../orchestrator/infra/host-provider';
import { ensureLocalImage, localPaths, makeLocalHostProvider } from '../../orchestrator/infra/local';
import { makeTestHostSpec, sshRun, waitForSsh, type TestHost } from '../support/local-hosts';
import { expectNoTrace } from '../support/local-trace';

/**
 * "Everything works when 50 hosts run at once": 50 hosts requested together all boot, each on its
 * own address, each answering SSH with its own pinned key and only its own; then destroying them
 * together leaves nothing. Boot is CPU-bound (about 2 CPU-seconds per host until SSH is ready),
 * so on two cores this takes a minute or two; the deadlines are generous on purpose — speed is
 * measured by `npm run bench -- hosts`, not asserted here.
 */
const HOSTS = 50;
const stateDir = loadConfig(process.env).CORTEX_STATE_DIR;
const paths = localPaths(stateDir);

it(
  `runs ${HOSTS} hosts at once and tears them all down without a trace`,
  async () => {
    const image = await ensureLocalImage({ stateDir });
    const provider = makeLocalHostProvider({ stateDir, image: image.rootfs, bootTimeoutMs: 10 * 60_000 });
    const tests: TestHost[] = Array.from({ length: HOSTS }, () => makeTestHostSpec());
    let hosts: HostDescription[] = [];
    try {
      hosts = await Promise.all(tests.map((t) => provider.ensure(t.spec)));
      expect(new Set(hosts.map((h) => h.ipv4)).size).toBe(HOSTS);
      expect(new Set(hosts.map((h) => h.serverId)).size).toBe(HOSTS);
      const auth = (i: number) => ({
        privateKey: tests[i]?.clientPrivateKey ?? '',
        hostPublicKey: hosts[i]?.hostPublicKey ?? '',
      });
      await Promise.all(hosts.map((h, i) => waitForSsh(h.ipv4, auth(i), 8 * 60_000)));
      // Each host is itself: its hostname is its own machine, and a neighbour's pinned key is refused.
      const names = await Promise.all(hosts.map((h, i) => sshRun(h.ipv4, auth(i), 'cat /etc/hostname')));
      expect(names.every((r) => r.code === 0)).toBe(true);
      const [h0, h1] = hosts;
      if (!h0 || !h1) throw new Error('no hosts');
      await expect(
        sshRun(
          h1.ipv4,
          { privateKey: tests[1]?.clientPrivateKey ?? '', hostPublicKey: h0.hostPublicKey },
          'true',
        ),
      ).rejects.toThrow(/verification failed|Host denied/i);
      expect(
        (await provider.list()).filter((id) => tests.some((t) => t.spec.deploymentId === id)),
      ).toHaveLength(HOSTS);
    } finally {
      await Promise.all(tests.map((t) => provider.destroy(t.spec.deploymentId)));
    }
    for (const h of hosts) await expectNoTrace(paths, h.serverId);
  },
  20 * 60_000,
);

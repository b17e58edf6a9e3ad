/**
 * The local adapter's public surface: `HostProvider` on systemd-nspawn containers, plus what the
 * composition root, `cortexctl local:cleanup`, `image:build` and the benchmarks need. Nothing
 * outside `orchestrator/infra/local/` imports the modules behind it (test/unit/infra/layout.test.ts
 * holds the rule; the adapter's own tests are the exception it names).
 */
export { makeLocalHostProvider, type LocalHostProviderOptions } from './provider';
export { cleanupLocalHosts, type CleanupReport } from './cleanup';
export { cleanupImageBuilds, ensureLocalImage, findLocalImage, type LocalImage } from './image';
export { localPaths, type LocalPaths } from './state';
export { assertLocalSupported } from './support';
export { CGROUP_PARENT, cgroupHierarchies, readHostMemory, type HostMemory } from './cgroup';

import { createServer, type AddressInfo } from 'node:net';

/**
 * A TCP port on 127.0.0.1 that nobody listened on a moment ago (the kernel's pick, probe closed
 * again). Another process may take it before the caller binds it: use it where that only costs a
 * retry, never as a guarantee.
 */
export const freePort = async (): Promise<number> => {
  const s = createServer();
  await new Promise<void>((r) => s.listen(0, '127.0.0.1', () => r()));
  const p = (s.address() as AddressInfo).port;
  await new Promise((r) => s.close(r));
  return p;
};

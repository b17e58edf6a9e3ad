import { invalidInput, OrchestratorError } from '../errors';
import { quoteArgv } from '../remote/shell-quote';
import { parseIpv4, parseRecordName } from './dns-provider';
import type { DnsQuery } from './dns-query';

/**
 * A `curl` command line for the demo that works when pasted: it reaches the agent by its name
 * through the local DNS server and verifies the certificate against the local CA. Debian's curl is
 * built without c-ares (`--dns-servers` is refused: "the installed libcurl version doesn't support
 * this"), so the name is resolved now, through the given DNS server, and handed to curl with
 * `--resolve <name>:<port>:<address>`; TLS still checks the certificate for `<name>`.
 * Returns the argv (for running it) and the line (every word single-quoted, for printing).
 */
export const curlHealthCommand = async (opts: {
  readonly zone: string;
  readonly name: string;
  /** Absolute path of the PEM file holding the CA root to trust (the host's local CA in local mode). */
  readonly caFile: string;
  readonly query: DnsQuery;
  readonly path?: string;
  readonly port?: number;
}): Promise<{ argv: string[]; line: string; address: string }> => {
  const name = parseRecordName(opts.zone, opts.name);
  if (!opts.caFile.startsWith('/') || /[\0-\x1f\x7f]/.test(opts.caFile))
    throw invalidInput('caFile', 'must be an absolute path without control characters');
  const path = opts.path ?? '/health';
  if (!/^\/[A-Za-z0-9._~\-/]*$/.test(path)) throw invalidInput('path', 'must be a plain absolute URL path');
  const port = opts.port ?? 443;
  if (!Number.isInteger(port) || port < 1 || port > 65535)
    throw invalidInput('port', 'must be a port number');
  const { ipv4 } = await opts.query(name);
  const first = ipv4[0];
  if (first === undefined)
    throw new OrchestratorError('not_found', `${name} has no A record on the DNS server`);
  const address = parseIpv4(first, 'answer');
  const url = port === 443 ? `https://${name}${path}` : `https://${name}:${port}${path}`;
  const argv = [
    'curl',
    '--fail',
    '--silent',
    '--show-error',
    '--cacert',
    opts.caFile,
    '--resolve',
    `${name}:${port}:${address}`,
    url,
  ];
  return { argv, line: quoteArgv(argv), address };
};

import { parseArgs } from 'node:util';
import { loadConfig } from '../config';
import { makeRpcFromConfig } from '../db/rpc-from-config';
import { OrchestratorError, invalidInput } from '../errors';
import { makeWebhookStore, type WebhookStore } from '../webhooks/webhook-store';
import type { CliCommand, CliContext } from './cortexctl';
import { webhookLoopbackAllowed } from '../webhooks/webhook-address';

/**
 * `cortexctl webhooks add|list|remove|deliveries`: an organisation's webhook endpoints, as the API's
 * /v1/webhooks routes manage them (the same SQL functions, audited with actor `cortexctl`). `add`
 * prints the signing secret once.
 */
const USAGE =
  'usage: cortexctl webhooks add --org <id> --url <https://…> [--json]\n' +
  '       cortexctl webhooks list --org <id> [--json]\n' +
  '       cortexctl webhooks remove --org <id> <endpoint id>\n' +
  '       cortexctl webhooks deliveries --org <id> <endpoint id> [--json]';

const parse = (args: readonly string[]) => {
  try {
    return parseArgs({
      args: [...args],
      options: { org: { type: 'string' }, url: { type: 'string' }, json: { type: 'boolean' } },
      allowPositionals: true,
      strict: true,
    });
  } catch (err) {
    throw new OrchestratorError(
      'invalid_input',
      (err as Error).message.replace(/^TypeError \[[A-Z_]+\]: /, ''),
      {
        field: 'argv',
      },
    );
  }
};

const withStore = async <T>(
  ctx: CliContext,
  fn: (s: WebhookStore, allowLoopback: boolean) => Promise<T>,
): Promise<T> => {
  const config = loadConfig({ LOG_LEVEL: 'warn', ...ctx.env });
  const db = makeRpcFromConfig(config);
  try {
    // loopback receivers only in the embedded local mode, as the API and the sender decide it
    return await fn(makeWebhookStore({ rpc: db.rpc }), webhookLoopbackAllowed(config));
  } finally {
    await db.close();
  }
};

const ctxOf = { actor: 'cortexctl' };

export const webhookCommands: Record<string, CliCommand> = {
  webhooks: {
    summary:
      'webhooks add --org <id> --url <u> | list --org <id> | remove --org <id> <id> | deliveries: webhook endpoints',
    async run(args, ctx) {
      const [sub, ...rest] = args;
      const r = parse(rest);
      const org = r.values.org;
      if (!org) throw invalidInput('org', `is required\n${USAGE}`);
      const json = Boolean(r.values.json);
      if (sub === 'add') {
        const url = r.values.url;
        if (!url || r.positionals.length) throw invalidInput('argv', USAGE);
        return withStore(ctx, async (s, allowLoopback) => {
          const e = await s.createEndpoint({ orgId: org, url, allowLoopback }, ctxOf);
          if (json) ctx.out(`${JSON.stringify({ id: e.id, url: e.url, secret: e.secret.reveal() })}\n`);
          else
            ctx.out(
              `endpoint id: ${e.id}\nurl:         ${e.url}\nsecret:      ${e.secret.reveal()}\n` +
                'This is the only time the signing secret is shown; give it to the receiver now.\n',
            );
          return 0;
        });
      }
      if (sub === 'list') {
        return withStore(ctx, async (s) => {
          const list = await s.listEndpoints(org);
          ctx.out(
            json
              ? `${JSON.stringify(list)}\n`
              : list
                  .map(
                    (e) =>
                      `${e.id}  ${e.createdAt}  ${e.url}` +
                      (e.breakerOpenUntil && Date.parse(e.breakerOpenUntil) > Date.now()
                        ? `  held until ${e.breakerOpenUntil} (${e.consecutiveFailures} failures in a row)`
                        : ''),
                  )
                  .join('\n') + (list.length ? '\n' : ''),
          );
          return 0;
        });
      }
      const id = r.positionals[0];
      if ((sub === 'remove' || sub === 'deliveries') && id && r.positionals.length === 1) {
        return withStore(ctx, async (s) => {
          if (sub === 'remove') {
            await s.disableEndpoint(org, id, ctxOf);
            ctx.out(`removed ${id}\n`);
            return 0;
          }
          const ds = await s.listDeliveries(org, id);
          ctx.out(
            json
              ? `${JSON.stringify(ds)}\n`
              : ds
                  .map(
                    (d) =>
                      `${d.id}  event ${d.eventId}  ${d.state}  attempts ${d.attempts}  ${d.lastStatus ?? ''} ${d.lastError ?? ''}`,
                  )
                  .join('\n') + (ds.length ? '\n' : ''),
          );
          return 0;
        });
      }
      throw invalidInput('argv', USAGE);
    },
  },
};

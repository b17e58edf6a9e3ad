import { readFile } from 'node:fs/promises';
import path from 'node:path';
import type { ApiPlugin } from '../server';

/**
 * The docs page at /docs: Swagger UI over /openapi.json, from the assets bundled in
 * @fastify/swagger-ui's package (no CDN, no network fetch). Served by these three routes rather than
 * the plugin itself, whose @fastify/static pulls an ES-module-only dependency that Jest's CommonJS
 * runtime cannot load. Strict CSP: scripts and styles from this origin only.
 */
const ASSETS: Record<string, string> = {
  'swagger-ui.css': 'text/css; charset=utf-8',
  'swagger-ui-bundle.js': 'text/javascript; charset=utf-8',
};
const CSP =
  "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'";

const PAGE = `<!doctype html>
<html lang="en">
<head><meta charset="utf-8"><title>Cortex orchestrator API</title>
<link rel="stylesheet" href="/docs/swagger-ui.css"></head>
<body><div id="swagger-ui"></div>
<script src="/docs/swagger-ui-bundle.js"></script>
<script src="/docs/init.js"></script>
</body></html>
`;
const INIT = `window.ui = SwaggerUIBundle({ url: '/openapi.json', dom_id: '#swagger-ui', deepLinking: false });\n`;

const assetDir = (): string =>
  path.join(path.dirname(require.resolve('@fastify/swagger-ui/package.json')), 'static');

export const docsRoutes: ApiPlugin = async (app) => {
  const cache = new Map<string, Buffer>();
  const opts = { config: { public: true }, schema: { hide: true } } as const;
  app.get('/docs', opts, async (_req, reply) =>
    reply.header('content-security-policy', CSP).type('text/html; charset=utf-8').send(PAGE),
  );
  app.get('/docs/init.js', opts, async (_req, reply) =>
    reply.header('content-security-policy', CSP).type('text/javascript; charset=utf-8').send(INIT),
  );
  for (const [file, type] of Object.entries(ASSETS))
    app.get(`/docs/${file}`, opts, async (_req, reply) => {
      let body = cache.get(file);
      if (!body) {
        body = await readFile(path.join(assetDir(), file));
        cache.set(file, body);
      }
      return reply.header('cache-control', 'public, max-age=3600').type(type).send(body);
    });
};

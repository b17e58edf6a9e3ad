/**
 * `npm run image:build [-- --force] [-- --verbose]`: build the local hosts' base image under
 * `$CORTEX_STATE_DIR/image` unless the image of the current recipe (scripts/image/) is already there.
 * Idempotent; a changed recipe builds a new image, and images no host uses any more are pruned.
 */
import { loadConfig } from '../orchestrator/config';
import { assertLocalSupported, ensureLocalImage } from '../orchestrator/infra/local';

const main = async (): Promise<void> => {
  const args = process.argv.slice(2);
  const unknown = args.filter((a) => a !== '--force' && a !== '--verbose');
  if (unknown.length > 0) {
    console.error(`unknown argument(s) ${unknown.join(' ')}; usage: image-build [--force] [--verbose]`);
    process.exit(2);
  }
  const config = loadConfig(process.env);
  await assertLocalSupported();
  const verbose = args.includes('--verbose');
  let pending = '';
  const img = await ensureLocalImage({
    stateDir: config.CORTEX_STATE_DIR,
    force: args.includes('--force'),
    // debootstrap and apt are chatty: only the recipe's own progress lines unless --verbose.
    onOutput: (chunk) => {
      if (verbose) return void process.stderr.write(chunk);
      const lines = (pending + chunk).split('\n');
      pending = lines.pop() ?? '';
      for (const l of lines) if (l.startsWith('[image]')) process.stderr.write(`${l}\n`);
    },
  });
  console.log(
    img.built
      ? `built base image ${img.rootfs} in ${img.seconds.toFixed(1)} s`
      : `base image up to date: ${img.rootfs}`,
  );
};

main().catch((err: unknown) => {
  console.error(err instanceof Error ? err.message : err);
  process.exit(1);
});

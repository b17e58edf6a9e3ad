import { loadConfig } from '../orchestrator/config';
import { runWorkerProcess } from '../orchestrator/deployments/worker-process';
import { isOrchestratorError } from '../orchestrator/errors';
import { makeLogger } from '../orchestrator/log';

/**
 * The worker process's composition root: config → logger → pipeline → workers. Runs the
 * provision, deprovision and maintenance queues until SIGTERM or SIGINT.
 * `npx tsx workers/worker.ts` (or `npm run cortexctl -- worker`).
 */
const main = async (): Promise<void> => {
  const config = loadConfig(process.env);
  const log = makeLogger({ level: config.LOG_LEVEL, name: 'cortex-worker' });
  const { stop } = await runWorkerProcess(config, log);
  const onSignal = (signal: NodeJS.Signals): void => {
    log.info({ signal }, 'signal received');
    void stop().then(() => process.exit(0));
  };
  // `on`, not `once`: a second signal (a process group signalled twice, an impatient ^C) must not
  // fall back to the default action and kill the process in the middle of a step.
  process.on('SIGTERM', onSignal);
  process.on('SIGINT', onSignal);
};

main().catch((err: unknown) => {
  process.stderr.write(`cortex-worker: ${isOrchestratorError(err) ? err.message : String(err)}\n`);
  process.exit(isOrchestratorError(err) && err.code === 'config_invalid' ? 2 : 1);
});

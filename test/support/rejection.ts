import { isOrchestratorError, type OrchestratorError } from '../../orchestrator/errors';

/** Await a promise that must reject with an OrchestratorError, and return that error. */
export const rejection = async (p: Promise<unknown>): Promise<OrchestratorError> => {
  try {
    await p;
  } catch (err) {
    if (isOrchestratorError(err)) return err;
    throw err;
  }
  throw new Error('expected a rejection with an OrchestratorError');
};

import { OrchestratorError } from '../../errors';

/**
 * Runs one task at a time, in arrival order. A task whose caller gives up (its signal aborts)
 * while it waits leaves the queue without running, and without letting the task behind it
 * overtake the one still running.
 */
export type SerialQueue = <T>(task: () => Promise<T>, signal?: AbortSignal) => Promise<T>;

export const makeSerialQueue = (): SerialQueue => {
  let tail: Promise<void> = Promise.resolve();
  return async <T>(task: () => Promise<T>, signal?: AbortSignal): Promise<T> => {
    const previous = tail;
    let release!: () => void;
    tail = new Promise<void>((resolve) => (release = resolve));
    try {
      await untilAborted(previous, signal);
    } catch (err) {
      // Our turn is given up, but the slot is freed only when the one before it is.
      void previous.then(release);
      throw err;
    }
    try {
      return await task();
    } finally {
      release();
    }
  };
};

const untilAborted = (turn: Promise<void>, signal: AbortSignal | undefined): Promise<void> => {
  if (!signal) return turn;
  if (signal.aborted) return Promise.reject(abortedWhileQueued(signal));
  return new Promise<void>((resolve, reject) => {
    const onAbort = (): void => reject(abortedWhileQueued(signal));
    signal.addEventListener('abort', onAbort, { once: true });
    void turn.then(() => {
      signal.removeEventListener('abort', onAbort);
      resolve();
    });
  });
};

const abortedWhileQueued = (signal: AbortSignal): OrchestratorError =>
  signal.reason instanceof OrchestratorError
    ? signal.reason
    : new OrchestratorError('aborted', 'aborted while waiting for the running stack operation to finish', {
        cause: signal.reason,
      });

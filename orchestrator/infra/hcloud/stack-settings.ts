import type { z } from 'zod';
import { OrchestratorError } from '../../errors';
import { PULUMI_PROJECT } from './stack-names';

/** Validate stack settings; the first problem becomes an `invalid_input` naming the config key (never its value). */
export const parseStackSettings = <S extends z.ZodType>(schema: S, raw: unknown): z.output<S> => {
  const result = schema.safeParse(raw);
  if (result.success) return result.data;
  const issue = result.error.issues[0];
  const field = issue?.path.join('.') || '(root)';
  throw new OrchestratorError(
    'invalid_input',
    `stack config ${PULUMI_PROJECT}:${field}: ${issue?.message ?? 'invalid'}`,
    { field },
  );
};

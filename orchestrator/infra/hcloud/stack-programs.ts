import { agentProgram } from './agent-program';
import { platformProgram } from './platform-program';
import { PLATFORM_STACK, deploymentIdOfStack } from './stack-names';

/** The program of a stack, chosen by its name: `platform`, or `agent-<deployment id>`. */
export const programFor = (stackName: string): (() => Promise<object>) => {
  if (stackName === PLATFORM_STACK) return platformProgram;
  if (deploymentIdOfStack(stackName) !== undefined) return agentProgram();
  throw new Error(`stack "${stackName}" is neither "${PLATFORM_STACK}" nor "agent-<deployment id>"`);
};

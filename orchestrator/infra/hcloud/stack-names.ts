/**
 * Names shared by the Pulumi program, the root `Pulumi.yaml` and the stack runner. The project name
 * is also the namespace of every stack config key (`cortex:subdomain`), so it must match
 * `name:` in `Pulumi.yaml` or `pulumi up -s agent-<id>` would not see the keys the workers wrote.
 */
export const PULUMI_PROJECT = 'cortex';

/** The once-per-Hetzner-project stack: the orchestrator's SSH key. */
export const PLATFORM_STACK = 'platform';

export const AGENT_STACK_PREFIX = 'agent-';

export const agentStackName = (deploymentId: string): string => `${AGENT_STACK_PREFIX}${deploymentId}`;

/**
 * The deployment id of an agent stack, or `undefined` for any other stack. `pulumi stack ls` may
 * print fully qualified names (`org/project/stack`): only the last part counts.
 */
export const deploymentIdOfStack = (stackName: string): string | undefined => {
  const short = stackName.slice(stackName.lastIndexOf('/') + 1);
  return short.startsWith(AGENT_STACK_PREFIX) && short.length > AGENT_STACK_PREFIX.length
    ? short.slice(AGENT_STACK_PREFIX.length)
    : undefined;
};

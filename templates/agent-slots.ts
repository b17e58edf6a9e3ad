/**
 * Blue/green slots of the agent (issue 11): two instances of one systemd template unit,
 * `cortex-agent@blue.service` and `cortex-agent@green.service`, each with its own root-only env
 * file and its own loopback port. Caddy proxies to exactly one of them (the active slot); a swap
 * starts the other with the new environment, moves Caddy to it, and stops the old one.
 *
 * A new server starts on `blue`. Runtimes that cannot run twice (`held-restart`) stay on the slot
 * they run in and are restarted in place.
 */
export const AGENT_SLOTS = ['blue', 'green'] as const;
export type AgentSlot = (typeof AGENT_SLOTS)[number];
/** The slot a new server starts on. */
export const FIRST_SLOT: AgentSlot = 'blue';

export const isAgentSlot = (s: unknown): s is AgentSlot => s === 'blue' || s === 'green';
export const otherSlot = (s: AgentSlot): AgentSlot => (s === 'blue' ? 'green' : 'blue');

/** The root-only directory of the env files (0700) and the active-slot record. */
export const ENV_DIR = '/etc/cortex';
/** `/etc/cortex/agent-<slot>.env`, root:root 0600, read by the service manager only. */
export const slotEnvFilePath = (slot: AgentSlot): string => `${ENV_DIR}/agent-${slot}.env`;
/**
 * The slot Caddy sends traffic to, one word (`blue` or `green`), root:root 0600. Written after
 * every switch; a swap that was cut reads it together with Caddy's live config (which wins) to know
 * where it is.
 */
export const ACTIVE_SLOT_PATH = `${ENV_DIR}/active-slot`;

/**
 * The agent's dynamic user (systemd `DynamicUser=`). Each slot runs as a user of its own,
 * `cortex-agent-<slot>`, so the two instances of a swap have different uids: the old one cannot
 * signal the new one. The plain (non-slot) unit keeps the bare name.
 */
export const AGENT_USER = 'cortex-agent';
export const slotUser = (slot: AgentSlot): string => `${AGENT_USER}-${slot}`;

export const AGENT_TEMPLATE_UNIT = 'cortex-agent@.service';
export const AGENT_TEMPLATE_UNIT_PATH = `/etc/systemd/system/${AGENT_TEMPLATE_UNIT}`;
export const agentUnitName = (slot: AgentSlot): string => `cortex-agent@${slot}.service`;

/**
 * The runtime's port is the agent's service port: Caddy proxies to it, nothing listens on it, and
 * an nft redirect (`cortex-upstream.service`) sends it to the active slot. blue listens on the next
 * port, green on the one after.
 */
export const slotPort = (basePort: number, slot: AgentSlot): number =>
  basePort + 1 + AGENT_SLOTS.indexOf(slot);
export const slotOfPort = (basePort: number, port: number): AgentSlot | undefined =>
  AGENT_SLOTS.find((s) => slotPort(basePort, s) === port);

/** Routes the service port to the active slot (templates/cortex-upstream.sh). */
export const UPSTREAM_UNIT = 'cortex-upstream.service';
export const UPSTREAM_UNIT_PATH = `/etc/systemd/system/${UPSTREAM_UNIT}`;
export const UPSTREAM_SCRIPT_PATH = '/usr/local/sbin/cortex-upstream';
/** The nft table (family ip) holding the redirect. */
export const UPSTREAM_NFT_TABLE = 'cortex_upstream';

/**
 * The variable the template unit's ExecStart takes the slot's port from (`--port=${…}`), set by
 * the slot's non-secret settings file, read after the env file so that it always wins; reserved
 * (the env file may not name it, and the echo runtime hides it from its report).
 */
export const SLOT_PORT_VARIABLE = 'CORTEX_AGENT_PORT';
/** `/usr/local/lib/cortex/slot-<slot>.env`: `CORTEX_AGENT_PORT=<port>`, root:root 0644, no secret. */
export const slotSettingsPath = (slot: AgentSlot): string => `/usr/local/lib/cortex/slot-${slot}.env`;

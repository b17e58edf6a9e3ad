import { OrchestratorError, invalidInput } from '../../errors';
import type { HcloudApi } from './api';

/**
 * DNS problems found before a server is paid for. The agent stack creates the A/AAAA record sets
 * after the server; a zone Hetzner does not manage for this project (missing, in another project,
 * not yet migrated from the old DNS console), a secondary zone, or a name already taken would
 * otherwise fail only then — with a billed server in the state and a permanent error.
 */

/** The zone must be a primary zone of the token's project. Two requests at most (zone by name). */
export const checkZone = async (api: HcloudApi, zone: string): Promise<void> => {
  const found = await api.zone(zone);
  if (!found)
    throw new OrchestratorError(
      'config_invalid',
      `DNS_ZONE ${zone} is not a zone of this Hetzner Cloud project: create it (or move it from the old DNS console) in the project of HCLOUD_TOKEN`,
    );
  if (found.mode !== 'primary')
    throw new OrchestratorError(
      'config_invalid',
      `DNS_ZONE ${zone} is a ${found.mode} zone: its records cannot be managed here; make it a primary zone`,
    );
};

/**
 * The zone checked, and no record set of `<subdomain>` (A or AAAA) that this deployment did not
 * make. One of its own (labelled with its id) is a leftover of an interrupted `up`: the caller
 * clears it with the other strays. Three requests.
 */
export const preflightRecords = async (
  api: HcloudApi,
  target: { readonly zone: string; readonly subdomain: string; readonly deploymentId: string },
): Promise<void> => {
  await checkZone(api, target.zone);
  for (const type of ['A', 'AAAA'] as const) {
    const existing = await api.rrset(target.zone, target.subdomain, type);
    if (existing && existing.labels['deployment'] !== target.deploymentId)
      throw invalidInput(
        'subdomain',
        `${target.subdomain}.${target.zone} already has an ${type} record that this deployment did not create; choose another subdomain or remove the record`,
      );
  }
};

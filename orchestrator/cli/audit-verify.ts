import { makeAuditCheckpointsFromConfig } from '../audit/audit-checkpoints-from-config';
import type { CheckpointVerification } from '../audit/audit-checkpoints';
import { loadConfig } from '../config';
import { makeRpcFromConfig } from '../db/rpc-from-config';
import type { AuditVerification } from '../secrets/secrets-service';
import type { CliContext } from './cortexctl';

/** `cortexctl audit-verify [--org <uuid>]`: argument parsing and the report, kept apart from I/O. */
export const parseAuditVerifyArgs = (args: readonly string[]): { orgId?: string } => {
  if (args.length === 0) return {};
  if (args.length === 2 && args[0] === '--org' && args[1]) return { orgId: args[1] };
  throw new Error('usage: cortexctl audit-verify [--org <organization uuid>]');
};

export const formatAuditVerification = (v: AuditVerification, orgId?: string): string => {
  const scope = orgId ? `organisation ${orgId}` : 'every organisation';
  if (v.ok) return `audit log OK: ${v.rowsChecked} rows checked (${scope}); the hash chain is intact\n`;
  const where = v.firstBadId === null ? 'at the chain head' : `at row ${v.firstBadId}`;
  return `audit log TAMPERED (${scope}): first problem ${where}: row ${v.problem ?? 'inconsistent'}; ${v.rowsChecked} rows checked\n`;
};

const chains = (n: number): string => `${n} chain${n === 1 ? '' : 's'}`;

/** The hash-chain line, then what the newest signed checkpoint says, then every problem by chain. */
export const formatCheckpointVerification = (v: CheckpointVerification, orgId?: string): string => {
  const lines = [formatAuditVerification(v.hashChains, orgId).trimEnd()];
  const cp = v.checkpoint;
  if (cp === null)
    lines.push(
      'no audit checkpoint yet (cortexctl audit-checkpoint makes one): only the hash chains were checked',
    );
  else if (v.ok)
    lines.push(
      `checkpoint ${cp.name} (signed ${cp.at}, ${chains(cp.chains)}): every chain still reaches its signed head`,
    );
  else lines.push(`audit log TAMPERED against checkpoint ${cp.name} (${cp.at}):`);
  for (const f of v.findings) lines.push(`  ${f.problem}: ${f.message}`);
  return `${lines.join('\n')}\n`;
};

export const runAuditVerify = async (args: readonly string[], ctx: CliContext): Promise<number> => {
  const { orgId } = parseAuditVerifyArgs(args);
  const config = loadConfig(ctx.env);
  const db = makeRpcFromConfig(config);
  try {
    const v = await makeAuditCheckpointsFromConfig(config, db.rpc).verifyAgainstCheckpoint({ chain: orgId });
    ctx.out(formatCheckpointVerification(v, orgId));
    return v.ok ? 0 : 1;
  } finally {
    await db.close();
  }
};

/** `cortexctl audit-checkpoint`: one signed checkpoint now (the maintenance scheduler makes the others). */
export const runAuditCheckpoint = async (args: readonly string[], ctx: CliContext): Promise<number> => {
  if (args.length > 0) throw new Error('usage: cortexctl audit-checkpoint');
  const config = loadConfig(ctx.env);
  const db = makeRpcFromConfig(config);
  try {
    const c = await makeAuditCheckpointsFromConfig(config, db.rpc).checkpoint();
    ctx.out(`audit checkpoint ${c.name} signed: ${chains(c.chains)} at ${c.at}, stored in ${c.location}\n`);
    return 0;
  } finally {
    await db.close();
  }
};

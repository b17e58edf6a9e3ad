import type { AuditVerification } from '../secrets/secrets-service';

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

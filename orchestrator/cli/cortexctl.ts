import hcloudPackage from '@pulumi/hcloud/package.json';
import { loadConfig } from '../config';
import { isOrchestratorError } from '../errors';
import { apiCommands } from './api-commands';
import { runAuditCheckpoint, runAuditVerify } from './audit-verify';
import { pipelineCommands } from './pipeline-commands';
import { readSecretFromStdin } from './read-secret';
import { webhookCommands } from './webhook-commands';
import { defaultPulumiHome, formatDoctor, runDoctor, systemProbes, type DoctorProbes } from './doctor';

/**
 * `cortexctl <command>`: the ops CLI's composition root and dispatcher. A command gets the
 * environment and an output stream, and returns the exit code; add one by adding an entry.
 */
export interface CliContext {
  readonly env: Readonly<Record<string, string | undefined>>;
  readonly out: (text: string) => void;
  /** Replaceable in tests; the real ones otherwise. */
  readonly probes?: DoctorProbes;
  /** Colour only on a terminal. */
  readonly isTTY?: boolean;
  /** A secret value: standard input when piped, else a prompt that does not echo. Never argv. */
  readonly readSecret?: (prompt: string) => Promise<string>;
}

export interface CliCommand {
  readonly summary: string;
  run(args: readonly string[], ctx: CliContext): Promise<number>;
}

export const commands: Record<string, CliCommand> = {
  ...pipelineCommands,
  ...apiCommands,
  ...webhookCommands,
  'audit-verify': {
    summary:
      'verify the audit hash chains and every chain against the newest signed checkpoint; names each problem',
    run: runAuditVerify,
  },
  'audit-checkpoint': {
    summary: "sign every audit chain's head into a checkpoint kept outside the database",
    run: runAuditCheckpoint,
  },
  doctor: {
    summary: 'check that the Pulumi CLI, the hcloud plugin and a Hetzner token are present',
    async run(_args, ctx) {
      const config = loadConfig(ctx.env);
      const checks = await runDoctor(
        // The plugin must be the version the SDK was generated for.
        { config, pulumiHome: defaultPulumiHome(ctx.env), hcloudVersion: hcloudPackage.version },
        ctx.probes ?? systemProbes(ctx.env),
      );
      ctx.out(formatDoctor(checks));
      return checks.every((c) => c.ok) ? 0 : 1;
    },
  },
};

const usage = (): string =>
  `usage: cortexctl <command>\n\n${Object.entries(commands)
    .map(([name, c]) => `  ${name.padEnd(12)} ${c.summary}`)
    .join('\n')}\n`;

export const runCli = async (argv: readonly string[], ctx: CliContext): Promise<number> => {
  const [name, ...args] = argv;
  if (name === undefined || name === 'help' || name === '--help' || name === '-h') {
    ctx.out(usage());
    return name === undefined ? 2 : 0;
  }
  const command = commands[name];
  if (!command) {
    ctx.out(`cortexctl: unknown command "${name}"\n\n${usage()}`);
    return 2;
  }
  try {
    return await command.run(args, ctx);
  } catch (err) {
    // Configuration and domain errors carry their own plain message (never a value).
    ctx.out(`cortexctl ${name}: ${isOrchestratorError(err) ? err.message : String(err)}\n`);
    return isOrchestratorError(err) && err.code === 'config_invalid' ? 2 : 1;
  }
};

if (require.main === module) {
  void runCli(process.argv.slice(2), {
    env: process.env,
    out: (t) => process.stdout.write(t),
    isTTY: Boolean(process.stdout.isTTY),
    readSecret: readSecretFromStdin,
  }).then((code) => {
    process.exitCode = code;
  });
}

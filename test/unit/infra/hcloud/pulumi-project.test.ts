import { spawnSync } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import path from 'node:path';
import YAML from 'yaml';
import { PULUMI_PROJECT } from '../../../../orchestrator/infra/hcloud/stack-names';

const root = path.resolve(__dirname, '../../../..');
const project = YAML.parse(readFileSync(path.join(root, 'Pulumi.yaml'), 'utf8')) as {
  name: string;
  main: string;
  runtime: { name: string; options: { typescript: boolean; tsconfig: string } };
};

// How @pulumi/pulumi/cmd/run/run.js loads a TypeScript program for `pulumi up`: compiler options
// read from the tsconfig the runtime option names, typescript from node_modules, ts-node from
// node_modules or Pulumi's vendored copy, `transpileOnly` from `noCheck`.
const loader = `
const tsutils = require('@pulumi/pulumi/tsutils');
const tsConfigPath = process.env.TSCONFIG;
const compilerOptions = tsutils.loadTypeScriptCompilerOptions(tsConfigPath);
const { tsnodeRequire, typescriptRequire } = tsutils.typeScriptRequireStrings();
require(tsnodeRequire).register({
  compiler: typescriptRequire, transpileOnly: compilerOptions.noCheck, project: tsConfigPath, skipProject: false,
  compilerOptions: { target: 'ES2020', module: 'nodenext', moduleResolution: 'nodenext', sourceMap: 'true', ...compilerOptions },
});
const main = require(require('path').resolve(process.env.MAIN));
process.stdout.write(typeof main);
`;

describe('Pulumi.yaml (the ops entry point)', () => {
  it('names the project whose namespace the stack config keys use', () => {
    expect(project.name).toBe(PULUMI_PROJECT);
    expect(project.runtime.name).toBe('nodejs');
    expect(existsSync(path.join(root, project.main))).toBe(true);
    expect(existsSync(path.join(root, project.runtime.options.tsconfig))).toBe(true);
  });

  it('loads its main module the way the Pulumi Node.js runtime does', () => {
    const run = spawnSync(process.execPath, ['-e', loader], {
      cwd: root,
      env: { ...process.env, TSCONFIG: project.runtime.options.tsconfig, MAIN: project.main },
      encoding: 'utf8',
      timeout: 60_000,
    });
    expect(run.stderr).toBe('');
    // The runtime calls an exported function and makes its result the stack outputs.
    expect(run.stdout).toBe('function');
  });
});

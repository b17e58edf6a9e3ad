/**
 * Mutation testing of the security core (`npm run test:mutation`): the env file, shell quoting,
 * host keys, the atomic remote file, the SSH key source, the secrets service and its input rules,
 * the Secret wrapper and the templates' escaping, against the unit tests that cover them. Not run
 * in CI (see the README for how long it takes). One file while working:
 *   npx stryker run --mutate orchestrator/remote/env-file.ts
 */
module.exports = {
  packageManager: 'npm',
  testRunner: 'jest',
  jest: {
    projectType: 'custom',
    // The unit project's settings, narrowed to each mutated file's own tests (the wider suites that
    // also reach them, such as the ssh2 server tests, made a run take ~20 s per mutant on 2 cores);
    // perTest coverage then runs only the tests that reach each mutant.
    config: {
      preset: 'ts-jest',
      testEnvironment: 'node',
      testEnvironmentOptions: { globalsCleanup: 'off' },
      transform: { '^.+\\.ts$': ['ts-jest', { diagnostics: false }] },
      // STRYKER_TESTS (comma-separated globs from the project root) narrows this to one file's own
      // tests, so that an unrelated test file failing the dry run (another change in progress)
      // cannot stop a per-file run; perTest coverage runs the same tests on each mutant either way.
      testMatch: process.env.STRYKER_TESTS
        ? process.env.STRYKER_TESTS.split(',').map((glob) => `<rootDir>/${glob}`)
        : [
            '<rootDir>/test/unit/remote/{env-file,shell-quote,host-keys,remote-file,ssh-key-source}*.test.ts',
            '<rootDir>/test/unit/secrets/**/*.test.ts',
            '<rootDir>/test/unit/core/{secret,errors}.test.ts',
            // not the template suites that run caddy, systemd-analyze and cloud-init on every mutant
            '<rootDir>/test/unit/templates/template-escaping*.test.ts',
          ],
    },
    enableFindRelatedTests: false,
  },
  mutate: [
    'orchestrator/remote/env-file.ts',
    'orchestrator/remote/shell-quote.ts',
    'orchestrator/remote/host-keys.ts',
    'orchestrator/remote/remote-file.ts',
    'orchestrator/remote/ssh-key-source.ts',
    'orchestrator/secrets/*.ts',
    'orchestrator/secret.ts',
    'templates/render.ts',
    'templates/caddyfile.ts',
    'templates/systemd-unit.ts',
    'templates/cloud-init.ts',
  ],
  coverageAnalysis: 'perTest',
  // Two cores shared with others: one test process.
  concurrency: 1,
  timeoutMS: 30000,
  incremental: true,
  incrementalFile: '.local/stryker/incremental.json',
  // .local is ignored by git, eslint and prettier. Stryker links node_modules into the sandbox after
  // searching the tree for them, .local's host images included: it fails if a host goes away
  // mid-scan (run it again). Runs with the link off or static mutants ignored left every mutant
  // unactivated here (all survived), so both stay at Stryker's defaults.
  tempDirName: '.local/stryker/tmp',
  cleanTempDir: true,
  // Copy only what the tests need into the sandbox (.local holds databases and host images).
  ignorePatterns: [
    '/*',
    '!/orchestrator',
    '!/templates',
    '!/test',
    '!/workers',
    '!/package.json',
    '!/tsconfig.json',
  ],
  reporters: ['clear-text', 'progress', 'html', 'json'],
  htmlReporter: { fileName: '.local/stryker/report.html' },
  jsonReporter: { fileName: '.local/stryker/report.json' },
  clearTextReporter: { allowColor: false, logTests: false, reportScoreTable: true },
  thresholds: { high: 95, low: 90, break: 90 },
};

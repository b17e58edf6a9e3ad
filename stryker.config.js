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
      testMatch: [
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
  // A static mutant (module-level: a constant, a regex, a reserved-name set) needs every test run
  // in a fresh process: ~4 min each here. They are reported as ignored; the limits they hold are
  // checked by exact-boundary tests all the same.
  ignoreStatic: true,
  // Two cores shared with others: one test process.
  concurrency: 1,
  timeoutMS: 30000,
  incremental: true,
  incrementalFile: '.local/stryker/incremental.json',
  // Inside the repository, so that the sandbox finds node_modules by walking up (no link: Stryker
  // would search the whole tree for node_modules folders, .local's host images included, which is
  // slow and fails when a host goes away mid-scan). .local is ignored by git, eslint and prettier.
  tempDirName: '.local/stryker/tmp',
  symlinkNodeModules: false,
  cleanTempDir: true,
  // Copy only what the tests need into the sandbox (.local holds databases and host images); no
  // package.json, whose name would collide in jest's module map for anyone testing meanwhile.
  ignorePatterns: ['/*', '!/orchestrator', '!/templates', '!/test', '!/workers', '!/tsconfig.json'],
  reporters: ['clear-text', 'progress', 'html', 'json'],
  htmlReporter: { fileName: '.local/stryker/report.html' },
  jsonReporter: { fileName: '.local/stryker/report.json' },
  clearTextReporter: { allowColor: false, logTests: false, reportScoreTable: true },
  thresholds: { high: 95, low: 90, break: 90 },
};

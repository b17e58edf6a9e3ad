/** Two tiers: unit (no services) and integration (real Postgres, Redis, local hosts). */
const common = {
  preset: 'ts-jest',
  testEnvironment: 'node',
  testEnvironmentOptions: { globalsCleanup: 'off' },
  transform: {
    '^.+\\.ts$': ['ts-jest', { diagnostics: false }],
    // ESM-only dependencies (content-disposition: @fastify/static's, Bull Board's; cookie:
    // light-my-request's, Fastify's inject): Node 24 require()s them, Jest's CommonJS runtime needs
    // them compiled (no --experimental-vm-modules needed)
    '/node_modules/(content-disposition|cookie)/.+\\.js$': [
      'ts-jest',
      { diagnostics: false, tsconfig: { allowJs: true, module: 'commonjs' } },
    ],
  },
  transformIgnorePatterns: ['/node_modules/(?!(content-disposition|cookie)/)'],
};
module.exports = {
  projects: [
    { ...common, displayName: 'unit', testMatch: ['<rootDir>/test/unit/**/*.test.ts'] },
    { ...common, displayName: 'integration', testMatch: ['<rootDir>/test/integration/**/*.test.ts'] },
  ],
};

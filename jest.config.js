/** Two tiers: unit (no services) and integration (real Postgres, Redis, local hosts). */
const common = {
  preset: 'ts-jest',
  testEnvironment: 'node',
  testEnvironmentOptions: { globalsCleanup: 'off' },
  transform: {
    '^.+\\.ts$': ['ts-jest', { diagnostics: false }],
    // ESM-only dependency of @fastify/static (Bull Board's): Node 24 require()s it, Jest's CommonJS
    // runtime needs it compiled (no --experimental-vm-modules needed)
    '/node_modules/content-disposition/.+\\.js$': [
      'ts-jest',
      { diagnostics: false, tsconfig: { allowJs: true, module: 'commonjs' } },
    ],
  },
  transformIgnorePatterns: ['/node_modules/(?!content-disposition/)'],
};
module.exports = {
  projects: [
    { ...common, displayName: 'unit', testMatch: ['<rootDir>/test/unit/**/*.test.ts'] },
    { ...common, displayName: 'integration', testMatch: ['<rootDir>/test/integration/**/*.test.ts'] },
  ],
};

import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { configSchema } from '../../../orchestrator/config';

describe('README', () => {
  it('documents every configuration variable the schema accepts', () => {
    const readme = readFileSync(join(__dirname, '../../../README.md'), 'utf8');
    const keys = Object.keys(configSchema.shape);
    expect(keys.length).toBeGreaterThan(20);
    expect(keys.filter((k) => !readme.includes(`\`${k}\``))).toEqual([]);
  });
});

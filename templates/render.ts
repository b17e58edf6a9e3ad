import { readFileSync } from 'node:fs';
import { join } from 'node:path';

/**
 * Text templates (`*.tmpl` beside this file) with `{{name}}` placeholders. Rendering is strict
 * both ways: a placeholder without a value and a value without a placeholder are errors, so a
 * template and its renderer cannot drift apart silently. Values are validated by each renderer
 * before they get here; this function only substitutes.
 */
const PLACEHOLDER = /\{\{([a-zA-Z][a-zA-Z0-9]*)\}\}/g;

export const loadTemplate = (name: string): string => readFileSync(join(__dirname, name), 'utf8');

export const fillTemplate = (template: string, values: Readonly<Record<string, string>>): string => {
  const used = new Set<string>();
  const out = template.replace(PLACEHOLDER, (_, key: string) => {
    const v = values[key];
    if (v === undefined) throw new Error(`template placeholder {{${key}}} has no value`);
    used.add(key);
    return v;
  });
  const unused = Object.keys(values).filter((k) => !used.has(k));
  if (unused.length > 0) throw new Error(`template has no placeholder for ${unused.join(', ')}`);
  if (/\{\{|\}\}/.test(out)) throw new Error('template left an unfilled or malformed placeholder');
  return out;
};

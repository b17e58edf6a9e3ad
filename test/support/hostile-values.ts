/**
 * Values that break naive quoting, one per trap: quotes, backslashes, `$`, backticks, `#`, `=`,
 * spaces at the edges, `;`, systemd specifiers (`%`), non-ASCII text (astral plane included) and
 * the empty string. Names are valid env names, so the map doubles as env entries.
 */
export const HOSTILE_VALUES: Readonly<Record<string, string>> = Object.freeze({
  DOUBLE_QUOTES: 'say "hi" "',
  SINGLE_QUOTES: "it's 'quoted'",
  BACKSLASHES: 'C:\\path\\to\\ \\n \\\\ \\',
  DOLLARS: '$HOME ${PATH} $(id) $$ $',
  BACKTICKS: '`id` `',
  HASHES: '#start # middle #',
  EQUALS: '=a=b==',
  SPACES: '  leading and trailing  ',
  SEMICOLON: ';not a comment',
  PERCENT: '%h %i %%',
  UNICODE: 'ünïcødé ✓ 𝄞 日本',
  EMPTY: '',
  MIXED: `"'\\$#= \`x\` ; %n`,
});

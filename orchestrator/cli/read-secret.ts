/**
 * Read a secret value for the CLI: everything piped on standard input, or, on a terminal, one line
 * typed at a prompt that is not echoed. The value never passes through argv (where `ps` and shell
 * history would see it).
 */
/** Far more than any key (the service refuses values over 4096 bytes); stops a runaway pipe. */
export const MAX_STDIN_BYTES = 65_536;

export const readSecretFromStdin = async (prompt: string): Promise<string> => {
  const stdin = process.stdin;
  if (!stdin.isTTY) {
    const chunks: Buffer[] = [];
    let size = 0;
    for await (const c of stdin) {
      size += (c as Buffer).length;
      if (size > MAX_STDIN_BYTES)
        throw new Error(`the value on standard input is over ${MAX_STDIN_BYTES} bytes`);
      chunks.push(c as Buffer);
    }
    return Buffer.concat(chunks).toString('utf8');
  }
  process.stderr.write(prompt);
  stdin.setRawMode(true);
  stdin.resume();
  try {
    return await new Promise<string>((resolve, reject) => {
      let value = '';
      const onData = (d: Buffer): void => {
        for (const ch of d.toString('utf8')) {
          if (ch === '\r' || ch === '\n') {
            stdin.off('data', onData);
            process.stderr.write('\n');
            return resolve(value);
          }
          if (ch === '\u0003' || (ch === '\u0004' && value === '')) {
            stdin.off('data', onData);
            process.stderr.write('\n');
            return reject(new Error('cancelled'));
          }
          if (ch === '\u0004') {
            stdin.off('data', onData);
            process.stderr.write('\n');
            return resolve(value);
          }
          if (value.length > MAX_STDIN_BYTES) {
            stdin.off('data', onData);
            return reject(new Error('the value typed is too long'));
          }
          if (ch === '\u007f') value = value.slice(0, -1);
          else value += ch;
        }
      };
      stdin.on('data', onData);
    });
  } finally {
    stdin.setRawMode(false);
    stdin.pause();
  }
};

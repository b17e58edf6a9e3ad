/**
 * `npm run bench -- <name>`: prints figures; never a test. Each benchmark is bench/<name>.ts
 * exporting `run(args: string[]): Promise<void>`.
 */
const names = ['secrets', 'hosts', 'provision', 'rotate', 'api'] as const;

const main = async (): Promise<void> => {
  const [name, ...rest] = process.argv.slice(2);
  const chosen = name ? [name] : [...names];
  for (const n of chosen) {
    if (!(names as readonly string[]).includes(n)) {
      console.error(`unknown benchmark "${n}"; choose one of: ${names.join(', ')}`);
      process.exit(2);
    }
    const mod = (await import(`./${n}`)) as { run: (args: string[]) => Promise<void> };
    console.log(`== bench ${n}`);
    await mod.run(rest);
  }
};

main().catch((err: unknown) => {
  console.error(err instanceof Error ? err.message : err);
  process.exit(1);
});

import { spawnSync } from 'node:child_process';
import { chmodSync, cpSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { agentServerFiles, METADATA_BLOCK_SCRIPT_PATH } from '../../../templates/cloud-init';
import { echoRuntime, openclawRuntime, type RuntimeProfile } from '../../../templates/runtime-profiles';
import { ENV_FILE_PATH } from '../../../orchestrator/remote/env-file';
import {
  AGENT_SLOTS,
  SLOT_PORT_VARIABLE,
  UPSTREAM_SCRIPT_PATH,
  UPSTREAM_UNIT,
  UPSTREAM_UNIT_PATH,
  slotEnvFilePath,
  slotSettingsPath,
  slotUser,
} from '../../../templates/agent-slots';
import {
  AGENT_UNIT_NAME,
  METADATA_BLOCK_UNIT,
  renderAgentTemplateUnit,
  renderAgentUnit,
} from '../../../templates/systemd-unit';

/**
 * `systemd-analyze verify` against a throwaway root: this machine's unit library (for the targets
 * the unit refers to), stub executables for the ExecStart paths (the runtimes live in the host
 * image, not here) and the unit under test. verify exits 0 even for unknown keys or bad values, so
 * a clean result means exit 0 AND nothing on stderr.
 */
const verify = (units: Record<string, string>, executables: string[]) => {
  const root = mkdtempSync(join(tmpdir(), 'sdroot-'));
  try {
    cpSync('/usr/lib/systemd/system', join(root, 'usr/lib/systemd/system'), {
      recursive: true,
      verbatimSymlinks: true,
    });
    for (const exe of executables) {
      mkdirSync(join(root, dirname(exe)), { recursive: true });
      writeFileSync(join(root, exe), '#!/bin/sh\n');
      chmodSync(join(root, exe), 0o755);
    }
    mkdirSync(join(root, 'etc/systemd/system'), { recursive: true });
    for (const [name, text] of Object.entries(units))
      writeFileSync(join(root, 'etc/systemd/system', name), text);
    const r = spawnSync(
      'systemd-analyze',
      ['verify', '--man=no', `--root=${root}`, ...Object.keys(units).map((n) => `/etc/systemd/system/${n}`)],
      { encoding: 'utf8' },
    );
    return { code: r.status, stderr: r.stderr.trim() };
  } finally {
    rmSync(root, { recursive: true, force: true });
  }
};

/**
 * `systemd-analyze security --offline=true` on the unit file alone (systemd 252 here): the overall
 * exposure score, 0.0 (safest) to 10.0, from the same table `systemctl`-less review tools print.
 */
const exposure = (unit: string): number => {
  const dir = mkdtempSync(join(tmpdir(), 'sdsec-'));
  try {
    const file = join(dir, AGENT_UNIT_NAME);
    writeFileSync(file, unit);
    const r = spawnSync('systemd-analyze', ['security', '--offline=true', '--no-pager', file], {
      encoding: 'utf8',
    });
    const m = new RegExp(
      `Overall exposure level for ${AGENT_UNIT_NAME.replace(/[.@]/g, '\\$&')}: (\\d+\\.\\d+)`,
    ).exec(r.stdout);
    if (!m?.[1]) throw new Error(`no exposure level in systemd-analyze output: ${r.stdout}${r.stderr}`);
    return Number(m[1]);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
};

/** The exposure reached (systemd 252); a change that raises it fails here. Lower it, then lower these. */
const MAX_EXPOSURE = { echo: 0.9, openclaw: 1.1 } as const;

const lines = (unit: string): string[] => unit.split('\n').filter((l) => l && !l.startsWith('#'));

/** The metadata-block unit exactly as user data places it. */
const blockUnit = (metadataBlock: 'required' | 'best-effort'): string =>
  agentServerFiles({
    siteName: 'a.agents.example.com',
    tls: { mode: 'internal' },
    runtime: echoRuntime(),
    metadataBlock,
  }).find((f) => f.path.endsWith(`/${METADATA_BLOCK_UNIT}`))?.content ?? '';

/** The agent unit together with the unit it Requires=, as on a server. */
const withBlock = (agentUnit: string): Record<string, string> => ({
  [AGENT_UNIT_NAME]: agentUnit,
  [METADATA_BLOCK_UNIT]: blockUnit('required'),
});

describe('agent systemd unit', () => {
  it.each([
    ['echo', echoRuntime()],
    ['openclaw', openclawRuntime()],
  ] as [string, RuntimeProfile][])('the %s unit passes systemd-analyze verify cleanly', (_, rt) => {
    const r = verify(withBlock(renderAgentUnit(rt)), [rt.execStart[0] as string, METADATA_BLOCK_SCRIPT_PATH]);
    expect(r.stderr).toBe('');
    expect(r.code).toBe(0);
  });

  it.each([
    ['echo', echoRuntime()],
    ['openclaw', openclawRuntime()],
  ] as [string, RuntimeProfile][])(
    'the %s template unit passes systemd-analyze verify cleanly as both slot instances',
    (_, rt) => {
      const template = renderAgentTemplateUnit(rt);
      const r = verify(
        {
          'cortex-agent@blue.service': template,
          'cortex-agent@green.service': template,
          [METADATA_BLOCK_UNIT]: blockUnit('required'),
        },
        [rt.execStart[0] as string, METADATA_BLOCK_SCRIPT_PATH],
      );
      expect(r.stderr).toBe('');
      expect(r.code).toBe(0);
    },
  );

  it('the template unit: env file, port and dynamic user per slot (%i), the port file read last', () => {
    const l = lines(renderAgentTemplateUnit(echoRuntime()));
    const envFiles = l.filter((x) => x.startsWith('EnvironmentFile='));
    // The slot's env file, then its port: a later file wins, so the env file cannot move the port.
    expect(envFiles).toEqual([
      `EnvironmentFile=${slotEnvFilePath('%i' as 'blue')}`,
      `EnvironmentFile=${slotSettingsPath('%i' as 'blue')}`,
    ]);
    expect(l).toContain(
      `ExecStart=/usr/bin/python3 -I /usr/local/lib/cortex/echo-agent.py --port=\${${SLOT_PORT_VARIABLE}}`,
    );
    expect(renderAgentTemplateUnit(openclawRuntime())).toMatch(
      /^ExecStart=\/usr\/local\/bin\/openclaw gateway run --port=\$\{CORTEX_AGENT_PORT\} --bind=loopback/m,
    );
    // A dynamic user per slot (R5 #8): blue and green never share a uid, so the old instance of a
    // swap cannot signal the new one (test/integration/slot-isolation.test.ts).
    expect(l).toEqual(expect.arrayContaining(['DynamicUser=yes', 'User=cortex-agent-%i']));
    expect(l.filter((x) => x.startsWith('User='))).toHaveLength(1);
    expect(AGENT_SLOTS.map((s) => `User=cortex-agent-${s}`)).toEqual(
      AGENT_SLOTS.map((s) => `User=${slotUser(s)}`),
    );
    expect(lines(renderAgentUnit(echoRuntime()))).toContain('User=cortex-agent');
    // Everything else is the plain unit's sandbox, line for line.
    const plain = lines(renderAgentUnit(echoRuntime()));
    const differs = (x: string) => /^(EnvironmentFile|ExecStart|Description|User)=/.test(x);
    expect(l.filter((x) => !differs(x))).toEqual(plain.filter((x) => !differs(x)));
  });

  it('the template unit needs exactly one --port word and does not echo the words it refuses', () => {
    const rt = echoRuntime();
    const canary = 'sk-ant-not-a-port-word';
    expect(() => renderAgentTemplateUnit({ ...rt, execStart: ['/usr/bin/python3', canary] })).toThrow(
      /exactly one --port/,
    );
    expect(() => renderAgentTemplateUnit({ ...rt, execStart: ['/usr/bin/python3', canary] })).not.toThrow(
      new RegExp(canary),
    );
    expect(() =>
      renderAgentTemplateUnit({ ...rt, execStart: [...rt.execStart, `--port=${rt.port}`] }),
    ).toThrow(/exactly one --port/);
  });

  it('the verifier is sharp: a typo in a key or a value is reported', () => {
    const unit = renderAgentUnit(echoRuntime());
    expect(
      verify(withBlock(unit.replace('ProtectSystem=strict', 'ProtectSystm=strict')), [
        '/usr/bin/python3',
        METADATA_BLOCK_SCRIPT_PATH,
      ]).stderr,
    ).toMatch(/Unknown key/);
    expect(
      verify(withBlock(unit.replace('ProtectSystem=strict', 'ProtectSystem=strct')), [
        '/usr/bin/python3',
        METADATA_BLOCK_SCRIPT_PATH,
      ]).stderr,
    ).toMatch(/protect system/i);
    expect(verify(withBlock(unit), [METADATA_BLOCK_SCRIPT_PATH]).stderr).toMatch(/not executable/);
    // ...and it resolves the dependency: without the block unit beside it, verify fails.
    expect(verify({ [AGENT_UNIT_NAME]: unit }, ['/usr/bin/python3']).stderr).toMatch(
      /cortex-metadata-block\.service not found/,
    );
  });

  it('runs unprivileged with the env file and the hardening options', () => {
    const l = lines(renderAgentUnit(echoRuntime()));
    for (const expected of [
      'DynamicUser=yes',
      `EnvironmentFile=${ENV_FILE_PATH}`,
      'NoNewPrivileges=yes',
      'CapabilityBoundingSet=',
      'AmbientCapabilities=',
      'ProtectSystem=strict',
      'ProtectHome=yes',
      'PrivateTmp=yes',
      'PrivateDevices=yes',
      'RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX',
      'SystemCallFilter=@system-service',
      'RestrictSUIDSGID=yes',
      'MemoryDenyWriteExecute=yes',
      // no core file of a crashing agent (its memory holds the keys)
      'LimitCORE=0',
    ])
      expect(l).toContain(expected);
    expect(l.some((x) => /^User=root$|^User=0$/.test(x))).toBe(false);
    // The env file is mandatory: a missing file must stop the start, not run an agent without keys.
    expect(l).not.toContain(`EnvironmentFile=-${ENV_FILE_PATH}`);
    expect(lines(renderAgentTemplateUnit(echoRuntime())).some((x) => x.startsWith('EnvironmentFile=-'))).toBe(
      false,
    );
  });

  it('openclaw keeps W^X off for the V8 JIT; echo turns it on', () => {
    expect(renderAgentUnit(openclawRuntime())).toContain('MemoryDenyWriteExecute=no');
    expect(renderAgentUnit(echoRuntime())).toContain('MemoryDenyWriteExecute=yes');
  });

  it('ExecStart is the runtime argv, on loopback, at the runtime port', () => {
    expect(lines(renderAgentUnit(echoRuntime(18001)))).toContain(
      'ExecStart=/usr/bin/python3 -I /usr/local/lib/cortex/echo-agent.py --port=18001',
    );
    expect(renderAgentUnit(openclawRuntime())).toMatch(
      /^ExecStart=\/usr\/local\/bin\/openclaw gateway run --port=18789 --bind=loopback/m,
    );
  });

  it('refuses runtime data that would need quoting or inject lines', () => {
    const rt = echoRuntime();
    expect(() => renderAgentUnit({ ...rt, execStart: ['/usr/bin/python3', '$HOME'] })).toThrow(/not plain/);
    expect(() => renderAgentUnit({ ...rt, execStart: ['python3'] })).toThrow(/absolute/);
    expect(() => renderAgentUnit({ ...rt, unitOptions: ['User=root\nExecStartPre=/bin/sh'] })).toThrow(
      /unit option/,
    );
  });

  it('requires the metadata block and starts after it, so a failed block keeps the agent down', () => {
    for (const rt of [echoRuntime(), openclawRuntime()]) {
      const l = lines(renderAgentUnit(rt));
      expect(l).toContain(`Requires=${METADATA_BLOCK_UNIT}`);
      expect(l.find((x) => x.startsWith('After='))?.split(/[= ]/)).toContain(METADATA_BLOCK_UNIT);
      // Wants= would start the agent even when the block failed.
      expect(l).not.toContain(`Wants=${METADATA_BLOCK_UNIT}`);
    }
  });

  it.each([
    ['echo', echoRuntime()],
    ['openclaw', openclawRuntime()],
  ] as ['echo' | 'openclaw', RuntimeProfile][])(
    'the %s unit (the blue/green template, as servers run it) keeps its systemd-analyze security exposure at or below the level reached',
    (name, rt) => {
      expect(exposure(renderAgentUnit(rt))).toBeLessThanOrEqual(MAX_EXPOSURE[name]);
      const unit = renderAgentTemplateUnit(rt);
      expect(exposure(unit)).toBeLessThanOrEqual(MAX_EXPOSURE[name]);
      // The measure is sharp: dropping an option that counts raises the score. (The metadata deny
      // does not count: systemd scores only allow lists; its test is on a real host.)
      const counted = name === 'echo' ? ['PrivateUsers=yes', 'IPAddressDeny=any'] : ['PrivateUsers=yes'];
      for (const option of counted) {
        expect(unit).toContain(`\n${option}\n`);
        expect(exposure(unit.replace(`\n${option}\n`, '\n'))).toBeGreaterThan(MAX_EXPOSURE[name]);
      }
    },
  );

  it('denies the metadata address to the agent in the service manager too (cgroup IP filter)', () => {
    for (const rt of [echoRuntime(), openclawRuntime()]) {
      const l = lines(renderAgentUnit(rt));
      expect(l).toContain('IPAddressDeny=169.254.169.254 fd00:ec2::254');
      for (const o of ['PrivateUsers=yes', 'PrivateMounts=yes', 'PrivateIPC=yes']) expect(l).toContain(o);
      // No allow list may re-open it: an allow entry wins over a deny entry in systemd.
      expect(l.filter((x) => x.startsWith('IPAddressAllow=') && x !== 'IPAddressAllow=localhost')).toEqual(
        [],
      );
    }
    // echo talks to Caddy on loopback only: everything else is refused.
    const echo = lines(renderAgentUnit(echoRuntime()));
    expect(echo).toEqual(expect.arrayContaining(['IPAddressAllow=localhost', 'IPAddressDeny=any']));
  });

  it('the upstream unit (service port -> active slot) verifies, restarts with the block, and its script parses', () => {
    const files = agentServerFiles({
      siteName: 'a.agents.example.com',
      tls: { mode: 'internal' },
      runtime: echoRuntime(),
      metadataBlock: 'required',
    });
    const unit = files.find((f) => f.path === UPSTREAM_UNIT_PATH)?.content ?? '';
    expect(lines(unit)).toEqual(
      expect.arrayContaining([
        `ExecStart=${UPSTREAM_SCRIPT_PATH} 18789`,
        `PartOf=${METADATA_BLOCK_UNIT}`,
        'Type=oneshot',
        'RemainAfterExit=yes',
      ]),
    );
    const r = verify({ [UPSTREAM_UNIT]: unit, [METADATA_BLOCK_UNIT]: blockUnit('required') }, [
      UPSTREAM_SCRIPT_PATH,
      METADATA_BLOCK_SCRIPT_PATH,
    ]);
    expect(r.stderr).toBe('');
    expect(r.code).toBe(0);
    const script = files.find((f) => f.path === UPSTREAM_SCRIPT_PATH);
    expect(script?.permissions).toBe('0755');
    expect(spawnSync('sh', ['-n'], { input: script?.content ?? 'x(', encoding: 'utf8' }).status).toBe(0);
    // The slots' ports, one past and two past the service port, in the files the template unit reads.
    expect(files.filter((f) => /slot-(blue|green)\.env$/.test(f.path)).map((f) => lines(f.content))).toEqual([
      ['CORTEX_AGENT_PORT=18790'],
      ['CORTEX_AGENT_PORT=18791'],
    ]);
  });

  it('the metadata-block unit verifies too', () => {
    for (const metadataBlock of ['required', 'best-effort'] as const) {
      const unit = blockUnit(metadataBlock);
      expect(unit).toContain(
        metadataBlock === 'required' ? 'cortex-block-metadata --required' : 'cortex-block-metadata\n',
      );
      const r = verify({ [METADATA_BLOCK_UNIT]: unit }, [METADATA_BLOCK_SCRIPT_PATH]);
      expect(r.stderr).toBe('');
      expect(r.code).toBe(0);
    }
  });
});

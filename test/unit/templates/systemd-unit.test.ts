import { spawnSync } from 'node:child_process';
import { chmodSync, cpSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { agentServerFiles, METADATA_BLOCK_UNIT } from '../../../templates/cloud-init';
import { echoRuntime, openclawRuntime, type RuntimeProfile } from '../../../templates/runtime-profiles';
import { AGENT_UNIT_NAME, renderAgentUnit } from '../../../templates/systemd-unit';

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

const lines = (unit: string): string[] => unit.split('\n').filter((l) => l && !l.startsWith('#'));

describe('agent systemd unit', () => {
  it.each([
    ['echo', echoRuntime()],
    ['openclaw', openclawRuntime()],
  ] as [string, RuntimeProfile][])('the %s unit passes systemd-analyze verify cleanly', (_, rt) => {
    const r = verify({ [AGENT_UNIT_NAME]: renderAgentUnit(rt) }, [rt.execStart[0] as string]);
    expect(r.stderr).toBe('');
    expect(r.code).toBe(0);
  });

  it('the verifier is sharp: a typo in a key or a value is reported', () => {
    const unit = renderAgentUnit(echoRuntime());
    expect(
      verify({ [AGENT_UNIT_NAME]: unit.replace('ProtectSystem=strict', 'ProtectSystm=strict') }, [
        '/usr/bin/python3',
      ]).stderr,
    ).toMatch(/Unknown key/);
    expect(
      verify({ [AGENT_UNIT_NAME]: unit.replace('ProtectSystem=strict', 'ProtectSystem=strct') }, [
        '/usr/bin/python3',
      ]).stderr,
    ).toMatch(/protect system/i);
    expect(verify({ [AGENT_UNIT_NAME]: unit }, []).stderr).toMatch(/not executable/);
  });

  it('runs unprivileged with the env file and the hardening options', () => {
    const l = lines(renderAgentUnit(echoRuntime()));
    for (const expected of [
      'DynamicUser=yes',
      'EnvironmentFile=/etc/cortex/agent.env',
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
    ])
      expect(l).toContain(expected);
    expect(l.some((x) => /^User=root$|^User=0$/.test(x))).toBe(false);
    // The env file is mandatory: a missing file must stop the start, not run an agent without keys.
    expect(l).not.toContain('EnvironmentFile=-/etc/cortex/agent.env');
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

  it('the metadata-block unit verifies too', () => {
    for (const metadataBlock of ['required', 'best-effort'] as const) {
      const files = agentServerFiles({
        siteName: 'a.agents.example.com',
        tls: { mode: 'internal' },
        runtime: echoRuntime(),
        metadataBlock,
      });
      const unit = files.find((f) => f.path.endsWith(METADATA_BLOCK_UNIT));
      expect(unit?.content).toContain(
        metadataBlock === 'required' ? 'cortex-block-metadata --required' : 'cortex-block-metadata\n',
      );
      const r = verify({ [METADATA_BLOCK_UNIT]: unit?.content ?? '' }, [
        '/usr/local/sbin/cortex-block-metadata',
      ]);
      expect(r.stderr).toBe('');
      expect(r.code).toBe(0);
    }
  });
});

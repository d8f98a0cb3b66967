// Bad options are refused at start with a message that names the option and shows the value; the CLI maps flags.
import { describe, expect, it } from 'vitest';
import { isInvalidOptionError, isVllmKitError } from '../../src/errors/index.js';
import { parseSimulatorArgs } from '../../src/testing/cli-args.js';
import { startVllmSimulator, type VllmSimulatorOptions } from '../../src/testing/index.js';

describe('simulator options', () => {
  const cases: [VllmSimulatorOptions, string][] = [
    [{ maxNumSeqs: 0 }, 'Expected `maxNumSeqs` to be an integer >= 1, got `0` (number)'],
    [{ ttftMs: -1 }, 'Expected `ttftMs` to be a number >= 0 and <= 86400000, got `-1` (number)'],
    [{ itlMs: Number.NaN }, 'Expected `itlMs` to be a number >= 0 and <= 86400000, got `NaN` (number)'],
    [{ jitter: 2 }, 'Expected `jitter` to be a number >= 0 and <= 1, got `2` (number)'],
    [{ port: 70000 }, 'Expected `port` to be an integer >= 0 and <= 65535, got `70000` (number)'],
    [{ model: '' }, 'Expected `model` to be a non-empty string, got `""` (string)'],
    [
      { errorShape: 'flat' as never },
      'Expected `errorShape` to be one of "nested", "legacy", got `"flat"` (string)',
    ],
    [{ maxQueue: 1.5 }, 'Expected `maxQueue` to be an integer >= 0 (or Infinity), got `1.5` (number)'],
    [{ outputTokens: { mean: 0 } }, 'Expected `outputTokens.mean` to be a number >= 1, got `0` (number)'],
    [{ keepAliveTimeoutMs: '5s' as never }, 'got `"5s"` (string)'],
    [{ ttfMs: 5 } as never, 'Unknown option `ttfMs`'],
  ];
  it.each(cases)('refuses %j', async (options, message) => {
    const error = await startVllmSimulator(options).then(
      (sim) => sim.close().then(() => undefined),
      (e: unknown) => e,
    );
    expect(isVllmKitError(error)).toBe(true);
    expect(isInvalidOptionError(error)).toBe(true);
    expect((error as Error).message).toContain(message);
  });

  it('never echoes the apiKey value in an error', async () => {
    const error = await startVllmSimulator({ apiKey: 12345 as never }).catch((e: unknown) => e);
    expect((error as Error).message).toContain('`apiKey`');
  });

  it('accepts maxQueue Infinity and a full set of valid options', async () => {
    const sim = await startVllmSimulator({
      maxQueue: Number.POSITIVE_INFINITY,
      outputTokens: { mean: 10, max: 20 },
      jitter: 0.5,
      batchSlowdown: 3,
    });
    expect(sim.url).toBe(`http://127.0.0.1:${sim.port}`);
    await sim.close();
  });
});

describe('vllm-kit-sim flags', () => {
  it('maps flags to options', () => {
    expect(
      parseSimulatorArgs([
        '--port',
        '8001',
        '--ttft-ms',
        '50',
        '--itl-ms',
        '7.5',
        '--max-num-seqs',
        '64',
        '--max-queue',
        'Infinity',
        '--model',
        'm',
        '--api-key',
        'k',
        '--output-tokens',
        '{"mean":100}',
        '--faults',
        '{"status":{"status":503}}',
      ]),
    ).toEqual({
      port: 8001,
      ttftMs: 50,
      itlMs: 7.5,
      maxNumSeqs: 64,
      maxQueue: Number.POSITIVE_INFINITY,
      model: 'm',
      apiKey: 'k',
      outputTokens: { mean: 100 },
      faults: { status: { status: 503 } },
    });
    expect(parseSimulatorArgs([])).toEqual({ port: 8000 });
    expect(parseSimulatorArgs(['--output-tokens', '12'])).toMatchObject({ outputTokens: 12 });
    expect(parseSimulatorArgs(['--help'])).toBe('help');
  });

  it('refuses malformed flags', () => {
    expect(() => parseSimulatorArgs(['--ttft-ms', 'fast'])).toThrow('--ttft-ms expects a number, got "fast"');
    expect(() => parseSimulatorArgs(['--faults', '{'])).toThrow('--faults expects JSON');
    expect(() => parseSimulatorArgs(['--bogus'])).toThrow();
  });
});

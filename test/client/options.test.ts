// createVllmClient refuses bad options at construction, naming the option and showing the value.
import { describe, expect, it } from 'vitest';
import { createVllmClient, isInvalidOptionError, type VllmClientOptions } from '../../src/index.js';

describe('client options', () => {
  const cases: [VllmClientOptions, string][] = [
    [{}, 'Expected `baseUrl` (or `baseUrls`)'],
    [{ baseUrl: 'ftp://x' }, 'Expected `baseUrl` to be an http(s) URL, got `"ftp://x"` (string)'],
    [{ baseUrl: 'not a url' }, 'Expected `baseUrl` to be an http(s) URL'],
    [{ baseUrl: 'http://h:8000/api' }, "Expected `baseUrl` to be the server's origin"],
    [{ baseUrl: 'http://a', baseUrls: ['http://b'] }, 'Give either `baseUrl` or `baseUrls`'],
    [{ baseUrls: [] }, 'Expected `baseUrls` to be a non-empty array of URLs'],
    [{ baseUrls: ['http://a', 'http://a'] }, 'each replica once'],
    [
      { baseUrl: 'http://a', connections: 0 },
      'Expected `connections` to be an integer >= 1 and <= 65535, got `0` (number)',
    ],
    [{ baseUrl: 'http://a', keepAliveTimeoutMs: -5 }, 'Expected `keepAliveTimeoutMs` to be a number >= 1'],
    [
      { baseUrl: 'http://a', maxRetries: 1.5 },
      'Expected `maxRetries` to be an integer >= 0 and <= 100, got `1.5` (number)',
    ],
    [
      { baseUrl: 'http://a', retryBaseDelayMs: 100, retryMaxDelayMs: 10 },
      'Expected `retryMaxDelayMs` (10) to be at least',
    ],
    [{ baseUrl: 'http://a', retryBudget: { ratio: -1 } }, 'Expected `retryBudget.ratio` to be a number >= 0'],
    [
      { baseUrl: 'http://a', allowH2: 'yes' as never },
      'Expected `allowH2` to be a boolean, got `"yes"` (string)',
    ],
    [{ baseUrl: 'http://a', headers: { x: 1 as never } }, 'Expected `headers.x` to be a string'],
    [{ baseUrl: 'http://a', keepAlive: 1 } as never, 'Unknown option `keepAlive`'],
    [{ baseUrl: 'http://user:pw@a' }, 'without credentials'],
  ];
  it.each(cases)('refuses %j', (options, message) => {
    let error: unknown;
    try {
      createVllmClient(options);
    } catch (e) {
      error = e;
    }
    expect(isInvalidOptionError(error)).toBe(true);
    expect((error as Error).message).toContain(message);
  });

  it('never shows the apiKey or URL credentials in an error', () => {
    const attempts = [
      () => createVllmClient({ baseUrl: 'http://a', apiKey: '' }),
      () => createVllmClient({ baseUrl: 'http://user:s3cret@a' }),
    ];
    for (const attempt of attempts) {
      expect(attempt).toThrow();
      try {
        attempt();
      } catch (error) {
        expect((error as Error).message).not.toContain('s3cret');
      }
    }
  });

  it('accepts a trailing /v1 and a trailing slash', async () => {
    const client = createVllmClient({ baseUrl: 'http://127.0.0.1:8000/v1/' });
    expect(client.baseUrls).toEqual(['http://127.0.0.1:8000']);
    await client.close();
  });
});

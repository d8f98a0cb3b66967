// Usage read from real simulator responses: bodies, final usage chunks, continuous usage, streams cut short, streams
// with no usage at all; and what the client did not ask for stripped byte for byte.
import { describe, expect, it } from 'vitest';
import { estimatePromptTokens, requestUsage, UsageMeter } from '../../src/index.js';
import { trackResources } from '../helpers/fixtures.js';

const resources = trackResources();
const messages = [{ role: 'user', content: 'Tell me a story about a lighthouse keeper.' }];

/** POSTs to the simulator and returns the raw body bytes. */
async function raw(url: string, body: object): Promise<Buffer> {
  const res = await fetch(`${url}/v1/chat/completions`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify(body),
  });
  return Buffer.from(await res.arrayBuffer());
}

/** Ids and timestamps differ between two requests; everything else must not. */
const normalise = (bytes: Buffer) =>
  bytes
    .toString('utf8')
    .replace(/"id":"[^"]+"/g, '"id":"X"')
    .replace(/"created":\d+/g, '"created":0');

/** Feeds `bytes` to a meter in chunks of `size` bytes and returns what it forwarded. */
function through(meter: UsageMeter, bytes: Buffer, size: number): Buffer {
  const out: Buffer[] = [];
  for (let i = 0; i < bytes.length; i += size) out.push(meter.write(bytes.subarray(i, i + size)));
  out.push(meter.end());
  return Buffer.concat(out);
}

const base = { messages, stream: true, seed: 7 };
const withUsage = { ...base, stream_options: { include_usage: true } };
const continuous = { ...base, stream_options: { include_usage: true, continuous_usage_stats: true } };

describe('UsageMeter', () => {
  it('strips continuous usage and the usage chunk: the client gets the stream it asked for, byte for byte', async () => {
    const sim = await resources.simulator({ outputTokens: 25 });
    const plain = await raw(sim.url, base);
    const metered = await raw(sim.url, continuous);
    expect(metered.toString()).toContain('"usage":{"prompt_tokens"');
    for (const size of [1, 7, 64, 100_000]) {
      const meter = new UsageMeter({ stream: true, strip: 'all' });
      const forwarded = through(meter, metered, size);
      expect(normalise(forwarded)).toBe(normalise(plain));
      expect(forwarded.toString()).not.toContain('usage');
      const usage = meter.usage();
      expect(usage.source).toBe('reported');
      expect(usage.completionTokens).toBe(25);
      expect(usage.promptTokens).toBeGreaterThan(0);
    }
  });

  it('keeps the final usage chunk for a client that asked for it, without the per-chunk usage', async () => {
    const sim = await resources.simulator({ outputTokens: 25 });
    const reference = await raw(sim.url, withUsage);
    const meter = new UsageMeter({ stream: true, strip: 'chunks' });
    const forwarded = through(meter, await raw(sim.url, continuous), 13);
    expect(normalise(forwarded)).toBe(normalise(reference));
    expect(meter.usage()).toMatchObject({ completionTokens: 25, source: 'reported' });
  });

  it('reads the final usage chunk, and forwards untouched what needs no stripping', async () => {
    const sim = await resources.simulator({ outputTokens: 9 });
    const bytes = await raw(sim.url, withUsage);
    const meter = new UsageMeter({ stream: true });
    expect(through(meter, bytes, 50).equals(bytes)).toBe(true);
    const usageEvent = bytes
      .toString()
      .split('\n\n')
      .find((event) => event.includes('"choices":[]'));
    const final = JSON.parse(usageEvent!.slice('data: '.length)).usage;
    expect(meter.usage()).toEqual({
      promptTokens: final.prompt_tokens,
      completionTokens: 9,
      source: 'reported',
    });
  });

  it('charges a stream cut halfway what it had delivered: prompt plus the tokens streamed', async () => {
    const sim = await resources.simulator({ outputTokens: 30 });
    const bytes = await raw(sim.url, continuous);
    // Cut in the middle of the 13th token's event (the role chunk comes first).
    const events = bytes.toString().split('\n\n');
    const cutAt = events.slice(0, 14).join('\n\n').length + 10;
    const meter = new UsageMeter({ stream: true, strip: 'all' });
    meter.write(bytes.subarray(0, cutAt));
    const usage = meter.usage();
    expect(usage.completionTokens).toBe(13);
    expect(usage.source).toBe('reported');
  });

  it('sums continuous usage over choices when n > 1 and the stream is cut', async () => {
    const sim = await resources.simulator({ outputTokens: 10 });
    const bytes = await raw(sim.url, { ...continuous, n: 2 });
    const events = bytes.toString().split('\n\n');
    // The role chunks of both choices, then 4 steps of both: 8 token chunks.
    const cut = Buffer.from(`${events.slice(0, 10).join('\n\n')}\n\n`);
    const meter = new UsageMeter({ stream: true, choices: 2 });
    meter.write(cut);
    expect(meter.usage().completionTokens).toBe(8);
  });

  it('counts content chunks when the upstream reports no usage, and estimates the prompt', async () => {
    const sim = await resources.simulator({ outputTokens: 17 });
    const meter = new UsageMeter({
      stream: true,
      promptTokensEstimate: () => estimatePromptTokens({ messages }),
    });
    through(meter, await raw(sim.url, base), 31);
    expect(meter.usage()).toEqual({
      promptTokens: estimatePromptTokens({ messages }),
      completionTokens: 17,
      source: 'counted',
    });
    expect(estimatePromptTokens({ messages })).toBe(4 + Math.ceil(messages[0]!.content.length / 4));
  });

  it('reads a whole JSON body', async () => {
    const sim = await resources.simulator({ outputTokens: 12 });
    const body = await raw(sim.url, { ...base, stream: false });
    const meter = new UsageMeter({ stream: false });
    expect(through(meter, body, 20).equals(body)).toBe(true);
    const usage = JSON.parse(body.toString()).usage;
    expect(meter.usage()).toEqual({
      promptTokens: usage.prompt_tokens,
      completionTokens: usage.completion_tokens,
      source: 'reported',
    });
  });

  it('holds the end of the answer for end(): a stream’s [DONE], a whole body', async () => {
    const sim = await resources.simulator({ outputTokens: 3 });
    const stream = await raw(sim.url, withUsage);
    const meter = new UsageMeter({ stream: true });
    const now = meter.write(stream);
    expect(now.toString()).not.toContain('[DONE]');
    expect(meter.end().toString()).toBe('data: [DONE]\n\n');
    const body = new UsageMeter({ stream: false });
    expect(body.write(Buffer.from('{"usage":')).length).toBe(0);
    expect(body.write(Buffer.from('{"prompt_tokens":2,"completion_tokens":1}}')).length).toBe(0);
    expect(body.end().toString()).toBe('{"usage":{"prompt_tokens":2,"completion_tokens":1}}');
    expect(body.usage()).toEqual({ promptTokens: 2, completionTokens: 1, source: 'reported' });
  });

  it('survives malformed usage: never throws, falls back to counting, and says so', () => {
    const events = [
      'data: {"choices":[{"index":0,"delta":{"content":"a"}}],"usage":{"prompt_tokens":"lots","completion_tokens":-1}}',
      'data: {"choices":[{"index":0,"delta":{"content":"b"}}],"usage":{"prompt_tokens":',
    ];
    const meter = new UsageMeter({ stream: true, strip: 'all', promptTokensEstimate: 3 });
    const out = through(meter, Buffer.from(`${events.join('\n\n')}\n\ndata: [DONE]\n\n`), 5);
    expect(out.toString()).toContain('data: [DONE]');
    expect(meter.usage()).toEqual({ promptTokens: 3, completionTokens: 2, source: 'counted' });
    expect(meter.sawMalformedUsage).toBe(true);
    const body = new UsageMeter({ stream: false });
    body.write(Buffer.from('{"usage":{"prompt_tokens":1e400}}'));
    body.end();
    expect(body.usage().source).toBe('counted');
  });
});

describe('requestUsage', () => {
  it('appends stream_options to a streamed request, leaving every other byte as it came', () => {
    const text = '{ "model": "m", "stream": true, "messages": [{"role":"user","content":"}"}] }\n';
    const body = Buffer.from(text);
    const asked = requestUsage(body, JSON.parse(text), { continuous: true });
    expect(asked.strip).toBe('all');
    expect(asked.body.toString()).toBe(
      `${text.slice(0, text.lastIndexOf('}'))},"stream_options":{"include_usage":true,"continuous_usage_stats":true}}\n`.replace(
        ' },"stream_options"',
        ' ,"stream_options"',
      ),
    );
    expect(JSON.parse(asked.body.toString()).stream_options).toEqual({
      include_usage: true,
      continuous_usage_stats: true,
    });
  });

  it('merges into the client’s own stream_options and decides what to strip', () => {
    const parsed = { stream: true, stream_options: { include_usage: true } };
    const asked = requestUsage(Buffer.from(JSON.stringify(parsed)), parsed, { continuous: true });
    expect(asked.strip).toBe('chunks');
    expect(JSON.parse(asked.body.toString()).stream_options).toEqual({
      include_usage: true,
      continuous_usage_stats: true,
    });
    // Without continuous usage, a client that asked for usage needs nothing changed.
    const same = Buffer.from(JSON.stringify(parsed));
    expect(requestUsage(same, parsed, { continuous: false })).toEqual({ body: same, strip: 'none' });
    // Not streamed: the body already has usage.
    const plain = Buffer.from('{"stream":false}');
    expect(requestUsage(plain, { stream: false }, { continuous: true }).body).toBe(plain);
    // A client that asked for continuous usage gets it, untouched.
    const all = { stream: true, stream_options: { include_usage: true, continuous_usage_stats: true } };
    expect(requestUsage(Buffer.from('{}'), all, { continuous: true }).strip).toBe('none');
  });
});

describe('UsageMeter on hostile upstream bodies', () => {
  const MB = 1 << 20;
  /** Feeds `total` bytes made by `fill` in 64 KB chunks; returns the bytes forwarded before end, and in all. */
  function feed(meter: UsageMeter, total: number, fill: number, last: Buffer) {
    const chunk = Buffer.alloc(64 * 1024, fill);
    let forwardedBeforeEnd = 0;
    let mostHeld = 0;
    for (let written = 0; written < total; written += chunk.length) {
      forwardedBeforeEnd += meter.write(chunk).length;
      mostHeld = Math.max(mostHeld, written + chunk.length - forwardedBeforeEnd);
    }
    forwardedBeforeEnd += meter.write(last).length;
    const rest = meter.end();
    return { forwardedBeforeEnd, mostHeld, all: forwardedBeforeEnd + rest.length, rest };
  }

  it('holds at most a bounded tail of a 64 MB body, forwards the rest as it comes, and still reads its usage', () => {
    const meter = new UsageMeter({ stream: false });
    const usage = Buffer.from(',"usage":{"prompt_tokens":11,"completion_tokens":22,"total_tokens":33}}');
    const { mostHeld, all, rest } = feed(meter, 64 * MB, 0x20, usage);
    expect(all).toBe(64 * MB + usage.length);
    expect(mostHeld).toBeLessThanOrEqual(192 * 1024);
    // The last bytes are still held for end(): the charge lands before the client has the end of the answer.
    expect(rest.subarray(rest.length - usage.length).equals(usage)).toBe(true);
    expect(meter.usage()).toEqual({ promptTokens: 11, completionTokens: 22, source: 'reported' });
  });

  it('forwards an SSE event that never ends in linear time, holding a bounded tail, and reads usage at its end', () => {
    const meter = new UsageMeter({ stream: true, strip: 'all' });
    const start = Buffer.from('data: {"choices":[{"index":0,"delta":{"content":"');
    expect(meter.write(start).length).toBe(0);
    // 64 MB without a blank line: before the fix each chunk re-joined everything held (13 minutes for this).
    const end = Buffer.from(
      '"}}],"usage":{"prompt_tokens":5,"completion_tokens":7,"total_tokens":12}}\n\ndata: [DONE]\n\n',
    );
    const { mostHeld, all } = feed(meter, 64 * MB, 0x61, end);
    expect(all).toBe(start.length + 64 * MB + end.length);
    expect(mostHeld).toBeLessThanOrEqual(2 * MB);
    expect(meter.usage()).toMatchObject({ promptTokens: 5, completionTokens: 7, source: 'reported' });
  });

  it('meters normal events again after an oversized one, stripping as asked', () => {
    const meter = new UsageMeter({ stream: true, strip: 'all' });
    const big = Buffer.concat([
      Buffer.from('data: {"choices":[{"index":0,"delta":{"content":"'),
      Buffer.alloc(2 * MB, 0x62),
      Buffer.from('"}}]}\n\n'),
    ]);
    const small =
      'data: {"choices":[{"index":0,"delta":{"content":"x"}}],"usage":{"prompt_tokens":3,"completion_tokens":9,"total_tokens":12}}\n\n' +
      'data: {"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":10,"total_tokens":13}}\n\ndata: [DONE]\n\n';
    const out = through(meter, Buffer.concat([big, Buffer.from(small)]), 100_000).toString('latin1');
    const expected = 'data: {"choices":[{"index":0,"delta":{"content":"x"}}]}\n\ndata: [DONE]\n\n';
    expect(out.length).toBe(big.length + expected.length);
    expect(out.slice(big.length)).toBe(expected);
    expect(out).not.toContain('"usage"');
    expect(out.endsWith('data: [DONE]\n\n')).toBe(true);
    expect(meter.usage()).toMatchObject({ promptTokens: 3, completionTokens: 10, source: 'reported' });
  });
});

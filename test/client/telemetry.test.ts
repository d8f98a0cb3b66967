// OpenTelemetry: a GenAI span per inference call, its metrics, and traceparent upstream; captured with the SDK's
// in-memory exporters against the simulator.
import { context, metrics, ROOT_CONTEXT, SpanKind, SpanStatusCode, trace } from '@opentelemetry/api';
import { AsyncLocalStorageContextManager } from '@opentelemetry/context-async-hooks';
import OpenAI from 'openai';
import { afterEach, describe, expect, it } from 'vitest';
import { createVllmClient, isInvalidOptionError, type Usage } from '../../src/index.js';
import type { SimulatorRequest } from '../../src/testing/index.js';
import { messages, trackResources } from '../helpers/fixtures.js';
import { type CapturedTelemetry, captureTelemetry } from '../helpers/telemetry.js';

const use = trackResources();
const MODEL = 'meta-llama/Llama-3.1-8B-Instruct';

let captured: CapturedTelemetry[] = [];
afterEach(async () => {
  await Promise.all(captured.map((c) => c.close()));
  captured = [];
});

function capture(): CapturedTelemetry {
  const telemetry = captureTelemetry();
  captured.push(telemetry);
  return telemetry;
}

/** A simulator that remembers the headers of each request. */
async function recordingSimulator(options: Parameters<typeof use.simulator>[0] = {}) {
  const requests: SimulatorRequest[] = [];
  const sim = await use.simulator({ ...options, onRequest: (request) => requests.push(request) });
  return { sim, requests };
}

function tracedClient(baseUrl: string, otel: CapturedTelemetry, extra: object = {}) {
  return use.client({
    baseUrl,
    telemetry: { tracerProvider: otel.tracerProvider, meterProvider: otel.meterProvider },
    ...extra,
  });
}

describe('client spans', () => {
  it('records a chat call as a GenAI client span, and sends its traceparent upstream', async () => {
    const otel = capture();
    const { sim, requests } = await recordingSimulator();
    const client = tracedClient(sim.url, otel);
    const reply = await client.chatCompletion(
      { model: MODEL, messages, max_tokens: 5, temperature: 0.5 },
      { requestId: 'req-1' },
    );
    const [span] = otel.spans();
    expect(otel.spans()).toHaveLength(1);
    expect(span!.name).toBe(`chat ${MODEL}`);
    expect(span!.kind).toBe(SpanKind.CLIENT);
    expect(span!.status.code).toBe(SpanStatusCode.UNSET);
    const port = Number(new URL(sim.url).port);
    expect(span!.attributes).toEqual({
      'gen_ai.operation.name': 'chat',
      'gen_ai.provider.name': 'vllm',
      'gen_ai.request.model': MODEL,
      'gen_ai.request.max_tokens': 5,
      'gen_ai.request.temperature': 0.5,
      'vllm_kit.request_id': 'req-1',
      'server.address': '127.0.0.1',
      'server.port': port,
      'gen_ai.response.model': reply.model,
      'gen_ai.response.id': reply.id,
      'gen_ai.response.finish_reasons': ['length'],
      'gen_ai.usage.input_tokens': reply.usage!.prompt_tokens,
      'gen_ai.usage.output_tokens': reply.usage!.completion_tokens,
    });
    // Nothing of the conversation is recorded by default.
    expect(JSON.stringify(span!.attributes)).not.toContain('Say something');
    const { traceId, spanId } = span!.spanContext();
    expect(requests.at(-1)!.headers.traceparent).toBe(`00-${traceId}-${spanId}-01`);
  });

  it('covers a whole stream: usage from the final chunk, time to first chunk and per chunk as metrics', async () => {
    const otel = capture();
    const sim = await use.simulator({ ttftMs: 20, itlMs: 3 });
    const client = tracedClient(sim.url, otel);
    let usage: Usage | undefined;
    let events = 0;
    let firstEventAt = 0;
    let lastEventAt = 0;
    const started = performance.now();
    for await (const chunk of client.streamChatCompletion({
      messages,
      max_tokens: 12,
      stream_options: { include_usage: true },
    })) {
      events++;
      firstEventAt ||= performance.now();
      lastEventAt = performance.now();
      usage = chunk.usage ?? usage;
    }
    const [span] = otel.spans();
    expect(span!.attributes['gen_ai.usage.input_tokens']).toBe(usage!.prompt_tokens);
    expect(span!.attributes['gen_ai.usage.output_tokens']).toBe(12);
    expect(span!.attributes['gen_ai.response.finish_reasons']).toEqual(['length']);
    // The span ends when the stream does, not when its headers came: it lasts at least from the first chunk to the
    // last. Durations on the SDK's own clock (performance.now), never instants against Date.now(): that once failed
    // on a loaded machine, the span "ending" 4 ms before the test's Date.now() on a clock with another origin.
    const durationMs = span!.duration[0] * 1000 + span!.duration[1] / 1e6;
    expect(lastEventAt - firstEventAt).toBeGreaterThan(10);
    expect(durationMs).toBeGreaterThanOrEqual(lastEventAt - firstEventAt);
    const ttfc = span!.attributes['gen_ai.response.time_to_first_chunk'] as number;
    expect(ttfc).toBeGreaterThan(0.015);
    expect(ttfc * 1000).toBeLessThanOrEqual(firstEventAt - started);

    await otel.collect();
    const [first] = otel.histogram('gen_ai.client.operation.time_to_first_chunk');
    expect(first!.value.count).toBe(1);
    expect(first!.value.sum).toBeCloseTo(ttfc, 6);
    const [perChunk] = otel.histogram('gen_ai.client.operation.time_per_output_chunk');
    // One value per chunk after the first (events may share a TCP read, never split one).
    expect(perChunk!.value.count).toBeGreaterThanOrEqual(1);
    expect(perChunk!.value.count).toBeLessThanOrEqual(events - 1 + 1);
    const tokens = otel.histogram('gen_ai.client.token.usage');
    const byType = Object.fromEntries(tokens.map((p) => [p.attributes['gen_ai.token.type'], p.value.sum]));
    expect(byType).toEqual({ input: usage!.prompt_tokens, output: 12 });
    expect(tokens[0]!.attributes).toMatchObject({
      'gen_ai.operation.name': 'chat',
      'gen_ai.provider.name': 'vllm',
      'gen_ai.response.model': MODEL,
    });
    const [duration] = otel.histogram('gen_ai.client.operation.duration');
    expect(duration!.value.count).toBe(1);
    expect(duration!.attributes['error.type']).toBeUndefined();
  });

  it('reads vLLM continuous usage: the last chunk carries the totals', async () => {
    const otel = capture();
    const sim = await use.simulator();
    const client = tracedClient(sim.url, otel);
    for await (const _ of client.streamChatCompletion({
      messages,
      max_tokens: 7,
      stream_options: { include_usage: true, continuous_usage_stats: true },
    })) {
      // drain
    }
    expect(otel.spans()[0]!.attributes['gen_ai.usage.output_tokens']).toBe(7);
  });

  it('records completions and embeddings by their operation names', async () => {
    const otel = capture();
    const sim = await use.simulator();
    const client = tracedClient(sim.url, otel);
    const completion = await client.completion({ prompt: 'Once', max_tokens: 3 });
    const embedded = await client.embeddings({ input: 'hello' });
    await client.models();
    await client.health();
    const spans = otel.spans();
    // Only inference calls get spans: models and health do not.
    expect(spans.map((s) => s.name)).toEqual(['text_completion', 'embeddings']);
    expect(spans[0]!.attributes['gen_ai.usage.output_tokens']).toBe(completion.usage!.completion_tokens);
    expect(spans[1]!.attributes['gen_ai.usage.input_tokens']).toBe(embedded.usage!.prompt_tokens);
    expect(spans[1]!.attributes['gen_ai.usage.output_tokens']).toBeUndefined();
  });

  it('parents the span on the given trace context, or the active one', async () => {
    const otel = capture();
    const { sim, requests } = await recordingSimulator();
    const client = tracedClient(sim.url, otel);
    const tracer = otel.tracerProvider.getTracer('test');
    const parent = tracer.startSpan('server');
    await client.chatCompletion(
      { messages, max_tokens: 1 },
      { traceContext: trace.setSpan(ROOT_CONTEXT, parent) },
    );
    parent.end();
    const child = otel.spans().find((s) => s.name === 'chat')!;
    expect(child.parentSpanContext?.spanId).toBe(parent.spanContext().spanId);
    expect(child.spanContext().traceId).toBe(parent.spanContext().traceId);
    expect(requests.at(-1)!.headers.traceparent).toContain(parent.spanContext().traceId);

    const manager = new AsyncLocalStorageContextManager().enable();
    context.setGlobalContextManager(manager);
    try {
      const active = tracer.startSpan('handler');
      await context.with(trace.setSpan(context.active(), active), () =>
        client.chatCompletion({ messages, max_tokens: 1 }),
      );
      active.end();
      const nested = otel.spans().filter((s) => s.name === 'chat')[1]!;
      expect(nested.parentSpanContext?.spanId).toBe(active.spanContext().spanId);
    } finally {
      context.disable();
    }
  });

  it('records the call into a span the caller owns (traceSpan): one span, never ended, named or given a status here', async () => {
    const otel = capture();
    const { sim, requests } = await recordingSimulator({ faults: { status: { status: 503, times: 1 } } });
    const client = tracedClient(sim.url, otel, { retryBaseDelayMs: 1, retryMaxDelayMs: 2 });
    const server = otel.tracerProvider
      .getTracer('test')
      .startSpan('POST /v1/chat/completions', { kind: SpanKind.SERVER, attributes: { 'server.port': 1 } });
    const reply = await client.chatCompletion(
      { model: MODEL, messages, max_tokens: 3 },
      { traceSpan: server, requestId: 'req-9' },
    );
    // The caller's span is still open: nothing exported yet, and the upstream was sent its context.
    expect(otel.spans()).toHaveLength(0);
    const { traceId, spanId } = server.spanContext();
    expect(requests.at(-1)!.headers.traceparent).toBe(`00-${traceId}-${spanId}-01`);
    server.end();
    const [span] = otel.spans();
    expect(otel.spans()).toHaveLength(1);
    expect(span!.name).toBe('POST /v1/chat/completions');
    expect(span!.kind).toBe(SpanKind.SERVER);
    // The retried 503 is an event; the span's status and `error.type` are its owner's.
    expect(span!.events.map((e) => e.name)).toEqual(['retry']);
    expect(span!.status.code).toBe(SpanStatusCode.UNSET);
    expect(span!.attributes).toEqual({
      'server.port': 1, // the owner's, not overwritten with the replica's
      'gen_ai.operation.name': 'chat',
      'gen_ai.provider.name': 'vllm',
      'gen_ai.request.model': MODEL,
      'gen_ai.request.max_tokens': 3,
      'gen_ai.response.model': reply.model,
      'gen_ai.response.id': reply.id,
      'gen_ai.response.finish_reasons': ['length'],
      'gen_ai.usage.input_tokens': reply.usage!.prompt_tokens,
      'gen_ai.usage.output_tokens': reply.usage!.completion_tokens,
      'http.request.resend_count': 1,
    });
    // The metrics are the call's own, with the replica's address.
    await otel.collect();
    const [duration] = otel.histogram('gen_ai.client.operation.duration');
    expect(duration!.attributes['server.port']).toBe(Number(new URL(sim.url).port));
  });

  it('adds a retry event for each retried status, and counts resends', async () => {
    const otel = capture();
    const sim = await use.simulator({ faults: { status: { status: 503, times: 2 } } });
    const client = tracedClient(sim.url, otel, { retryBaseDelayMs: 1, retryMaxDelayMs: 2 });
    await client.chatCompletion({ messages, max_tokens: 2 });
    const [span] = otel.spans();
    expect(span!.events.map((e) => [e.name, e.attributes?.['error.type']])).toEqual([
      ['retry', '503'],
      ['retry', '503'],
    ]);
    expect(span!.attributes['http.request.resend_count']).toBe(2);
    expect(span!.attributes['gen_ai.usage.output_tokens']).toBe(2);
    expect(span!.status.code).toBe(SpanStatusCode.UNSET);
  });

  it('adds a replay event when a reused keep-alive socket dies before the answer', async () => {
    const otel = capture();
    const sim = await use.simulator({ faults: { resetBeforeResponse: { onlyReused: true, times: 1 } } });
    const client = tracedClient(sim.url, otel, { maxRetries: 0 });
    await client.chatCompletion({ messages, max_tokens: 1 });
    await new Promise((resolve) => setImmediate(resolve));
    await client.chatCompletion({ messages, max_tokens: 1 });
    expect(client.stats().replays).toBe(1);
    const replayed = otel.spans()[1]!;
    expect(replayed.events.map((e) => e.name)).toEqual(['replay']);
    expect(replayed.events[0]!.attributes?.['error.type']).toMatch(/^(UND_ERR_SOCKET|ECONNRESET|EPIPE)$/);
    expect(replayed.attributes['http.request.resend_count']).toBe(1);
  });

  it('records errors with error.type: the status, or the client error code', async () => {
    const otel = capture();
    const sim = await use.simulator();
    const client = tracedClient(sim.url, otel, { maxRetries: 0 });
    await expect(client.chatCompletion({ model: 'other', messages, max_tokens: 1 })).rejects.toThrow();
    const refused = tracedClient('http://127.0.0.1:1', otel, { maxRetries: 0 });
    await expect(refused.chatCompletion({ messages, max_tokens: 1 })).rejects.toThrow();
    const [notFound, unreachable] = otel.spans();
    expect(notFound!.attributes['error.type']).toBe('404');
    expect(notFound!.status).toMatchObject({ code: SpanStatusCode.ERROR });
    expect(unreachable!.attributes['error.type']).toBe('ERR_VK_UPSTREAM_CONNECTION');
    await otel.collect();
    const types = otel.histogram('gen_ai.client.operation.duration').map((p) => p.attributes['error.type']);
    expect(types.sort()).toEqual(['404', 'ERR_VK_UPSTREAM_CONNECTION']);
  });

  it('ends an aborted stream with the abort, and an abandoned one as cancelled', async () => {
    const otel = capture();
    const sim = await use.simulator({ itlMs: 5 });
    const client = tracedClient(sim.url, otel);
    const controller = new AbortController();
    let seen = 0;
    await expect(
      (async () => {
        for await (const _ of client.streamChatCompletion(
          { messages, max_tokens: 200 },
          { signal: controller.signal },
        )) {
          if (++seen === 3) controller.abort();
        }
      })(),
    ).rejects.toThrow();
    for await (const _ of client.streamChatCompletion({ messages, max_tokens: 200 })) break;
    const [aborted, abandoned] = otel.spans();
    expect(aborted!.attributes['error.type']).toBe('ERR_VK_ABORTED');
    expect(aborted!.status.code).toBe(SpanStatusCode.ERROR);
    expect(abandoned!.attributes['error.type']).toBe('cancelled');
  });

  it('traces the raw passthrough by its parsed body, ending with the body', async () => {
    const otel = capture();
    const sim = await use.simulator();
    const client = tracedClient(sim.url, otel);
    const body = { messages, max_tokens: 4, stream: true, stream_options: { include_usage: true } };
    const response = await client.request({
      method: 'POST',
      path: '/v1/chat/completions',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify(body),
      routingBody: body,
    });
    expect(otel.spans()).toHaveLength(0);
    const text = Buffer.concat(await response.body.toArray()).toString();
    await new Promise((resolve) => setImmediate(resolve));
    const [span] = otel.spans();
    expect(span!.attributes['gen_ai.usage.output_tokens']).toBe(4);
    expect(span!.attributes['gen_ai.request.max_tokens']).toBe(4);
    expect(span!.attributes['gen_ai.response.time_to_first_chunk']).toBeGreaterThan(0);
    expect(text).toContain('[DONE]');
  });

  it('traces calls made through client.fetch (the openai SDK)', async () => {
    const otel = capture();
    const { sim, requests } = await recordingSimulator({ model: 'm' });
    const client = tracedClient(sim.url, otel);
    const openai = new OpenAI({
      baseURL: `${sim.url}/v1`,
      apiKey: 'unused',
      fetch: client.fetch,
      maxRetries: 0,
    });
    const prompt = [{ role: 'user' as const, content: 'hi' }];
    const reply = await openai.chat.completions.create({ model: 'm', messages: prompt, max_tokens: 3 });
    const stream = await openai.chat.completions.create({
      model: 'm',
      messages: prompt,
      max_tokens: 2,
      stream: true,
      stream_options: { include_usage: true },
    });
    for await (const _ of stream) {
      // drain
    }
    await expect.poll(() => otel.spans().length).toBe(2);
    const [json, streamed] = otel.spans();
    expect(json!.name).toBe('chat m');
    expect(json!.attributes['gen_ai.usage.input_tokens']).toBe(reply.usage!.prompt_tokens);
    expect(streamed!.attributes['gen_ai.usage.output_tokens']).toBe(2);
    expect(requests[0]!.headers.traceparent).toContain(json!.spanContext().spanId);
  });

  it('never throws on a body nested 100k levels deep when capturing content (the upstream refuses it)', async () => {
    const otel = capture();
    const sim = await use.simulator();
    const client = tracedClient(sim.url, otel, {
      telemetry: {
        tracerProvider: otel.tracerProvider,
        meterProvider: otel.meterProvider,
        captureContent: true,
      },
    });
    let content: unknown = 'x';
    for (let i = 0; i < 100_000; i++) content = [content];
    const deep = { messages: [{ role: 'user', content }] };
    // The passthrough, as the gateway calls it: the span ends (serialising the input) after the upstream's 400.
    const reply = await client.request({
      method: 'POST',
      path: '/v1/chat/completions',
      headers: { 'content-type': 'application/json' },
      body: Buffer.from('{"messages":[{"role":"user","content":"x"}],"model":"nope"}'),
      routingBody: deep,
    });
    for await (const _ of reply.body) {
      // drained
    }
    await expect.poll(() => otel.spans().length).toBe(1);
    const [span] = otel.spans();
    expect(span!.attributes['gen_ai.input.messages']).toBe(
      JSON.stringify([{ role: 'user', parts: [{ type: 'text', content: '"[nested too deep]"' }] }]),
    );
  });

  it('records prompts and completions only when captureContent says so', async () => {
    const otel = capture();
    const sim = await use.simulator();
    const client = tracedClient(sim.url, otel, {
      telemetry: {
        tracerProvider: otel.tracerProvider,
        meterProvider: otel.meterProvider,
        captureContent: true,
      },
    });
    const reply = await client.chatCompletion({ messages, max_tokens: 3 });
    let streamed = '';
    for await (const chunk of client.streamChatCompletion({ messages, max_tokens: 3 }))
      streamed += chunk.choices[0]?.delta.content ?? '';
    const [json, stream] = otel.spans();
    const input = [{ role: 'user', parts: [{ type: 'text', content: messages[0]!.content }] }];
    expect(JSON.parse(json!.attributes['gen_ai.input.messages'] as string)).toEqual(input);
    expect(JSON.parse(json!.attributes['gen_ai.output.messages'] as string)).toEqual([
      {
        role: 'assistant',
        parts: [{ type: 'text', content: reply.choices[0]!.message.content }],
        finish_reason: 'length',
      },
    ]);
    expect(JSON.parse(stream!.attributes['gen_ai.output.messages'] as string)[0].parts[0].content).toBe(
      streamed,
    );
  });

  it('makes no span while no SDK is registered, and picks one up registered later', async () => {
    const otel = capture();
    const { sim, requests } = await recordingSimulator();
    // The default: the global providers, which delegate to no-ops until an SDK registers.
    const client = use.client({ baseUrl: sim.url });
    await client.chatCompletion({ messages, max_tokens: 1 });
    expect(requests[0]!.headers.traceparent).toBeUndefined();
    trace.setGlobalTracerProvider(otel.tracerProvider);
    metrics.setGlobalMeterProvider(otel.meterProvider);
    try {
      await client.chatCompletion({ messages, max_tokens: 1 });
      expect(otel.spans().map((s) => s.name)).toEqual(['chat']);
      expect(requests[1]!.headers.traceparent).toContain(otel.spans()[0]!.spanContext().spanId);
      await otel.collect();
      expect(otel.histogram('gen_ai.client.operation.duration')[0]!.value.count).toBe(1);
    } finally {
      trace.disable();
      metrics.disable();
    }
  });

  it('does nothing when turned off: no span, no traceparent', async () => {
    const otel = capture();
    const { sim, requests } = await recordingSimulator();
    const client = tracedClient(sim.url, otel, { telemetry: false });
    await client.chatCompletion({ messages, max_tokens: 1 });
    expect(otel.spans()).toHaveLength(0);
    expect(requests[0]!.headers.traceparent).toBeUndefined();
  });

  it('validates its options, naming the option and showing the value', () => {
    const attempt = (telemetry: unknown) => {
      try {
        createVllmClient({ baseUrl: 'http://127.0.0.1:1', telemetry: telemetry as never });
      } catch (error) {
        expect(isInvalidOptionError(error)).toBe(true);
        return (error as Error).message;
      }
      return 'accepted';
    };
    expect(attempt('yes')).toBe('Expected `telemetry` to be a boolean or an object, got `"yes"` (string)');
    expect(attempt({ tracerProvider: {} })).toMatch(
      /^Expected `telemetry.tracerProvider` to be an OpenTelemetry/,
    );
    expect(attempt({ captureContent: 1 })).toBe(
      'Expected `telemetry.captureContent` to be a boolean, got `1` (number)',
    );
    expect(attempt({ sampler: 1 })).toMatch(/telemetry\.sampler/);
  });
});

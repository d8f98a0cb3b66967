// OpenTelemetry end to end: the gateway (a real process, two workers) exports OTLP/HTTP to a receiver started here;
// the decoded spans and metrics are checked against what the simulator served.
import { randomBytes } from 'node:crypto';
import { createServer, request, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { describe, expect, it } from 'vitest';
import { DEFAULT_TRACE_RATIO, defaultSampler } from '../../examples/gateway/telemetry.js';
import { startVllmSimulator } from '../../src/testing/index.js';
import { post, trackGateways } from '../helpers/gateway.js';
import { chat, trackGatewayProcesses } from '../helpers/gateway-process.js';

const processes = trackGatewayProcesses();
const gateways = trackGateways();

interface OtlpValue {
  stringValue?: string;
  intValue?: number | string;
  doubleValue?: number;
  boolValue?: boolean;
  arrayValue?: { values?: OtlpValue[] };
}
interface OtlpAttribute {
  key: string;
  value: OtlpValue;
}
interface OtlpSpan {
  traceId: string;
  spanId: string;
  parentSpanId?: string;
  name: string;
  kind: number;
  attributes?: OtlpAttribute[];
  events?: { name: string; attributes?: OtlpAttribute[] }[];
  status?: { code?: number };
}
interface Span {
  traceId: string;
  spanId: string;
  parentSpanId: string | undefined;
  name: string;
  kind: number;
  attributes: Record<string, unknown>;
  status: number;
  resource: Record<string, unknown>;
}

function decodeValue(value: OtlpValue): unknown {
  if (value.stringValue !== undefined) return value.stringValue;
  if (value.intValue !== undefined) return Number(value.intValue);
  if (value.doubleValue !== undefined) return value.doubleValue;
  if (value.boolValue !== undefined) return value.boolValue;
  if (value.arrayValue !== undefined) return (value.arrayValue.values ?? []).map(decodeValue);
  return undefined;
}

const decodeAttributes = (attributes: OtlpAttribute[] = []) =>
  Object.fromEntries(attributes.map((a) => [a.key, decodeValue(a.value)]));

/** A minimal OTLP/HTTP (JSON) receiver: keeps the spans and the names of the metrics it is sent. */
async function startReceiver() {
  const spans: Span[] = [];
  const metrics = new Map<string, number>();
  const server: Server = createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (chunk) => chunks.push(chunk));
    req.on('end', () => {
      const body = JSON.parse(Buffer.concat(chunks).toString() || '{}');
      if (req.url === '/v1/traces') {
        for (const resourceSpans of body.resourceSpans ?? []) {
          const resource = decodeAttributes(resourceSpans.resource?.attributes);
          for (const scope of resourceSpans.scopeSpans ?? []) {
            for (const span of scope.spans as OtlpSpan[]) {
              spans.push({
                traceId: span.traceId,
                spanId: span.spanId,
                parentSpanId: span.parentSpanId || undefined,
                name: span.name,
                kind: span.kind,
                attributes: decodeAttributes(span.attributes),
                status: span.status?.code ?? 0,
                resource,
              });
            }
          }
        }
      }
      if (req.url === '/v1/metrics') {
        for (const resourceMetrics of body.resourceMetrics ?? []) {
          for (const scope of resourceMetrics.scopeMetrics ?? []) {
            for (const metric of scope.metrics ?? []) {
              const points = metric.histogram?.dataPoints ?? [];
              const count = points.reduce(
                (sum: number, p: { count?: number | string }) => sum + Number(p.count ?? 0),
                0,
              );
              metrics.set(metric.name, Math.max(metrics.get(metric.name) ?? 0, count));
            }
          }
        }
      }
      res.writeHead(200, { 'content-type': 'application/json' });
      res.end('{}');
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const url = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  return { url, spans, metrics, close: () => new Promise((resolve) => server.close(resolve)) };
}

/** Streams a chat completion and leaves after the first chunk of its body. */
function abandonStream(url: string, key: string): Promise<void> {
  return new Promise((done, fail) => {
    const req = request(`${url}/v1/chat/completions`, {
      method: 'POST',
      agent: false,
      headers: { authorization: `Bearer ${key}`, 'content-type': 'application/json' },
    });
    req.on('response', (res) => {
      res.once('data', () => {
        req.destroy();
        done();
      });
    });
    req.on('error', (error) => (req.destroyed ? done() : fail(error)));
    req.end(
      JSON.stringify({
        messages: [{ role: 'user', content: 'a long story' }],
        max_tokens: 500,
        stream: true,
      }),
    );
  });
}

/** OTLP/JSON to `url`, nothing exported on a schedule: what arrives was flushed by the drain. */
function exportingTo(url: string): Record<string, string> {
  return {
    OTEL_EXPORTER_OTLP_ENDPOINT: url,
    OTEL_EXPORTER_OTLP_PROTOCOL: 'http/json',
    OTEL_BSP_SCHEDULE_DELAY: '600000',
    OTEL_METRIC_EXPORT_INTERVAL: '600000',
  };
}

describe('OpenTelemetry export', () => {
  it('exports one span per request, the GenAI call recorded into the server span, and the metrics, flushed on SIGTERM', async () => {
    const receiver = await startReceiver();
    processes.onCleanup(receiver.close);
    const traceparents: string[] = [];
    const sim = await startVllmSimulator({
      model: 'm',
      itlMs: 4,
      onRequest: (r) => {
        if (r.path === '/v1/chat/completions') traceparents.push(String(r.headers.traceparent));
      },
    });
    processes.onCleanup(() => sim.close());
    const gw = await processes.start(sim.url, {
      env: {
        WORKERS: '2',
        ...exportingTo(receiver.url),
        // Every request traced (the gateway's default samples a tenth of the traces that start here).
        OTEL_TRACES_SAMPLER: 'parentbased_always_on',
        RATE_LIMIT_POINTS: '1000',
      },
    });
    const callerTrace = randomBytes(16).toString('hex');
    const callerSpan = randomBytes(8).toString('hex');
    const json = await fetch(`${gw.url}/v1/chat/completions`, {
      method: 'POST',
      headers: {
        authorization: `Bearer ${gw.key}`,
        'content-type': 'application/json',
        traceparent: `00-${callerTrace}-${callerSpan}-01`,
      },
      body: JSON.stringify({ model: 'm', messages: [{ role: 'user', content: 'hi' }], max_tokens: 6 }),
    });
    const jsonRequestId = json.headers.get('x-request-id');
    const reply = (await json.json()) as { usage: { prompt_tokens: number; completion_tokens: number } };
    const streamed = await post(gw.url, '/v1/chat/completions', {
      key: gw.key,
      body: JSON.stringify({
        messages: [{ role: 'user', content: 'tell me more' }],
        max_tokens: 9,
        stream: true,
        stream_options: { include_usage: true },
      }),
    });
    const events = (await streamed.text()).split('\n').filter((l) => l.startsWith('data: {'));
    const streamUsage = JSON.parse(events.at(-1)!.slice(6)).usage;
    await abandonStream(gw.url, gw.key);
    // The abandoned request has reached the simulator and been cancelled there.
    await expect.poll(() => sim.stats().aborted, { timeout: 5000 }).toBe(1);
    // Prometheus is untouched.
    const prometheus = await fetch(`${gw.url}/metrics`);
    expect(prometheus.status).toBe(200);
    expect(await prometheus.text()).toContain('gateway_requests_total');

    gw.child.kill('SIGTERM');
    expect(await gw.exited).toBe(0);

    // One span per request: the GenAI call is recorded into the server span (no client span of its own).
    const servers = receiver.spans.filter((s) => s.kind === 2);
    expect(receiver.spans.filter((s) => s.kind === 3)).toHaveLength(0);
    expect(servers).toHaveLength(4); // three chats and the /metrics scrape
    expect(servers[0]!.resource['service.name']).toBe('vllm-kit-gateway');

    // The JSON call: the caller's trace continued, the request id, the HTTP and the GenAI attributes on one span.
    const server = servers.find((s) => s.traceId === callerTrace)!;
    expect(server.parentSpanId).toBe(callerSpan);
    expect(server.name).toBe('POST /v1/chat/completions');
    expect(server.attributes).toMatchObject({
      'http.request.method': 'POST',
      'http.route': '/v1/chat/completions',
      'http.response.status_code': 200,
      'url.path': '/v1/chat/completions',
      'vllm_kit.request_id': jsonRequestId,
      'gen_ai.operation.name': 'chat',
      'gen_ai.provider.name': 'vllm',
      'gen_ai.request.model': 'm',
      'gen_ai.request.max_tokens': 6,
      'gen_ai.response.model': 'm',
      'gen_ai.usage.input_tokens': reply.usage.prompt_tokens,
      'gen_ai.usage.output_tokens': reply.usage.completion_tokens,
    });
    // A server span's `server.*` would be the gateway's own address: the replica's is left to the metrics.
    expect(server.attributes['server.address']).toBeUndefined();
    // vLLM got the server span's context.
    expect(traceparents).toContain(`00-${callerTrace}-${server.spanId}-01`);

    // The stream: its usage (asked for by the caller) on its span.
    const streamServer = servers.find(
      (s) => s.attributes['gen_ai.request.max_tokens'] === 9 && s.attributes['error.type'] === undefined,
    )!;
    expect(streamServer.attributes['gen_ai.usage.output_tokens']).toBe(streamUsage.completion_tokens);
    expect(streamServer.attributes['gen_ai.usage.input_tokens']).toBe(streamUsage.prompt_tokens);
    expect(streamServer.attributes['gen_ai.response.time_to_first_chunk']).toBeGreaterThan(0);

    // The abandoned stream: its span says the client left (the outcome is the server's to tell, not the upstream's).
    const aborted = servers.find((s) => s.attributes['gen_ai.request.max_tokens'] === 500)!;
    expect(aborted.attributes['error.type']).toBe('client_closed');
    expect(aborted.status).toBe(2);

    // Metrics, from both workers, flushed by the drain.
    expect(receiver.metrics.get('gen_ai.client.operation.duration')).toBeGreaterThanOrEqual(1);
    expect(receiver.metrics.get('gen_ai.client.token.usage')).toBeGreaterThanOrEqual(1);
    expect(receiver.metrics.get('gen_ai.client.operation.time_to_first_chunk')).toBeGreaterThanOrEqual(1);
    expect(receiver.metrics.get('gen_ai.client.operation.time_per_output_chunk')).toBeGreaterThanOrEqual(1);
    expect(receiver.metrics.get('http.server.request.duration')).toBeGreaterThanOrEqual(1);
  });

  it('flushes on Ctrl-C as production delivers it: npm in front, SIGINT to the whole group, a stream open; OTEL_GENAI_UPSTREAM_SPAN=true gives the call a client span', async () => {
    const receiver = await startReceiver();
    processes.onCleanup(receiver.close);
    const sim = await startVllmSimulator({ model: 'm', itlMs: 25 });
    processes.onCleanup(() => sim.close());
    const gw = await processes.start(sim.url, {
      via: 'npm',
      detached: true,
      env: {
        WORKERS: '2',
        ...exportingTo(receiver.url),
        OTEL_GENAI_UPSTREAM_SPAN: 'true',
        OTEL_TRACES_SAMPLER: 'always_on',
      },
    });
    const stream = chat(gw.url, gw.key, {
      messages: [{ role: 'user', content: 'hi' }],
      max_tokens: 20,
      stream: true,
    });
    await expect.poll(() => sim.stats().running).toBe(1);
    process.kill(-gw.child.pid!, 'SIGINT');
    const result = await stream;
    const code = await gw.exited;
    expect({ code, output: gw.output().slice(-400) }).toMatchObject({ code: 0 });
    expect(result.text.trimEnd().endsWith('data: [DONE]')).toBe(true);
    // The drained stream's spans went out with the workers' last flush.
    const client = receiver.spans.find((span) => span.kind === 3)!;
    expect(client.name).toBe('chat');
    expect(client.attributes['gen_ai.usage.output_tokens']).toBe(20);
    expect(client.attributes['server.port']).toBe(Number(new URL(sim.url).port));
    const server = receiver.spans.find((span) => span.spanId === client.parentSpanId)!;
    expect(server.kind).toBe(2);
    expect(server.attributes['gen_ai.operation.name']).toBeUndefined();
  }, 60_000);

  it('samples by default as a user would pick: the caller decision followed, a tenth of the traces started here', async () => {
    const receiver = await startReceiver();
    processes.onCleanup(receiver.close);
    const traceparents: string[] = [];
    const sim = await startVllmSimulator({
      model: 'm',
      onRequest: (r) => r.method === 'POST' && traceparents.push(String(r.headers.traceparent)),
    });
    processes.onCleanup(() => sim.close());
    const gw = await processes.start(sim.url, {
      env: {
        WORKERS: '1',
        ...exportingTo(receiver.url),
      },
    });
    const callWith = async (flags: string) => {
      const traceId = randomBytes(16).toString('hex');
      const reply = await post(gw.url, '/v1/chat/completions', {
        key: gw.key,
        headers: { traceparent: `00-${traceId}-${randomBytes(8).toString('hex')}-${flags}` },
      });
      expect(reply.status).toBe(200);
      return traceId;
    };
    const sampled = await callWith('01');
    const unsampled = await callWith('00');
    gw.child.kill('SIGTERM');
    expect(await gw.exited).toBe(0);
    // The caller sampled it: traced, and vLLM is told so. The caller did not: no span, and vLLM is told that too.
    expect(receiver.spans.map((span) => span.traceId)).toEqual([sampled]);
    expect(traceparents[0]).toMatch(new RegExp(`^00-${sampled}-[0-9a-f]{16}-01$`));
    expect(traceparents[1]).toMatch(new RegExp(`^00-${unsampled}-[0-9a-f]{16}-00$`));
    // Metrics still count every request.
    expect(receiver.metrics.get('gen_ai.client.operation.duration')).toBeGreaterThanOrEqual(1);

    // Traces that start here: a tenth by default, OTEL_TRACES_SAMPLER_ARG's ratio when set, the SDK's own with a sampler.
    expect(String(await defaultSampler({}))).toBe(
      `ParentBased{root=TraceIdRatioBased{${DEFAULT_TRACE_RATIO}}, remoteParentSampled=AlwaysOnSampler, remoteParentNotSampled=AlwaysOffSampler, localParentSampled=AlwaysOnSampler, localParentNotSampled=AlwaysOffSampler}`,
    );
    expect(DEFAULT_TRACE_RATIO).toBe(0.1);
    expect(String(await defaultSampler({ OTEL_TRACES_SAMPLER_ARG: '0.25' }))).toContain(
      'TraceIdRatioBased{0.25}',
    );
    expect(await defaultSampler({ OTEL_TRACES_SAMPLER: 'always_on' })).toBeUndefined();
  });

  it('is off without an OTLP endpoint: nothing sent upstream, an incoming traceparent not passed on', async () => {
    const traceparents: unknown[] = [];
    // Generation requests only (the gateway's background health probe sends no trace context either way).
    const sim = await gateways.simulator({
      onRequest: (r) => r.method === 'POST' && traceparents.push(r.headers.traceparent),
    });
    const { url, key } = await gateways.setup({}, sim);
    const reply = await post(url, '/v1/chat/completions', {
      key,
      headers: { traceparent: `00-${'1'.repeat(32)}-${'2'.repeat(16)}-01` },
    });
    expect(reply.status).toBe(200);
    expect(traceparents).toEqual([undefined]);
  });
});

// The client's fetch shared with SDKs: the official openai client and LangChain's ChatOpenAI.
import { ChatOpenAI } from '@langchain/openai';
import OpenAI from 'openai';
import { describe, expect, it } from 'vitest';
import { messages, trackResources } from '../helpers/fixtures.js';

const use = trackResources();

describe('fetch', () => {
  it('serves the openai client, streaming and not, over the pool', async () => {
    const sim = await use.simulator({ model: 'm' });
    const client = use.client({ baseUrl: sim.url });
    const openai = new OpenAI({
      baseURL: `${sim.url}/v1`,
      apiKey: 'unused',
      fetch: client.fetch,
      maxRetries: 0,
    });
    const reply = await openai.chat.completions.create({
      model: 'm',
      messages: [{ role: 'user', content: 'hi' }],
      max_tokens: 3,
    });
    expect(reply.choices[0]?.finish_reason).toBe('length');
    const stream = await openai.chat.completions.create({
      model: 'm',
      messages: [{ role: 'user', content: 'hi' }],
      max_tokens: 3,
      stream: true,
      stream_options: { include_usage: true },
    });
    let text = '';
    let usage: unknown;
    for await (const chunk of stream) {
      text += chunk.choices[0]?.delta.content ?? '';
      usage = chunk.usage ?? usage;
    }
    expect(text.trim().split(' ')).toHaveLength(3);
    expect(usage).toMatchObject({ completion_tokens: 3 });
    const embedded = await openai.embeddings.create({ model: 'm', input: 'x' });
    expect(embedded.data[0]?.embedding).toHaveLength(64);
    // Every call went through the client's pool.
    expect(client.stats().connections.created).toBeGreaterThanOrEqual(1);
    expect(client.stats().connections.created + client.stats().connections.reused).toBe(3);
  });

  it('routes SDK calls across replicas', async () => {
    const a = await use.simulator({ ttftMs: 20 });
    const b = await use.simulator({ ttftMs: 20 });
    const client = use.client({ baseUrls: [a.url, b.url] });
    const openai = new OpenAI({ baseURL: `${a.url}/v1`, apiKey: 'unused', fetch: client.fetch });
    await Promise.all(
      Array.from({ length: 6 }, () =>
        openai.chat.completions.create({ model: a.model, messages, max_tokens: 1 } as never),
      ),
    );
    expect(a.stats().completed).toBe(3);
    expect(b.stats().completed).toBe(3);
  });

  it('serves LangChain’s ChatOpenAI', async () => {
    const sim = await use.simulator({ model: 'm' });
    const client = use.client({ baseUrl: sim.url });
    const model = new ChatOpenAI({
      model: 'm',
      apiKey: 'unused',
      maxTokens: 4,
      maxRetries: 0,
      configuration: { baseURL: `${sim.url}/v1`, fetch: client.fetch },
    });
    const message = await model.invoke('hi');
    expect(typeof message.content).toBe('string');
    expect(String(message.content).trim().split(' ')).toHaveLength(4);
    let streamed = '';
    for await (const chunk of await model.stream('hi')) streamed += chunk.content;
    expect(streamed.trim().split(' ')).toHaveLength(4);
    expect(sim.stats().completed).toBe(2);
  });
});

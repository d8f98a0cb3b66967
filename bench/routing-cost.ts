// Bench: the cost of cache-aware prefix routing per request — hashing the prompt into blocks, matching them against
// four replicas and recording the choice — and what sharing placements between processes sends (routingSync), on a
// chat workload (200 conversations × 6 turns, 4,800-character system prompts, 640-character replies).
// Run: npx tsx bench/routing-cost.ts [--quick]
import type { ResolvedClientOptions } from '../src/client/options.js';
import { resolveClientOptions } from '../src/client/options.js';
import { Router, type RoutingUpdate, type Upstream } from '../src/client/replica-pool.js';
import { routingBlocks } from '../src/client/routing-policy.js';
import { median } from './lib/load.js';

const quick = process.argv.includes('--quick');
const rounds = quick ? 1 : 5;
const SESSIONS = quick ? 40 : 200;
const TURNS = 6;

function words(seed: number, chars: number): string {
  let text = '';
  let word = (seed * 2654435761) >>> 0;
  while (text.length < chars) {
    word = (Math.imul(word, 1103515245) + 12345) >>> 0;
    text += `w${word.toString(36)} `;
  }
  return text.slice(0, chars);
}

/** Every request of the workload, in the order a chat would send them (turn by turn across sessions). */
function workload(): unknown[] {
  const bodies: unknown[] = [];
  const histories = Array.from({ length: SESSIONS }, (_, s) => [
    { role: 'system', content: words(s + 1, 4800) },
  ]);
  for (let turn = 0; turn < TURNS; turn++) {
    for (let s = 0; s < SESSIONS; s++) {
      const messages = histories[s]!;
      messages.push({ role: 'user', content: `Turn ${turn} of session ${s}: what next?` });
      bodies.push({ model: 'm', messages: [...messages], max_tokens: 160 });
      messages.push({ role: 'assistant', content: words(s * 31 + turn, 640) });
    }
  }
  return bodies;
}

const bodies = workload();
let published = 0;

const options: ResolvedClientOptions = resolveClientOptions({
  baseUrls: ['http://10.0.0.1:8000', 'http://10.0.0.2:8000', 'http://10.0.0.3:8000', 'http://10.0.0.4:8000'],
  modelDiscovery: false,
  routingSync: {
    publish(update: RoutingUpdate) {
      published += JSON.stringify(update).length;
    },
    subscribe: () => () => {},
  },
});

/** µs per request for `fn` over the whole workload, median of rounds. */
function timePerRequest(fn: (body: unknown) => void): number {
  const samples: number[] = [];
  for (let r = 0; r < rounds + 1; r++) {
    const started = performance.now();
    for (const body of bodies) fn(body);
    const us = ((performance.now() - started) * 1000) / bodies.length;
    if (r > 0) samples.push(us); // the first round warms up
  }
  return median(samples);
}

const hashUs = timePerRequest((body) => routingBlocks(body, 16_384));
const decisionUs = timePerRequest(
  (() => {
    // A fresh router per round would measure its construction; one router sees the workload again, as a long-running
    // gateway sees returning conversations.
    const router = new Router(options) as unknown as {
      pickByCache(blocks: number[]): Upstream;
      remember(upstream: Upstream, blocks: number[]): void;
    };
    return (body: unknown) => {
      const blocks = routingBlocks(body, 16_384);
      router.remember(router.pickByCache(blocks), blocks);
    };
  })(),
);
// What one pass of the workload publishes (the updates go out once per event-loop turn: here, one per request).
published = 0;

{
  const router = new Router(options) as unknown as {
    pickByCache(blocks: number[]): Upstream;
    remember(upstream: Upstream, blocks: number[]): void;
  };
  for (const body of bodies) {
    const blocks = routingBlocks(body, 16_384);
    router.remember(router.pickByCache(blocks), blocks);
  }
  await new Promise((resolve) => setImmediate(resolve));
}
const figures = {
  requests: bodies.length,
  meanPromptChars: Math.round(
    bodies.reduce((s: number, b) => s + JSON.stringify(b).length, 0) / bodies.length,
  ),
  hashMicros: Number(hashUs.toFixed(2)),
  decisionMicros: Number(decisionUs.toFixed(2)),
  syncBytesPerRequest: Math.round(published / bodies.length),
};
console.table(figures);
console.log(JSON.stringify({ bench: 'routing-cost', ...figures }));
process.exit(0);

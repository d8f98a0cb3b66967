// Scenario 5, prefix routing: four simulated replicas with automatic prefix caching, whose caches together hold the
// working set but each alone about a quarter of it. A multi-turn chat workload — many sessions, each with its own long
// system prompt, history growing turn by turn, sessions arriving over time — through the gateway (2 workers) with
// ROUTING=prefix, least-outstanding and round-robin; prefix routing again with 1 worker (do workers agree?), and with
// one replica removed half-way through every session (how many sessions move?). Replies are 160 tokens generated at
// 0 ms a token, so a request's latency is its time to first token — the replica's prefill of what its cache does not
// hold — while each turn still grows the history as a chat does.
// Run: npx tsx bench/scenarios/routing.ts [--quick]
import { resolve } from 'node:path';
import { Pool } from 'undici';
import { PrefixCache } from '../../src/testing/prefix-cache.js';
import { type ChildServer, startChild } from '../lib/child.js';
import { startGateway } from '../lib/gateway.js';
import { summarize } from '../lib/load.js';

const quick = process.argv.includes('--quick');
const SESSIONS = quick ? 24 : 200;
const TURNS = quick ? 4 : 6;
const ARRIVAL_GAP_MS = quick ? 20 : 40;
const THINK_MS = quick ? 50 : 300;
const REPLY_TOKENS = 160;
const USER_TOKENS = 15; // "Turn N of session M: what should we do about item N?"
const SYSTEM_CHARS = 4800; // ~1,200 tokens, unique per session
const REPLICAS = 4;
const PREFILL_MS_PER_TOKEN = 0.1; // ~10k prompt tokens/s, an 8B model on one GPU

/** A session's system prompt: its own words from the first character on (no prefix shared across sessions). */
function systemPrompt(session: number): string {
  let text = `Session ${session}. You are the assistant of team ${session * 7919}. `;
  let word = session * 2654435761;
  while (text.length < SYSTEM_CHARS) {
    word = (Math.imul(word, 1103515245) + 12345) >>> 0;
    text += `rule-${word.toString(36)} `;
  }
  return text.slice(0, SYSTEM_CHARS);
}

interface Turn {
  session: number;
  turn: number;
  /** The prompt as the simulator sees it (`role\ncontent\n` per message), for the ideal hit rate. */
  promptText: string;
  startedAt: number;
  ms: number;
  promptTokens: number;
  cachedTokens: number;
  replica: string;
  status: number;
}

/**
 * Runs every session through `url`. With `midway`, every session pauses after half its turns until all have, then
 * `midway` runs (a replica is removed), then they go on: every session spans the change.
 */
async function runWorkload(url: string, key: string, midway?: () => Promise<void>): Promise<Turn[]> {
  const pool = new Pool(url, { connections: SESSIONS, pipelining: 1 });
  const turns: Turn[] = [];
  let atBarrier = 0;
  let release: () => void = () => {};
  const barrier = new Promise<void>((done) => {
    release = done;
  });
  const session = async (id: number) => {
    const messages: { role: string; content: string }[] = [{ role: 'system', content: systemPrompt(id) }];
    for (let turn = 0; turn < TURNS; turn++) {
      if (midway && turn === TURNS / 2) {
        if (++atBarrier === SESSIONS) await midway().then(release);
        await barrier;
      }
      messages.push({
        role: 'user',
        content: `Turn ${turn} of session ${id}: what should we do about item ${turn}?`,
      });
      const started = performance.now();
      const promptText = messages.map((m) => `${m.role}\n${m.content}\n`).join('');
      const response = await pool.request({
        path: '/v1/chat/completions',
        method: 'POST',
        headers: { authorization: `Bearer ${key}`, 'content-type': 'application/json' },
        body: JSON.stringify({ messages, max_tokens: REPLY_TOKENS }),
      });
      const text = await response.body.text();
      const turnRecord: Turn = {
        session: id,
        turn,
        promptText,
        startedAt: started,
        ms: performance.now() - started,
        promptTokens: 0,
        cachedTokens: 0,
        replica: '',
        status: response.statusCode,
      };
      turns.push(turnRecord);
      // A failed turn is counted and the session goes on (it must still reach the barrier of the removal run).
      if (response.statusCode === 200) {
        const reply = JSON.parse(text) as {
          id: string;
          choices: { message: { content: string } }[];
          usage: { prompt_tokens: number; prompt_tokens_details: { cached_tokens: number } | null };
        };
        turnRecord.promptTokens = reply.usage.prompt_tokens;
        turnRecord.cachedTokens = reply.usage.prompt_tokens_details?.cached_tokens ?? 0;
        // Each simulator instance puts its own random prefix in the ids it makes.
        turnRecord.replica = reply.id.slice('chatcmpl-'.length, 'chatcmpl-'.length + 12);
        messages.push({ role: 'assistant', content: reply.choices[0]!.message.content });
      }
      await new Promise((done) => setTimeout(done, THINK_MS));
    }
  };
  const running: Promise<void>[] = [];
  for (let id = 0; id < SESSIONS; id++) {
    running.push(session(id));
    await new Promise((done) => setTimeout(done, ARRIVAL_GAP_MS));
  }
  await Promise.all(running);
  await pool.close();
  return turns;
}

/** The workload's ideal hit rate: its prompts, in the order sent, through one cache that never evicts. */
function idealHitRate(turns: Turn[]): number {
  const cache = new PrefixCache(Number.MAX_SAFE_INTEGER);
  let queries = 0;
  let hits = 0;
  for (const t of [...turns].sort((a, b) => a.startedAt - b.startedAt)) {
    if (t.status !== 200) continue;
    queries += t.promptTokens;
    hits += cache.admit(t.promptText, t.promptTokens);
  }
  return hits / queries;
}

// Caches: a quarter of the working set each (+10%), so only affinity keeps a session's prefix warm.
const workingSetTokens = SESSIONS * (SYSTEM_CHARS / 4 + TURNS * (USER_TOKENS + REPLY_TOKENS + 8));
const upstreamOptions = {
  ttftMs: 5,
  itlMs: 0,
  maxNumSeqs: 64,
  prefixCacheTokens: Math.round((workingSetTokens / REPLICAS) * 1.1),
  prefillMsPerToken: PREFILL_MS_PER_TOKEN,
  promptTokensDetails: true,
  keepAliveTimeoutMs: 60_000,
};

interface Result {
  policy: string;
  idealHitRate: number;
  workers: number;
  requests: number;
  errors: number;
  ttftP50Ms: number;
  ttftP99Ms: number;
  hitRate: number;
  maxOverMeanRequests: number;
  requestsPerReplica: number[];
  sessionsMoved?: number;
}

async function measure(policy: string, workers: number, removeOne = false): Promise<Result> {
  const sims: ChildServer[] = [];
  for (let i = 0; i < REPLICAS; i++) {
    sims.push(
      await startChild(resolve(import.meta.dirname, '../servers/simulator.ts'), [
        JSON.stringify(upstreamOptions),
      ]),
    );
  }
  const gateway = await startGateway(sims.map((s) => s.url).join(','), {
    WORKERS: String(workers),
    ROUTING: policy,
    RATE_LIMIT_POINTS: '2000000',
  });
  let removedAt = Number.POSITIVE_INFINITY;
  let turns: Turn[];
  try {
    turns = await runWorkload(
      gateway.url,
      gateway.key,
      removeOne
        ? async () => {
            removedAt = performance.now();
            await sims[REPLICAS - 1]!.stop();
          }
        : undefined,
    );
  } finally {
    await gateway.stop();
    await Promise.all(sims.slice(0, removeOne ? REPLICAS - 1 : REPLICAS).map((s) => s.stop()));
  }
  const ok = turns.filter((t) => t.status === 200);
  const latency = summarize(ok.map((t) => t.ms));
  const perReplica = new Map<string, number>();
  for (const t of ok) perReplica.set(t.replica, (perReplica.get(t.replica) ?? 0) + 1);
  const counts = [...perReplica.values()];
  const mean = counts.reduce((a, b) => a + b, 0) / counts.length;
  const result: Result = {
    policy,
    idealHitRate: Number(idealHitRate(turns).toFixed(3)),
    workers,
    requests: turns.length,
    errors: turns.length - ok.length,
    ttftP50Ms: Number(latency.p50.toFixed(1)),
    ttftP99Ms: Number(latency.p99.toFixed(1)),
    hitRate: Number(
      (ok.reduce((s, t) => s + t.cachedTokens, 0) / ok.reduce((s, t) => s + t.promptTokens, 0)).toFixed(3),
    ),
    maxOverMeanRequests: Number((Math.max(...counts) / mean).toFixed(2)),
    requestsPerReplica: counts,
  };
  if (removeOne) {
    // Of the sessions that sent turns both before and after the removal, the share that changed replica (those on
    // the removed replica must; ideally no other does).
    let moved = 0;
    let spanning = 0;
    const bySession = new Map<number, Turn[]>();
    for (const t of ok) bySession.set(t.session, [...(bySession.get(t.session) ?? []), t]);
    for (const list of bySession.values()) {
      const before = list.filter((t) => t.startedAt < removedAt);
      const after = list.filter((t) => t.startedAt > removedAt);
      if (before.length === 0 || after.length === 0) continue;
      spanning++;
      if (before.at(-1)!.replica !== after[0]!.replica) moved++;
    }
    result.sessionsMoved = Number((moved / Math.max(1, spanning)).toFixed(3));
  }
  return result;
}

const results: Result[] = [];
for (const policy of ['prefix', 'least-outstanding', 'round-robin']) results.push(await measure(policy, 2));
results.push(await measure('prefix', 1));
const removal = await measure('prefix', 2, true);
results.push({ ...removal, policy: 'prefix, one replica removed midway' });

const at = (policy: string, workers = 2) =>
  results.find((r) => r.policy === policy && r.workers === workers)!;
const prefix = at('prefix');
const leastOutstanding = at('least-outstanding');
const ideal = prefix.idealHitRate;
const ratios = {
  idealHitRate: ideal,
  ttftP50VsLeastOutstanding: Number((prefix.ttftP50Ms / leastOutstanding.ttftP50Ms).toFixed(2)),
  ttftP99VsLeastOutstanding: Number((prefix.ttftP99Ms / leastOutstanding.ttftP99Ms).toFixed(2)),
  hitRatePointsBelowIdeal: Number(((ideal - prefix.hitRate) * 100).toFixed(1)),
  maxOverMeanRequests: prefix.maxOverMeanRequests,
  hitRatePointsTwoWorkersVsOne: Number(((prefix.hitRate - at('prefix', 1).hitRate) * 100).toFixed(1)),
  sessionsMovedByRemoval: removal.sessionsMoved,
};
console.table(
  results.map(({ requestsPerReplica, ...rest }) => ({ ...rest, perReplica: requestsPerReplica.join('/') })),
);
console.table(ratios);
console.log(
  JSON.stringify({ bench: 'routing', sessions: SESSIONS, turns: TURNS, workingSetTokens, results, ratios }),
);
if (results.some((r) => r.errors > 0 && !r.policy.includes('removed'))) process.exitCode = 1;

// Scenario 5, prefix routing on every workload. Four simulated replicas with automatic prefix caching (prefill 0.1 ms
// per uncached prompt token), each cache 1.0–1.5× its share of the working set. Multi-turn chats whose 160-token
// replies grow the history (generated at 0 ms a token, so a request's latency is its time to first token), through
// the gateway (2 workers), with ROUTING=prefix and least-outstanding, on several workloads:
// - 16, 32, 64 and 200 sessions, each with its own ~1,200-token system prompt;
// - RAG: one shared 600-word system prompt, then each session's own 600-word document;
// - one hot prompt sent by everyone (every session the same);
// - a mix of the three.
// Each workload runs on several replica sets (new ports, cache sizes from 1.0× to 1.5×); the worst ratio over them is
// reported. Then prefix routing with 1 worker, 4 workers, and 2 gateway processes sharing placements through Redis
// (do they agree?), and with one replica removed half-way through every session (how many sessions move?).
// Run: npx tsx bench/scenarios/routing.ts [--quick]
import { resolve } from 'node:path';
import { Pool } from 'undici';
import { PrefixCache } from '../../src/testing/prefix-cache.js';
import { type ChildServer, startChild } from '../lib/child.js';
import { type RunningGateway, startGateway } from '../lib/gateway.js';
import { summarize } from '../lib/load.js';

const quick = process.argv.includes('--quick');
const REPLICA_SETS = quick ? 1 : 10;
const ARRIVAL_GAP_MS = quick ? 20 : 40;
const THINK_MS = quick ? 50 : 300;
const REPLY_TOKENS = 160;
const REPLICAS = 4;
const PREFILL_MS_PER_TOKEN = 0.1; // ~10k prompt tokens/s, an 8B model on one GPU

/** Words from a seed: text no other seed shares from its first character. */
function words(seed: number, chars: number, lead: string): string {
  let text = `${lead} `;
  let word = (seed * 2654435761) >>> 0;
  while (text.length < chars) {
    word = (Math.imul(word, 1103515245) + 12345) >>> 0;
    text += `rule-${word.toString(36)} `;
  }
  return text.slice(0, chars);
}

/** A workload: its sessions' system prompts and questions (the replies come from the simulator). */
interface Workload {
  name: string;
  sessions: number;
  turns: number;
  system(session: number): string;
  question(session: number, turn: number): string;
}

const distinct = (sessions: number): Workload => ({
  name: `${sessions} sessions`,
  sessions,
  turns: sessions > 100 ? 6 : 5,
  system: (s) => words(s + 1, 4800, `Session ${s}. You are the assistant of team ${s * 7919}.`),
  question: (s, t) => `Turn ${t} of session ${s}: what should we do about item ${t}?`,
});
const SHARED_SYSTEM = words(424242, 3600, 'You answer from the document below, citing its sections.');
const rag: Workload = {
  name: 'shared system prompt + document',
  sessions: 40,
  turns: 4,
  system: (s) => `${SHARED_SYSTEM}\n${words(s + 1, 3600, `Document ${s}.`)}`,
  question: (s, t) => `Turn ${t} of session ${s}: what does section ${t} say?`,
};
const HOT_SYSTEM = words(777, 4800, 'You are the help desk of the city library.');
const hot: Workload = {
  name: 'one hot prompt',
  sessions: 40,
  turns: 3,
  system: () => HOT_SYSTEM,
  question: (_s, t) => `What are the opening hours on day ${t}?`,
};
const mix: Workload = {
  name: 'mix',
  sessions: 48,
  turns: 4,
  system: (s) => (s % 4 === 0 ? hot.system(s) : s % 4 === 1 ? rag.system(s) : distinct(48).system(s)),
  question: (s, t) => (s % 4 === 0 ? hot.question(s, t) : distinct(48).question(s, t)),
};
// `--workloads=hot,mix` (names' first word) runs a subset, and skips the agreement and removal runs.
const only = process.argv
  .find((a) => a.startsWith('--workloads='))
  ?.slice('--workloads='.length)
  .split(',');
const WORKLOADS: Workload[] =
  // --quick (CI) proves the scenario runs: one workload.
  (quick ? [distinct(16)] : [distinct(16), distinct(32), distinct(64), distinct(200), rag, hot, mix]).filter(
    (w) => only === undefined || only.some((name) => w.name.toLowerCase().includes(name)),
  );
const SETS = Number(
  process.argv.find((a) => a.startsWith('--sets='))?.slice('--sets='.length) ?? REPLICA_SETS,
);

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
 * Runs every session of the workload, each turn through the next of `gateways` in turn (with several, a session's
 * turns reach different processes). With `midway`, every session pauses after half its turns until all have, then
 * `midway` runs (a replica is removed), then they go on: every session spans the change.
 */
async function runWorkload(
  workload: Workload,
  gateways: RunningGateway[],
  midway?: () => Promise<void>,
): Promise<Turn[]> {
  const pools = gateways.map((g) => new Pool(g.url, { connections: workload.sessions, pipelining: 1 }));
  const turns: Turn[] = [];
  let atBarrier = 0;
  let release: () => void = () => {};
  const barrier = new Promise<void>((done) => {
    release = done;
  });
  let sent = 0;
  const session = async (id: number) => {
    const messages: { role: string; content: string }[] = [{ role: 'system', content: workload.system(id) }];
    for (let turn = 0; turn < workload.turns; turn++) {
      if (midway && turn === Math.floor(workload.turns / 2)) {
        if (++atBarrier === workload.sessions) await midway().then(release);
        await barrier;
      }
      messages.push({ role: 'user', content: workload.question(id, turn) });
      const started = performance.now();
      const promptText = messages.map((m) => `${m.role}\n${m.content}\n`).join('');
      const which = sent++ % gateways.length;
      const response = await pools[which]!.request({
        path: '/v1/chat/completions',
        method: 'POST',
        headers: { authorization: `Bearer ${gateways[which]!.key}`, 'content-type': 'application/json' },
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
  for (let id = 0; id < workload.sessions; id++) {
    running.push(session(id));
    await new Promise((done) => setTimeout(done, ARRIVAL_GAP_MS));
  }
  await Promise.all(running);
  await Promise.all(pools.map((p) => p.close()));
  return turns;
}

/**
 * The workload's ideal hit rate for these cache sizes: its prompts, in the order sent, through one cache as large as
 * all the replicas' together (no router can do better than pooling them).
 */
function idealHitRate(turns: Turn[], cacheTokens: number): number {
  const cache = new PrefixCache(cacheTokens);
  let queries = 0;
  let hits = 0;
  for (const t of [...turns].sort((a, b) => a.startedAt - b.startedAt)) {
    if (t.status !== 200) continue;
    queries += t.promptTokens;
    hits += cache.admit(t.promptText, t.promptTokens);
  }
  return hits / queries;
}

/** A workload's distinct prompt tokens at the end (system prompts, questions and replies), ~4 characters a token. */
function workingSetTokens(workload: Workload): number {
  const systems = new Set(Array.from({ length: workload.sessions }, (_, s) => workload.system(s)));
  let chars = 0;
  for (const text of systems) chars += text.length;
  const sessionsDiffering = workload === hot ? 1 : workload.sessions;
  return Math.round(chars / 4 + sessionsDiffering * workload.turns * (15 + REPLY_TOKENS + 8));
}

/** One conversation's prompt at its last turn, in tokens. */
function conversationTokens(workload: Workload): number {
  return Math.round(workload.system(0).length / 4 + workload.turns * (15 + REPLY_TOKENS + 8));
}

interface Result {
  workload: string;
  policy: string;
  set: number;
  cacheFactor: number;
  workers: number;
  gateways: number;
  idealHitRate: number;
  requests: number;
  errors: number;
  ttftP50Ms: number;
  ttftP99Ms: number;
  hitRate: number;
  maxOverMeanRequests: number;
  requestsPerReplica: number[];
  sessionsMoved?: number;
}

async function measure(
  workload: Workload,
  policy: string,
  set: number,
  cacheFactor: number,
  options: { workers?: number; gateways?: number; removeOne?: boolean } = {},
): Promise<Result> {
  const { workers = 2, gateways: gatewayCount = 1, removeOne = false } = options;
  // A replica's share of the working set — but never less than one conversation (one hot prompt is everybody's
  // working set: a quarter of it would hold nothing).
  const share = Math.max(workingSetTokens(workload) / REPLICAS, conversationTokens(workload));
  const cacheTokens = Math.round(share * cacheFactor);
  const upstreamOptions = {
    ttftMs: 5,
    itlMs: 0,
    maxNumSeqs: 64,
    prefixCacheTokens: cacheTokens,
    prefillMsPerToken: PREFILL_MS_PER_TOKEN,
    promptTokensDetails: true,
    keepAliveTimeoutMs: 60_000,
  };
  const sims: ChildServer[] = [];
  for (let i = 0; i < REPLICAS; i++) {
    sims.push(
      await startChild(resolve(import.meta.dirname, '../servers/simulator.ts'), [
        JSON.stringify(upstreamOptions),
      ]),
    );
  }
  const gateways: RunningGateway[] = [];
  for (let g = 0; g < gatewayCount; g++) {
    gateways.push(
      await startGateway(sims.map((s) => s.url).join(','), {
        WORKERS: String(workers),
        ROUTING: policy,
        RATE_LIMIT_POINTS: '2000000',
        // The replicas' cache sizes (vllm:cache_config_info) are read with their load signals.
        LOAD_SIGNALS_INTERVAL_MS: '1000',
        ...(gatewayCount > 1
          ? {
              REDIS_URL: process.env.REDIS_URL ?? 'redis://127.0.0.1:6379',
              GATEWAY_INSTANCES: String(gatewayCount),
            }
          : {}),
      }),
    );
  }
  // Let the first scrape land.
  await new Promise((r) => setTimeout(r, 300));
  let removedAt = Number.POSITIVE_INFINITY;
  let turns: Turn[];
  try {
    turns = await runWorkload(
      workload,
      gateways,
      removeOne
        ? async () => {
            removedAt = performance.now();
            await sims[REPLICAS - 1]!.stop();
          }
        : undefined,
    );
  } finally {
    await Promise.all(gateways.map((g) => g.stop()));
    await Promise.all(sims.slice(0, removeOne ? REPLICAS - 1 : REPLICAS).map((s) => s.stop()));
  }
  const ok = turns.filter((t) => t.status === 200);
  const latency = summarize(ok.map((t) => t.ms));
  const perReplica = new Map<string, number>();
  for (const t of ok) perReplica.set(t.replica, (perReplica.get(t.replica) ?? 0) + 1);
  const counts = [...perReplica.values()];
  while (counts.length < (removeOne ? REPLICAS - 1 : REPLICAS)) counts.push(0);
  const mean = counts.reduce((a, b) => a + b, 0) / counts.length;
  const result: Result = {
    workload: workload.name,
    policy,
    set,
    cacheFactor,
    workers,
    gateways: gatewayCount,
    idealHitRate: Number(idealHitRate(turns, cacheTokens * REPLICAS).toFixed(3)),
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

const round = (n: number, digits = 2) => Number(n.toFixed(digits));
const results: Result[] = [];
/** Per workload, the worst over its replica sets of each figure (prefix against least-outstanding on the same set). */
const worst: Record<string, Record<string, number>> = {};
for (const workload of WORKLOADS) {
  const row = { p50: 0, p99: 0, maxOverMean: 0, pointsBelowIdeal: -100, medianP50: 0 };
  const p50s: number[] = [];
  for (let set = 0; set < SETS; set++) {
    // Cache sizes from 1.0× to 1.5× a replica's share, across the sets.
    const cacheFactor = round(1 + (0.5 * set) / Math.max(1, SETS - 1));
    const prefix = await measure(workload, 'prefix', set, cacheFactor);
    const lo = await measure(workload, 'least-outstanding', set, cacheFactor);
    results.push(prefix, lo);
    const p50 = prefix.ttftP50Ms / lo.ttftP50Ms;
    p50s.push(p50);
    row.p50 = Math.max(row.p50, p50);
    row.p99 = Math.max(row.p99, prefix.ttftP99Ms / lo.ttftP99Ms);
    row.maxOverMean = Math.max(row.maxOverMean, prefix.maxOverMeanRequests);
    row.pointsBelowIdeal = Math.max(row.pointsBelowIdeal, (prefix.idealHitRate - prefix.hitRate) * 100);
    console.error(
      `${workload.name}, set ${set} (cache ${cacheFactor}×): p50 ${round(p50)}× p99 ${round(prefix.ttftP99Ms / lo.ttftP99Ms)}× hit ${prefix.hitRate} (ideal ${prefix.idealHitRate}, least-outstanding ${lo.hitRate}) max/mean ${prefix.maxOverMeanRequests}`,
    );
  }
  p50s.sort((a, b) => a - b);
  row.medianP50 = p50s[Math.floor(p50s.length / 2)]!;
  worst[workload.name] = {
    worstP50VsLeastOutstanding: round(row.p50),
    medianP50VsLeastOutstanding: round(row.medianP50),
    worstP99VsLeastOutstanding: round(row.p99),
    worstMaxOverMean: round(row.maxOverMean),
    worstPointsBelowIdeal: round(row.pointsBelowIdeal, 1),
  };
}

// Do processes agree? The same workloads through 1 worker, 4 workers, and 2 gateway processes (Redis).
const agreement: Record<string, Record<string, number>> = {};
for (const workload of only !== undefined ? [] : quick ? [distinct(16)] : [distinct(32), rag]) {
  const one = await measure(workload, 'prefix', 0, 1.1, { workers: 1 });
  const four = await measure(workload, 'prefix', 0, 1.1, { workers: 4 });
  const two = await measure(workload, 'prefix', 0, 1.1, { workers: 2, gateways: 2 });
  results.push(one, four, two);
  agreement[workload.name] = {
    hitRateOneWorker: one.hitRate,
    pointsFourWorkersVsOne: round((four.hitRate - one.hitRate) * 100, 1),
    pointsTwoGatewaysVsOne: round((two.hitRate - one.hitRate) * 100, 1),
  };
}
const removal =
  only === undefined
    ? await measure(distinct(quick ? 16 : 200), 'prefix', 0, 1.1, { removeOne: true })
    : undefined;
if (removal !== undefined) results.push({ ...removal, policy: 'prefix, one replica removed midway' });

const twoHundred = worst['200 sessions'] ?? worst[WORKLOADS[0]!.name]!;
const ratios = {
  worst,
  agreement,
  // The headline figures the summary table judges: the worst over every workload and replica set.
  worstP50OnReuse: Math.max(...Object.values(worst).map((w) => w.worstP50VsLeastOutstanding!)),
  worstP99OnReuse: Math.max(...Object.values(worst).map((w) => w.worstP99VsLeastOutstanding!)),
  worstMaxOverMean: Math.max(...Object.values(worst).map((w) => w.worstMaxOverMean!)),
  worstPointsBelowIdeal: Math.max(...Object.values(worst).map((w) => w.worstPointsBelowIdeal!)),
  worstPointsProcessesVsOne: Math.max(
    0,
    ...Object.values(agreement).flatMap((a) => [
      Math.abs(a.pointsFourWorkersVsOne!),
      Math.abs(a.pointsTwoGatewaysVsOne!),
    ]),
  ),
  twoHundredMedianP50: twoHundred.medianP50VsLeastOutstanding,
  sessionsMovedByRemoval: removal?.sessionsMoved,
};
console.table(Object.entries(worst).map(([workload, w]) => ({ workload, ...w })));
console.table(Object.entries(agreement).map(([workload, a]) => ({ workload, ...a })));
console.table({ ...ratios, worst: undefined, agreement: undefined });
console.log(JSON.stringify({ bench: 'routing', replicaSets: SETS, results, ratios }));
if (results.some((r) => r.errors > 0 && !r.policy.includes('removed'))) process.exitCode = 1;

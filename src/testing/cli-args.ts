// Command-line flags of vllm-kit-sim, mapped to startVllmSimulator options.
import { parseArgs } from 'node:util';
import type { VllmSimulatorOptions } from './options.js';

const NUMERIC = {
  port: 'port',
  'max-num-seqs': 'maxNumSeqs',
  'max-queue': 'maxQueue',
  'ttft-ms': 'ttftMs',
  'itl-ms': 'itlMs',
  jitter: 'jitter',
  'batch-slowdown': 'batchSlowdown',
  'max-model-len': 'maxModelLen',
  seed: 'seed',
  'keep-alive-timeout-ms': 'keepAliveTimeoutMs',
  'embedding-dimensions': 'embeddingDimensions',
  'prefill-ms-per-token': 'prefillMsPerToken',
  'prefix-cache-tokens': 'prefixCacheTokens',
  'lora-load-ms': 'loraLoadMs',
  'max-loras': 'maxLoras',
  'lora-swap-ms': 'loraSwapMs',
} as const;
const TEXT = {
  host: 'host',
  model: 'model',
  'api-key': 'apiKey',
  'error-shape': 'errorShape',
  'server-version': 'version',
  task: 'task',
} as const;

export const HELP = `Usage: vllm-kit-sim [options]

A fast, faithful simulator of vLLM's OpenAI-compatible server.

  --port N                   TCP port (default 8000; 0 picks a free one)
  --host ADDR                interface (default 127.0.0.1)
  --model NAME               served model name
  --api-key KEY              require "Authorization: Bearer KEY" on /v1* routes
  --max-num-seqs N           running slots (default 256)
  --max-queue N              waiting-queue cap, 503 beyond (default unbounded)
  --ttft-ms MS               time to first token once running (default 0)
  --itl-ms MS                inter-token latency (default 0)
  --jitter F                 random spread of delays, 0..1 (default 0)
  --batch-slowdown F         ITL x (1 + F x running/maxNumSeqs) (default 0)
  --output-tokens N|JSON     output length without max_tokens: N, or {"mean":200,"max":800}
  --max-model-len N          context length (default 8192)
  --seed N                   seed of the generated text (default 0)
  --keep-alive-timeout-ms MS idle keep-alive timeout (default 5000)
  --error-shape nested|legacy
  --embedding-dimensions N   (default 64)
  --server-version V         reported by /version
  --prefill-ms-per-token MS  prefill time per prompt token not in the prefix cache (default 0)
  --prefix-cache-tokens N    prefix cache size in tokens, 0 = off (default 1000000)
  --prompt-tokens-details    report cached prompt tokens in usage (vLLM's --enable-prompt-tokens-details)
  --lora-adapters A,B        LoRA adapters served on top of --model (listed by /v1/models with their parent)
  --runtime-lora-updating    accept /v1/load_lora_adapter and /v1/unload_lora_adapter
                             (vLLM's VLLM_ALLOW_RUNTIME_LORA_UPDATING=True)
  --lora-load-ms MS          time a runtime adapter load takes (default 0)
  --max-loras N              adapters resident in the batch at once (default 1)
  --lora-swap-ms MS          first-token delay when an adapter is swapped in (default 0)
  --task all|generate|embed  routes served: embed = embeddings only, generate = chat and completions (default all)
  --faults JSON              faults active from the start, e.g. '{"status":{"status":503,"times":2}}'
  --help
`;

function parseNumber(flag: string, text: string): number {
  const value = text === 'Infinity' ? Number.POSITIVE_INFINITY : Number(text);
  if (text.trim() === '' || Number.isNaN(value)) throw new Error(`--${flag} expects a number, got "${text}"`);
  return value;
}

function parseJson(flag: string, text: string): unknown {
  try {
    return JSON.parse(text);
  } catch {
    throw new Error(`--${flag} expects JSON, got "${text}"`);
  }
}

/** Turns command-line arguments into simulator options (exported for tests). */
export function parseSimulatorArgs(argv: string[]): VllmSimulatorOptions | 'help' {
  const flags: Record<string, { type: 'string' | 'boolean' }> = { help: { type: 'boolean' } };
  for (const flag of [
    ...Object.keys(NUMERIC),
    ...Object.keys(TEXT),
    'output-tokens',
    'faults',
    'lora-adapters',
  ]) {
    flags[flag] = { type: 'string' };
  }
  flags['prompt-tokens-details'] = { type: 'boolean' };
  flags['runtime-lora-updating'] = { type: 'boolean' };
  const { values } = parseArgs({ args: argv, options: flags, strict: true, allowPositionals: false });
  if (values.help === true) return 'help';
  const options: Record<string, unknown> = { port: 8000 };
  for (const [flag, key] of Object.entries(NUMERIC)) {
    const text = values[flag];
    if (typeof text === 'string') options[key] = parseNumber(flag, text);
  }
  for (const [flag, key] of Object.entries(TEXT)) {
    const text = values[flag];
    if (typeof text === 'string') options[key] = text;
  }
  const outputTokens = values['output-tokens'];
  if (typeof outputTokens === 'string') {
    options.outputTokens = /^\s*\{/.test(outputTokens)
      ? parseJson('output-tokens', outputTokens)
      : parseNumber('output-tokens', outputTokens);
  }
  const faults = values.faults;
  if (typeof faults === 'string') options.faults = parseJson('faults', faults);
  if (values['prompt-tokens-details'] === true) options.promptTokensDetails = true;
  if (values['runtime-lora-updating'] === true) options.runtimeLoraUpdating = true;
  const adapters = values['lora-adapters'];
  if (typeof adapters === 'string')
    options.loraAdapters = adapters
      .split(',')
      .map((a) => a.trim())
      .filter(Boolean);
  return options as VllmSimulatorOptions;
}

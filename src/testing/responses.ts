// vLLM's exact response shapes, built as strings: the simulator must not be the bottleneck of a benchmark.

export interface Usage {
  prompt: number;
  completion: number;
  /** Prompt tokens served from the prefix cache; reported only when set (`promptTokensDetails`). */
  cached?: number;
}

const ERROR_TYPES: Record<number, string> = {
  400: 'BadRequestError',
  401: 'UnauthorizedError',
  403: 'ForbiddenError',
  404: 'NotFoundError',
  408: 'RequestTimeoutError',
  409: 'ConflictError',
  413: 'PayloadTooLargeError',
  422: 'UnprocessableEntityError',
  429: 'TooManyRequestsError',
  500: 'InternalServerError',
  501: 'NotImplementedError',
  502: 'BadGatewayError',
  503: 'ServiceUnavailableError',
  504: 'GatewayTimeoutError',
};

export function errorType(status: number): string {
  return ERROR_TYPES[status] ?? (status >= 500 ? 'InternalServerError' : 'BadRequestError');
}

/** vLLM's error body: nested `{"error":{…}}` (current) or the flat shape of vLLM ≤ 0.10.0. */
export function errorBody(
  shape: 'nested' | 'legacy',
  status: number,
  message: string,
  param: string | null = null,
): string {
  const fields = `"message":${JSON.stringify(message)},"type":"${errorType(status)}","param":${param === null ? 'null' : JSON.stringify(param)},"code":${status}`;
  return shape === 'nested' ? `{"error":{${fields}}}` : `{"object":"error",${fields}}`;
}

function usageJson(usage: Usage): string {
  const details = usage.cached === undefined ? 'null' : `{"cached_tokens":${usage.cached}}`;
  return `{"prompt_tokens":${usage.prompt},"total_tokens":${usage.prompt + usage.completion},"completion_tokens":${usage.completion},"prompt_tokens_details":${details}}`;
}

export interface Choice {
  text: string;
  finishReason: 'stop' | 'length';
}

/** Strings that stay the same for every response of one request. */
export interface ResponseContext {
  id: string;
  created: number;
  /** The model name, already JSON-encoded. */
  modelJson: string;
}

export function chatCompletion(ctx: ResponseContext, choices: Choice[], usage: Usage): string {
  let body = `{"id":"${ctx.id}","object":"chat.completion","created":${ctx.created},"model":${ctx.modelJson},"choices":[`;
  for (let i = 0; i < choices.length; i++) {
    const choice = choices[i]!;
    if (i > 0) body += ',';
    body += `{"index":${i},"message":{"role":"assistant","content":${JSON.stringify(choice.text)},"refusal":null,"annotations":null,"audio":null,"function_call":null,"tool_calls":[],"reasoning_content":null},"logprobs":null,"finish_reason":"${choice.finishReason}","stop_reason":null}`;
  }
  return `${body}],"service_tier":null,"system_fingerprint":null,"usage":${usageJson(usage)},"prompt_logprobs":null,"kv_transfer_params":null}`;
}

export function textCompletion(ctx: ResponseContext, choices: Choice[], usage: Usage): string {
  let body = `{"id":"${ctx.id}","object":"text_completion","created":${ctx.created},"model":${ctx.modelJson},"choices":[`;
  for (let i = 0; i < choices.length; i++) {
    const choice = choices[i]!;
    if (i > 0) body += ',';
    body += `{"index":${i},"text":${JSON.stringify(choice.text)},"logprobs":null,"finish_reason":"${choice.finishReason}","stop_reason":null,"prompt_logprobs":null}`;
  }
  return `${body}],"service_tier":null,"system_fingerprint":null,"usage":${usageJson(usage)},"kv_transfer_params":null}`;
}

export function embeddingList(
  ctx: ResponseContext,
  vectors: number[][],
  promptTokens: number,
  base64: boolean,
): string {
  const encode = (vector: number[]) =>
    base64 ? `"${Buffer.from(new Float32Array(vector).buffer).toString('base64')}"` : `[${vector.join(',')}]`;
  const data = vectors
    .map((vector, index) => `{"index":${index},"object":"embedding","embedding":${encode(vector)}}`)
    .join(',');
  return `{"id":"${ctx.id}","object":"list","created":${ctx.created},"model":${ctx.modelJson},"data":[${data}],"usage":${usageJson({ prompt: promptTokens, completion: 0 })}}`;
}

/** One SSE event carrying a chunk for choice `index`. `delta` is the chat delta or completion text, JSON-encoded. */
export function streamChunk(
  ctx: ResponseContext,
  chat: boolean,
  index: number,
  content: string,
  finishReason: 'stop' | 'length' | null,
  role = false,
  usage?: Usage,
): string {
  const finish = finishReason === null ? 'null' : `"${finishReason}"`;
  const tail = finishReason === null ? '' : ',"stop_reason":null';
  // vLLM's continuous usage: the three figures set on the chunk, in UsageInfo's field order.
  const usageTail =
    usage === undefined
      ? ''
      : `,"usage":{"prompt_tokens":${usage.prompt},"total_tokens":${usage.prompt + usage.completion},"completion_tokens":${usage.completion}}`;
  if (chat) {
    const delta = role
      ? `{"role":"assistant","content":${JSON.stringify(content)}}`
      : `{"content":${JSON.stringify(content)}}`;
    return `data: {"id":"${ctx.id}","object":"chat.completion.chunk","created":${ctx.created},"model":${ctx.modelJson},"choices":[{"index":${index},"delta":${delta},"logprobs":null,"finish_reason":${finish}${tail}}]${usageTail}}\n\n`;
  }
  return `data: {"id":"${ctx.id}","object":"text_completion","created":${ctx.created},"model":${ctx.modelJson},"choices":[{"index":${index},"text":${JSON.stringify(content)},"logprobs":null,"finish_reason":${finish}${tail}}]${usageTail}}\n\n`;
}

export function usageChunk(ctx: ResponseContext, chat: boolean, usage: Usage): string {
  const object = chat ? 'chat.completion.chunk' : 'text_completion';
  return `data: {"id":"${ctx.id}","object":"${object}","created":${ctx.created},"model":${ctx.modelJson},"choices":[],"usage":${usageJson(usage)}}\n\n`;
}

export function streamErrorEvent(shape: 'nested' | 'legacy', status: number, message: string): string {
  return `data: ${errorBody(shape, status, message)}\n\ndata: [DONE]\n\n`;
}

export const DONE_EVENT = 'data: [DONE]\n\n';

export function modelList(
  model: string,
  created: number,
  maxModelLen: number,
  adapters: ReadonlyMap<string, string> = new Map(),
): string {
  const base = JSON.stringify(model);
  // vLLM's ModelCard: a LoRA adapter's `parent` is its base model, its `root` the adapter's path.
  const card = (id: string, root: string, parent: string) =>
    `{"id":${id},"object":"model","created":${created},"owned_by":"vllm","root":${root},"parent":${parent},"max_model_len":${maxModelLen},"permission":[{"id":"modelperm-sim","object":"model_permission","created":${created},"allow_create_engine":false,"allow_sampling":true,"allow_logprobs":true,"allow_search_indices":false,"allow_view":true,"allow_fine_tuning":false,"organization":"*","group":null,"is_blocking":false}]}`;
  const cards = [card(base, base, 'null')];
  for (const [name, path] of adapters) cards.push(card(JSON.stringify(name), JSON.stringify(path), base));
  return `{"object":"list","data":[${cards.join(',')}]}`;
}
